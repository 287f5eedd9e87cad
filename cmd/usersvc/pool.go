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
// core the service may use, at least 4. A request holds a connection only
// for its query; on a 2-core machine with the database beside it, 2
// connections lost a tenth of the writes, while 8 and 16 gained nothing
// over 4 and raised p99 (docs/benchmarks.md).
func defaultMaxConns(procs int) int32 {
	return int32(max(4, 2*procs))
}

// newPool returns a connection pool for DATABASE_URL, with the connection
// settings of every command (config.PoolConfig). It does not connect yet:
// connections are made on first use, so the database may come later.
func newPool(ctx context.Context, cfg config.Config) (*pgxpool.Pool, error) {
	pc, err := cfg.PoolConfig()
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.DBMaxConns > 0:
		pc.MaxConns = cfg.DBMaxConns
	case !strings.Contains(cfg.DatabaseURL, "pool_max_conns"):
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
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("create connection pool: %w", err)
	}
	return pool, nil
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
