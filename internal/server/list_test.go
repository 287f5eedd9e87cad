package server

import (
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"testing"
)

var nextLink = regexp.MustCompile(`^<(/users\?[^>]*)>; rel="next"$`)

// walk follows the Link headers from first to the last page and returns the
// users in the order served and the number of pages.
func (s *testServer) walk(first string) (users []user, pages int) {
	s.t.Helper()
	for target := first; target != ""; pages++ {
		if pages > 100 {
			s.t.Fatalf("GET %s: more than 100 pages", first)
		}
		r := s.get(target)
		if r.status != http.StatusOK {
			s.t.Fatalf("GET %s: status = %d, want 200; body %s", target, r.status, r.body)
		}
		users = append(users, decodeJSON[[]user](s.t, r.body)...)
		target = ""
		if link := r.header.Get("Link"); link != "" {
			m := nextLink.FindStringSubmatch(link)
			if m == nil {
				s.t.Fatalf("GET %s: Link = %q, want </users?...>; rel=\"next\"", target, link)
			}
			target = m[1]
		}
	}
	return users, pages
}

func TestListUsersEmpty(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	r := s.get("/users")
	if r.status != http.StatusOK || string(r.body) != "[]" || r.header.Get("Link") != "" {
		t.Errorf("GET /users on an empty table = %d %q Link %q, want 200 [] and no Link", r.status, r.body, r.header.Get("Link"))
	}
}

func TestListUsersPagination(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	var want []int64
	for i := range 7 {
		want = append(want, s.createUser(fmt.Sprintf("user-%d", i)).ID)
	}
	// A deleted user leaves a gap that pages skip.
	if r := s.do(http.MethodDelete, userPath(want[3]), "", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE: status = %d", r.status)
	}
	want = slices.Delete(want, 3, 4)

	tests := []struct {
		first     string
		wantIDs   []int64
		wantPages int
	}{
		{"/users?limit=2", want, 3},         // 2+2+2
		{"/users?limit=3", want, 2},         // 3+3: an exact fit, no empty third page
		{"/users?limit=4", want, 2},         // 4+2
		{"/users", want, 1},                 // default limit 50
		{"/users?limit=1000", want, 1},      // the maximum
		{"/users?limit=1", want, len(want)}, // one at a time
		{fmt.Sprintf("/users?after=%d&limit=2", want[1]), want[2:], 2},
		{fmt.Sprintf("/users?after=%d", want[len(want)-1]), nil, 1},
		{"/users?after=0&limit=5", want, 2},
	}
	for _, tt := range tests {
		users, pages := s.walk(tt.first)
		var ids []int64
		for _, u := range users {
			ids = append(ids, u.ID)
		}
		if !slices.Equal(ids, tt.wantIDs) || pages != tt.wantPages {
			t.Errorf("walk from %s: ids %v in %d pages, want %v in %d", tt.first, ids, pages, tt.wantIDs, tt.wantPages)
		}
	}

	r := s.get("/users?limit=2")
	if got, want := r.header.Get("Link"), fmt.Sprintf(`</users?after=%d&limit=2>; rel="next"`, want[1]); got != want {
		t.Errorf("GET /users?limit=2: Link = %q, want %q", got, want)
	}
}

func TestListUsersByName(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	s.createUser("anna")
	bo := s.createUser("Bo & Co")
	s.createUser("carl")

	for _, tt := range []struct {
		target string
		want   []int64
	}{
		{"/users?name=Bo+%26+Co", []int64{bo.ID}},
		{"/users?name=%20Bo%20%26%20Co%20", []int64{bo.ID}}, // trimmed like on create
		{"/users?name=bo+%26+co", nil},                      // exact, case-sensitive
		{"/users?name=nobody", nil},
		{fmt.Sprintf("/users?name=Bo+%%26+Co&after=%d", bo.ID), nil},
	} {
		r := s.get(tt.target)
		var ids []int64
		for _, u := range decodeJSON[[]user](t, r.body) {
			ids = append(ids, u.ID)
		}
		if r.status != http.StatusOK || !slices.Equal(ids, tt.want) || r.header.Get("Link") != "" {
			t.Errorf("GET %s = %d %s Link %q, want 200, ids %v, no Link", tt.target, r.status, r.body, r.header.Get("Link"), tt.want)
		}
	}

	// The next link keeps the filter (and limit) as given.
	r := s.get("/users?name=Bo+%26+Co&limit=1&after=0")
	if link := r.header.Get("Link"); link != "" {
		t.Errorf("one match with limit=1: Link = %q, want none", link)
	}
}

func TestListUsersNextLinkKeepsName(t *testing.T) {
	t.Parallel()
	q := listQuery{limit: 10, name: "Bo & Co/é"}
	if got, want := q.nextLink(42), `</users?after=42&limit=10&name=Bo+%26+Co%2F%C3%A9>; rel="next"`; got != want {
		t.Errorf("nextLink = %q, want %q", got, want)
	}
}

func TestListUsersRejects(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	for _, tt := range []struct {
		query  string
		fields []string
	}{
		{"limit=0", []string{"limit"}},
		{"limit=1001", []string{"limit"}},
		{"limit=-5", []string{"limit"}},
		{"limit=abc", []string{"limit"}},
		{"limit=", []string{"limit"}},
		{"limit=1e3", []string{"limit"}},
		{"limit=1e309", []string{"limit"}},
		{"limit=2.5", []string{"limit"}},
		{"limit=99999999999999999999", []string{"limit"}},
		{"after=-1", []string{"after"}},
		{"after=x", []string{"after"}},
		{"after=9223372036854775808", []string{"after"}},
		{"limit=5&limit=6", []string{"limit"}},
		{"name=", []string{"name"}},
		{"name=%00", []string{"name"}},
		{"nmae=bob", []string{"nmae"}},
		{"limit=0&after=-1", []string{"after", "limit"}},
		{"limit=%zz", []string{""}},
		{"name=%80", []string{"name"}},
		{"%80=1", []string{"\uFFFD"}},
	} {
		r := s.get("/users?" + tt.query)
		p := wantProblem(t, "GET /users?"+tt.query, r, 400, codeValidationFailed)
		var fields []string
		for _, e := range p.Errors {
			if e.In != "query" {
				t.Errorf("GET /users?%s: error in %q, want query", tt.query, e.In)
			}
			fields = append(fields, e.Field)
		}
		if !slices.Equal(fields, tt.fields) {
			t.Errorf("GET /users?%s: fields %q, want %q", tt.query, fields, tt.fields)
		}
	}
}
