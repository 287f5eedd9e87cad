package main

import (
	"context"
	"encoding/json/v2"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"usersvc/internal/pglocal"

	"github.com/jackc/pgx/v5"
)

// latencyMargin is how much longer than REQUEST_TIMEOUT an answer may take.
// Past the deadline a request only writes a problem document of a few
// hundred bytes to loopback; the margin is for a goroutine that waits for
// one of two shared cores while parallel tests run under the race detector.
const latencyMargin = time.Second

// apiUser is a user as the API returns it.
type apiUser struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// attempt is what one request got: a status and its problem code, or a
// transport error; when it started and ended; and whether it went out on a
// connection that had carried a request before.
type attempt struct {
	op         string // what the request was for, e.g. "create"
	name       string // the name a create or rename sent
	status     int
	code       string // the problem's code, for a 4xx or 5xx
	retryAfter string // the Retry-After header
	body       []byte
	err        error
	reused     bool
	replayed   bool // Idempotent-Replayed: true
	start, end time.Time
}

func (a attempt) took() time.Duration { return a.end.Sub(a.start) }

func (a attempt) String() string {
	if a.err != nil {
		return fmt.Sprintf("%s %q: %v after %v", a.op, a.name, a.err, a.took())
	}
	return fmt.Sprintf("%s %q: %d %s after %v", a.op, a.name, a.status, a.code, a.took())
}

// send sends one request with c and returns what it got. It is safe to call
// from any goroutine.
func send(c *http.Client, method, url, body string) attempt {
	return sendWith(c, method, url, body, nil)
}

// sendWith is send with header added to the request.
func sendWith(c *http.Client, method, url, body string, header http.Header) attempt {
	var reused atomic.Bool
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) { reused.Store(info.Reused) }}
	ctx := httptrace.WithClientTrace(context.Background(), trace)
	var a attempt
	req, err := http.NewRequestWithContext(ctx, method, url, strings.NewReader(body))
	if err != nil {
		a.err = err
		return a
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for name, values := range header {
		req.Header[name] = values
	}
	a.start = time.Now()
	res, err := c.Do(req)
	if err == nil {
		a.status, a.retryAfter = res.StatusCode, res.Header.Get("Retry-After")
		a.replayed = res.Header.Get("Idempotent-Replayed") == "true"
		a.body, err = io.ReadAll(res.Body)
		res.Body.Close()
		if a.status >= 400 && err == nil {
			var p struct {
				Code string `json:"code"`
			}
			if json.Unmarshal(a.body, &p) == nil {
				a.code = p.Code
			}
		}
	}
	a.end = time.Now()
	a.err, a.reused = err, reused.Load()
	return a
}

// nameBody returns the JSON body {"name": name}.
func nameBody(name string) string {
	b, _ := json.Marshal(map[string]string{"name": name})
	return string(b)
}

// usersByName returns every row of the users table by name, read behind
// the service's back.
func usersByName(t *testing.T, databaseURL string) map[string]apiUser {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT id, name, created_at, updated_at FROM users")
	if err != nil {
		t.Fatal(err)
	}
	users, err := pgx.CollectRows(rows, pgx.RowToStructByPos[apiUser])
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]apiUser{}
	for _, u := range users {
		if _, dup := byName[u.Name]; dup {
			t.Errorf("the table holds two users named %q", u.Name)
		}
		byName[u.Name] = u
	}
	return byName
}

// sameUser reports whether a user from the API and a row are the same.
func sameUser(a, b apiUser) bool {
	return a.ID == b.ID && a.Name == b.Name && a.CreatedAt.Equal(b.CreatedAt) && a.UpdatedAt.Equal(b.UpdatedAt)
}

// holdRows opens a transaction that inserts users named insert and locks
// the users with ids lock, without committing: the service's statements on
// those names and rows wait for it in the database, while every other
// statement, and a new connection's preparing, goes on. The returned
// function rolls it back, which lets them proceed.
func holdRows(t *testing.T, databaseURL string, insert []string, lock []int64) (release func()) {
	t.Helper()
	return holdTx(t, databaseURL, func(ctx context.Context, tx pgx.Tx) error {
		for _, name := range insert {
			if _, err := tx.Exec(ctx, "INSERT INTO users (name) VALUES ($1)", name); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, "SELECT 1 FROM users WHERE id = ANY($1) FOR UPDATE", lock)
		return err
	})
}

// load is clients using the service at once, each recording what every
// request got, labelled with the phase of the test it started in.
type load struct {
	t      *testing.T
	base   string
	client *http.Client
	phase  atomic.Pointer[string]
	stop   chan struct{}
	wg     sync.WaitGroup

	mu       sync.Mutex
	attempts map[string][]attempt // by phase
}

func newLoad(t *testing.T, base string, clients int) *load {
	l := &load{
		t:    t,
		base: base,
		// Keep-alive connections, as real clients use them; the timeout
		// only keeps a broken test from hanging: any request that hits it
		// fails the test.
		client:   &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: clients}},
		stop:     make(chan struct{}),
		attempts: map[string][]attempt{},
	}
	t.Cleanup(l.client.CloseIdleConnections)
	return l
}

// setPhase labels the requests that start from now on.
func (l *load) setPhase(phase string) { l.phase.Store(&phase) }

// do sends a request and records what it got under the current phase.
func (l *load) do(op, name, method, path, body string) attempt {
	return l.doWith(op, name, method, path, body, nil)
}

// doWith is do with header added to the request.
func (l *load) doWith(op, name, method, path, body string, header http.Header) attempt {
	phase := *l.phase.Load()
	a := sendWith(l.client, method, l.base+path, body, header)
	a.op, a.name = op, name
	l.mu.Lock()
	l.attempts[phase] = append(l.attempts[phase], a)
	l.mu.Unlock()
	return a
}

// run starts n clients running client(i) until finish.
func (l *load) run(n int, client func(i int)) {
	for i := range n {
		l.wg.Go(func() { client(i) })
	}
}

// pause waits d, or until the load is stopped.
func (l *load) pause(d time.Duration) {
	select {
	case <-l.stop:
	case <-time.After(d):
	}
}

// stopped reports whether finish was called.
func (l *load) stopped() bool {
	select {
	case <-l.stop:
		return true
	default:
		return false
	}
}

// finish stops the clients and waits for them.
func (l *load) finish() {
	close(l.stop)
	l.wg.Wait()
}

// phaseAttempts returns a copy of what the requests of phase got.
func (l *load) phaseAttempts(phase string) []attempt {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.attempts[phase])
}

// waitFor polls until cond holds for the requests of phase, or fails the
// test after within.
func (l *load) waitFor(phase, what string, within time.Duration, cond func([]attempt) bool) {
	l.t.Helper()
	deadline := time.Now().Add(within)
	for !cond(l.phaseAttempts(phase)) {
		if time.Now().After(deadline) {
			l.t.Fatalf("phase %s: no %s within %v", phase, what, within)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// count returns how many of as satisfy f.
func count(as []attempt, f func(attempt) bool) int {
	n := 0
	for _, a := range as {
		if f(a) {
			n++
		}
	}
	return n
}

func created(a attempt) bool { return a.op == "create" && a.status == http.StatusCreated }

// createdAtLeast is a condition for load.waitFor: n creates answered 201.
func createdAtLeast(n int) func([]attempt) bool {
	return func(as []attempt) bool { return count(as, created) >= n }
}
func unavailable(a attempt) bool { return a.status == http.StatusServiceUnavailable }

// firstAfter returns when the first request that satisfies f ended after
// t0, and whether there is one.
func firstAfter(as []attempt, t0 time.Time, f func(attempt) bool) (time.Time, bool) {
	var first time.Time
	for _, a := range as {
		if f(a) && a.end.After(t0) && (first.IsZero() || a.end.Before(first)) {
			first = a.end
		}
	}
	return first, !first.IsZero()
}

// summarize summarises attempts for the log: how many got each class of
// answer, and the slowest.
func summarize(as []attempt) string {
	var ok, client, unavail, other, transport int
	var slowest time.Duration
	for _, a := range as {
		switch {
		case a.err != nil:
			transport++
		case a.status < 300:
			ok++
		case a.status < 500:
			client++
		case a.status == http.StatusServiceUnavailable:
			unavail++
		default:
			other++
		}
		slowest = max(slowest, a.took())
	}
	return fmt.Sprintf("%d requests: %d 2xx, %d 4xx, %d 503, %d other, %d transport errors; slowest %v",
		len(as), ok, client, unavail, other, transport, slowest.Round(time.Millisecond))
}

// restartDatabase stops pg in the phase "stopped", waits until the
// clients have met its absence for a second at least (long enough for
// every pooled connection to fail and for the clients to retry), and starts
// it again on the same directory and port. Returns when it stopped and when
// it was up again.
func (l *load) restartDatabase(t *testing.T, pg *pglocal.Server, dir string, port int) (stoppedAt, upAt time.Time) {
	t.Helper()
	l.setPhase("stopped")
	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	stoppedAt = time.Now()
	l.waitFor("stopped", "503 a second after the stop", 15*time.Second, func(as []attempt) bool {
		return count(as, func(a attempt) bool { return unavailable(a) && a.start.After(stoppedAt.Add(time.Second)) }) >= 1
	})
	startPostgres(t, dir, port)
	return stoppedAt, time.Now()
}
