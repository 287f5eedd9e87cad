package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json/v2"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// soakScript is the wrk script of the soak: a mix of every kind of request,
// each checked against the answer it must get.
const soakScript = "soak.lua"

// soakOptions are the soak's settings, from the command line after "soak".
type soakOptions struct {
	duration       time.Duration // of the load
	interval       time.Duration // between samples
	warmup         time.Duration // samples before it are shown, not judged
	threads        int           // wrk threads
	connections    int           // wrk connections, over all threads
	harnessOptions               // seed: users in the table at the start
	args           []string      // the command line, for the report
}

// parseSoakOptions parses the soak's command line. Without -warmup, the
// warm-up is a fifth of -duration, in whole intervals, at least one.
func parseSoakOptions(args []string, stderr io.Writer) (soakOptions, error) {
	o := soakOptions{args: args, warmup: -1}
	fs := flag.NewFlagSet("bench soak", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.DurationVar(&o.duration, "duration", 5*time.Minute, "how long the load lasts, whole seconds")
	fs.DurationVar(&o.interval, "interval", 10*time.Second, "time between samples of the service, whole seconds")
	fs.Func("warmup", "samples taken before this `duration` are shown but not judged (default a fifth of -duration, at least -interval)", func(s string) error {
		d, err := time.ParseDuration(s)
		if err == nil && d < 0 {
			err = errors.New("want 0 or more")
		}
		o.warmup = d
		return err
	})
	fs.IntVar(&o.threads, "threads", 2, "wrk threads")
	fs.IntVar(&o.connections, "connections", 16, "wrk connections, over all threads")
	fs.IntVar(&o.seed, "seed", 100_000, "users in the table at the start")
	o.harnessOptions.addFlags(fs, "soak")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: bench soak [flags]\n\nRuns a mixed load against the service for -duration, samples it every -interval,\nand prints a markdown report; exits 1 on any error or when RSS or goroutines grow. See docs/soak.md.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if o.warmup < 0 && o.interval > 0 {
		o.warmup = max(o.interval, (o.duration / 5).Truncate(o.interval))
	}
	return o, o.validate()
}

func (o soakOptions) validate() error {
	var errs []error
	if o.duration < time.Second || o.duration%time.Second != 0 {
		errs = append(errs, fmt.Errorf("-duration %v: want whole seconds, at least 1s", o.duration))
	}
	if o.interval < time.Second || o.interval%time.Second != 0 {
		errs = append(errs, fmt.Errorf("-interval %v: want whole seconds, at least 1s", o.interval))
	}
	if o.warmup < 0 {
		errs = append(errs, fmt.Errorf("-warmup %v: want 0 or more", o.warmup))
	}
	if len(errs) == 0 {
		if n := len(judgedTimes(o)); n < 2 {
			errs = append(errs, fmt.Errorf("-duration %v -interval %v -warmup %v: %d sample(s) after the warm-up, want at least 2", o.duration, o.interval, o.warmup, n))
		}
	}
	// The script's taken names are the lower half of the seeded users, its
	// renames the upper half.
	if o.seed < 1000 {
		errs = append(errs, fmt.Errorf("-seed %d: want at least 1000", o.seed))
	}
	if o.threads < 1 || o.connections < o.threads {
		errs = append(errs, fmt.Errorf("-threads %d -connections %d: want 1 or more threads and at least one connection each", o.threads, o.connections))
	}
	return errors.Join(errs...)
}

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
	var ts []time.Duration
	for _, t := range sampleTimes(o) {
		if t >= o.warmup {
			ts = append(ts, t)
		}
	}
	return ts
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
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.svc.url+"/metrics", nil)
	if err != nil {
		return smp, err
	}
	res, err := s.client.Do(req)
	if err != nil {
		return smp, fmt.Errorf("sample the service: %w", err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		return smp, fmt.Errorf("sample the service: GET /metrics: %w", err)
	}
	if res.StatusCode != http.StatusOK {
		return smp, fmt.Errorf("sample the service: GET /metrics: %s", res.Status)
	}
	m, err := parseMetrics(body)
	if err != nil {
		return smp, fmt.Errorf("sample the service: %w", err)
	}
	for _, v := range []struct {
		name string
		into *float64
	}{
		{"go_memstats_heap_inuse_bytes", &smp.heap},
		{"go_goroutines", &smp.goroutines},
		{"process_open_fds", &smp.fds},
		{"usersvc_db_pool_total_connections", &smp.poolConns},
	} {
		if *v.into, err = m.value(v.name); err != nil {
			return smp, fmt.Errorf("sample the service: %w", err)
		}
	}
	smp.requests = m.sum("usersvc_http_requests_total", func(labels string) bool { return true })
	smp.serverErrors = m.sum("usersvc_http_requests_total", func(labels string) bool { return strings.Contains(labels, `code="5`) })
	err = s.conn.QueryRow(ctx, `SELECT (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'usersvc'),
		(SELECT count(*) FROM users)`).Scan(&smp.sessions, &smp.users)
	if err != nil {
		return smp, fmt.Errorf("sample the database: %w", err)
	}
	return smp, nil
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

// metrics are the series of a Prometheus text exposition, by metric name.
type metrics map[string][]series

// series is one line of the exposition: its labels as written, between
// the braces, and its value.
type series struct {
	labels string
	value  float64
}

// parseMetrics parses the Prometheus text format: comment lines are
// skipped, and every other line is a name, labels in braces or none, a
// value, and maybe a timestamp. Label values may hold braces and escaped
// quotes. Returns an error for a line that does not parse.
func parseMetrics(b []byte) (metrics, error) {
	m := metrics{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest := line, ""
		if i := strings.IndexAny(line, "{ "); i >= 0 {
			name, rest = line[:i], line[i:]
		}
		var labels string
		if strings.HasPrefix(rest, "{") {
			end, ok := closingBrace(rest)
			if !ok {
				return nil, fmt.Errorf("parse metrics: unterminated labels in %q", line)
			}
			labels, rest = rest[1:end], rest[end+1:]
		}
		f := strings.Fields(rest)
		if name == "" || len(f) < 1 || len(f) > 2 {
			return nil, fmt.Errorf("parse metrics: %q", line)
		}
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			return nil, fmt.Errorf("parse metrics: %q: %w", line, err)
		}
		m[name] = append(m[name], series{labels: labels, value: v})
	}
	return m, sc.Err()
}

// closingBrace returns the index in s, which starts with '{', of the brace
// that closes it, outside quoted label values.
func closingBrace(s string) (int, bool) {
	quoted := false
	for i := 1; i < len(s); i++ {
		switch {
		case quoted && s[i] == '\\':
			i++ // the escaped character
		case s[i] == '"':
			quoted = !quoted
		case !quoted && s[i] == '}':
			return i, true
		}
	}
	return 0, false
}

// value returns the value of the metric without labels name. Returns an
// error when there is no such metric or it has several series.
func (m metrics) value(name string) (float64, error) {
	ss := m[name]
	if len(ss) != 1 || ss[0].labels != "" {
		return 0, fmt.Errorf("metric %s: %d series, want one without labels", name, len(ss))
	}
	return ss[0].value, nil
}

// sum returns the sum of name's series whose labels keep accepts.
func (m metrics) sum(name string, keep func(labels string) bool) float64 {
	var t float64
	for _, s := range m[name] {
		if keep(s.labels) {
			t += s.value
		}
	}
	return t
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
// when there is none, it does not parse, or it names a kind without an
// expected status.
func parseSoakAnswers(out []byte) (soakAnswers, error) {
	var a soakAnswers
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), answersPrefix)
		if !ok {
			continue
		}
		if err := json.Unmarshal([]byte(line), &a); err != nil {
			return a, fmt.Errorf("parse soak answers %q: %w", line, err)
		}
		if len(a.Expect) == 0 {
			return a, fmt.Errorf("parse soak answers %q: no expected statuses", line)
		}
		return a, nil
	}
	return a, errors.New("wrk printed no soak answers line")
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
		if k := kinds[kind]; k != nil {
			return k
		}
		k := &kindAnswers{kind: kind, expect: a.Expect[kind]}
		kinds[kind] = k
		return k
	}
	for kind := range a.Expect {
		get(kind)
	}
	for _, key := range sortedKeys(a.Answers) {
		kind, status, _ := strings.Cut(key, " ")
		k := get(kind)
		n := a.Answers[key]
		bad := a.Unexpected[key]
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
		if kinds[kind].expect != 0 {
			out = append(out, *kinds[kind])
		}
	}
	for _, kind := range sortedKeys(kinds) {
		if kinds[kind].expect == 0 {
			out = append(out, *kinds[kind])
		}
	}
	return out
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
	f.first = maxOf(values[:f.window])
	f.last = maxOf(values[len(values)-f.window:])
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

func maxOf(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs[1:] {
		m = max(m, x)
	}
	return m
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
	settings           [][2]string
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
	var out []sample
	for _, s := range r.samples {
		if s.phase == "load" && s.at >= r.opts.warmup {
			out = append(out, s)
		}
	}
	return out
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
	var before, after *sample
	for i := range samples {
		switch samples[i].phase {
		case "before":
			before = &samples[i]
		case "after":
			after = &samples[i]
		}
	}
	if before == nil || after == nil {
		return f
	}
	f.window, f.first, f.last = 1, before.goroutines, after.goroutines
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
	opts, err := parseSoakOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench soak: "+format+"\n", a...) }

	res := &soakResults{opts: opts, startLoad: loadAverage()}
	h, err := startHarness(ctx, opts.harnessOptions, stderr, logf)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.stop()) }()
	res.machine, res.settings = h.machine, h.settings

	cfg, err := pgx.ParseConfig(h.pg.srv.URL(database))
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

	w := wrkRun{wrk: h.wrk, script: h.scripts[soakScript], url: h.svc.url, threads: opts.threads, connections: opts.connections,
		duration: opts.duration, args: []string{"1", "1", strconv.Itoa(opts.seed)}, servicePID: h.svc.cmd.Process.Pid, token: h.svc.token}
	type wrkDone struct {
		r   wrkResult
		out []byte
		err error
	}
	done := make(chan wrkDone, 1)
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logf("load for %v: wrk, %d threads, %d connections; a sample every %v, judged from %v", opts.duration, opts.threads, opts.connections, opts.interval, opts.warmup)
	start := time.Now()
	go func() {
		r, out, err := w.runOutput(wctx)
		done <- wrkDone{r, out, err}
	}()
	tick := time.NewTicker(opts.interval)
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
			if at >= opts.duration {
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
