//go:build linux

package main

import (
	"context"
	"embed"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
)

// scripts holds the wrk Lua scripts and the pgbench scripts.
//
//go:embed scripts
var scripts embed.FS

// scenario is one line of the report: one kind of request, driven by wrk,
// and the same SQL driven by pgbench.
type scenario struct {
	n    int
	name string
	// lua is the wrk script that makes the requests, after common.lua; ""
	// sends path every time.
	lua  string
	path string
	// expectStatus says that the script counts the expected and the
	// unexpected answers itself (scenario 4, whose answer is a 400);
	// otherwise every status outside 2xx and 3xx is an error.
	expectStatus bool
	// pgbench is the pgbench script with the same SQL; "" for none.
	pgbench string
	// driverCode, when set, says that the ceiling runs the script's SQL
	// through driverRun instead of pgbench, each execution failing with
	// this SQLSTATE.
	driverCode string
	// The targets of the performance issue; zero for none.
	minRatio float64
	maxP99   time.Duration
}

// scenarios are the six of the performance issue, in its order, and the
// keyed create of the safe-writes issue, to compare with scenario 3.
var scenarios = []scenario{
	{n: 1, name: "GET /users/{id}", lua: "get.lua", pgbench: "get.sql", minRatio: 0.8, maxP99: 10 * time.Millisecond},
	{n: 2, name: "GET /users?after=…&limit=50", lua: "list.lua", pgbench: "list.sql", minRatio: 0.7, maxP99: 10 * time.Millisecond},
	{n: 3, name: "POST /users (new name)", lua: "create.lua", pgbench: "create.sql", minRatio: 0.8, maxP99: 10 * time.Millisecond},
	{n: 4, name: "POST /users (taken name: 400)", lua: "existing.lua", expectStatus: true, pgbench: "existing.sql", driverCode: pgerrcode.UniqueViolation, minRatio: 0.7},
	{n: 5, name: "PUT /users/{id} (rename)", lua: "rename.lua", pgbench: "rename.sql", minRatio: 0.7},
	{n: 6, name: "GET /healthz (no database)", path: "/healthz"},
	{n: 7, name: "POST /users (new name, Idempotency-Key)", lua: "create_keyed.lua"},
}

// writes reports whether the scenario's runs change the table: add rows,
// or leave dead ones behind.
func (s scenario) writes() bool { return s.n == 3 || s.n == 4 || s.n == 5 || s.n == 7 }

// usesDatabase reports whether the scenario's requests reach the database.
func (s scenario) usesDatabase() bool { return s.n != 6 }

// bounds returns the range of ids or names that scenario s draws from, in a
// table seeded with users 1 to seed, each named for its id in decimal.
// Scenario 4 posts the names of the lower half and scenario 5 renames the
// upper half, so the rounds can take turns: no rename takes away a name
// that scenario 4 counts on being taken. Scenario 2's after leaves a full
// page above it.
func (s scenario) bounds(seed int) (lo, hi int) {
	switch s.n {
	case 1:
		return 1, seed
	case 2:
		return 0, seed - listMaxRows
	case 4:
		return 1, seed / 2
	case 5:
		return seed/2 + 1, seed
	}
	return 0, 0
}

// listMaxRows is what the list handler asks the database for a page of 50:
// one row more, which tells whether another page follows.
const listMaxRows = 51

// soakScript is the wrk script of the soak: a mix of every kind of request,
// each checked against the answer it must get.
const soakScript = "soak.lua"

// writeScripts writes the scripts that the scenarios and the soak need
// into dir, each wrk script prefixed with common.lua (wrk runs one
// script), and returns the path of each by its name.
func writeScripts(dir string) (map[string]string, error) {
	common, err := scripts.ReadFile("scripts/common.lua")
	if err != nil {
		return nil, err
	}
	// common.lua alone serves fixed paths: scenario 6 and the deep pages.
	names := []string{"common.lua", soakScript}
	for _, s := range scenarios {
		names = append(names, s.lua, s.pgbench)
	}
	paths := map[string]string{}
	for _, name := range names {
		if name == "" {
			continue
		}
		body, err := scripts.ReadFile("scripts/" + name)
		if err != nil {
			return nil, err
		}
		if filepath.Ext(name) == ".lua" && name != "common.lua" {
			body = slices.Concat(common, []byte("\n"), body)
		}
		paths[name] = filepath.Join(dir, name)
		if err := os.WriteFile(paths[name], body, 0o644); err != nil {
			return nil, fmt.Errorf("write script %s: %w", name, err)
		}
	}
	return paths, nil
}

// pgbenchVar matches, in a pgbench script, a "::" cast or a ":name"
// variable.
var pgbenchVar = regexp.MustCompile(`::|:[A-Za-z_][A-Za-z0-9_]*`)

// scriptSQL returns the SQL statement of a pgbench script as pgbench -M
// prepared sends it: without the comments and the meta-commands, its
// variables replaced by $1, $2, ... in the order they first appear; and the
// variables' names in that order.
func scriptSQL(script string) (string, []string) {
	var lines []string
	for line := range strings.Lines(script) {
		if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "--") && !strings.HasPrefix(t, `\`) {
			lines = append(lines, strings.TrimRight(line, "\n"))
		}
	}
	var vars []string
	sql := pgbenchVar.ReplaceAllStringFunc(strings.Join(lines, "\n"), func(m string) string {
		if m == "::" {
			return m
		}
		k := slices.Index(vars, m[1:])
		if k < 0 {
			vars, k = append(vars, m[1:]), len(vars)
		}
		return "$" + strconv.Itoa(k+1)
	})
	return strings.TrimSuffix(strings.TrimSpace(sql), ";"), vars
}

// results is everything one benchmark run measured.
type results struct {
	machine   machine
	settings  []string // PostgreSQL's
	opts      options
	scenarios []*scenarioResults
	deep      *deepResults // nil when skipped
	// calDriver and calPgbench are, by client count, the driver and
	// pgbench on scenario 1's SQL: how the driver, which stands in for
	// pgbench in scenario 4, compares with it. Should the driver cost more
	// CPU per transaction than pgbench, that CPU is taken from the server,
	// which shares the cores, and scenario 4's ceiling is understated (its
	// ratio flatters the service); should it cost less, it is overstated.
	calDriver, calPgbench map[int][]pgbenchResult
	final                 memory // the service's, at the end of the run
	logLines              int    // lines the service logged at warn or above
	logTail               string // the last few of them
	startLoad, endLoad    string // how busy the machine was besides the benchmark
}

// scenarioResults are one scenario's runs, one per round, of one of the
// service's binaries (-service-bin) with one value of the swept setting
// (-sweep) when there is one.
type scenarioResults struct {
	scenario
	variant     string   // the binary, when there are several, and KEY=VALUE of the sweep; or ""
	bin         string   // the service's binary
	env         []string // the service's extra environment
	wrk         []wrkResult
	mem         []memory                // the service's, after each wrk run
	ceilingRuns map[int][]pgbenchResult // by client count; shared by the variants
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
	o, err := parseOptions(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }

	startLoad := loadAverage()
	h, err := startHarness(ctx, o.harnessOptions, logf)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.stop()) }()
	res := &results{opts: o, startLoad: startLoad, machine: h.machine, settings: h.settings,
		calDriver: map[int][]pgbenchResult{}, calPgbench: map[int][]pgbenchResult{}}
	ce := ceiling{binDir: h.binDir, url: h.pg.URL(database), scripts: h.scripts, seed: o.seed, duration: o.duration}

	// tag numbers the runs, so that each run's new names are its own.
	tag := 0
	// dirty says that a run has written to the table since it was last
	// restored; fresh restores it before a run that uses the table.
	dirty := false
	fresh := func(s scenario) error {
		if dirty && s.usesDatabase() {
			if err := h.restore(ctx, o.seed); err != nil {
				return err
			}
			dirty = false
		}
		dirty = dirty || s.writes()
		return nil
	}
	wrkFor := func(s scenario, d time.Duration) wrkRun {
		tag++
		lo, hi := s.bounds(o.seed)
		w := wrkRun{wrk: h.wrk, url: h.svc.url, threads: o.threads, connections: o.connections, duration: d,
			args: []string{fmt.Sprint(tag), fmt.Sprint(lo), fmt.Sprint(hi)}, servicePID: h.svc.cmd.Process.Pid, token: h.svc.token}
		if s.lua == "" {
			w.script, w.url = h.scripts["common.lua"], h.svc.url+s.path
		} else {
			w.script = h.scripts[s.lua]
		}
		return w
	}
	svcBin, svcEnv := o.serviceBins[0], o.env
	serveWith := func(bin string, env []string) error {
		if bin == svcBin && slices.Equal(env, svcEnv) {
			return nil
		}
		svcBin, svcEnv = bin, env
		return h.startService(ctx, bin, env)
	}

	var byScenario [][]*scenarioResults
	for _, s := range scenarios {
		if !slices.Contains(o.scenarios, s.n) {
			continue
		}
		variants := o.variants(s)
		byScenario = append(byScenario, variants)
		res.scenarios = append(res.scenarios, variants...)
	}

	if o.warmup > 0 {
		logf("warming up: scenario 1 for %v", o.warmup)
		if _, _, err := wrkFor(scenarios[0], o.warmup).run(ctx); err != nil {
			return err
		}
	}
	// Rounds rather than one scenario's runs in a row, and pgbench right
	// after wrk: a busy spell on the machine then spreads over the
	// scenarios, and each ratio compares figures taken close together.
	for round := 1; round <= o.reps; round++ {
		for _, variants := range byScenario {
			for _, sr := range variants {
				if err := serveWith(sr.bin, sr.env); err != nil {
					return err
				}
				if err := fresh(sr.scenario); err != nil {
					return err
				}
				r, _, err := wrkFor(sr.scenario, o.duration).run(ctx)
				if err != nil {
					return err
				}
				if h.svc.exited() {
					return fmt.Errorf("the service exited during scenario %d; its log ends:\n%s", sr.n, h.svc.logTail())
				}
				mem, err := h.svc.memory()
				if err != nil {
					return err
				}
				sr.wrk, sr.mem = append(sr.wrk, r), append(sr.mem, mem)
				logf("round %d/%d, scenario %d %s: %.0f req/s, p50 %s, p99 %s, errors %d, RSS %s, service CPU %.1f µs/request",
					round, o.reps, sr.n, sr.label(), r.reqPerSec(), fmtUS(r.P50US), fmtUS(r.P99US),
					r.errors(sr.expectStatus), fmtMiB(mem.rss), perOp(r.cpu.service, r.Requests))
			}
			sr := variants[0]
			if sr.pgbench == "" {
				continue
			}
			for _, c := range o.pgbenchClients {
				if err := fresh(sr.scenario); err != nil {
					return err
				}
				tag++
				pr, err := ce.run(ctx, sr.scenario, c, tag)
				if err != nil {
					return err
				}
				sr.ceilingRuns[c] = append(sr.ceilingRuns[c], pr)
				logf("round %d/%d, scenario %d, %s -c %d: %.0f tps, failed %d", round, o.reps, sr.n, ceilingTool(sr.scenario), c, pr.tps, pr.failed)
				if sr.driverCode == "" {
					continue
				}
				if err := fresh(scenarios[0]); err != nil {
					return err
				}
				tag++
				dr, err := ce.driver(ctx, scenarios[0], c, tag, "")
				if err != nil {
					return err
				}
				tag++
				pr, err = ce.run(ctx, scenarios[0], c, tag)
				if err != nil {
					return err
				}
				res.calDriver[c], res.calPgbench[c] = append(res.calDriver[c], dr), append(res.calPgbench[c], pr)
				logf("round %d/%d, scenario 1's SQL, -c %d: driver %.0f tps, pgbench %.0f tps", round, o.reps, c, dr.tps, pr.tps)
			}
		}
	}

	if o.deepRows > 0 {
		// The deep pages start from the seed users too, on the first
		// binary and the service's settings without the sweep.
		if err := errors.Join(fresh(scenarios[0]), serveWith(o.serviceBins[0], o.env)); err != nil {
			return err
		}
		if res.deep, err = runDeep(ctx, o, h, wrkFor, logf); err != nil {
			return err
		}
	}
	if res.final, err = h.svc.memory(); err != nil {
		return err
	}
	res.logLines, res.logTail = h.svc.trouble()
	res.endLoad = loadAverage()
	return writeReport(stdout, res)
}

// variants returns scenario s's runs in a round: one per service binary
// and value of the swept setting, in that order, sharing one ceiling.
func (o options) variants(s scenario) []*scenarioResults {
	values := []string{""}
	if o.sweepKey != "" {
		values = o.sweepValues
	}
	ceilingRuns := map[int][]pgbenchResult{}
	var vs []*scenarioResults
	for _, bin := range o.serviceBins {
		for _, v := range values {
			sr := &scenarioResults{scenario: s, bin: bin, env: o.env, ceilingRuns: ceilingRuns}
			var label []string
			if len(o.serviceBins) > 1 {
				label = append(label, bin)
			}
			if v != "" {
				sr.env = append(slices.Clone(o.env), o.sweepKey+"="+v)
				label = append(label, o.sweepKey+"="+v)
			}
			sr.variant = strings.Join(label, ", ")
			vs = append(vs, sr)
		}
	}
	return vs
}

// runDeep grows the table to -deep-rows users and compares a page near
// its start with one near its end, taking turns for -reps rounds. Both
// pages are full and have a next page, so they differ only in depth.
func runDeep(ctx context.Context, o options, h *harness, wrkFor func(scenario, time.Duration) wrkRun, logf func(string, ...any)) (*deepResults, error) {
	logf("growing the table to %d users for the deep pages", o.deepRows)
	if err := h.growTo(ctx, o.deepRows); err != nil {
		return nil, err
	}
	maxID, err := h.queryInts(ctx, "SELECT max(id) FROM users", 1)
	if err != nil {
		return nil, err
	}
	d := &deepResults{rows: o.deepRows, firstAfter: 1000, deepAfter: maxID[0] - 1000}
	for round := 1; round <= o.reps; round++ {
		for _, p := range []struct {
			after int
			into  *[]wrkResult
		}{{d.firstAfter, &d.first}, {d.deepAfter, &d.deep}} {
			r, _, err := wrkFor(scenario{path: fmt.Sprintf("/users?after=%d&limit=50", p.after)}, o.duration).run(ctx)
			if err != nil {
				return nil, err
			}
			*p.into = append(*p.into, r)
			logf("round %d/%d, deep pages, after=%d: %.0f req/s, p50 %s, p99 %s, errors %d",
				round, o.reps, p.after, r.reqPerSec(), fmtUS(r.P50US), fmtUS(r.P99US), r.errors(false))
		}
	}
	return d, nil
}

// ceiling runs the SQL of the scenarios on the database alone.
type ceiling struct {
	binDir, url string
	scripts     map[string]string
	seed        int
	duration    time.Duration
}

// run measures scenario s's SQL with c clients: through the driver, each
// execution failing as expected, when the scenario says so, else through
// pgbench. tag makes the run's new names its own.
func (ce ceiling) run(ctx context.Context, s scenario, c, tag int) (pgbenchResult, error) {
	if s.driverCode != "" {
		return ce.driver(ctx, s, c, tag, s.driverCode)
	}
	lo, hi := s.bounds(ce.seed)
	return pgbenchRun{binDir: ce.binDir, url: ce.url, script: ce.scripts[s.pgbench], clients: c, duration: ce.duration,
		vars: map[string]int{"lo": lo, "hi": hi, "max_rows": listMaxRows, "base": tag * 1e12, "n": 0}}.run(ctx)
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
	return driverRun{url: ce.url, sql: sql, lo: lo, hi: hi, clients: c, duration: ce.duration, wantCode: wantCode, seed: uint64(tag)}.run(ctx)
}

// ceilingTool names what measures scenario s's ceiling.
func ceilingTool(s scenario) string {
	if s.driverCode != "" {
		return "driver"
	}
	return "pgbench"
}

// bestCeiling returns the client count with the best median TPS, with the
// ceiling's runs at it; ok is false when the scenario has no ceiling.
func (sr *scenarioResults) bestCeiling() (c int, runs []pgbenchResult, ok bool) {
	byClients := map[int][]float64{}
	for c, rs := range sr.ceilingRuns {
		byClients[c] = collect(rs, func(r pgbenchResult) float64 { return r.tps })
	}
	c, _, ok = best(byClients)
	return c, sr.ceilingRuns[c], ok
}
