//go:build linux

// Command bench is the service's load benchmark (make bench) and soak
// (make soak), against a throwaway PostgreSQL (package pglocal) on
// loopback. See docs/benchmarks.md and docs/soak.md.
//
// Usage:
//
//	bench [-quick] [-reps 10] [-duration 5s] [flags]   the benchmark, in Go benchmark format on stdout
//	bench soak [-duration 5m] [flags]                 the soak: a markdown report, exit 1 when it fails
//	bench floor                                       the floor: the bare handler that the benchmark runs
//
// Progress goes to stderr. Linux only: the CPU and memory figures come
// from /proc.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
)

func main() {
	// SIGINT and SIGTERM stop a run early; the deferred clean-up still
	// stops the service and the database and removes their directories.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// run dispatches on the first argument: soak, floor, or a flag of the
// benchmark.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cmd := ""
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "":
		return runBench(ctx, args, stdout, stderr)
	case "soak":
		return runSoak(ctx, args, stdout, stderr)
	case "floor":
		return runFloor(ctx, getenv)
	}
	return fmt.Errorf("unknown command %q: want soak, floor, or flags", cmd)
}

// harnessFlags are the flags that the benchmark and the soak share.
type harnessFlags struct {
	seed        int      // users in the table
	bins        []string // the service binaries, by -service-bin
	env         []string // extra KEY=VALUE for the service
	tmpfs       bool     // PostgreSQL's data on /dev/shm
	connections int      // wrk's, over its threads, one per core
}

func (hf *harnessFlags) register(fs *flag.FlagSet) {
	fs.IntVar(&hf.seed, "seed", 100_000, "users in the table")
	fs.Func("service-bin", "a usersvc `binary` (default bin/usersvc); repeat it to compare several in one run", func(s string) error {
		hf.bins = append(hf.bins, s)
		return nil
	})
	fs.Func("env", "`KEY=VALUE` for the service's environment, e.g. LOG_LEVEL=warn (repeatable)", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return errors.New("want KEY=VALUE")
		}
		hf.env = append(hf.env, s)
		return nil
	})
	fs.BoolVar(&hf.tmpfs, "tmpfs", false, "PostgreSQL's data on /dev/shm, where an fsync costs nothing, instead of the checkout's disk")
	// 16 connections saturate the two cores; more only queue in the
	// service, and p99 would measure the queue.
	fs.IntVar(&hf.connections, "connections", 16, "wrk connections, over all threads")
}

// parse parses args with fs, then checks what register set.
func (hf *harnessFlags) parse(fs *flag.FlagSet, args []string, stderr io.Writer) error {
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(hf.bins) == 0 {
		hf.bins = []string{"bin/usersvc"}
	}
	names := map[string]bool{"floor": true}
	for _, bin := range hf.bins {
		if names[filepath.Base(bin)] {
			return fmt.Errorf("-service-bin %s: another target has its name", bin)
		}
		names[filepath.Base(bin)] = true
	}
	if hf.seed < 1000 {
		return fmt.Errorf("-seed %d: want at least 1000", hf.seed)
	}
	if hf.connections < 1 {
		return fmt.Errorf("-connections %d: want 1 or more", hf.connections)
	}
	return nil
}
