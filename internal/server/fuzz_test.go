package server

// Fuzz targets through the whole handler stack, over loopback HTTP, on a
// real database of each target's own. `make fuzz` runs each for FUZZTIME;
// `go test` runs the corpus under testdata/fuzz as ordinary tests.
//
// Every response is checked by checkFuzzResponse (FuzzRawRequest's, which
// may answer no HTTP request, by checkAnswer); each target adds what its
// route promises (round trips, the database's state, the list's page).

import (
	"bytes"
	"cmp"
	"encoding/json/jsontext"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/routers"
	"golang.org/x/text/unicode/norm"

	"usersvc/db"
	"usersvc/internal/pgtest"
)

// fuzzServer is the real handler stack on a database of one fuzz target's
// own (of one fuzzing worker's own, when fuzzing), with a client that does
// not follow redirects.
type fuzzServer struct {
	url    string
	client *http.Client
	// users are those the target made before fuzzing, by id, as they are
	// now: each target keeps this up to date as it changes them.
	users map[int64]user
	// keyed is what FuzzCreateUser learned of each idempotency key.
	keyed map[string]fuzzKeyed
}

func newFuzzServer(f *testing.F, names ...string) *fuzzServer {
	f.Helper()
	pool := pgtest.NewPool(f)
	// Only failures are logged: a line per request would cost more than
	// the request. (While fuzzing, F's output is discarded; run the failing
	// input with go test -run to see the log.)
	logger := slog.New(slog.NewTextHandler(f.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	s := &fuzzServer{
		url: serveAPIOn(f, logger, pool, Options{}),
		client: &http.Client{
			Transport:     &http.Transport{MaxIdleConnsPerHost: 4},
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			Timeout:       30 * time.Second,
		},
		users: map[int64]user{},
		keyed: map[string]fuzzKeyed{},
	}
	f.Cleanup(s.client.CloseIdleConnections)
	for _, name := range names {
		u := s.create(f, name)
		s.users[u.ID] = u
	}
	return s
}

// create makes a user named name, which must be a valid, free name.
func (s *fuzzServer) create(tb testing.TB, name string) user {
	tb.Helper()
	body, err := json.Marshal(map[string]string{"name": name})
	if err != nil {
		tb.Fatal(err)
	}
	req := s.request(tb, http.MethodPost, "/users", "application/json", body)
	r := s.send(tb, req)
	if r.status != http.StatusCreated {
		tb.Fatalf("POST /users %s: status = %d, want 201; body %s", body, r.status, r.body)
	}
	return decodeJSON[user](tb, r.body)
}

// request returns a request for target, or nil when no HTTP client could
// send it: net/http refuses such a request before any handler sees it.
func (s *fuzzServer) request(tb testing.TB, method, target, contentType string, body []byte) *http.Request {
	tb.Helper()
	u, err := url.Parse(s.url + target)
	if err != nil || u.Host != strings.TrimPrefix(s.url, "http://") || !sendableTarget(u.RequestURI()) || !validHeaderValue(contentType) {
		return nil
	}
	req, err := http.NewRequest(method, s.url, bytes.NewReader(body))
	if err != nil {
		tb.Fatal(err)
	}
	req.URL = u
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	return req
}

// sendableTarget reports whether target can be a request line's target:
// no controls, and no spaces, which would end it.
func sendableTarget(target string) bool {
	return !strings.ContainsFunc(target, func(r rune) bool { return r <= ' ' || r == 0x7f })
}

// validHeaderValue reports whether v may be sent as a header value (RFC
// 9110: visible characters, spaces, tabs and obs-text), as net/http checks.
func validHeaderValue(v string) bool {
	for i := 0; i < len(v); i++ {
		if c := v[i]; c != '\t' && (c < ' ' || c == 0x7f) {
			return false
		}
	}
	return true
}

// send sends req and returns the response.
func (s *fuzzServer) send(tb testing.TB, req *http.Request) response {
	tb.Helper()
	res, err := s.client.Do(req)
	if err != nil {
		tb.Fatalf("%s %.200s: %v", req.Method, req.URL.RequestURI(), err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		tb.Fatalf("%s %.200s: read body: %v", req.Method, req.URL.RequestURI(), err)
	}
	return response{status: res.StatusCode, header: res.Header, body: b, close: res.Close}
}

// get GETs target and checks the response as any other.
func (s *fuzzServer) get(t *testing.T, target string, client clientText) response {
	t.Helper()
	req := s.request(t, http.MethodGet, target, "", nil)
	r := s.send(t, req)
	checkFuzzResponse(t, req, r, client)
	return r
}

// clientText is everything a client sent, in the forms the service may
// echo it (decoded, normalized), lowercased: a response may repeat what a
// client sent, so finding a leak marker there proves nothing.
type clientText []string

func (c *clientText) add(ss ...string) {
	for _, s := range ss {
		*c = append(*c, strings.ToLower(s), strings.ToLower(norm.NFC.String(s)))
	}
}

// addTarget adds a request target: as sent, and decoded as a path and as a
// query string.
func (c *clientText) addTarget(target string) {
	c.add(target)
	if p, err := url.PathUnescape(target); err == nil {
		c.add(p)
	}
	if _, q, ok := strings.Cut(target, "?"); ok {
		for kv := range strings.SplitSeq(q, "&") {
			k, v, _ := strings.Cut(kv, "=")
			for _, s := range []string{k, v} {
				if d, err := url.QueryUnescape(s); err == nil {
					c.add(d)
				}
			}
		}
	}
}

// addJSON adds a body and every string in it (member names too), decoded,
// as far as it is JSON.
func (c *clientText) addJSON(body []byte) {
	c.add(string(body))
	dec := jsontext.NewDecoder(bytes.NewReader(body), jsontext.AllowDuplicateNames(true), jsontext.AllowInvalidUTF8(true))
	for {
		tok, err := dec.ReadToken()
		if err != nil {
			return
		}
		if tok.Kind() == '"' {
			c.add(tok.String())
		}
	}
}

// contains reports whether the client sent marker.
func (c clientText) contains(marker string) bool {
	return slices.ContainsFunc(c, func(s string) bool { return strings.Contains(s, marker) })
}

// leakMarkers are fragments of what the service must never write in a
// response: stack traces; the driver's and PostgreSQL's messages ("ERROR:
// duplicate key value violates unique constraint ... (SQLSTATE 23505)");
// its SQL; Go's own error strings. Lowercase: bodies are compared
// lowercased. None occurs in any text the service writes itself.
var leakMarkers = []string{
	"goroutine ", "panic", "runtime error", "runtime.", ".go:", "nil pointer", "index out of range",
	"sqlstate", "pgx", "pgconn", "pgerr", "pgtype", "puddle", "postgres", "error:",
	"violates", "duplicate key", "constraint", "relation ", "column ", "does not exist", "syntax error",
	"select ", "insert into", "update users", "delete from", "from users", "returning",
	"json:", "jsontext", "strconv", "invalid syntax", "mime:", "http:", "net/", "dial ",
	"connection refused", "broken pipe", "context deadline", "context canceled", "unexpected eof",
}

// checkFuzzResponse checks what every response promises, whatever the
// request (see checkAnswer), and what it promises for req: a 307 only to a
// cleaned path; a match with openapi.yaml wherever it describes the path;
// and a problem whose instance is the request's path.

// request: no 5xx but 503 unavailable; the headers every response has; a
// problem document whose status is the HTTP status and whose code is one
// of openapi.yaml's for every error, matching openapi.yaml wherever it
// describes the path; a 307 only to a cleaned path (304 is no redirect: it
// answers a conditional GET); and no leak marker in
// the body that the client did not send itself.
func checkFuzzResponse(t *testing.T, req *http.Request, r response, client clientText) {
	t.Helper()
	what := fmt.Sprintf("%s %.300q", req.Method, req.URL.RequestURI())
	p, isProblem := checkAnswer(t, what, r, client, req.Method == http.MethodHead)

	if r.status >= 300 && r.status < 400 && r.status != http.StatusNotModified {
		// ServeMux's answer to a path with ".", ".." or empty segments.
		loc := r.header.Get("Location")
		locPath, _, _ := strings.Cut(loc, "?")
		clean := path.Clean(locPath)
		if strings.HasSuffix(locPath, "/") && clean != "/" {
			clean += "/"
		}
		if r.status != http.StatusTemporaryRedirect || !strings.HasPrefix(loc, "/") || strings.HasPrefix(loc, "//") ||
			clean != locPath || locPath == req.URL.EscapedPath() {
			t.Errorf("%s: status %d to %q, want 307 to the cleaned path", what, r.status, loc)
		}
		return
	}

	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := spec.router.FindRoute(req); !errors.Is(err, routers.ErrPathNotFound) {
		checkOpenAPI(t, req, r.status, r.header, r.body)
	}
	if isProblem && p.Code != codeURITooLong && p.Instance != req.URL.EscapedPath() {
		t.Errorf("%s: problem instance %q, want the path %q", what, p.Instance, req.URL.EscapedPath())
	}
}

// checkAnswer checks what every answer promises, whatever the request,
// even one that is no HTTP: no 5xx but 503 unavailable; the headers every
// response has; no leak marker in the body that the client did not send
// itself; and for every error a problem document (but to a HEAD) whose
// status is the HTTP status, whose code is one of openapi.yaml's, and
// which is valid against its Problem schema. Returns the problem, and
// whether there is one.
func checkAnswer(t *testing.T, what string, r response, client clientText, head bool) (problem, bool) {
	t.Helper()
	if r.status >= 500 && r.status != http.StatusServiceUnavailable {
		t.Fatalf("%s: status %d; body %.2000s", what, r.status, r.body)
	}
	if r.header.Get("X-Request-Id") == "" {
		t.Errorf("%s: status %d without X-Request-ID: not the service's answer", what, r.status)
	}
	for name, want := range map[string]string{"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"} {
		if got := r.header.Get(name); got != want {
			t.Errorf("%s: %s = %q, want %q", what, name, got, want)
		}
	}
	// The request id is random base32: it may spell anything.
	lower := strings.ToLower(strings.ReplaceAll(string(r.body), r.header.Get("X-Request-Id"), ""))
	for _, m := range leakMarkers {
		if strings.Contains(lower, m) && !client.contains(m) {
			t.Errorf("%s: the response has %q, which the client did not send: %.2000s", what, m, r.body)
		}
	}
	if r.status < 400 {
		return problem{}, false
	}
	if ct := r.header.Get("Content-Type"); ct != problemContentType {
		t.Errorf("%s: status %d with Content-Type %q, want %s", what, r.status, ct, problemContentType)
	}
	if head {
		return problem{}, false
	}
	var p problem
	if err := json.Unmarshal(r.body, &p, json.RejectUnknownMembers(true)); err != nil {
		t.Fatalf("%s: status %d with a body that is not a problem document: %v: %.2000s", what, r.status, err, r.body)
	}
	kind, known := problemKinds[p.Code]
	switch {
	case !known || p.Code == codeInternal:
		t.Errorf("%s: problem code %q, want one of the client's or unavailable: %s", what, p.Code, r.body)
	case p.Status != r.status || kind.status != r.status:
		t.Errorf("%s: problem status %d, code %s (status %d), HTTP status %d", what, p.Status, p.Code, kind.status, r.status)
	case r.status == http.StatusServiceUnavailable && p.Code != codeUnavailable:
		t.Errorf("%s: 503 with code %q, want unavailable", what, p.Code)
	case p.Type != "urn:usersvc:problem:"+p.Code || p.Title != kind.title || p.Detail == "":
		t.Errorf("%s: problem type, title or detail wrong for code %s: %s", what, p.Code, r.body)
	case p.RequestID != r.header.Get("X-Request-Id"):
		t.Errorf("%s: problem request_id %q, header %q", what, p.RequestID, r.header.Get("X-Request-Id"))
	case (p.Code == codeValidationFailed) != (len(p.Errors) > 0):
		t.Errorf("%s: code %s with %d field errors", what, p.Code, len(p.Errors))
	}
	checkProblemSchema(t, what, r.body)
	return p, true
}

// sameUser reports whether a and b are the same user in the same state.
func sameUser(a, b user) bool {
	return a.ID == b.ID && a.Name == b.Name && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// problemCode returns the code of a problem response, or "".
func problemCode(r response) string {
	var p problem
	if r.status < 400 || json.Unmarshal(r.body, &p) != nil {
		return ""
	}
	return p.Code
}

// wantName returns the name a body asks for as the service must store it,
// or false when the body has none: json.Unmarshal's reading of the body,
// trimmed and NFC-normalized.
// FuzzPatchUser sends any body with any Content-Type as a PATCH to any id,
// the ids of three users among them. A 200 must be the merge patch applied
// (RFC 7396): renamed as asked when the body has a name, unchanged for {},
// and round-trip; anything else leaves the user as it was, and a null name
// is refused.
func FuzzPatchUser(f *testing.F) {
	s := newFuzzServer(f, "pat", "otto", "Robert'); DROP TABLE users;--")
	for _, seed := range []struct {
		id                int64
		body, contentType string
	}{
		{1, `{}`, "application/merge-patch+json"},
		{1, `{"name":"patricia"}`, "application/merge-patch+json"},
		{1, `{"name":" Patrick\t"}`, "application/merge-patch+json; charset=utf-8"},
		{1, `{"name":null}`, "application/merge-patch+json"},
		{1, `{"name":"otto"}`, "application/merge-patch+json"},
		{1, `{"name":7}`, "application/merge-patch+json"},
		{1, `{"name":"x","id":2}`, "application/merge-patch+json"},
		{1, `{"name":"a","name":"b"}`, "application/merge-patch+json"},
		{1, `[]`, "application/merge-patch+json"},
		{1, `{"name":"json"}`, "application/json"},
		{2, `{}`, "text/plain"},
		{999, `{}`, "application/merge-patch+json"},
		{999, `{"name":"nobody"}`, "application/merge-patch+json"},
	} {
		f.Add(seed.id, []byte(seed.body), seed.contentType)
	}
	f.Fuzz(func(t *testing.T, id int64, body []byte, contentType string) {
		target, r, client, sent := s.sendToUser(t, http.MethodPatch, id, body, contentType)
		if !sent {
			return
		}

		var patch map[string]any
		isObject := json.Unmarshal(body, &patch) == nil && patch != nil
		asked, named := patch["name"]
		before, exists := s.users[id]
		code := problemCode(r)
		switch {
		case r.status == http.StatusOK:
			u := decodeJSON[user](t, r.body)
			want := before
			if named {
				want.Name, _ = wantName(body)
			}
			if !exists || !isObject || u.ID != id || u.Name != want.Name || !u.CreatedAt.Equal(before.CreatedAt) ||
				(named && u.UpdatedAt.Before(before.UpdatedAt)) || (!named && !sameUser(u, before)) {
				t.Fatalf("PATCH %s %q: 200 %s; the user was %+v (exists %v)", target, body, r.body, before, exists)
			}
			if mt, _, _ := mime.ParseMediaType(contentType); mt != mergePatchType || asked == nil && named {
				t.Errorf("PATCH %s %q with Content-Type %q: 200, want 415 or 400", target, body, contentType)
			}
			s.checkRoundTrip(t, "PATCH "+target, r, u, client)
			s.users[id] = u
		case code == codeNotFound && exists:
			t.Errorf("PATCH %s: 404, but the user exists", target)
		case exists:
			s.wantUnchanged(t, fmt.Sprintf("PATCH %s %q", target, body), r, before, client)
		}
		if exists && isObject && named && asked == nil && r.status != http.StatusBadRequest && r.status != http.StatusUnsupportedMediaType {
			t.Errorf("PATCH %s %q: %d, want 400 for a null name", target, body, r.status)
		}
	})
}

// sendToUser sends method with body to /users/{id}, and checks the
// response as every fuzz target does. Returns sent false when no client
// could send the request.
func (s *fuzzServer) sendToUser(t *testing.T, method string, id int64, body []byte, contentType string) (target string, r response, client clientText, sent bool) {
	t.Helper()
	target = "/users/" + strconv.FormatInt(id, 10)
	req := s.request(t, method, target, contentType, body)
	if req == nil {
		return target, r, client, false
	}
	r = s.send(t, req)
	client.addJSON(body)
	client.add(contentType)
	for _, u := range s.users {
		client.add(u.Name)
	}
	checkFuzzResponse(t, req, r, client)
	return target, r, client, true
}

// wantUnchanged checks that the user before is as it was after what, which
// was refused with r.
func (s *fuzzServer) wantUnchanged(t *testing.T, what string, r response, before user, client clientText) {
	t.Helper()
	g := s.get(t, userPath(before.ID), client)
	if got := decodeJSON[user](t, g.body); !sameUser(got, before) {
		t.Errorf("%s answered %d, yet the user changed from %+v to %+v", what, r.status, before, got)
	}
}

func wantName(body []byte) (string, bool) {
	var req struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return "", false
	}
	return norm.NFC.String(strings.TrimSpace(req.Name)), true
}

// acceptsJSON reports whether a request with this Content-Type may
// succeed: application/json, in UTF-8.
func acceptsJSON(contentType string) bool {
	mt, params, err := mime.ParseMediaType(contentType)
	cs, ok := params["charset"]
	return err == nil && mt == jsonContentType && (!ok || strings.EqualFold(cs, "utf-8"))
}

// checkRoundTrip checks that GET /users/{id} answers what r, a 200 or 201
// for user u, said.
func (s *fuzzServer) checkRoundTrip(t *testing.T, what string, r response, u user, client clientText) {
	t.Helper()
	g := s.get(t, userPath(u.ID), client)
	if g.status != http.StatusOK {
		t.Fatalf("%s answered %d %s, but GET %s answers %d: %s", what, r.status, r.body, userPath(u.ID), g.status, g.body)
	}
	if got := decodeJSON[user](t, g.body); !sameUser(got, u) {
		t.Errorf("%s answered %s, but GET %s answers %s", what, r.body, userPath(u.ID), g.body)
	}
}

// fuzzKeyed is what a fuzz target learned of one idempotency key: the
// name its first request asked for, and the answer it got.
type fuzzKeyed struct {
	name     string
	response response
}

// quotedKey is an RFC 8941 string: the Idempotency-Key's quoted form.
var quotedKey = regexp.MustCompile(`^"((?:[ !#-\[\]-~]|\\["\\])*)"$`)

// wantKey returns the key an Idempotency-Key header value names, as the
// draft and docs/api.md define it, and whether it is a valid one: trimmed of
// surrounding spaces and tabs (as HTTP does), then 1 to 255 printable
// ASCII characters, bare, or quoted with \" and \\ escapes.
func wantKey(value string) (string, bool) {
	value = strings.Trim(value, " \t")
	key := value
	if strings.HasPrefix(value, `"`) {
		m := quotedKey.FindStringSubmatch(value)
		if m == nil {
			return "", false
		}
		key = strings.NewReplacer(`\"`, `"`, `\\`, `\`).Replace(m[1])
	}
	return key, key != "" && len(key) <= maxIdempotencyKeyLen && !strings.ContainsFunc(key, func(c rune) bool { return c < ' ' || c > '~' })
}

// FuzzCreateUser posts any body with any Content-Type, and any
// Idempotency-Key unless it is empty. A 201 must have come from an
// application/json body naming a free name, and round-trips through GET
// /users/{id}; a duplicate_name must name a taken one. An invalid key is
// refused first; with a valid one, the first request executes, a second
// one gets the same answer replayed, and the key with another name 422.
func FuzzCreateUser(f *testing.F) {
	s := newFuzzServer(f, "taken", "Zoë", "<b>bold</b>")
	f.Fuzz(func(t *testing.T, body []byte, contentType string, keyValue string) {
		req := s.request(t, http.MethodPost, "/users", contentType, body)
		if req == nil || !validHeaderValue(keyValue) {
			return
		}
		if keyValue != "" {
			req.Header.Set(idempotencyKeyHeader, keyValue)
		}
		r := s.send(t, req)
		var client clientText
		client.addJSON(body)
		client.add(contentType, keyValue)
		checkFuzzResponse(t, req, r, client)

		name, named := wantName(body)
		if keyValue != "" {
			key, valid := wantKey(keyValue)
			headerRefused := r.status == http.StatusBadRequest && problemCode(r) == codeValidationFailed &&
				strings.Contains(string(r.body), `"in":"header","field":"`+idempotencyKeyHeader+`"`)
			if headerRefused == valid {
				t.Fatalf("POST /users with Idempotency-Key %q (valid %v): %d %s", keyValue, valid, r.status, r.body)
			}
			if !valid {
				return
			}
			s.checkKeyed(t, req, body, key, name, r, client)
		}
		switch r.status {
		case http.StatusCreated:
			if !acceptsJSON(contentType) {
				t.Errorf("POST /users with Content-Type %q: 201, want 415", contentType)
			}
			u := decodeJSON[user](t, r.body)
			if !named || u.Name != name {
				t.Errorf("POST /users %q: created %q, want %q (trimmed, NFC)", body, u.Name, name)
			}
			if loc := r.header.Get("Location"); loc != userPath(u.ID) {
				t.Errorf("POST /users: Location %q for user %d", loc, u.ID)
			}
			s.checkRoundTrip(t, "POST /users", r, u, client)
		case http.StatusBadRequest:
			if problemCode(r) == codeDuplicateName {
				if !named {
					t.Fatalf("POST /users %q: duplicate_name for a body without a name", body)
				}
				g := s.get(t, "/users?name="+url.QueryEscape(name), client)
				if users := decodeJSON[[]user](t, g.body); len(users) != 1 {
					t.Errorf("POST /users %q: duplicate_name, but %d users are named %q", body, len(users), name)
				}
			}
		}
	})
}

// checkKeyed checks the answer r to a keyed create of name (the
// request's normalized name) with key, valid, against what earlier
// requests with the key got, then sends the request again and wants it
// replayed.
func (s *fuzzServer) checkKeyed(t *testing.T, req *http.Request, body []byte, key, name string, r response, client clientText) {
	t.Helper()
	stored := r.status == http.StatusCreated || problemCode(r) == codeDuplicateName
	replayed := r.header.Get(replayedHeader) == "true"
	first, seen := s.keyed[key]
	switch {
	case r.status == http.StatusUnprocessableEntity:
		if !seen || first.name == name {
			t.Fatalf("POST /users %q with key %q: 422, but the key was not used for another name (seen %v with %q)", body, key, seen, first.name)
		}
		return
	case !stored:
		if replayed {
			t.Fatalf("POST /users %q with key %q: %d replayed", body, key, r.status)
		}
		return
	case !seen:
		if replayed {
			t.Fatalf("POST /users %q with key %q, its first use: replayed %d %s", body, key, r.status, r.body)
		}
		s.keyed[key] = fuzzKeyed{name: name, response: r}
		first = s.keyed[key]
	case first.name != name:
		t.Fatalf("POST /users %q with key %q, used for %q before: %d, want 422", body, key, first.name, r.status)
	case !replayed || r.status != first.response.status || (r.status == http.StatusCreated && !bytes.Equal(r.body, first.response.body)):
		t.Fatalf("POST /users %q with key %q again: %d replayed %v %s, want %d replayed %s", body, key, r.status, replayed, r.body, first.response.status, first.response.body)
	}
	again := s.request(t, http.MethodPost, "/users", req.Header.Get("Content-Type"), body)
	again.Header[idempotencyKeyHeader] = req.Header[idempotencyKeyHeader]
	a := s.send(t, again)
	checkFuzzResponse(t, again, a, client)
	if a.status != first.response.status || a.header.Get(replayedHeader) != "true" ||
		(a.status == http.StatusCreated && !bytes.Equal(a.body, first.response.body)) {
		t.Fatalf("POST /users %q with key %q, repeated: %d %q %s, want %d replayed %s", body, key, a.status, a.header.Get(replayedHeader), a.body, first.response.status, first.response.body)
	}
}

// FuzzRenameUser puts any body with any Content-Type to any id, the ids of
// three users among them. A 200 must rename that user as asked and
// round-trip; anything else leaves it as it was; a 404 is for a missing
// user only, and duplicate_name for another user's name only.
func FuzzRenameUser(f *testing.F) {
	s := newFuzzServer(f, "rita", "otto", "Robert'); DROP TABLE users;--")
	f.Fuzz(func(t *testing.T, id int64, body []byte, contentType string) {
		target, r, client, sent := s.sendToUser(t, http.MethodPut, id, body, contentType)
		if !sent {
			return
		}

		name, named := wantName(body)
		before, exists := s.users[id]
		code := problemCode(r)
		switch {
		case r.status == http.StatusOK:
			u := decodeJSON[user](t, r.body)
			if !exists || u.ID != id || !named || u.Name != name || !u.CreatedAt.Equal(before.CreatedAt) || u.UpdatedAt.Before(before.UpdatedAt) {
				t.Fatalf("PUT %s %q: 200 %s; the user was %+v (exists %v), the name asked %q", target, body, r.body, before, exists, name)
			}
			if !acceptsJSON(contentType) {
				t.Errorf("PUT %s with Content-Type %q: 200, want 415", target, contentType)
			}
			s.checkRoundTrip(t, "PUT "+target, r, u, client)
			s.users[id] = u
		case code == codeNotFound && exists:
			t.Errorf("PUT %s: 404, but the user exists", target)
		case exists:
			s.wantUnchanged(t, fmt.Sprintf("PUT %s %q", target, body), r, before, client)
			if code == codeDuplicateName && !slices.ContainsFunc(slices.Collect(maps.Values(s.users)), func(u user) bool { return u.ID != id && u.Name == name }) {
				t.Errorf("PUT %s %q: duplicate_name, but no other user is named %q", target, body, name)
			}
		}
	})
}

// FuzzListUsers sends any query string to GET /users, over a table of
// seven users that does not change. A 200 must be exactly the page the
// query asks for, with a Link exactly when more follow.
func FuzzListUsers(f *testing.F) {
	s := newFuzzServer(f, "ann", "Bo & Co", "Zoë", "<script>alert(1)</script>", "名前", "a+b=c", "ann2")
	all := slices.SortedFunc(maps.Values(s.users), func(a, b user) int { return cmp.Compare(a.ID, b.ID) })
	f.Fuzz(func(t *testing.T, query string) {
		target := "/users?" + query
		req := s.request(t, http.MethodGet, target, "", nil)
		if req == nil {
			return
		}
		r := s.send(t, req)
		var client clientText
		client.addTarget(req.URL.RequestURI())
		for _, u := range all {
			client.add(u.Name)
		}
		checkFuzzResponse(t, req, r, client)

		sent := req.URL.RequestURI()
		switch {
		case len(sent) > maxURIBytes:
			if r.status != http.StatusRequestURITooLong {
				t.Fatalf("GET %.100s… (%d bytes): status %d, want 414", sent, len(sent), r.status)
			}
			return
		case strings.Count(req.URL.RawQuery, "&") >= maxQueryParams:
			if r.status != http.StatusBadRequest {
				t.Fatalf("GET %.100s… (%d '&'): status %d, want 400", sent, strings.Count(req.URL.RawQuery, "&"), r.status)
			}
			return
		case r.status != http.StatusOK:
			return
		}

		// The query was accepted: work out the page it asks for.
		values, err := url.ParseQuery(req.URL.RawQuery)
		if err != nil {
			t.Fatalf("GET %q: 200 for a malformed query: %v", sent, err)
		}
		limit, after, name := int64(defaultPageLimit), int64(0), ""
		for k, vs := range values {
			if len(vs) != 1 {
				t.Fatalf("GET %q: 200 with %s given %d times", sent, k, len(vs))
			}
			switch k {
			case "limit":
				limit, err = strconv.ParseInt(vs[0], 10, 64)
			case "after":
				after, err = strconv.ParseInt(vs[0], 10, 64)
			case "name":
				name = norm.NFC.String(strings.TrimSpace(vs[0]))
			default:
				err = errors.New("unknown parameter")
			}
			if err != nil {
				t.Fatalf("GET %q: 200 although %s=%q: %v", sent, k, vs[0], err)
			}
		}
		if _, ok := values["name"]; (ok && name == "") || limit < 1 || limit > maxPageLimit || after < 0 {
			t.Fatalf("GET %q: 200 for limit %d, after %d, name %q", sent, limit, after, name)
		}
		var want []user
		for _, u := range all {
			if u.ID > after && (name == "" || u.Name == name) {
				want = append(want, u)
			}
		}
		wantLink := ""
		if int64(len(want)) > limit {
			want = want[:limit]
			wantLink = fmt.Sprintf("</users?after=%d&limit=%d", want[len(want)-1].ID, limit)
			if name != "" {
				wantLink += "&name=" + url.QueryEscape(name)
			}
			wantLink += `>; rel="next"`
		}
		got := decodeJSON[[]user](t, r.body)
		if !slices.EqualFunc(got, want, sameUser) {
			t.Errorf("GET %q: %s, want %+v", sent, r.body, want)
		}
		if link := r.header.Get("Link"); link != wantLink {
			t.Errorf("GET %q: Link %q, want %q", sent, link, wantLink)
		}
	})
}

// FuzzUserPath sends GET, HEAD, PUT or DELETE to /users/ followed by any
// segment. A 2xx must be for a user that exists, found by the decimal id
// the path decodes to; a 404 not_found for a valid id that does not; a 400
// for the path's id for one that is not a positive int64. A DELETE's user
// is gone after it (and another is made, so that there always are some).
func FuzzUserPath(f *testing.F) {
	s := newFuzzServer(f, "one", "two", "three")
	methods := []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodPatch}
	renames := 0
	f.Fuzz(func(t *testing.T, method byte, segment string) {
		m := methods[int(method)%len(methods)]
		var body []byte
		var contentType string
		if m == http.MethodPut {
			renames++
			body, contentType = fmt.Appendf(nil, `{"name":"renamed %d"}`, renames), "application/json"
		}
		req := s.request(t, m, "/users/"+segment, contentType, body)
		if req == nil {
			return
		}
		r := s.send(t, req)
		var client clientText
		client.addTarget(req.URL.RequestURI())
		client.add(req.URL.Path, string(body))
		for _, u := range s.users {
			client.add(u.Name)
		}
		checkFuzzResponse(t, req, r, client)

		what := fmt.Sprintf("%s %.300q", m, req.URL.RequestURI())
		if len(req.URL.RequestURI()) > maxURIBytes {
			if r.status != http.StatusRequestURITooLong {
				t.Fatalf("%s (%d bytes): status %d, want 414", what, len(req.URL.RequestURI()), r.status)
			}
			return
		}
		id, err := strconv.ParseInt(strings.TrimPrefix(req.URL.Path, "/users/"), 10, 64)
		valid := err == nil && id >= 1 && strings.HasPrefix(req.URL.Path, "/users/")
		before, exists := s.users[id]
		exists = exists && valid
		code := problemCode(r)
		switch {
		case r.status < 300 && !exists:
			t.Fatalf("%s: status %d, but no user has id %q", what, r.status, req.URL.Path)
		case code == codeNotFound && exists:
			t.Fatalf("%s: 404, but user %d exists", what, id)
		case code == codeValidationFailed && valid:
			t.Fatalf("%s: 400 validation_failed, but %d is a valid id: %s", what, id, r.body)
		case r.status == http.StatusOK && m == http.MethodGet:
			if got := decodeJSON[user](t, r.body); !sameUser(got, before) {
				t.Errorf("%s: %s, want %+v", what, r.body, before)
			}
		case r.status == http.StatusOK && (m == http.MethodPut || m == http.MethodPatch && string(body) != "{}"):
			u := decodeJSON[user](t, r.body)
			if want := fmt.Sprintf("renamed %d", renames); u.ID != id || u.Name != want {
				t.Fatalf("%s: %s, want user %d named %q", what, r.body, id, want)
			}
			s.checkRoundTrip(t, what, r, u, client)
			s.users[id] = u
		case r.status == http.StatusNoContent:
			if g := s.get(t, userPath(id), client); g.status != http.StatusNotFound {
				t.Fatalf("%s: 204, but GET %s answers %d", what, userPath(id), g.status)
			}
			delete(s.users, id)
			u := s.create(t, fmt.Sprintf("after %d", id))
			s.users[u.ID] = u
		}
	})
}

// FuzzRawRequest writes any bytes to a connection of their own, as a client
// that frames its requests any way it likes (framingCases are the seeds),
// and reads every answer until the server closes the connection. Each
// answer must be one any request may get (checkAnswer), none may follow
// one that said Connection: close, and every user the bytes created must
// have been answered 201: a request that ran unanswered was smuggled.
func FuzzRawRequest(f *testing.F) {
	// Short, for speed: a read that a busy machine delays past its
	// deadline only ends the exchange early, which breaks no check.
	s := newRawServer(f, 100*time.Millisecond)
	for _, tt := range framingCases {
		f.Add([]byte(tt.raw))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if bytes.Contains(raw, []byte("HEAD")) {
			// An answer to a HEAD has a Content-Length but no body: a
			// reader that does not know which request it answers cannot
			// frame it. FuzzUserPath sends HEAD.
			return
		}
		before := s.lastID(t)
		answers := s.exchange(t, raw)
		what := fmt.Sprintf("%.300q", raw)
		checkExchange(t, what, raw, answers)
		created := 0
		for _, r := range answers {
			if r.status == http.StatusCreated {
				created++
			}
		}
		if n := s.usersAfter(t, before); n > created {
			t.Errorf("%s: %d users created, %d answers were 201: a request ran unanswered", what, n, created)
		}
	})
}

// entityTagList is a precondition header's value other than "*" as RFC 9110
// defines it: a comma-separated list of entity tags, empty elements and
// spaces around commas allowed; entityTag finds the tags in one.
var (
	entityTagList = regexp.MustCompile(`^[ \t,]*(?:(?:W/)?"[^"\x00-\x20\x7f]*"[ \t]*(?:,[ \t,]*|$))*$`)
	entityTag     = regexp.MustCompile(`(W/)?"([^"]*)"`)
)

// wantCondition evaluates a precondition header's value against the
// current ETag, as RFC 9110 §13.1.1 and §13.1.2 do: whether it is well
// formed, and whether it names current (strong comparison, where a weak
// tag never matches, or weak), or is "*".
func wantCondition(value, current string, strong bool) (valid, matches bool) {
	value = strings.Trim(value, " \t")
	if value == "*" {
		return true, true
	}
	if !entityTagList.MatchString(value) {
		return false, false
	}
	for _, m := range entityTag.FindAllStringSubmatch(value, -1) {
		if `"`+m[2]+`"` == current && (!strong || m[1] == "") {
			matches = true
		}
	}
	return true, matches
}

// FuzzConditional sends GET, HEAD, PUT, DELETE or PATCH of one user with any
// If-Match and If-None-Match ("" sends none), where {current}, {stale} and
// {other} stand for the user's ETag, one of its earlier ones and another
// user's. The answer must be what RFC 9110 §13.2.2 says: 400 for a header
// that is not "*" or a list of entity tags, 412 when If-Match does not
// name the current ETag (or, for a write, If-None-Match does), 304 when
// If-None-Match names it on a read, else the request's success. A 412 or
// 304 changes nothing.
func FuzzConditional(f *testing.F) {
	s := newFuzzServer(f, "other")
	var otherTag string
	for _, u := range s.users {
		otherTag = etag(db.User{ID: u.ID, UpdatedAt: u.UpdatedAt})
	}
	methods := []string{http.MethodGet, http.MethodHead, http.MethodPut, http.MethodDelete, http.MethodPatch}
	n := 0
	// fresh makes the user the target works on: created, then renamed, so
	// that it has a stale ETag too.
	var target user
	var current, stale string
	fresh := func(tb testing.TB) {
		n++
		target = s.create(tb, fmt.Sprintf("conditional %d", n))
		stale = etag(db.User{ID: target.ID, UpdatedAt: target.UpdatedAt})
		req := s.request(tb, http.MethodPut, userPath(target.ID), "application/json", fmt.Appendf(nil, `{"name":"conditional %d"}`, n))
		r := s.send(tb, req)
		if r.status != http.StatusOK {
			tb.Fatalf("PUT %s: %d %s", userPath(target.ID), r.status, r.body)
		}
		target = decodeJSON[user](tb, r.body)
		current = r.header.Get(etagHeader)
	}
	fresh(f)
	f.Fuzz(func(t *testing.T, method byte, ifMatchValue, ifNoneMatchValue string) {
		m := methods[int(method)%len(methods)]
		expand := strings.NewReplacer("{current}", current, "{stale}", stale, "{other}", otherTag)
		im, inm := expand.Replace(ifMatchValue), expand.Replace(ifNoneMatchValue)
		if !validHeaderValue(im) || !validHeaderValue(inm) {
			return
		}
		path := userPath(target.ID)
		var body []byte
		var contentType string
		switch {
		case m == http.MethodPut:
			n++
			body, contentType = fmt.Appendf(nil, `{"name":"conditional %d"}`, n), "application/json"
		case m == http.MethodPatch && len(ifMatchValue)%2 == 0:
			n++
			body, contentType = fmt.Appendf(nil, `{"name":"conditional %d"}`, n), "application/merge-patch+json"
		case m == http.MethodPatch:
			body, contentType = []byte(`{}`), "application/merge-patch+json"
		}
		req := s.request(t, m, path, contentType, body)
		if im != "" {
			req.Header.Set(ifMatchHeader, im)
		}
		if inm != "" {
			req.Header.Set(ifNoneMatchHeader, inm)
		}
		r := s.send(t, req)
		var client clientText
		client.add(path, string(body), im, inm)
		checkFuzzResponse(t, req, r, client)

		imValid, imMatches := wantCondition(im, current, true)
		inmValid, inmMatches := wantCondition(inm, current, false)
		read := m == http.MethodGet || m == http.MethodHead
		want := map[string]int{http.MethodGet: 200, http.MethodHead: 200, http.MethodPut: 200, http.MethodDelete: 204, http.MethodPatch: 200}[m]
		switch {
		case im != "" && !imValid, inm != "" && !inmValid:
			want = http.StatusBadRequest
		case im != "" && !imMatches:
			want = http.StatusPreconditionFailed
		case inm != "" && inmMatches && read:
			want = http.StatusNotModified
		case inm != "" && inmMatches:
			want = http.StatusPreconditionFailed
		}
		what := fmt.Sprintf("%s %s with If-Match %q, If-None-Match %q (current %s)", m, path, im, inm, current)
		if r.status != want {
			t.Fatalf("%s: %d %s, want %d", what, r.status, r.body, want)
		}
		if want == http.StatusBadRequest && m != http.MethodHead && !strings.Contains(string(r.body), `"in":"header"`) {
			t.Errorf("%s: 400 %s, want it to name the header", what, r.body)
		}
		if (r.status == http.StatusOK && (read || string(body) == "{}") || r.status == http.StatusNotModified) && r.header.Get(etagHeader) != current {
			t.Errorf("%s: %d with ETag %q, want %s", what, r.status, r.header.Get(etagHeader), current)
		}
		switch {
		case r.status == http.StatusOK && (m == http.MethodPut || m == http.MethodPatch && string(body) != "{}"):
			u := decodeJSON[user](t, r.body)
			s.checkRoundTrip(t, what, r, u, client)
			stale, current, target = current, r.header.Get(etagHeader), u
		case r.status == http.StatusNoContent:
			if g := s.get(t, path, client); g.status != http.StatusNotFound {
				t.Fatalf("%s: 204, but GET answers %d", what, g.status)
			}
			fresh(t)
		default:
			// Nothing changed.
			g := s.get(t, path, client)
			if g.status != http.StatusOK || g.header.Get(etagHeader) != current {
				t.Fatalf("%s: %d, yet GET %s answers %d with ETag %q, want %s", what, r.status, path, g.status, g.header.Get(etagHeader), current)
			}
		}
	})
}
