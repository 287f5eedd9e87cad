package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"usersvc/db"
	"usersvc/internal/postgres"
)

// keyHeader returns a header that sends Idempotency-Key with each of keys.
func keyHeader(keys ...string) http.Header {
	return http.Header{idempotencyKeyHeader: keys}
}

// postKeyed posts body to /users with the key.
func (s *testServer) postKeyed(key, body string) response {
	s.t.Helper()
	return s.doWith(http.MethodPost, "/users", "application/json", strings.NewReader(body), keyHeader(key))
}

// wantReplay fails the test unless r is first again, replayed: the same
// status, body, Location and ETag, with Idempotent-Replayed: true.
func wantReplay(t *testing.T, what string, r, first response) {
	t.Helper()
	if r.status != first.status || r.header.Get(replayedHeader) != "true" {
		t.Fatalf("%s: status %d, %s %q; want %d replayed: %s", what, r.status, replayedHeader, r.header.Get(replayedHeader), first.status, r.body)
	}
	if first.status == http.StatusCreated && !bytes.Equal(r.body, first.body) {
		t.Errorf("%s: body %s, want the first answer's %s", what, r.body, first.body)
	}
	if first.status != http.StatusCreated && problemCode(r) != problemCode(first) {
		t.Errorf("%s: %s, want the first answer's code %s", what, r.body, problemCode(first))
	}
	for _, h := range []string{"Location", etagHeader} {
		if r.header.Get(h) != first.header.Get(h) {
			t.Errorf("%s: %s %q, want the first answer's %q", what, h, r.header.Get(h), first.header.Get(h))
		}
	}
}

// wantExecuted fails the test unless r has the status and was executed,
// not replayed.
func wantExecuted(t *testing.T, what string, r response, status int) {
	t.Helper()
	if r.status != status || r.header.Get(replayedHeader) != "" {
		t.Fatalf("%s: status %d, %s %q; want %d, not replayed: %s", what, r.status, replayedHeader, r.header.Get(replayedHeader), status, r.body)
	}
}

// anonymousKey returns the digest that names key for a client without a
// bearer token.
func anonymousKey(key string) []byte {
	return keyDigest(httptest.NewRequest(http.MethodPost, "/users", nil), key)
}

// storedKey returns the digest of the key recorded with the user created
// with the id.
func (s *testServer) storedKey(id int64) []byte {
	s.t.Helper()
	var d []byte
	if err := s.pool.QueryRow(context.Background(), "SELECT key_digest FROM idempotency_keys WHERE user_id = $1", id).Scan(&d); err != nil {
		s.t.Fatalf("the key of user %d: %v", id, err)
	}
	return d
}

// usersNamed returns how many users have the name, read behind the API.
func (s *testServer) usersNamed(name string) int {
	s.t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE name = $1", name).Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

// keys returns how many idempotency keys the table holds.
func (s *testServer) keys() int {
	s.t.Helper()
	var n int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM idempotency_keys").Scan(&n); err != nil {
		s.t.Fatal(err)
	}
	return n
}

func TestIdempotentCreate(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)

	first := s.postKeyed("k1", `{"name":"alice"}`)
	wantExecuted(t, "POST /users alice with k1", first, http.StatusCreated)
	alice := decodeJSON[user](t, first.body)
	for _, tt := range []struct{ what, key, body string }{
		{"the same request", "k1", `{"name":"alice"}`},
		{"the same name before normalization", "k1", `{"name":"  alice\n"}`},
		{"the key quoted", `"k1"`, `{"name":"alice"}`},
	} {
		wantReplay(t, "POST /users again: "+tt.what, s.postKeyed(tt.key, tt.body), first)
	}
	r := s.postKeyed("k1", `{"name":"bob"}`)
	wantProblem(t, "POST /users bob with alice's key", r, http.StatusUnprocessableEntity, codeIdempotencyKeyReused)
	if n := s.usersNamed("bob"); n != 0 {
		t.Errorf("after the 422, %d users are named bob, want none", n)
	}

	// The answer replayed is the first one, whatever became of the user.
	if r := s.putJSON(userPath(alice.ID), `{"name":"alicia"}`); r.status != http.StatusOK {
		t.Fatalf("PUT %s: status %d", userPath(alice.ID), r.status)
	}
	wantReplay(t, "POST /users alice with k1 after the rename", s.postKeyed("k1", `{"name":"alice"}`), first)
	if r := s.do(http.MethodDelete, userPath(alice.ID), "", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE %s: status %d", userPath(alice.ID), r.status)
	}
	wantReplay(t, "POST /users alice with k1 after the delete", s.postKeyed("k1", `{"name":"alice"}`), first)
	if n := s.usersNamed("alice"); n != 0 {
		t.Errorf("the replays created %d users named alice, want none", n)
	}

	// A taken name, decided by the database, is an outcome too.
	taken := s.createUser("taken")
	dup := s.postKeyed("k2", `{"name":"taken"}`)
	wantExecuted(t, "POST /users taken with k2", dup, http.StatusBadRequest)
	wantProblem(t, "POST /users taken with k2", dup, http.StatusBadRequest, codeDuplicateName)
	if r := s.do(http.MethodDelete, userPath(taken.ID), "", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE %s: status %d", userPath(taken.ID), r.status)
	}
	wantReplay(t, "POST /users taken with k2, the name free now", s.postKeyed("k2", `{"name":"taken"}`), dup)
	if n := s.usersNamed("taken"); n != 0 {
		t.Errorf("the replayed 400 created %d users named taken, want none", n)
	}

	// Refused before the database: nothing recorded, the key stays free.
	for _, tt := range []struct {
		key, contentType, body string
		status                 int
		code                   string
	}{
		{"k3", "application/json", `{"name":""}`, 400, codeValidationFailed},
		{"k4", "application/json", `{"name":`, 400, codeInvalidJSON},
		{"k5", "text/plain", `{"name":"carol"}`, 415, codeUnsupportedMediaType},
		{"k6", "application/json", `{"name":"` + strings.Repeat("x", maxBodyBytes) + `"}`, 413, codePayloadTooLarge},
	} {
		what := fmt.Sprintf("POST /users with %s and Content-Type %s", tt.key, tt.contentType)
		r := s.doWith(http.MethodPost, "/users", tt.contentType, strings.NewReader(tt.body), keyHeader(tt.key))
		wantProblem(t, what, r, tt.status, tt.code)
		wantExecuted(t, what+" then a valid one", s.postKeyed(tt.key, `{"name":"after `+tt.key+`"}`), http.StatusCreated)
	}
	if n := s.keys(); n != 6 {
		t.Errorf("the table holds %d keys, want 6: k1 to k6", n)
	}

	// Without a key, creates are as they were.
	r = s.postJSON("/users", `{"name":"keyless"}`)
	wantExecuted(t, "POST /users without a key", r, http.StatusCreated)
	wantExecuted(t, "POST /users again without a key", s.postJSON("/users", `{"name":"keyless"}`), http.StatusBadRequest)
}

func TestIdempotencyKeyHeader(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	printable := ""
	for c := byte('!'); c <= '~'; c++ {
		printable += string(c)
	}
	for i, tt := range []struct {
		name   string
		values []string
		key    string // as stored; "" for a 400
	}{
		{"uuid", []string{"8e03978e-40d5-43e8-bc93-6894a57f9324"}, "8e03978e-40d5-43e8-bc93-6894a57f9324"},
		{"quoted", []string{`"8e03978e"`}, "8e03978e"},
		{"quoted with escapes", []string{`"a\"b\\c"`}, `a"b\c`},
		{"quoted with spaces", []string{`" a b "`}, " a b "},
		{"inner space", []string{"a b"}, "a b"},
		{"one character", []string{"x"}, "x"},
		{"255 characters", []string{strings.Repeat("k", 255)}, strings.Repeat("k", 255)},
		{"255 characters quoted", []string{`"` + strings.Repeat("q", 255) + `"`}, strings.Repeat("q", 255)},
		{"every printable character but space", []string{printable}, printable},
		{"a quote inside a bare key", []string{`ab"c`}, `ab"c`},

		{"empty", []string{""}, ""},
		{"empty quoted", []string{`""`}, ""},
		{"256 characters", []string{strings.Repeat("k", 256)}, ""},
		{"256 characters quoted", []string{`"` + strings.Repeat("q", 256) + `"`}, ""},
		{"unterminated quote", []string{`"abc`}, ""},
		{"a lone quote", []string{`"`}, ""},
		{"an unescaped quote inside quotes", []string{`"a"b"`}, ""},
		{"an unknown escape", []string{`"a\x"`}, ""},
		{"a trailing backslash", []string{`"abc\"`}, ""},
		{"structured-field parameters", []string{`"abc";v=1`}, ""},
		{"non-ASCII", []string{"ключ"}, ""},
		{"non-ASCII quoted", []string{`"ключ"`}, ""},
		{"tab", []string{"a\tb"}, ""},
		{"two headers", []string{"a", "b"}, ""},
		{"two equal headers", []string{"a", "a"}, ""},
	} {
		name := fmt.Sprintf("user %d", i)
		r := s.doWith(http.MethodPost, "/users", "application/json", strings.NewReader(`{"name":"`+name+`"}`), keyHeader(tt.values...))
		if tt.key == "" {
			p := wantProblem(t, "POST /users with Idempotency-Key "+tt.name, r, http.StatusBadRequest, codeValidationFailed)
			if len(p.Errors) != 1 || p.Errors[0].In != "header" || p.Errors[0].Field != idempotencyKeyHeader {
				t.Errorf("POST /users with Idempotency-Key %s: errors %+v, want one for header %s", tt.name, p.Errors, idempotencyKeyHeader)
			}
			if n := s.usersNamed(name); n != 0 {
				t.Errorf("POST /users with Idempotency-Key %s: refused, yet %d users named %q", tt.name, n, name)
			}
			continue
		}
		wantExecuted(t, "POST /users with Idempotency-Key "+tt.name, r, http.StatusCreated)
		if got := s.storedKey(decodeJSON[user](t, r.body).ID); !bytes.Equal(got, anonymousKey(tt.key)) {
			t.Errorf("Idempotency-Key %s: stored digest %x, want that of key %q", tt.name, got, tt.key)
		}
	}
}

// TestIdempotencyKeyScope checks that keys are per bearer token: the same
// key from two clients is two keys, and neither gets the other's answer.
func TestIdempotencyKeyScope(t *testing.T) {
	t.Parallel()
	s, _ := newAuthServer(t)
	a, b := s.as("Bearer "+tokenOld), s.as("Bearer "+tokenNew)
	fromA := a.postKeyed("shared", `{"name":"from a"}`)
	wantExecuted(t, "POST /users from a", fromA, http.StatusCreated)
	fromB := b.postKeyed("shared", `{"name":"from b"}`)
	wantExecuted(t, "POST /users from b with a's key", fromB, http.StatusCreated)
	wantProblem(t, "POST /users from b with a's key and a's body", b.postKeyed("shared", `{"name":"from a"}`), http.StatusUnprocessableEntity, codeIdempotencyKeyReused)
	wantReplay(t, "POST /users from a again", a.postKeyed("shared", `{"name":"from a"}`), fromA)
	wantReplay(t, "POST /users from b again", b.postKeyed("shared", `{"name":"from b"}`), fromB)

	// Without tokens configured, a bearer token still scopes its keys.
	open := newTestServer(t)
	anon := open.postKeyed("k", `{"name":"x"}`)
	wantExecuted(t, "POST /users without a token", anon, http.StatusCreated)
	withToken := open.as("Bearer some-client-token").postKeyed("k", `{"name":"x"}`)
	wantExecuted(t, "POST /users with a token and the anonymous key", withToken, http.StatusBadRequest)
	wantReplay(t, "POST /users without a token again", open.postKeyed("k", `{"name":"x"}`), anon)
}

// raceKeyed sends one keyed create per body at once, all with key, and
// returns the responses in the bodies' order.
func (s *testServer) raceKeyed(key string, bodies []string) []response {
	s.t.Helper()
	out := make([]response, len(bodies))
	reqs := make([]*http.Request, len(bodies))
	errs := make([]error, len(bodies))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i, body := range bodies {
		wg.Go(func() {
			<-start
			reqs[i], out[i], errs[i] = s.sendWith(http.MethodPost, "/users", "application/json", strings.NewReader(body), keyHeader(key))
		})
	}
	close(start)
	wg.Wait()
	for i := range out {
		if errs[i] != nil {
			s.t.Fatal(errs[i])
		}
		s.check(reqs[i], out[i])
	}
	return out
}

// TestConcurrentKeyedCreates sends one keyed request many times at once:
// one executes, every other gets its answer or 409; and the key sent with
// many different requests at once creates one user, the executed one's.
func TestConcurrentKeyedCreates(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const n = 20
	same := make([]string, n)
	for i := range same {
		same[i] = `{"name":"raced"}`
	}
	res := s.raceKeyed("race", same)
	executed, replayed, inUse := -1, 0, 0
	for i, r := range res {
		switch {
		case r.status == http.StatusCreated && r.header.Get(replayedHeader) == "" && executed < 0:
			executed = i
		case r.status == http.StatusCreated && r.header.Get(replayedHeader) == "true":
			replayed++
		case r.status == http.StatusConflict:
			wantProblem(t, "POST /users raced", r, http.StatusConflict, codeIdempotencyKeyInUse)
			if r.header.Get("Retry-After") != "1" {
				t.Errorf("409: Retry-After %q, want 1", r.header.Get("Retry-After"))
			}
			inUse++
		default:
			t.Errorf("POST /users raced #%d: %d %s %s, want one executed 201 and the rest replayed or 409", i, r.status, r.header.Get(replayedHeader), r.body)
		}
	}
	if executed < 0 {
		t.Fatal("no request executed")
	}
	for i, r := range res {
		if r.status == http.StatusCreated && !bytes.Equal(r.body, res[executed].body) {
			t.Errorf("POST /users raced #%d: %s, want the executed one's %s", i, r.body, res[executed].body)
		}
	}
	if got := s.usersNamed("raced"); got != 1 {
		t.Errorf("%d users named raced, want 1", got)
	}
	t.Logf("%d same requests with one key: 1 executed, %d replayed, %d 409", n, replayed, inUse)

	different := make([]string, n)
	for i := range different {
		different[i] = fmt.Sprintf(`{"name":"contender %d"}`, i)
	}
	executed = -1
	for i, r := range s.raceKeyed("race 2", different) {
		switch {
		case r.status == http.StatusCreated && r.header.Get(replayedHeader) == "" && executed < 0:
			executed = i
		case r.status == http.StatusConflict || r.status == http.StatusUnprocessableEntity:
		default:
			t.Errorf("POST /users contender %d: %d %s, want one 201, the rest 409 or 422", i, r.status, r.body)
		}
	}
	for i := range different {
		want := 0
		if i == executed {
			want = 1
		}
		if got := s.usersNamed(fmt.Sprintf("contender %d", i)); got != want {
			t.Errorf("%d users named contender %d, want %d", got, i, want)
		}
	}
}

// TestKeyInFlight holds a key's claim as a statement still running would:
// a request with the key waits for it within inFlightGrace, and answers
// 409 when it outlasts that.
func TestKeyInFlight(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	hold := func(key string) (release func()) {
		t.Helper()
		tx, err := s.pool.Begin(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		lock := keyedCreate{digest: anonymousKey(key)}.lockID()
		if _, err := tx.Exec(context.Background(), "SELECT pg_advisory_xact_lock($1)", lock); err != nil {
			t.Fatal(err)
		}
		var once sync.Once
		release = func() { once.Do(func() { tx.Rollback(context.Background()) }) }
		t.Cleanup(release)
		return release
	}

	release := hold("held")
	r := s.postKeyed("held", `{"name":"held"}`)
	wantProblem(t, "POST /users while its key is held", r, http.StatusConflict, codeIdempotencyKeyInUse)
	if r.header.Get("Retry-After") != "1" {
		t.Errorf("409: Retry-After %q, want 1", r.header.Get("Retry-After"))
	}
	if n := s.usersNamed("held"); n != 0 || s.keys() != 0 {
		t.Errorf("after the 409: %d users named held, %d keys; want none", n, s.keys())
	}
	release()
	wantExecuted(t, "POST /users once the key is free", s.postKeyed("held", `{"name":"held"}`), http.StatusCreated)

	// Released within the grace, as an abandoned attempt's session ends: the
	// request gets its own outcome.
	release = hold("briefly")
	time.AfterFunc(inFlightGrace/4, release)
	wantExecuted(t, "POST /users while its key is held briefly", s.postKeyed("briefly", `{"name":"briefly"}`), http.StatusCreated)
}

// committingStore makes CreateUserIdempotently fail once as it does when a
// statement with the same key commits while it runs: it runs that other
// statement, then reports the unique violation on the key's record.
type committingStore struct {
	userStore
	once sync.Once
}

func (s *committingStore) CreateUserIdempotently(ctx context.Context, arg db.CreateUserIdempotentlyParams) (db.CreateUserIdempotentlyRow, error) {
	var err error
	s.once.Do(func() {
		if _, err = s.userStore.CreateUserIdempotently(ctx, arg); err == nil {
			err = &pgconn.PgError{Code: "23505", ConstraintName: "idempotency_keys_pkey", Message: "duplicate key value violates unique constraint"}
		}
	})
	if err != nil {
		return db.CreateUserIdempotentlyRow{}, err
	}
	return s.userStore.CreateUserIdempotently(ctx, arg)
}

func TestKeyRecordedMeanwhile(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	store := &committingStore{userStore: db.New(s.pool)}
	h := New(slog.New(slog.NewTextHandler(t.Output(), nil)), store, okDatabase{}, Options{RequestTimeout: 5 * time.Second})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	other := &testServer{t: t, url: srv.URL, pool: s.pool}
	r := other.postKeyed("k", `{"name":"meanwhile"}`)
	if r.status != http.StatusCreated || r.header.Get(replayedHeader) != "true" {
		t.Errorf("POST /users whose key was recorded meanwhile: %d, %s %q; want the other request's 201, replayed: %s", r.status, replayedHeader, r.header.Get(replayedHeader), r.body)
	}
	if n := s.usersNamed("meanwhile"); n != 1 {
		t.Errorf("%d users named meanwhile, want 1", n)
	}
}

// countingPurgeStore records what each purge statement deleted.
type countingPurgeStore struct {
	postgres.PurgeStore
	mu      sync.Mutex
	batches []int64
}

func (s *countingPurgeStore) PurgeIdempotencyKeys(ctx context.Context, arg db.PurgeIdempotencyKeysParams) (int64, error) {
	n, err := s.PurgeStore.PurgeIdempotencyKeys(ctx, arg)
	s.mu.Lock()
	s.batches = append(s.batches, n)
	s.mu.Unlock()
	return n, err
}

func TestPurgeIdempotencyKeys(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	for i := range 25 {
		wantExecuted(t, "POST /users", s.postKeyed(fmt.Sprintf("old %d", i), fmt.Sprintf(`{"name":"old %d"}`, i)), http.StatusCreated)
	}
	fresh := s.postKeyed("fresh", `{"name":"fresh"}`)
	wantExecuted(t, "POST /users fresh", fresh, http.StatusCreated)
	if _, err := s.pool.Exec(context.Background(), "UPDATE idempotency_keys SET created_at = created_at - interval '25 hours' WHERE user_id IN (SELECT id FROM users WHERE name LIKE 'old %')"); err != nil {
		t.Fatal(err)
	}

	store := &countingPurgeStore{PurgeStore: db.New(s.pool)}
	p := postgres.NewKeyPurger(slog.New(slog.NewTextHandler(t.Output(), nil)), store, 24*time.Hour, 5*time.Second)
	p.Batch = 10
	n, err := p.Purge(context.Background())
	if n != 25 || err != nil {
		t.Fatalf("Purge = %d, %v; want 25 keys", n, err)
	}
	if fmt.Sprint(store.batches) != "[10 10 5]" {
		t.Errorf("Purge deleted %v per statement, want [10 10 5]", store.batches)
	}
	if n := s.keys(); n != 1 {
		t.Errorf("%d keys left, want 1, the fresh one", n)
	}
	if n, err := p.Purge(context.Background()); n != 0 || err != nil {
		t.Errorf("Purge again = %d, %v; want 0", n, err)
	}

	// A purged key is forgotten: the request executes again.
	wantReplay(t, "POST /users fresh again", s.postKeyed("fresh", `{"name":"fresh"}`), fresh)
	wantExecuted(t, "POST /users old 0 again", s.postKeyed("old 0", `{"name":"old 0"}`), http.StatusBadRequest)
	wantExecuted(t, "POST /users with old 1 for another name", s.postKeyed("old 1", `{"name":"new 1"}`), http.StatusCreated)
}

// TestKeyPurgerRuns checks that Run purges on its own, and stops with its
// context.
func TestKeyPurgerRuns(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	wantExecuted(t, "POST /users", s.postKeyed("soon gone", `{"name":"soon gone"}`), http.StatusCreated)
	p := postgres.NewKeyPurger(slog.New(slog.NewTextHandler(t.Output(), nil)), db.New(s.pool), 100*time.Millisecond, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Run(ctx)
	}()
	for deadline := time.Now().Add(10 * time.Second); s.keys() != 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the key is still there 10 s after it expired")
		}
	}
	cancel()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return within 10 s of its context's end")
	}
}
