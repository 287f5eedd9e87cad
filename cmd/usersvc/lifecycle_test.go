package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pgtest"
)

// serving is a usersvc serve running in this process, as main runs it.
type serving struct {
	base   string
	logs   *syncBuffer
	cancel context.CancelFunc // what SIGTERM does
	done   chan error
}

// startServe runs serve with env (HTTP_ADDR is added) until the test ends,
// and waits for /healthz.
func startServe(t *testing.T, env map[string]string) *serving {
	t.Helper()
	addr := pgtest.FreeAddr(t)
	env["HTTP_ADDR"] = addr
	env["LOG_FORMAT"] = "json"
	setenv(t, env)
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{base: "http://" + addr, logs: &syncBuffer{}, cancel: cancel, done: make(chan error, 1)}
	go func() { s.done <- run(ctx, []string{"serve"}, io.Discard, s.logs) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-s.done:
		case <-time.After(20 * time.Second):
			t.Error("serve did not stop within 20s")
		}
	})
	waitFor(t, s.base+"/healthz", 10*time.Second, s.done)
	return s
}

// stop cancels serve and returns what run returned.
func (s *serving) stop(t *testing.T, within time.Duration) error {
	t.Helper()
	s.cancel()
	select {
	case err := <-s.done:
		s.done <- err // for the clean-up
		return err
	case <-time.After(within):
		t.Fatalf("serve did not stop within %v", within)
		return nil
	}
}

// request sends method path with body and returns the status and how long
// it took; a transport error fails the test.
func (s *serving) request(t *testing.T, method, path, body string) (int, time.Duration) {
	t.Helper()
	start := time.Now()
	status, _ := s.requestWith(t, method, path, body, nil)
	return status, time.Since(start)
}

// requestWith is request with header added, and returns the status and the
// response's header.
func (s *serving) requestWith(t *testing.T, method, path, body string, header http.Header) (int, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for name, values := range header {
		req.Header[name] = values
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	io.Copy(io.Discard, res.Body)
	res.Body.Close()
	return res.StatusCode, res.Header
}

// eventually polls method path until it answers want, or fails the test.
func (s *serving) eventually(t *testing.T, method, path, body string, want int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		status, _ := s.request(t, method, path, body)
		if status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s still %d after %v, want %d; log:\n%s", method, path, status, within, want, s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestDatabaseComesAndGoes starts serve before its database exists, with
// AUTO_MIGRATE, then starts, stops and restarts the database under it.
func TestDatabaseComesAndGoes(t *testing.T) {
	const requestTimeout = 2 * time.Second
	dir, port := newPGDir(t), pgtest.FreePort(t)
	s := startServe(t, map[string]string{
		"DATABASE_URL":    fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port),
		"AUTO_MIGRATE":    "true",
		"REQUEST_TIMEOUT": requestTimeout.String(),
	})
	name := 0
	create := func() (int, time.Duration) {
		name++
		return s.request(t, "POST", "/users", fmt.Sprintf(`{"name":"user %d"}`, name))
	}
	wantFastUnavailable := func(when string) {
		t.Helper()
		for _, path := range []string{"/readyz", "/users/1"} {
			if status, took := s.request(t, "GET", path, ""); status != 503 || took > requestTimeout+time.Second {
				t.Errorf("GET %s %s: %d in %v, want 503 within REQUEST_TIMEOUT", path, when, status, took)
			}
		}
		if status, took := create(); status != 503 || took > requestTimeout+time.Second {
			t.Errorf("POST /users %s: %d in %v, want 503 within REQUEST_TIMEOUT", when, status, took)
		}
		if status, _ := s.request(t, "GET", "/healthz", ""); status != 200 {
			t.Errorf("GET /healthz %s: %d, want 200", when, status)
		}
	}

	wantFastUnavailable("before the database exists")
	pg := startPostgres(t, dir, port)
	// The waiting migrations apply, and the pool connects, without a restart.
	s.eventually(t, "GET", "/readyz", "", 200, 15*time.Second)
	if status, _ := create(); status != 201 {
		t.Fatalf("POST /users once the database is up: %d, want 201", status)
	}

	if err := pg.Stop(); err != nil {
		t.Fatal(err)
	}
	wantFastUnavailable("after the database stopped")

	startPostgres(t, dir, port)
	s.eventually(t, "GET", "/readyz", "", 200, 5*time.Second)
	if status, _ := create(); status != 201 {
		t.Errorf("POST /users after the database came back: %d, want 201", status)
	}
	if err := s.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve after SIGTERM = %v, want nil", err)
	}
	logs := logRecords(t, s.logs.String())
	for _, msg := range []string{"database not reachable; migrations wait for it", "migration applied"} {
		if findRecord(logs, "msg", msg) == nil {
			t.Errorf("log lacks %q:\n%s", msg, s.logs.String())
		}
	}
}

// TestHungDatabase serves against a database that accepts connections and
// never answers, as a lost network does: requests end in 503 at
// REQUEST_TIMEOUT, not later.
func TestHungDatabase(t *testing.T) {
	const requestTimeout = time.Second
	s := startServe(t, map[string]string{
		"DATABASE_URL":     "postgres://u@" + silentAddr(t) + "/db?sslmode=disable",
		"REQUEST_TIMEOUT":  requestTimeout.String(),
		"SHUTDOWN_TIMEOUT": "5s",
	})
	for _, tt := range []struct{ method, path, body string }{
		{"GET", "/readyz", ""},
		{"GET", "/users/1", ""},
		{"GET", "/users", ""},
		{"POST", "/users", `{"name":"x"}`},
		{"PUT", "/users/1", `{"name":"x"}`},
		{"DELETE", "/users/1", ""},
	} {
		status, took := s.request(t, tt.method, tt.path, tt.body)
		if status != 503 || took < requestTimeout/2 || took > requestTimeout+time.Second {
			t.Errorf("%s %s against a hung database: %d in %v, want 503 at REQUEST_TIMEOUT (%v)", tt.method, tt.path, status, took, requestTimeout)
		}
	}
	if err := s.stop(t, 10*time.Second); err != nil {
		t.Errorf("serve after SIGTERM = %v, want nil", err)
	}
}

// lockUsers takes an exclusive lock on the users table, which holds every
// request that touches it until the returned function releases it.
func lockUsers(t *testing.T, databaseURL string) (release func()) {
	t.Helper()
	return holdTx(t, databaseURL, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
		return err
	})
}

// holdTx opens a transaction on a connection of its own, runs do in it and
// keeps it open, with its locks, until the returned function (or the end
// of the test) rolls it back.
func holdTx(t *testing.T, databaseURL string, do func(context.Context, pgx.Tx) error) (release func()) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := do(ctx, tx); err != nil {
		conn.Close(ctx)
		t.Fatal(err)
	}
	var once sync.Once
	release = func() {
		once.Do(func() {
			tx.Rollback(ctx)
			conn.Close(ctx)
		})
	}
	t.Cleanup(release)
	return release
}

// waitForBackends polls until the service has n sessions in state (one of
// pg_stat_activity's wait_event_type values, or "any"), or fails the test.
func waitForBackends(t *testing.T, databaseURL string, n int, state string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE application_name = 'usersvc' AND datname = current_database()
			AND ($1 = 'any' OR wait_event_type = $1)`, state).Scan(&got)
		if err != nil {
			t.Fatal(err)
		}
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			rows, err := conn.Query(ctx, "SELECT concat_ws(' | ', application_name, datname, usename, state, wait_event_type, query) FROM pg_stat_activity")
			all, err2 := pgx.CollectRows(rows, pgx.RowTo[string])
			t.Fatalf("usersvc has %d sessions in state %s, want %d; sessions (%v %v): %q", got, state, n, err, err2, all)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestShutdownWithRequestsInFlight sends SIGTERM (cancels run) while
// requests wait on the database: /readyz turns 503 at once, the listener
// closes after SHUTDOWN_DELAY, the requests in flight still succeed, the
// pool closes, and run returns nil.
func TestShutdownWithRequestsInFlight(t *testing.T) {
	databaseURL := pgtest.NewURL(t)
	s := startServe(t, map[string]string{
		"DATABASE_URL":     databaseURL,
		"SHUTDOWN_DELAY":   "1s",
		"SHUTDOWN_TIMEOUT": "10s",
		"REQUEST_TIMEOUT":  "10s",
		"DB_MAX_CONNS":     "8", // more than the requests held in flight
	})
	s.eventually(t, "GET", "/readyz", "", 200, 5*time.Second)

	release := lockUsers(t, databaseURL)
	const inFlight = 5
	statuses := make(chan int, inFlight)
	for i := range inFlight {
		go func() {
			status, _ := s.request(t, "POST", "/users", fmt.Sprintf(`{"name":"in flight %d"}`, i))
			statuses <- status
		}()
	}
	waitForBackends(t, databaseURL, inFlight, "Lock")

	s.cancel() // SIGTERM
	// New connections are still accepted during SHUTDOWN_DELAY, and told
	// that this instance is going away.
	fresh := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	res, err := fresh.Get(s.base + "/readyz")
	if err != nil {
		t.Fatalf("GET /readyz right after SIGTERM: %v", err)
	}
	res.Body.Close()
	if res.StatusCode != 503 {
		t.Errorf("GET /readyz right after SIGTERM: %d, want 503", res.StatusCode)
	}
	// After the delay the listener closes: new connections are refused.
	deadline := time.Now().Add(5 * time.Second)
	for {
		c, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
		if err != nil {
			break
		}
		c.Close()
		if time.Now().After(deadline) {
			t.Fatal("the listener still accepts connections 5s after SIGTERM")
		}
		time.Sleep(20 * time.Millisecond)
	}

	release()
	for range inFlight {
		if status := <-statuses; status != 201 {
			t.Errorf("POST /users in flight at SIGTERM: %d, want 201", status)
		}
	}
	if err := s.stop(t, 10*time.Second); err != nil {
		t.Errorf("serve after SIGTERM = %v, want nil", err)
	}
	pool := pgtest.NewPoolOn(t, databaseURL)
	var n int
	if err := pool.QueryRow(context.Background(), "SELECT count(*) FROM users WHERE name LIKE 'in flight %'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != inFlight {
		t.Errorf("%d users in the table after shutdown, want the %d acknowledged", n, inFlight)
	}
	waitForBackends(t, databaseURL, 0, "any") // the pool closed its connections
}

// TestShutdownTimeout sends SIGTERM while a request is held longer than
// SHUTDOWN_TIMEOUT: serve gives up on it in time and says so.
func TestShutdownTimeout(t *testing.T) {
	databaseURL := pgtest.NewURL(t)
	s := startServe(t, map[string]string{
		"DATABASE_URL":     databaseURL,
		"SHUTDOWN_TIMEOUT": "1s",
		"REQUEST_TIMEOUT":  "10s",
	})
	s.eventually(t, "GET", "/readyz", "", 200, 5*time.Second)
	lockUsers(t, databaseURL)
	go func() {
		req, _ := http.NewRequest("POST", s.base+"/users", strings.NewReader(`{"name":"held"}`))
		req.Header.Set("Content-Type", "application/json")
		if res, err := http.DefaultClient.Do(req); err == nil {
			res.Body.Close()
		}
	}()
	waitForBackends(t, databaseURL, 1, "Lock")
	start := time.Now()
	err := s.stop(t, 5*time.Second)
	if err == nil || !strings.Contains(err.Error(), "SHUTDOWN_TIMEOUT") {
		t.Errorf("serve after SIGTERM with a request held past SHUTDOWN_TIMEOUT = %v, want an error naming it", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("serve took %v to give up, want about SHUTDOWN_TIMEOUT (1s)", took)
	}
}

// TestAutoMigrateFailure starts serve with AUTO_MIGRATE on a database where
// the migration cannot apply: serve stops with the migration's error
// instead of serving a schema it does not know, or retrying forever.
func TestAutoMigrateFailure(t *testing.T) {
	databaseURL := pgtest.NewEmptyURL(t)
	conn, err := pgx.Connect(context.Background(), databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(context.Background(), "CREATE TABLE users (something_else int)")
	conn.Close(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	setenv(t, map[string]string{"DATABASE_URL": databaseURL, "HTTP_ADDR": pgtest.FreeAddr(t), "AUTO_MIGRATE": "true"})
	done := make(chan error, 1)
	go func() { done <- run(context.Background(), []string{"serve"}, io.Discard, io.Discard) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "migrate up") {
			t.Errorf("serve with a failing migration = %v, want the migration's error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve with a failing migration still runs after 15s")
	}
}

// TestDebugAddr checks that profiles are served on DEBUG_ADDR, and only there.
func TestDebugAddr(t *testing.T) {
	debugAddr := pgtest.FreeAddr(t)
	s := startServe(t, map[string]string{"DATABASE_URL": pgtest.NewURL(t), "DEBUG_ADDR": debugAddr})
	res, err := http.Get("http://" + debugAddr + "/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 200 || !strings.Contains(string(body), "goroutine profile:") {
		t.Errorf("GET DEBUG_ADDR/debug/pprof/goroutine: %d %.100q, want a goroutine profile", res.StatusCode, body)
	}
	if status, _ := s.request(t, "GET", "/debug/pprof/", ""); status != 404 {
		t.Errorf("GET HTTP_ADDR/debug/pprof/: %d, want 404: profiles only on DEBUG_ADDR", status)
	}
	if err := s.stop(t, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", debugAddr); err == nil {
		c.Close()
		t.Error("DEBUG_ADDR still accepts connections after serve stopped")
	}
}

// TestStopWhileWaitingForDatabase sends SIGTERM while AUTO_MIGRATE still
// waits for a database that never comes: serve stops cleanly, exit 0.
func TestStopWhileWaitingForDatabase(t *testing.T) {
	s := startServe(t, map[string]string{
		"DATABASE_URL": fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", pgtest.FreePort(t)),
		"AUTO_MIGRATE": "true",
	})
	if err := s.stop(t, 10*time.Second); err != nil {
		t.Fatalf("serve stopped while waiting for the database = %v, want nil", err)
	}
	if !strings.Contains(s.logs.String(), `"msg":"stopped"`) {
		t.Errorf("log lacks the stopped line:\n%s", s.logs.String())
	}
}
