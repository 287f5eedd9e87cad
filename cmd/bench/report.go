package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// rssTarget is the bound on the service's memory at the end of the
// run.
const rssTarget = 40 << 20

// deepTarget is the bound on the time of a deep page over the first.
const deepTarget = 1.5

// machine is what the report says of the machine and the software.
type machine struct {
	date, cpu, cores, memory, kernel string
	postgres, pgbench, wrk, goCmd    string
	service                          string // the binary's version and Go
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

// describeSettings returns PostgreSQL's settings as name=value, and the
// service's extra environment joined, or "none".
func describeSettings(pgSettings [][2]string, env []string) (settings []string, extraEnv string) {
	for _, s := range pgSettings {
		settings = append(settings, s[0]+"="+s[1])
	}
	if len(env) == 0 {
		return settings, "none"
	}
	return settings, strings.Join(env, " ")
}

// describeMachine gathers the facts that make a run's figures comparable
// with another's. A fact that cannot be read says why instead.
func describeMachine(ctx context.Context, binDir, wrk, serviceBin string) machine {
	m := machine{
		date:     time.Now().UTC().Format(time.RFC3339),
		cpu:      cpuModel(),
		cores:    strconv.Itoa(runtime.NumCPU()),
		memory:   memTotal(),
		kernel:   firstLine(os.ReadFile("/proc/sys/kernel/osrelease")),
		postgres: firstLine(exec.CommandContext(ctx, filepath.Join(binDir, "postgres"), "--version").Output()),
		pgbench:  firstLine(exec.CommandContext(ctx, pgbenchPath(binDir), "--version").Output()),
		goCmd:    firstLine(goCommand(ctx, "version").Output()),
	}
	// wrk -v prints its version and usage, and exits with status 1.
	out, _ := exec.CommandContext(ctx, wrk, "-v").CombinedOutput()
	m.wrk = firstLine(out, nil)
	version := firstLine(exec.CommandContext(ctx, serviceBin, "version").Output())
	if bi, err := buildinfo.ReadFile(serviceBin); err == nil {
		version += ", built with " + bi.GoVersion
	}
	m.service = version
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

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return fmt.Sprintf("(unknown: %v)", err)
	}
	for line := range bytes.Lines(b) {
		if k, v, ok := strings.Cut(string(line), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "(unknown: no model name in /proc/cpuinfo)"
}

func memTotal() string {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return fmt.Sprintf("(unknown: %v)", err)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				return fmt.Sprintf("%.1f GiB", float64(kb)/(1<<20))
			}
		}
	}
	return "(unknown: no MemTotal in /proc/meminfo)"
}

// loadAverage returns the 1, 5 and 15 minute load averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "(unknown)"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "(unknown)"
	}
	return strings.Join(f[:3], " ")
}

// fmtUS formats microseconds as milliseconds.
func fmtUS(us float64) string {
	return fmt.Sprintf("%.2f ms", us/1000)
}

// fmtMiB formats bytes as MiB.
func fmtMiB(b int64) string {
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

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

// command returns the make command that repeats a run with these arguments.
func command(args []string) string {
	if len(args) == 0 {
		return "make bench"
	}
	quoted := make([]string, len(args))
	for i, a := range args {
		quoted[i] = shellQuote(a)
	}
	return "make bench BENCH_ARGS=" + shellQuote(strings.Join(quoted, " "))
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
	p("Command: `%s`", command(o.args))
	p("")
	m.writeTable(p, res.startLoad, res.endLoad, "", true)
	settings, env := describeSettings(res.settings, o.env)
	p("Settings: %d users seeded; each run %v; %d round(s), figures are the median [min–max] over them.", o.seed, o.duration, o.reps)
	p("wrk: %d threads, %d connections. Service: the default settings (JSON access log at info, to a file) and a bearer token (AUTH_TOKENS), extra environment: %s.", o.threads, o.connections, env)
	p("pgbench: `-M prepared -n`, clients %s (the best median counts), threads min(clients, cores).", joinInts(o.pgbenchClients))
	p("PostgreSQL, over TCP on 127.0.0.1 for both: %s.", strings.Join(settings, ", "))
	p("")

	p("| # | scenario | req/s | p50 | p99 | errors | RSS | ceiling TPS | ratio | target | met? |")
	p("|---|---|---|---|---|---|---|---|---|---|---|")
	for _, sr := range res.scenarios {
		rps := summarize(collect(sr.wrk, wrkResult.reqPerSec))
		p50 := summarize(collect(sr.wrk, func(r wrkResult) float64 { return r.P50US }))
		p99 := summarize(collect(sr.wrk, func(r wrkResult) float64 { return r.P99US }))
		var errs int64
		for _, r := range sr.wrk {
			errs += r.errors(sr.expectStatus)
		}
		var rss int64
		for _, m := range sr.mem {
			rss = max(rss, m.rss)
		}
		tps, ratio := "–", 0.0
		byClients := map[int][]float64{}
		for c, rs := range sr.ceilingRuns {
			byClients[c] = collect(rs, func(r pgbenchResult) float64 { return r.tps })
		}
		if c, s, ok := best(byClients); ok {
			tps = fmt.Sprintf("%s (%s, c=%d)", fmtSpread(s), ceilingTool(sr.scenario), c)
			ratio = rps.median / s.median
		}
		ratioText := "–"
		if ratio > 0 {
			ratioText = fmt.Sprintf("%.2f", ratio)
		}
		v := judge(sr.scenario, ratio, p99.median, errs)
		p("| %d | %s | %s | %s | %s | %d | %s | %s | %s | %s | %s |",
			sr.n, sr.name, fmtSpread(rps), fmtUS(p50.median), fmtUS(p99.median), errs, fmtMiB(rss), tps, ratioText, v.target, v.met)
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
		p("The last of them:")
		p("")
		p("```")
		p("%s", res.logTail)
		p("```")
	}
	p("")

	p("Ceiling TPS by client count (median):")
	p("")
	header, rule := "| # |", "|---|"
	for _, c := range o.pgbenchClients {
		header += fmt.Sprintf(" c=%d |", c)
		rule += "---|"
	}
	p("%s", header)
	p("%s", rule)
	for _, sr := range res.scenarios {
		if sr.pgbench == "" {
			continue
		}
		p("%s", tpsRow(strconv.Itoa(sr.n), o.pgbenchClients, sr.ceilingRuns))
	}
	if len(res.calibration) > 0 {
		pick := func(f func(calibration) pgbenchResult) map[int][]pgbenchResult {
			m := map[int][]pgbenchResult{}
			for c, cals := range res.calibration {
				for _, cal := range cals {
					m[c] = append(m[c], f(cal))
				}
			}
			return m
		}
		driver := pick(func(c calibration) pgbenchResult { return c.driverGet })
		pgbench := pick(func(c calibration) pgbenchResult { return c.pgbenchGet })
		p("%s", tpsRow("1's SQL, driver", o.pgbenchClients, driver))
		p("%s", tpsRow("1's SQL, pgbench", o.pgbenchClients, pgbench))
		p("")
		tps := func(r pgbenchResult) float64 { return r.tps }
		var ratios []string
		for _, c := range o.pgbenchClients {
			ratios = append(ratios, fmt.Sprintf("%.2f at c=%d", summarize(collect(driver[c], tps)).median/summarize(collect(pgbench[c], tps)).median, c))
		}
		p("The driver ÷ pgbench on scenario 1's SQL: %s. Below 1, the driver is the slower client, scenario 4's ceiling is understated and its ratio flatters the service; above 1, the reverse.",
			strings.Join(ratios, ", "))
	}
	p("")

	if d := res.deep; d != nil {
		first := summarize(collect(d.first, wrkResult.reqPerSec))
		deep := summarize(collect(d.deep, wrkResult.reqPerSec))
		p("Deep pages, `GET /users?after=…&limit=50` in a table of %d users:", d.rows)
		p("")
		p("| page | after | req/s | p50 | p99 | errors |")
		p("|---|---|---|---|---|---|")
		for _, pg := range []struct {
			name  string
			after int
			runs  []wrkResult
			rps   spread
		}{{"near the start", d.firstAfter, d.first, first}, {"near the end", d.deepAfter, d.deep, deep}} {
			var errs int64
			for _, r := range pg.runs {
				errs += r.errors(false)
			}
			p("| %s | %d | %s | %s | %s | %d |", pg.name, pg.after, fmtSpread(pg.rps),
				fmtUS(summarize(collect(pg.runs, func(r wrkResult) float64 { return r.P50US })).median),
				fmtUS(summarize(collect(pg.runs, func(r wrkResult) float64 { return r.P99US })).median), errs)
		}
		ratio := first.median / deep.median
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
		"The service runs with its default pool (DB_MAX_CONNS unset: twice the cores, at least 4) unless -env says otherwise.")
	_, err := io.WriteString(w, b.String())
	return err
}

// tpsRow is a table row of the median TPS at each client count.
func tpsRow(name string, clients []int, runs map[int][]pgbenchResult) string {
	row := "| " + name + " |"
	for _, c := range clients {
		row += fmt.Sprintf(" %.0f |", summarize(collect(runs[c], func(r pgbenchResult) float64 { return r.tps })).median)
	}
	return row
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
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
		per := func(f func(wrkResult) time.Duration) float64 {
			return summarize(collect(sr.wrk, func(r wrkResult) float64 { return perOp(f(r), r.Requests) })).median
		}
		svc := per(func(r wrkResult) time.Duration { return r.cpu.service })
		wrk := per(func(r wrkResult) time.Duration { return r.cpu.client })
		pg := per(wrkResult.cpuRest)
		total := per(func(r wrkResult) time.Duration { return r.cpu.machine })
		busy := summarize(collect(sr.wrk, func(r wrkResult) float64 {
			return r.cpu.machine.Seconds() / (float64(r.DurationUS) / 1e6)
		})).median
		ceilClient, ceilPG, ceilTotal, without := "–", "–", "–", "–"
		if runs := sr.bestCeiling(); len(runs) > 0 {
			cperOp := func(f func(pgbenchResult) time.Duration) float64 {
				return summarize(collect(runs, func(r pgbenchResult) float64 {
					return perOp(f(r), r.processed+r.failed)
				})).median
			}
			ct := cperOp(func(r pgbenchResult) time.Duration { return r.cpu.machine })
			ceilClient = fmt.Sprintf("%.1f", cperOp(func(r pgbenchResult) time.Duration { return r.cpu.client }))
			ceilPG = fmt.Sprintf("%.1f", cperOp(func(r pgbenchResult) time.Duration { return r.cpu.rest() }))
			ceilTotal = fmt.Sprintf("%.1f", ct)
			rps := summarize(collect(sr.wrk, wrkResult.reqPerSec)).median
			tps := summarize(collect(runs, func(r pgbenchResult) float64 { return r.tps })).median
			if total > svc && tps > 0 {
				// As many requests per second as the machine's busy time
				// allows once the service's share of it is free.
				without = fmt.Sprintf("%.2f", rps/tps*total/(total-svc))
			}
		}
		p("| %d | %.1f | %.1f | %.1f | %.1f | %.2f cores | %s | %s | %s | %s |", sr.n, svc, wrk, pg, total, busy, ceilClient, ceilPG, ceilTotal, without)
	}
	p("")
}
