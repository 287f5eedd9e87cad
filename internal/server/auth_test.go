package server

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"usersvc/internal/metrics"
	"usersvc/internal/pgtest"
)

// Two tokens, as during a rotation; wrongToken differs from tokenOld only
// in its last character.
const (
	tokenOld   = "old-0123456789abcdef0123456789abcdef"
	tokenNew   = "new+/~._-ZmVkY2JhOTg3NjU0MzIx=="
	wrongToken = "old-0123456789abcdef0123456789abcdeF"
)

// newAuthServer is the real stack on a database of its own with tokenOld
// and tokenNew configured, metrics served and every log line (debug
// included) collected.
func newAuthServer(t *testing.T) (*testServer, *logBuffer) {
	t.Helper()
	pool := pgtest.NewPool(t)
	logs := &logBuffer{}
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	url := serveAPIOn(t, logger, pool, Options{
		Metrics:    metrics.New("v0.0.0-test"),
		AuthTokens: []string{tokenOld, tokenNew},
	})
	return &testServer{t: t, url: url}, logs
}

// as returns a copy of s that sends Authorization with each of values (none
// when there are none).
func (s *testServer) as(values ...string) *testServer {
	c := *s
	c.header = http.Header{}
	if len(values) > 0 {
		c.header["Authorization"] = values
	}
	return &c
}

func TestAuthRefuses(t *testing.T) {
	t.Parallel()
	s, logs := newAuthServer(t)
	authed := s.as("Bearer " + tokenOld)
	u := authed.createUser("alice")
	path := userPath(u.ID)

	const missing, invalid = `Bearer realm="usersvc"`, `Bearer realm="usersvc", error="invalid_token"`
	credentials := []struct {
		name      string
		values    []string
		challenge string
	}{
		{"no Authorization", nil, missing},
		{"Basic", []string{"Basic dXNlcjpwYXNz"}, missing},
		{"token without scheme", []string{tokenOld}, missing},
		{"wrong token", []string{"Bearer " + wrongToken}, invalid},
		{"a prefix of a token", []string{"Bearer " + tokenOld[:len(tokenOld)-1]}, invalid},
		{"a token and more", []string{"Bearer " + tokenOld + "x"}, invalid},
		{"both tokens in one", []string{"Bearer " + tokenOld + "," + tokenNew}, invalid},
		{"Bearer alone", []string{"Bearer"}, invalid},
		{"Bearer and spaces", []string{"Bearer   "}, invalid},
		{"two headers", []string{"Bearer " + tokenOld, "Bearer " + tokenOld}, invalid},
	}
	// Every route under /users, and what a client with a token would get
	// instead: 401 comes first, even before a 404, 405, 413 or 415.
	requests := []struct {
		method, path, contentType, body string
		withToken                       int
	}{
		{"POST", "/users", "application/json", `{"name":"mallory"}`, 201},
		{"GET", "/users", "", "", 200},
		{"GET", "/users?limit=abc", "", "", 400},
		{"GET", path, "", "", 200},
		{"HEAD", path, "", "", 200},
		{"PUT", path, "application/json", `{"name":"mallory"}`, 200},
		{"DELETE", "/users/999999", "", "", 404},
		{"POST", "/users", "text/plain", "mallory", 415},
		{"PUT", path, "application/json", strings.Repeat(" ", maxBodyBytes+1), 413},
		{"TRACE", "/users", "", "", 405},
		{"POST", path, "", "", 405},
		{"GET", "/users/", "", "", 404},
		{"GET", path + "/extra", "", "", 404},
	}
	for _, c := range credentials {
		for _, rq := range requests {
			what := rq.method + " " + rq.path + " with " + c.name
			r := s.as(c.values...).request(rq.method, rq.path, rq.contentType, rq.body)
			if r.status != http.StatusUnauthorized {
				t.Errorf("%s: status = %d, want 401", what, r.status)
				continue
			}
			if got := r.header.Values("WWW-Authenticate"); len(got) != 1 || got[0] != c.challenge {
				t.Errorf("%s: WWW-Authenticate = %q, want %q", what, got, c.challenge)
			}
			if rq.method != "HEAD" {
				wantProblem(t, what, r, 401, codeUnauthorized)
			}
			if got := r.header.Get("Allow"); got != "" {
				t.Errorf("%s: Allow = %q; a client without a token learns nothing", what, got)
			}
		}
	}
	// Nothing reached the database.
	if got := decodeJSON[user](t, authed.get(path).body); got.Name != "alice" {
		t.Errorf("GET %s = %+v: a refused request changed it", path, got)
	}
	if r := authed.get("/users?name=mallory"); string(r.body) != "[]" {
		t.Errorf("GET /users?name=mallory = %s: a refused request created a user", r.body)
	}

	// The same requests with a token get what they always got.
	for i, token := range []string{"Bearer " + tokenOld, "bearer " + tokenNew, "BEARER   " + tokenOld} {
		for j, rq := range requests {
			body := strings.ReplaceAll(rq.body, "mallory", fmt.Sprintf("mallory %d.%d", i, j))
			r := s.as(token).request(rq.method, rq.path, rq.contentType, body)
			if r.status != rq.withToken {
				t.Errorf("%s %s with %.8s…: status = %d, want %d; body %s", rq.method, rq.path, token, r.status, rq.withToken, r.body)
			}
			if r.header.Get("WWW-Authenticate") != "" {
				t.Errorf("%s %s with a token: WWW-Authenticate = %q, want none", rq.method, rq.path, r.header.Get("WWW-Authenticate"))
			}
		}
	}

	// Neither a token nor any Authorization value sent shows in a log line.
	log := logs.String()
	for _, secret := range []string{tokenOld, tokenNew, wrongToken, "dXNlcjpwYXNz", tokenOld[:len(tokenOld)-1]} {
		if strings.Contains(log, secret) {
			t.Errorf("the log shows an Authorization value (%.6s…):\n%s", secret, log)
		}
	}
	refused := 0
	for _, rec := range logs.records(t) {
		if rec["msg"] == "request" && rec["status"] == float64(401) {
			refused++
		}
	}
	if want := len(credentials) * len(requests); refused != want {
		t.Errorf("access log has %d lines with status 401, want %d", refused, want)
	}
	metricsBody := string(s.get("/metrics").body)
	for _, want := range []string{
		`usersvc_http_requests_total{code="401",method="POST",route="/users"} ` + strconv.Itoa(2*len(credentials)),
		`usersvc_http_requests_total{code="401",method="TRACE",route="unmatched"} ` + strconv.Itoa(len(credentials)),
	} {
		if !strings.Contains(metricsBody, want+"\n") {
			t.Errorf("GET /metrics lacks %s", want)
		}
	}
}

// request is do, for paths openapi.yaml may not describe: those get the
// checks every response gets but openapi.yaml's.
func (s *testServer) request(method, target, contentType, body string) response {
	s.t.Helper()
	req, r, err := s.send(method, target, contentType, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	if strings.HasSuffix(target, "/") || strings.Count(target, "/") > 2 {
		if r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Cache-Control") != "no-store" {
			s.t.Errorf("%s %s: X-Content-Type-Options %q, Cache-Control %q; want nosniff, no-store", method, target,
				r.header.Get("X-Content-Type-Options"), r.header.Get("Cache-Control"))
		}
		s.checkProblem(method, target, r)
		return r
	}
	s.check(req, r)
	return r
}

// String returns every log line so far.
func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestAuthLeavesOpenRoutesOpen checks that the probes, the metrics, the
// OpenAPI document and its reference page need no token, and that a wrong
// one does not hurt them.
func TestAuthLeavesOpenRoutesOpen(t *testing.T) {
	t.Parallel()
	s, _ := newAuthServer(t)
	for _, c := range []*testServer{s, s.as("Bearer " + wrongToken)} {
		for _, path := range []string{"/healthz", "/readyz", "/metrics", "/openapi.yaml", "/docs"} {
			if r := c.get(path); r.status != http.StatusOK || r.header.Get("WWW-Authenticate") != "" {
				t.Errorf("GET %s with Authorization %q: status = %d, WWW-Authenticate %q; want 200 and none", path, c.header.Get("Authorization"), r.status, r.header.Get("WWW-Authenticate"))
			}
		}
		// Their own 405 stays as it was; a path that matches no route is
		// protected like every route that is not open.
		wantProblem(t, "POST /healthz", c.do("POST", "/healthz", "", nil), 405, codeMethodNotAllowed)
		_, r, err := c.send("GET", "/usersx", "", nil)
		if err != nil {
			t.Fatal(err)
		}
		wantProblem(t, "GET /usersx", r, 401, codeUnauthorized)
	}
}

// TestAuthOff checks that without tokens nothing asks for one, and an
// Authorization header, whatever it holds, changes nothing.
func TestAuthOff(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	for _, c := range []*testServer{s, s.as("Bearer " + wrongToken), s.as("Basic x", "Basic y")} {
		r := c.postJSON("/users", `{"name":"`+c.header.Get("Authorization")+`x"}`)
		if r.status != http.StatusCreated {
			t.Errorf("POST /users without tokens configured, Authorization %q: status = %d, want 201", c.header.Get("Authorization"), r.status)
		}
		wantProblem(t, "TRACE /users", c.do("TRACE", "/users", "", nil), 405, codeMethodNotAllowed)
	}
}

// TestAuthCheck pins check's verdicts, including for every position of the
// configured tokens: no token is skipped or preferred.
func TestAuthCheck(t *testing.T) {
	t.Parallel()
	tokens := []string{"first-0123456789abcdef", "second-0123456789abcdef", "third-0123456789abcdef"}
	a := newAuthenticator(tokens)
	req := func(values ...string) *http.Request {
		r := httptest.NewRequest("GET", "/users", nil)
		if len(values) > 0 {
			r.Header["Authorization"] = values
		}
		return r
	}
	for _, token := range tokens {
		if err := a.check(req("Bearer " + token)); err != nil {
			t.Errorf("check(Bearer %s) = %+v, want nil", token, err)
		}
	}
	for _, tt := range []struct {
		values    []string
		challenge string
	}{
		{nil, challengeMissing},
		{[]string{"Token " + tokens[0]}, challengeMissing},
		{[]string{"Bearer" + tokens[0]}, challengeMissing},
		{[]string{"Bearer " + strings.ToUpper(tokens[0])}, challengeInvalid},
		{[]string{"Bearer " + tokens[0] + " " + tokens[1]}, challengeInvalid},
		{[]string{"Bearer  "}, challengeInvalid},
		{[]string{"Bearer " + tokens[2], "Bearer " + tokens[2]}, challengeInvalid},
	} {
		err := a.check(req(tt.values...))
		if err == nil || err.challenge != tt.challenge {
			t.Errorf("check(%q) = %+v, want the challenge %q", tt.values, err, tt.challenge)
		}
		if err != nil {
			for _, token := range tokens {
				if strings.Contains(err.detail, token) {
					t.Errorf("check(%q): detail %q shows a token", tt.values, err.detail)
				}
			}
		}
	}
	if newAuthenticator(nil).enabled() || !a.enabled() {
		t.Error("enabled() is wrong: want it true exactly when tokens are configured")
	}
}
