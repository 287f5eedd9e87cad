package server

import (
	"encoding/json/v2"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
	"usersvc/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// testServer is the real handler stack on a real, freshly migrated database
// of its own, served over loopback HTTP.
type testServer struct {
	t    *testing.T
	url  string
	pool *pgxpool.Pool // the server's database, for checks behind the API's back
	// header is added to every request, such as an Authorization.
	header http.Header
	// client sends the requests; nil is http.DefaultClient.
	client *http.Client
}

func newTestServer(t *testing.T) *testServer {
	t.Helper()
	pool := pgtest.NewPool(t)
	url := serveAPIOn(t, slog.New(slog.NewTextHandler(t.Output(), nil)), pool, Options{})
	return &testServer{t: t, url: url, pool: pool}
}

// serveAPI serves the real handler stack, New, on store and database over
// loopback HTTP until the test ends, and returns its URL. A zero
// RequestTimeout in opts becomes 5 s.
func serveAPI(tb testing.TB, logger *slog.Logger, store userStore, database databaseProbe, opts Options) string {
	tb.Helper()
	if opts.RequestTimeout == 0 {
		opts.RequestTimeout = 5 * time.Second
	}
	return startServer(tb, New(logger, store, database, opts)).URL
}

// serveAPIOn is serveAPI on the database of pool, whose schema this build's
// migrations made unless opts says otherwise.
func serveAPIOn(tb testing.TB, logger *slog.Logger, pool *pgxpool.Pool, opts Options) string {
	tb.Helper()
	if opts.SchemaVersion == 0 {
		opts.SchemaVersion = migrations.Latest()
	}
	return serveAPI(tb, logger, db.New(pool), postgres.Probe{Q: pool}, opts)
}

// startServer serves h over loopback HTTP until the test ends, as usersvc
// serve does: on h.Listener, with net/http's "OPTIONS *" answer left to h.
// Each of limits may set the server's timeouts before it starts.
func startServer(tb testing.TB, h *Server, limits ...func(*http.Server)) *httptest.Server {
	tb.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = h.Listener(srv.Listener)
	srv.Config.DisableGeneralOptionsHandler = true
	for _, set := range limits {
		set(srv.Config)
	}
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv
}

// response is what a request got back.
type response struct {
	status int
	header http.Header
	body   []byte
	close  bool // the server said Connection: close
}

// do sends a request and checks the response against openapi.yaml and the
// rules every response follows.
func (s *testServer) do(method, target, contentType string, body io.Reader) response {
	s.t.Helper()
	req, r, err := s.send(method, target, contentType, body)
	if err != nil {
		s.t.Fatal(err)
	}
	s.check(req, r)
	return r
}

// send sends a request and returns the response unchecked. It is safe to
// call from other goroutines than the test's.
func (s *testServer) send(method, target, contentType string, body io.Reader) (*http.Request, response, error) {
	return s.sendWith(method, target, contentType, body, nil)
}

// doWith is do with header added to the request.
func (s *testServer) doWith(method, target, contentType string, body io.Reader, header http.Header) response {
	s.t.Helper()
	req, r, err := s.sendWith(method, target, contentType, body, header)
	if err != nil {
		s.t.Fatal(err)
	}
	s.check(req, r)
	return r
}

// sendWith is send with header added to the request.
func (s *testServer) sendWith(method, target, contentType string, body io.Reader, header http.Header) (*http.Request, response, error) {
	req, err := http.NewRequest(method, s.url+target, body)
	if err != nil {
		return nil, response{}, fmt.Errorf("%s %s: %w", method, target, err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for _, h := range []http.Header{s.header, header} {
		for name, values := range h {
			req.Header[name] = values
		}
	}
	client := s.client
	if client == nil {
		client = http.DefaultClient
	}
	res, err := client.Do(req)
	if err != nil {
		return nil, response{}, fmt.Errorf("%s %s: %w", method, target, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		return nil, response{}, fmt.Errorf("%s %s: read body: %w", method, target, err)
	}
	return req, response{status: res.StatusCode, header: res.Header, body: b, close: res.Close}, nil
}

// check checks r, the response to req, against openapi.yaml and the rules
// every response follows.
func (s *testServer) check(req *http.Request, r response) {
	s.t.Helper()
	method, target := req.Method, req.URL.RequestURI()
	checkOpenAPI(s.t, req, r.status, r.header, r.body)
	for name, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"} {
		if got := r.header.Get(name); got != want {
			s.t.Errorf("%s %s: %s = %q, want %q", method, target, name, got, want)
		}
	}
	if r.status >= 400 {
		s.checkProblem(method, target, r)
	}
}

// checkProblem checks that an error response is a problem document whose
// status is the HTTP status.
func (s *testServer) checkProblem(method, target string, r response) {
	s.t.Helper()
	if ct := r.header.Get("Content-Type"); ct != "application/problem+json" {
		s.t.Errorf("%s %s: Content-Type = %q, want application/problem+json", method, target, ct)
	}
	if method == http.MethodHead {
		return
	}
	p := decodeJSON[problem](s.t, r.body)
	if p.Status != r.status {
		s.t.Errorf("%s %s: problem status = %d, HTTP status %d", method, target, p.Status, r.status)
	}
	if p.Code == "" || p.Title == "" || p.Detail == "" || p.Type == "" {
		s.t.Errorf("%s %s: problem lacks a member: %s", method, target, r.body)
	}
}

func (s *testServer) postJSON(target, body string) response {
	s.t.Helper()
	return s.do(http.MethodPost, target, "application/json", strings.NewReader(body))
}

func (s *testServer) putJSON(target, body string) response {
	s.t.Helper()
	return s.do(http.MethodPut, target, "application/json", strings.NewReader(body))
}

func (s *testServer) get(target string) response {
	s.t.Helper()
	return s.do(http.MethodGet, target, "", nil)
}

// createUser creates a user named name and returns it.
func (s *testServer) createUser(name string) user {
	s.t.Helper()
	body, err := json.Marshal(map[string]string{"name": name})
	if err != nil {
		s.t.Fatal(err)
	}
	r := s.postJSON("/users", string(body))
	if r.status != http.StatusCreated {
		s.t.Fatalf("POST /users %s: status = %d, want 201; body %s", body, r.status, r.body)
	}
	return decodeJSON[user](s.t, r.body)
}

func decodeJSON[T any](t testing.TB, b []byte) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("decode %T from %q: %v", v, b, err)
	}
	return v
}

// wantProblem fails the test unless r is a problem with this status and code.
func wantProblem(t *testing.T, what string, r response, status int, code string) problem {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status = %d, want %d; body %s", what, r.status, status, r.body)
	}
	p := decodeJSON[problem](t, r.body)
	if p.Code != code {
		t.Errorf("%s: code = %q, want %q; body %s", what, p.Code, code, r.body)
	}
	return p
}

// userPath returns /users/{id}.
func userPath(id int64) string {
	return "/users/" + strconv.FormatInt(id, 10)
}
