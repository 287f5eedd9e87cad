package main

import (
	"context"
	"encoding/json/v2"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pgtest"
)

// keyedCreate is one create of a client that retries with its key: every
// attempt it made, and its first answer other than 503, which ends it.
type keyedCreate struct {
	name, key string
	attempts  []attempt
	final     *attempt // nil when the test ended first
}

// TestKeyedCreatesUnderFaults is the headline guarantee of Idempotency-Key:
// clients that retry each create with its key until they get an answer
// other than 503 end with exactly one user per create and a 201 for it,
// never a 400 for their own earlier attempt, never a 409 or 422, across
// sessions terminated under them, statements cancelled by the database's
// statement_timeout and by the service's REQUEST_TIMEOUT, commits
// acknowledged after REQUEST_TIMEOUT (which committed, so that the retry
// must replay them), and the database stopped and started again.
func TestKeyedCreatesUnderFaults(t *testing.T) {
	const (
		requestTimeout = time.Second
		clients        = 8
	)
	dir, port := newPGDir(t), pgtest.FreePort(t)
	pg := startPostgres(t, dir, port)
	databaseURL := pg.URL("postgres")
	pgtest.Migrate(t, databaseURL)
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { admin.Close(ctx) }()
	exec := func(sql string) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// The service's sessions wait for their commits, as on a production
	// server, so that a commit can be held up (syncStandby).
	exec("ALTER DATABASE postgres SET synchronous_commit = on")
	exec("CREATE TABLE probe (n int)")
	// terminate ends the service's sessions; the pool makes new ones, which
	// take the database's settings as they are now.
	terminate := func() int {
		t.Helper()
		var n int
		if err := admin.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'usersvc'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}

	s := startServe(t, map[string]string{
		"DATABASE_URL":    databaseURL,
		"REQUEST_TIMEOUT": requestTimeout.String(),
	})
	s.eventually(t, "GET", "/readyz", "", 200, 10*time.Second)

	l := newLoad(t, s.base, clients)
	l.setPhase("steady")
	var mu sync.Mutex
	var creates []*keyedCreate
	l.run(clients, func(c int) {
		for i := 0; !l.stopped(); i++ {
			kc := &keyedCreate{name: fmt.Sprintf("client %d user %d", c, i), key: fmt.Sprintf("%d-%d", c, i)}
			mu.Lock()
			creates = append(creates, kc)
			mu.Unlock()
			for !l.stopped() {
				a := l.doWith("create", kc.name, "POST", "/users", nameBody(kc.name), http.Header{"Idempotency-Key": {kc.key}})
				mu.Lock()
				kc.attempts = append(kc.attempts, a)
				if a.err == nil && a.status != http.StatusServiceUnavailable {
					kc.final = &kc.attempts[len(kc.attempts)-1]
				}
				mu.Unlock()
				if kc.final != nil {
					break
				}
				// Retry-After says 1 s; these clients are more eager, so
				// that the test sees many retries, but not a busy loop.
				l.pause(20 * time.Millisecond)
			}
		}
	})
	defer func() {
		if !l.stopped() {
			l.finish()
		}
	}()
	// failedAtLeast waits for n 503s that took at least, or (when
	// negative) less than, the duration: which deadline cut them off.
	failedAtLeast := func(n int, took time.Duration) func([]attempt) bool {
		return func(as []attempt) bool {
			return count(as, func(a attempt) bool {
				return unavailable(a) && (took >= 0 && a.took() >= took || took < 0 && a.took() < -took)
			}) >= n
		}
	}
	l.waitFor("steady", "100 creates", 15*time.Second, createdAtLeast(100))

	l.setPhase("terminated")
	killed := 0
	for round := range 3 {
		killed += terminate()
		l.waitFor("terminated", "creates after a termination", 15*time.Second, createdAtLeast(30*(round+1)))
	}

	// The database cancels every statement that runs 100 ms: the creates,
	// which wait for a lock on the table held for a second and a half.
	l.setPhase("statement_timeout")
	exec("ALTER DATABASE postgres SET statement_timeout = '100ms'")
	killed += terminate()
	release := holdTx(t, databaseURL, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "LOCK TABLE users IN SHARE MODE")
		return err
	})
	l.waitFor("statement_timeout", "503s well before REQUEST_TIMEOUT", 15*time.Second, failedAtLeast(2*clients, -requestTimeout/2))
	release()
	exec("ALTER DATABASE postgres RESET statement_timeout")
	killed += terminate()
	l.waitFor("statement_timeout", "creates after the lock", 15*time.Second, createdAtLeast(30))

	// The service gives up on the creates at REQUEST_TIMEOUT and cancels
	// them, the lock held longer than that.
	l.setPhase("request_timeout")
	release = holdTx(t, databaseURL, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "LOCK TABLE users IN SHARE MODE")
		return err
	})
	l.waitFor("request_timeout", "503s at REQUEST_TIMEOUT", 15*time.Second, failedAtLeast(clients, requestTimeout))
	release()
	l.waitFor("request_timeout", "creates after the lock", 15*time.Second, createdAtLeast(30))

	// Commits wait for a synchronous standby that never answers: each create
	// commits, but its client gets 503 at REQUEST_TIMEOUT, when the service
	// cancels the wait (PostgreSQL keeps the commit). The retry must replay.
	l.setPhase("late_commit")
	syncStandby(t, admin, databaseURL, "nobody")
	l.waitFor("late_commit", "503s at REQUEST_TIMEOUT", 15*time.Second, failedAtLeast(clients, requestTimeout))
	syncStandby(t, admin, databaseURL, "")
	l.waitFor("late_commit", "creates after the standby", 15*time.Second, createdAtLeast(30))

	l.restartDatabase(t, pg, dir, port)
	l.setPhase("restarted")
	l.waitFor("restarted", "100 creates", 15*time.Second, createdAtLeast(100))
	l.finish()
	if err := s.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve after SIGTERM = %v, want nil", err)
	}

	// Every attempt got 201 or 503, in time.
	phases := []string{"steady", "terminated", "statement_timeout", "request_timeout", "late_commit", "stopped", "restarted"}
	for _, phase := range phases {
		as := l.phaseAttempts(phase)
		t.Logf("phase %-17s %s", phase, summarize(as))
		for _, a := range as {
			switch {
			case a.err != nil:
				t.Errorf("phase %s: %v: want an answer", phase, a)
			case a.took() > requestTimeout+latencyMargin:
				t.Errorf("phase %s: %v: longer than REQUEST_TIMEOUT (%v) + %v", phase, a, requestTimeout, latencyMargin)
			case a.status == http.StatusCreated:
			case a.status == http.StatusServiceUnavailable && a.code == "unavailable":
			default:
				t.Errorf("phase %s: %v %s: want 201, or 503 to retry", phase, a, a.body)
			}
		}
	}

	// Every create ended with a 201 for the one user of its name, as the
	// table holds it; a create the test's end cut short left one user or
	// none.
	table := usersByName(t, databaseURL)
	var settled, retried, replayed, unsettled int
	for _, kc := range creates {
		row, inTable := table[kc.name]
		delete(table, kc.name)
		if kc.final == nil {
			unsettled++
			continue
		}
		settled++
		if len(kc.attempts) > 1 {
			retried++
		}
		if kc.final.replayed {
			replayed++
		}
		if kc.final.status != http.StatusCreated {
			t.Errorf("create %q with key %s: ended with %v %s after %d attempts, want 201", kc.name, kc.key, *kc.final, kc.final.body, len(kc.attempts))
			continue
		}
		var u apiUser
		if err := json.Unmarshal(kc.final.body, &u); err != nil {
			t.Fatalf("%v: %v", *kc.final, err)
		}
		if !inTable || !sameUser(row, u) {
			t.Errorf("create %q with key %s: told %+v after %d attempts, the table holds %+v (present: %v)", kc.name, kc.key, u, len(kc.attempts), row, inTable)
		}
	}
	for name := range table {
		t.Errorf("the table holds %q, which no create asked for", name)
	}
	t.Logf("%d keyed creates settled, each with one user and a 201: %d after a 503, %d of those replayed (the first attempt had committed); %d cut short by the end of the test; %d sessions terminated",
		settled, retried, replayed, unsettled, killed)
	if retried == 0 || replayed == 0 {
		t.Errorf("%d creates retried, %d replayed: the faults should have made both happen", retried, replayed)
	}
}
