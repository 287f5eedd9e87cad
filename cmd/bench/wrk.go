package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"
)

// findWrk returns the path of the wrk binary name. When it is missing and
// this process runs as root, it installs Debian's wrk package, refreshing
// apt's package lists when the first attempt fails. Returns an error that
// says how to install it otherwise.
func findWrk(ctx context.Context, name string, stderr io.Writer) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	if name != "wrk" {
		return "", fmt.Errorf("-wrk %s: not found", name)
	}
	if os.Geteuid() != 0 {
		return "", errors.New("wrk is not installed: install it as root (Debian: apt-get install wrk), " +
			"or pass -wrk with the path of a wrk binary")
	}
	fmt.Fprintln(stderr, "bench: wrk is missing; installing it: apt-get install -y wrk")
	install := func() error {
		cmd := exec.CommandContext(ctx, "apt-get", "install", "-y", "-q", "wrk")
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = stderr, stderr
		return cmd.Run()
	}
	if err := install(); err != nil {
		update := exec.CommandContext(ctx, "apt-get", "update", "-q")
		update.Stdout, update.Stderr = stderr, stderr
		if uerr := update.Run(); uerr != nil {
			return "", fmt.Errorf("install wrk: apt-get update: %w", uerr)
		}
		if err := install(); err != nil {
			return "", fmt.Errorf("install wrk: apt-get install wrk: %w", err)
		}
	}
	return exec.LookPath(name)
}

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

	// cpu is where the CPU time went during the run; cmd/bench fills it.
	cpu cpuSample
}

// resultPrefix starts the line that common.lua's done function prints.
const resultPrefix = "BENCH_RESULT "

// parseWrkOutput finds the result line in wrk's output. Returns an error
// when there is none or it does not parse.
func parseWrkOutput(out []byte) (wrkResult, error) {
	var r wrkResult
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), resultPrefix)
		if !ok {
			continue
		}
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			return r, fmt.Errorf("parse wrk result %q: %w", line, err)
		}
		if r.DurationUS <= 0 {
			return r, fmt.Errorf("parse wrk result %q: no duration", line)
		}
		return r, nil
	}
	return r, errors.New("wrk printed no result line")
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

// run runs wrk and returns its result. Returns an error with wrk's output
// when wrk fails or prints no result.
func (w wrkRun) run(ctx context.Context) (wrkResult, error) {
	r, _, err := w.runOutput(ctx)
	return r, err
}

// runOutput is run, and returns wrk's whole output too, for what a script
// prints besides the result line.
func (w wrkRun) runOutput(ctx context.Context) (wrkResult, []byte, error) {
	args := []string{
		"-t", strconv.Itoa(w.threads),
		"-c", strconv.Itoa(w.connections),
		"-d", strconv.Itoa(int(w.duration/time.Second)) + "s",
		// Above the service's REQUEST_TIMEOUT (5s), so that a slow answer
		// is the service's 503, not a wrk timeout.
		"--timeout", "10s",
		"-s", w.script,
		w.url, "--",
	}
	args = append(args, w.args...)
	cmd := exec.CommandContext(ctx, w.wrk, args...)
	cmd.Env = append(os.Environ(), "USERSVC_TOKEN="+w.token)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	machine0, _ := machineBusy()
	service0, _ := processCPU(w.servicePID)
	if err := cmd.Run(); err != nil {
		return wrkResult{}, out.Bytes(), fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	machine1, _ := machineBusy()
	service1, _ := processCPU(w.servicePID)
	r, err := parseWrkOutput(out.Bytes())
	if err != nil {
		return r, out.Bytes(), fmt.Errorf("wrk %s: %w\n%s", strings.Join(args, " "), err, out.Bytes())
	}
	r.cpu = cpuSample{machine: machine1 - machine0, service: service1 - service0, client: childCPU(cmd.ProcessState)}
	return r, out.Bytes(), nil
}

// cpuRest returns the CPU time of the run that neither wrk nor the service
// used: PostgreSQL's, and whatever else ran.
func (r wrkResult) cpuRest() time.Duration { return r.cpu.rest() }
