package client

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The whole API through this package, against the real server, is
// internal/server's TestClient. These tests force what usersvc does not
// send: Link headers of other shapes, a proxy's error page, a link to
// another origin.

func TestNextLink(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		values  []string
		want    string // "" for no next page
		wantErr bool
	}{
		{"none", nil, "", false},
		{"usersvc's", []string{`</users?after=2&limit=2>; rel="next"`}, "/users?after=2&limit=2", false},
		{"unquoted, any case, no space", []string{`</users?after=2>;REL=Next`}, "/users?after=2", false},
		{"among others", []string{`</users?after=0>; rel="first", </users?after=9>; rel="next"`}, "/users?after=9", false},
		{"in a second header", []string{`</a>; rel="prev"`, `</b>; rel="next"`}, "/b", false},
		{"one of several relations", []string{`</b>; rel="last next"`}, "/b", false},
		{"a comma in a quoted parameter", []string{`</a>; title="x, rel=next", </b>; rel=next`}, "/b", false},
		{"an escaped quote", []string{`</a>; title="a \"quote\""; rel="next"`}, "/a", false},
		{"no next", []string{`</a>; rel="prev"`}, "", false},
		{"no relation", []string{`</a>`}, "", false},
		{"no <", []string{`/users?after=2>; rel="next"`}, "", true},
		{"no >", []string{`</users?after=2; rel="next"`}, "", true},
		{"unterminated quote", []string{`</a>; rel="next`}, "", true},
		{"no ; before a parameter", []string{`</a> rel="next"`}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := nextLink(http.Header{"Link": tt.values})
			switch {
			case tt.wantErr:
				if err == nil {
					t.Errorf("nextLink(%q) = %v, want an error", tt.values, got)
				}
			case err != nil:
				t.Errorf("nextLink(%q): %v", tt.values, err)
			case tt.want == "" && got != nil:
				t.Errorf("nextLink(%q) = %v, want none", tt.values, got)
			case tt.want != "" && (got == nil || got.String() != tt.want):
				t.Errorf("nextLink(%q) = %v, want %s", tt.values, got, tt.want)
			}
		})
	}
}

func TestErrorWithoutProblem(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html")
		w.Header().Set("X-Request-ID", "proxy-1")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte("<html>bad gateway</html>"))
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetUserWithResponse(t.Context(), 1, nil)
	e, ok := errors.AsType[*Error](err)
	if !ok {
		t.Fatalf("GetUser through a failing proxy: %v, want an *Error", err)
	}
	if e.StatusCode != http.StatusBadGateway || e.Code != "" || e.RequestID == nil || *e.RequestID != "proxy-1" {
		t.Errorf("GetUser through a failing proxy: %+v, want status 502, no code, request id proxy-1", e)
	}
	if want := "usersvc: GET " + srv.URL + "/users/1: 502 Bad Gateway"; e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
}

func TestAllUsersStaysOnTheServer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Link", `<http://elsewhere.invalid/users?after=1>; rel="next"`)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`[{"id":1,"name":"alice","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}]`))
	}))
	t.Cleanup(srv.Close)
	c, err := New(srv.URL, WithBearerToken("secret"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	var errs []error
	for u, err := range c.AllUsers(t.Context(), nil) {
		if err != nil {
			errs = append(errs, err)
			continue
		}
		names = append(names, u.Name)
	}
	if len(names) != 1 || len(errs) != 1 || !strings.Contains(errs[0].Error(), "leaves") {
		t.Errorf("AllUsers with a link to another origin: users %v, errors %v; want alice, then an error", names, errs)
	}
}
