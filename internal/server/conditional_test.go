package server

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// ifMatch and ifNoneMatch return a header with the precondition's values.
func ifMatch(values ...string) http.Header     { return http.Header{ifMatchHeader: values} }
func ifNoneMatch(values ...string) http.Header { return http.Header{ifNoneMatchHeader: values} }

// tagOf returns the ETag of r, which must have one, strong.
func tagOf(t *testing.T, what string, r response) string {
	t.Helper()
	tag := r.header.Get(etagHeader)
	if !strings.HasPrefix(tag, `"`) || !strings.HasSuffix(tag, `"`) || len(tag) < 3 {
		t.Fatalf("%s: status %d, ETag %q, want a strong entity tag", what, r.status, tag)
	}
	return tag
}

func TestETags(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	created := s.postJSON("/users", `{"name":"ed"}`)
	u := decodeJSON[user](t, created.body)
	path := userPath(u.ID)
	tags := []string{tagOf(t, "POST /users", created)}
	current := func(what string) {
		t.Helper()
		want := tags[len(tags)-1]
		if got := tagOf(t, "GET "+path, s.get(path)); got != want {
			t.Errorf("%s: GET %s ETag %s, want %s", what, path, got, want)
		}
		if got := tagOf(t, "HEAD "+path, s.do(http.MethodHead, path, "", nil)); got != want {
			t.Errorf("%s: HEAD %s ETag %s, want %s", what, path, got, want)
		}
	}
	current("after the create")
	for _, name := range []string{"edward", "edward", " edward "} {
		r := s.putJSON(path, `{"name":"`+name+`"}`)
		tag := tagOf(t, "PUT "+path, r)
		for _, old := range tags {
			if tag == old {
				t.Errorf("PUT %s to %q: ETag %s, which an earlier state had: want a new one on every rename", path, name, tag)
			}
		}
		tags = append(tags, tag)
		current("after a rename to " + name)
	}
	s.createUser("other")
	wantProblem(t, "PUT onto another user's name", s.putJSON(path, `{"name":"other"}`), http.StatusBadRequest, codeDuplicateName)
	current("after a refused rename")
}

func TestIfNoneMatch(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	u := s.createUser("nina")
	path := userPath(u.ID)
	stale := tagOf(t, "GET", s.get(path))
	current := tagOf(t, "PUT", s.putJSON(path, `{"name":"nina"}`))
	otherTag := tagOf(t, "POST", s.postJSON("/users", `{"name":"other"}`))
	body := s.get(path).body

	for _, tt := range []struct {
		what   string
		values []string
		status int
	}{
		{"the current tag", []string{current}, http.StatusNotModified},
		{"the current tag, weak", []string{"W/" + current}, http.StatusNotModified},
		{"*", []string{"*"}, http.StatusNotModified},
		{"a list with the current tag", []string{`"x", ` + stale + " ,, " + current}, http.StatusNotModified},
		{"the current tag in a second header", []string{stale, current}, http.StatusNotModified},
		{"a stale tag", []string{stale}, http.StatusOK},
		{"another user's tag", []string{otherTag}, http.StatusOK},
		{"a tag of another form", []string{`"nina"`}, http.StatusOK},
	} {
		for _, method := range []string{http.MethodGet, http.MethodHead} {
			what := fmt.Sprintf("%s %s with If-None-Match %s", method, path, tt.what)
			r := s.doWith(method, path, "", nil, ifNoneMatch(tt.values...))
			if r.status != tt.status {
				t.Fatalf("%s: status %d, want %d; body %s", what, r.status, tt.status, r.body)
			}
			if got := tagOf(t, what, r); got != current {
				t.Errorf("%s: ETag %s, want %s", what, got, current)
			}
			switch {
			case r.status == http.StatusNotModified && len(r.body) != 0:
				t.Errorf("%s: 304 with a %d-byte body", what, len(r.body))
			case r.status == http.StatusOK && method == http.MethodGet && string(r.body) != string(body):
				t.Errorf("%s: %s, want %s", what, r.body, body)
			}
		}
	}
	wantProblem(t, "GET a missing user with If-None-Match *", s.doWith(http.MethodGet, "/users/999999", "", nil, ifNoneMatch("*")), http.StatusNotFound, codeNotFound)
}

func TestIfMatch(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	u := s.createUser("mia")
	path := userPath(u.ID)
	other := s.createUser("other")
	otherTag := tagOf(t, "GET", s.get(userPath(other.ID)))
	stale := tagOf(t, "GET", s.get(path))
	current := tagOf(t, "PUT", s.putJSON(path, `{"name":"mia"}`))

	// unchanged fails the test unless the user is still in the state whose
	// tag is current.
	unchanged := func(what string) {
		t.Helper()
		r := s.get(path)
		if r.status != http.StatusOK || r.header.Get(etagHeader) != current {
			t.Errorf("after %s: GET %s = %d, ETag %s; want 200 and %s, unchanged", what, path, r.status, r.header.Get(etagHeader), current)
		}
	}
	for _, tt := range []struct {
		what        string
		header      http.Header
		name        string
		status      int
		code        string
		changesUser bool
	}{
		{"If-Match stale", ifMatch(stale), "mia 1", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-Match current, weak", ifMatch("W/" + current), "mia 2", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-Match another user's", ifMatch(otherTag), "mia 3", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-Match of another form", ifMatch(`"mia"`), "mia 4", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-None-Match current", ifNoneMatch(current), "mia 5", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-None-Match *", ifNoneMatch("*"), "mia 6", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-Match current and If-None-Match current", http.Header{ifMatchHeader: {current}, ifNoneMatchHeader: {current}}, "mia 7", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-Match stale, a taken name", ifMatch(stale), "other", http.StatusPreconditionFailed, codePreconditionFailed, false},
		{"If-Match current, a taken name", ifMatch(current), "other", http.StatusBadRequest, codeDuplicateName, false},
		{"If-Match malformed", ifMatch("mia"), "mia 8", http.StatusBadRequest, codeValidationFailed, false},
		{"If-Match * and a tag", ifMatch(`*, ` + current), "mia 9", http.StatusBadRequest, codeValidationFailed, false},
		{"If-None-Match malformed", ifNoneMatch(`"unterminated`), "mia 10", http.StatusBadRequest, codeValidationFailed, false},
		{"If-Match current", ifMatch(current), "mia 11", http.StatusOK, "", true},
		{"If-Match *", ifMatch("*"), "mia 12", http.StatusOK, "", true},
		{"If-Match a list with the current tag", nil, "mia 13", http.StatusOK, "", true},
		{"If-None-Match stale", ifNoneMatch(stale), "mia 14", http.StatusOK, "", true},
		{"If-Match current, If-None-Match stale", nil, "mia 15", http.StatusOK, "", true},
	} {
		switch tt.name {
		case "mia 13":
			tt.header = ifMatch(stale + ", " + current)
		case "mia 15":
			tt.header = http.Header{ifMatchHeader: {current}, ifNoneMatchHeader: {stale}}
		}
		what := "PUT " + path + " with " + tt.what
		r := s.doWith(http.MethodPut, path, "application/json", strings.NewReader(`{"name":"`+tt.name+`"}`), tt.header)
		if tt.code != "" {
			p := wantProblem(t, what, r, tt.status, tt.code)
			if tt.code == codeValidationFailed && (len(p.Errors) != 1 || p.Errors[0].In != "header") {
				t.Errorf("%s: errors %+v, want one in a header", what, p.Errors)
			}
		} else if r.status != tt.status {
			t.Fatalf("%s: status %d, want %d; body %s", what, r.status, tt.status, r.body)
		}
		if !tt.changesUser {
			unchanged(tt.what)
			continue
		}
		renamed := decodeJSON[user](t, r.body)
		if renamed.Name != tt.name {
			t.Errorf("%s: renamed to %q, want %q", what, renamed.Name, tt.name)
		}
		stale, current = current, tagOf(t, what, r)
		unchanged(tt.what) // the new state
	}

	// Body checks come before preconditions; a missing user is 404 whatever they say.
	wantProblem(t, "PUT with a stale If-Match and an empty name", s.doWith(http.MethodPut, path, "application/json", strings.NewReader(`{"name":""}`), ifMatch(stale)), http.StatusBadRequest, codeValidationFailed)
	for _, h := range []http.Header{ifMatch(current), ifMatch("*"), ifNoneMatch("*")} {
		wantProblem(t, fmt.Sprintf("PUT a missing user with %v", h), s.doWith(http.MethodPut, "/users/999999", "application/json", strings.NewReader(`{"name":"ghost"}`), h), http.StatusNotFound, codeNotFound)
		wantProblem(t, fmt.Sprintf("DELETE a missing user with %v", h), s.doWith(http.MethodDelete, "/users/999999", "", nil, h), http.StatusNotFound, codeNotFound)
	}

	// GET with If-Match.
	wantProblem(t, "GET with a stale If-Match", s.doWith(http.MethodGet, path, "", nil, ifMatch(stale)), http.StatusPreconditionFailed, codePreconditionFailed)
	if r := s.doWith(http.MethodGet, path, "", nil, ifMatch(current)); r.status != http.StatusOK {
		t.Errorf("GET with the current If-Match: status %d, want 200", r.status)
	}

	// DELETE.
	for _, h := range []http.Header{ifMatch(stale), ifMatch("W/" + current), ifNoneMatch(current), ifNoneMatch("*")} {
		wantProblem(t, fmt.Sprintf("DELETE with %v", h), s.doWith(http.MethodDelete, path, "", nil, h), http.StatusPreconditionFailed, codePreconditionFailed)
		unchanged(fmt.Sprintf("DELETE with %v", h))
	}
	wantProblem(t, "DELETE with a malformed If-Match", s.doWith(http.MethodDelete, path, "", nil, ifMatch("W/")), http.StatusBadRequest, codeValidationFailed)
	if r := s.doWith(http.MethodDelete, path, "", nil, ifMatch(current)); r.status != http.StatusNoContent {
		t.Fatalf("DELETE with the current If-Match: status %d, want 204; body %s", r.status, r.body)
	}
	wantProblem(t, "GET after the conditional delete", s.get(path), http.StatusNotFound, codeNotFound)
	if r := s.doWith(http.MethodDelete, userPath(other.ID), "", nil, ifMatch("*")); r.status != http.StatusNoContent {
		t.Errorf("DELETE with If-Match *: status %d, want 204", r.status)
	}
}

// TestConcurrentConditionalRenames has 20 clients read one user and rename
// it with If-Match at once: exactly one wins, the other nineteen get 412,
// and the table holds the winner's name.
func TestConcurrentConditionalRenames(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const n = 20
	u := s.createUser("contested")
	path := userPath(u.ID)
	res := make([]response, n)
	reqs := make([]*http.Request, n)
	errs := make([]error, n)
	read := make(chan struct{})
	var reading, wg sync.WaitGroup
	reading.Add(n)
	for i := range n {
		wg.Go(func() {
			_, r, err := s.send(http.MethodGet, path, "", nil)
			tag := r.header.Get(etagHeader)
			reading.Done()
			if err != nil {
				errs[i] = err
				return
			}
			<-read // every client has read before any writes
			reqs[i], res[i], errs[i] = s.sendWith(http.MethodPut, path, "application/json",
				strings.NewReader(fmt.Sprintf(`{"name":"client %d"}`, i)), ifMatch(tag))
		})
	}
	reading.Wait()
	close(read)
	wg.Wait()
	winner, lost := -1, 0
	for i, r := range res {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		s.check(reqs[i], r)
		switch r.status {
		case http.StatusOK:
			if winner >= 0 {
				t.Errorf("client %d: 200, but client %d won already", i, winner)
			}
			winner = i
		case http.StatusPreconditionFailed:
			wantProblem(t, fmt.Sprintf("client %d", i), r, http.StatusPreconditionFailed, codePreconditionFailed)
			lost++
		default:
			t.Errorf("client %d: %d %s, want 200 or 412", i, r.status, r.body)
		}
	}
	if winner < 0 || lost != n-1 {
		t.Fatalf("%d conditional renames: winner %d, %d × 412; want one 200 and %d × 412", n, winner, lost, n-1)
	}
	got := s.get(path)
	if stored := decodeJSON[user](t, got.body); stored.Name != fmt.Sprintf("client %d", winner) {
		t.Errorf("GET %s: name %q, want the winner's, %q", path, stored.Name, fmt.Sprintf("client %d", winner))
	}
	if got.header.Get(etagHeader) != res[winner].header.Get(etagHeader) {
		t.Errorf("GET %s: ETag %s, want the winner's %s", path, got.header.Get(etagHeader), res[winner].header.Get(etagHeader))
	}
}

// TestConditionalRenameRacesDelete races, round after round, a rename and
// a delete of one user, both with the ETag they read: exactly one of them
// happens. A rename first makes the delete's tag stale (412); a delete first
// leaves the rename no user (404).
func TestConditionalRenameRacesDelete(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const rounds = 30
	seen := map[string]int{}
	for round := range rounds {
		u := s.createUser(fmt.Sprintf("victim %d", round))
		path := userPath(u.ID)
		tag := tagOf(t, "GET", s.get(path))
		var rename, del response
		var wg sync.WaitGroup
		var renameErr, delErr error
		var renameReq, delReq *http.Request
		start := make(chan struct{})
		wg.Go(func() {
			<-start
			renameReq, rename, renameErr = s.sendWith(http.MethodPut, path, "application/json", strings.NewReader(`{"name":"renamed"}`), ifMatch(tag))
		})
		wg.Go(func() {
			<-start
			delReq, del, delErr = s.sendWith(http.MethodDelete, path, "", nil, ifMatch(tag))
		})
		close(start)
		wg.Wait()
		if renameErr != nil || delErr != nil {
			t.Fatal(renameErr, delErr)
		}
		s.check(renameReq, rename)
		s.check(delReq, del)
		outcome := fmt.Sprintf("rename %d, delete %d", rename.status, del.status)
		seen[outcome]++
		switch outcome {
		case "rename 200, delete 412":
			if got := decodeJSON[user](t, s.get(path).body); got.Name != "renamed" {
				t.Errorf("round %d: %s, yet the user is named %q", round, outcome, got.Name)
			}
			if r := s.do(http.MethodDelete, path, "", nil); r.status != http.StatusNoContent {
				t.Fatalf("round %d: clean-up DELETE: %d", round, r.status)
			}
		case "rename 404, delete 204":
			wantProblem(t, fmt.Sprintf("round %d: GET after %s", round, outcome), s.get(path), http.StatusNotFound, codeNotFound)
		default:
			t.Errorf("round %d: %s (%s, %s), want one of them to happen", round, outcome, rename.body, del.body)
		}
	}
	t.Logf("%d rounds: %v", rounds, seen)
}
