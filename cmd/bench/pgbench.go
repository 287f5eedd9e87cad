package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// pgbenchResult is what the benchmark reads from pgbench's summary.
type pgbenchResult struct {
	tps       float64 // without the initial connection time
	processed int64
	failed    int64
	latency   time.Duration // average
	cpu       cpuSample     // where the CPU time went; service is 0
}

// parsePgbenchOutput reads the summary that pgbench prints at the end of a
// run. Returns an error when it has no tps line.
func parsePgbenchOutput(out []byte) (pgbenchResult, error) {
	var r pgbenchResult
	var haveTPS bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		var err error
		switch {
		case strings.HasPrefix(line, "tps = "):
			// tps = 8765.432100 (without initial connection time)
			f := strings.Fields(strings.TrimPrefix(line, "tps = "))
			if len(f) == 0 {
				return r, fmt.Errorf("parse pgbench output: %q", line)
			}
			r.tps, err = strconv.ParseFloat(f[0], 64)
			haveTPS = err == nil
		case strings.HasPrefix(line, "number of transactions actually processed:"):
			// number of transactions actually processed: 12345
			// (with -t it reads 12345/20000)
			v := strings.TrimSpace(strings.TrimPrefix(line, "number of transactions actually processed:"))
			v, _, _ = strings.Cut(v, "/")
			r.processed, err = strconv.ParseInt(v, 10, 64)
		case strings.HasPrefix(line, "number of failed transactions:"):
			// number of failed transactions: 0 (0.000%)
			f := strings.Fields(strings.TrimPrefix(line, "number of failed transactions:"))
			if len(f) > 0 {
				r.failed, err = strconv.ParseInt(f[0], 10, 64)
			}
		case strings.HasPrefix(line, "latency average = "):
			// latency average = 0.456 ms
			f := strings.Fields(strings.TrimPrefix(line, "latency average = "))
			if len(f) == 2 && f[1] == "ms" {
				var ms float64
				ms, err = strconv.ParseFloat(f[0], 64)
				r.latency = time.Duration(ms * float64(time.Millisecond))
			}
		}
		if err != nil {
			return r, fmt.Errorf("parse pgbench output: %q: %w", line, err)
		}
	}
	if !haveTPS {
		return r, errors.New("parse pgbench output: no tps line")
	}
	return r, nil
}

// pgbenchRun is one run of pgbench with one custom script.
type pgbenchRun struct {
	binDir     string // PostgreSQL's binaries, where pgbench is too
	host, port string
	script     string
	clients    int
	duration   time.Duration
	vars       map[string]int // -D definitions
}

// run runs pgbench and returns its summary. pgbench exits with status 2
// when a client aborted (any SQL error but a serialization failure or a
// deadlock aborts one); that, like any other failure, is an error that
// includes pgbench's output.
func (p pgbenchRun) run(ctx context.Context) (pgbenchResult, error) {
	args := []string{
		"-h", p.host, "-p", p.port, "-U", "postgres",
		"-n",             // no VACUUM of pgbench's own tables, which do not exist
		"-M", "prepared", // as pgx does: each statement parsed once per connection
		"-c", strconv.Itoa(p.clients),
		"-j", strconv.Itoa(pgbenchJobs(p.clients)),
		"-T", strconv.Itoa(int(p.duration / time.Second)),
		"-f", p.script,
	}
	for _, k := range sortedKeys(p.vars) {
		args = append(args, "-D", k+"="+strconv.Itoa(p.vars[k]))
	}
	args = append(args, database)
	cmd := exec.CommandContext(ctx, pgbenchPath(p.binDir), args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	machine0, _ := machineBusy()
	if err := cmd.Run(); err != nil {
		return pgbenchResult{}, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, lastLines(out.String(), 20))
	}
	machine1, _ := machineBusy()
	r, err := parsePgbenchOutput(out.Bytes())
	if err != nil {
		return r, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, lastLines(out.String(), 20))
	}
	r.cpu = cpuSample{machine: machine1 - machine0, client: childCPU(cmd.ProcessState)}
	return r, nil
}

// pgbenchPath returns the pgbench next to the server binaries, which is of
// the server's version, or else the one in PATH.
func pgbenchPath(binDir string) string {
	p := filepath.Join(binDir, "pgbench")
	if _, err := exec.LookPath(p); err == nil {
		return p
	}
	return "pgbench"
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
