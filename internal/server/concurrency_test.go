package server

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
)

// These tests race requests against one another through the real handler
// stack and a real database: the outcome of every race is decided by
// PostgreSQL (a row lock, the unique index), never by a check in Go, and
// each client's answer must agree with what the table holds afterwards.

// call is one request of a race: a body, when given, is sent as JSON.
type call struct {
	method, target, body string
}

func (c call) String() string { return c.method + " " + c.target + " " + c.body }

// concurrently sends calls from workers goroutines (at most one per call)
// that start together and take the calls in order, and returns the
// responses in the calls' order, each checked as do checks it. A transport
// error fails the test.
func (s *testServer) concurrently(workers int, calls []call) []response {
	s.t.Helper()
	type result struct {
		req *http.Request
		res response
		err error
	}
	results := make([]result, len(calls))
	next := make(chan int, len(calls))
	for i := range calls {
		next <- i
	}
	close(next)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range min(workers, len(calls)) {
		wg.Go(func() {
			<-start
			for i := range next {
				c := calls[i]
				var contentType string
				var body io.Reader
				if c.body != "" {
					contentType, body = "application/json", strings.NewReader(c.body)
				}
				req, res, err := s.send(c.method, c.target, contentType, body)
				results[i] = result{req, res, err}
			}
		})
	}
	close(start)
	wg.Wait()
	out := make([]response, len(calls))
	for i, r := range results {
		if r.err != nil {
			s.t.Fatal(r.err)
		}
		s.check(r.req, r.res)
		out[i] = r.res
	}
	return out
}

// TestConcurrentRenamesOntoOneName renames many users onto one free name at
// once: exactly one wins, every other gets 400 duplicate_name and keeps
// its name.
func TestConcurrentRenamesOntoOneName(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const n = 40
	users := make([]user, n)
	calls := make([]call, n)
	for i := range users {
		users[i] = s.createUser(fmt.Sprintf("renamer %d", i))
		calls[i] = call{http.MethodPut, userPath(users[i].ID), `{"name":"the one name"}`}
	}

	winner := -1
	for i, r := range s.concurrently(n, calls) {
		switch {
		case r.status == http.StatusOK && winner < 0:
			winner = i
			if got := decodeJSON[user](t, r.body); got.ID != users[i].ID || got.Name != "the one name" {
				t.Errorf("%s: 200 with %+v, want user %d named %q", calls[i], got, users[i].ID, "the one name")
			}
		case r.status == http.StatusOK:
			t.Errorf("%s: 200, but %s won already", calls[i], calls[winner])
		default:
			wantProblem(t, calls[i].String(), r, http.StatusBadRequest, codeDuplicateName)
		}
	}
	if winner < 0 {
		t.Fatalf("%d concurrent renames onto a free name: none succeeded, want one", n)
	}

	holders := decodeJSON[[]user](t, s.get("/users?name=the%20one%20name").body)
	if len(holders) != 1 || holders[0].ID != users[winner].ID {
		t.Errorf("GET /users?name=the one name = %+v, want only user %d", holders, users[winner].ID)
	}
	for i, u := range users {
		if i == winner {
			continue
		}
		if got := decodeJSON[user](t, s.get(userPath(u.ID)).body); got != u {
			t.Errorf("GET %s after losing the race = %+v, want unchanged %+v", userPath(u.ID), got, u)
		}
	}
}

// TestRenameRacesDelete races, round after round, a rename of a user with
// its deletion, and another user's rename onto the name the first one had.
// The row lock orders the rename and the delete: the rename either comes
// first (200, then 204) or finds no row (404 after the 204); never a 5xx,
// never a user that comes back. The unique index decides the other rename:
// 200 when the name was free by then, else 400 duplicate_name.
func TestRenameRacesDelete(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const rounds = 60
	seen := map[string]int{} // how the rounds went, for the log
	for round := range rounds {
		oldName, newName := fmt.Sprintf("victim %d", round), fmt.Sprintf("renamed victim %d", round)
		victim := s.createUser(oldName)
		other := s.createUser(fmt.Sprintf("other %d", round))
		calls := []call{
			{http.MethodPut, userPath(victim.ID), `{"name":"` + newName + `"}`},
			{http.MethodDelete, userPath(victim.ID), ""},
			{http.MethodPut, userPath(other.ID), `{"name":"` + oldName + `"}`},
		}
		res := s.concurrently(len(calls), calls)
		rename, del, takeOver := res[0], res[1], res[2]

		if del.status != http.StatusNoContent {
			t.Errorf("round %d: %s = %d %s, want 204: nothing else deletes the user", round, calls[1], del.status, del.body)
		}
		switch rename.status {
		case http.StatusOK:
			if got := decodeJSON[user](t, rename.body); got.ID != victim.ID || got.Name != newName {
				t.Errorf("round %d: %s = 200 %+v, want user %d named %q", round, calls[0], got, victim.ID, newName)
			}
		case http.StatusNotFound:
			wantProblem(t, calls[0].String(), rename, http.StatusNotFound, codeNotFound)
		default:
			t.Errorf("round %d: %s = %d %s, want 200 (before the delete) or 404 (after it)", round, calls[0], rename.status, rename.body)
		}
		wantOther := other
		switch takeOver.status {
		case http.StatusOK:
			wantOther.Name = oldName
			if got := decodeJSON[user](t, takeOver.body); got.ID != other.ID || got.Name != oldName {
				t.Errorf("round %d: %s = 200 %+v, want user %d named %q", round, calls[2], got, other.ID, oldName)
			}
		case http.StatusBadRequest:
			wantProblem(t, calls[2].String(), takeOver, http.StatusBadRequest, codeDuplicateName)
		default:
			t.Errorf("round %d: %s = %d %s, want 200 (the name was free) or 400 duplicate_name", round, calls[2], takeOver.status, takeOver.body)
		}
		seen[fmt.Sprintf("rename %d, delete %d, take-over %d", rename.status, del.status, takeOver.status)]++

		// The table agrees with what the clients were told.
		wantProblem(t, fmt.Sprintf("round %d: GET the deleted user", round), s.get(userPath(victim.ID)), http.StatusNotFound, codeNotFound)
		if got := decodeJSON[[]user](t, s.get("/users?name="+strings.ReplaceAll(newName, " ", "%20")).body); len(got) != 0 {
			t.Errorf("round %d: users named %q after the delete: %+v, want none", round, newName, got)
		}
		got := decodeJSON[user](t, s.get(userPath(other.ID)).body)
		if got.ID != wantOther.ID || got.Name != wantOther.Name || !got.CreatedAt.Equal(wantOther.CreatedAt) {
			t.Errorf("round %d: GET %s = %+v, want the name %q", round, userPath(other.ID), got, wantOther.Name)
		}
	}
	t.Logf("%d rounds: %v", rounds, seen)
}

// TestConcurrentDistinctCreates creates 1,000 users with distinct names from
// 50 goroutines: every create succeeds, every id is new, and the table
// holds exactly those users, as each client was told.
func TestConcurrentDistinctCreates(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const n, workers = 1000, 50
	calls := make([]call, n)
	for i := range calls {
		calls[i] = call{http.MethodPost, "/users", fmt.Sprintf(`{"name":"bulk %04d"}`, i)}
	}
	told := map[int64]user{}
	for i, r := range s.concurrently(workers, calls) {
		if r.status != http.StatusCreated {
			t.Fatalf("%s: status = %d, want 201; body %s", calls[i], r.status, r.body)
		}
		u := decodeJSON[user](t, r.body)
		if want := fmt.Sprintf("bulk %04d", i); u.Name != want {
			t.Errorf("%s: 201 with name %q, want %q", calls[i], u.Name, want)
		}
		if prev, dup := told[u.ID]; dup {
			t.Errorf("%s: 201 with id %d, which %q was given too", calls[i], u.ID, prev.Name)
		}
		told[u.ID] = u
	}

	var rows int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM users").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != n {
		t.Errorf("SELECT count(*) FROM users = %d, want %d", rows, n)
	}
	listed, pages := s.walk("/users?limit=100")
	if len(listed) != n || pages != n/100 {
		t.Errorf("GET /users pages: %d users in %d pages, want %d in %d", len(listed), pages, n, n/100)
	}
	for _, u := range listed {
		if want, ok := told[u.ID]; !ok || u != want {
			t.Errorf("GET /users lists %+v, but its client was told %+v", u, want)
		}
		delete(told, u.ID)
	}
	for _, u := range told {
		t.Errorf("user %+v was created (201) but GET /users does not list it", u)
	}
}
