package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"text/tabwriter"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"usersvc/internal/config"
	"usersvc/internal/postgres"
	"usersvc/migrations"
)

const migrateUsage = `usage: usersvc migrate up|down|redo|status|version

  up       apply every pending migration
  down     roll back the most recent migration
  redo     roll back the most recent migration and apply it again
  status   list the migrations and whether each is applied
  version  print the database's schema version and the latest one embedded

Exit status: 0 when the command did all it says, 1 when it did not, 2 for a
bad command line. Instances that migrate one database at once take turns.
`

// migrate runs one schema command against DATABASE_URL. Output is for
// people; the exit status is for pipelines: 0 only if the command did
// everything it says.
func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, migrateUsage) }
	if err := parseFlags(fs, args); err != nil {
		return helpIsNoError(err)
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return usageErrorf("migrate: expected exactly one of up, down, redo, status, version")
	}
	switch fs.Arg(0) {
	case "up", "down", "redo", "status", "version":
	default:
		fs.Usage()
		return usageErrorf("migrate: unknown command %q", fs.Arg(0))
	}
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	if err := cfg.RequireDatabase(); err != nil {
		return err
	}
	p, err := openProvider(cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := runMigrate(ctx, fs.Arg(0), p, stdout); err != nil {
		return fmt.Errorf("migrate %s: %w", fs.Arg(0), postgres.ConnectErr(cfg, err))
	}
	return nil
}

// runMigrate runs the migrate command named cmd through p.
func runMigrate(ctx context.Context, cmd string, p *goose.Provider, stdout io.Writer) error {
	switch cmd {
	case "up":
		results, err := p.Up(ctx)
		printResults(stdout, results)
		if err != nil {
			return err
		}
		if len(results) == 0 {
			fmt.Fprintln(stdout, "no pending migrations")
		}
		return printVersion(ctx, stdout, p)
	case "down":
		result, err := p.Down(ctx)
		if errors.Is(err, goose.ErrNoNextVersion) {
			fmt.Fprintln(stdout, "no migration to roll back")
			return printVersion(ctx, stdout, p)
		}
		if result != nil {
			printResults(stdout, []*goose.MigrationResult{result})
		}
		if err != nil {
			return err
		}
		return printVersion(ctx, stdout, p)
	case "redo":
		down, err := p.Down(ctx)
		if errors.Is(err, goose.ErrNoNextVersion) {
			return errors.New("no migration is applied")
		}
		if down != nil {
			printResults(stdout, []*goose.MigrationResult{down})
		}
		if err != nil {
			return err
		}
		up, err := p.UpByOne(ctx)
		if up != nil {
			printResults(stdout, []*goose.MigrationResult{up})
		}
		if err != nil {
			return err
		}
		return printVersion(ctx, stdout, p)
	case "status":
		statuses, err := p.Status(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT\tFILE")
		for _, s := range statuses {
			applied := "-"
			if !s.AppliedAt.IsZero() {
				applied = s.AppliedAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", s.Source.Version, s.State, applied, s.Source.Path)
		}
		return tw.Flush()
	default: // version
		return printVersion(ctx, stdout, p)
	}
}

func printResults(w io.Writer, results []*goose.MigrationResult) {
	for _, r := range results {
		verb := "applied"
		if r.Direction == "down" {
			verb = "rolled back"
		}
		if r.Error != nil {
			verb = "FAILED"
		}
		fmt.Fprintf(w, "%s %s (%s)\n", verb, r.Source.Path, r.Duration.Round(time.Millisecond))
	}
}

func printVersion(ctx context.Context, w io.Writer, p *goose.Provider) error {
	current, target, err := p.GetVersions(ctx)
	if err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	fmt.Fprintf(w, "schema version %d (latest embedded: %d)\n", current, target)
	return nil
}

// Delays between attempts to reach the database for AUTO_MIGRATE.
const (
	firstRetryDelay = 100 * time.Millisecond
	maxRetryDelay   = 5 * time.Second
)

// migrateWhenReachable applies the pending migrations for AUTO_MIGRATE as
// soon as the database answers, trying again while it does not. Returns nil
// once they are applied, ctx's error when ctx ends first, and the error of
// a migration that failed on a database that answers.
func migrateWhenReachable(ctx context.Context, cfg config.Config, pool pinger, logger *slog.Logger) error {
	// A ping waits no longer than a request would, so that a database that
	// accepts connections and never answers is retried too.
	ping := func() error {
		ctx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
		defer cancel()
		return pool.Ping(ctx)
	}
	delay := firstRetryDelay
	for attempt := 1; ; attempt++ {
		err := ping()
		if err == nil {
			if err = migrateUp(ctx, cfg, logger); err == nil {
				return nil
			}
			if ping() == nil {
				return err // the database answers: the migration itself failed
			}
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		// Logged at the first failure and then about every minute.
		if attempt == 1 || attempt%15 == 0 {
			logger.WarnContext(ctx, "database not reachable; migrations wait for it",
				slog.Int("attempt", attempt), slog.Any("err", err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, maxRetryDelay)
	}
}

// pinger tells whether the database answers; *pgxpool.Pool is one.
type pinger interface {
	Ping(ctx context.Context) error
}

// migrateUp applies the pending migrations for AUTO_MIGRATE.
func migrateUp(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
	p, err := openProvider(cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	results, err := p.Up(ctx)
	for _, r := range results {
		logger.InfoContext(ctx, "migration applied", slog.String("file", r.Source.Path), slog.String("duration", r.Duration.Round(time.Microsecond).String()))
	}
	if err != nil {
		return fmt.Errorf("migrate up: %w", err)
	}
	return nil
}

// openProvider returns the migrations' goose Provider on DATABASE_URL,
// through pgx's database/sql driver, with the connection settings of every
// command (config.PoolConfig). Its Close closes the connection.
func openProvider(cfg config.Config) (*goose.Provider, error) {
	pc, err := cfg.PoolConfig()
	if err != nil {
		return nil, err
	}
	sqlDB := stdlib.OpenDB(*pc.ConnConfig)
	p, err := migrations.NewProvider(sqlDB)
	if err != nil {
		sqlDB.Close()
		return nil, err
	}
	return p, nil
}
