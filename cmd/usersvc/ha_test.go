//go:build ha && linux

// The test in this file runs usersvc against a pg_auto_failover formation,
// as docs/operations.md, "High availability", describes: a monitor and two
// PostgreSQL nodes with synchronous replication, each node a host of its
// own on a private network, whose primary it kills, switches over, fences
// and cuts off from the network under load. It needs root and pg_autoctl, so it is
// not part of make test: make test-ha installs pg_autoctl when it is
// missing and runs it.

package main

import (
	"context"
	"encoding/json/v2"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// haRequestTimeout is the services' REQUEST_TIMEOUT.
const haRequestTimeout = 2 * time.Second

// monitorSettings tune the monitor's health checks to about a second
// (pg_auto_failover's defaults: a check every 5 s, 20 s without news
// before a node counts as unhealthy, 30 s for a lost primary to demote).
// primary_demote_timeout is how long the monitor waits for the old
// primary to stop before it lets the new one take writes: it stays above
// the keepers' networkPartitionTimeout, so that a primary cut off from the
// monitor and its standby demotes itself first, and leaves a keeper slowed
// down by a busy machine time to stop its PostgreSQL. (A shorter one lost
// acknowledged writes here: a switchover from a primary that had dropped
// to wait_primary, with synchronous replication off, promoted the standby
// while the old primary, its keeper late, still acknowledged writes.)
var monitorSettings = [][2]string{
	{"pgautofailover.health_check_period", "1000"},
	{"pgautofailover.health_check_timeout", "1000"},
	{"pgautofailover.health_check_max_retries", "1"},
	{"pgautofailover.health_check_retry_delay", "500"},
	{"pgautofailover.node_considered_unhealthy_timeout", "2000"},
	{"pgautofailover.startup_grace_period", "2000"},
	{"pgautofailover.primary_demote_timeout", "5000"},
}

// networkPartitionTimeout is each keeper's timeout.network_partition_timeout
// in seconds (default 20).
const networkPartitionTimeout = "3"

// ledger is what the service acknowledged to the clients: the table must
// hold exactly that.
type ledger struct {
	mu    sync.Mutex
	alive map[int64]apiUser // acknowledged and not deleted since
	// named are the names of creates that got 503, then 400
	// duplicate_name on the retry: the first attempt committed, with an id
	// the client never learnt.
	named   map[string]bool
	deleted map[int64]bool
}

func newLedger() *ledger {
	return &ledger{alive: map[int64]apiUser{}, named: map[string]bool{}, deleted: map[int64]bool{}}
}

func (lg *ledger) set(u apiUser) {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	lg.alive[u.ID] = u
}

func (lg *ledger) remove(id int64) {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	delete(lg.alive, id)
	lg.deleted[id] = true
}

func (lg *ledger) name(name string) {
	lg.mu.Lock()
	defer lg.mu.Unlock()
	lg.named[name] = true
}

// check compares the users table at databaseURL with the ledger: every
// acknowledged user is there as acknowledged, no deleted one is, and every
// row is one a client created. Returns how many rows the table holds, and
// how many acknowledged writes it lacks.
func (lg *ledger) check(t *testing.T, databaseURL string) (rows, lost int) {
	t.Helper()
	lg.mu.Lock()
	defer lg.mu.Unlock()
	table := usersByName(t, databaseURL)
	byID := map[int64]apiUser{}
	for _, u := range table {
		byID[u.ID] = u
	}
	for id, want := range lg.alive {
		if got, ok := byID[id]; !ok || !sameUser(got, want) {
			lost++
			t.Errorf("user %d: acknowledged as %+v, the new primary holds %+v (present: %v)", id, want, got, ok)
		}
	}
	for id := range lg.deleted {
		if got, ok := byID[id]; ok {
			lost++
			t.Errorf("user %d: deleted (204, or 404 on a retry), the new primary holds %+v", id, got)
		}
	}
	for name := range lg.named {
		if _, ok := table[name]; !ok {
			lost++
			t.Errorf("user %q: a retried create got 400 duplicate_name, yet the new primary holds no user of that name", name)
		}
	}
	for _, u := range table {
		if _, ok := lg.alive[u.ID]; !ok && !lg.named[u.Name] {
			t.Errorf("the new primary holds %+v, which no client was told of (deleted: %v)", u, lg.deleted[u.ID])
		}
	}
	return len(table), lost
}

// haClients are the clients of the test: writers that create, rename and
// delete users of their own, and readers that read theirs back, through
// both services.
type haClients struct {
	t      *testing.T
	loads  []*load // one per service
	ledger *ledger
	// paused is held for writing while the table is checked: the writers
	// hold it for reading through each write, its retries included.
	paused sync.RWMutex
}

// settleDeadline bounds how long a write may keep getting 503.
const settleDeadline = 60 * time.Second

// settle sends a write through l and retries it while it gets 503, as
// docs/api.md, "Retrying after a 503", advises, until it gets another
// answer: the retries are labelled op+" retry". Returns the last attempt,
// and whether a retry was needed.
func settle(l *load, op, name, method, path, body string) (attempt, bool) {
	a := l.do(op, name, method, path, body)
	retried := false
	for deadline := time.Now().Add(settleDeadline); a.err == nil && a.status == http.StatusServiceUnavailable; {
		if time.Now().After(deadline) {
			l.t.Errorf("%s %s %s: still 503 after %v", op, method, path, settleDeadline)
			break
		}
		// Retry-After says 1 s; these clients are more eager, so that the
		// test measures the gap to a few tens of milliseconds.
		time.Sleep(20 * time.Millisecond)
		a, retried = l.do(op+" retry", name, method, path, body), true
	}
	return a, retried
}

// writer creates, renames and deletes users of its own through l until
// the load stops, and keeps in the ledger what the service acknowledged.
func (c *haClients) writer(l *load, id string, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 3))
	var own []apiUser
	seq := 0
	for !l.stopped() {
		c.paused.RLock()
		op := rng.IntN(10)
		switch {
		case len(own) < 3 || op < 4:
			seq++
			name := fmt.Sprintf("%s-%d", id, seq)
			a, retried := settle(l, "create", name, "POST", "/users", nameBody(name))
			switch {
			case a.status == http.StatusCreated:
				var u apiUser
				if err := json.Unmarshal(a.body, &u); err == nil {
					own = append(own, u)
					c.ledger.set(u)
				}
			case retried && a.status == http.StatusBadRequest && a.code == "duplicate_name":
				c.ledger.name(name)
			}
		case op < 8:
			i := rng.IntN(len(own))
			seq++
			name := fmt.Sprintf("%s-%d", id, seq)
			a, _ := settle(l, "rename", name, "PUT", fmt.Sprintf("/users/%d", own[i].ID), nameBody(name))
			if a.status == http.StatusOK {
				var u apiUser
				if err := json.Unmarshal(a.body, &u); err == nil {
					own[i] = u
					c.ledger.set(u)
				}
			}
		default:
			i := rng.IntN(len(own))
			a, retried := settle(l, "delete", strconv.FormatInt(own[i].ID, 10), "DELETE", fmt.Sprintf("/users/%d", own[i].ID), "")
			if a.status == http.StatusNoContent || retried && a.status == http.StatusNotFound {
				c.ledger.remove(own[i].ID)
				own = slices.Delete(own, i, i+1)
			}
		}
		c.paused.RUnlock()
	}
}

// reader reads users back through l until the load stops: each of own by
// id, and pages of the list; 10 ms apart.
func (c *haClients) reader(l *load, own []apiUser, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 4))
	for i := 0; !l.stopped(); i++ {
		if i%4 == 3 {
			l.do("list", "", "GET", fmt.Sprintf("/users?after=%d&limit=20", own[rng.IntN(len(own))].ID-1), "")
		} else {
			u := own[rng.IntN(len(own))]
			a := l.do("get", u.Name, "GET", fmt.Sprintf("/users/%d", u.ID), "")
			var got apiUser
			if a.status == http.StatusOK && (json.Unmarshal(a.body, &got) != nil || !sameUser(got, u)) {
				c.t.Errorf("GET /users/%d = %s, want %+v", u.ID, a.body, u)
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// pauseAndCheck lets every write in flight settle, holds the writers,
// checks the table on node against the ledger, and lets them go on.
// Returns the number of rows and of acknowledged writes lost.
func (c *haClients) pauseAndCheck(f *formation, node string) (rows, lost int) {
	c.t.Helper()
	c.paused.Lock()
	defer c.paused.Unlock()
	return c.ledger.check(c.t, f.nodeURL(node, "usersvc"))
}

// setPhase labels the requests of every service from now on.
func (c *haClients) setPhase(phase string) {
	for _, l := range c.loads {
		l.setPhase(phase)
	}
}

// writeOps are the operations that change the table, as settle labels them.
var writeOps = []string{"create", "create retry", "rename", "rename retry", "delete", "delete retry"}

// acknowledged reports whether a is a write that the service acknowledged.
func acknowledged(a attempt) bool {
	return a.err == nil && a.status >= 200 && a.status < 300 && slices.Contains(writeOps, a.op)
}

// stalls records when this process got no CPU for a while: the machine's
// other work (a load average of 15 and more on 2 cores, here) can hold the
// service and its clients, which run in it, for seconds.
type stalls struct {
	mu   sync.Mutex
	held [][2]time.Time // from, to
	stop chan struct{}
	done chan struct{}
}

// stallTick is how often watchStalls looks at the clock, and stallMin the
// lateness it records.
const stallTick, stallMin = 20 * time.Millisecond, 200 * time.Millisecond

// watchStalls starts recording stalls until the returned stalls' end.
func watchStalls() *stalls {
	s := &stalls{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(stallTick)
		defer tick.Stop()
		last := time.Now()
		for {
			select {
			case <-s.stop:
				return
			case <-tick.C:
				now := time.Now()
				if late := now.Sub(last) - stallTick; late > stallMin {
					s.mu.Lock()
					s.held = append(s.held, [2]time.Time{last.Add(stallTick), now})
					s.mu.Unlock()
				}
				last = now
			}
		}
	}()
	return s
}

func (s *stalls) end() {
	close(s.stop)
	<-s.done
}

// within returns how long the process was held off the CPU between from
// and to.
func (s *stalls) within(from, to time.Time) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for _, h := range s.held {
		a, b := h[0], h[1]
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.After(a) {
			d += b.Sub(a)
		}
	}
	return d
}

// longest returns the longest stall and how many there were.
func (s *stalls) longest() (time.Duration, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var d time.Duration
	for _, h := range s.held {
		d = max(d, h[1].Sub(h[0]))
	}
	return d, len(s.held)
}

// allowed returns why a is not an answer its request may get, or "". A
// request may take REQUEST_TIMEOUT and latencyMargin, plus the time the
// process was held off the CPU meanwhile (see stalls).
func allowed(a attempt, st *stalls) string {
	switch {
	case a.err != nil:
		return "no answer"
	case a.took()-st.within(a.start, a.end) > haRequestTimeout+latencyMargin:
		return fmt.Sprintf("answered after %v (%v of it with this process held off the CPU), more than REQUEST_TIMEOUT (%v) + %v",
			a.took().Round(time.Millisecond), st.within(a.start, a.end).Round(time.Millisecond), haRequestTimeout, latencyMargin)
	case a.status == http.StatusServiceUnavailable:
		if a.code != "unavailable" || a.retryAfter == "" {
			return fmt.Sprintf("503 %q with Retry-After %q, want unavailable with a Retry-After", a.code, a.retryAfter)
		}
		return ""
	}
	want := map[string][]string{
		"create":       {"201"},
		"create retry": {"201", "400 duplicate_name"},
		"rename":       {"200"},
		"rename retry": {"200"},
		"delete":       {"204"},
		"delete retry": {"204", "404 not_found"},
		"get":          {"200"},
		"list":         {"200"},
	}[a.op]
	got := strconv.Itoa(a.status)
	if a.code != "" {
		got += " " + a.code
	}
	if !slices.Contains(want, got) {
		return fmt.Sprintf("%s, want %s or 503 unavailable", got, strings.Join(want, " or "))
	}
	return ""
}

// faultReport is what one fault did to the clients.
type faultReport struct {
	name                      string
	acked, lost, status500    int
	status503, requests, rows int
	// gap is the longest stretch without an acknowledged write around the
	// fault; accepted is when the new primary committed its first write
	// after the fault; share is, per service, the time from then to the
	// service's first acknowledged write.
	gap, accepted time.Duration
	share         []time.Duration
	// reads and readsOK count, per service, the reads that started while
	// no primary took writes, and those answered 200.
	reads, readsOK []int
}

// measure reports on phase of the clients' requests, for a fault injected
// at t0 after which the primary took writes again at accepted.
func (c *haClients) measure(phase string, t0, accepted time.Time) faultReport {
	r := faultReport{name: phase, accepted: accepted.Sub(t0)}
	var ends []time.Time
	for _, l := range c.loads {
		for _, p := range l.phases() {
			for _, a := range l.phaseAttempts(p) {
				if acknowledged(a) {
					ends = append(ends, a.end)
				}
			}
		}
	}
	slices.SortFunc(ends, time.Time.Compare)
	// The stretch from the last acknowledgement before the fault to the
	// first once the new primary took writes, split by any in between.
	first, last := 0, len(ends)-1
	for i, e := range ends {
		if !e.After(t0) {
			first = i
		}
	}
	for i := len(ends) - 1; i >= 0 && !ends[i].Before(accepted); i-- {
		last = i
	}
	for i := first; i < last; i++ {
		r.gap = max(r.gap, ends[i+1].Sub(ends[i]))
	}
	back := accepted
	for _, l := range c.loads {
		as := l.phaseAttempts(phase)
		firstAck, ok := firstAfter(as, accepted, acknowledged)
		share := time.Duration(-1)
		if ok {
			share = firstAck.Sub(accepted)
			if firstAck.After(back) {
				back = firstAck
			}
		}
		r.share = append(r.share, share)
		for _, a := range as {
			r.requests++
			switch {
			case acknowledged(a):
				r.acked++
			case a.status == http.StatusInternalServerError:
				r.status500++
			case a.status == http.StatusServiceUnavailable:
				r.status503++
			}
		}
	}
	for _, l := range c.loads {
		var reads, ok int
		for _, a := range l.phaseAttempts(phase) {
			if (a.op == "get" || a.op == "list") && !a.start.Before(t0) && a.start.Before(back) {
				reads++
				if a.status == http.StatusOK {
					ok++
				}
			}
		}
		r.reads, r.readsOK = append(r.reads, reads), append(r.readsOK, ok)
	}
	return r
}

// phases returns the phases that have requests, in order of name.
func (l *load) phases() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Sorted(maps.Keys(l.attempts))
}

// waitAcked waits until every service acknowledged a write of phase that
// ended after since, or fails the test after within.
func (c *haClients) waitAcked(phase string, since time.Time, within time.Duration) {
	c.t.Helper()
	for _, l := range c.loads {
		l.waitFor(phase, "acknowledged write after "+since.Format(time.TimeOnly), within, func(as []attempt) bool {
			_, ok := firstAfter(as, since, acknowledged)
			return ok
		})
	}
}

// percentiles returns the 50th and 99th percentiles of ds.
func percentiles(ds []time.Duration) (p50, p99 time.Duration) {
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)/2], s[len(s)*99/100]
}

// loadAverage returns /proc/loadavg's first three fields.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// TestHighAvailability runs two usersvc serve processes against a
// pg_auto_failover formation of two nodes, one with DATABASE_URL alone
// (the formation's URL, target_session_attrs=read-write) and one with
// DATABASE_READ_URL too (target_session_attrs=prefer-standby). Through the
// second, a create followed at once by a read of it from the standby
// finds the user, 1,000 times in a row. Then, under writers and readers on
// both: the primary's machine is lost, the old primary rejoins, the
// primary is fenced read-only for a few seconds, a switchover is
// performed, the new primary's machine is lost too, and, once the old one
// has rejoined, the primary's host vanishes from the network with every
// process on it running, until the formation has failed over. After each,
// every acknowledged write is on the new primary as acknowledged and
// nothing else is; every answer is one the request may get, within
// REQUEST_TIMEOUT and a margin; and no write answered 503 committed after
// its answer (lateCommits).
func TestHighAvailability(t *testing.T) {
	began := time.Now()
	st := watchStalls()
	defer st.end()
	f := newFormation(t, "node1", "node2")
	writeURL := f.uri()
	readURL := strings.Replace(writeURL, "target_session_attrs=read-write", "target_session_attrs=prefer-standby", 1)
	t.Logf("DATABASE_URL=%s\nDATABASE_READ_URL=%s", writeURL, readURL)

	// Migrations go through the formation's URL to its primary.
	setenv(t, map[string]string{"DATABASE_URL": writeURL})
	var out syncBuffer
	if err := run(context.Background(), []string{"migrate", "up"}, &out, &out); err != nil {
		t.Fatalf("usersvc migrate up through the formation's URL: %v\n%s", err, out.String())
	}
	sql(t, writeURL, commitLogSQL)

	env := map[string]string{"DATABASE_URL": writeURL, "REQUEST_TIMEOUT": haRequestTimeout.String()}
	plain := startServe(t, env)
	env = map[string]string{"DATABASE_URL": writeURL, "DATABASE_READ_URL": readURL, "REQUEST_TIMEOUT": haRequestTimeout.String()}
	withReads := startServe(t, env)
	services := []*serving{plain, withReads}
	serviceNames := []string{"DATABASE_URL only", "with DATABASE_READ_URL"}
	for _, s := range services {
		s.eventually(t, "GET", "/readyz", "", 200, 15*time.Second)
	}
	c := &haClients{t: t, ledger: newLedger()}
	for _, s := range services {
		c.loads = append(c.loads, newLoad(t, s.base, 16))
	}
	// A consumer of the change feed, through every fault below.
	consumer := newFeedConsumer()
	var stopConsumer atomic.Bool
	consumed := consumer.follow(func() string { return plain.base }, &stopConsumer)

	t.Run("read your writes", func(t *testing.T) {
		checkReadYourWrites(t, f, c, "node1", "node2")
	})

	// Each reader's users, made before the faults through the reader's
	// service: what one service acknowledged is on the standby when the
	// other reads it only with remote_apply on both.
	const writersPerService, readersPerService, usersPerReader = 4, 2, 5
	own := make([][]apiUser, len(services)*readersPerService)
	for i := range own {
		l := c.loads[i/readersPerService]
		for j := range usersPerReader {
			name := fmt.Sprintf("reader %d user %d", i, j)
			a := send(l.client, "POST", l.base+"/users", nameBody(name))
			var u apiUser
			if a.err != nil || a.status != http.StatusCreated || json.Unmarshal(a.body, &u) != nil {
				t.Fatalf("POST /users %q: %v %s", name, a, a.body)
			}
			own[i] = append(own[i], u)
			c.ledger.set(u)
		}
	}
	c.setPhase("steady")
	for si, l := range c.loads {
		l.run(writersPerService, func(k int) { c.writer(l, fmt.Sprintf("s%d-w%d", si, k), uint64(si*100+k)) })
		l.run(readersPerService, func(k int) { c.reader(l, own[si*readersPerService+k], uint64(si*100+k)) })
	}
	defer func() {
		for _, l := range c.loads {
			if !l.stopped() {
				l.finish()
			}
		}
	}()
	for _, l := range c.loads {
		l.waitFor("steady", "100 acknowledged writes", 30*time.Second, func(as []attempt) bool { return count(as, acknowledged) >= 100 })
	}

	var reports []faultReport
	// healthy waits until the formation has a primary whose commits wait
	// for the secondary (not wait_primary, which commits alone): each fault
	// below is the first since the formation was whole, which is what two
	// nodes can take without losing an acknowledged write.
	healthy := func() {
		t.Helper()
		states := f.states()
		want := map[string]string{}
		for name, s := range states {
			if s.reported == "primary" || s.reported == "wait_primary" {
				want[name] = "primary"
			} else {
				want[name] = "secondary"
			}
		}
		f.waitStates(60*time.Second, want)
	}
	// failover hurts the formation with inject and waits for node next to
	// commit a write and for each service to acknowledge one; then it
	// checks the table there.
	failover := func(phase, next string, inject func()) {
		t.Helper()
		healthy()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		accepting := f.probeWrites(ctx, next) // fails until next is the primary
		c.setPhase(phase)
		t0 := time.Now()
		inject()
		var accepted time.Time
		select {
		case accepted = <-accepting:
		case <-time.After(60 * time.Second):
			t.Fatalf("%s: %s committed no write within 60s; the monitor says %s", phase, next, f.describe())
		}
		c.waitAcked(phase, accepted, 15*time.Second)
		r := c.measure(phase, t0, accepted)
		r.rows, r.lost = c.pauseAndCheck(f, next)
		t.Logf("%s: %s takes writes %v after the fault; the table there holds %d users, %d acknowledged writes missing (%s)",
			phase, next, r.accepted.Round(time.Millisecond), r.rows, r.lost, f.describe())
		reports = append(reports, r)
		for i, share := range r.share {
			if share > 2*time.Second {
				t.Errorf("%s: service %s acknowledged its first write %v after %s took writes, want within 2s", phase, serviceNames[i], share, next)
			}
		}
	}

	failover("primary killed", "node2", func() { f.kill("node1") })

	// The old primary rejoins as a secondary, under the same load.
	c.setPhase("rejoin")
	t0 := time.Now()
	f.start(f.nodes["node1"])
	f.waitStates(60*time.Second, map[string]string{"node1": "secondary", "node2": "primary"})
	joined := time.Now()
	t.Logf("rejoin: node1 is a secondary again %v after its pg_autoctl started", joined.Sub(t0).Round(time.Millisecond))
	c.waitAcked("rejoin", joined, 15*time.Second)
	rejoin := c.measure("rejoin", t0, joined)
	rejoin.accepted, rejoin.share = 0, nil // the primary took writes throughout
	rejoin.rows, rejoin.lost = c.pauseAndCheck(f, "node2")
	reports = append(reports, rejoin)

	healthy()
	t.Run("fenced read-only", func(t *testing.T) {
		reports = append(reports, checkFence(t, f, c, plain, "node2"))
	})

	failover("switchover", "node1", func() {
		began := time.Now()
		out := f.run("", "perform", "failover", "--pgdata", f.monitor.pgdata)
		t.Logf("pg_autoctl perform failover took %v:\n%s", time.Since(began).Round(time.Millisecond), tail(out, 1500))
	})
	f.waitStates(60*time.Second, map[string]string{"node1": "primary", "node2": "secondary"})

	failover("primary killed again", "node2", func() { f.kill("node1") })

	c.setPhase("rejoin again")
	f.start(f.nodes["node1"])
	f.waitStates(60*time.Second, map[string]string{"node1": "secondary", "node2": "primary"})
	old := f.nodes["node2"]
	failover("primary's host vanished", "node1", func() { f.lan.cut(old.ns, "INPUT", "OUTPUT") })
	// Cut off, the old primary still runs: the writes whose wait for its
	// standby the statement timeout ended committed there alone, and no
	// client was told they did.
	alone := divergent(t, f, old, "node1")
	f.lan.heal(old.ns, "INPUT", "OUTPUT")
	healed := time.Now()
	f.waitStates(90*time.Second, map[string]string{"node2": "secondary", "node1": "primary"})
	t.Logf("primary's host vanished: node2 committed %d changes alone while cut off; a secondary again %v after the heal",
		len(alone), time.Since(healed).Round(time.Millisecond))
	if kept := divergent(t, f, old, "node1"); len(kept) > 0 {
		t.Errorf("node2 rejoined as a secondary and still holds %d changes node1 lacks: %v", len(kept), kept)
	}

	for _, l := range c.loads {
		l.finish()
	}
	// Every answer, to every client, was one its request may get.
	unexpected := 0
	for si, l := range c.loads {
		for _, phase := range l.phases() {
			for _, a := range l.phaseAttempts(phase) {
				if why := allowed(a, st); why != "" {
					if unexpected++; unexpected <= 20 {
						t.Errorf("service %s, phase %s: %v: %s", serviceNames[si], phase, a, why)
					}
				}
			}
		}
	}
	if unexpected > 20 {
		t.Errorf("... and %d more answers that their requests may not get", unexpected-20)
	}
	var all []attempt
	for _, l := range c.loads {
		for _, phase := range l.phases() {
			all = append(all, l.phaseAttempts(phase)...)
		}
	}
	in503, late := lateCommits(t, f.nodeURL("node1", "usersvc"), all)
	stopConsumer.Store(true)
	<-consumed
	acknowledged := map[int64]bool{}
	for _, a := range all {
		var u apiUser
		if a.status == http.StatusCreated && json.Unmarshal(a.body, &u) == nil {
			acknowledged[u.ID] = true
		}
	}
	consumer.check(t, plain.base, f.nodeURL("node1", "usersvc"), acknowledged)
	if late > 0 {
		t.Errorf("%d writes answered 503 committed after their answer, want none", late)
	}
	for si, s := range services {
		for _, rec := range logRecords(t, s.logs.String()) {
			if rec["level"] == "ERROR" {
				t.Errorf("service %s logged an error: %v", serviceNames[si], rec)
			}
		}
	}

	var b strings.Builder
	fmt.Fprintf(&b, "fault | requests | acknowledged writes | lost | 500s | 503s | write gap | new primary takes writes after | service's share (URL only / with read URL) | reads answered while no primary took writes (URL only / with read URL)\n")
	for _, r := range reports {
		accepted, share := "-", "-"
		if r.share != nil {
			accepted = r.accepted.Round(time.Millisecond).String()
			share = fmt.Sprintf("%v / %v", r.share[0].Round(time.Millisecond), r.share[1].Round(time.Millisecond))
		}
		fmt.Fprintf(&b, "%s | %d | %d | %d | %d | %d | %v | %s | %s | %d/%d / %d/%d\n", r.name, r.requests, r.acked, r.lost, r.status500, r.status503,
			r.gap.Round(time.Millisecond), accepted, share, r.readsOK[0], r.reads[0], r.readsOK[1], r.reads[1])
	}
	longest, stallCount := st.longest()
	t.Logf("%s; load average %s; this process held off the CPU %d times for %v or more, at most %v; %v in all; "+
		"%d writes answered 503 are on the primary, %d committed after their answer:\n%s",
		strings.TrimSpace(strings.SplitN(f.run("", "version"), "\n", 2)[0]), loadAverage(), stallCount, stallMin, longest.Round(time.Millisecond),
		time.Since(began).Round(time.Second), in503, late, b.String())
	for _, r := range reports {
		if r.status500 > 0 {
			t.Errorf("%s: %d answers 500, want none", r.name, r.status500)
		}
	}
	if r := reports[0]; r.readsOK[1] != r.reads[1] {
		t.Errorf("%s: with DATABASE_READ_URL, %d of %d reads answered 200 while no primary took writes, want all", r.name, r.readsOK[1], r.reads[1])
	}
	if rejoin.status503 > 0 {
		t.Errorf("rejoin: %d answers 503 while the old primary rejoined as a secondary, want none", rejoin.status503)
	}
}

// checkReadYourWrites creates a user through the service with
// DATABASE_READ_URL and reads it back through it at once, 1,000 times in a
// row, from the standby; and compares the latency of its creates, which
// wait for the standby to apply them, with that of the other service.
func checkReadYourWrites(t *testing.T, f *formation, c *haClients, primary, standby string) {
	const n = 1000
	plain, withReads := c.loads[0], c.loads[1]
	var plainTook, readsTook []time.Duration
	for i := range n {
		name := fmt.Sprintf("read your writes %d", i)
		a := send(withReads.client, "POST", withReads.base+"/users", nameBody(name))
		var u apiUser
		if a.err != nil || a.status != http.StatusCreated || json.Unmarshal(a.body, &u) != nil {
			t.Fatalf("POST /users %q with DATABASE_READ_URL: %v %s", name, a, a.body)
		}
		c.ledger.set(u)
		readsTook = append(readsTook, a.took())
		g := send(withReads.client, "GET", fmt.Sprintf("%s/users/%d", withReads.base, u.ID), "")
		var got apiUser
		if g.err != nil || g.status != http.StatusOK || json.Unmarshal(g.body, &got) != nil || !sameUser(got, u) {
			t.Fatalf("create %d of %d, then at once GET /users/%d through DATABASE_READ_URL: %v %s, want 200 and %+v", i+1, n, u.ID, g, g.body, u)
		}
		name = fmt.Sprintf("write latency %d", i)
		a = send(plain.client, "POST", plain.base+"/users", nameBody(name))
		if a.err != nil || a.status != http.StatusCreated || json.Unmarshal(a.body, &u) != nil {
			t.Fatalf("POST /users %q: %v %s", name, a, a.body)
		}
		c.ledger.set(u)
		plainTook = append(plainTook, a.took())
	}
	// The reads came from the standby: the read pool's sessions are there,
	// and none is on the primary.
	sessions := func(node string) int {
		conn := f.connect(f.nodes[node], "usersvc")
		defer conn.Close(context.Background())
		var n int
		if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'usersvc-read'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	onStandby, onPrimary := sessions(standby), sessions(primary)
	if onStandby == 0 || onPrimary != 0 {
		t.Errorf("the read pool has %d sessions on the standby %s and %d on the primary %s, want them all on the standby", onStandby, standby, onPrimary, primary)
	}
	p50, p99 := percentiles(plainTook)
	r50, r99 := percentiles(readsTook)
	t.Logf("%d creates, each read back at once from the standby (%d read sessions there): all found. POST /users latency, p50 / p99: "+
		"synchronous_commit=on (the standby has flushed the commit) %v / %v; remote_apply (it has applied it, with DATABASE_READ_URL) %v / %v; load average %s",
		n, onStandby, p50.Round(time.Microsecond), p99.Round(time.Microsecond), r50.Round(time.Microsecond), r99.Round(time.Microsecond), loadAverage())
}

// checkFence fences node, the primary, read-only for a few seconds under
// the clients' load, as pg_auto_failover does to a node it promotes: the
// writes get 503, /readyz answers 503 saying why, and the writes are back
// within a second of the fence being lifted.
func checkFence(t *testing.T, f *formation, c *haClients, s *serving, node string) faultReport {
	const phase, fenced = "fenced read-only", 3 * time.Second
	ctx := context.Background()
	admin := f.connect(f.nodes[node], "usersvc")
	defer admin.Close(ctx)
	setFence := func(sql string) {
		t.Helper()
		for _, q := range []string{sql, "SELECT pg_reload_conf()"} {
			if _, err := admin.Exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	readyz := func(want int, within time.Duration) (string, time.Duration) {
		t.Helper()
		start := time.Now()
		for {
			a := send(http.DefaultClient, "GET", s.base+"/readyz", "")
			if a.err == nil && a.status == want {
				return string(a.body), time.Since(start)
			}
			if time.Since(start) > within {
				t.Fatalf("GET /readyz: %v %s %v after the change, want %d", a, a.body, within, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	c.setPhase(phase)
	t0 := time.Now()
	setFence("ALTER SYSTEM SET default_transaction_read_only = on")
	body, after := readyz(http.StatusServiceUnavailable, 2*time.Second)
	if !strings.Contains(body, "refuses writes") && !strings.Contains(body, "takes writes") {
		t.Errorf("GET /readyz on a fenced primary: %s, want a detail that says the database refuses writes, or that no host takes them", body)
	}
	t.Logf("fenced: GET /readyz 503 %v after the fence: %s", after.Round(time.Millisecond), body)
	for _, l := range c.loads {
		l.waitFor(phase, "503 under the fence", 5*time.Second, func(as []attempt) bool {
			return count(as, func(a attempt) bool { return unavailable(a) && slices.Contains(writeOps, a.op) }) > 0
		})
	}
	time.Sleep(time.Until(t0.Add(fenced)))
	lifted := time.Now()
	setFence("ALTER SYSTEM RESET default_transaction_read_only")
	c.waitAcked(phase, lifted, 5*time.Second)
	_, after = readyz(http.StatusOK, 2*time.Second)
	r := c.measure(phase, t0, lifted)
	for i, share := range r.share {
		if share > time.Second {
			t.Errorf("service %d acknowledged its first write %v after the fence was lifted, want within 1s", i, share)
		}
	}
	r.rows, r.lost = c.pauseAndCheck(f, node)
	t.Logf("fence lifted after %v: GET /readyz 200 %v later; writes back %v / %v later; %d users, %d acknowledged writes missing",
		lifted.Sub(t0).Round(time.Millisecond), after.Round(time.Millisecond), r.share[0].Round(time.Millisecond), r.share[1].Round(time.Millisecond), r.rows, r.lost)
	return r
}

// divergent returns the changes in commit_log on node a that node other
// lacks, read from inside a's network namespace, which reaches it even
// while it is cut off.
func divergent(t *testing.T, f *formation, a *autoctl, other string) [][3]string {
	t.Helper()
	changes := func(cc *pgx.ConnConfig) map[[3]string]bool {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err != nil {
			t.Fatalf("connect to %s: %v", cc.Host, err)
		}
		defer conn.Close(context.Background())
		rows, err := conn.Query(ctx, "SELECT op, key, xid::text FROM commit_log")
		if err != nil {
			t.Fatal(err)
		}
		out := map[[3]string]bool{}
		var r [3]string
		if _, err := pgx.ForEachRow(rows, []any{&r[0], &r[1], &r[2]}, func() error { out[r] = true; return nil }); err != nil {
			t.Fatal(err)
		}
		return out
	}
	parse := func(url string) *pgx.ConnConfig {
		cc, err := pgx.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		return cc
	}
	cc := parse(f.url(a, "usersvc"))
	cc.DialFunc = dialIn(a.ns)
	// a's first: each change it replicated from other is on other by then.
	here := changes(cc)
	there := changes(parse(f.nodeURL(other, "usersvc")))
	var out [][3]string
	for r := range here {
		if !there[r] {
			out = append(out, r)
		}
	}
	return out
}
