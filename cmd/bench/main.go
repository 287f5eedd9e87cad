//go:build linux

// Command bench is the service's load benchmark, `make bench`: it measures
// usersvc over real HTTP against a private PostgreSQL, and measures pgbench
// running the service's own SQL on the same server as the ceiling.
//
// Usage:
//
//	bench [-quick] [-duration 10s] [-reps 3] [-seed 100000] [flags]
//	bench soak [-duration 5m] [-connections 16] [flags]
//
// One run starts a throwaway PostgreSQL (package pglocal) with its data on
// the disk of the working directory, under .bench/ (-tmpfs puts it on
// /dev/shm instead), migrates it, seeds the users table through COPY,
// builds the service as `make build` does, starts it on loopback, and then,
// for -reps rounds, runs every scenario with wrk and its SQL with pgbench at
// several client counts. After that it grows the table for the deep-page
// comparison. It prints a markdown report on stdout (progress goes to
// stderr) and removes everything it made. Run it on a quiet machine: wrk,
// the service and PostgreSQL share the CPU, and so does anything else.
//
// `bench soak` (make soak) runs on the same set-up a sustained mixed load
// (scripts/soak.lua), samples the service's memory, goroutines and pool
// every -interval, and prints a markdown report; it exits 1 on any error,
// or when RSS or goroutines do not stay flat. docs/soak.md has the rules.
//
// Linux only: every figure of the machine comes from /proc.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	// SIGINT (Ctrl-C) and SIGTERM stop the run early; the deferred clean-up
	// then still stops the service and the database and removes their
	// directories, which no signal would do.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if len(os.Args) > 1 && os.Args[1] == "soak" {
		err = runSoak(ctx, os.Args[2:], os.Stdout, os.Stderr)
	} else {
		err = run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	}
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}
