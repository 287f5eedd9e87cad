//go:build linux

package main

import (
	"cmp"
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// rssTarget is the bound on the service's memory at the end of the
// run.
const rssTarget = 40 << 20

// deepTarget is the bound on the time of a deep page over the first.
const deepTarget = 1.5

// spread is the median of repeated measurements with their range: on a
// shared, noisy machine the median resists an outlier round, and the range
// shows how noisy it was.
type spread struct {
	median, min, max float64
	n                int
}

// summarize returns the spread of xs; the zero spread when xs is empty.
// The median of an even count is the mean of the middle two.
func summarize(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	s := slices.Sorted(slices.Values(xs))
	m := (s[(len(s)-1)/2] + s[len(s)/2]) / 2
	return spread{median: m, min: s[0], max: s[len(s)-1], n: len(s)}
}

// collect returns f of each element of xs.
func collect[T any](xs []T, f func(T) float64) []float64 {
	out := make([]float64, len(xs))
	for i, x := range xs {
		out[i] = f(x)
	}
	return out
}

// median is the median of f over xs.
func median[T any](xs []T, f func(T) float64) float64 { return summarize(collect(xs, f)).median }

// best returns the key whose values have the highest median, and that
// spread; ties go to the smaller key, the fewer clients. ok is false for an
// empty map.
func best[K cmp.Ordered](byKey map[K][]float64) (key K, s spread, ok bool) {
	for _, k := range sortedKeys(byKey) {
		if ks := summarize(byKey[k]); !ok || ks.median > s.median {
			key, s, ok = k, ks, true
		}
	}
	return key, s, ok
}

// sortedKeys returns m's keys in order, for output that does not depend on
// map iteration.
func sortedKeys[K cmp.Ordered, V any](m map[K]V) []K {
	return slices.Sorted(maps.Keys(m))
}

// machine is what the report says of the machine and the software.
type machine struct {
	date, cpu, cores, memory, kernel string
	postgres, pgbench, wrk, goCmd    string
	service                          string // the binary's version and Go
}

// describeMachine gathers the facts that make a run's figures comparable
// with another's. A fact that cannot be read says why instead.
func describeMachine(ctx context.Context, binDir, wrk, serviceBin string) machine {
	m := machine{
		date:     time.Now().UTC().Format(time.RFC3339),
		cpu:      "(unknown)",
		cores:    strconv.Itoa(runtime.NumCPU()),
		memory:   "(unknown)",
		kernel:   firstLine(os.ReadFile("/proc/sys/kernel/osrelease")),
		postgres: firstLine(exec.CommandContext(ctx, filepath.Join(binDir, "postgres"), "--version").Output()),
		pgbench:  firstLine(exec.CommandContext(ctx, pgbenchPath(binDir), "--version").Output()),
		goCmd:    fmt.Sprintf("go version %s %s/%s", runtime.Version(), runtime.GOOS, runtime.GOARCH), // make built bench and the service alike
	}
	if fs, err := procfs.NewDefaultFS(); err == nil {
		if cpus, err := fs.CPUInfo(); err == nil && len(cpus) > 0 {
			m.cpu = cpus[0].ModelName
		}
		if mi, err := fs.Meminfo(); err == nil && mi.MemTotal != nil {
			m.memory = fmt.Sprintf("%.1f GiB", float64(*mi.MemTotal)/(1<<20))
		}
	}
	// wrk -v prints its version and usage, and exits with status 1.
	out, _ := exec.CommandContext(ctx, wrk, "-v").CombinedOutput()
	m.wrk = firstLine(out, nil)
	m.service = firstLine(exec.CommandContext(ctx, serviceBin, "version").Output())
	if bi, err := buildinfo.ReadFile(serviceBin); err == nil {
		m.service += ", built with " + bi.GoVersion
	}
	return m
}

// firstLine returns the first line of b, or the error.
func firstLine(b []byte, err error) string {
	if err != nil {
		return fmt.Sprintf("(unknown: %v)", err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return line
}

// loadAverage returns the 1, 5 and 15 minute load averages.
func loadAverage() string {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return "(unknown)"
	}
	l, err := fs.LoadAvg()
	if err != nil {
		return "(unknown)"
	}
	return fmt.Sprintf("%.2f %.2f %.2f", l.Load1, l.Load5, l.Load15)
}

// writeTable writes m as a report's machine table, with the load average
// at the start and the end of the run, then extraRow when it is not empty,
// and the pgbench row when withPgbench.
func (m machine) writeTable(p func(string, ...any), startLoad, endLoad, extraRow string, withPgbench bool) {
	p("| machine | |")
	p("|---|---|")
	p("| CPU | %s, %s cores (as Go sees them) |", m.cpu, m.cores)
	p("| memory | %s |", m.memory)
	p("| kernel | %s |", m.kernel)
	p("| load average (1, 5, 15 min) | %s at the start, %s at the end |", startLoad, endLoad)
	if extraRow != "" {
		p("%s", extraRow)
	}
	p("| PostgreSQL | %s |", m.postgres)
	if withPgbench {
		p("| pgbench | %s |", m.pgbench)
	}
	p("| wrk | %s |", m.wrk)
	p("| Go | %s |", m.goCmd)
	p("| service | %s |", m.service)
	p("")
}

// envText returns the service's extra environment joined, or "none".
func envText(env []string) string {
	if len(env) == 0 {
		return "none"
	}
	return strings.Join(env, " ")
}

func fmtUS(us float64) string { return fmt.Sprintf("%.2f ms", us/1000) }

func fmtMiB(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

// fmtSpread formats a spread of counts per second: the median, then the
// range when there is more than one measurement.
func fmtSpread(s spread) string {
	if s.n <= 1 {
		return fmt.Sprintf("%.0f", s.median)
	}
	return fmt.Sprintf("%.0f [%.0f–%.0f]", s.median, s.min, s.max)
}

// shellQuote quotes s for a POSIX shell when it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=.,/:") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// command returns the command that repeats a run with these arguments:
// prefix is "make bench", or "bin/bench soak".
func command(prefix string, args []string) string {
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	if prefix == "make bench" && len(args) > 0 {
		return prefix + " BENCH_ARGS=" + shellQuote(strings.Join(quoted, " "))
	}
	return strings.TrimSpace(prefix + " " + strings.Join(quoted, " "))
}

// verdict is a scenario's outcome against its targets.
type verdict struct {
	target string // the targets, "" for none
	met    string // "yes", or "no: " and why
}

// judge compares a scenario's figures with its targets. Errors fail every
// target: a run with errors measured something else.
func judge(s scenario, ratio float64, p99US float64, errs int64) verdict {
	var targets, misses []string
	if s.minRatio > 0 {
		targets = append(targets, fmt.Sprintf("ratio ≥ %.1f", s.minRatio))
		if ratio < s.minRatio {
			misses = append(misses, fmt.Sprintf("ratio %.2f", ratio))
		}
	}
	if s.maxP99 > 0 {
		targets = append(targets, fmt.Sprintf("p99 < %v", s.maxP99))
		if p99US*float64(time.Microsecond) >= float64(s.maxP99) {
			misses = append(misses, "p99 "+fmtUS(p99US))
		}
	}
	if len(targets) == 0 {
		return verdict{target: "–", met: "–"}
	}
	if errs > 0 {
		misses = append(misses, fmt.Sprintf("%d errors", errs))
	}
	v := verdict{target: strings.Join(targets, ", "), met: "yes"}
	if len(misses) > 0 {
		v.met = "no: " + strings.Join(misses, ", ")
	}
	return v
}

// writeReport prints the run as markdown.
func writeReport(w io.Writer, res *results) error {
	o, m := res.opts, res.machine
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }

	p("### Run of %s", m.date)
	p("")
	p("Command: `%s`", command("make bench", o.args))
	p("")
	m.writeTable(p, res.startLoad, res.endLoad, "", true)
	p("Settings: %d users seeded; each run %v; %d round(s), figures are the median [min–max] over them.", o.seed, o.duration, o.reps)
	sweep := ""
	if o.sweepKey != "" {
		sweep = fmt.Sprintf("; each scenario runs once per value of %s in each round, a service started for each run", o.sweepKey)
	}
	if len(o.serviceBins) > 1 {
		sweep += fmt.Sprintf("; each scenario runs once per binary (%s) in each round, the first described above", strings.Join(o.serviceBins, ", "))
	}
	p("wrk: %d threads, %d connections. Service: the default settings (JSON access log at info, to a file) and a bearer token (AUTH_TOKENS), extra environment: %s%s.",
		o.threads, o.connections, envText(o.env), sweep)
	p("pgbench: `-M prepared -n`, clients %s (the best median counts), threads min(clients, cores).", strings.Trim(strings.Join(strings.Fields(fmt.Sprint(o.pgbenchClients)), ","), "[]"))
	p("PostgreSQL, over TCP on 127.0.0.1 for both: %s.", strings.Join(res.settings, ", "))
	p("")

	p("| # | scenario | req/s | p50 | p99 | errors | RSS | ceiling TPS | ratio | target | met? |")
	p("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, sr := range res.scenarios {
		rps := summarize(collect(sr.wrk, wrkResult.reqPerSec))
		p99 := median(sr.wrk, func(r wrkResult) float64 { return r.P99US })
		var errs, rss int64
		for i, r := range sr.wrk {
			errs += r.errors(sr.expectStatus)
			rss = max(rss, sr.mem[i].rss)
		}
		tps, ratio, ratioText := "–", 0.0, "–"
		if c, runs, ok := sr.bestCeiling(); ok {
			s := summarize(collect(runs, func(r pgbenchResult) float64 { return r.tps }))
			tps = fmt.Sprintf("%s (%s, c=%d)", fmtSpread(s), ceilingTool(sr.scenario), c)
			ratio = rps.median / s.median
			ratioText = fmt.Sprintf("%.2f", ratio)
		}
		v := judge(sr.scenario, ratio, p99, errs)
		p("| %d | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |", sr.n, sr.label(), fmtSpread(rps),
			fmtUS(median(sr.wrk, func(r wrkResult) float64 { return r.P50US })), fmtUS(p99), errs, fmtMiB(rss), tps, ratioText, v.target, v.met)
	}
	p("")
	writeCPUTable(p, res.scenarios)
	rssMet := "yes"
	if res.final.rss >= rssTarget {
		rssMet = "no"
	}
	p("Service RSS at the end of the run: %s (peak %s); target < %s: %s. RSS in the table is the largest at the end of the scenario's runs.",
		fmtMiB(res.final.rss), fmtMiB(res.final.hwm), fmtMiB(rssTarget), rssMet)
	p("Lines the service logged at warn or above: %d; any says something went wrong. (The requests in flight when wrk closes its connections "+
		"at the end of a run are 499s in the access log, not trouble.)", res.logLines)
	if res.logTail != "" {
		p("The last of them:\n\n```\n%s```", res.logTail)
	}
	p("")

	p("Ceiling TPS by client count (median):")
	p("")
	p("| # |%s", joinCells(o.pgbenchClients, func(c int) string { return fmt.Sprintf("c=%d", c) }))
	p("|---|%s", strings.Repeat("---|", len(o.pgbenchClients)))
	tpsRow := func(name string, runs map[int][]pgbenchResult) {
		p("| %s |%s", name, joinCells(o.pgbenchClients, func(c int) string {
			return fmt.Sprintf("%.0f", median(runs[c], func(r pgbenchResult) float64 { return r.tps }))
		}))
	}
	for i, sr := range res.scenarios {
		if sr.pgbench != "" && (i == 0 || res.scenarios[i-1].n != sr.n) {
			tpsRow(strconv.Itoa(sr.n), sr.ceilingRuns)
		}
	}
	if driver, pgbench := res.calDriver, res.calPgbench; len(driver) > 0 {
		tpsRow("1's SQL, driver", driver)
		tpsRow("1's SQL, pgbench", pgbench)
		p("")
		tps := func(r pgbenchResult) float64 { return r.tps }
		var ratios []string
		for _, c := range o.pgbenchClients {
			ratios = append(ratios, fmt.Sprintf("%.2f at c=%d", median(driver[c], tps)/median(pgbench[c], tps), c))
		}
		p("The driver ÷ pgbench on scenario 1's SQL: %s. Below 1, the driver is the slower client, scenario 4's ceiling is understated and its ratio flatters the service; above 1, the reverse.",
			strings.Join(ratios, ", "))
	}
	p("")

	if d := res.deep; d != nil {
		p("Deep pages, `GET /users?after=…&limit=50` in a table of %d users:", d.rows)
		p("")
		p("| page | after | req/s | p50 | p99 | errors |")
		p("|---|---|---|---|---|---|")
		for _, pg := range []struct {
			name  string
			after int
			runs  []wrkResult
		}{{"near the start", d.firstAfter, d.first}, {"near the end", d.deepAfter, d.deep}} {
			var errs int64
			for _, r := range pg.runs {
				errs += r.errors(false)
			}
			p("| %s | %d | %s | %s | %s | %d |", pg.name, pg.after, fmtSpread(summarize(collect(pg.runs, wrkResult.reqPerSec))),
				fmtUS(median(pg.runs, func(r wrkResult) float64 { return r.P50US })), fmtUS(median(pg.runs, func(r wrkResult) float64 { return r.P99US })), errs)
		}
		ratio := median(d.first, wrkResult.reqPerSec) / median(d.deep, wrkResult.reqPerSec)
		met := "yes"
		if ratio > deepTarget {
			met = "no"
		}
		p("")
		p("Time per deep page ÷ time per first page (first req/s ÷ deep req/s): %.2f; target ≤ %.1f: %s.", ratio, deepTarget, met)
		p("")
	}
	p("Ratio: the service's median req/s ÷ the ceiling's median TPS at its best client count. " +
		"The ceiling is pgbench running the service's SQL (`cmd/bench/scripts/*.sql`, checked against `db/` by the tests); " +
		"for scenario 4, whose INSERT must fail, it is cmd/bench's driver (pgbench 15 aborts a client at such an error), " +
		"which prepares the statement once per connection as `pgbench -M prepared` does (rows \"1's SQL\" above compare the two clients). " +
		"wrk, the service and PostgreSQL share the cores, as pgbench (or the driver) and PostgreSQL do. " +
		"The service runs with its default pool (DB_MAX_CONNS unset) unless -env or -sweep says otherwise.")
	_, err := io.WriteString(w, b.String())
	return err
}

// label is the scenario's name, with the variant's binary and swept value.
func (sr *scenarioResults) label() string {
	if sr.variant == "" {
		return sr.name
	}
	return sr.name + ", " + sr.variant
}

// joinCells returns a table row's cells after the first: f of each x.
func joinCells[T any](xs []T, f func(T) string) string {
	var b strings.Builder
	for _, x := range xs {
		b.WriteString(" " + f(x) + " |")
	}
	return b.String()
}

// writeCPUTable prints where each scenario's CPU time went, per request,
// next to its ceiling's per transaction: on a machine whose cores the load
// generator, the service and PostgreSQL share, that is what bounds the
// ratio. "without the service" is the ratio the scenario would reach if
// the service cost no CPU at all, the machine as busy as it was.
func writeCPUTable(p func(string, ...any), scenarios []*scenarioResults) {
	p("Where the CPU time went, in µs of CPU per request (service) or per transaction (ceiling), medians over the rounds; " +
		"\"PostgreSQL\" is the machine's busy time less the service's and the client's, so it holds whatever else ran too:")
	p("")
	p("| # | service | wrk | PostgreSQL | total | machine busy | ceiling: client | ceiling: PostgreSQL | ceiling: total | ratio without the service |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	for _, sr := range scenarios {
		per := func(f func(cpuSample) time.Duration) float64 {
			return median(sr.wrk, func(r wrkResult) float64 { return perOp(f(r.cpu), r.Requests) })
		}
		svc, total := per(func(c cpuSample) time.Duration { return c.service }), per(func(c cpuSample) time.Duration { return c.machine })
		busy := median(sr.wrk, func(r wrkResult) float64 { return r.cpu.machine.Seconds() / (float64(r.DurationUS) / 1e6) })
		ceil := "– | – | – | –"
		if _, runs, ok := sr.bestCeiling(); ok {
			cper := func(f func(cpuSample) time.Duration) float64 {
				return median(runs, func(r pgbenchResult) float64 { return perOp(f(r.cpu), r.processed+r.failed) })
			}
			ct := cper(func(c cpuSample) time.Duration { return c.machine })
			without := "–"
			rps := median(sr.wrk, wrkResult.reqPerSec)
			if tps := median(runs, func(r pgbenchResult) float64 { return r.tps }); total > svc && tps > 0 {
				// As many requests per second as the machine's busy time
				// allows once the service's share of it is free.
				without = fmt.Sprintf("%.2f", rps/tps*total/(total-svc))
			}
			ceil = fmt.Sprintf("%.1f | %.1f | %.1f | %s", cper(func(c cpuSample) time.Duration { return c.client }), cper(cpuSample.rest), ct, without)
		}
		p("| %s | %.1f | %.1f | %.1f | %.1f | %.2f cores | %s |", sr.number(), svc, per(func(c cpuSample) time.Duration { return c.client }),
			per(cpuSample.rest), total, busy, ceil)
	}
	p("")
}

// number is the CPU table's first cell: the scenario's number, with the
// variant's binary and swept value.
func (sr *scenarioResults) number() string {
	if sr.variant == "" {
		return strconv.Itoa(sr.n)
	}
	return strconv.Itoa(sr.n) + ", " + sr.variant
}
