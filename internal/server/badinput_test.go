package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
	"usersvc/migrations"
)

// TestHostileInput sends each kind of hostile value docs/api.md's "Bad
// input" section names, and wants its exact status and problem code. The
// fuzz targets (fuzz_test.go) try everything else.
func TestHostileInput(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	existing := s.createUser("existing")

	const js = "application/json"
	longName := "name=" + strings.Repeat("x", maxURIBytes)
	manyParams := strings.Repeat("&", maxQueryParams) // 17 parameters, all empty
	tests := []struct {
		name           string
		method, target string
		contentType    string
		body           string
		status         int
		code           string // "" for a success
		field          string // the field error's field, for validation_failed
	}{
		// NUL: PostgreSQL refuses it in text, so it must never get there.
		{"NUL escaped in name", "POST", "/users", js, `{"name":"a\u0000b"}`, 400, codeValidationFailed, "name"},
		{"NUL raw in name", "POST", "/users", js, "{\"name\":\"a\x00b\"}", 400, codeInvalidJSON, ""},
		{"NUL raw after the object", "POST", "/users", js, "{\"name\":\"a\"}\x00", 400, codeInvalidJSON, ""},
		{"NUL percent-encoded in path", "GET", "/users/%00", "", "", 400, codeValidationFailed, "id"},
		{"NUL percent-encoded after an id", "DELETE", "/users/1%00", "", "", 400, codeValidationFailed, "id"},
		{"NUL percent-encoded in name filter", "GET", "/users?name=%00", "", "", 400, codeValidationFailed, "name"},
		{"NUL percent-encoded in limit", "GET", "/users?limit=1%00", "", "", 400, codeValidationFailed, "limit"},
		{"NUL percent-encoded as a key", "GET", "/users?%00=1", "", "", 400, codeValidationFailed, "\x00"},

		// Invalid UTF-8.
		{"invalid UTF-8 in name", "POST", "/users", js, "{\"name\":\"a\xffb\"}", 400, codeInvalidJSON, ""},
		{"invalid UTF-8 in a member name", "POST", "/users", js, "{\"na\xffme\":\"a\"}", 400, codeInvalidJSON, ""},
		{"invalid UTF-8 in rename", "PUT", userPath(existing.ID), js, "{\"name\":\"\xc3\x28\"}", 400, codeInvalidJSON, ""},
		{"invalid UTF-8 in a query value", "GET", "/users?name=%ff", "", "", 400, codeValidationFailed, "name"},
		{"invalid UTF-8 in a query key", "GET", "/users?%ff%fe=1", "", "", 400, codeValidationFailed, "\uFFFD"},
		{"invalid UTF-8 in path", "GET", "/users/%c3%28", "", "", 400, codeValidationFailed, "id"},

		// Size.
		{"10 MB name", "POST", "/users", js, `{"name":"` + strings.Repeat("x", 10<<20) + `"}`, 413, codePayloadTooLarge, ""},
		{"10 MB rename", "PUT", userPath(existing.ID), js, `{"name":"` + strings.Repeat("x", 10<<20) + `"}`, 413, codePayloadTooLarge, ""},
		{"101-character name", "POST", "/users", js, `{"name":"` + strings.Repeat("x", 101) + `"}`, 400, codeValidationFailed, "name"},

		// Nesting: encoding/json/v2 stops at 10,000 levels.
		{"100k nested arrays", "POST", "/users", js, strings.Repeat("[", 100_000), 400, codeInvalidJSON, ""},
		{"100k nested objects", "POST", "/users", js, strings.Repeat(`{"name":`, 100_000), 400, codeInvalidJSON, ""},
		{"100k nested arrays as the name", "PUT", userPath(existing.ID), js, `{"name":` + strings.Repeat("[", 100_000), 400, codeInvalidJSON, ""},
		{"1 MiB of nested arrays", "POST", "/users", js, strings.Repeat("[", maxBodyBytes), 400, codeInvalidJSON, ""},

		// Numbers.
		{"limit=1e309", "GET", "/users?limit=1e309", "", "", 400, codeValidationFailed, "limit"},
		{"limit=-0", "GET", "/users?limit=-0", "", "", 400, codeValidationFailed, "limit"},
		{"limit=NaN", "GET", "/users?limit=NaN", "", "", 400, codeValidationFailed, "limit"},
		{"limit past int64", "GET", "/users?limit=9223372036854775808", "", "", 400, codeValidationFailed, "limit"},
		{"after=-0 is 0", "GET", "/users?after=-0", "", "", 200, "", ""},
		{"after past int64", "GET", "/users?after=9223372036854775808", "", "", 400, codeValidationFailed, "after"},
		{"id past int64", "GET", "/users/9223372036854775808", "", "", 400, codeValidationFailed, "id"},
		{"id far past int64", "PUT", "/users/99999999999999999999999999", js, `{"name":"x"}`, 400, codeValidationFailed, "id"},
		{"id below int64", "DELETE", "/users/-9223372036854775809", "", "", 400, codeValidationFailed, "id"},
		{"id of int64's minimum", "GET", "/users/-9223372036854775808", "", "", 400, codeValidationFailed, "id"},
		{"id of int64's maximum", "GET", "/users/9223372036854775807", "", "", 404, codeNotFound, ""},
		{"id zero", "GET", "/users/0", "", "", 400, codeValidationFailed, "id"},
		{"id with exponent", "GET", "/users/1e3", "", "", 400, codeValidationFailed, "id"},

		// Length and count of what the URL carries.
		{"query of 4 KiB", "GET", "/users?" + longName[:maxURIBytes-len("/users?")], "", "", 400, codeValidationFailed, "name"},
		{"query over 4 KiB", "GET", "/users?" + longName, "", "", 414, codeURITooLong, ""},
		{"path over 4 KiB", "GET", "/users/" + strings.Repeat("9", maxURIBytes), "", "", 414, codeURITooLong, ""},
		{"16 parameters", "GET", "/users?" + manyParams[1:], "", "", 200, "", ""},
		{"17 parameters", "GET", "/users?" + manyParams, "", "", 400, codeValidationFailed, ""},
		{"1,000 parameters", "GET", "/users?" + strings.Repeat("a=1&", 1000), "", "", 400, codeValidationFailed, ""},

		// SQL and HTML are names like any other.
		{"SQL name", "POST", "/users", js, `{"name":"x'); DROP TABLE users;--"}`, 201, "", ""},
		{"SQL rename", "PUT", userPath(existing.ID), js, `{"name":"' OR '1'='1"}`, 200, "", ""},
		{"HTML name", "POST", "/users", js, `{"name":"<script>alert(1)</script>"}`, 201, "", ""},
		{"SQL name filter", "GET", "/users?name=" + url.QueryEscape("' OR 1=1 --"), "", "", 200, "", ""},
	}
	for _, tt := range tests {
		what := tt.method + " " + tt.name
		start := time.Now()
		var body io.Reader
		if tt.body != "" {
			body = strings.NewReader(tt.body)
		}
		r := s.do(tt.method, tt.target, tt.contentType, body)
		// Generous: each takes milliseconds, even with the race detector.
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("%s: took %v", what, took)
		}
		if tt.code == "" {
			if r.status != tt.status {
				t.Errorf("%s: status = %d, want %d; body %.300s", what, r.status, tt.status, r.body)
			}
			continue
		}
		p := wantProblem(t, what, r, tt.status, tt.code)
		if tt.code == codeValidationFailed && (len(p.Errors) != 1 || p.Errors[0].Field != tt.field) {
			t.Errorf("%s: errors = %+v, want one for field %q", what, p.Errors, tt.field)
		}
		if tt.code == codeURITooLong && p.Instance != "" {
			t.Errorf("%s: instance echoes %d bytes of path", what, len(p.Instance))
		}
	}

	// The hostile names were stored as sent, and only they.
	r := s.get("/users?limit=10")
	var names []string
	for _, u := range decodeJSON[[]user](t, r.body) {
		names = append(names, u.Name)
	}
	want := []string{"' OR '1'='1", "x'); DROP TABLE users;--", "<script>alert(1)</script>"}
	if got, _ := json.Marshal(names); string(got) != mustMarshal(t, want) {
		t.Errorf("GET /users: names %s, want %s", got, mustMarshal(t, want))
	}
}

// TestURILimitBeforeRouting checks that a long target is refused whatever
// the method and route, before the mux sees it: no 405, no redirect.
func TestURILimitBeforeRouting(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	long := strings.Repeat("a", maxURIBytes)
	for _, tt := range []struct{ method, target string }{
		{http.MethodTrace, "/users?" + long},
		{http.MethodGet, "/x/../users?" + long},
		{http.MethodHead, "/users/1?" + long},
		{http.MethodGet, "/healthz?" + long},
		{http.MethodGet, "/" + long}, // no route
	} {
		_, r, err := s.send(tt.method, tt.target, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if r.status != http.StatusRequestURITooLong {
			t.Errorf("%s %.40s…: status = %d, want 414", tt.method, tt.target, r.status)
		}
		s.checkProblem(tt.method, tt.target, r)
	}
}

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// rawServer is the real handler stack on a database of its own, for
// clients that write raw bytes. Its limits are short, so that every
// exchange ends with the server closing the connection once it is done
// with every request on it: it waits wait for headers and for a body
// (BodyTimeout), a tenth of that between requests, and takes 4 KiB of
// headers.
type rawServer struct {
	addr string
	pool *pgxpool.Pool
}

func newRawServer(tb testing.TB, wait time.Duration) rawServer {
	tb.Helper()
	pool := pgtest.NewPool(tb)
	logger := slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	h := New(logger, db.New(pool), postgres.Probe{Q: pool}, Options{
		RequestTimeout: 5 * time.Second,
		BodyTimeout:    wait,
		SchemaVersion:  migrations.Latest(),
	})
	srv := startServer(tb, h, func(s *http.Server) {
		s.ReadHeaderTimeout = wait
		s.IdleTimeout = wait / 10
		s.MaxHeaderBytes = 4 << 10
	})
	return rawServer{addr: srv.Listener.Addr().String(), pool: pool}
}

// exchange writes raw to a new connection and returns every answer the
// server sent (but 1xx) until it closed the connection. It fails the test
// if the server writes anything but whole HTTP responses, or holds the
// connection for 10 s.
func (s rawServer) exchange(tb testing.TB, raw []byte) []response {
	tb.Helper()
	conn, err := net.Dial("tcp", s.addr)
	if err != nil {
		tb.Fatal(err)
	}
	// The server may answer, and close, before it has read everything.
	wrote := make(chan struct{})
	go func() {
		defer close(wrote)
		conn.Write(raw)
	}()
	defer func() {
		conn.Close()
		<-wrote
	}()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	var answers []response
	for {
		// ReadResponse takes a close for a truncated response.
		if _, err := br.Peek(1); errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			return answers
		}
		res, err := http.ReadResponse(br, nil)
		if err != nil {
			tb.Fatalf("%.300q: after %d answers: %v", raw, len(answers), err)
		}
		body, err := io.ReadAll(res.Body)
		if err != nil {
			tb.Fatalf("%.300q: answer %d: read body: %v", raw, len(answers)+1, err)
		}
		if res.StatusCode >= 200 {
			answers = append(answers, response{status: res.StatusCode, header: res.Header, body: body, close: res.Close})
		}
	}
}

// checkExchange checks the answers to raw: each as any answer (see
// checkAnswer), and none after one that said Connection: close.
func checkExchange(t *testing.T, what string, raw []byte, answers []response) {
	t.Helper()
	var client clientText
	client.add(string(raw))
	for i, r := range answers {
		checkAnswer(t, fmt.Sprintf("%s: answer %d", what, i+1), r, client, false)
		if r.close && i < len(answers)-1 {
			t.Errorf("%s: answer %d said Connection: close, yet %d more came", what, i+1, len(answers)-1-i)
		}
	}
}

// lastID returns the highest user id there is, or 0.
func (s rawServer) lastID(tb testing.TB) int64 {
	tb.Helper()
	var id int64
	if err := s.pool.QueryRow(context.Background(), "SELECT coalesce(max(id), 0) FROM users").Scan(&id); err != nil {
		tb.Fatal(err)
	}
	return id
}

// usersAfter returns how many users have an id above id.
func (s rawServer) usersAfter(tb testing.TB, id int64) int {
	tb.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE id > $1", id).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// usersNamed returns how many users are named name.
func (s rawServer) usersNamed(tb testing.TB, name string) int {
	tb.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE name = $1", name).Scan(&n); err != nil {
		tb.Fatal(err)
	}
	return n
}

// smuggledName is the name that the smuggled requests of framingCases
// create: no user may have it after any of them.
const smuggledName = "smuggled"

// rawPost returns a POST /users of {"name": name} framed by Content-Length,
// on HTTP/1.1.
func rawPost(name string) string {
	body := `{"name":"` + name + `"}`
	return fmt.Sprintf("POST /users HTTP/1.1\r\nHost: usersvc\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
}

// chunked returns s as one chunk and the last chunk.
func chunked(s string) string {
	return fmt.Sprintf("%x\r\n%s\r\n0\r\n\r\n", len(s), s)
}

// framingCases are requests framed every way docs/api.md's "Bad input"
// names, as raw bytes, each with the answers it gets, as "status code"
// ("201" for a success): a request smuggled behind one is never one of
// them.
var framingCases = func() []struct {
	name, raw string
	want      []string
	closes    bool // the last answer has Connection: close
} {
	smuggled := rawPost(smuggledName)
	// As a proxy that frames by Content-Length sees it: one request, whose
	// body ends with the smuggled one.
	hidden := "0\r\n\r\n" + smuggled
	const head = "POST /users HTTP/1.1\r\nHost: usersvc\r\nContent-Type: application/json\r\n"
	cl := fmt.Sprintf("Content-Length: %d\r\n", len(hidden))
	return []struct {
		name, raw string
		want      []string
		closes    bool
	}{
		{"Content-Length, then chunked", head + cl + "Transfer-Encoding: chunked\r\n\r\n" + hidden, []string{"411 length_required"}, true},
		{"chunked, then Content-Length", head + "Transfer-Encoding: chunked\r\n" + cl + "\r\n" + hidden, []string{"411 length_required"}, true},
		{"chunked behind an obs-fold", head + cl + "Transfer-Encoding:\r\n chunked\r\n\r\n" + hidden, []string{"411 length_required"}, true},
		{"chunked, in capitals", head + cl + "Transfer-Encoding: CHUNKED\r\n\r\n" + hidden, []string{"411 length_required"}, true},
		{"chunked alone", head + "Transfer-Encoding: chunked\r\n\r\n" + chunked(`{"name":"`+smuggledName+`"}`) + smuggled, []string{"411 length_required"}, true},
		{"chunked with Expect: 100-continue", head + "Expect: 100-continue\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(`{"name":"`+smuggledName+`"}`), []string{"411 length_required"}, true},
		{"chunked on a GET", "GET /users HTTP/1.1\r\nHost: usersvc\r\nTransfer-Encoding: chunked\r\n\r\n" + hidden, []string{"411 length_required"}, true},
		{"gzip, chunked", head + cl + "Transfer-Encoding: gzip, chunked\r\n\r\n" + hidden, []string{"411 length_required"}, true},
		{"identity", head + cl + "Transfer-Encoding: identity\r\n\r\n" + hidden, []string{"411 length_required"}, true},
		{"chunked twice", head + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" + hidden, []string{"411 length_required"}, true},
		{"HTTP/1.0, chunked, keep-alive", "POST /users HTTP/1.0\r\nHost: usersvc\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + hidden, []string{"400 invalid_json"}, true},
		{"HTTP/1.0, chunked and Content-Length", "POST /users HTTP/1.0\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 20\r\n\r\n" + `{"name":"by length"}` + smuggled, []string{"201"}, true},
		{"HTTP/1.0 keep-alive, pipelined", "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" + strings.Replace(smuggled, "HTTP/1.1", "HTTP/1.0", 1), []string{"200"}, true},
		{"HTTP/1.1, pipelined", "GET /healthz HTTP/1.1\r\nHost: usersvc\r\n\r\n" + rawPost("pipelined"), []string{"200", "201"}, false},
		{"two different Content-Lengths", head + "Content-Length: 5\r\nContent-Length: 6\r\n\r\n" + hidden, []string{"400 invalid_request"}, true},
		{"Content-Length with a sign", head + "Content-Length: +5\r\n\r\n" + hidden, []string{"400 invalid_request"}, true},
		{"Content-Length that is a list", head + "Content-Length: 5, 5\r\n\r\n" + hidden, []string{"400 invalid_request"}, true},
		{"space before the colon", head + cl + "Transfer-Encoding : chunked\r\n\r\n" + hidden, []string{"400 invalid_request"}, true},
		{"NUL in a header", head + cl + "X-Note: a\x00b\r\n\r\n" + hidden, []string{"400 invalid_request"}, true},
		{"no Host", "GET /healthz HTTP/1.1\r\n\r\n" + smuggled, []string{"400 invalid_request"}, true},
		{"HTTP/2.0 on HTTP/1", "GET /healthz HTTP/2.0\r\nHost: usersvc\r\n\r\n" + smuggled, []string{"400 invalid_request"}, true},
		{"not HTTP", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + smuggled, []string{"400 invalid_request"}, true},
		{"Expect: something else", "GET /healthz HTTP/1.1\r\nHost: usersvc\r\nExpect: the unexpected\r\n\r\n" + smuggled, []string{"417 expectation_failed"}, true},
		{"headers over the limit", "GET /healthz HTTP/1.1\r\nHost: usersvc\r\nX-Padding: " + strings.Repeat("x", 8<<10) + "\r\n\r\n" + smuggled, []string{"431 headers_too_large"}, true},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: usersvc\r\n\r\n", []string{"404 not_found"}, false},
		{"body shorter than its Content-Length", head + "Content-Length: 100\r\n\r\n" + `{"name":"` + smuggledName + `"}`, []string{"408 request_timeout"}, true},
		{"unread body shorter than its Content-Length", "POST /users HTTP/1.1\r\nHost: usersvc\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n" + smuggledName, []string{"415 unsupported_media_type"}, true},
	}
}()

// TestHostileFraming writes each of framingCases to a connection of its
// own and wants exactly its answers, the connection closed after the last
// one, and no smuggled request run.
func TestHostileFraming(t *testing.T) {
	t.Parallel()
	// Generous, so that a busy machine delays no read past its deadline.
	s := newRawServer(t, 500*time.Millisecond)
	for _, tt := range framingCases {
		answers := s.exchange(t, []byte(tt.raw))
		checkExchange(t, tt.name, []byte(tt.raw), answers)
		var got []string
		for _, r := range answers {
			if code := problemCode(r); code != "" {
				got = append(got, fmt.Sprintf("%d %s", r.status, code))
			} else {
				got = append(got, strconv.Itoa(r.status))
			}
		}
		if !slices.Equal(got, tt.want) {
			t.Errorf("%s: answers %q, want %q", tt.name, got, tt.want)
		}
		if n := len(answers); n > 0 && answers[n-1].close != tt.closes {
			t.Errorf("%s: the last answer has Connection: close %v, want %v", tt.name, answers[n-1].close, tt.closes)
		}
		if n := s.usersNamed(t, smuggledName); n != 0 {
			t.Fatalf("%s: the smuggled request ran: %d users named %q", tt.name, n, smuggledName)
		}
	}
}

// TestHostileHeaders sends hostile values of the headers the service reads
// itself (Idempotency-Key, If-Match, If-None-Match), one by one, and wants
// the exact status and code of each, and nothing changed by any refused.
func TestHostileHeaders(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	u := s.createUser("target")
	path := userPath(u.ID)
	current := s.get(path).header.Get(etagHeader)
	manyTags := strings.Repeat(`"1-1", W/"x", `, 1000) + current

	const js = "application/json"
	tests := []struct {
		name           string
		method, target string
		header         http.Header
		status         int
		code           string // "" for a success
	}{
		{"Idempotency-Key of 10 KiB", "POST", "/users", keyHeader(strings.Repeat("k", 10<<10)), 400, codeValidationFailed},
		{"Idempotency-Key of SQL", "POST", "/users", keyHeader(`'); DROP TABLE idempotency_keys;--`), 201, ""},
		{"Idempotency-Key of invalid UTF-8", "POST", "/users", keyHeader("k\xff\xfe"), 400, codeValidationFailed},
		{"Idempotency-Key of 255 escaped backslashes", "POST", "/users", keyHeader(`"` + strings.Repeat(`\\`, 255) + `"`), 201, ""},
		{"Idempotency-Key of 256 escaped backslashes", "POST", "/users", keyHeader(`"` + strings.Repeat(`\\`, 256) + `"`), 400, codeValidationFailed},
		{"Idempotency-Key of HTML", "POST", "/users", keyHeader(`<script>alert(1)</script>`), 201, ""},
		{"Idempotency-Key in 100 headers", "POST", "/users", keyHeader(strings.Split(strings.Repeat("k,", 100), ",")[:100]...), 400, codeValidationFailed},
		{"If-Match of 1,001 tags, the last current", "GET", path, ifMatch(manyTags), 200, ""},
		{"If-None-Match of 1,001 tags, the last current", "GET", path, ifNoneMatch(manyTags), 304, ""},
		{"If-Match past int64", "PUT", path, ifMatch(fmt.Sprintf(`"%d-99999999999999999999999"`, u.ID)), 412, codePreconditionFailed},
		{"If-Match with a negative time", "PUT", path, ifMatch(fmt.Sprintf(`"%d--5"`, u.ID)), 412, codePreconditionFailed},
		{"If-Match with a leading zero", "PUT", path, ifMatch(strings.Replace(current, "-", "-0", 1)), 412, codePreconditionFailed},
		{"If-Match of invalid UTF-8 in quotes", "DELETE", path, ifMatch("\"\xff\xfe\""), 412, codePreconditionFailed},
		{"If-Match of an empty tag", "DELETE", path, ifMatch(`""`), 412, codePreconditionFailed},
		{"If-Match of only commas", "DELETE", path, ifMatch(" , ,"), 412, codePreconditionFailed},
		{"If-Match with a lowercase w/", "PUT", path, ifMatch(`w/` + current), 400, codeValidationFailed},
		{"If-Match with a space inside the tag", "PUT", path, ifMatch(`"a b"`), 400, codeValidationFailed},
		{"If-Match of SQL", "PUT", path, ifMatch(`' OR 1=1 --`), 400, codeValidationFailed},
		{"If-Match * twice", "PUT", path, ifMatch("*", "*"), 400, codeValidationFailed},
		{"If-None-Match unterminated", "GET", path, ifNoneMatch(`"abc`), 400, codeValidationFailed},
		{"If-None-Match of 10 KiB of W/", "GET", path, ifNoneMatch(strings.Repeat("W/", 5<<10)), 400, codeValidationFailed},
	}
	for i, tt := range tests {
		what := tt.method + " " + tt.name
		var body io.Reader
		contentType := ""
		if tt.method == "POST" || tt.method == "PUT" {
			contentType, body = js, strings.NewReader(fmt.Sprintf(`{"name":"hostile %d"}`, i))
		}
		r := s.doWith(tt.method, tt.target, contentType, body, tt.header)
		if tt.code == "" {
			if r.status != tt.status {
				t.Errorf("%s: status = %d, want %d; body %.300s", what, r.status, tt.status, r.body)
			}
			continue
		}
		p := wantProblem(t, what, r, tt.status, tt.code)
		if tt.code == codeValidationFailed && (len(p.Errors) != 1 || p.Errors[0].In != "header") {
			t.Errorf("%s: errors = %+v, want one for a header", what, p.Errors)
		}
	}

	// The refused requests changed nothing; the keys were stored as sent.
	if got := s.get(path); got.status != http.StatusOK || got.header.Get(etagHeader) != current {
		t.Errorf("GET %s after the hostile headers: %d, ETag %s; want 200 and %s, unchanged", path, got.status, got.header.Get(etagHeader), current)
	}
	var stored [][]byte
	rows, err := s.pool.Query(t.Context(), "SELECT key_digest FROM idempotency_keys ORDER BY user_id")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var d []byte
		if err := rows.Scan(&d); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, d)
	}
	want := [][]byte{anonymousKey(`'); DROP TABLE idempotency_keys;--`), anonymousKey(strings.Repeat(`\`, 255)), anonymousKey(`<script>alert(1)</script>`)}
	if !slices.EqualFunc(stored, want, bytes.Equal) {
		t.Errorf("stored key digests %x, want those of the keys as sent, %x", stored, want)
	}
}
