package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/internal/config"
	"usersvc/internal/pgtest"
)

// BenchmarkChangeDelivery measures how soon a change reaches the consumers
// waiting on the feed of another instance than the one that wrote it: by
// LISTEN/NOTIFY, or by polling alone (CHANGES_LISTEN=false). Each op is one
// create; p50-ns and p99-ns are the delays from the start of its request
// to each waiter's receipt (docs/benchmarks.md, "A change's delay, and
// what waiting costs"). peak-conns-in-use is the most connections the waiters'
// instance had acquired from its pool at any sample (when a change wakes
// them all), waiting-conns-in-use the most while they all wait, after the
// last change, and pool-conns the most the pool held open.
func BenchmarkChangeDelivery(b *testing.B) {
	for _, bc := range []struct {
		listen  bool
		waiters int
	}{{true, 4}, {false, 4}, {true, 100}} {
		b.Run(fmt.Sprintf("listen=%v/waiters=%d", bc.listen, bc.waiters), func(b *testing.B) {
			benchmarkDelivery(b, bc.listen, bc.waiters)
		})
	}
}

func benchmarkDelivery(b *testing.B, listen bool, waiters int) {
	pool := pgtest.NewPool(b)
	writer := serveFeedOn(b, pool, listen)
	cfg, err := pgxpool.ParseConfig(pool.Config().ConnString())
	if err != nil {
		b.Fatal(err)
	}
	cfg.MaxConns = config.DefaultMaxConns(1) // serve's default, at least 16
	readerPool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(readerPool.Close)
	reader := serveFeedOn(b, readerPool, listen)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: waiters + 1}}

	var mu sync.Mutex
	sent := map[string]time.Time{}
	var delays []time.Duration
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range waiters {
		wg.Go(func() {
			var after int64
			for {
				select {
				case <-done:
					return
				default:
				}
				res, err := client.Get(reader + "/users/changes?wait=5&after=" + strconv.FormatInt(after, 10))
				if err != nil {
					b.Error(err)
					return
				}
				var page []change
				err = json.NewDecoder(res.Body).Decode(&page)
				res.Body.Close()
				got := time.Now()
				if err != nil {
					b.Error(err)
					return
				}
				mu.Lock()
				for _, c := range page {
					delays = append(delays, got.Sub(sent[c.User.Name]))
					after = c.Position
				}
				mu.Unlock()
			}
		})
	}
	// The waiters' connections, sampled while they wait.
	var inUse, open int32
	sampling := make(chan struct{})
	go func() {
		defer close(sampling)
		for {
			select {
			case <-done:
				return
			case <-time.After(5 * time.Millisecond):
			}
			st := readerPool.Stat()
			inUse, open = max(inUse, st.AcquiredConns()), max(open, st.TotalConns())
		}
	}()
	time.Sleep(500 * time.Millisecond) // every waiter is waiting

	b.ResetTimer()
	for i := range b.N {
		name := "delivery-" + strconv.Itoa(i)
		mu.Lock()
		sent[name] = time.Now()
		mu.Unlock()
		res, err := client.Post(writer+"/users", "application/json", strings.NewReader(`{"name":"`+name+`"}`))
		if err != nil || res.StatusCode != http.StatusCreated {
			b.Fatalf("create: %v %v", err, res.Status)
		}
		res.Body.Close()
		time.Sleep(20 * time.Millisecond) // one change at a time
	}
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(delays)
		mu.Unlock()
		if n >= b.N*waiters {
			break
		}
	}
	b.StopTimer()
	// Every change delivered, every waiter waits again: what they hold now.
	time.Sleep(100 * time.Millisecond)
	var waiting int32
	for range 40 {
		waiting = max(waiting, readerPool.Stat().AcquiredConns())
		time.Sleep(5 * time.Millisecond)
	}
	close(done)
	<-sampling
	wg.Wait()
	if len(delays) != b.N*waiters {
		b.Fatalf("%d deliveries, want %d", len(delays), b.N*waiters)
	}
	slices.Sort(delays)
	b.ReportMetric(float64(delays[len(delays)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(delays[len(delays)*99/100].Nanoseconds()), "p99-ns")
	b.ReportMetric(float64(inUse), "peak-conns-in-use")
	b.ReportMetric(float64(waiting), "waiting-conns-in-use")
	b.ReportMetric(float64(open), "pool-conns")
	b.ReportMetric(0, "ns/op")
}
