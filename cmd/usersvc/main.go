// Command usersvc serves the users API over HTTP and manages its schema.
//
// Usage:
//
//	usersvc [serve]                                 serve the API (the default)
//	usersvc migrate up|down|redo|status|version     manage the database schema
//	usersvc healthcheck                             GET the local /healthz, for container health checks
//	usersvc version                                 print the version
//
// Configuration comes from environment variables only; see the README. The
// exit status is 0 on success, 1 on failure and 2 for a command line that
// usersvc does not understand.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// exitCode reports err on w and returns the process's exit status for it.
func exitCode(err error, w io.Writer) int {
	if err == nil {
		return 0
	}
	fmt.Fprintf(w, "usersvc: %v\n", err)
	if _, ok := errors.AsType[usageError](err); ok {
		return 2
	}
	return 1
}

const usage = `usage:
  usersvc [serve]                               serve the API (the default)
  usersvc migrate up|down|redo|status|version   manage the database schema
  usersvc healthcheck                           GET the local /healthz: exit 0 when it answers 200
  usersvc version                               print the version

Configuration comes from environment variables (DATABASE_URL, HTTP_ADDR, ...);
see the README. Exit status: 0 success, 1 failure, 2 bad command line.
`

// run is the whole program: main only adds the process's signals, arguments,
// output and exit code. The configuration is read from the environment.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cmd, rest := "serve", args
	if len(args) > 0 {
		cmd, rest = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, rest, stderr)
	case "migrate":
		return migrate(ctx, rest, stdout, stderr)
	case "healthcheck":
		return healthcheck(ctx, rest, stdout, stderr)
	case "version":
		fmt.Fprintf(stdout, "usersvc %s\n", buildVersion())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return usageErrorf("unknown command %q", cmd)
	}
}

// usageError is a command line that usersvc does not understand: the
// process exits with status 2 for it, as flag parsing conventionally does.
type usageError struct {
	msg string
}

func (e usageError) Error() string { return e.msg }

func usageErrorf(format string, args ...any) error {
	return usageError{msg: fmt.Sprintf(format, args...)}
}

// parseFlags parses args into fs. Returns flag.ErrHelp for -h, which
// printed the usage, and a usageError for anything else fs does not accept.
func parseFlags(fs *flag.FlagSet, args []string) error {
	err := fs.Parse(args)
	if err == nil || errors.Is(err, flag.ErrHelp) {
		return err
	}
	return usageError{msg: err.Error()}
}

// helpIsNoError returns nil for flag.ErrHelp: -h printed the usage, as asked.
func helpIsNoError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
