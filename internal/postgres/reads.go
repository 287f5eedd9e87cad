package postgres

import (
	"context"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
)

// Reads runs the GET routes' queries on the pool of DATABASE_READ_URL: give
// it to db.New. A Query or QueryRow whose connection was lost before its
// first row, as when the pool still held sessions to a node that went away
// (demoted by a switchover, or its machine lost), runs again on another
// connection, up to readAttempts in all: a read changes nothing, and the
// node that remains answers it.
type Reads struct {
	Pool *pgxpool.Pool
}

var _ db.DBTX = Reads{}

// readAttempts bounds the runs of one read: the first and two retries.
const readAttempts = 3

// Exec runs sql once: reads do not use it.
func (d Reads) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	return d.Pool.Exec(ctx, sql, args...)
}

func (d Reads) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	for attempt := 1; ; attempt++ {
		rows, err := d.Pool.Query(ctx, sql, args...)
		if err == nil {
			if rows.Next() {
				return &peekedRows{Rows: rows}, nil
			}
			rows.Close() // no row: the closed rows tell how the query ended
			if err = rows.Err(); err == nil {
				return rows, nil
			}
		}
		if !retry(ctx, err, attempt) {
			return rows, err
		}
	}
}

func (d Reads) QueryRow(ctx context.Context, sql string, args ...any) pgx.Row {
	return retriedRow{pool: d.Pool, ctx: ctx, sql: sql, args: args}
}

// retry reports whether a read that failed with err on its attempt-th run
// is to run again.
func retry(ctx context.Context, err error, attempt int) bool {
	return attempt < readAttempts && ctx.Err() == nil && lostConnection(err)
}

// retriedRow is QueryRow's row: the query runs when it is scanned.
type retriedRow struct {
	pool *pgxpool.Pool
	ctx  context.Context
	sql  string
	args []any
}

func (r retriedRow) Scan(dest ...any) error {
	for attempt := 1; ; attempt++ {
		err := r.pool.QueryRow(r.ctx, r.sql, r.args...).Scan(dest...)
		if err == nil || !retry(r.ctx, err, attempt) {
			return err
		}
	}
}

// peekedRows are rows whose first row Query has read already.
type peekedRows struct {
	pgx.Rows
	peeked bool
}

func (r *peekedRows) Next() bool {
	if !r.peeked {
		r.peeked = true
		return true
	}
	return r.Rows.Next()
}
