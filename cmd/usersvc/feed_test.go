package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"usersvc/internal/pgtest"
)

// TestFeedWaitOutlastsTimeouts holds a wait longer than the HTTP server's
// ReadTimeout and WriteTimeout (BODY_TIMEOUT and REQUEST_TIMEOUT of 1 s
// make them 6 s and 7 s): it is answered [] when its wait runs out, as
// the API says, not cut off.
func TestFeedWaitOutlastsTimeouts(t *testing.T) {
	s := startServe(t, map[string]string{"DATABASE_URL": pgtest.NewURL(t), "BODY_TIMEOUT": "1s", "REQUEST_TIMEOUT": "1s"})
	s.eventually(t, "GET", "/readyz", "", 200, 10*time.Second)
	start := time.Now()
	res, err := http.Get(s.base + "/users/changes?wait=9")
	if err != nil {
		t.Fatalf("GET /users/changes?wait=9: %v after %v", err, time.Since(start))
	}
	defer res.Body.Close()
	var page []feedChange
	if err := json.NewDecoder(res.Body).Decode(&page); err != nil || res.StatusCode != http.StatusOK || len(page) != 0 {
		t.Errorf("GET /users/changes?wait=9: status %d, %v, %v; want 200 and []", res.StatusCode, page, err)
	}
	if took := time.Since(start); took < 9*time.Second {
		t.Errorf("answered after %v, want after the 9 s wait", took)
	}
}

// feedChange is a change of GET /users/changes.
type feedChange struct {
	Position int64    `json:"position"`
	Op       string   `json:"op"`
	ID       int64    `json:"id"`
	User     *apiUser `json:"user"`
}

// TestFeedSurvivesFaults writes users through two instances of the real
// binary while a consumer follows the change feed, and meanwhile SIGKILLs
// an instance, crashes PostgreSQL (pg_ctl stop -m immediate) and starts
// both again. The consumer, continuing from its last position through
// whichever instance answers, must never see a position twice or go back,
// must be told of every write that was acknowledged, and must end with a
// copy equal to the table.
func TestFeedSurvivesFaults(t *testing.T) {
	bin := usersvcBinary(t)
	dir, port := newPGDir(t), pgtest.FreePort(t)
	pg := startPostgres(t, dir, port)
	databaseURL := pg.URL("postgres")
	pgtest.Migrate(t, databaseURL)
	// The throwaway server's commits do not wait for the WAL, and a crash
	// would lose acknowledged writes: the service's must.
	serviceURL := databaseURL + "&synchronous_commit=on"
	if !strings.Contains(databaseURL, "?") {
		serviceURL = databaseURL + "?synchronous_commit=on"
	}

	var bases [2]atomic.Value // each instance's URL
	var procs [2]*exec.Cmd
	start := func(i int) {
		addr := pgtest.FreeAddr(t)
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(os.Environ(), "DATABASE_URL="+serviceURL, "HTTP_ADDR="+addr, "REQUEST_TIMEOUT=1s", "LOG_LEVEL=warn")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() { cmd.Process.Kill(); <-exited })
		waitFor(t, "http://"+addr+"/readyz", 10*time.Second, exited)
		procs[i] = cmd
		bases[i].Store("http://" + addr)
	}
	start(0)
	start(1)
	base := func() string { return bases[rand.IntN(2)].Load().(string) }
	client := &http.Client{Timeout: 5 * time.Second}

	var stop atomic.Bool
	var mu sync.Mutex
	acknowledged := map[int64]bool{} // users a create was answered 201 for
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			var mine []int64
			for n := 0; !stop.Load(); n++ {
				var req *http.Request
				switch {
				case n%4 == 3 && len(mine) > 0:
					req, _ = http.NewRequest(http.MethodDelete, base()+"/users/"+strconv.FormatInt(mine[0], 10), nil)
					mine = mine[1:]
				case n%4 == 2 && len(mine) > 0:
					req, _ = http.NewRequest(http.MethodPut, base()+"/users/"+strconv.FormatInt(mine[len(mine)-1], 10), strings.NewReader(fmt.Sprintf(`{"name":"w%d-renamed-%d"}`, w, n)))
				default:
					req, _ = http.NewRequest(http.MethodPost, base()+"/users", strings.NewReader(fmt.Sprintf(`{"name":"w%d-%d"}`, w, n)))
				}
				req.Header.Set("Content-Type", "application/json")
				res, err := client.Do(req)
				if err != nil {
					time.Sleep(20 * time.Millisecond) // an instance or the database is down
					continue
				}
				var u apiUser
				if res.StatusCode == http.StatusCreated && json.NewDecoder(res.Body).Decode(&u) == nil {
					mine = append(mine, u.ID)
					mu.Lock()
					acknowledged[u.ID] = true
					mu.Unlock()
				}
				res.Body.Close()
				if res.StatusCode >= 500 {
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}

	consumer := newFeedConsumer()
	var stopConsumer atomic.Bool
	consumed := consumer.follow(base, &stopConsumer)

	pause := func() { time.Sleep(1500 * time.Millisecond) }
	pause()
	procs[0].Process.Signal(syscall.SIGKILL) // mid-write, maybe mid-sequencing
	pause()
	start(0)
	pause()
	if err := pg.Crash(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	startPostgres(t, dir, port)
	pause()
	procs[1].Process.Signal(syscall.SIGKILL)
	pause()
	start(1)
	pause()
	stop.Store(true)
	wg.Wait()
	stopConsumer.Store(true)
	<-consumed
	consumer.check(t, base(), databaseURL, acknowledged)
}

// feedConsumer follows the change feed as a consumer keeping a copy of
// the users would, continuing from its last position whatever fails.
type feedConsumer struct {
	client    *http.Client
	last      int64
	delivered int
	failures  int               // reads that failed and were tried again
	users     map[int64]apiUser // the copy
	seen      map[int64]bool    // the users it was told of
	wrong     []string          // positions repeated or going back
}

func newFeedConsumer() *feedConsumer {
	return &feedConsumer{client: &http.Client{Timeout: 10 * time.Second}, users: map[int64]apiUser{}, seen: map[int64]bool{}}
}

// read reads the changes after the last position from base, waiting up to
// wait seconds, applies them and returns how many came.
func (f *feedConsumer) read(base string, wait int) (int, error) {
	res, err := f.client.Get(fmt.Sprintf("%s/users/changes?after=%d&limit=200&wait=%d", base, f.last, wait))
	if err != nil {
		return 0, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d", res.StatusCode)
	}
	var page []feedChange
	if err := json.NewDecoder(res.Body).Decode(&page); err != nil {
		return 0, err
	}
	for _, c := range page {
		if c.Position <= f.last {
			f.wrong = append(f.wrong, fmt.Sprintf("position %d after %d", c.Position, f.last))
		}
		f.last = c.Position
		f.delivered++
		f.seen[c.ID] = true
		if c.User == nil {
			delete(f.users, c.ID)
		} else {
			f.users[c.ID] = *c.User
		}
	}
	return len(page), nil
}

// follow reads from base() with wait=1 until stop, in a goroutine of its
// own, and returns a channel closed when it has stopped.
func (f *feedConsumer) follow(base func() string, stop *atomic.Bool) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for !stop.Load() {
			if _, err := f.read(base(), 1); err != nil {
				f.failures++
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()
	return done
}

// check catches up through base, then fails the test unless no position
// came twice or went back, every user of acknowledged reached the consumer,
// and its copy equals the table at databaseURL.
func (f *feedConsumer) check(t *testing.T, base, databaseURL string, acknowledged map[int64]bool) {
	t.Helper()
	for end := time.Now().Add(30 * time.Second); ; {
		n, err := f.read(base, 0)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the consumer did not catch up within 30 s: %v", err)
		}
	}
	for _, e := range f.wrong {
		t.Error(e)
	}
	byID := map[int64]apiUser{}
	for _, u := range usersByName(t, databaseURL) {
		byID[u.ID] = u
	}
	if len(byID) != len(f.users) {
		t.Errorf("the consumer's copy has %d users, the table %d", len(f.users), len(byID))
	}
	for id, u := range byID {
		if got, ok := f.users[id]; !ok || !sameUser(got, u) {
			t.Errorf("user %d: the copy has %+v (present %v), the table %+v", id, got, ok, u)
		}
	}
	missed := 0
	for id := range acknowledged {
		if !f.seen[id] {
			missed++
		}
	}
	if missed > 0 || len(acknowledged) < 50 {
		t.Errorf("%d of %d acknowledged creates never reached the consumer (want 0 of at least 50)", missed, len(acknowledged))
	}
	t.Logf("change feed: %d acknowledged creates; %d changes delivered, up to position %d; %d users in the table; %d reads failed during the faults and were tried again; repeated or going back: %d",
		len(acknowledged), f.delivered, f.last, len(byID), f.failures, len(f.wrong))
}
