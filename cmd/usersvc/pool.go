package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/internal/config"
)

// defaultMaxConns is the pool size for DB_MAX_CONNS=0: two connections per
// core the service may use, at least 16. A write holds its connection
// until its commit is flushed to disk, and commits that wait together
// share a flush: with the data on a disk, fsync on and 16 clients on the
// 2-core machine, 16 connections gave 2.4 times the POST /users and PUT
// /users/{id} of 4 (0.75 of pgbench's inserts at 16 clients, against 0.32),
// while GET /users/{id} lost 7 % and the page of 50 2 %, within the run's
// noise (docs/benchmarks.md, "Data on a disk and the pool size"). Two per
// core is what CPU-bound reads used when the data was in memory. Behind
// PgBouncer, and with several replicas against max_connections, set it.
func defaultMaxConns(procs int) int32 {
	return int32(max(16, 2*procs))
}

// newPool returns the connection pool for DATABASE_URL, with the
// connection settings of every command (config.PoolConfig), through which
// every write goes (and every read without DATABASE_READ_URL). It does not
// connect yet: connections are made on first use, so the database may come
// later. A connection whose server stops taking writes is dropped when it
// is released (see takesWrites). With DATABASE_READ_URL, its sessions
// commit with synchronous_commit=remote_apply unless the URL sets
// synchronous_commit: see newReadPool.
func newPool(ctx context.Context, cfg config.Config) (*pgxpool.Pool, error) {
	pc, err := cfg.PoolConfig()
	if err != nil {
		return nil, err
	}
	tunePool(pc, cfg.DatabaseURL, cfg.DBMaxConns)
	pc.AfterRelease = takesWrites
	if cfg.DatabaseReadURL != "" {
		if _, set := pc.ConnConfig.RuntimeParams["synchronous_commit"]; !set {
			pc.ConnConfig.RuntimeParams["synchronous_commit"] = "remote_apply"
		}
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("create connection pool: %w", err)
	}
	return pool, nil
}

// newReadPool returns the connection pool for DATABASE_READ_URL, which the
// GET routes use, or nil when it is not set: the same settings, sessions
// named usersvc-read (config.ReadPoolConfig). A client reads its own writes
// through it because the write pool's commits wait for the synchronous
// standbys to apply them (remote_apply) before the service acknowledges
// them: a standby in the synchronous quorum has every acknowledged write.
func newReadPool(ctx context.Context, cfg config.Config) (*pgxpool.Pool, error) {
	if cfg.DatabaseReadURL == "" {
		return nil, nil
	}
	pc, err := cfg.ReadPoolConfig()
	if err != nil {
		return nil, err
	}
	tunePool(pc, cfg.DatabaseReadURL, cfg.DBMaxConns)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("create read connection pool: %w", err)
	}
	return pool, nil
}

// tunePool sizes the pool for url, which pc was parsed from: maxConns
// connections (0: pool_max_conns from url, else defaultMaxConns); and has
// each new connection prepare every query when the query mode allows.
func tunePool(pc *pgxpool.Config, url string, maxConns int32) {
	switch {
	case maxConns > 0:
		pc.MaxConns = maxConns
	case !strings.Contains(url, "pool_max_conns"):
		pc.MaxConns = defaultMaxConns(runtime.GOMAXPROCS(0))
	}
	// pgx's default mode prepares every statement anyway, through a cache
	// that drops a statement whenever an execution fails, so that the next
	// execution prepares it again: a round trip more after every taken
	// name. Statements prepared by name (their SQL) stay. Other modes, such
	// as default_query_exec_mode=exec in DATABASE_URL for a pooler in
	// transaction mode, prepare nothing, and neither does this.
	if pc.ConnConfig.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement {
		pc.AfterConnect = prepareQueries
	}
}

// takesWrites is the write pool's AfterRelease: it keeps a connection only
// while its server takes writes. PostgreSQL (14 and later) tells a session
// when default_transaction_read_only or in_hot_standby change, with the
// answer to its next statement after a configuration reload: a server
// fenced read-only (pg_auto_failover fences a node it promotes or demotes
// so; an operator may do the same) or turned standby answers each write
// with SQLSTATE 25006 and then says so. Dropping that connection makes the
// pool's next one go through DATABASE_URL's target_session_attrs, which
// finds the host that takes writes, if any, instead of failing every
// write on the pooled sessions until they end.
func takesWrites(conn *pgx.Conn) bool {
	status := conn.PgConn().ParameterStatus
	return status("default_transaction_read_only") != "on" && status("in_hot_standby") != "on"
}

// prepareQueries prepares preparedQueries on conn, each named by its SQL,
// which pgx then executes by name. A statement the server refuses, as it
// does before the migrations have created the table, is left to pgx's
// statement cache. Returns an error only when the connection fails.
func prepareQueries(ctx context.Context, conn *pgx.Conn) error {
	for _, sql := range preparedQueries {
		if _, err := conn.Prepare(ctx, sql, sql); err != nil {
			if _, refused := errors.AsType[*pgconn.PgError](err); refused {
				continue
			}
			return fmt.Errorf("prepare statements: %w", err)
		}
	}
	return nil
}

// connectErr returns err, from a command's work on the database, with the
// database named as host:port/database (never the user or password) and,
// when it did not answer, the connect timeout it had, if err is a failure
// to connect. Returns any other err unchanged.
func connectErr(cfg config.Config, err error) error {
	connErr, ok := errors.AsType[*pgconn.ConnectError](err)
	if !ok {
		return err
	}
	if bound := connErr.Config.ConnectTimeout; bound > 0 && (pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded)) {
		return fmt.Errorf("the database at %s did not answer within %s: %w", cfg.DatabaseHost(), bound, err)
	}
	return fmt.Errorf("cannot connect to the database at %s: %w", cfg.DatabaseHost(), err)
}
