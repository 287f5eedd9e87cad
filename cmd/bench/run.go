package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"time"
)

// results is everything one benchmark run measured.
type results struct {
	machine   machine
	settings  [][2]string // PostgreSQL's
	opts      options
	scenarios []*scenarioResults
	deep      *deepResults // nil when skipped
	// calibration is, by client count, the driver and pgbench on scenario
	// 1's SQL: how the driver, scenario 4's ceiling, compares with pgbench.
	calibration map[int][]calibration
	final       memory // the service's, at the end of the run
	logLines    int    // lines the service logged at warn or above
	logTail     string // the last few of them
	startLoad   string // /proc/loadavg at the start and the end: how busy
	endLoad     string // the machine was besides the benchmark
}

// scenarioResults are one scenario's runs, one per round.
type scenarioResults struct {
	scenario
	wrk         []wrkResult
	mem         []memory                // the service's, after each wrk run
	ceilingRuns map[int][]pgbenchResult // by client count
}

// deepResults are the deep-page comparison's runs.
type deepResults struct {
	rows                  int
	firstAfter, deepAfter int
	first, deep           []wrkResult
}

// run is the whole program: it parses args, runs the benchmark and prints
// the report to stdout. Progress goes to stderr. Cancelling ctx stops the
// run; everything started is stopped and removed either way.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	opts, err := parseOptions(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }

	startLoad := loadAverage()
	h, err := startHarness(ctx, opts.harnessOptions, stderr, logf)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.stop()) }()
	res := &results{opts: opts, startLoad: startLoad, calibration: map[int][]calibration{},
		machine: h.machine, settings: h.settings}
	pg, svc, wrk, scriptPaths := h.pg, h.svc, h.wrk, h.scripts
	pgHost, pgPort, err := pg.hostPort()
	if err != nil {
		return err
	}
	ceil := ceiling{binDir: h.binDir, host: pgHost, port: pgPort, url: pg.srv.URL(database), scripts: scriptPaths,
		seed: opts.seed, duration: opts.duration}

	// tag numbers the runs, so that each run's new names are its own.
	tag := 0
	// dirty says that a run has written to the table since it was last
	// restored; fresh calls restore before a run that uses the table.
	dirty := false
	fresh := func(s scenario) error {
		if dirty && s.usesDatabase() {
			if err := pg.restore(ctx, opts.seed); err != nil {
				return err
			}
			dirty = false
		}
		dirty = dirty || s.writes()
		return nil
	}
	wrkFor := func(s scenario, d time.Duration) wrkRun {
		tag++
		lo, hi := s.bounds(opts.seed)
		w := wrkRun{wrk: wrk, url: svc.url, threads: opts.threads, connections: opts.connections, duration: d,
			args: []string{fmt.Sprint(tag), fmt.Sprint(lo), fmt.Sprint(hi)}, servicePID: svc.cmd.Process.Pid, token: svc.token}
		if s.lua == "" {
			w.script, w.url = scriptPaths["common.lua"], svc.url+s.path
		} else {
			w.script = scriptPaths[s.lua]
		}
		return w
	}

	if opts.warmup > 0 {
		logf("warming up: scenario 1 for %v", opts.warmup)
		if _, err := wrkFor(scenarios[0], opts.warmup).run(ctx); err != nil {
			return err
		}
	}

	for _, s := range scenarios {
		if slices.Contains(opts.scenarios, s.n) {
			res.scenarios = append(res.scenarios, &scenarioResults{scenario: s, ceilingRuns: map[int][]pgbenchResult{}})
		}
	}
	// Rounds rather than one scenario's runs in a row, and pgbench right
	// after wrk: a busy spell on the machine then spreads over the
	// scenarios, and each ratio compares figures taken close together.
	for round := 1; round <= opts.reps; round++ {
		for _, sr := range res.scenarios {
			if err := fresh(sr.scenario); err != nil {
				return err
			}
			r, err := wrkFor(sr.scenario, opts.duration).run(ctx)
			if err != nil {
				return err
			}
			if svc.exited() {
				return fmt.Errorf("the service exited during scenario %d; its log ends:\n%s", sr.n, svc.logTail())
			}
			mem, err := svc.memory()
			if err != nil {
				return err
			}
			sr.wrk, sr.mem = append(sr.wrk, r), append(sr.mem, mem)
			logf("round %d/%d, scenario %d %s: %.0f req/s, p50 %s, p99 %s, errors %d, RSS %s",
				round, opts.reps, sr.n, sr.name, r.reqPerSec(), fmtUS(r.P50US), fmtUS(r.P99US),
				r.errors(sr.expectStatus), fmtMiB(mem.rss))

			if sr.pgbench == "" {
				continue
			}
			for _, c := range opts.pgbenchClients {
				if err := fresh(sr.scenario); err != nil {
					return err
				}
				tag++
				pr, err := ceil.run(ctx, sr.scenario, c, tag)
				if err != nil {
					return err
				}
				sr.ceilingRuns[c] = append(sr.ceilingRuns[c], pr)
				logf("round %d/%d, scenario %d, %s -c %d: %.0f tps, failed %d", round, opts.reps, sr.n, ceilingTool(sr.scenario), c, pr.tps, pr.failed)
				if sr.driverCode != "" {
					if err := fresh(scenarios[0]); err != nil {
						return err
					}
					var cal calibration
					if cal.driverGet, cal.pgbenchGet, err = ceil.calibrate(ctx, c, &tag); err != nil {
						return err
					}
					res.calibration[c] = append(res.calibration[c], cal)
					logf("round %d/%d, scenario 1's SQL, -c %d: driver %.0f tps, pgbench %.0f tps", round, opts.reps, c, cal.driverGet.tps, cal.pgbenchGet.tps)
				}
			}
		}
	}

	if opts.deepRows > 0 {
		// The deep pages start from the seed users too.
		if err := fresh(scenarios[0]); err != nil {
			return err
		}
		if res.deep, err = runDeep(ctx, opts, pg, wrkFor, logf); err != nil {
			return err
		}
	}
	if res.final, err = svc.memory(); err != nil {
		return err
	}
	res.logLines, res.logTail = svc.trouble()
	res.endLoad = loadAverage()
	return writeReport(stdout, res)
}

// runDeep grows the table to -deep-rows users and compares a page near
// its start with one near its end, taking turns for -reps rounds. Both
// pages are full and have a next page, so they differ only in depth.
func runDeep(ctx context.Context, opts options, pg *postgres, wrkFor func(scenario, time.Duration) wrkRun, logf func(string, ...any)) (*deepResults, error) {
	logf("growing the table to %d users for the deep pages", opts.deepRows)
	if err := pg.growTo(ctx, opts.deepRows); err != nil {
		return nil, err
	}
	maxID, err := pg.maxID(ctx)
	if err != nil {
		return nil, err
	}
	d := &deepResults{rows: opts.deepRows, firstAfter: 1000, deepAfter: maxID - 1000}
	page := func(after int) scenario {
		return scenario{path: fmt.Sprintf("/users?after=%d&limit=50", after)}
	}
	for round := 1; round <= opts.reps; round++ {
		for _, p := range []struct {
			after int
			into  *[]wrkResult
		}{{d.firstAfter, &d.first}, {d.deepAfter, &d.deep}} {
			r, err := wrkFor(page(p.after), opts.duration).run(ctx)
			if err != nil {
				return nil, err
			}
			*p.into = append(*p.into, r)
			logf("round %d/%d, deep pages, after=%d: %.0f req/s, p50 %s, p99 %s, errors %d",
				round, opts.reps, p.after, r.reqPerSec(), fmtUS(r.P50US), fmtUS(r.P99US), r.errors(false))
		}
	}
	return d, nil
}

// ceiling runs the SQL of the scenarios on the database alone.
type ceiling struct {
	binDir, host, port string // for pgbench
	url                string // for the driver
	scripts            map[string]string
	seed               int
	duration           time.Duration
}

// run measures scenario s's SQL with c clients: through the driver, each
// execution failing as expected, when the scenario says so, else through
// pgbench. tag makes the run's new names its own.
func (ce ceiling) run(ctx context.Context, s scenario, c, tag int) (pgbenchResult, error) {
	if s.driverCode != "" {
		return ce.driver(ctx, s, c, tag, s.driverCode)
	}
	lo, hi := s.bounds(ce.seed)
	return pgbenchRun{
		binDir: ce.binDir, host: ce.host, port: ce.port, script: ce.scripts[s.pgbench],
		clients: c, duration: ce.duration,
		vars: map[string]int{"lo": lo, "hi": hi, "max_rows": listMaxRows, "base": tag * 1e12, "n": 0},
	}.run(ctx)
}

// driver measures scenario s's SQL with c clients through driverRun, each
// execution ending with SQLSTATE wantCode, or succeeding when it is "".
func (ce ceiling) driver(ctx context.Context, s scenario, c, tag int, wantCode string) (pgbenchResult, error) {
	script, err := os.ReadFile(ce.scripts[s.pgbench])
	if err != nil {
		return pgbenchResult{}, err
	}
	sql, vars := scriptSQL(string(script))
	if len(vars) != 1 {
		return pgbenchResult{}, fmt.Errorf("driver: %s has variables %q, want one", s.pgbench, vars)
	}
	lo, hi := s.bounds(ce.seed)
	return driverRun{url: ce.url, sql: sql, lo: lo, hi: hi, clients: c, duration: ce.duration,
		wantCode: wantCode, seed: uint64(tag)}.run(ctx)
}

// calibrate measures scenario 1's SQL with c clients through the driver
// and through pgbench, back to back.
func (ce ceiling) calibrate(ctx context.Context, c int, tag *int) (driver, pgbench pgbenchResult, err error) {
	*tag++
	if driver, err = ce.driver(ctx, scenarios[0], c, *tag, ""); err != nil {
		return driver, pgbench, err
	}
	*tag++
	pgbench, err = ce.run(ctx, scenarios[0], c, *tag)
	return driver, pgbench, err
}

// calibration is the driver and pgbench on the same SQL, scenario 1's, at
// one client count: how the driver, which stands in for pgbench in
// scenario 4, compares with it. The driver is a Go program; should it cost
// more CPU per transaction than pgbench, that CPU is taken from the server,
// which shares the cores, and scenario 4's ceiling is understated (its
// ratio flatters the service); should it cost less, the ceiling is
// overstated.
type calibration struct {
	driverGet, pgbenchGet pgbenchResult
}

// ceilingTool names what measures scenario s's ceiling.
func ceilingTool(s scenario) string {
	if s.driverCode != "" {
		return "driver"
	}
	return "pgbench"
}

// bestCeiling returns the ceiling's runs at the client count with the best
// median TPS, or nil when the scenario has no ceiling.
func (sr *scenarioResults) bestCeiling() []pgbenchResult {
	byClients := map[int][]float64{}
	for c, rs := range sr.ceilingRuns {
		byClients[c] = collect(rs, func(r pgbenchResult) float64 { return r.tps })
	}
	c, _, ok := best(byClients)
	if !ok {
		return nil
	}
	return sr.ceilingRuns[c]
}
