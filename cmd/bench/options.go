//go:build linux

package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// harnessOptions are the settings of the set-up that bench and soak share.
type harnessOptions struct {
	seed        int      // users in the table
	serviceBins []string // the service's binaries: one, or several to compare
	wrk         string   // the wrk binary's name or path
	env         []string // extra KEY=VALUE settings for the service
	tmpfs       bool     // PostgreSQL's data on /dev/shm, not on a disk
	threads     int      // wrk threads
	connections int      // wrk connections, over all threads
}

// parse registers the flags that set ho, but for seed, whose default and
// meaning differ by mode, then parses args with fs. what names the mode's
// work in the help, which usage heads.
func (ho *harnessOptions) parse(fs *flag.FlagSet, args []string, stderr io.Writer, what, usage string) error {
	bins := fs.String("service-bin", "bin/usersvc", "the usersvc `binary` to "+what+" (make build builds it)")
	fs.StringVar(&ho.wrk, "wrk", "wrk", "the wrk `binary`")
	fs.Func("env", "`KEY=VALUE` for the service's environment, e.g. DB_MAX_CONNS=8 (repeatable)", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return errors.New("want KEY=VALUE")
		}
		ho.env = append(ho.env, s)
		return nil
	})
	fs.BoolVar(&ho.tmpfs, "tmpfs", false, "an extra: PostgreSQL's data on /dev/shm, where an fsync costs nothing, instead of the working directory's disk")
	fs.IntVar(&ho.threads, "threads", 2, "wrk threads")
	// 16 connections saturate the two cores (docs/benchmarks.md); more add
	// only queueing, which p99 would measure instead of the service.
	fs.IntVar(&ho.connections, "connections", 16, "wrk connections, over all threads")
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintln(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	ho.serviceBins = strings.Split(*bins, ",")
	return nil
}

func (ho harnessOptions) validate(minSeed int) []error {
	var errs []error
	if ho.seed < minSeed {
		errs = append(errs, fmt.Errorf("-seed %d: want at least %d", ho.seed, minSeed))
	}
	if slices.Contains(ho.serviceBins, "") {
		errs = append(errs, fmt.Errorf("-service-bin %q: want a binary, or binaries separated by commas", strings.Join(ho.serviceBins, ",")))
	}
	if ho.threads < 1 || ho.connections < ho.threads {
		errs = append(errs, fmt.Errorf("-threads %d -connections %d: want 1 or more threads and at least one connection each", ho.threads, ho.connections))
	}
	return errs
}

// options are the benchmark's settings, from the command line.
type options struct {
	duration       time.Duration // each wrk and pgbench run
	warmup         time.Duration // one untimed run of scenario 1 before the rounds
	reps           int           // rounds: every scenario runs once per round
	deepRows       int           // rows in the table for the deep-page comparison
	pgbenchClients []int         // pgbench client counts to try; the best one counts
	scenarios      []int         // which of 1 to 7 to run
	sweepKey       string        // a service setting to sweep, or ""
	sweepValues    []string      // its values: each scenario runs once per value
	harnessOptions               // seed: rows in the table for scenarios 1 to 6
	args           []string      // the command line, for the report
}

// quickDefaults are the -quick settings: a smoke run of about a minute
// that shows the harness works, not how fast the service is.
var quickDefaults = [][2]string{{"duration", "2s"}, {"warmup", "1s"}, {"reps", "1"}, {"seed", "20000"}, {"deep-rows", "100000"}, {"pgbench-clients", "4,8"}}

// parseOptions parses the command line. -quick changes the defaults only:
// flags given explicitly win, whatever their order.
func parseOptions(args []string, stderr io.Writer) (options, error) {
	o := options{args: args}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	quick := fs.Bool("quick", false, fmt.Sprintf("smoke run: %v unless given", quickDefaults))
	fs.DurationVar(&o.duration, "duration", 10*time.Second, "length of each wrk and pgbench run, whole seconds (pgbench counts in seconds)")
	fs.DurationVar(&o.warmup, "warmup", 5*time.Second, "an untimed wrk run of scenario 1 before the rounds; 0 for none")
	fs.IntVar(&o.reps, "reps", 3, "rounds; each scenario reports the median, min and max over them")
	fs.IntVar(&o.seed, "seed", 100_000, "users in the table for the scenarios")
	fs.IntVar(&o.deepRows, "deep-rows", 1_000_000, "users in the table for the deep-page comparison; 0 skips it")
	clients := fs.String("pgbench-clients", "2,4,8,16", "pgbench client counts to try, comma-separated; each scenario's best counts")
	only := fs.String("scenarios", "1,2,3,4,5,6,7", "scenarios to run, comma-separated")
	sweep := fs.String("sweep", "", "`KEY=V1,V2,...`: run each scenario once per value of the service's setting KEY, in each round, e.g. DB_MAX_CONNS=4,8,16")
	if err := o.harnessOptions.parse(fs, args, stderr, "benchmark, or binaries, comma-separated, to compare in each round",
		"usage: bench [-quick] [flags]\n\nRuns the load benchmark and prints a markdown report; see docs/benchmarks.md."); err != nil {
		return o, err
	}
	if *quick {
		set := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
		for _, d := range quickDefaults {
			if !set[d[0]] {
				fs.Set(d[0], d[1])
			}
		}
	}
	var errs []error
	var err error
	if o.pgbenchClients, err = parseInts(*clients, 1, 999); err != nil {
		errs = append(errs, fmt.Errorf("-pgbench-clients: %w", err))
	}
	if o.scenarios, err = parseInts(*only, 1, len(scenarios)); err != nil {
		errs = append(errs, fmt.Errorf("-scenarios: %w", err))
	}
	if *sweep != "" {
		key, values, _ := strings.Cut(*sweep, "=")
		o.sweepKey, o.sweepValues = key, strings.Split(values, ",")
		if key == "" || slices.Contains(o.sweepValues, "") {
			errs = append(errs, fmt.Errorf("-sweep %q: want KEY=V1,V2,...", *sweep))
		}
	}
	if o.duration < time.Second || o.duration%time.Second != 0 {
		errs = append(errs, fmt.Errorf("-duration %v: want whole seconds, at least 1s", o.duration))
	}
	if o.warmup < 0 || o.warmup%time.Second != 0 {
		errs = append(errs, fmt.Errorf("-warmup %v: want whole seconds, or 0", o.warmup))
	}
	if o.reps < 1 {
		errs = append(errs, fmt.Errorf("-reps %d: want at least 1", o.reps))
	}
	if o.deepRows != 0 && o.deepRows < max(o.seed, 10_000) {
		errs = append(errs, fmt.Errorf("-deep-rows %d: want 0, or at least 10000 and -seed", o.deepRows))
	}
	// Scenarios 4 and 5 split the seeded users in two halves, and scenario
	// 2's pages must be full.
	errs = append(errs, o.harnessOptions.validate(1000)...)
	return o, errors.Join(errs...)
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

// soakOptions are the soak's settings, from the command line after "soak".
type soakOptions struct {
	duration       time.Duration // of the load
	interval       time.Duration // between samples
	warmup         time.Duration // samples before it are shown, not judged
	harnessOptions               // seed: users in the table at the start
	args           []string      // the command line, for the report
}

// parseSoakOptions parses the soak's command line. Without -warmup, the
// warm-up is a fifth of -duration, in whole intervals, at least one.
func parseSoakOptions(args []string, stderr io.Writer) (soakOptions, error) {
	o := soakOptions{args: args, warmup: -1}
	fs := flag.NewFlagSet("bench soak", flag.ContinueOnError)
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
	fs.IntVar(&o.seed, "seed", 100_000, "users in the table at the start")
	if err := o.harnessOptions.parse(fs, args, stderr, "soak", "usage: bench soak [flags]\n\nRuns a mixed load against the service for -duration, "+
		"samples it every -interval,\nand prints a markdown report; exits 1 on any error or when RSS or goroutines grow. See docs/soak.md."); err != nil {
		return o, err
	}
	if o.warmup < 0 && o.interval > 0 {
		o.warmup = max(o.interval, (o.duration / 5).Truncate(o.interval))
	}
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
	if len(o.serviceBins) > 1 {
		errs = append(errs, fmt.Errorf("-service-bin %q: the soak runs one binary", strings.Join(o.serviceBins, ",")))
	}
	if len(errs) == 0 {
		if n := len(judgedTimes(o)); n < 2 {
			errs = append(errs, fmt.Errorf("-duration %v -interval %v -warmup %v: %d sample(s) after the warm-up, want at least 2", o.duration, o.interval, o.warmup, n))
		}
	}
	// The script's taken names are the lower half of the seeded users, its
	// renames the upper half.
	errs = append(errs, o.harnessOptions.validate(1000)...)
	return o, errors.Join(errs...)
}
