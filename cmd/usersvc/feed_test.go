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

	var bases [2]atomic.Value // each instance's URL
	var procs [2]*exec.Cmd
	start := func(i int) {
		addr := pgtest.FreeAddr(t)
		cmd := exec.Command(bin, "serve")
		cmd.Env = append(os.Environ(), "DATABASE_URL="+databaseURL, "HTTP_ADDR="+addr, "REQUEST_TIMEOUT=1s", "LOG_LEVEL=warn")
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

	// The consumer.
	users := map[int64]apiUser{}
	seen := map[int64]bool{} // users it was told of
	var last int64
	var delivered int
	var consumerErrs []string
	read := func(wait int) (int, error) {
		res, err := client.Get(fmt.Sprintf("%s/users/changes?after=%d&limit=200&wait=%d", base(), last, wait))
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
			if c.Position <= last {
				consumerErrs = append(consumerErrs, fmt.Sprintf("position %d after %d", c.Position, last))
			}
			last = c.Position
			delivered++
			seen[c.ID] = true
			if c.User == nil {
				delete(users, c.ID)
			} else {
				users[c.ID] = *c.User
			}
		}
		return len(page), nil
	}
	consumed := make(chan struct{})
	var failures atomic.Int64
	go func() {
		defer close(consumed)
		for !stop.Load() {
			if _, err := read(1); err != nil {
				failures.Add(1)
				time.Sleep(50 * time.Millisecond)
			}
		}
	}()

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
	<-consumed

	// Catch up: until a read finds nothing more.
	for end := time.Now().Add(30 * time.Second); ; {
		n, err := read(0)
		if err == nil && n == 0 {
			break
		}
		if time.Now().After(end) {
			t.Fatalf("the consumer did not catch up within 30 s: %v", err)
		}
	}
	for _, e := range consumerErrs {
		t.Error(e)
	}
	table := usersByName(t, databaseURL)
	byID := map[int64]apiUser{}
	for _, u := range table {
		byID[u.ID] = u
	}
	if len(byID) != len(users) {
		t.Errorf("the consumer's copy has %d users, the table %d", len(users), len(byID))
	}
	for id, u := range byID {
		if got, ok := users[id]; !ok || !sameUser(got, u) {
			t.Errorf("user %d: the copy has %+v (present %v), the table %+v", id, got, ok, u)
		}
	}
	missed := 0
	for id := range acknowledged {
		if !seen[id] {
			missed++
		}
	}
	if missed > 0 || len(acknowledged) < 50 {
		t.Errorf("%d of %d acknowledged creates never reached the consumer (want 0 of at least 50)", missed, len(acknowledged))
	}
	t.Logf("%d acknowledged creates; %d changes delivered, up to position %d; %d users in the table; the consumer's reads failed %d times during the faults; going back or repeated: %d",
		len(acknowledged), delivered, last, len(byID), failures.Load(), len(consumerErrs))
}
