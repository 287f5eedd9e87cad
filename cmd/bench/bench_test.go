//go:build linux

package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"usersvc/db"
)

// These tests cover the harness's own logic: what it reads from wrk,
// pgbench and /proc, how it summarizes, and that the ceiling runs the
// service's SQL. They start no process and need no network.

const wrkOutput = `Running 2s test @ http://127.0.0.1:40231
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.21ms    1.02ms  20.11ms   91.02%
    Req/Sec    13.41k     1.10k   15.02k    70.00%
  53418 requests in 2.00s, 12.43MB read
  Non-2xx or 3xx responses: 7
Requests/sec:  26706.02
Transfer/sec:      6.21MB
BENCH_RESULT {"requests":53418,"duration_us":2000221,"bytes":13032144,"connect_errors":0,"read_errors":1,"write_errors":0,"status_errors":7,"timeouts":2,"p50_us":1020,"p90_us":2113,"p99_us":4502,"p999_us":9120,"max_us":20110,"mean_us":1210.5,"expected":53400,"unexpected":18}
`

func TestParseWrkOutput(t *testing.T) {
	r, err := parseWrkOutput([]byte(wrkOutput))
	if err != nil {
		t.Fatal(err)
	}
	want := wrkResult{Requests: 53418, DurationUS: 2000221, Bytes: 13032144, ReadErrors: 1, StatusErrors: 7, Timeouts: 2,
		P50US: 1020, P90US: 2113, P99US: 4502, P999US: 9120, MaxUS: 20110, MeanUS: 1210.5, Expected: 53400, Unexpected: 18}
	if r != want {
		t.Errorf("parseWrkOutput = %+v, want %+v", r, want)
	}
	if got, want := r.reqPerSec(), 53418/2.000221; math.Abs(got-want) > 1e-6 {
		t.Errorf("reqPerSec = %v, want %v", got, want)
	}
	// Socket errors and timeouts count always; then either every answer
	// outside 2xx and 3xx, or what the script found unexpected.
	if got := r.errors(false); got != 1+2+7 {
		t.Errorf("errors(false) = %d, want 10", got)
	}
	r.Expected = r.Requests - r.Unexpected
	if got := r.errors(true); got != 1+2+18 {
		t.Errorf("errors(true) = %d, want 21", got)
	}
	// Answers the script did not count are not known to be right.
	r.Expected -= 100
	if got := r.errors(true); got != 1+2+18+100 {
		t.Errorf("errors(true) with 100 answers uncounted = %d, want 121", got)
	}

	for name, out := range map[string]string{
		"no result line": "Running 2s test @ http://127.0.0.1:1\nRequests/sec: 1.0\n",
		"bad json":       "BENCH_RESULT {\"requests\":\n",
		"no duration":    "BENCH_RESULT {\"requests\":1}\n",
	} {
		if _, err := parseWrkOutput([]byte(out)); err == nil {
			t.Errorf("parseWrkOutput(%s): no error", name)
		}
	}
}

const pgbenchOutput = `pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: /tmp/usersvc-bench-1/get.sql
scaling factor: 1
query mode: prepared
number of clients: 4
number of threads: 2
maximum number of tries: 1
duration: 2 s
number of transactions actually processed: 178406
number of failed transactions: 3 (0.002%)
latency average = 0.045 ms
initial connection time = 3.966 ms
tps = 89295.123456 (without initial connection time)
`

func TestParsePgbenchOutput(t *testing.T) {
	r, err := parsePgbenchOutput([]byte(pgbenchOutput))
	if err != nil {
		t.Fatal(err)
	}
	want := pgbenchResult{tps: 89295.123456, processed: 178406, failed: 3}
	if r != want {
		t.Errorf("parsePgbenchOutput = %+v, want %+v", r, want)
	}

	// With -t, pgbench prints processed/planned.
	r, err = parsePgbenchOutput([]byte("number of transactions actually processed: 10/10\ntps = 2797.2 (without initial connection time)\n"))
	if err != nil || r.processed != 10 || r.tps != 2797.2 {
		t.Errorf("parsePgbenchOutput(-t output) = %+v, %v; want 10 processed, 2797.2 tps", r, err)
	}

	aborted := "pgbench: error: client 0 aborted in command 1 (SQL) of script 0; ERROR:  duplicate key value violates unique constraint \"users_name_key\"\n"
	for name, out := range map[string]string{
		"aborted": aborted,
		"bad tps": "tps = many (without initial connection time)\n",
	} {
		if _, err := parsePgbenchOutput([]byte(out)); err == nil {
			t.Errorf("parsePgbenchOutput(%s): no error", name)
		}
	}
}

// TestMemory reads this process's memory as the harness reads the
// service's.
func TestMemory(t *testing.T) {
	self, err := os.FindProcess(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	m, err := (&service{cmd: &exec.Cmd{Process: self}}).memory()
	if err != nil {
		t.Fatal(err)
	}
	if m.rss < 1<<20 || m.hwm < m.rss {
		t.Errorf("memory = %+v, want an RSS of at least 1 MiB and a peak at least as high", m)
	}
}

func TestSummarize(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want spread
	}{
		{nil, spread{}},
		{[]float64{5}, spread{median: 5, min: 5, max: 5, n: 1}},
		{[]float64{9, 1, 5}, spread{median: 5, min: 1, max: 9, n: 3}},
		{[]float64{4, 1, 9, 2}, spread{median: 3, min: 1, max: 9, n: 4}},
	} {
		in := slices.Clone(tc.xs)
		if got := summarize(tc.xs); got != tc.want {
			t.Errorf("summarize(%v) = %+v, want %+v", tc.xs, got, tc.want)
		}
		if !slices.Equal(in, tc.xs) {
			t.Errorf("summarize(%v) reordered its argument", in)
		}
	}
}

func TestBest(t *testing.T) {
	byClients := map[int][]float64{
		2:  {10, 11, 12},
		4:  {30, 5, 31}, // the best median, though not the best single run
		8:  {29, 40, 28},
		16: {31, 30, 1},
	}
	c, s, ok := best(byClients)
	if !ok || c != 4 || s.median != 30 {
		t.Errorf("best = %d, %+v, %v; want 4 with median 30", c, s, ok)
	}
	// A tie goes to the fewer clients.
	if c, _, _ := best(map[int][]float64{8: {7}, 4: {7}}); c != 4 {
		t.Errorf("best of a tie = %d, want 4", c)
	}
	if _, _, ok := best(map[int][]float64{}); ok {
		t.Error("best of nothing: ok")
	}
}

func TestJudge(t *testing.T) {
	get, healthz := scenarios[0], scenarios[5]
	for _, tc := range []struct {
		s      scenario
		ratio  float64
		p99US  float64
		errs   int64
		target string
		met    string
	}{
		{get, 0.85, 9000, 0, "ratio ≥ 0.8, p99 < 10ms", "yes"},
		{get, 0.79, 10000, 0, "ratio ≥ 0.8, p99 < 10ms", "no: ratio 0.79, p99 10.00 ms"},
		{get, 0.9, 100, 3, "ratio ≥ 0.8, p99 < 10ms", "no: 3 errors"},
		{healthz, 0, 100, 0, "–", "–"},
	} {
		if v := judge(tc.s, tc.ratio, tc.p99US, tc.errs); v.target != tc.target || v.met != tc.met {
			t.Errorf("judge(scenario %d, %v, %v, %d) = %+v, want %q, %q", tc.s.n, tc.ratio, tc.p99US, tc.errs, v, tc.target, tc.met)
		}
	}
}

func TestParseOptions(t *testing.T) {
	defaults, err := parseOptions(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	o := defaults
	if o.duration != 10*time.Second || o.reps != 3 || o.seed != 100_000 || o.deepRows != 1_000_000 ||
		!slices.Equal(o.pgbenchClients, []int{2, 4, 8, 16}) || !slices.Equal(o.scenarios, []int{1, 2, 3, 4, 5, 6, 7}) {
		t.Errorf("defaults = %+v", o)
	}

	// -quick changes the defaults; flags given win, before or after it.
	o, err = parseOptions([]string{"-reps", "2", "-quick", "-pgbench-clients", "8,2,8"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 2*time.Second || o.reps != 2 || o.seed != 20_000 || !slices.Equal(o.pgbenchClients, []int{2, 8}) {
		t.Errorf("-reps 2 -quick -pgbench-clients 8,2,8 = %+v", o)
	}

	o, err = parseOptions([]string{"-sweep", "DB_MAX_CONNS=4,16", "-tmpfs"}, io.Discard)
	if err != nil || o.sweepKey != "DB_MAX_CONNS" || !slices.Equal(o.sweepValues, []string{"4", "16"}) || !o.tmpfs {
		t.Errorf("-sweep DB_MAX_CONNS=4,16 -tmpfs = %+v, %v", o, err)
	}

	// Several binaries and a sweep: each scenario runs once per pair, the
	// binaries named only when there are several.
	o, err = parseOptions([]string{"-service-bin", "bin/a,bin/b", "-sweep", "GOGC=100,200", "-env", "LOG_LEVEL=warn"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, sr := range o.variants(scenarios[0]) {
		got = append(got, fmt.Sprintf("%s %s %q", sr.variant, sr.bin, sr.env))
	}
	want := []string{
		`bin/a, GOGC=100 bin/a ["LOG_LEVEL=warn" "GOGC=100"]`,
		`bin/a, GOGC=200 bin/a ["LOG_LEVEL=warn" "GOGC=200"]`,
		`bin/b, GOGC=100 bin/b ["LOG_LEVEL=warn" "GOGC=100"]`,
		`bin/b, GOGC=200 bin/b ["LOG_LEVEL=warn" "GOGC=200"]`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("variants of -service-bin bin/a,bin/b -sweep GOGC=100,200 = %q, want %q", got, want)
	}
	if vs := defaults.variants(scenarios[0]); len(vs) != 1 || vs[0].variant != "" || vs[0].bin != "bin/usersvc" {
		t.Errorf("variants by default = %+v, want one, of bin/usersvc, unlabelled", vs)
	}

	for _, args := range [][]string{
		{"-duration", "1500ms"}, // pgbench counts whole seconds
		{"-service-bin", "bin/a,"},
		{"-reps", "0"},
		{"-seed", "10"},
		{"-deep-rows", "50000"}, // fewer than -seed
		{"-scenarios", "8"},
		{"-pgbench-clients", "four"},
		{"-env", "NOEQUALS"},
		{"-threads", "4", "-connections", "2"},
		{"-sweep", "DB_MAX_CONNS"},
		{"-sweep", "DB_MAX_CONNS=4,,8"},
		{"stray"},
	} {
		if _, err := parseOptions(args, io.Discard); err == nil {
			t.Errorf("parseOptions(%q): no error", args)
		}
	}
}

func TestCommand(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "make bench"},
		{[]string{"-quick"}, "make bench BENCH_ARGS=-quick"},
		{[]string{"-quick", "-scenarios", "1,2"}, "make bench BENCH_ARGS='-quick -scenarios 1,2'"},
		{[]string{"-env", "A=it's"}, `make bench BENCH_ARGS='-env '\''A=it'\''\'\'''\''s'\'''`},
	} {
		if got := command("make bench", tc.args); got != tc.want {
			t.Errorf("command(%q) = %s, want %s", tc.args, got, tc.want)
		}
	}
}

func TestScriptSQL(t *testing.T) {
	sql, vars := scriptSQL("-- a comment: with :colon\n\\set after random(:lo, :hi)\nSELECT :a, :b::int, :a,\n  '::x', now()::date;\n")
	if want := "SELECT $1, $2::int, $1,\n  '::x', now()::date"; sql != want {
		t.Errorf("sql = %q, want %q", sql, want)
	}
	if !slices.Equal(vars, []string{"a", "b"}) {
		t.Errorf("vars = %q, want [a b]", vars)
	}
}

// TestCeilingRunsServiceSQL checks that each ceiling script sends exactly
// the statement that the service sends, as sqlc generated it in db/, with
// its parameters in the same order; so that the ratio compares like with
// like, and a changed query fails here until its script follows.
func TestCeilingRunsServiceSQL(t *testing.T) {
	for _, tc := range []struct {
		script, query string
		vars          []string
	}{
		{"get.sql", db.GetUser, []string{"id"}},
		{"list.sql", db.ListUsers, []string{"after", "max_rows"}},
		{"create.sql", db.CreateUser, []string{"name"}},
		{"existing.sql", db.CreateUser, []string{"name"}},
		{"rename.sql", db.RenameUser, []string{"name", "id"}},
	} {
		body, err := scripts.ReadFile("scripts/" + tc.script)
		if err != nil {
			t.Fatal(err)
		}
		sql, vars := scriptSQL(string(body))
		// The generated SQL starts with its "-- name:" line.
		_, want, _ := strings.Cut(tc.query, "\n")
		want = strings.Join(strings.Fields(want), " ")
		if got := strings.Join(strings.Fields(sql), " "); got != want {
			t.Errorf("%s sends\n\t%s\nbut the service sends\n\t%s", tc.script, got, want)
		}
		if !slices.Equal(vars, tc.vars) {
			t.Errorf("%s: variables %q, want %q", tc.script, vars, tc.vars)
		}
	}
	// Every scenario with a ceiling has its script checked above.
	for _, s := range scenarios {
		if s.pgbench != "" && !slices.Contains([]string{"get.sql", "list.sql", "create.sql", "existing.sql", "rename.sql"}, s.pgbench) {
			t.Errorf("scenario %d: %s is not checked against db/", s.n, s.pgbench)
		}
	}
}

func TestWriteScripts(t *testing.T) {
	dir := t.TempDir()
	paths, err := writeScripts(dir)
	if err != nil {
		t.Fatal(err)
	}
	common, err := scripts.ReadFile("scripts/common.lua")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range scenarios {
		for _, name := range []string{s.lua, s.pgbench} {
			if name == "" {
				continue
			}
			b, err := os.ReadFile(paths[name])
			if err != nil {
				t.Fatalf("scenario %d: %v", s.n, err)
			}
			// wrk runs one script: the shared part must come with each.
			if strings.HasSuffix(name, ".lua") && !strings.HasPrefix(string(b), string(common)) {
				t.Errorf("%s does not start with common.lua", name)
			}
		}
	}
}

func TestBounds(t *testing.T) {
	const seed = 100_000
	for _, tc := range []struct{ n, lo, hi int }{
		{1, 1, seed},
		{2, 0, seed - listMaxRows},
		{4, 1, seed / 2},
		{5, seed/2 + 1, seed},
	} {
		if lo, hi := scenarios[tc.n-1].bounds(seed); lo != tc.lo || hi != tc.hi {
			t.Errorf("scenario %d: bounds = %d..%d, want %d..%d", tc.n, lo, hi, tc.lo, tc.hi)
		}
	}
}

// TestCPUSample spins until getrusage says this process has spent 200 ms
// of CPU, and checks what the harness reads of it, and of the machine,
// from /proc.
func TestCPUSample(t *testing.T) {
	self := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	var c cpuSample
	end := c.start(os.Getpid())
	for t0 := self(); self()-t0 < 200*time.Millisecond; {
	}
	end()
	// /proc counts in ticks of 10 ms.
	if c.service < 180*time.Millisecond || c.machine < c.service-20*time.Millisecond {
		t.Errorf("after 200 ms of CPU: %+v, want about 200 ms for this process, and at least as much for the machine", c)
	}
	if got := (cpuSample{machine: 10, service: 4, client: 3}).rest(); got != 3 {
		t.Errorf("rest = %v, want 3", got)
	}
	if got := perOp(3*time.Second, 1000); got != 3000 {
		t.Errorf("perOp(3s, 1000) = %v µs, want 3000", got)
	}
}
