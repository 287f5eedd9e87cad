// Command usersvc serves the users API over HTTP and manages its schema.
//
// Usage:
//
//	usersvc [serve]                          serve the API (the default)
//	usersvc migrate up|down|status|version   manage the database schema
//	usersvc version                          print the version
//
// Configuration comes from environment variables only; see the README.
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
	if err != nil {
		fmt.Fprintf(os.Stderr, "usersvc: %v\n", err)
		os.Exit(1)
	}
}

const usage = `usage:
  usersvc [serve]                          serve the API (the default)
  usersvc migrate up|down|status|version   manage the database schema
  usersvc version                          print the version

Configuration comes from environment variables (DATABASE_URL, HTTP_ADDR, ...);
see the README.
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
	case "version":
		fmt.Fprintf(stdout, "usersvc %s\n", buildVersion())
		return nil
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	default:
		fmt.Fprint(stderr, usage)
		return fmt.Errorf("unknown command %q", cmd)
	}
}

// helpIsNoError returns nil for flag.ErrHelp: -h printed the usage, as asked.
func helpIsNoError(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}
