package main

import (
	"context"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pgtest"
)

// These tests hurt the service's database, or the service itself, while
// clients use it, and then check every answer the clients got against what
// the table holds.

// TestFaultsUnderLoad serves clients that create users (retrying a create
// that got 503 with the same name, as docs/api.md advises), read them back
// and list pages, while the database's sessions are terminated, and then
// while the database is stopped and started again. Every answer is 2xx, a
// 4xx that the retry explains, or 503 unavailable, within REQUEST_TIMEOUT
// and a margin; traffic resumes within 2 s of the database's return without
// a restart of the service; and every user a client was told was created
// is in the table as it was told.
func TestFaultsUnderLoad(t *testing.T) {
	const (
		requestTimeout = time.Second
		clients        = 8
		recoveryBound  = 2 * time.Second
	)
	dir, port := newPGDir(t), pgtest.FreePort(t)
	pg := startPostgres(t, dir, port)
	databaseURL := pg.URL("postgres")
	pgtest.Migrate(t, databaseURL)
	s := startServe(t, map[string]string{
		"DATABASE_URL":    databaseURL,
		"REQUEST_TIMEOUT": requestTimeout.String(),
	})
	s.eventually(t, "GET", "/readyz", "", 200, 10*time.Second)

	l := newLoad(t, s.base, clients)
	l.setPhase("steady")
	l.run(clients, func(c int) {
		var pending string // a name whose create got 503: retried until settled
		var mine []int64
		for i := 0; !l.stopped(); i++ {
			name, op := pending, "retry"
			if name == "" {
				name, op = fmt.Sprintf("client %d user %d", c, i), "create"
			}
			a := l.do(op, name, "POST", "/users", nameBody(name))
			switch {
			case a.status == http.StatusCreated:
				var u apiUser
				if json.Unmarshal(a.body, &u) == nil {
					mine = append(mine, u.ID)
				}
				pending = ""
			case a.status == http.StatusServiceUnavailable:
				pending = name
			default:
				pending = "" // a duplicate after a 503, or a failure the checks report
			}
			if len(mine) > 0 {
				id := mine[i%len(mine)]
				l.do("get", "", "GET", fmt.Sprintf("/users/%d", id), "")
			}
			if i%4 == 0 {
				l.do("list", "", "GET", "/users?limit=20", "")
			}
			if a.status == http.StatusServiceUnavailable {
				// Retry-After says 1 s; these clients are more eager, so
				// that the test sees recovery soon, but not a busy loop.
				l.pause(20 * time.Millisecond)
			}
		}
	})
	defer func() {
		if !l.stopped() {
			l.finish()
		}
	}()
	l.waitFor("steady", "200 creates", 15*time.Second, createdAtLeast(200))

	// Terminate every session of the service, three times over, while
	// requests run on them.
	admin, err := pgx.Connect(context.Background(), databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	l.setPhase("terminated")
	terminatedAt := time.Now()
	killed := 0
	for round := range 3 {
		var n int
		err := admin.QueryRow(context.Background(),
			"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'usersvc'").Scan(&n)
		if err != nil {
			t.Fatal(err)
		}
		killed += n
		l.waitFor("terminated", "creates after a termination", 15*time.Second, createdAtLeast(50*(round+1)))
	}
	if killed == 0 {
		t.Fatal("pg_terminate_backend found no session of the service to end")
	}
	admin.Close(context.Background())

	// Stop the database, let the clients meet its absence, and start it
	// again on the same port and directory.
	stoppedAt, upAt := l.restartDatabase(t, pg, dir, port)
	l.setPhase("restarted")
	l.waitFor("restarted", "200 creates", 15*time.Second, createdAtLeast(200))
	l.finish()
	if err := s.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve after SIGTERM = %v, want nil", err)
	}

	// Every answer was one of those promised, in time.
	table := usersByName(t, databaseURL)
	maybe := map[string]bool{} // names whose create got 503: in the table or not
	var told []attempt         // the creates that got 201
	for _, phase := range []string{"steady", "terminated", "stopped", "restarted"} {
		as := l.phaseAttempts(phase)
		t.Logf("phase %-10s %s", phase, summarize(as))
		for _, a := range as {
			switch {
			case a.err != nil:
				t.Errorf("phase %s: %v: want an answer", phase, a)
			case a.took() > requestTimeout+latencyMargin:
				t.Errorf("phase %s: %v: longer than REQUEST_TIMEOUT (%v) + %v", phase, a, requestTimeout, latencyMargin)
			}
			switch {
			case a.err != nil:
			case a.status == http.StatusServiceUnavailable && a.code == "unavailable":
				if a.op == "create" || a.op == "retry" {
					maybe[a.name] = true
				}
			case a.status == http.StatusCreated && (a.op == "create" || a.op == "retry"):
				told = append(told, a)
			case a.status == http.StatusOK && (a.op == "get" || a.op == "list"):
			case a.status == http.StatusBadRequest && a.code == "duplicate_name" && a.op == "retry":
				// An earlier attempt that answered 503 had committed.
				if _, ok := table[a.name]; !ok {
					t.Errorf("phase %s: %v, but no user has that name", phase, a)
				}
			default:
				t.Errorf("phase %s: %v %s: not an answer this request may get", phase, a, a.body)
			}
		}
	}

	// Traffic came back soon after each fault, without a restart.
	if first, ok := firstAfter(l.phaseAttempts("terminated"), terminatedAt, created); ok {
		t.Logf("first 201 %v after the first termination", first.Sub(terminatedAt).Round(time.Millisecond))
	}
	first, ok := firstAfter(l.phaseAttempts("restarted"), upAt, created)
	if !ok {
		t.Fatal("no create succeeded after the database came back")
	}
	recovery := first.Sub(upAt)
	t.Logf("database down for %v; first 201 %v after it accepted connections again", upAt.Sub(stoppedAt).Round(time.Millisecond), recovery.Round(time.Millisecond))
	if recovery > recoveryBound {
		t.Errorf("the first create succeeded %v after the database came back, want within %v", recovery, recoveryBound)
	}

	// Every user a client was told about is in the table as it was told;
	// every other row is a create that got 503 and committed anyway.
	confirmed := map[string]bool{}
	for _, a := range told {
		var u apiUser
		if err := json.Unmarshal(a.body, &u); err != nil {
			t.Fatalf("%v: %v", a, err)
		}
		confirmed[u.Name] = true
		if row, ok := table[u.Name]; !ok || !sameUser(row, u) {
			t.Errorf("%v told %+v, the table holds %+v (present: %v)", a, u, row, ok)
		}
	}
	committedAnyway := 0
	for name := range table {
		switch {
		case confirmed[name]:
		case maybe[name]:
			committedAnyway++
		default:
			t.Errorf("the table holds %q, which no client created", name)
		}
	}
	t.Logf("%d users created and confirmed, %d in the table after a 503 only; %d sessions terminated",
		len(told), committedAnyway, killed)
}

// TestRetryAfter503 shows what a 503 means for a write: it may have
// happened or not, and a retry of the same request settles it. A create
// retried gets 201 or 400 duplicate_name, and the table never holds two
// users of a name, while one retried with its Idempotency-Key gets the 201
// the first attempt lost; a rename retried gets 200; a delete retried gets
// 204 or 404.
func TestRetryAfter503(t *testing.T) {
	const requestTimeout = 2 * time.Second
	dir, port := newPGDir(t), pgtest.FreePort(t)
	pg := startPostgres(t, dir, port)
	databaseURL := pg.URL("postgres")
	pgtest.Migrate(t, databaseURL)
	admin, err := pgx.Connect(context.Background(), databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { admin.Close(context.Background()) }()
	// The throwaway server commits asynchronously; the service's sessions
	// here wait for their commits, as on a production server.
	for _, sql := range []string{"ALTER DATABASE postgres SET synchronous_commit = on", "CREATE TABLE probe (n int)"} {
		if _, err := admin.Exec(context.Background(), sql); err != nil {
			t.Fatal(err)
		}
	}
	s := startServe(t, map[string]string{
		"DATABASE_URL":    databaseURL,
		"REQUEST_TIMEOUT": requestTimeout.String(),
	})
	s.eventually(t, "GET", "/readyz", "", 200, 10*time.Second)
	client := &http.Client{Timeout: 30 * time.Second}
	t.Cleanup(client.CloseIdleConnections)
	doWith := func(method, path, body string, header http.Header) attempt {
		t.Helper()
		a := sendWith(client, method, s.base+path, body, header)
		if a.err != nil {
			t.Fatalf("%s %s: %v", method, path, a.err)
		}
		return a
	}
	do := func(method, path, body string) attempt {
		t.Helper()
		return doWith(method, path, body, nil)
	}
	keyed := http.Header{"Idempotency-Key": {"acknowledged late"}}
	want := func(what string, a attempt, status int, code string) {
		t.Helper()
		if a.status != status || a.code != code {
			t.Fatalf("%s: %d %q %s, want %d %q", what, a.status, a.code, a.body, status, code)
		}
	}
	create := func(name string) apiUser {
		t.Helper()
		a := do("POST", "/users", nameBody(name))
		want("POST /users "+name, a, 201, "")
		var u apiUser
		if err := json.Unmarshal(a.body, &u); err != nil {
			t.Fatal(err)
		}
		return u
	}
	renamee, deletee := create("renamee"), create("deletee")

	t.Run("the writes happened", func(t *testing.T) {
		// Commits wait for a synchronous standby that never answers, as
		// when a replica lags: each write commits in the database, but its
		// acknowledgement comes after REQUEST_TIMEOUT, so its client gets
		// 503. (Cancelled in that wait, PostgreSQL keeps the commit.)
		syncStandby(t, admin, databaseURL, "nobody")
		var wg sync.WaitGroup
		results := make([]attempt, 4)
		reqs := []struct {
			method, path, body string
			header             http.Header
		}{
			{"POST", "/users", nameBody("acknowledged late"), nil},
			{"PUT", fmt.Sprintf("/users/%d", renamee.ID), nameBody("renamed"), nil},
			{"DELETE", fmt.Sprintf("/users/%d", deletee.ID), "", nil},
			{"POST", "/users", nameBody("acknowledged late, with a key"), keyed},
		}
		for i, req := range reqs {
			wg.Go(func() { results[i] = doWith(req.method, req.path, req.body, req.header) })
		}
		wg.Wait()
		for i, req := range reqs {
			want(req.method+" "+req.path+" waiting for the standby", results[i], 503, "unavailable")
			if took := results[i].took(); took > requestTimeout+latencyMargin {
				t.Errorf("%s %s: 503 after %v, want within REQUEST_TIMEOUT (%v) + %v", req.method, req.path, took, requestTimeout, latencyMargin)
			}
		}
		syncStandby(t, admin, databaseURL, "")

		// Released from their wait, the three commits become visible.
		var table map[string]apiUser
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			table = usersByName(t, databaseURL)
			_, created := table["acknowledged late"]
			_, renamed := table["renamed"]
			_, notDeleted := table["deletee"]
			_, keyedCreated := table["acknowledged late, with a key"]
			if created && renamed && !notDeleted && keyedCreated {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("10s after the 503s: created %v, renamed %v, deleted %v, created with a key %v; want all four done", created, renamed, !notDeleted, keyedCreated)
			}
		}
		want("POST /users, retried", do("POST", "/users", nameBody("acknowledged late")), 400, "duplicate_name")
		// With its key, the retry gets the answer the first attempt lost.
		replay := doWith("POST", "/users", nameBody("acknowledged late, with a key"), keyed)
		want("POST /users with its key, retried", replay, 201, "")
		var u apiUser
		if err := json.Unmarshal(replay.body, &u); err != nil || !replay.replayed || !sameUser(u, table["acknowledged late, with a key"]) {
			t.Errorf("POST /users with its key, retried: %s, replayed %v; want the user the first attempt created, %+v, replayed", replay.body, replay.replayed, table["acknowledged late, with a key"])
		}
		found := do("GET", "/users?name=acknowledged%20late", "")
		var users []apiUser
		if err := json.Unmarshal(found.body, &users); err != nil || len(users) != 1 || !sameUser(users[0], table["acknowledged late"]) {
			t.Errorf("GET /users?name=acknowledged late = %d %s, want the one user, %+v", found.status, found.body, table["acknowledged late"])
		}
		want("PUT, retried", do("PUT", fmt.Sprintf("/users/%d", renamee.ID), nameBody("renamed")), 200, "")
		want("DELETE, retried", do("DELETE", fmt.Sprintf("/users/%d", deletee.ID), ""), 404, "not_found")
		if n := len(usersByName(t, databaseURL)); n != len(table) {
			t.Errorf("the retries changed the number of users from %d to %d", len(table), n)
		}
	})

	for _, end := range []string{"REQUEST_TIMEOUT", "pg_terminate_backend"} {
		t.Run("the create did not happen: "+end, func(t *testing.T) {
			// Another transaction holds the name: the create waits for it
			// until the service gives up (and cancels the statement) or
			// the database ends the session. Either way it rolls back.
			name := "cut off by " + end
			release := holdRows(t, databaseURL, []string{name}, nil)
			result := make(chan attempt, 1)
			go func() { result <- send(client, "POST", s.base+"/users", nameBody(name)) }()
			waitForBackends(t, databaseURL, 1, "Lock")
			if end == "pg_terminate_backend" {
				_, err := admin.Exec(context.Background(),
					"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'usersvc' AND wait_event_type = 'Lock'")
				if err != nil {
					t.Fatal(err)
				}
			}
			a := <-result
			want("POST /users "+name, a, 503, "unavailable")
			if end == "pg_terminate_backend" && a.took() >= requestTimeout {
				t.Errorf("POST /users %s: 503 after %v, want before REQUEST_TIMEOUT (%v): the session ended", name, a.took(), requestTimeout)
			}
			waitForBackends(t, databaseURL, 0, "Lock") // the statement is gone, not waiting
			release()
			if _, ok := usersByName(t, databaseURL)[name]; ok {
				t.Fatalf("%q is in the table: want the create rolled back", name)
			}
			create(name)
		})
	}

	t.Run("the create did not happen: the database is down", func(t *testing.T) {
		if err := pg.Stop(); err != nil {
			t.Fatal(err)
		}
		want("POST /users while the database is down", do("POST", "/users", nameBody("later")), 503, "unavailable")
		startPostgres(t, dir, port)
		s.eventually(t, "GET", "/readyz", "", 200, 10*time.Second)
		create("later")
	})
}

// syncStandby sets synchronous_standby_names and waits until commits obey
// it: with a name, until a probe commit waits for that standby (the probe
// is then cancelled, which keeps its commit); with "", until a probe commit
// completes.
func syncStandby(t *testing.T, admin *pgx.Conn, databaseURL, name string) {
	t.Helper()
	ctx := context.Background()
	for _, sql := range []string{fmt.Sprintf("ALTER SYSTEM SET synchronous_standby_names = '%s'", name), "SELECT pg_reload_conf()"} {
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		probe, err := pgx.Connect(ctx, databaseURL)
		if err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { _, err := probe.Exec(ctx, "INSERT INTO probe VALUES (1)"); done <- err }()
		completed, waited := false, false
		for !completed && !waited && time.Now().Before(deadline) {
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
				completed = true
			case <-time.After(10 * time.Millisecond):
				var event string
				err := admin.QueryRow(ctx, "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1", probe.PgConn().PID()).Scan(&event)
				if err != nil {
					t.Fatal(err)
				}
				waited = event == "SyncRep"
			}
		}
		if waited {
			if _, err := admin.Exec(ctx, "SELECT pg_cancel_backend($1)", probe.PgConn().PID()); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		probe.Close(ctx)
		if name == "" && completed || name != "" && waited {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("synchronous_standby_names = '%s' not in force after 10s", name)
		}
	}
}

// refused reports whether err is a refused connection: the listener was
// closed, so the request never reached the service.
func refused(err error) bool { return errors.Is(err, syscall.ECONNREFUSED) }

// unread returns how a failed attempt shows that the service never read
// its request, or "" when it does not. Besides a refused connection, a
// connection may end (EOF or a reset, with nothing of an answer) in two
// ways while the service shuts down: a kept-alive one that the server
// closed as idle just as the request went out, or a new one that the
// kernel had completed for a listener that closed before accepting it.
func unread(a attempt) string {
	switch {
	case refused(a.err):
		return "refused"
	case strings.HasSuffix(a.err.Error(), ": http: server closed idle connection"):
		// net/http's own (unexported) error for that end of a reused
		// connection: nothing of an answer came.
		return "kept-alive connection closed as idle"
	case !errors.Is(a.err, io.EOF) && !errors.Is(a.err, syscall.ECONNRESET):
		return "" // io.ErrUnexpectedEOF, for one, means part of an answer came
	case a.reused:
		return "kept-alive connection closed as idle"
	default:
		return "new connection never accepted"
	}
}

// TestShutdownUnderLoad stops the service (as SIGTERM does) while clients
// create users as fast as they can on kept-alive connections. Every create
// gets 201 or never reaches the service (see unread). Those never
// committed: the table holds exactly the users the clients were told about.
func TestShutdownUnderLoad(t *testing.T) {
	for _, delay := range []time.Duration{0, 500 * time.Millisecond} {
		t.Run("SHUTDOWN_DELAY="+delay.String(), func(t *testing.T) {
			const clients = 8
			databaseURL := pgtest.NewURL(t)
			s := startServe(t, map[string]string{
				"DATABASE_URL":     databaseURL,
				"SHUTDOWN_DELAY":   delay.String(),
				"SHUTDOWN_TIMEOUT": "10s",
			})
			s.eventually(t, "GET", "/readyz", "", 200, 10*time.Second)

			l := newLoad(t, s.base, clients)
			l.setPhase("serving")
			l.run(clients, func(c int) {
				for i := 0; !l.stopped(); i++ {
					a := l.do("create", fmt.Sprintf("client %d user %d", c, i), "POST", "/users", nameBody(fmt.Sprintf("client %d user %d", c, i)))
					if refused(a.err) {
						return // the listener is closed: the service is gone
					}
				}
			})
			defer func() {
				if !l.stopped() {
					l.finish()
				}
			}()
			l.waitFor("serving", "200 creates", 15*time.Second, func(as []attempt) bool { return count(as, created) >= 200 })
			l.setPhase("stopping")
			if err := s.stop(t, 15*time.Second); err != nil {
				t.Errorf("serve after SIGTERM under load = %v, want nil", err)
			}
			// The clients end at their first refused connection.
			waited := make(chan struct{})
			go func() { l.wg.Wait(); close(waited) }()
			select {
			case <-waited:
			case <-time.After(10 * time.Second):
				t.Fatal("clients still get answers 10s after serve stopped")
			}
			l.finish()

			table := usersByName(t, databaseURL)
			told := 0
			for _, phase := range []string{"serving", "stopping"} {
				as := l.phaseAttempts(phase)
				unreadN := map[string]int{}
				for _, a := range as {
					_, inTable := table[a.name]
					switch {
					case a.err == nil && a.status == http.StatusCreated:
						told++
						var u apiUser
						if err := json.Unmarshal(a.body, &u); err != nil {
							t.Fatalf("%v: %v", a, err)
						}
						if row, ok := table[a.name]; !ok || !sameUser(row, u) {
							t.Errorf("%v told %+v, the table holds %+v (present: %v)", a, u, row, ok)
						}
					case a.err == nil:
						t.Errorf("%v %s: want 201", a, a.body)
					case unread(a) != "":
						unreadN[unread(a)]++
					default:
						t.Errorf("%v (reused connection: %v): want an answer, or a sign that the service never read the request", a, a.reused)
					}
					if a.err != nil && inTable {
						t.Errorf("%v, yet the user is in the table: the service accepted the request and lost its answer", a)
					}
				}
				t.Logf("phase %-8s %s; never read: %v", phase, summarize(as), unreadN)
			}
			if len(table) != told {
				t.Errorf("the table holds %d users, the clients were told of %d", len(table), told)
			}
		})
	}
}
