//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json/v2"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/procfs"
)

// wrkResult is the line that common.lua's done function prints: a whole
// wrk run. Latencies are in microseconds.
type wrkResult struct {
	Requests      int64   `json:"requests"`
	DurationUS    int64   `json:"duration_us"`
	Bytes         int64   `json:"bytes"`
	ConnectErrors int64   `json:"connect_errors"`
	ReadErrors    int64   `json:"read_errors"`
	WriteErrors   int64   `json:"write_errors"`
	StatusErrors  int64   `json:"status_errors"` // answers outside 2xx and 3xx
	Timeouts      int64   `json:"timeouts"`
	P50US         float64 `json:"p50_us"`
	P90US         float64 `json:"p90_us"`
	P99US         float64 `json:"p99_us"`
	P999US        float64 `json:"p999_us"`
	MaxUS         float64 `json:"max_us"`
	MeanUS        float64 `json:"mean_us"`
	// Counted by a script's response function, when it has one.
	Expected   int64 `json:"expected"`
	Unexpected int64 `json:"unexpected"`

	cpu cpuSample // where the CPU time went during the run
}

// parseLine finds the line that starts with prefix in a tool's output and
// decodes the JSON after it into v. Returns an error when there is none or
// it does not parse.
func parseLine(out []byte, prefix string, v any) error {
	for line := range bytes.Lines(out) {
		if rest, ok := bytes.CutPrefix(line, []byte(prefix)); ok {
			if err := json.Unmarshal(bytes.TrimSpace(rest), v); err != nil {
				return fmt.Errorf("parse %q: %w", line, err)
			}
			return nil
		}
	}
	return fmt.Errorf("no %q line", prefix)
}

// parseWrkOutput finds common.lua's result line in wrk's output. Returns an
// error when there is none, it does not parse or it has no duration.
func parseWrkOutput(out []byte) (wrkResult, error) {
	var r wrkResult
	if err := parseLine(out, "BENCH_RESULT ", &r); err != nil {
		return r, fmt.Errorf("wrk result: %w", err)
	}
	if r.DurationUS <= 0 {
		return r, errors.New("wrk result: no duration")
	}
	return r, nil
}

// reqPerSec is the run's throughput: every answer, errors included, as wrk
// counts them.
func (r wrkResult) reqPerSec() float64 {
	return float64(r.Requests) / (float64(r.DurationUS) / 1e6)
}

// errors counts the requests that failed: socket errors and timeouts, plus
// the answers the script counted as unexpected when expectStatus is set, or
// else every answer outside 2xx and 3xx. With expectStatus, an answer the
// script did not count at all is an error too: nothing says it was right.
func (r wrkResult) errors(expectStatus bool) int64 {
	n := r.ConnectErrors + r.ReadErrors + r.WriteErrors + r.Timeouts
	if expectStatus {
		return n + r.Unexpected + max(0, r.Requests-r.Expected-r.Unexpected)
	}
	return n + r.StatusErrors
}

// wrkRun is one run of wrk.
type wrkRun struct {
	wrk         string
	script      string // path of the Lua script
	url         string // base URL and, for a script without request function, the path
	threads     int
	connections int
	duration    time.Duration
	args        []string // the script's arguments: run tag, lo, hi
	servicePID  int      // whose CPU time the run measures
	token       string   // the service's bearer token, for common.lua
}

// run runs wrk and returns its result, and wrk's whole output, for what a
// script prints besides the result line. Returns an error with wrk's
// output when wrk fails or prints no result.
func (w wrkRun) run(ctx context.Context) (wrkResult, []byte, error) {
	args := []string{"-t", strconv.Itoa(w.threads), "-c", strconv.Itoa(w.connections), "-d", strconv.Itoa(int(w.duration/time.Second)) + "s",
		// Above the service's REQUEST_TIMEOUT (5s), so that a slow answer
		// is the service's 503, not a wrk timeout.
		"--timeout", "10s", "-s", w.script, w.url, "--"}
	cmd := exec.CommandContext(ctx, w.wrk, append(args, w.args...)...)
	cmd.Env = append(os.Environ(), "USERSVC_TOKEN="+w.token)
	var r wrkResult
	var cpu cpuSample
	out, err := measure(cmd, w.servicePID, &cpu)
	if err == nil {
		r, err = parseWrkOutput(out)
		r.cpu = cpu
	}
	if err != nil {
		return r, out, fmt.Errorf("wrk %s: %w\n%s", strings.Join(cmd.Args[1:], " "), err, out)
	}
	return r, out, nil
}

// pgbenchResult is what the benchmark reads from pgbench's summary.
type pgbenchResult struct {
	tps       float64 // without the initial connection time
	processed int64
	failed    int64
	cpu       cpuSample // where the CPU time went; service is 0
}

// The lines of pgbench's summary that the benchmark reads.
var (
	pgbenchTPS       = regexp.MustCompile(`(?m)^tps = ([0-9.]+) `)
	pgbenchProcessed = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	pgbenchFailed    = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
)

// parsePgbenchOutput reads the summary that pgbench prints at the end of a
// run. Returns an error when it has no tps line.
func parsePgbenchOutput(out []byte) (pgbenchResult, error) {
	var r pgbenchResult
	m := pgbenchTPS.FindSubmatch(out)
	if m == nil {
		return r, errors.New("parse pgbench output: no tps line")
	}
	r.tps, _ = strconv.ParseFloat(string(m[1]), 64)
	if m := pgbenchProcessed.FindSubmatch(out); m != nil {
		r.processed, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	if m := pgbenchFailed.FindSubmatch(out); m != nil {
		r.failed, _ = strconv.ParseInt(string(m[1]), 10, 64)
	}
	return r, nil
}

// pgbenchRun is one run of pgbench with one custom script.
type pgbenchRun struct {
	binDir   string // PostgreSQL's binaries, where pgbench is too
	url      string
	script   string
	clients  int
	duration time.Duration
	vars     map[string]int // -D definitions
}

// run runs pgbench and returns its summary. pgbench exits with status 2
// when a client aborted (any SQL error but a serialization failure or a
// deadlock aborts one); that, like any other failure, is an error that
// includes the end of pgbench's output.
func (p pgbenchRun) run(ctx context.Context) (pgbenchResult, error) {
	args := []string{
		"-n",             // no VACUUM of pgbench's own tables, which do not exist
		"-M", "prepared", // as pgx does: each statement parsed once per connection
		"-c", strconv.Itoa(p.clients), "-j", strconv.Itoa(pgbenchJobs(p.clients)),
		"-T", strconv.Itoa(int(p.duration / time.Second)), "-f", p.script,
	}
	for _, k := range sortedKeys(p.vars) {
		args = append(args, "-D", k+"="+strconv.Itoa(p.vars[k]))
	}
	cmd := exec.CommandContext(ctx, pgbenchPath(p.binDir), append(args, p.url)...)
	var r pgbenchResult
	var cpu cpuSample
	out, err := measure(cmd, 0, &cpu)
	if err == nil {
		r, err = parsePgbenchOutput(out)
		r.cpu = cpu
	}
	if err != nil {
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		return r, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, strings.Join(lines[max(0, len(lines)-20):], "\n"))
	}
	return r, nil
}

// pgbenchJobs is pgbench's thread count for a client count: one per core at
// most, since more threads than cores only compete with the server.
func pgbenchJobs(clients int) int {
	return min(clients, runtime.NumCPU())
}

// pgbenchPath returns the pgbench next to the server binaries, which is of
// the server's version, or else the one in PATH.
func pgbenchPath(binDir string) string {
	if p, err := exec.LookPath(filepath.Join(binDir, "pgbench")); err == nil {
		return p
	}
	return "pgbench"
}

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
	var cpu cpuSample
	end := cpu.start(os.Getpid())
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
				if _, err := rr.Close(); d.expected(err) {
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
	end()
	cpu.client, cpu.service = cpu.service, 0 // the driver is this process
	if err := ctx.Err(); err != nil {
		return pgbenchResult{}, err
	}
	// A transaction that ends after the stop is counted, as pgbench counts
	// those that end after -T: at most one per client.
	return pgbenchResult{tps: float64(done.Load()) / elapsed.Seconds(), processed: done.Load(), failed: failed.Load(), cpu: cpu}, nil
}

// expected reports whether an execution that returned err ended as it
// should.
func (d driverRun) expected(err error) bool {
	if d.wantCode == "" {
		return err == nil
	}
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && pgErr.Code == d.wantCode
}

// cpuSample is where the CPU time went during a run: the whole machine's
// busy time, the service's, and the load generator's (wrk, pgbench or the
// driver). What is left, machine - service - client, is PostgreSQL's plus
// whatever else ran: the figures say how a run spent the cores, which is
// what bounds every ratio on a machine that the load generator, the
// service and the database share.
type cpuSample struct {
	machine, service, client time.Duration
}

// rest returns the CPU time neither the service nor the client used.
func (c cpuSample) rest() time.Duration { return max(0, c.machine-c.service-c.client) }

// start reads the machine's busy time and process pid's CPU time (none
// when pid is 0) from /proc, and returns the function that reads them
// again and stores the differences in c. A figure that cannot be read is
// 0: the CPU figures are then missing, not the run.
func (c *cpuSample) start(pid int) (end func()) {
	read := func() (machine, proc time.Duration) {
		fs, err := procfs.NewDefaultFS()
		if err != nil {
			return 0, 0
		}
		if st, err := fs.Stat(); err == nil {
			t := st.CPUTotal // idle and iowait left out
			machine = seconds(t.User + t.Nice + t.System + t.IRQ + t.SoftIRQ + t.Steal)
		}
		if p, err := fs.Proc(pid); pid != 0 && err == nil {
			if st, err := p.Stat(); err == nil {
				proc = seconds(st.CPUTime())
			}
		}
		return machine, proc
	}
	m0, p0 := read()
	return func() {
		m1, p1 := read()
		c.machine, c.service = m1-m0, p1-p0
	}
}

// measure runs cmd, with the CPU time of the machine and of process pid
// during the run, and cmd's own, in cpu. Returns cmd's combined output.
func measure(cmd *exec.Cmd, pid int, cpu *cpuSample) ([]byte, error) {
	end := cpu.start(pid)
	out, err := cmd.CombinedOutput()
	end()
	if ps := cmd.ProcessState; ps != nil {
		cpu.client = ps.UserTime() + ps.SystemTime()
	}
	return out, err
}

func seconds(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }

// perOp returns d per operation in microseconds.
func perOp(d time.Duration, ops int64) float64 {
	if ops <= 0 {
		return 0
	}
	return float64(d.Microseconds()) / float64(ops)
}
