package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
)

// newFeedServer is newTestServer with its change feed running.
func newFeedServer(t *testing.T) *testServer {
	t.Helper()
	pool := pgtest.NewPool(t)
	return &testServer{t: t, pool: pool, url: serveFeedOn(t, pool, true)}
}

// serveFeedOn serves the API on pool's database with its change feed
// running until the test ends, and returns its URL.
func serveFeedOn(t testing.TB, pool *pgxpool.Pool, listen bool) string {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	feed := postgres.NewChanges(pool)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		feed.Run(ctx, logger, listen, 5*time.Second)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return serveAPIOn(t, logger, pool, Options{Changes: feed})
}

// changes gets target, a GET /users/changes, and returns its changes and
// the position its Link header continues after.
func (s *testServer) changes(target string) ([]change, int64) {
	s.t.Helper()
	r := s.get(target)
	if r.status != http.StatusOK {
		s.t.Fatalf("GET %s: status %d, want 200; body %s", target, r.status, r.body)
	}
	return decodeJSON[[]change](s.t, r.body), linkAfter(s.t, r.header)
}

// linkAfter returns the after of the Link header of a feed's answer.
func linkAfter(t testing.TB, h http.Header) int64 {
	t.Helper()
	link := h.Get("Link")
	rest, ok := strings.CutPrefix(link, "</users/changes?after=")
	after, _, ok2 := strings.Cut(rest, "&")
	n, err := strconv.ParseInt(after, 10, 64)
	if !ok || !ok2 || err != nil {
		t.Fatalf("Link = %q, want </users/changes?after=N&limit=M>; rel=\"next\"", link)
	}
	return n
}

// TestChangesEveryWrite makes every kind of write, and every kind of write
// that fails, and checks that the feed has exactly one change per committed
// write, in order, each with the user as the write's answer showed it.
func TestChangesEveryWrite(t *testing.T) {
	t.Parallel()
	s := newFeedServer(t)
	var want []change
	wrote := func(op string, r response) {
		t.Helper()
		u := decodeJSON[user](t, r.body)
		want = append(want, change{Op: op, ID: u.ID, User: &u})
	}

	alice := s.createUser("alice")
	want = append(want, change{Op: "create", ID: alice.ID, User: &alice})
	wantProblem(t, "duplicate create", s.postJSON("/users", `{"name":"alice"}`), http.StatusBadRequest, codeDuplicateName)
	key := http.Header{idempotencyKeyHeader: {"feed-key-1"}}
	r := s.doWith(http.MethodPost, "/users", "application/json", strings.NewReader(`{"name":"bob"}`), key)
	wrote("create", r)
	bob := decodeJSON[user](t, r.body)
	if r := s.doWith(http.MethodPost, "/users", "application/json", strings.NewReader(`{"name":"bob"}`), key); r.header.Get("Idempotent-Replayed") != "true" {
		t.Fatalf("keyed create replayed: status %d, Idempotent-Replayed %q", r.status, r.header.Get("Idempotent-Replayed"))
	}
	wantProblem(t, "keyed duplicate", s.doWith(http.MethodPost, "/users", "application/json", strings.NewReader(`{"name":"alice"}`), http.Header{idempotencyKeyHeader: {"feed-key-2"}}), http.StatusBadRequest, codeDuplicateName)

	r = s.putJSON(userPath(alice.ID), `{"name":"alicia"}`)
	wrote("update", r)
	stale := r.header.Get("ETag")
	wantProblem(t, "rename onto bob", s.putJSON(userPath(alice.ID), `{"name":"bob"}`), http.StatusBadRequest, codeDuplicateName)
	r = s.doWith(http.MethodPatch, userPath(alice.ID), mergePatchType, strings.NewReader(`{"name":"alice2"}`), http.Header{"If-Match": {stale}})
	wrote("update", r)
	current := r.header.Get("ETag")
	if r := s.doWith(http.MethodPatch, userPath(alice.ID), mergePatchType, strings.NewReader(`{}`), nil); r.status != http.StatusOK {
		t.Fatalf("PATCH {}: status %d; body %s", r.status, r.body)
	}
	wantProblem(t, "stale PUT", s.doWith(http.MethodPut, userPath(alice.ID), "application/json", strings.NewReader(`{"name":"x"}`), http.Header{"If-Match": {stale}}), http.StatusPreconditionFailed, codePreconditionFailed)
	wantProblem(t, "stale DELETE", s.doWith(http.MethodDelete, userPath(alice.ID), "", nil, http.Header{"If-Match": {stale}}), http.StatusPreconditionFailed, codePreconditionFailed)
	if r := s.doWith(http.MethodDelete, userPath(alice.ID), "", nil, http.Header{"If-Match": {current}}); r.status != http.StatusNoContent {
		t.Fatalf("conditional DELETE: status %d; body %s", r.status, r.body)
	}
	want = append(want, change{Op: "delete", ID: alice.ID})
	wantProblem(t, "DELETE again", s.do(http.MethodDelete, userPath(alice.ID), "", nil), http.StatusNotFound, codeNotFound)
	if r := s.do(http.MethodDelete, userPath(bob.ID), "", nil); r.status != http.StatusNoContent {
		t.Fatalf("DELETE bob: status %d", r.status)
	}
	want = append(want, change{Op: "delete", ID: bob.ID})

	got, last := s.changes("/users/changes")
	if len(got) != len(want) {
		t.Fatalf("the feed has %d changes, want %d:\n%+v", len(got), len(want), got)
	}
	for i, c := range got {
		w := want[i]
		if c.Op != w.Op || c.ID != w.ID || (c.User == nil) != (w.User == nil) || (c.User != nil && *c.User != *w.User) {
			t.Errorf("change %d = %s %d %+v, want %s %d %+v", i, c.Op, c.ID, c.User, w.Op, w.ID, w.User)
		}
		if i > 0 && c.Position <= got[i-1].Position {
			t.Errorf("change %d: position %d after %d", i, c.Position, got[i-1].Position)
		}
		if c.At.IsZero() {
			t.Errorf("change %d has no at", i)
		}
	}
	if last != got[len(got)-1].Position {
		t.Errorf("Link continues after %d, want the last position %d", last, got[len(got)-1].Position)
	}
	var rows int
	if err := s.pool.QueryRow(context.Background(), "SELECT count(*) FROM user_changes").Scan(&rows); err != nil || rows != len(want) {
		t.Errorf("user_changes holds %d rows (%v), want %d", rows, err, len(want))
	}
}

// TestChangesQuery checks the feed's parameters: paging by limit with a
// Link on every answer, the empty answer's Link, and a 400 for each bad
// parameter, as the list gives.
func TestChangesQuery(t *testing.T) {
	t.Parallel()
	s := newFeedServer(t)
	for i := range 5 {
		s.createUser(fmt.Sprintf("q-%d", i))
	}
	all, _ := s.changes("/users/changes")
	if len(all) != 5 {
		t.Fatalf("%d changes, want 5", len(all))
	}
	var paged []change
	after := int64(0)
	for range 3 {
		page, next := s.changes("/users/changes?limit=2&after=" + strconv.FormatInt(after, 10))
		paged = append(paged, page...)
		after = next
	}
	if len(paged) != 5 || paged[4].Position != all[4].Position || *paged[4].User != *all[4].User {
		t.Errorf("paging by 2 gave %+v, want %+v", paged, all)
	}
	empty, next := s.changes("/users/changes?after=" + strconv.FormatInt(after, 10))
	if len(empty) != 0 || next != after {
		t.Errorf("after the last: %d changes and Link after %d, want none and %d", len(empty), next, after)
	}

	for _, q := range []string{"after=-1", "after=x", "limit=0", "limit=1001", "wait=61", "wait=-1", "wait=1.5", "wait=1s", "name=a", "after=1&after=2", "limit=1&limit=1"} {
		wantProblem(t, "GET /users/changes?"+q, s.get("/users/changes?"+q), http.StatusBadRequest, codeValidationFailed)
	}
}

// TestChangesRelist follows the relist protocol while writes go on: a
// copy made from the list's pages and then the feed after the first
// page's Changes-Position equals the table.
func TestChangesRelist(t *testing.T) {
	t.Parallel()
	s := newFeedServer(t)
	ids := make([]int64, 30)
	for i := range ids {
		ids[i] = s.createUser(fmt.Sprintf("r-%d", i)).ID
	}
	first := s.get("/users?limit=10")
	position, err := strconv.ParseInt(first.header.Get(changesPositionHeader), 10, 64)
	if err != nil {
		t.Fatalf("Changes-Position = %q: %v", first.header.Get(changesPositionHeader), err)
	}
	// Writes between the pages: the feed must bring them all.
	s.putJSON(userPath(ids[0]), `{"name":"r-0-renamed"}`)
	s.do(http.MethodDelete, userPath(ids[25]), "", nil)
	s.createUser("r-late")

	users := map[int64]user{}
	for _, u := range decodeJSON[[]user](t, first.body) {
		users[u.ID] = u
	}
	after := ids[9]
	for {
		page := s.get("/users?limit=10&after=" + strconv.FormatInt(after, 10))
		list := decodeJSON[[]user](t, page.body)
		if page.header.Get(changesPositionHeader) == "" {
			t.Fatal("a page without Changes-Position")
		}
		for _, u := range list {
			users[u.ID] = u
		}
		if len(list) == 0 || page.header.Get("Link") == "" {
			break
		}
		after = list[len(list)-1].ID
	}
	s.putJSON(userPath(ids[1]), `{"name":"r-1-renamed"}`)
	s.do(http.MethodDelete, userPath(ids[2]), "", nil)

	for {
		page, next := s.changes("/users/changes?after=" + strconv.FormatInt(position, 10))
		if len(page) == 0 {
			break
		}
		for _, c := range page {
			apply(users, c)
		}
		position = next
	}
	checkCopy(t, s.pool, "the relisted copy", users)
}

// apply applies c to a copy of the users.
func apply(users map[int64]user, c change) {
	if c.User == nil {
		delete(users, c.ID)
	} else {
		users[c.ID] = *c.User
	}
}

// checkCopy fails the test unless users holds exactly the table's rows.
func checkCopy(t *testing.T, pool *pgxpool.Pool, what string, users map[int64]user) {
	t.Helper()
	rows, err := pool.Query(context.Background(), "SELECT id, name, created_at, updated_at FROM users")
	if err != nil {
		t.Fatal(err)
	}
	table, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (user, error) {
		var u user
		err := row.Scan(&u.ID, &u.Name, &u.CreatedAt, &u.UpdatedAt)
		u.CreatedAt, u.UpdatedAt = u.CreatedAt.UTC(), u.UpdatedAt.UTC()
		return u, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(table) != len(users) {
		t.Errorf("%s has %d users, the table %d", what, len(users), len(table))
	}
	for _, u := range table {
		if got, ok := users[u.ID]; !ok || got != u {
			t.Errorf("%s: user %d = %+v (present %v), the table has %+v", what, u.ID, got, ok, u)
		}
	}
}

// TestChangesWait checks that a waiting request is answered by the next
// write, whether it is woken by LISTEN/NOTIFY from another instance or by
// polling alone, and answered [] when its wait runs out.
func TestChangesWait(t *testing.T) {
	t.Parallel()
	for _, listen := range []bool{true, false} {
		t.Run(fmt.Sprintf("listen=%v", listen), func(t *testing.T) {
			t.Parallel()
			pool := pgtest.NewPool(t)
			writer := &testServer{t: t, pool: pool, url: serveFeedOn(t, pool, listen)}
			reader := &testServer{t: t, pool: pool, url: serveFeedOn(t, pool, listen)}
			_, after := reader.changes("/users/changes")

			start := time.Now()
			empty, next := reader.changes("/users/changes?wait=1&after=" + strconv.FormatInt(after, 10))
			if took := time.Since(start); len(empty) != 0 || next != after || took < time.Second {
				t.Errorf("a wait of 1 s with no write: %d changes, Link after %d, after %s; want none, %d, after 1 s", len(empty), next, took, after)
			}

			got := make(chan []change, 1)
			go func() {
				r := reader.get("/users/changes?wait=30&after=" + strconv.FormatInt(after, 10))
				got <- decodeJSON[[]change](t, r.body)
			}()
			time.Sleep(300 * time.Millisecond) // the request is waiting
			written := time.Now()
			u := writer.createUser("woken")
			select {
			case page := <-got:
				if len(page) != 1 || page[0].ID != u.ID {
					t.Errorf("the waiting request got %+v, want the create of %d", page, u.ID)
				}
				// Far under the wait: woken, not timed out. The delay
				// itself is measured by BenchmarkChangeDelivery.
				if took := time.Since(written); took > 5*time.Second {
					t.Errorf("the waiting request was answered %s after the write", took)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("the waiting request was not answered within 20 s of the write")
			}
		})
	}
}

// TestChangesDrain checks that Drain answers the waiting requests at once,
// and those that come after it without waiting.
func TestChangesDrain(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	h := New(slog.New(slog.NewTextHandler(t.Output(), nil)), db.New(pool), postgres.Probe{Q: pool}, Options{RequestTimeout: 5 * time.Second, Changes: postgres.NewChanges(pool)})
	s := &testServer{t: t, pool: pool, url: startServer(t, h).URL}
	answered := make(chan time.Duration, 1)
	go func() {
		start := time.Now()
		s.get("/users/changes?wait=60")
		answered <- time.Since(start)
	}()
	time.Sleep(300 * time.Millisecond)
	h.Drain()
	select {
	case <-answered:
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting request was not answered within 10 s of Drain")
	}
	start := time.Now()
	s.changes("/users/changes?wait=60")
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a request after Drain waited %s", took)
	}
}

// TestChangesExpired purges old changes and checks that a consumer behind
// the purge gets 410 changes_expired, and one at or past it does not.
func TestChangesExpired(t *testing.T) {
	t.Parallel()
	s := newFeedServer(t)
	for i := range 6 {
		s.createUser(fmt.Sprintf("e-%d", i))
	}
	all, _ := s.changes("/users/changes")
	ctx := context.Background()
	if _, err := s.pool.Exec(ctx, "UPDATE user_changes SET at = now() - interval '8 days' WHERE position <= $1", all[3].Position); err != nil {
		t.Fatal(err)
	}
	p := postgres.NewChangePurger(slog.New(slog.NewTextHandler(t.Output(), nil)), db.New(s.pool), 7*24*time.Hour, 5*time.Second)
	p.Batch = 3 // two batches
	if n, err := p.Purge(ctx); err != nil || n != 4 {
		t.Fatalf("Purge() = %d, %v; want the 4 old changes", n, err)
	}
	for _, after := range []int64{all[0].Position, all[2].Position, all[3].Position - 1} {
		p := wantProblem(t, fmt.Sprintf("after %d, before the horizon", after), s.get("/users/changes?after="+strconv.FormatInt(after, 10)), http.StatusGone, codeChangesExpired)
		if !strings.Contains(p.Detail, "list the users again") {
			t.Errorf("410 detail %q does not say to relist", p.Detail)
		}
	}
	for after, want := range map[int64]int{0: 2, all[3].Position: 2, all[4].Position: 1, all[5].Position: 0} {
		if got, _ := s.changes("/users/changes?after=" + strconv.FormatInt(after, 10)); len(got) != want {
			t.Errorf("after %d: %d changes, want %d", after, len(got), want)
		}
	}
}

// TestChangesGapFree is the feed's central promise under concurrency: 16
// writers, half of them holding their transaction open for a while
// between their write and their commit, the other half renaming users
// whose rows another session keeps locked (their transaction id is then
// old and their commit late), while followers read the feed. No follower
// may see a position at or below one it has seen, and each one's copy
// must equal the table at the end.
func TestChangesGapFree(t *testing.T) {
	t.Parallel()
	const writers, followers, users = 16, 4, 40
	ctx := context.Background()
	// The service and, apart, the writers through SQL and the locker, each
	// on a pool large enough for all of them.
	url := pgtest.NewURL(t)
	newPool := func(conns int32) *pgxpool.Pool {
		cfg, err := pgxpool.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		cfg.MaxConns = conns
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(pool.Close)
		return pool
	}
	apiPool := newPool(writers)
	s := &testServer{t: t, pool: apiPool, url: serveFeedOn(t, apiPool, true)}
	direct := newPool(writers/2 + 1)
	ids := make([]int64, users)
	for i := range ids {
		ids[i] = s.createUser(fmt.Sprintf("g-%d", i)).ID
	}
	deadline := time.Now().Add(6 * time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var writeErrs []error
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		writeErrs = append(writeErrs, err)
	}
	// The locker holds a random user's row for up to 300 ms at a time.
	wg.Go(func() {
		for time.Now().Before(deadline) {
			err := pgx.BeginFunc(ctx, direct, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "SELECT 1 FROM users WHERE id = $1 FOR UPDATE", ids[rand.IntN(users)]); err != nil {
					return err
				}
				time.Sleep(time.Duration(rand.IntN(300)) * time.Millisecond)
				return nil
			})
			if err != nil {
				fail(fmt.Errorf("locker: %w", err))
			}
		}
	})
	for w := range writers {
		wg.Go(func() {
			var created []int64
			for n := 0; time.Now().Before(deadline); n++ {
				id := ids[rand.IntN(users)]
				name := fmt.Sprintf("g-%d-%d", w, n)
				var err error
				if w%2 == 0 {
					// Through SQL: the write, then a pause, then the commit.
					err = pgx.BeginFunc(ctx, direct, func(tx pgx.Tx) error {
						if _, err := tx.Exec(ctx, "UPDATE users SET name = $1, updated_at = greatest(now(), updated_at + interval '1 microsecond') WHERE id = $2", name, id); err != nil {
							return err
						}
						time.Sleep(time.Duration(rand.IntN(50)) * time.Millisecond)
						return nil
					})
				} else {
					// Through the API: a create, a delete of the writer's
					// last create, or a rename (which may wait on the
					// locker's row lock).
					var r response
					switch {
					case n%5 == 0:
						_, r, err = s.send(http.MethodPost, "/users", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
						var u user
						if err == nil && r.status == http.StatusCreated && json.Unmarshal(r.body, &u) == nil {
							created = append(created, u.ID)
						}
					case n%5 == 1 && len(created) > 0:
						_, r, err = s.send(http.MethodDelete, userPath(created[len(created)-1]), "", nil)
						created = created[:len(created)-1]
					default:
						_, r, err = s.send(http.MethodPut, userPath(id), "application/json", strings.NewReader(`{"name":"`+name+`"}`))
					}
					if err == nil && r.status >= 500 {
						err = fmt.Errorf("%d %s", r.status, r.body)
					}
				}
				if err != nil {
					fail(fmt.Errorf("writer %d: %w", w, err))
				}
			}
		})
	}

	type follower struct {
		users     map[int64]user
		last      int64
		caught    atomic.Int64 // last, for the test's goroutine
		delivered int
	}
	fs := make([]*follower, followers)
	limits := [followers]int{7, 100, 500, 1000}
	var fwg sync.WaitGroup
	stop := make(chan struct{})
	for i := range fs {
		f := &follower{users: map[int64]user{}}
		fs[i] = f
		fwg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, r, err := s.send(http.MethodGet, "/users/changes?wait=1&limit="+strconv.Itoa(limits[i])+"&after="+strconv.FormatInt(f.last, 10), "", nil)
				if err != nil || r.status != http.StatusOK {
					t.Errorf("follower %d: %v %d %s", i, err, r.status, r.body)
					return
				}
				var page []change
				if err := json.Unmarshal(r.body, &page); err != nil {
					t.Errorf("follower %d: %v", i, err)
					return
				}
				for _, c := range page {
					if c.Position <= f.last {
						t.Errorf("follower %d: position %d after %d", i, c.Position, f.last)
					}
					f.last = c.Position
					f.delivered++
					apply(f.users, c)
				}
				f.caught.Store(f.last)
			}
		})
	}
	wg.Wait()
	for _, err := range writeErrs {
		t.Error(err)
	}
	// Every follower catches up with the feed's head, then stops.
	var head int64
	if err := s.pool.QueryRow(ctx, "SELECT coalesce(max(position), 0) FROM user_changes").Scan(&head); err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); time.Sleep(50 * time.Millisecond) {
		caught := true
		for _, f := range fs {
			caught = caught && f.caught.Load() == head
		}
		if caught {
			break
		}
	}
	close(stop)
	fwg.Wait()
	var total int
	if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM user_changes").Scan(&total); err != nil {
		t.Fatal(err)
	}
	for i, f := range fs {
		if f.delivered != total {
			t.Errorf("follower %d was delivered %d changes, the feed holds %d", i, f.delivered, total)
		}
		checkCopy(t, s.pool, fmt.Sprintf("follower %d's copy", i), f.users)
	}
	t.Logf("%d writers, %d followers: %d changes delivered to each, gaps 0, duplicates 0 unless reported above", writers, followers, total)
}
