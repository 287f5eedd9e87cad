//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// sampleTimes are when the samples under load are due, from the start of
// the load: every interval before the end. (One at the very end would race
// with wrk's own.)
func sampleTimes(o soakOptions) []time.Duration {
	var ts []time.Duration
	for t := o.interval; t < o.duration; t += o.interval {
		ts = append(ts, t)
	}
	return ts
}

// judgedTimes are the sample times at or after the warm-up.
func judgedTimes(o soakOptions) []time.Duration {
	return slices.DeleteFunc(sampleTimes(o), func(t time.Duration) bool { return t < o.warmup })
}

// sample is what the soak reads of the service and the database at one
// moment. Metrics come from the service's /metrics.
type sample struct {
	phase        string        // "before" the load, "load", or "after" it
	at           time.Duration // since the load started
	rss          int64         // VmRSS of /proc/<pid>/status
	heap         float64       // go_memstats_heap_inuse_bytes
	goroutines   float64       // go_goroutines
	fds          float64       // process_open_fds
	poolConns    float64       // usersvc_db_pool_total_connections
	requests     float64       // usersvc_http_requests_total, all series
	serverErrors float64       // usersvc_http_requests_total, codes 5xx
	sessions     int64         // PostgreSQL sessions named usersvc
	users        int64         // rows in the users table
}

// sampler takes samples.
type sampler struct {
	svc    *service
	conn   *pgx.Conn // the soak's own session, not counted in sessions
	client *http.Client
}

// take reads a sample. Returns an error when the service or the database
// does not answer.
func (s sampler) take(ctx context.Context, phase string, at time.Duration) (sample, error) {
	smp := sample{phase: phase, at: at}
	mem, err := s.svc.memory()
	if err != nil {
		return smp, err
	}
	smp.rss = mem.rss
	if err := s.metrics(ctx, &smp); err != nil {
		return smp, fmt.Errorf("sample the service: %w", err)
	}
	err = s.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'usersvc'),
		(SELECT count(*) FROM users)`).Scan(&smp.sessions, &smp.users)
	if err != nil {
		return smp, fmt.Errorf("sample the database: %w", err)
	}
	return smp, nil
}

// metrics reads the service's /metrics into smp.
func (s sampler) metrics(ctx context.Context, smp *sample) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.svc.url+"/metrics", nil)
	if err != nil {
		return err
	}
	res, err := s.client.Do(req)
	if err != nil {
		return err
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK {
		return fmt.Errorf("GET /metrics: %s %v", res.Status, err)
	}
	return readMetrics(body, smp)
}

// readMetrics fills smp's metrics in from a Prometheus text exposition.
// Returns an error when it does not parse, or a gauge is missing or has
// labels.
func readMetrics(text []byte, smp *sample) error {
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return err
	}
	for name, into := range map[string]*float64{
		"go_memstats_heap_inuse_bytes":      &smp.heap,
		"go_goroutines":                     &smp.goroutines,
		"process_open_fds":                  &smp.fds,
		"usersvc_db_pool_total_connections": &smp.poolConns,
	} {
		ms := mfs[name].GetMetric()
		if len(ms) != 1 || len(ms[0].GetLabel()) != 0 {
			return fmt.Errorf("metric %s: %d series, want one without labels", name, len(ms))
		}
		*into = metricValue(ms[0])
	}
	smp.requests, smp.serverErrors = 0, 0
	for _, m := range mfs["usersvc_http_requests_total"].GetMetric() {
		smp.requests += metricValue(m)
		for _, l := range m.GetLabel() {
			if l.GetName() == "code" && strings.HasPrefix(l.GetValue(), "5") {
				smp.serverErrors += metricValue(m)
			}
		}
	}
	return nil
}

// metricValue returns the value of a gauge, a counter or an untyped metric.
func metricValue(m *dto.Metric) float64 {
	return m.GetGauge().GetValue() + m.GetCounter().GetValue() + m.GetUntyped().GetValue()
}

// idle takes the sample after the load: it polls until the service's
// goroutines are back within idleGoroutineAllowance of before's, as they
// are once it has seen wrk's connections close, for up to 10 seconds, and
// returns the last sample either way; at is its time since the load
// started.
func (s sampler) idle(ctx context.Context, before sample, at time.Duration) (sample, error) {
	deadline := time.Now().Add(10 * time.Second)
	start := time.Now()
	for {
		smp, err := s.take(ctx, "after", at+time.Since(start))
		if err != nil || smp.goroutines <= before.goroutines+idleGoroutineAllowance || time.Now().After(deadline) {
			return smp, err
		}
		select {
		case <-ctx.Done():
			return smp, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// soakAnswers is the line that soak.lua prints after the result line: the
// answers of the run by request kind and status ("get 200"), those the
// script found wrong apart, and each kind's expected status.
type soakAnswers struct {
	Expect     map[string]int   `json:"expect"`
	Answers    map[string]int64 `json:"answers"`
	Unexpected map[string]int64 `json:"unexpected"`
}

// answersPrefix starts the line that soak.lua's done_more prints.
const answersPrefix = "SOAK_ANSWERS "

// parseSoakAnswers finds soak.lua's line in wrk's output. Returns an error
// when there is none, it does not parse, or it names no expected status.
func parseSoakAnswers(out []byte) (soakAnswers, error) {
	var a soakAnswers
	if err := parseLine(out, answersPrefix, &a); err != nil {
		return a, fmt.Errorf("soak answers: %w", err)
	}
	if len(a.Expect) == 0 {
		return a, errors.New("soak answers: no expected statuses")
	}
	return a, nil
}

// kindAnswers is one request kind's answers.
type kindAnswers struct {
	kind     string
	expect   int   // the status it must get; 0 for a kind the script does not know
	total    int64 // answers
	right    int64 // answers with the expected status that the script found right
	wrongs   []string
	wrongSum int64
}

// byKind returns each kind's answers, the expected kinds first in name
// order, then any other (an answer whose kind the script could not tell).
func (a soakAnswers) byKind() []kindAnswers {
	kinds := map[string]*kindAnswers{}
	get := func(kind string) *kindAnswers {
		if kinds[kind] == nil {
			kinds[kind] = &kindAnswers{kind: kind, expect: a.Expect[kind]}
		}
		return kinds[kind]
	}
	for kind := range a.Expect {
		get(kind)
	}
	for _, key := range sortedKeys(a.Answers) {
		kind, status, _ := strings.Cut(key, " ")
		k, n, bad := get(kind), a.Answers[key], a.Unexpected[key]
		k.total += n
		if code, err := strconv.Atoi(status); err == nil && code == k.expect {
			k.right += n - bad
		}
		if bad > 0 {
			k.wrongs = append(k.wrongs, fmt.Sprintf("%s: %d", status, bad))
			k.wrongSum += bad
		}
	}
	var out []kindAnswers
	for _, kind := range sortedKeys(kinds) {
		out = append(out, *kinds[kind])
	}
	// Stable: name order within the known kinds and the unknown ones.
	slices.SortStableFunc(out, func(x, y kindAnswers) int { return boolInt(x.expect == 0) - boolInt(y.expect == 0) })
	return out
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// soakErrors are the soak's errors by kind; any at all fails it.
type soakErrors struct {
	connect, read, write int64 // socket errors, as wrk counts them
	timeouts             int64 // answers later than wrk's --timeout
	unexpected           int64 // answers the script found wrong
	uncounted            int64 // answers the script did not see
	logLines             int   // service log lines at warn or error
}

func newSoakErrors(r wrkResult, logLines int) soakErrors {
	return soakErrors{
		connect: r.ConnectErrors, read: r.ReadErrors, write: r.WriteErrors, timeouts: r.Timeouts,
		unexpected: r.Unexpected, uncounted: max(0, r.Requests-r.Expected-r.Unexpected),
		logLines: logLines,
	}
}

// total is every error; it agrees with wrkResult.errors(true) plus the log
// lines.
func (e soakErrors) total() int64 {
	return e.connect + e.read + e.write + e.timeouts + e.unexpected + e.uncounted + int64(e.logLines)
}

// flatness is one measure's verdict: does it stay flat under load?
//
// The rule: after the warm-up, compare the largest value of the last
// window of samples with the largest of the first window. The measure is
// flat when the last is at most the first plus an allowance. Maxima on
// both sides, because a single sample catches the service at one moment
// of its garbage-collection cycle or with some requests in flight; a leak
// raises the floor and the peaks alike.
type flatness struct {
	name        string
	window      int     // samples in each window
	first, last float64 // the largest value of the first and the last window
	allowed     float64 // the last window's largest may be at most this
	flat        bool
}

// judgeFlat applies the rule to values, the judged samples in time order,
// with allowance(first) the growth allowed. Fewer than two samples cannot
// show a trend and are not flat.
func judgeFlat(name string, values []float64, allowance func(first float64) float64) flatness {
	f := flatness{name: name, window: soakWindow(len(values))}
	if f.window == 0 {
		return f
	}
	f.first = slices.Max(values[:f.window])
	f.last = slices.Max(values[len(values)-f.window:])
	f.allowed = f.first + allowance(f.first)
	f.flat = f.last <= f.allowed
	return f
}

// soakWindow is the samples in each window for n judged samples: three
// (30 s at the default interval), fewer when the run is too short for two
// windows of three, and 0 when there are fewer than two samples.
func soakWindow(n int) int {
	return min(3, n/2)
}

// The allowances of the flatness rule.
const (
	// rssAllowanceFraction and rssAllowanceMin: the last window's RSS may
	// exceed the first's by a tenth, or 4 MiB when that is more. The Go
	// heap's cycle and the allocator's caches move RSS by a few MiB between
	// samples of a service that leaks nothing.
	rssAllowanceFraction = 0.10
	rssAllowanceMin      = 4 << 20
	// idleGoroutineAllowance: once the load has stopped and wrk's
	// connections are closed, the service may have at most this many
	// goroutines more than before the load (the pool's connections, opened
	// during the load, have none of their own while idle).
	idleGoroutineAllowance = 2
)

// rssAllowance returns how much the last window's RSS may exceed first.
func rssAllowance(first float64) float64 {
	return max(first*rssAllowanceFraction, rssAllowanceMin)
}

// goroutineAllowance returns how many goroutines the last window may have
// above the first: a sample counts one goroutine per open connection, plus
// those of the requests in flight at that moment (the server's background
// read, the driver's context watch), which come and go, at most about one
// more per connection; and 10 for the pool's and the runtime's own. A leak
// of one goroutine per request would add thousands.
func goroutineAllowance(connections int) func(float64) float64 {
	return func(float64) float64 { return float64(connections + 10) }
}

// soakResults is everything one soak measured.
type soakResults struct {
	opts               soakOptions
	machine            machine
	settings           []string
	startLoad, endLoad string
	wrk                wrkResult
	answers            soakAnswers
	errs               soakErrors
	logTail            string
	samples            []sample
	rss, goroutines    flatness // under load
	idle               flatness // goroutines, before and after the load
}

// judged returns the samples under load at or after the warm-up.
func (r *soakResults) judged() []sample {
	return slices.DeleteFunc(slices.Clone(r.samples), func(s sample) bool { return s.phase != "load" || s.at < r.opts.warmup })
}

// judge fills in the flatness verdicts.
func (r *soakResults) judge() {
	js := r.judged()
	r.rss = judgeFlat("RSS", collect(js, func(s sample) float64 { return float64(s.rss) }), rssAllowance)
	r.goroutines = judgeFlat("goroutines", collect(js, func(s sample) float64 { return s.goroutines }), goroutineAllowance(r.opts.connections))
	r.idle = judgeIdle(r.samples)
}

// judgeIdle compares the idle service's goroutines after the load with
// those before it: the same rule, with the sample before as the first
// window and the one after as the last.
func judgeIdle(samples []sample) flatness {
	f := flatness{name: "goroutines when idle again"}
	i := slices.IndexFunc(samples, func(s sample) bool { return s.phase == "before" })
	j := slices.IndexFunc(samples, func(s sample) bool { return s.phase == "after" })
	if i < 0 || j < 0 {
		return f
	}
	f.window, f.first, f.last = 1, samples[i].goroutines, samples[j].goroutines
	f.allowed = f.first + idleGoroutineAllowance
	f.flat = f.last <= f.allowed
	return f
}

// failures returns why the soak failed, nothing when it passed.
func (r *soakResults) failures() []string {
	var why []string
	if n := r.errs.total(); n > 0 {
		why = append(why, fmt.Sprintf("%d errors", n))
	}
	for _, f := range []flatness{r.rss, r.goroutines, r.idle} {
		if !f.flat {
			why = append(why, f.name+" not flat")
		}
	}
	return why
}

// runSoak is `bench soak`: it starts the harness, runs soak.lua with wrk
// for -duration while it samples the service every -interval, prints the
// report to stdout, and returns an error when the soak failed: any error,
// or RSS or goroutines not flat.
func runSoak(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseSoakOptions(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench soak: "+format+"\n", a...) }

	res := &soakResults{opts: o, startLoad: loadAverage()}
	h, err := startHarness(ctx, o.harnessOptions, logf)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.stop()) }()
	res.machine, res.settings = h.machine, h.settings

	cfg, err := pgx.ParseConfig(h.pg.URL(database))
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = "bench-soak"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("connect to sample the database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	smp := sampler{svc: h.svc, conn: conn, client: &http.Client{Timeout: 10 * time.Second}}
	defer smp.client.CloseIdleConnections()

	before, err := smp.take(ctx, "before", 0)
	if err != nil {
		return err
	}
	res.samples = append(res.samples, before)

	w := wrkRun{wrk: h.wrk, script: h.scripts[soakScript], url: h.svc.url, threads: o.threads, connections: o.connections,
		duration: o.duration, args: []string{"1", "1", strconv.Itoa(o.seed)}, servicePID: h.svc.cmd.Process.Pid, token: h.svc.token}
	type wrkDone struct {
		r   wrkResult
		out []byte
		err error
	}
	done := make(chan wrkDone, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logf("load for %v: wrk, %d threads, %d connections; a sample every %v, judged from %v", o.duration, o.threads, o.connections, o.interval, o.warmup)
	start := time.Now()
	go func() {
		r, out, err := w.run(wctx)
		done <- wrkDone{r, out, err}
	}()
	tick := time.NewTicker(o.interval)
	defer tick.Stop()
	var wd wrkDone
	prev := before
sampling:
	for {
		select {
		case wd = <-done:
			break sampling
		case <-tick.C:
			at := time.Since(start)
			if at >= o.duration {
				continue // wrk is about to end: this would sample its last moments
			}
			s, err := smp.take(ctx, "load", at)
			if err != nil {
				cancel()
				<-done
				return err
			}
			res.samples = append(res.samples, s)
			logf("%3.0fs: %.0f req/s, RSS %s, goroutines %.0f, pool %.0f, sessions %d, users %d",
				at.Seconds(), perSecond(prev, s), fmtMiB(s.rss), s.goroutines, s.poolConns, s.sessions, s.users)
			prev = s
		}
	}
	if wd.err != nil {
		return wd.err
	}
	if h.svc.exited() {
		return fmt.Errorf("the service exited during the soak; its log ends:\n%s", h.svc.logTail())
	}
	after, err := smp.idle(ctx, before, time.Since(start))
	if err != nil {
		return err
	}
	res.samples = append(res.samples, after)
	res.wrk = wd.r
	if res.answers, err = parseSoakAnswers(wd.out); err != nil {
		return fmt.Errorf("%w\n%s", err, wd.out)
	}
	logLines, logTail := h.svc.trouble()
	if logLines < 0 {
		return errors.New(logTail)
	}
	res.errs, res.logTail = newSoakErrors(wd.r, logLines), logTail
	res.endLoad = loadAverage()
	res.judge()
	if err := writeSoakReport(stdout, res); err != nil {
		return err
	}
	if why := res.failures(); len(why) > 0 {
		return fmt.Errorf("soak failed: %s", strings.Join(why, ", "))
	}
	return nil
}

// perSecond returns the requests the service counted per second between
// two samples.
func perSecond(a, b sample) float64 {
	d := (b.at - a.at).Seconds()
	if d <= 0 {
		return 0
	}
	return (b.requests - a.requests) / d
}

// writeSoakReport prints the soak as markdown.
func writeSoakReport(w io.Writer, res *soakResults) error {
	o, m, r := res.opts, res.machine, res.wrk
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }

	verdict := "**passed**"
	if why := res.failures(); len(why) > 0 {
		verdict = "**failed**: " + strings.Join(why, ", ")
	}
	p("### Soak of %s", m.date)
	p("")
	p("Command: `%s` (what `make soak` runs). Verdict: %s.", command("bin/bench soak", o.args), verdict)
	p("")
	cores := func(d time.Duration) float64 { return d.Seconds() / max(float64(r.DurationUS)/1e6, 1e-9) }
	busy := fmt.Sprintf("| CPU busy during the load | %.2f of %s cores: the service %.2f, wrk %.2f, the rest (PostgreSQL and anything else running) %.2f |",
		cores(r.cpu.machine), m.cores, cores(r.cpu.service), cores(r.cpu.client), cores(r.cpu.rest()))
	m.writeTable(p, res.startLoad, res.endLoad, busy, false)
	p("Load: wrk, %d threads, %d connections, for %v, running `cmd/bench/scripts/soak.lua` (a mix of every request kind, below) against %d seeded users.",
		o.threads, o.connections, o.duration, o.seed)
	p("Service: the default settings (JSON access log at info, to a file) and a bearer token (AUTH_TOKENS), extra environment: %s.", envText(o.env))
	p("PostgreSQL, over TCP on 127.0.0.1: %s.", strings.Join(res.settings, ", "))
	p("")

	p("| | |\n|---|---|")
	p("| requests | %d in %.1f s: **%.0f req/s** |", r.Requests, float64(r.DurationUS)/1e6, r.reqPerSec())
	p("| latency | p50 %s, p90 %s, **p99 %s**, p99.9 %s, max %s |", fmtUS(r.P50US), fmtUS(r.P90US), fmtUS(r.P99US), fmtUS(r.P999US), fmtUS(r.MaxUS))
	p("| errors | **%d** |", res.errs.total())
	p("| service CPU | %.1f µs per request |", perOp(r.cpu.service, r.Requests))
	p("")

	e := res.errs
	p("Errors by kind (any fails the soak):\n\n| kind | count |\n|---|---|")
	p("| connect errors | %d |\n| read errors | %d |\n| write errors | %d |", e.connect, e.read, e.write)
	p("| timeouts (no answer within wrk's 10 s) | %d |", e.timeouts)
	p("| answers other than the request's expected one | %d |", e.unexpected)
	p("| answers the script did not check | %d |", e.uncounted)
	p("| service log lines at warn or error | %d |", e.logLines)
	p("")
	if res.logTail != "" {
		p("The last of the service's warn and error lines:\n\n```\n%s\n```\n", strings.TrimRight(res.logTail, "\n"))
	}

	p("Answers by request kind (the kind travels in the request's `X-Request-ID`, which the service echoes; the script checks each answer's status, and the problem's `code` for the 4xx):")
	p("\n| kind | answers | expected | as expected | other answers |\n|---|---|---|---|---|")
	for _, k := range res.answers.byKind() {
		want, other := "–", "none"
		if k.expect != 0 {
			want = strconv.Itoa(k.expect)
		}
		if len(k.wrongs) > 0 {
			other = strings.Join(k.wrongs, ", ")
		}
		p("| %s | %d | %s | %d | %s |", k.kind, k.total, want, k.right, other)
	}
	p("")

	p("Samples every %v (t from the start of the load; \"before\" and \"after\" are the idle service on either side; * marks the samples judged, after the %v warm-up). "+
		"req/s and 5xx are from the service's own `usersvc_http_requests_total`, since the sample before; "+
		"pool is `usersvc_db_pool_total_connections`, sessions are PostgreSQL's sessions named usersvc (`pg_stat_activity`):", o.interval, o.warmup)
	p("\n| t | req/s | 5xx | RSS | Go heap in use | goroutines | open fds | pool | sessions | users |\n|---|---|---|---|---|---|---|---|---|---|")
	for i, s := range res.samples {
		t := fmt.Sprintf("%.0f s", s.at.Round(time.Second).Seconds())
		if s.phase != "load" {
			t = s.phase
		} else if s.at >= o.warmup {
			t += " *"
		}
		rate, errs := "–", "–"
		if i > 0 {
			rate = fmt.Sprintf("%.0f", perSecond(res.samples[i-1], s))
			errs = fmt.Sprintf("%.0f", s.serverErrors-res.samples[i-1].serverErrors)
		}
		p("| %s | %s | %s | %s | %s | %.0f | %.0f | %.0f | %d | %d |",
			t, rate, errs, fmtMiB(s.rss), fmtMiB(int64(s.heap)), s.goroutines, s.fds, s.poolConns, s.sessions, s.users)
	}
	p("")

	p("Flat? The largest value of the last %d judged sample(s) against the largest of the first %d, after the warm-up "+
		"(maxima on both sides, since one sample catches the service at one point of its GC cycle or with some requests in flight, while a leak raises them all):",
		res.rss.window, res.rss.window)
	p("\n| measure | first window | last window | allowed | flat? |\n|---|---|---|---|---|")
	yes := map[bool]string{true: "yes", false: "**no**"}
	p("| RSS | %s | %s | %s (+%.0f %%, at least +%s) | %s |", fmtMiB(int64(res.rss.first)), fmtMiB(int64(res.rss.last)),
		fmtMiB(int64(res.rss.allowed)), rssAllowanceFraction*100, fmtMiB(rssAllowanceMin), yes[res.rss.flat])
	p("| goroutines | %.0f | %.0f | %.0f (+%.0f: the connections, plus 10) | %s |", res.goroutines.first, res.goroutines.last, res.goroutines.allowed,
		res.goroutines.allowed-res.goroutines.first, yes[res.goroutines.flat])
	p("| goroutines when idle again: before the load, and after it once wrk's connections are closed | %.0f | %.0f | %.0f (+%d) | %s |",
		res.idle.first, res.idle.last, res.idle.allowed, idleGoroutineAllowance, yes[res.idle.flat])
	p("")
	// The requests from the last sample of the first window to the first
	// of the last: a steady leak grew by at least that many requests' worth
	// between the windows' maxima.
	if js, n := res.judged(), res.rss.window; n > 0 && len(js) >= 2*n {
		if reqs := js[len(js)-n].requests - js[n-1].requests; reqs > 0 {
			p("Between the two windows the service answered %.0f requests: a steady leak of more than %.0f bytes per request, "+
				"or of one goroutine per %.0f requests, would have failed this soak; and the idle count after the load catches a leak of %d goroutines in all.",
				reqs, (res.rss.allowed-res.rss.first)/reqs, reqs/(res.goroutines.allowed-res.goroutines.first), idleGoroutineAllowance+1)
			p("")
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}
