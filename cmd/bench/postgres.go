package main

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"usersvc/internal/pglocal"
	"usersvc/migrations"
)

// database is the database the service and pgbench use.
const database = "usersvc"

// dirPrefix names the benchmark's scratch directories, so that a later run
// finds those of a run that was killed.
const dirPrefix = "usersvc-bench-"

// postgres is the benchmark's PostgreSQL server.
type postgres struct {
	srv *pglocal.Server
}

// startPostgres starts a throwaway server in a new scratch directory
// (/dev/shm when there is one), listening on a free port of 127.0.0.1.
//
// It is not started with pglocal's Ephemeral settings: the service and
// pgbench are measured on the server's default durability (fsync,
// synchronous_commit and full_page_writes on), as in production, and both
// on the same settings. On /dev/shm an fsync costs little, so the write
// scenarios measure CPU rather than a disk.
//
// Should this process die without running its clean-up (SIGKILL), the
// next run stops the server and removes its directory.
func startPostgres(ctx context.Context) (*postgres, error) {
	port, err := freePort()
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	// TCP rather than the unix socket, for the service and pgbench alike:
	// a production database is at the other end of a TCP connection.
	srv, err := pglocal.StartScratch(ctx, "", dirPrefix, pglocal.Options{Port: port})
	if err != nil {
		return nil, err
	}
	return &postgres{srv: srv}, nil
}

// stop stops the server and removes its directory.
func (p *postgres) stop() error {
	return p.srv.Stop()
}

// host and port are where pgbench connects.
func (p *postgres) hostPort() (string, string, error) {
	cfg, err := pgx.ParseConfig(p.srv.URL(database))
	if err != nil {
		return "", "", err
	}
	return cfg.Host, strconv.Itoa(int(cfg.Port)), nil
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// prepareDatabase creates the database, applies the service's migrations
// and seeds seed users.
func (p *postgres) prepareDatabase(ctx context.Context, seed int) error {
	admin, err := pgx.Connect(ctx, p.srv.URL("postgres"))
	if err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	_, err = admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{database}.Sanitize())
	admin.Close(context.WithoutCancel(ctx))
	if err != nil {
		return fmt.Errorf("create database: %w", err)
	}

	cfg, err := pgx.ParseConfig(p.srv.URL(database))
	if err != nil {
		return err
	}
	sqlDB := stdlib.OpenDB(*cfg)
	defer sqlDB.Close()
	provider, err := migrations.NewProvider(sqlDB)
	if err != nil {
		return err
	}
	if _, err := provider.Up(ctx); err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return p.growTo(ctx, seed)
}

// growTo adds users until the table holds rows of them, through COPY, then
// vacuums, analyzes and checkpoints, so that no run pays for the load: not
// for setting hint bits, nor for a checkpoint that the load made due.
//
// The first users of an empty table get ids 1, 2, ... and are named for
// their id in decimal ("1", "2", ...): names that pgbench, which computes
// only numbers, can send as well as wrk. Later users, for the deep pages,
// are named "d" and a number, so that they collide with nothing.
//
// Returns an error when an empty table did not get ids 1 to rows.
func (p *postgres) growTo(ctx context.Context, rows int) error {
	conn, err := pgx.Connect(ctx, p.srv.URL(database))
	if err != nil {
		return fmt.Errorf("seed users: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var have int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&have); err != nil {
		return fmt.Errorf("seed users: %w", err)
	}
	add := rows - have
	if add <= 0 {
		return nil
	}
	name := strconv.Itoa
	if have > 0 {
		name = func(i int) string { return "d" + strconv.Itoa(i) }
	}
	i := 0
	n, err := conn.CopyFrom(ctx, pgx.Identifier{"users"}, []string{"name"}, pgx.CopyFromFunc(func() ([]any, error) {
		if i == add {
			return nil, nil
		}
		i++
		return []any{name(have + i)}, nil
	}))
	if err != nil {
		return fmt.Errorf("seed users: %w", err)
	}
	if n != int64(add) {
		return fmt.Errorf("seed users: copied %d rows, want %d", n, add)
	}
	if have == 0 {
		var lo, hi int
		if err := conn.QueryRow(ctx, "SELECT min(id), max(id) FROM users").Scan(&lo, &hi); err != nil {
			return fmt.Errorf("seed users: %w", err)
		}
		if lo != 1 || hi != rows {
			return fmt.Errorf("seed users: got ids %d to %d, want 1 to %d", lo, hi, rows)
		}
	}
	if err := tidy(ctx, conn); err != nil {
		return fmt.Errorf("seed users: %w", err)
	}
	return nil
}

// restore brings the table back to the seed users (ids 1 to seed): it
// deletes the users that runs added, then vacuums and checkpoints. Every
// run that reads or writes the table starts from it: otherwise pgbench's
// inserts alone would grow it tenfold in a full run, and each run would
// step over the dead rows of the renames and failed inserts before it, and
// pay for an autovacuum or a checkpoint that an earlier run made due.
// Renamed users keep their new names: no scenario needs their old ones.
func (p *postgres) restore(ctx context.Context, seed int) error {
	conn, err := pgx.Connect(ctx, p.srv.URL(database))
	if err != nil {
		return fmt.Errorf("restore users: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "DELETE FROM users WHERE id > $1", seed); err != nil {
		return fmt.Errorf("restore users: %w", err)
	}
	if err := tidy(ctx, conn); err != nil {
		return fmt.Errorf("restore users: %w", err)
	}
	return nil
}

// tidy vacuums and analyzes the table and checkpoints, so that the next run
// pays neither for hint bits nor dead rows, nor for a checkpoint it did
// not cause.
func tidy(ctx context.Context, conn *pgx.Conn) error {
	for _, stmt := range []string{"VACUUM (ANALYZE) users", "CHECKPOINT"} {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	return nil
}

// maxID returns the highest id in the table.
func (p *postgres) maxID(ctx context.Context) (int, error) {
	conn, err := pgx.Connect(ctx, p.srv.URL(database))
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var id int
	err = conn.QueryRow(ctx, "SELECT max(id) FROM users").Scan(&id)
	return id, err
}

// settingNames are the server settings the report shows: those that decide
// what a write costs, and the memory the table lives in.
var settingNames = []string{
	"server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
	"shared_buffers", "max_connections", "log_min_error_statement", "data_directory",
}

// settings returns the values of settingNames, in that order.
func (p *postgres) settings(ctx context.Context) ([][2]string, error) {
	conn, err := pgx.Connect(ctx, p.srv.URL(database))
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var out [][2]string
	for _, name := range settingNames {
		var v string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			return nil, fmt.Errorf("show %s: %w", name, err)
		}
		out = append(out, [2]string{name, v})
	}
	return out, nil
}
