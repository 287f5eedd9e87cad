package postgres

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/pressly/goose/v3"
)

// Querier runs a query through pgx; *pgxpool.Pool and *pgx.Conn are ones.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Probe reads what /readyz needs to know of the database that Q queries:
// its schema version, and whether it takes writes.
type Probe struct {
	Q Querier
}

// SchemaVersion returns the highest migration version goose has recorded
// as applied (as goose's own Provider reads it), or 0 when goose never ran
// in the database. Returns the driver's error when the database does not
// answer.
func (r Probe) SchemaVersion(ctx context.Context) (int64, error) {
	var v int64
	err := r.Q.QueryRow(ctx, "SELECT coalesce(max(version_id), 0) FROM "+goose.DefaultTablename).Scan(&v)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == pgerrcode.UndefinedTable {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}

// ReadOnly returns why the database that Q reaches refuses writes: "it is
// a standby (in recovery)", or "transaction_read_only is on" for a primary
// fenced with default_transaction_read_only, as pg_auto_failover fences a
// node during a failover; "" when it takes writes. Returns the driver's
// error when the database does not answer.
func (r Probe) ReadOnly(ctx context.Context) (string, error) {
	var recovery, readOnly bool
	err := r.Q.QueryRow(ctx, "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'").Scan(&recovery, &readOnly)
	switch {
	case err != nil:
		return "", fmt.Errorf("read transaction_read_only: %w", err)
	case recovery:
		return "it is a standby (in recovery)", nil
	case readOnly:
		return "transaction_read_only is on", nil
	}
	return "", nil
}
