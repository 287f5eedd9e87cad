package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// options are the benchmark's settings, from the command line.
type options struct {
	duration       time.Duration // each wrk and pgbench run
	warmup         time.Duration // one untimed run of scenario 1 before the rounds
	reps           int           // rounds: every scenario runs once per round
	deepRows       int           // rows in the table for the deep-page comparison
	threads        int           // wrk threads
	connections    int           // wrk connections, over all threads
	pgbenchClients []int         // pgbench client counts to try; the best one counts
	scenarios      []int         // which of 1 to 7 to run
	harnessOptions               // seed: rows in the table for scenarios 1 to 6
	args           []string      // the command line, for the report
}

// The -quick settings: a smoke run of about a minute that shows the harness
// works, not how fast the service is.
const (
	quickDuration = 2 * time.Second
	quickWarmup   = time.Second
	quickReps     = 1
	quickSeed     = 20_000
	quickDeepRows = 100_000
	quickClients  = "4,8"
)

// parseOptions parses the command line. -quick changes the defaults only:
// flags given explicitly win, whatever their order.
func parseOptions(args []string, stderr io.Writer) (options, error) {
	o := options{args: args}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	quick := fs.Bool("quick", false, fmt.Sprintf("smoke run: -duration %v -warmup %v -reps %d -seed %d -deep-rows %d -pgbench-clients %s unless given",
		quickDuration, quickWarmup, quickReps, quickSeed, quickDeepRows, quickClients))
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk and pgbench run, whole seconds (pgbench counts in seconds)")
	fs.DurationVar(&o.warmup, "warmup", 5*time.Second, "an untimed wrk run of scenario 1 before the rounds; 0 for none")
	fs.IntVar(&o.reps, "reps", 3, "rounds; each scenario reports the median, min and max over them")
	fs.IntVar(&o.seed, "seed", 100_000, "users in the table for the scenarios")
	fs.IntVar(&o.deepRows, "deep-rows", 1_000_000, "users in the table for the deep-page comparison; 0 skips it")
	fs.IntVar(&o.threads, "threads", 2, "wrk threads")
	// 16 connections saturate the two cores: the service's pool has 4
	// database connections, and a sweep (docs/benchmarks.md) found the
	// same req/s at 8, 16 and 32 connections, and less at 64. More
	// connections add only queueing, which p99 would measure instead of
	// the service.
	fs.IntVar(&o.connections, "connections", 16, "wrk connections, over all threads")
	clients := fs.String("pgbench-clients", "2,4,8,16", "pgbench client counts to try, comma-separated; each scenario's best counts")
	only := fs.String("scenarios", "1,2,3,4,5,6,7", "scenarios to run, comma-separated")
	o.harnessOptions.addFlags(fs, "benchmark")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: bench [-quick] [flags]\n\nRuns the load benchmark and prints a markdown report; see docs/benchmarks.md.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		if !set["duration"] {
			o.duration = quickDuration
		}
		if !set["warmup"] {
			o.warmup = quickWarmup
		}
		if !set["reps"] {
			o.reps = quickReps
		}
		if !set["seed"] {
			o.seed = quickSeed
		}
		if !set["deep-rows"] {
			o.deepRows = quickDeepRows
		}
		if !set["pgbench-clients"] {
			*clients = quickClients
		}
	}
	var err error
	if o.pgbenchClients, err = parseInts(*clients, 1, 999); err != nil {
		return o, fmt.Errorf("-pgbench-clients: %w", err)
	}
	if o.scenarios, err = parseInts(*only, 1, len(scenarios)); err != nil {
		return o, fmt.Errorf("-scenarios: %w", err)
	}
	return o, o.validate()
}

func (o options) validate() error {
	var errs []error
	if o.duration < time.Second || o.duration%time.Second != 0 {
		errs = append(errs, fmt.Errorf("-duration %v: want whole seconds, at least 1s", o.duration))
	}
	if o.warmup < 0 || o.warmup%time.Second != 0 {
		errs = append(errs, fmt.Errorf("-warmup %v: want whole seconds, or 0", o.warmup))
	}
	if o.reps < 1 {
		errs = append(errs, fmt.Errorf("-reps %d: want at least 1", o.reps))
	}
	// Scenarios 4 and 5 split the seeded users in two halves, and scenario
	// 2's pages must be full.
	if o.seed < 1000 {
		errs = append(errs, fmt.Errorf("-seed %d: want at least 1000", o.seed))
	}
	if o.deepRows != 0 && o.deepRows < max(o.seed, 10_000) {
		errs = append(errs, fmt.Errorf("-deep-rows %d: want 0, or at least 10000 and -seed", o.deepRows))
	}
	if o.threads < 1 || o.connections < o.threads {
		errs = append(errs, fmt.Errorf("-threads %d -connections %d: want 1 or more threads and at least one connection each", o.threads, o.connections))
	}
	return errors.Join(errs...)
}

// parseInts parses a comma-separated list of integers from lo to hi into a
// sorted list without duplicates.
func parseInts(s string, lo, hi int) ([]int, error) {
	var ns []int
	for f := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < lo || n > hi {
			return nil, fmt.Errorf("%q: want integers from %d to %d", f, lo, hi)
		}
		ns = append(ns, n)
	}
	slices.Sort(ns)
	return slices.Compact(ns), nil
}

// pgbenchJobs is pgbench's thread count for a client count: one per core at
// most, since more threads than cores only compete with the server.
func pgbenchJobs(clients int) int {
	return min(clients, runtime.NumCPU())
}
