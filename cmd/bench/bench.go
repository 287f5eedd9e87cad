//go:build linux

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"
)

// scenario is one kind of request: wrk sends it to each target, and
// pgbench runs its SQL, as sqlc generated it, on the database alone.
type scenario struct {
	name   string // the benchmark's, after "Benchmark"
	lua    string // wrk's script, after common.lua
	sql    string // pgbench's
	writes bool   // its runs add rows
	feed   bool   // it needs the change feed: targets without skip it
}

var scenarios = []scenario{
	{"GetUser", "get.lua", "get.sql", false, false},
	{"ListUsers", "list.lua", "list.sql", false, false},
	{"CreateUser", "create.lua", "create.sql", true, false},
	{"ChangesPage", "changes.lua", "changes.sql", false, true},
}

// benchOptions are the benchmark's flags.
type benchOptions struct {
	harnessFlags
	duration time.Duration // of each wrk and pgbench run
	reps     int           // rounds: a sample of each benchmark per round
	clients  []int         // pgbench's client counts
}

// quick are the -quick defaults: a smoke run of about a minute, which
// shows that the harness works, not how fast the service is.
var quick = [][2]string{{"duration", "2s"}, {"reps", "1"}, {"seed", "20000"}, {"pgbench-clients", "4"}}

func parseBenchOptions(args []string, stderr io.Writer) (benchOptions, error) {
	var o benchOptions
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	o.register(fs)
	isQuick := fs.Bool("quick", false, fmt.Sprintf("a smoke run: %v, unless given", quick))
	fs.DurationVar(&o.duration, "duration", 5*time.Second, "each wrk and pgbench run, whole seconds")
	fs.IntVar(&o.reps, "reps", 10, "rounds: each is a sample of every benchmark, for benchstat")
	clients := fs.String("pgbench-clients", "2,16", "pgbench's client counts, comma-separated")
	if err := o.parse(fs, args, stderr); err != nil {
		return o, err
	}
	if *isQuick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for _, d := range quick {
			if !set[d[0]] {
				fs.Set(d[0], d[1])
			}
		}
	}
	for f := range strings.SplitSeq(*clients, ",") {
		c, err := strconv.Atoi(f)
		if err != nil || c < 1 {
			return o, fmt.Errorf("-pgbench-clients %q: want client counts, comma-separated", *clients)
		}
		o.clients = append(o.clients, c)
	}
	switch {
	case o.duration < time.Second || o.duration%time.Second != 0:
		return o, fmt.Errorf("-duration %v: want whole seconds", o.duration)
	case o.reps < 1:
		return o, fmt.Errorf("-reps %d: want 1 or more", o.reps)
	}
	return o, nil
}

// runBench is the benchmark: every scenario on each service binary and
// on the floor, and its SQL through pgbench, once per round. It prints
// each round's samples as it goes.
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) (err error) {
	o, err := parseBenchOptions(args, stderr)
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) { fmt.Fprintf(stderr, "bench: "+format+"\n", a...) }
	startLoad := loadAverage()
	h, err := startHarness(ctx, o.harnessFlags, true, logf)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, h.stop()) }()
	p := func(format string, a ...any) { fmt.Fprintf(stdout, format+"\n", a...) }
	// The configuration lines are the same for every run on a machine, so
	// that benchstat compares two runs in one table; the rest are
	// comments, which it ignores.
	p("goos: %s\ngoarch: %s\ncpu: %s\npkg: usersvc/cmd/bench", runtime.GOOS, runtime.GOARCH, cpuModel())
	p("# command: bench %s", strings.Join(args, " "))
	for _, f := range h.facts {
		p("# %s", f)
	}
	p("# load average at the start: %s", startLoad)

	// fresh resets the database of the run before when that run wrote, so
	// that every run starts from the seeded users, without the rows and
	// dead rows of the runs before, nor an autovacuum or a checkpoint that
	// they made due; it notes whether this one, on d, writes. tag numbers
	// the runs, so that their new names are their own.
	tag, dirty := 0, (*benchDB)(nil)
	fresh := func(d *benchDB, writes bool) (err error) {
		if dirty != nil {
			err = dirty.exec(ctx, dirty.reset...)
		}
		tag, dirty = tag+1, nil
		if writes {
			dirty = d
		}
		return err
	}
	// load runs wrk on t; any error but a closed connection at the end
	// fails the benchmark: the figures would not be the service's.
	load := func(t *target, script string, writes bool) (measured, error) {
		if err := fresh(t.db, writes); err != nil {
			return measured{}, err
		}
		r, m, out, err := h.wrk(ctx, t, script, o.duration, strconv.Itoa(tag), strconv.Itoa(o.seed), fmt.Sprint(t.db.after[0]), fmt.Sprint(t.db.after[1]))
		if err == nil {
			err = t.alive()
		}
		if n := r.socketErrors() + r.Status; err == nil && n > 0 {
			err = fmt.Errorf("%s %s: %d errors, of %d requests:\n%s", t.name, script, n, r.Requests, out)
		}
		if err == nil {
			m.rss, err = t.rss()
		}
		logf("%s %s: %.0f req/s, p99 %.2f ms, %.1f µs of CPU per request", t.name, script, m.rate(), m.p99/1e6, m.perOp(m.cpu)/1e3)
		return m, err
	}

	logf("warming up")
	for _, t := range h.targets {
		if _, err := load(t, "get.lua", false); err != nil {
			return err
		}
	}
	floor := h.targets[len(h.targets)-1]
	for round := 1; round <= o.reps; round++ {
		logf("round %d of %d", round, o.reps)
		for _, s := range scenarios {
			// The targets, then the ceiling: a busy spell on the machine
			// then spreads over them, and each ratio compares runs taken
			// close together.
			runs := map[*target]measured{}
			for _, t := range h.targets {
				if s.feed && !t.db.feed {
					continue
				}
				if runs[t], err = load(t, s.lua, s.writes); err != nil {
					return err
				}
			}
			var ceiling float64
			var lines []string
			for _, c := range o.clients {
				if err := fresh(h.db, s.writes); err != nil {
					return err
				}
				m, err := h.pgbench(ctx, s.sql, c, o.duration, "seed="+strconv.Itoa(o.seed), "base="+strconv.Itoa(tag*1e12), "n=0",
					fmt.Sprint("lo=", h.db.after[0]), fmt.Sprint("hi=", h.db.after[1]))
				if err != nil {
					return err
				}
				logf("pgbench %s -c %d: %.0f tps", s.sql, c, m.rate())
				ceiling = max(ceiling, m.rate())
				lines = append(lines, m.line(fmt.Sprintf("%s/impl=pgbench-c%d", s.name, c)))
			}
			for _, t := range h.targets {
				m, ok := runs[t]
				if !ok {
					continue
				}
				// In %, for benchstat, which would print 0.8 as 800m.
				extra := []string{fmt.Sprintf(" %.1f ceiling-%%", 100*m.rate()/ceiling)}
				if t != floor {
					extra = append(extra, fmt.Sprintf(" %.1f floor-cpu-%%", 100*m.perOp(m.cpu)/runs[floor].perOp(runs[floor].cpu)))
				}
				p("%s", m.line(s.name+"/impl="+t.name, extra...))
			}
			p("%s", strings.Join(lines, "\n"))
		}
	}

	p("# load average at the end: %s", loadAverage())
	return nil
}

// cpuModel returns the machine's CPU model, as /proc/cpuinfo names it.
func cpuModel() string {
	if cpus, err := procfs.NewDefaultFS(); err == nil {
		if info, err := cpus.CPUInfo(); err == nil && len(info) > 0 {
			return info[0].ModelName
		}
	}
	return "unknown"
}

// loadAverage returns the 1, 5 and 15 minute load averages.
func loadAverage() string {
	if fs, err := procfs.NewDefaultFS(); err == nil {
		if l, err := fs.LoadAvg(); err == nil {
			return fmt.Sprintf("%.2f %.2f %.2f", l.Load1, l.Load5, l.Load15)
		}
	}
	return "unknown"
}
