//go:build linux

package main

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// soakOptions are the soak's flags.
type soakOptions struct {
	harnessFlags
	duration, interval, warmup time.Duration
}

func parseSoakOptions(args []string, stderr io.Writer) (soakOptions, error) {
	var o soakOptions
	fs := flag.NewFlagSet("bench soak", flag.ContinueOnError)
	o.register(fs)
	fs.DurationVar(&o.duration, "duration", 5*time.Minute, "how long the load lasts, whole seconds")
	fs.DurationVar(&o.interval, "interval", 10*time.Second, "time between samples, whole seconds")
	if err := o.parse(fs, args, stderr); err != nil {
		return o, err
	}
	if o.duration%time.Second != 0 || o.interval < time.Second || o.interval%time.Second != 0 {
		return o, fmt.Errorf("-duration %v -interval %v: want whole seconds", o.duration, o.interval)
	}
	// Samples before the warm-up, a fifth of the run in whole intervals,
	// are shown, not judged: the heap, the pool and PostgreSQL's caches
	// fill then. Two judged samples at least: at warmup and one later.
	o.warmup = max(o.interval, (o.duration / 5).Truncate(o.interval))
	if o.warmup+o.interval >= o.duration {
		return o, fmt.Errorf("-duration %v -interval %v: want two samples or more after the %v warm-up", o.duration, o.interval, o.warmup)
	}
	if len(o.bins) > 1 {
		return o, errors.New("-service-bin: the soak runs one binary")
	}
	return o, nil
}

// sample is what the soak reads of the service at one moment: VmRSS,
// and the metrics of its /metrics named in sampled.
type sample struct {
	at     time.Duration // since the load started
	load   bool          // under load, not before or after it
	values map[string]float64
}

// sampled are what a sample reads: VmRSS, then metrics of /metrics,
// each the sum of its series, as the samples table shows them.
var sampled = []struct {
	name, column string
	unit         float64 // what one in the table counts
}{
	{"rss", "RSS, MiB", 1 << 20}, {"go_memstats_heap_inuse_bytes", "Go heap in use, MiB", 1 << 20}, {"go_goroutines", "goroutines", 1},
	{"process_open_fds", "open fds", 1}, {"usersvc_db_pool_total_connections", "pool", 1}, {requestsTotal, "requests", 1},
}

const requestsTotal = "usersvc_http_requests_total"

// take reads a sample of t.
func take(t *target, at time.Duration, load bool) (sample, error) {
	rss, err := t.rss()
	if err != nil {
		return sample{}, err
	}
	res, err := http.Get(t.url + "/metrics")
	if err != nil {
		return sample{}, err
	}
	defer res.Body.Close()
	s, err := readMetrics(res.Body)
	s.at, s.load, s.values["rss"] = at, load, float64(rss)
	return s, err
}

// readMetrics reads a Prometheus text exposition. Returns an error when
// it does not parse or a metric is missing.
func readMetrics(r io.Reader) (sample, error) {
	s := sample{values: map[string]float64{}}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return s, err
	}
	for _, c := range sampled[1:] {
		if mfs[c.name] == nil {
			return s, fmt.Errorf("no metric %s", c.name)
		}
		for _, m := range mfs[c.name].GetMetric() {
			s.values[c.name] += m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
		}
	}
	return s, nil
}

// flatness is one rule's verdict: the last window's largest value may
// exceed the first window's largest by an allowance. Maxima on both sides,
// since one sample catches the service at one point of its GC cycle, or
// with some requests in flight, while a leak raises them all.
type flatness struct {
	what                 string
	first, last, allowed float64
}

func (f flatness) flat() bool { return f.last <= f.allowed }

// idleAllowance is how many more goroutines the idle service may have
// after the load than before it: the pool's connections have none.
const idleAllowance = 2

// judgeSoak returns the verdicts of the rules, with windows of three
// judged samples (fewer when there are under six; none, and not flat,
// under two): RSS under load may grow by a tenth, or 4 MiB when that is
// more (the heap's cycle and the allocator's caches move it that much);
// goroutines under load by the connections plus 10 (one per connection,
// and those of the requests in flight, come and go); goroutines when idle
// again, after the load against before it, by idleAllowance.
func judgeSoak(ss []sample, warmup time.Duration, connections int) []flatness {
	js := slices.DeleteFunc(slices.Clone(ss), func(s sample) bool { return !s.load || s.at < warmup })
	w := min(3, len(js)/2)
	judge := func(what, name string, fraction, least float64) flatness {
		if w == 0 {
			return flatness{what: what, allowed: -1}
		}
		f := flatness{what: what}
		for i, s := range js {
			if i < w {
				f.first = max(f.first, s.values[name])
			} else if i >= len(js)-w {
				f.last = max(f.last, s.values[name])
			}
		}
		f.allowed = f.first + max(f.first*fraction, least)
		return f
	}
	idle := flatness{what: "goroutines when idle", allowed: -1}
	if first, last := ss[0], ss[len(ss)-1]; !first.load && !last.load && len(ss) > 1 {
		g := "go_goroutines"
		idle = flatness{idle.what, first.values[g], last.values[g], first.values[g] + idleAllowance}
	}
	return []flatness{judge("RSS", "rss", 0.1, 4<<20), judge("goroutines under load", "go_goroutines", 0, float64(connections+10)), idle}
}

// soakAnswers is the line that soak.lua prints after common.lua's: the
// answers by request kind and status ("get 200"), the wrong ones apart,
// and each kind's expected status.
type soakAnswers struct {
	Expect     map[string]int   `json:"expect"`
	Answers    map[string]int64 `json:"answers"`
	Unexpected map[string]int64 `json:"unexpected"`
}

// runSoak is `bench soak`: soak.lua's mixed load on the service for
// -duration, a sample every -interval. It prints the report, and returns
// an error when the soak failed.
func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseSoakOptions(args, stderr)
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench soak: "+format+"\n", a...) }
	startLoad := loadAverage()
	h, err := startHarness(ctx, o.harnessFlags, false, logf)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.stop()) }()
	svc := h.targets[0]
	before, err := take(svc, 0, false)
	if err != nil {
		return err
	}
	samples := []sample{before}

	// The samples in the background, wrk here.
	logf("load for %v, a sample every %v, judged from %v", o.duration, o.interval, o.warmup)
	start := time.Now()
	stop, sampling := make(chan struct{}), make(chan error, 1)
	go func() {
		tick := time.NewTicker(o.interval)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				sampling <- nil
				return
			case <-tick.C:
				if at := time.Since(start); at < o.duration { // not wrk's last moments
					s, err := take(svc, at, true)
					if err != nil {
						sampling <- err
						return
					}
					logf("%3.0fs: RSS %.1f MiB, %.0f goroutines", at.Seconds(), s.values["rss"]/(1<<20), s.values["go_goroutines"])
					samples = append(samples, s)
				}
			}
		}
	}()
	r, m, out, err := h.wrk(ctx, svc, "soak.lua", o.duration, "1", strconv.Itoa(o.seed))
	close(stop)
	if err := errors.Join(err, <-sampling, svc.alive()); err != nil {
		return err
	}
	// Idle again once the goroutines of wrk's connections are gone: 10 s
	// at most.
	var after sample
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if after, err = take(svc, time.Since(start), false); err != nil {
			return err
		}
		if g := "go_goroutines"; after.values[g] <= before.values[g]+idleAllowance || time.Now().After(deadline) {
			break
		}
	}
	samples = append(samples, after)
	var answers soakAnswers
	if err := parseLine(out, "SOAK_ANSWERS ", &answers); err != nil {
		return fmt.Errorf("soak answers: %w\n%s", err, out)
	}
	logLines, logTail, err := warnings(svc.log)
	if err != nil {
		return err
	}

	errs := []struct {
		what string
		n    int64
	}{
		{"connect errors", r.Connect}, {"read errors", r.Read}, {"write errors", r.Write},
		{"timeouts (no answer within 10 s)", r.Timeouts}, {"wrong answers", r.Unexpected},
		{"answers the script did not check", max(0, r.Requests-r.Expected-r.Unexpected)},
		{"service log lines at warn or error", logLines},
	}
	var why, kinds []string
	var total int64
	for _, e := range errs {
		total += e.n
		kinds = append(kinds, fmt.Sprintf("%s %d", e.what, e.n))
	}
	if total > 0 {
		why = append(why, fmt.Sprintf("%d errors", total))
	}
	verdicts := judgeSoak(samples, o.warmup, o.connections)
	for _, v := range verdicts {
		if !v.flat() {
			why = append(why, v.what+" grew")
		}
	}
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	p("### Soak of %s: %s\n", start.UTC().Format(time.RFC3339), cmp.Or(strings.Join(why, ", "), "passed"))
	p("Command: `bin/bench soak %s`. %s. Load average %s at the start, %s at the end.", strings.Join(args, " "), strings.Join(h.facts, ". "), startLoad, loadAverage())
	p("wrk: %d connections for %v, running `cmd/bench/scripts/soak.lua` against %d seeded users.\n", o.connections, o.duration, o.seed)
	p("| requests | req/s | p50 | p99 | max | service CPU per request | errors |\n|---|---|---|---|---|---|---|")
	p("| %d | %.0f | %.2f ms | %.2f ms | %.1f ms | %.1f µs | **%d** |\n", r.Requests, m.rate(), r.P50US/1e3, r.P99US/1e3, r.MaxUS/1e3, m.perOp(m.cpu)/1e3, total)
	p("Errors by kind (any fails the soak): %s.\n", strings.Join(kinds, ", "))
	if logTail != "" {
		p("The service's last warn and error lines:\n\n```\n%s```\n", logTail)
	}
	p("Answers by request kind (which travels in the request's X-Request-ID) and status:\n\n| kind | status | answers | wrong | expected |\n|---|---|---|---|---|")
	for _, key := range slices.Sorted(maps.Keys(answers.Answers)) {
		kind, status, _ := strings.Cut(key, " ")
		p("| %s | %s | %d | %d | %d |", kind, status, answers.Answers[key], answers.Unexpected[key], answers.Expect[kind])
	}
	p("\nSamples (* judged, after the %v warm-up; req/s from `usersvc_http_requests_total`):\n", o.warmup)
	head := "| t | req/s |"
	for _, c := range sampled[:len(sampled)-1] {
		head += " " + c.column + " |"
	}
	p("%s\n|---|---|%s", head, strings.Repeat("---|", len(sampled)-1))
	for i, smp := range samples {
		t, rate := fmt.Sprintf("%.0f s", smp.at.Seconds()), "–"
		switch {
		case i == 0:
			t = "before"
		case !smp.load:
			t = "after"
		case smp.at >= o.warmup:
			t += " *"
		}
		if i > 0 {
			prev := samples[i-1]
			rate = fmt.Sprintf("%.0f", (smp.values[requestsTotal]-prev.values[requestsTotal])/(smp.at-prev.at).Seconds())
		}
		cells := []string{t, rate}
		for _, c := range sampled[:len(sampled)-1] {
			cells = append(cells, strconv.FormatFloat(math.Round(smp.values[c.name]/c.unit*10)/10, 'f', -1, 64))
		}
		p("| %s |", strings.Join(cells, " | "))
	}
	p("\nFlat? The largest of the last 3 judged samples against the largest of the first 3; when idle, after the load against before it:\n")
	p("| measure | first | last | allowed | flat? |\n|---|---|---|---|---|")
	for _, v := range verdicts {
		scale := map[bool]float64{true: 1 << 20, false: 1}[v.what == "RSS"] // MiB
		p("| %s | %.1f | %.1f | %.1f | %v |", v.what, v.first/scale, v.last/scale, v.allowed/scale, v.flat())
	}
	if _, err := io.WriteString(stdout, b.String()); err != nil {
		return err
	}
	if len(why) > 0 {
		return fmt.Errorf("soak failed: %s", strings.Join(why, ", "))
	}
	return nil
}

// warnings returns how many lines of the log at path are at warn or error
// (a 5xx, a database that does not answer), and the last few of them.
func warnings(path string) (int64, string, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	var n int64
	var last []string
	for sc.Scan() {
		if line := sc.Text(); strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) {
			n++
			last = append(last[max(0, len(last)-4):], line+"\n")
		}
	}
	return n, strings.Join(last, ""), sc.Err()
}
