package server

import (
	"bytes"
	"encoding/json/v2"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestHostileInput sends each kind of hostile value the README's "Bad
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
		{http.MethodPatch, "/users?" + long},
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
