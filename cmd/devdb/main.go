// Command devdb runs a command next to the private development database.
//
// Usage:
//
//	devdb [-dir .data] [-port 54329] [-- command [args...]]
//
// devdb starts PostgreSQL with its data in -dir (or uses the server already
// running there), creates the database usersvc when it is missing, and runs
// the command with DATABASE_URL set to that database. SIGINT and SIGTERM are
// passed on to the command. When the command exits, devdb stops the server
// it started (a server it found running is left running) and fails when the
// command failed. Without a command, devdb prints the URL and keeps the
// server up until SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"syscall"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"usersvc/internal/pglocal"
)

// database is the database devdb creates for the service.
const database = "usersvc"

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdin, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintf(os.Stderr, "devdb: %v\n", err)
		os.Exit(1)
	}
}

// run is the whole program. It handles SIGINT and SIGTERM itself, for it
// passes them on to the command; cancelling ctx acts like SIGTERM.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) (err error) {
	flags := flag.NewFlagSet("devdb", flag.ContinueOnError)
	flags.SetOutput(stderr)
	dir := flags.String("dir", ".data", "data `directory` of the server")
	port := flags.Int("port", 54329, "TCP `port` on 127.0.0.1 (0: the unix socket only)")
	flags.Usage = func() {
		fmt.Fprintln(stderr, "usage: devdb [-dir .data] [-port 54329] [-- command [args...]]")
		flags.PrintDefaults()
	}
	if err := flags.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	command := flags.Args()

	// Registered before the server starts, so that no signal is lost and
	// none kills devdb between here and the end.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)

	startCtx, stopStartCtx := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	srv, err := pglocal.Start(startCtx, pglocal.Options{Dir: *dir, Port: *port})
	stopStartCtx()
	if err != nil {
		return err
	}
	defer func() {
		if !srv.Reused() {
			err = errors.Join(err, srv.Stop())
		}
	}()

	if err := createDatabase(ctx, srv.URL("postgres"), database); err != nil {
		return err
	}
	url := srv.URL(database)
	how := "started"
	if srv.Reused() {
		how = "already running"
	}
	fmt.Fprintf(stderr, "devdb: DATABASE_URL=%s (PostgreSQL %s in %s)\n", url, how, srv.Dir())

	if len(command) == 0 {
		select {
		case <-sigs:
		case <-ctx.Done():
		}
		return nil
	}
	select {
	case <-sigs: // interrupted while starting
		return nil
	default:
	}
	return runCommand(ctx, command, url, sigs, stdin, stdout, stderr)
}

// runCommand runs command with DATABASE_URL set to url and passes the
// signals from sigs on to it; ctx's end is passed on as SIGTERM. Returns an
// error when the command cannot start or exits with a status other than 0.
func runCommand(ctx context.Context, command []string, url string, sigs <-chan os.Signal, stdin io.Reader, stdout, stderr io.Writer) error {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Env = append(os.Environ(), "DATABASE_URL="+url)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", command[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctxDone := ctx.Done()
	for {
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("run %s: %w", command[0], err)
			}
			return nil
		case sig := <-sigs:
			cmd.Process.Signal(sig) // fails only when the command has exited
		case <-ctxDone:
			ctxDone = nil
			cmd.Process.Signal(syscall.SIGTERM)
		}
	}
}

// createDatabase creates the database name on the server at adminURL unless
// it exists.
func createDatabase(ctx context.Context, adminURL, name string) error {
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	defer conn.Close(context.Background())
	var exists bool
	if err := conn.QueryRow(ctx, "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)", name).Scan(&exists); err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	_, err = conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize())
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == pgerrcode.DuplicateDatabase {
		return nil // another devdb got there first
	}
	if err != nil {
		return fmt.Errorf("create database %s: %w", name, err)
	}
	return nil
}
