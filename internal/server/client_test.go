package server

import (
	"bytes"
	"context"
	"errors"
	"io"
	"iter"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"usersvc/client"
)

// checkedTransport sends requests over http.DefaultTransport and checks
// every response with s.check, against openapi.yaml and the rules every
// response follows, before the client reads it. It counts the GET /users
// requests, the pages a listing took.
type checkedTransport struct {
	s     *testServer
	pages *atomic.Int64
}

func (c checkedTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	res, err := http.DefaultTransport.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return nil, err
	}
	res.Body = io.NopCloser(bytes.NewReader(body))
	c.s.check(req, response{status: res.StatusCode, header: res.Header, body: body, close: res.Close})
	if req.Method == http.MethodGet && req.URL.Path == "/users" {
		c.pages.Add(1)
	}
	return res, nil
}

// TestClient drives the whole API through package client, the Go client
// generated from openapi.yaml, against the real stack with tokens
// configured, and checks every response it gets against openapi.yaml: the
// document, the client and the server cannot drift apart.
func TestClient(t *testing.T) {
	t.Parallel()
	s, _ := newAuthServer(t)
	ctx := t.Context()
	pages := &atomic.Int64{}
	hc := &http.Client{Transport: checkedTransport{s: s, pages: pages}}
	newClient := func(opts ...client.ClientOption) *client.ClientWithResponses {
		t.Helper()
		c, err := client.New(s.url, append(opts, client.WithHTTPClient(hc))...)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	c := newClient(client.WithBearerToken(tokenNew))

	created, err := c.CreateUserWithResponse(ctx, nil, client.UserInput{Name: "  alice\t"})
	if err != nil || created.StatusCode() != http.StatusCreated {
		t.Fatalf("CreateUser alice: %v, %v; want 201", created, err)
	}
	alice := *created.JSON201
	if alice.Name != "alice" || created.Headers201.Location != "/users/"+strconv.FormatInt(alice.ID, 10) {
		t.Errorf("CreateUser alice: %+v at %q, want alice at /users/%d", alice, created.Headers201.Location, alice.ID)
	}

	_, err = c.CreateUserWithResponse(ctx, nil, client.UserInput{Name: "alice"})
	wantClientError(t, "CreateUser alice again", err, http.StatusBadRequest, client.ProblemCodeDuplicateName)
	_, err = c.CreateUserWithResponse(ctx, nil, client.UserInput{Name: " "})
	e := wantClientError(t, "CreateUser blank", err, http.StatusBadRequest, client.ProblemCodeValidationFailed)
	if e.Errors == nil || len(*e.Errors) != 1 || (*e.Errors)[0].In != client.FieldErrorInBody || (*e.Errors)[0].Field != "name" {
		t.Errorf("CreateUser blank: errors %v, want one for the body's name", e.Errors)
	}

	users := []client.User{alice}
	for _, name := range []string{"bob", "carol", "dave", "erin"} {
		res, err := c.CreateUserWithResponse(ctx, nil, client.UserInput{Name: name})
		if err != nil {
			t.Fatalf("CreateUser %s: %v", name, err)
		}
		users = append(users, *res.JSON201)
	}

	limit := 2
	pages.Store(0)
	var listed []client.User
	for u, err := range c.AllUsers(ctx, &client.ListUsersParams{Limit: &limit}) {
		if err != nil {
			t.Fatalf("AllUsers: %v", err)
		}
		listed = append(listed, u)
	}
	if !slices.EqualFunc(listed, users, equalUser) || pages.Load() != 3 {
		t.Errorf("AllUsers by 2: %v in %d pages, want %v in 3", listed, pages.Load(), users)
	}
	pages.Store(0)
	for range c.AllUsers(ctx, &client.ListUsersParams{Limit: &limit}) {
		break
	}
	if pages.Load() != 1 {
		t.Errorf("AllUsers left after its first user: %d pages fetched, want 1", pages.Load())
	}
	name := "carol"
	listed = nil
	for u, err := range c.AllUsers(ctx, &client.ListUsersParams{Name: &name}) {
		if err != nil {
			t.Fatalf("AllUsers carol: %v", err)
		}
		listed = append(listed, u)
	}
	if !slices.EqualFunc(listed, users[2:3], equalUser) {
		t.Errorf("AllUsers named carol: %v, want %v", listed, users[2:3])
	}

	got, err := c.GetUserWithResponse(ctx, alice.ID, nil)
	if err != nil || !equalUser(*got.JSON200, alice) {
		t.Errorf("GetUser alice: %v, %v; want %v", got, err, alice)
	}
	head, err := c.HeadUserWithResponse(ctx, alice.ID, nil)
	if err != nil || head.StatusCode() != http.StatusOK || head.Headers200.ContentLength != len(got.Body) {
		t.Errorf("HeadUser alice: %v, %v; want 200 with Content-Length %d", head, err, len(got.Body))
	}

	renamed, err := c.UpdateUserWithResponse(ctx, alice.ID, nil, client.UserInput{Name: "alicia"})
	if err != nil {
		t.Fatalf("UpdateUser alicia: %v", err)
	}
	if r := *renamed.JSON200; r.ID != alice.ID || r.Name != "alicia" || !r.CreatedAt.Equal(alice.CreatedAt) || r.UpdatedAt.Before(alice.UpdatedAt) {
		t.Errorf("UpdateUser alicia: %+v, want alice %+v renamed", r, alice)
	}
	_, err = c.UpdateUserWithResponse(ctx, users[1].ID, nil, client.UserInput{Name: "alicia"})
	wantClientError(t, "UpdateUser bob to alicia", err, http.StatusBadRequest, client.ProblemCodeDuplicateName)

	// Safe writes, through the headers the client types: a keyed create
	// replayed, the key refused for another name, a conditional rename, a
	// stale one refused, a 304.
	key := "8e03978e-40d5-43e8-bc93-6894a57f9324"
	keyed := &client.CreateUserParams{IdempotencyKey: &key}
	first, err := c.CreateUserWithResponse(ctx, keyed, client.UserInput{Name: "frank"})
	if err != nil || first.Headers201 == nil || first.Headers201.IdempotentReplayed != nil || first.Headers201.ETag == "" {
		t.Fatalf("CreateUser frank with a key: %v, %v; want 201 with an ETag, not replayed", first, err)
	}
	again, err := c.CreateUserWithResponse(ctx, keyed, client.UserInput{Name: "frank"})
	if err != nil || again.Headers201 == nil || again.Headers201.IdempotentReplayed == nil || *again.Headers201.IdempotentReplayed != "true" ||
		!equalUser(*again.JSON201, *first.JSON201) || again.Headers201.ETag != first.Headers201.ETag {
		t.Errorf("CreateUser frank with the key again: %v, %v; want %v replayed", again, err, first.JSON201)
	}
	_, err = c.CreateUserWithResponse(ctx, keyed, client.UserInput{Name: "grace"})
	wantClientError(t, "CreateUser grace with frank's key", err, http.StatusUnprocessableEntity, client.ProblemCodeIdempotencyKeyReused)
	frank, stale := first.JSON201.ID, first.Headers201.ETag
	rename, err := c.UpdateUserWithResponse(ctx, frank, &client.UpdateUserParams{IfMatch: &stale}, client.UserInput{Name: "franklin"})
	if err != nil || rename.Headers200 == nil || rename.Headers200.ETag == stale {
		t.Fatalf("UpdateUser frank with If-Match: %v, %v; want 200 with a new ETag", rename, err)
	}
	_, err = c.UpdateUserWithResponse(ctx, frank, &client.UpdateUserParams{IfMatch: &stale}, client.UserInput{Name: "frankie"})
	wantClientError(t, "UpdateUser frank with a stale If-Match", err, http.StatusPreconditionFailed, client.ProblemCodePreconditionFailed)
	current := rename.Headers200.ETag
	if res, err := c.GetUserWithResponse(ctx, frank, &client.GetUserParams{IfNoneMatch: &current}); err != nil || res.StatusCode() != http.StatusNotModified || res.Headers304.ETag != current {
		t.Errorf("GetUser frank with If-None-Match: %v, %v; want 304 with ETag %s", res, err, current)
	}

	deleted, err := c.DeleteUserWithResponse(ctx, alice.ID, nil)
	if err != nil || deleted.StatusCode() != http.StatusNoContent {
		t.Errorf("DeleteUser alice: %v, %v; want 204", deleted, err)
	}
	_, err = c.GetUserWithResponse(ctx, alice.ID, nil)
	wantClientError(t, "GetUser deleted", err, http.StatusNotFound, client.ProblemCodeNotFound)
	_, err = c.DeleteUserWithResponse(ctx, alice.ID, nil)
	wantClientError(t, "DeleteUser deleted", err, http.StatusNotFound, client.ProblemCodeNotFound)
	// A HEAD has no body: its error has the status, and the request id.
	_, err = c.HeadUserWithResponse(ctx, alice.ID, nil)
	if e := wantClientError(t, "HeadUser deleted", err, http.StatusNotFound, ""); e.RequestID == nil {
		t.Errorf("HeadUser deleted: no request id in %v", e)
	}

	for _, anon := range []*client.ClientWithResponses{newClient(), newClient(client.WithBearerToken(wrongToken))} {
		_, err = anon.ListUsersWithResponse(ctx, nil)
		wantClientError(t, "ListUsers without a valid token", err, http.StatusUnauthorized, client.ProblemCodeUnauthorized)
		wantAllUsersError(t, "AllUsers without a valid token", anon.AllUsers(ctx, nil), http.StatusUnauthorized, client.ProblemCodeUnauthorized)
		if res, err := anon.GetReadinessWithResponse(ctx); err != nil || res.JSON200 == nil || res.JSON200.Status != client.StatusStatusOk {
			t.Errorf("GetReadiness without a valid token: %v, %v; want 200 ok", res, err)
		}
	}
}

// TestGeneratedClient checks what the generated client, without New's
// errors, makes of the API's answers: the 400 union told apart by its
// discriminator, a HEAD's 404 without a body, and AllUsers' error.
func TestGeneratedClient(t *testing.T) {
	t.Parallel()
	s, _ := newAuthServer(t)
	ctx := t.Context()
	hc := &http.Client{Transport: checkedTransport{s: s, pages: &atomic.Int64{}}}
	c, err := client.NewClientWithResponses(s.url, client.WithHTTPClient(hc), client.WithBearerToken(tokenOld))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.CreateUserWithResponse(ctx, nil, client.UserInput{Name: "alice"}); err != nil {
		t.Fatal(err)
	}

	// problem400 creates a user named name and returns the 400 problem
	// that the union's discriminator picks.
	problem400 := func(name string) any {
		t.Helper()
		res, err := c.CreateUserWithResponse(ctx, nil, client.UserInput{Name: name})
		if err != nil || res.ApplicationProblemJSON400 == nil {
			t.Fatalf("CreateUser %q: %v, %v; want a 400 problem", name, res, err)
		}
		v, err := res.ApplicationProblemJSON400.ValueByDiscriminator()
		if err != nil {
			t.Fatalf("CreateUser %q: ValueByDiscriminator: %v", name, err)
		}
		return v
	}
	if p, ok := problem400("alice").(client.BadRequestProblem); !ok || p.Code != client.ProblemCodeDuplicateName || p.Status != http.StatusBadRequest {
		t.Errorf("CreateUser alice again: %#v, want a BadRequestProblem, duplicate_name", p)
	}
	if p, ok := problem400("").(client.ValidationProblem); !ok || p.Code != client.ProblemCodeValidationFailed || len(p.Errors) != 1 {
		t.Errorf("CreateUser with no name: %#v, want a ValidationProblem with one error", p)
	}

	head, err := c.HeadUserWithResponse(ctx, 1<<40, nil)
	if err != nil || head.StatusCode() != http.StatusNotFound {
		t.Errorf("HeadUser of no one: %v, %v; want 404", head, err)
	}

	anon, err := client.NewClientWithResponses(s.url, client.WithHTTPClient(hc))
	if err != nil {
		t.Fatal(err)
	}
	wantAllUsersError(t, "AllUsers without a token", anon.AllUsers(ctx, nil), http.StatusUnauthorized, client.ProblemCodeUnauthorized)
}

// wantClientError fails the test unless err is a *client.Error with this
// status and code, and returns it.
func wantClientError(t *testing.T, what string, err error, status int, code client.ProblemCode) *client.Error {
	t.Helper()
	var e *client.Error
	if !errors.As(err, &e) {
		t.Fatalf("%s: error %v, want a *client.Error", what, err)
	}
	if e.StatusCode != status || e.Code != code {
		t.Errorf("%s: %v, want status %d, code %q", what, e, status, code)
	}
	return e
}

// wantAllUsersError fails the test unless users yields no user and one
// *client.Error with this status and code.
func wantAllUsersError(t *testing.T, what string, users iter.Seq2[client.User, error], status int, code client.ProblemCode) {
	t.Helper()
	n := 0
	for u, err := range users {
		n++
		if err == nil {
			t.Errorf("%s: yields user %+v, want an error", what, u)
			continue
		}
		wantClientError(t, what, err, status, code)
	}
	if n != 1 {
		t.Errorf("%s: yields %d times, want once", what, n)
	}
}

// equalUser reports whether a and b are the same user, timestamps compared
// as instants.
func equalUser(a, b client.User) bool {
	return a.ID == b.ID && a.Name == b.Name && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// TestClientChanges runs the README's consumer loop with package client:
// relist, then follow Changes from the first page's Changes-Position while
// writes go on, until the copy equals the table; then a consumer behind the
// purge gets the one 410 changes_expired and Changes stops.
func TestClientChanges(t *testing.T) {
	t.Parallel()
	s := newFeedServer(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	c, err := client.New(s.url, client.WithHTTPClient(&http.Client{Transport: checkedTransport{s: s, pages: &atomic.Int64{}}}))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		s.createUser("c-" + strconv.Itoa(i))
	}

	// As the README has it.
	res, err := c.ListUsersWithResponse(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	from, err := strconv.ParseInt(res.HTTPResponse.Header.Get("Changes-Position"), 10, 64)
	if err != nil {
		t.Fatalf("Changes-Position: %v", err)
	}
	users := map[int64]client.User{}
	for u, err := range c.AllUsers(ctx, nil) {
		if err != nil {
			t.Fatal(err)
		}
		users[u.ID] = u
	}
	go func() { // writes while the consumer follows, some after it waits
		s.putJSON("/users/1", `{"name":"c-0-renamed"}`)
		s.do(http.MethodDelete, "/users/2", "", nil)
		time.Sleep(300 * time.Millisecond)
		s.createUser("c-late")
	}()
	want := 5 + 3 // the creates (already reflected, and maybe seen again) and the three writes
	seen := 0
	for ch, err := range c.Changes(ctx, from) {
		if err != nil {
			t.Fatalf("Changes: %v", err)
		}
		if ch.User == nil {
			delete(users, ch.ID)
		} else {
			users[ch.ID] = *ch.User
		}
		if ch.Position > from {
			seen++
		}
		if ch.User != nil && ch.User.Name == "c-late" {
			break
		}
	}
	if seen < 3 || seen > want {
		t.Errorf("Changes delivered %d changes after position %d, want 3 to %d", seen, from, want)
	}
	copied := map[int64]user{}
	for id, u := range users {
		copied[id] = user{ID: u.ID, Name: u.Name, CreatedAt: u.CreatedAt.UTC(), UpdatedAt: u.UpdatedAt.UTC()}
	}
	checkCopy(t, s.pool, "the client's copy", copied)

	// Behind the purge: one error, then the loop ends.
	if _, err := s.pool.Exec(ctx, "UPDATE user_changes_horizon SET purged_through = 3"); err != nil {
		t.Fatal(err)
	}
	var errs []error
	for _, err := range c.Changes(ctx, 1) {
		errs = append(errs, err)
	}
	if len(errs) != 1 {
		t.Fatalf("Changes behind the purge yielded %v, want one error and the end", errs)
	}
	wantClientError(t, "Changes behind the purge", errs[0], http.StatusGone, client.ProblemCodeChangesExpired)
}
