//go:build pgbouncer && linux

// The tests in this file run usersvc as several replicas behind PgBouncer
// in transaction mode, as docs/operations.md, "Behind a connection pooler",
// describes.
// They need the pgbouncer program, so they are not part of make test:
// make test-pgbouncer installs it when it is missing and runs them.

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pressly/goose/v3/lock"

	"usersvc/internal/pgtest"
)

// TestPgBouncer runs three usersvc serve processes through one PgBouncer in
// transaction mode, with each query mode that works there and without
// one, after showing that migrations refuse to run through it and must go
// to PostgreSQL directly.
func TestPgBouncer(t *testing.T) {
	pgBouncerPath(t) // first: says how to get it
	bin := usersvcBinary(t)
	pgPort := pgtest.FreePort(t)
	pg := startPostgres(t, newPGDir(t), pgPort)
	if _, err := direct(t, pg.URL("postgres")).Exec(context.Background(), "CREATE DATABASE usersvc"); err != nil {
		t.Fatal(err)
	}
	directURL := pg.URL("usersvc")
	pgb := startPgBouncer(t, pgPort)
	t.Logf("%s in transaction mode on 127.0.0.1:%d, default_pool_size %d, in front of PostgreSQL on 127.0.0.1:%d",
		pgb.version, pgb.port, bouncerPoolSize, pgPort)

	t.Run("session lock through the pooler", func(t *testing.T) {
		checkSessionLockLeaks(t, pgb, directURL)
	})
	t.Run("migrate through the pooler", func(t *testing.T) {
		checkMigrateRefused(t, bin, pgb, directURL)
	})
	out, status := runUsersvc(t, bin, []string{"DATABASE_URL=" + directURL}, "migrate", "up")
	if status != 0 || !strings.Contains(out, "schema version 3") {
		t.Fatalf("usersvc migrate up against PostgreSQL: exit status %d, want 0 and schema version 3", status)
	}

	// exec is the setting docs/operations.md recommends; the other two work too.
	rates := map[string]float64{}
	for _, mode := range []string{"exec", "cache_describe", "simple_protocol"} {
		t.Run(mode, func(t *testing.T) {
			rates[mode] = checkReplicas(t, bin, pgb, directURL, "default_query_exec_mode="+mode)
		})
	}
	t.Logf("load phase throughput by default_query_exec_mode (req/s on this machine, shared with everything else running): %v", rates)
	t.Run("without the setting", func(t *testing.T) {
		checkFailsWithoutSetting(t, bin, pgb)
	})
	t.Run("change feed without LISTEN", func(t *testing.T) {
		checkFeedWithoutListen(t, bin, pgb)
	})
}

// checkFeedWithoutListen follows the change feed on one replica while
// another writes, through the pooler, which carries no notifications: the
// writer has CHANGES_LISTEN=false, as docs/operations.md says; the reader
// is left to find the pooler itself, and say so. Each change reaches the
// waiting consumer within 1 s of its create's request, woken by polling
// alone, with no position repeated.
func checkFeedWithoutListen(t *testing.T, bin string, pgb *bouncer) {
	url := "DATABASE_URL=" + pgb.url("usersvc", "default_query_exec_mode=exec")
	writer, reader := startReplica(t, bin, url, "CHANGES_LISTEN=false"), startReplica(t, bin, url)
	for _, r := range []*replica{writer, reader} {
		waitFor(t, r.base+"/readyz", 10*time.Second, r.exited)
	}
	c := newClient([]*replica{writer, reader})
	get := func(after int64, wait int) []feedChange {
		req, _ := http.NewRequest("GET", fmt.Sprintf("%s/users/changes?after=%d&wait=%d", reader.base, after, wait), nil)
		req.Header.Set("Authorization", "Bearer "+replicaToken)
		res, err := c.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		var page []feedChange
		if res.StatusCode != http.StatusOK || json.NewDecoder(res.Body).Decode(&page) != nil {
			t.Fatalf("GET /users/changes: status %d", res.StatusCode)
		}
		return page
	}
	var after int64
	for page := get(0, 0); len(page) > 0; page = get(after, 0) {
		after = page[len(page)-1].Position
	}
	var slowest time.Duration
	for i := range 10 {
		got := make(chan []feedChange, 1)
		go func() { got <- get(after, 10) }()
		time.Sleep(100 * time.Millisecond) // the consumer waits
		sent := time.Now()
		if r, err := c.do(0, "POST", "/users", fmt.Sprintf(`{"name":"feed %d"}`, i)); err != nil || r.status != http.StatusCreated {
			t.Fatalf("create: %v, status %d", err, r.status)
		}
		page := <-got
		took := time.Since(sent)
		if len(page) != 1 || page[0].Op != "create" || page[0].Position <= after {
			t.Fatalf("the waiting consumer got %+v after position %d, want the one create", page, after)
		}
		after = page[0].Position
		slowest = max(slowest, took)
	}
	if !strings.Contains(reader.logs.String(), "goes through a connection pooler") {
		t.Errorf("the replica with CHANGES_LISTEN unset did not warn of the pooler; log:\n%s", reader.logs.String())
	}
	t.Logf("without LISTEN, through the pooler: the slowest of 10 changes reached the waiting consumer %v after its create was sent", slowest.Round(time.Millisecond))
	if slowest > time.Second {
		t.Errorf("a change took %v to reach the waiting consumer, want within 1 s", slowest)
	}
}

// checkSessionLockLeaks shows why migrations must not run through the
// pooler: goose's session-level advisory lock, taken by two clients that
// share usersvc_one's one server connection, is granted to both, and stays
// held by that server connection once both clients have gone, so that a
// migration run against PostgreSQL itself could not get it.
func checkSessionLockLeaks(t *testing.T, pgb *bouncer, directURL string) {
	ctx := context.Background()
	tryLock := func(conn *pgx.Conn) bool {
		t.Helper()
		var got bool
		// goose's own query and lock id (lock.NewPostgresSessionLocker).
		if err := conn.QueryRow(ctx, "SELECT pg_try_advisory_lock($1)", lock.DefaultLockID).Scan(&got); err != nil {
			t.Fatal(err)
		}
		return got
	}
	a, err := pgx.Connect(ctx, pgb.url("usersvc_one", execSetting))
	if err != nil {
		t.Fatal(err)
	}
	b, err := pgx.Connect(ctx, pgb.url("usersvc_one", execSetting))
	if err != nil {
		t.Fatal(err)
	}
	gotA, gotB := tryLock(a), tryLock(b)
	a.Close(ctx)
	b.Close(ctx)
	if !gotA || !gotB {
		t.Errorf("through PgBouncer, client A got goose's lock: %v, client B while A held it: %v; want both true, the lock excluding nobody", gotA, gotB)
	}
	conn := direct(t, directURL)
	if tryLock(conn) {
		t.Errorf("directly after both pooled clients left, goose's lock was free; want it still held by the pooler's server connection")
	}
	// Terminating the server connection that holds it is the way out.
	var holder int
	err = conn.QueryRow(ctx, `SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
		AND ((classid::bigint << 32) | objid::bigint) = $1`, lock.DefaultLockID).Scan(&holder)
	if err != nil {
		t.Fatalf("find the session holding goose's lock: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_terminate_backend($1)", holder); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !tryLock(conn) {
		if time.Now().After(deadline) {
			t.Fatal("goose's lock still held 10s after its session was terminated")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_unlock_all()"); err != nil {
		t.Fatal(err)
	}
}

// checkMigrateRefused checks that usersvc refuses to migrate through the
// pooler, from the migrate command and from AUTO_MIGRATE, and changes
// nothing; migrate version, which takes no lock, works.
func checkMigrateRefused(t *testing.T, bin string, pgb *bouncer, directURL string) {
	env := []string{"DATABASE_URL=" + pgb.url("usersvc", execSetting)}
	out, status := runUsersvc(t, bin, env, "migrate", "up")
	if status != 1 || !strings.Contains(out, "connection pooler") || !strings.Contains(out, "against PostgreSQL itself") {
		t.Errorf("usersvc migrate up through PgBouncer: exit status %d, output %q; want 1 and a message that says to migrate against PostgreSQL itself", status, out)
	}
	out, status = runUsersvc(t, bin, env, "migrate", "version")
	if status != 0 || !strings.Contains(out, "schema version 0") {
		t.Errorf("usersvc migrate version through PgBouncer: exit status %d, output %q; want 0 and schema version 0", status, out)
	}

	r := launchReplica(t, bin, append(env, "AUTO_MIGRATE=true")...)
	select {
	case err := <-r.exited:
		r.exited <- err
		if exitErr, ok := errors.AsType[*exec.ExitError](err); !ok || exitErr.ExitCode() != 1 || !strings.Contains(r.logs.String(), "connection pooler") {
			t.Errorf("serve with AUTO_MIGRATE through PgBouncer: %v, want exit status 1 naming the pooler; log:\n%s", err, r.logs.String())
		}
	case <-time.After(20 * time.Second):
		t.Errorf("serve with AUTO_MIGRATE through PgBouncer still runs after 20s; want exit status 1; log:\n%s", r.logs.String())
	}

	var tables int
	err := direct(t, directURL).QueryRow(context.Background(),
		"SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'users'").Scan(&tables)
	if err != nil {
		t.Fatal(err)
	}
	if tables != 0 {
		t.Errorf("after the refused migrations, the users table exists; want nothing applied")
	}
}

// loadDuration is how long each load phase runs.
const loadDuration = 5 * time.Second

// checkReplicas starts three replicas with DATABASE_URL through PgBouncer
// plus setting, checks readiness, the same-name race and a load phase, and
// returns the load phase's requests per second.
func checkReplicas(t *testing.T, bin string, pgb *bouncer, directURL, setting string) float64 {
	bouncerLogFrom := len(pgb.logs.String())
	env := []string{"DATABASE_URL=" + pgb.url("usersvc", setting), "CHANGES_LISTEN=false"}
	began := time.Now()
	var replicas []*replica
	for range replicaCount {
		replicas = append(replicas, startReplica(t, bin, env...))
	}
	for _, r := range replicas {
		waitFor(t, r.base+"/readyz", 10*time.Second, r.exited)
	}
	t.Logf("GET /readyz: 200 from all %d replicas %v after they were started", replicaCount, time.Since(began).Round(time.Millisecond))
	c := newClient(replicas)
	prefix := strings.TrimPrefix(setting, "default_query_exec_mode=") + " "

	// The same name, from 60 clients at once, round-robin over the
	// replicas: PostgreSQL's unique constraint lets exactly one in.
	race := newTally()
	raceName := prefix + "race"
	var raceID atomic.Int64
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range 60 {
		wg.Go(func() {
			<-start
			r, err := c.do(i, "POST", "/users", fmt.Sprintf(`{"name":%q}`, raceName))
			if r.status == 201 {
				raceID.Store(r.user.ID)
			}
			race.add("create", r, err, "400 duplicate_name")
		})
	}
	close(start)
	wg.Wait()
	race.mu.Lock()
	created := race.counts["create"]["201"]
	dup := race.counts["create"]["400 duplicate_name"]
	race.mu.Unlock()
	if created != 1 || dup != 59 {
		t.Errorf("60 concurrent POST /users of one name over %d replicas: %d×201 and %d×400 duplicate_name, want 1 and 59:\n%s",
			replicaCount, created, dup, race)
	}
	t.Logf("same-name race, 60 concurrent creates over %d replicas:\n%s", replicaCount, race)

	// Load: clients create, read (from another replica than the one that
	// wrote), list, rename, collide and delete, each on its own users.
	load := newTally()
	var mu sync.Mutex
	live := map[int64]string{} // every user a 201 or 200 announced and no 204 removed
	gone := map[int64]bool{}
	maxServers := sampleServers(t, directURL)
	ctx, stop := context.WithTimeout(context.Background(), loadDuration)
	defer stop()
	began = time.Now()
	const clients = 12
	for k := range clients {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(k), 1))
			var own []apiUser
			n, seq := k, 0
			next := func() int { n++; return n } // consecutive requests go to different replicas
			for ctx.Err() == nil {
				op := rng.IntN(10)
				if len(own) == 0 || op < 3 {
					seq++
					name := fmt.Sprintf("%sc%d-%d", prefix, k, seq)
					r, err := c.do(next(), "POST", "/users", fmt.Sprintf(`{"name":%q}`, name))
					load.add("create", r, err, "201")
					if r.status == 201 {
						own = append(own, r.user)
						mu.Lock()
						live[r.user.ID] = r.user.Name
						mu.Unlock()
					}
					continue
				}
				i := rng.IntN(len(own))
				u := own[i]
				switch op {
				case 3, 4:
					r, err := c.do(next(), "GET", fmt.Sprintf("/users/%d", u.ID), "")
					if err == nil && r.status == 200 && !sameUser(r.user, u) {
						err = fmt.Errorf("GET /users/%d = %+v, want %+v", u.ID, r.user, u)
					}
					load.add("get", r, err, "200")
				case 5:
					r, err := c.do(next(), "GET", "/users?limit=1&name="+url.QueryEscape(u.Name), "")
					load.add("list", r, err, "200")
				case 6:
					r, err := c.do(next(), "GET", fmt.Sprintf("/users?after=%d&limit=20", max(0, u.ID-10)), "")
					load.add("list", r, err, "200")
				case 7:
					seq++
					name := fmt.Sprintf("%sc%d-%d", prefix, k, seq)
					r, err := c.do(next(), "PUT", fmt.Sprintf("/users/%d", u.ID), fmt.Sprintf(`{"name":%q}`, name))
					load.add("rename", r, err, "200")
					if r.status == 200 {
						own[i] = r.user
						mu.Lock()
						live[u.ID] = r.user.Name
						mu.Unlock()
					}
				case 8:
					r, err := c.do(next(), "POST", "/users", fmt.Sprintf(`{"name":%q}`, u.Name))
					load.add("duplicate", r, err, "400 duplicate_name")
				case 9:
					r, err := c.do(next(), "DELETE", fmt.Sprintf("/users/%d", u.ID), "")
					load.add("delete", r, err, "204")
					if r.status == 204 {
						own = slices.Delete(own, i, i+1)
						mu.Lock()
						delete(live, u.ID)
						gone[u.ID] = true
						mu.Unlock()
						r, err := c.do(next(), "GET", fmt.Sprintf("/users/%d", u.ID), "")
						load.add("get gone", r, err, "404 not_found")
					}
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(began)
	servers := maxServers()
	rate := float64(load.total) / elapsed.Seconds()
	t.Logf("load: %d clients for %v, %d requests (%.0f/s) over %d replicas:\n%s", clients, elapsed.Round(time.Millisecond), load.total, rate, replicaCount, load)
	if load.total < 100 {
		t.Errorf("load phase made only %d requests", load.total)
	}
	if len(load.unexpected) > 0 || load.fivexx() > 0 {
		t.Errorf("load phase: %d 5xx; unexpected outcomes: %v", load.fivexx(), load.unexpected)
	}

	// Every user a client was told exists does, with its last name; every
	// deleted one is gone; nothing else carries the prefix.
	rows, err := direct(t, directURL).Query(context.Background(), "SELECT id, name, created_at, updated_at FROM users WHERE starts_with(name, $1)", prefix)
	if err != nil {
		t.Fatal(err)
	}
	table, err := pgx.CollectRows(rows, pgx.RowToStructByPos[apiUser])
	if err != nil {
		t.Fatal(err)
	}
	live[raceID.Load()] = raceName
	inTable := map[int64]string{}
	for _, u := range table {
		inTable[u.ID] = u.Name
	}
	for id, name := range live {
		if inTable[id] != name {
			t.Errorf("user %d: the table has %q, clients were told %q", id, inTable[id], name)
		}
	}
	for id, name := range inTable {
		if _, ok := live[id]; !ok {
			t.Errorf("user %d %q is in the table but no client was told it exists (deleted: %v)", id, name, gone[id])
		}
	}
	t.Logf("durability: %d users acknowledged and not deleted, all in the table as told; %d deleted, all gone", len(live), len(gone))

	// The replicas' pools shared PgBouncer's few server connections.
	var clientConns int
	for _, r := range replicas {
		clientConns += poolConnections(t, r)
	}
	t.Logf("connections: the replicas' pools held %d to PgBouncer; PostgreSQL saw at most %d from it (default_pool_size %d)", clientConns, servers, bouncerPoolSize)
	if servers > bouncerPoolSize || servers == 0 {
		t.Errorf("PostgreSQL saw up to %d sessions from PgBouncer during the load, want 1 to %d", servers, bouncerPoolSize)
	}
	if clientConns <= bouncerPoolSize {
		t.Errorf("the replicas' pools held %d connections in all, want more than PgBouncer's %d server connections for the test to mean anything", clientConns, bouncerPoolSize)
	}

	began = time.Now()
	for _, r := range replicas {
		r.stop(t)
	}
	t.Logf("SIGTERM: all %d replicas exited 0 within %v", replicaCount, time.Since(began).Round(time.Millisecond))
	var trouble []string
	for i, r := range replicas {
		for _, rec := range logRecords(t, r.logs.String()) {
			if lvl := rec["level"]; lvl == "WARN" || lvl == "ERROR" {
				trouble = append(trouble, fmt.Sprintf("replica %d: %v", i, rec))
			}
		}
		trouble = append(trouble, troubleLines(r.logs.String(), 0)...)
	}
	trouble = append(trouble, troubleLines(pgb.logs.String(), bouncerLogFrom)...)
	if len(trouble) > 0 {
		t.Errorf("%d warnings, errors or protocol errors in the replicas' and PgBouncer's logs, want none:\n%s", len(trouble), strings.Join(trouble[:min(len(trouble), 20)], "\n"))
	}
	t.Logf("protocol errors in the replicas' and PgBouncer's logs: %d", len(trouble))
	return rate
}

// sampleServers counts PostgreSQL's sessions in the database usersvc,
// other than its own, every 50 ms until the returned function is called,
// which returns the highest count.
func sampleServers(t *testing.T, directURL string) func() int {
	conn := direct(t, directURL)
	done, result := make(chan struct{}), make(chan int)
	go func() {
		highest := 0
		for {
			var n int
			err := conn.QueryRow(context.Background(), `SELECT count(*) FROM pg_stat_activity
				WHERE datname = 'usersvc' AND backend_type = 'client backend' AND pid <> pg_backend_pid()`).Scan(&n)
			if err != nil {
				t.Errorf("count sessions: %v", err)
			}
			highest = max(highest, n)
			select {
			case <-done:
				result <- highest
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return func() int { close(done); return <-result }
}

// poolConnections returns the replica's usersvc_db_pool_total_connections.
func poolConnections(t *testing.T, r *replica) int {
	t.Helper()
	res, err := http.Get(r.base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "usersvc_db_pool_total_connections "); ok {
			n, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatal(err)
			}
			return int(n)
		}
	}
	t.Fatalf("%s/metrics has no usersvc_db_pool_total_connections", r.base)
	return 0
}

// checkFailsWithoutSetting is the control: the same replicas without the
// setting, in pgx's default mode where every connection prepares the
// queries by name, fail through the pooler. The test would notice a
// service that stopped honouring default_query_exec_mode.
func checkFailsWithoutSetting(t *testing.T, bin string, pgb *bouncer) {
	bouncerLogFrom := len(pgb.logs.String())
	var replicas []*replica
	for range replicaCount {
		replicas = append(replicas, startReplica(t, bin, "DATABASE_URL="+pgb.url("usersvc", "")))
	}
	c := newClient(replicas)
	load := newTally()
	troubleSeen := func() bool {
		for _, r := range replicas {
			if protocolTrouble.MatchString(r.logs.String()) {
				return true
			}
		}
		return false
	}
	// Load until the replicas report protocol errors, for at most 20s.
	ctx, stop := context.WithTimeout(context.Background(), 20*time.Second)
	defer stop()
	var wg sync.WaitGroup
	var seq atomic.Int64
	for k := range 12 {
		wg.Go(func() {
			for n := k; ctx.Err() == nil; n++ {
				id := seq.Add(1)
				r, err := c.do(n, "POST", "/users", fmt.Sprintf(`{"name":"no setting %d"}`, id))
				load.add("create", r, err, "201")
				r, err = c.do(n+1, "GET", fmt.Sprintf("/users?after=%d&limit=5", max(0, id-5)), "")
				load.add("list", r, err, "200")
				if n%20 == 0 && troubleSeen() {
					stop()
				}
			}
		})
	}
	wg.Wait()
	for _, r := range replicas {
		r.stop(t)
	}
	errs := map[string]int{}
	quoted, number := regexp.MustCompile(`"[^"]*"`), regexp.MustCompile(`(user|after) [0-9]+`)
	for _, r := range replicas {
		for _, rec := range logRecords(t, r.logs.String()) {
			if err, ok := rec["err"].(string); ok && protocolTrouble.MatchString(err) {
				// A statement's name is its SQL: keep the message's shape.
				errs[number.ReplaceAllString(quoted.ReplaceAllString(err, `"…"`), "$1 N")]++
			}
		}
	}
	t.Logf("without the setting: %d requests:\n%s", load.total, load)
	t.Logf("errors in the replicas' logs: %v", errs)
	t.Logf("PgBouncer's log: %d warnings, errors or protocol errors", len(troubleLines(pgb.logs.String(), bouncerLogFrom)))
	if !troubleSeen() || len(errs) == 0 {
		t.Errorf("without %s, %d requests through PgBouncer in transaction mode logged no prepared-statement or protocol error; want some, or this test no longer tells the setting matters", execSetting, load.total)
	}
	if load.fivexx() == 0 {
		t.Errorf("without %s, no request through PgBouncer in transaction mode failed; want some 5xx", execSetting)
	}
}
