//go:build linux

package main

import (
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests cover the soak's own logic: its options, what it reads from
// wrk and /metrics, and its verdicts. They start no process.

func TestParseSoakOptions(t *testing.T) {
	o, err := parseSoakOptions(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.duration != 5*time.Minute || o.interval != 10*time.Second || o.warmup != time.Minute ||
		o.connections != 16 || o.threads != 2 || o.seed != 100_000 {
		t.Errorf("defaults = %+v", o)
	}

	for _, tc := range []struct {
		args   []string
		warmup time.Duration
	}{
		{[]string{"-duration", "30s"}, 10 * time.Second}, // a fifth is 6s: one interval at least
		{[]string{"-duration", "2m"}, 20 * time.Second},  // a fifth, 24s, in whole intervals
		{[]string{"-duration", "1m", "-interval", "5s"}, 10 * time.Second},
		{[]string{"-warmup", "0s", "-duration", "30s"}, 0}, // given: kept, even 0
		{[]string{"-duration", "1m", "-warmup", "25s"}, 25 * time.Second},
	} {
		o, err := parseSoakOptions(tc.args, io.Discard)
		if err != nil {
			t.Errorf("parseSoakOptions(%q): %v", tc.args, err)
			continue
		}
		if o.warmup != tc.warmup {
			t.Errorf("parseSoakOptions(%q): warm-up %v, want %v", tc.args, o.warmup, tc.warmup)
		}
	}

	for _, args := range [][]string{
		{"-duration", "1500ms"}, // wrk counts whole seconds
		{"-duration", "0s"},
		{"-interval", "0s"},
		{"-interval", "2500ms"},
		{"-warmup", "-1s"},
		{"-duration", "20s"},                  // samples at 10s only: nothing to compare
		{"-duration", "1m", "-warmup", "50s"}, // one sample after it
		{"-seed", "999"},
		{"-threads", "4", "-connections", "2"},
		{"-env", "NOEQUALS"},
		{"-service-bin", "bin/a,bin/b"}, // the soak runs one
		{"stray"},
	} {
		if _, err := parseSoakOptions(args, io.Discard); err == nil {
			t.Errorf("parseSoakOptions(%q): no error", args)
		}
	}
}

func TestSampleTimes(t *testing.T) {
	o := soakOptions{duration: 5 * time.Minute, interval: 10 * time.Second, warmup: time.Minute}
	ts := sampleTimes(o)
	// Every 10s before the end, not at it: 10s to 290s.
	if len(ts) != 29 || ts[0] != 10*time.Second || ts[len(ts)-1] != 290*time.Second {
		t.Errorf("sampleTimes = %v, want 10s to 290s", ts)
	}
	js := judgedTimes(o)
	if len(js) != 24 || js[0] != time.Minute || js[len(js)-1] != 290*time.Second {
		t.Errorf("judgedTimes = %v, want 60s to 290s", js)
	}
}

const metricsText = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 41
go_memstats_heap_inuse_bytes 8.8e+06
process_open_fds 31
usersvc_db_pool_total_connections 4
usersvc_http_requests_total{code="200",method="GET",route="/users/{id}"} 1000
usersvc_http_requests_total{code="201",method="POST",route="/users"} 300 1764146400000
usersvc_http_requests_total{code="503",method="GET",route="/users/{id}"} 7
usersvc_http_requests_total{code="500",method="PUT",route="a \"quoted\" } brace"} 2
usersvc_http_requests_total{code="404",method="GET",route="unmatched"} 5
`

func TestReadMetrics(t *testing.T) {
	var s sample
	if err := readMetrics([]byte(metricsText), &s); err != nil {
		t.Fatal(err)
	}
	want := sample{heap: 8.8e6, goroutines: 41, fds: 31, poolConns: 4,
		// Every series, then those with a 5xx code: the label value with an
		// escaped quote and a brace stays whole.
		requests: 1000 + 300 + 7 + 2 + 5, serverErrors: 9}
	if s != want {
		t.Errorf("readMetrics = %+v, want %+v", s, want)
	}

	// Without a gauge, or with one that has labels, there is no sample.
	for _, text := range []string{
		strings.Replace(metricsText, "go_goroutines 41", "", 1),
		strings.Replace(metricsText, "go_goroutines 41", `go_goroutines{a="b"} 41`, 1),
	} {
		if err := readMetrics([]byte(text), &s); err == nil {
			t.Errorf("readMetrics(%q): no error", text)
		}
	}
	for _, line := range []string{
		"go_threads\n",
		"go_threads many\n",
		`usersvc_http_requests_total{code="200" 1` + "\n",
		"go_threads 1 2 3\n",
	} {
		if err := readMetrics([]byte(metricsText+line), &s); err == nil {
			t.Errorf("readMetrics with %q: no error", line)
		}
	}
}

// soakOutput is what wrk prints for soak.lua: common.lua's result line,
// then soak.lua's answers.
const soakOutput = `Running 10s test @ http://127.0.0.1:40231
  2 threads and 16 connections
  100 requests in 10.00s, 12.43KB read
  Non-2xx or 3xx responses: 25
BENCH_RESULT {"requests":100,"duration_us":10000000,"bytes":12430,"connect_errors":0,"read_errors":0,"write_errors":0,"status_errors":25,"timeouts":0,"p50_us":1000,"p90_us":2000,"p99_us":4000,"p999_us":9000,"max_us":20000,"mean_us":1210.5,"expected":96,"unexpected":4}
SOAK_ANSWERS {"expect":{"create":201,"get":200,"taken":400},"answers":{"create 201":30,"get 200":45,"get 503":3,"taken 400":20,"unknown 200":1,"taken 500":1},"unexpected":{"get 503":3,"taken 500":1,"unknown 200":1,"taken 400":1}}
`

func TestParseSoakAnswers(t *testing.T) {
	a, err := parseSoakAnswers([]byte(soakOutput))
	if err != nil {
		t.Fatal(err)
	}
	got := a.byKind()
	want := []kindAnswers{
		{kind: "create", expect: 201, total: 30, right: 30},
		{kind: "get", expect: 200, total: 48, right: 45, wrongs: []string{"503: 3"}, wrongSum: 3},
		// A 400 without the code that the script wants is wrong too.
		{kind: "taken", expect: 400, total: 21, right: 19, wrongs: []string{"400: 1", "500: 1"}, wrongSum: 2},
		{kind: "unknown", total: 1, wrongs: []string{"200: 1"}, wrongSum: 1},
	}
	if len(got) != len(want) {
		t.Fatalf("byKind = %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.kind != w.kind || g.expect != w.expect || g.total != w.total || g.right != w.right ||
			!slices.Equal(g.wrongs, w.wrongs) || g.wrongSum != w.wrongSum {
			t.Errorf("byKind[%d] = %+v, want %+v", i, g, w)
		}
	}

	r, err := parseWrkOutput([]byte(soakOutput))
	if err != nil {
		t.Fatal(err)
	}
	e := newSoakErrors(r, 2)
	if e.unexpected != 4 || e.uncounted != 0 || e.total() != 4+2 {
		t.Errorf("errors = %+v, total %d; want 4 unexpected and 2 log lines", e, e.total())
	}

	for name, out := range map[string]string{
		"no answers line": "BENCH_RESULT {\"requests\":1,\"duration_us\":1}\n",
		"bad json":        "SOAK_ANSWERS {\"expect\":\n",
		"no expectations": "SOAK_ANSWERS {\"answers\":{\"get 200\":1}}\n",
	} {
		if _, err := parseSoakAnswers([]byte(out)); err == nil {
			t.Errorf("parseSoakAnswers(%s): no error", name)
		}
	}
}

func TestSoakErrorsTotal(t *testing.T) {
	// Each kind a different power of two: a kind left out of the total
	// shows.
	e := soakErrors{connect: 1, read: 2, write: 4, timeouts: 8, unexpected: 16, uncounted: 32, logLines: 64}
	if got := e.total(); got != 127 {
		t.Errorf("total = %d, want 127", got)
	}
	r := wrkResult{Requests: 100, Expected: 90, Unexpected: 4, ConnectErrors: 1, ReadErrors: 2, WriteErrors: 3, Timeouts: 5}
	e = newSoakErrors(r, 0)
	if e.uncounted != 6 || e.total() != 1+2+3+5+4+6 {
		t.Errorf("newSoakErrors = %+v, total %d; want 6 uncounted, total 21", e, e.total())
	}
	// The same count as the benchmark's, with the script's expectations.
	if e.total() != r.errors(true) {
		t.Errorf("total %d, wrkResult.errors(true) %d", e.total(), r.errors(true))
	}
}

func TestSoakWindow(t *testing.T) {
	for n, want := range map[int]int{0: 0, 1: 0, 2: 1, 3: 1, 4: 2, 5: 2, 6: 3, 24: 3} {
		if got := soakWindow(n); got != want {
			t.Errorf("soakWindow(%d) = %d, want %d", n, got, want)
		}
	}
}

func TestJudgeFlat(t *testing.T) {
	const mib = 1 << 20
	steady := func(n int, base, step float64) []float64 {
		xs := make([]float64, n)
		for i := range xs {
			xs[i] = base + step*float64(i)
		}
		return xs
	}
	for _, tc := range []struct {
		name   string
		values []float64
		flat   bool
		first  float64
		last   float64
	}{
		{"constant", steady(24, 26*mib, 0), true, 26 * mib, 26 * mib},
		{"noise within the allowance", []float64{26 * mib, 29 * mib, 26 * mib, 27 * mib, 28 * mib, 30 * mib}, true, 29 * mib, 30 * mib},
		{"a spike between the windows", []float64{26 * mib, 26 * mib, 26 * mib, 90 * mib, 26 * mib, 26 * mib, 26 * mib}, true, 26 * mib, 26 * mib},
		{"falling", steady(24, 40*mib, -mib/2), true, 40 * mib, 29.5 * mib},
		// 0.25 MiB every sample: 5.25 MiB over the run, above 4 MiB.
		{"a steady leak", steady(24, 26*mib, mib/4), false, 26.5 * mib, 31.75 * mib},
		{"a late jump", append(steady(21, 26*mib, 0), 26*mib, 31*mib, 26*mib), false, 26 * mib, 31 * mib},
		{"one sample", []float64{26 * mib}, false, 0, 0},
	} {
		f := judgeFlat("RSS", tc.values, rssAllowance)
		if f.flat != tc.flat || f.first != tc.first || f.last != tc.last {
			t.Errorf("%s: judgeFlat = %+v, want flat %v, first %v, last %v", tc.name, f, tc.flat, tc.first/mib, tc.last/mib)
		}
	}

	// RSS may grow by a tenth, at least 4 MiB.
	if got := rssAllowance(26 * mib); got != 4*mib {
		t.Errorf("rssAllowance(26 MiB) = %v MiB, want 4", got/mib)
	}
	if got := rssAllowance(100 * mib); got != 10*mib {
		t.Errorf("rssAllowance(100 MiB) = %v MiB, want 10", got/mib)
	}
	// Goroutines: the connections plus 10.
	g := judgeFlat("goroutines", []float64{40, 41, 40, 44, 40, 66, 41}, goroutineAllowance(16))
	if !g.flat || g.allowed != 41+26 {
		t.Errorf("goroutines, 16 connections = %+v, want flat, allowed 67", g)
	}
	g = judgeFlat("goroutines", []float64{40, 41, 40, 44, 40, 68, 41}, goroutineAllowance(16))
	if g.flat {
		t.Errorf("goroutines 41 then 68, 16 connections = %+v, want not flat", g)
	}
}

func TestJudgeIdle(t *testing.T) {
	samples := func(before, after float64) []sample {
		return []sample{{phase: "before", goroutines: before}, {phase: "load", goroutines: 400}, {phase: "after", goroutines: after}}
	}
	for _, tc := range []struct {
		before, after float64
		flat          bool
	}{
		{10, 10, true},
		{10, 12, true},
		{10, 9, true},
		{10, 13, false},
	} {
		if f := judgeIdle(samples(tc.before, tc.after)); f.flat != tc.flat {
			t.Errorf("judgeIdle(before %v, after %v) = %+v, want flat %v", tc.before, tc.after, f, tc.flat)
		}
	}
	if f := judgeIdle(samples(10, 10)[:2]); f.flat {
		t.Errorf("judgeIdle without a sample after = %+v, want not flat", f)
	}
}

// soakFixture is a passing soak: 5 samples under load, the first before
// the warm-up's end.
func soakFixture() *soakResults {
	res := &soakResults{
		opts:    soakOptions{duration: time.Minute, interval: 10 * time.Second, warmup: 20 * time.Second, harnessOptions: harnessOptions{seed: 1000, threads: 2, connections: 16}, args: []string{"-duration", "1m"}},
		machine: machine{date: "2026-11-26T09:00:00Z", cores: "2"},
		wrk:     wrkResult{Requests: 600_000, DurationUS: 60_000_000, P99US: 4000, Expected: 600_000},
		answers: soakAnswers{Expect: map[string]int{"get": 200}, Answers: map[string]int64{"get 200": 600_000}},
	}
	res.samples = append(res.samples, sample{phase: "before", goroutines: 10, rss: 14 << 20})
	for i := 1; i <= 5; i++ {
		res.samples = append(res.samples, sample{phase: "load", at: time.Duration(i) * 10 * time.Second,
			goroutines: 40, rss: 26 << 20, requests: float64(i) * 100_000})
	}
	res.samples = append(res.samples, sample{phase: "after", at: 61 * time.Second, goroutines: 10, rss: 26 << 20, requests: 600_000})
	return res
}

func TestSoakVerdict(t *testing.T) {
	res := soakFixture()
	res.judge()
	if why := res.failures(); len(why) != 0 {
		t.Fatalf("a clean, flat soak fails: %q", why)
	}
	// The sample at 10s is the warm-up's: with it the first window would
	// be 10s and 20s.
	if js := res.judged(); len(js) != 4 || js[0].at != 20*time.Second {
		t.Errorf("judged = %d samples from %v, want 4 from 20s", len(js), js[0].at)
	}
	var b strings.Builder
	if err := writeSoakReport(&b, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Verdict: **passed**", "`bin/bench soak -duration 1m`", "| 10 s | 10000 |", "| 20 s * | 10000 |", "| errors | **0** |"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}

	res = soakFixture()
	res.errs.timeouts = 2
	res.samples[5].rss = 40 << 20 // the last sample under load
	res.samples[6].goroutines = 30
	res.judge()
	want := []string{"2 errors", "RSS not flat", "goroutines when idle again not flat"}
	if why := res.failures(); !slices.Equal(why, want) {
		t.Errorf("failures = %q, want %q", why, want)
	}
	b.Reset()
	if err := writeSoakReport(&b, res); err != nil {
		t.Fatal(err)
	}
	if want := "Verdict: **failed**: 2 errors, RSS not flat, goroutines when idle again not flat."; !strings.Contains(b.String(), want) {
		t.Errorf("report lacks %q:\n%s", want, b.String())
	}
}

func TestWriteSoakScript(t *testing.T) {
	paths, err := writeScripts(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(paths[soakScript])
	if err != nil {
		t.Fatal(err)
	}
	common, err := scripts.ReadFile("scripts/common.lua")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(b), string(common)) {
		t.Errorf("%s does not start with common.lua", soakScript)
	}
	// The script prints the line that parseSoakAnswers looks for, through
	// the hook that common.lua's done calls.
	if !strings.Contains(string(b), "'"+answersPrefix) || !strings.Contains(string(common), "done_more(threads)") {
		t.Errorf("%s does not print %q through done_more", soakScript, answersPrefix)
	}
}
