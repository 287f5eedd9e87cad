package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// driverRun stands in for pgbench where pgbench cannot go: a statement that
// fails on purpose. pgbench 15 aborts a client at its first error other
// than a serialization failure or a deadlock (--continue-on-error came
// after PostgreSQL 18, and even it leaves failed transactions out of the
// TPS). So scenario 4's ceiling runs here, through pgconn, which is to pgx
// what libpq is to pgbench: each client prepares the statement once, as
// `pgbench -M prepared` does, then executes it with text parameters, one
// implicit transaction at a time, and a transaction counts when it ends as
// expected. The report prints this driver's figure on scenario 1's SQL
// next to pgbench's, to show how the two clients compare.
type driverRun struct {
	url      string
	sql      string // with one parameter, $1
	lo, hi   int    // $1 is a uniformly random integer in lo..hi, sent as text
	clients  int
	duration time.Duration
	// wantCode is the SQLSTATE each execution must fail with; "" when it
	// must succeed.
	wantCode string
	seed     uint64
}

// run runs the statement on every client until the duration is over and
// returns the transactions per second, counted from when every client has
// connected and prepared, as pgbench's figure "without initial connection
// time" is. Returns an error when a client cannot connect or prepare, or
// when ctx ends.
func (d driverRun) run(ctx context.Context) (pgbenchResult, error) {
	conns := make([]*pgconn.PgConn, d.clients)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()
	for i := range conns {
		c, err := pgconn.Connect(ctx, d.url)
		if err != nil {
			return pgbenchResult{}, fmt.Errorf("driver: connect: %w", err)
		}
		conns[i] = c
		if _, err := c.Prepare(ctx, "s", d.sql, nil); err != nil {
			return pgbenchResult{}, fmt.Errorf("driver: prepare %q: %w", d.sql, err)
		}
	}

	var stop atomic.Bool
	var done, failed atomic.Int64
	var wg sync.WaitGroup
	machine0, self0 := orZero(machineBusy()), selfCPU()
	start := time.Now()
	for i, c := range conns {
		wg.Go(func() {
			// No context per call: pgconn would start watching it on every
			// execution, a cost pgbench does not have. stop ends the loop.
			rng := rand.New(rand.NewPCG(d.seed, uint64(i)))
			params := [][]byte{nil}
			var ok, bad int64
			for !stop.Load() {
				params[0] = strconv.AppendInt(params[0][:0], int64(d.lo+rng.IntN(d.hi-d.lo+1)), 10)
				rr := c.ExecPrepared(context.Background(), "s", params, nil, nil)
				for rr.NextRow() {
				}
				_, err := rr.Close()
				if d.expected(err) {
					ok++
				} else {
					bad++
				}
			}
			done.Add(ok)
			failed.Add(bad)
		})
	}
	select {
	case <-time.After(d.duration):
	case <-ctx.Done():
	}
	stop.Store(true)
	elapsed := time.Since(start)
	wg.Wait()
	machine1, self1 := orZero(machineBusy()), selfCPU()
	if err := ctx.Err(); err != nil {
		return pgbenchResult{}, err
	}
	// A transaction that ends after the stop is counted, as pgbench counts
	// those that end after -T: at most one per client.
	return pgbenchResult{
		tps:       float64(done.Load()) / elapsed.Seconds(),
		processed: done.Load(),
		failed:    failed.Load(),
		latency:   time.Duration(float64(elapsed) * float64(d.clients) / float64(max(done.Load()+failed.Load(), 1))),
		cpu:       cpuSample{machine: machine1 - machine0, client: self1 - self0},
	}, nil
}

// expected reports whether an execution that returned err ended as it
// should.
func (d driverRun) expected(err error) bool {
	if d.wantCode == "" {
		return err == nil
	}
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == d.wantCode
}

// orZero returns v, or 0 when err says /proc could not be read: the CPU
// figures are then missing, not the run.
func orZero(v time.Duration, err error) time.Duration {
	if err != nil {
		return 0
	}
	return v
}
