package server

import (
	"encoding/json/v2"
	"io"
	"net/http"
	"net/url"
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
