//go:build linux

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// measured is what one run of wrk or pgbench measured.
type measured struct {
	n        int64   // requests, or transactions
	seconds  float64 // of load
	http     bool    // from wrk: with latencies, the target's CPU and RSS
	p50, p99 float64 // ns
	cpu      float64 // the target's CPU time, s
	client   float64 // wrk's or pgbench's CPU time, s
	pg       float64 // the machine's busy time less the two: PostgreSQL's and whatever else ran, s
	rss      int64   // the target's VmRSS after the run, bytes
}

func (m measured) rate() float64             { return float64(m.n) / m.seconds }
func (m measured) perOp(cpu float64) float64 { return cpu * 1e9 / float64(m.n) }

// line returns m as a line of Go's benchmark format, one sample of
// Benchmark<name>, with the extra metrics after it.
func (m measured) line(name string, extra ...string) string {
	s := fmt.Sprintf("Benchmark%s %d %.0f req/s", name, m.n, m.rate())
	if m.http {
		s += fmt.Sprintf(" %.0f p50-ns %.0f p99-ns %.0f cpu-ns/op", m.p50, m.p99, m.perOp(m.cpu))
	}
	s += fmt.Sprintf(" %.0f client-cpu-ns/op %.0f pg-cpu-ns/op", m.perOp(m.client), m.perOp(m.pg))
	if m.http {
		s += fmt.Sprintf(" %d rss-bytes", m.rss)
	}
	return s + strings.Join(extra, "")
}

// wrkResult is the line that common.lua's done function prints.
// Latencies are in microseconds.
type wrkResult struct {
	Requests   int64   `json:"requests"`
	DurationUS int64   `json:"duration_us"`
	Connect    int64   `json:"connect_errors"`
	Read       int64   `json:"read_errors"`
	Write      int64   `json:"write_errors"`
	Timeouts   int64   `json:"timeouts"`
	Status     int64   `json:"status_errors"` // answers outside 2xx and 3xx
	P50US      float64 `json:"p50_us"`
	P99US      float64 `json:"p99_us"`
	MaxUS      float64 `json:"max_us"`
	// Counted by a script's response function, when it has one.
	Expected   int64 `json:"expected"`
	Unexpected int64 `json:"unexpected"`
}

// socketErrors are the requests that got no answer.
func (r wrkResult) socketErrors() int64 { return r.Connect + r.Read + r.Write + r.Timeouts }

// wrk runs script against t for d, with args after wrk's "--". Returns
// its result line, what it measured and its whole output; an error with
// that output when wrk fails or prints no result.
func (h *harness) wrk(ctx context.Context, t *target, script string, d time.Duration, args ...string) (wrkResult, measured, []byte, error) {
	cmd := exec.CommandContext(ctx, h.wrkBin, append([]string{
		"-t", strconv.Itoa(min(runtime.NumCPU(), h.flags.connections)), "-c", strconv.Itoa(h.flags.connections), "-d", seconds(d) + "s",
		// Above the service's REQUEST_TIMEOUT (5s): a slow answer is
		// then the service's 503, not a wrk timeout.
		"--timeout", "10s", "-s", filepath.Join(h.tmp, script), t.url, "--"}, args...)...)
	cmd.Env = append(os.Environ(), "USERSVC_TOKEN="+h.token, "BENCH_SCRIPTS="+h.tmp)
	out, m, err := measure(cmd, t.cmd.Process.Pid)
	var r wrkResult
	if err == nil {
		err = parseLine(out, "BENCH_RESULT ", &r)
	}
	if err != nil {
		return r, m, out, fmt.Errorf("wrk %s: %w\n%s", strings.Join(cmd.Args[1:], " "), err, out)
	}
	m.n, m.seconds, m.http, m.p50, m.p99 = r.Requests, float64(r.DurationUS)/1e6, true, r.P50US*1e3, r.P99US*1e3
	return r, m, out, nil
}

// parseLine decodes the JSON after prefix on the first line of out that
// starts with it.
func parseLine(out []byte, prefix string, v any) error {
	for line := range bytes.Lines(out) {
		if rest, ok := bytes.CutPrefix(line, []byte(prefix)); ok {
			return json.Unmarshal(rest, v)
		}
	}
	return fmt.Errorf("no %q line", prefix)
}

// The lines of pgbench's summary that bench reads.
var (
	pgbenchTPS = regexp.MustCompile(`(?m)^tps = ([0-9.]+) `)
	pgbenchN   = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
)

// pgbench runs script with clients clients for d, the variables vars
// (name=value) defined, and returns what it measured. Returns an error,
// with the end of its output, when pgbench fails (a client that hits an
// SQL error aborts) or prints no summary.
func (h *harness) pgbench(ctx context.Context, script string, clients int, d time.Duration, vars ...string) (measured, error) {
	args := []string{
		"-n",             // no VACUUM of pgbench's own tables, which do not exist
		"-M", "prepared", // as pgx: each statement parsed once per connection
		"-c", strconv.Itoa(clients), "-j", strconv.Itoa(min(clients, runtime.NumCPU())),
		"-T", seconds(d), "-f", filepath.Join(h.tmp, script),
	}
	for _, v := range vars {
		args = append(args, "-D", v)
	}
	bin, err := exec.LookPath(filepath.Join(h.binDir, "pgbench")) // of the server's version
	if err != nil {
		bin = "pgbench"
	}
	out, m, err := measure(exec.CommandContext(ctx, bin, append(args, h.pg.URL(h.db.name))...), 0)
	tps, n := pgbenchTPS.FindSubmatch(out), pgbenchN.FindSubmatch(out)
	if err == nil && (tps == nil || n == nil) {
		err = errors.New("no summary")
	}
	if err != nil {
		return m, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, out[max(0, len(out)-2000):])
	}
	m.n, _ = strconv.ParseInt(string(n[1]), 10, 64)
	rate, _ := strconv.ParseFloat(string(tps[1]), 64) // without the connections' set-up
	m.seconds = float64(m.n) / rate
	return m, nil
}

func seconds(d time.Duration) string { return strconv.Itoa(int(d.Seconds())) }

// measure runs cmd and returns its combined output with the CPU time of
// process pid (none when 0), of cmd and of the rest of the machine during
// the run.
func measure(cmd *exec.Cmd, pid int) ([]byte, measured, error) {
	var m measured
	machine0, proc0, err := cpuTimes(pid)
	if err != nil {
		return nil, m, err
	}
	out, err := cmd.CombinedOutput()
	machine1, proc1, cpuErr := cpuTimes(pid)
	if ps := cmd.ProcessState; ps != nil {
		m.client = (ps.UserTime() + ps.SystemTime()).Seconds()
	}
	m.cpu = proc1 - proc0
	m.pg = max(0, machine1-machine0-m.cpu-m.client)
	return out, m, errors.Join(err, cpuErr)
}

// cpuTimes returns the CPU time the machine has been busy (idle and
// iowait left out) and that of process pid (0 when pid is 0), in seconds.
func cpuTimes(pid int) (machine, proc float64, err error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return 0, 0, err
	}
	st, err := fs.Stat()
	if err != nil {
		return 0, 0, err
	}
	t := st.CPUTotal
	machine = t.User + t.Nice + t.System + t.IRQ + t.SoftIRQ + t.Steal
	if pid == 0 {
		return machine, 0, nil
	}
	p, err := fs.Proc(pid)
	if err != nil {
		return 0, 0, err
	}
	ps, err := p.Stat()
	return machine, ps.CPUTime(), err
}
