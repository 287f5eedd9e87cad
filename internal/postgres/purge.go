package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"usersvc/db"
)

// PurgeStore is what the purgers need of the database; *db.Queries is one.
type PurgeStore interface {
	PurgeIdempotencyKeys(ctx context.Context, arg db.PurgeIdempotencyKeysParams) (int64, error)
	PurgeUserChanges(ctx context.Context, arg db.PurgeUserChangesParams) (int64, error)
}

var _ PurgeStore = (*db.Queries)(nil)

// purgeBatch bounds the rows one statement of the purge deletes: a few
// milliseconds of work that locks no row a request waits for.
const purgeBatch = 1000

// maxPurgeInterval bounds the time between purges: rows are forgotten
// within it after their TTL.
const maxPurgeInterval = time.Minute

// Purger deletes the rows of one table older than their TTL: the service
// purges its own tables, with no cron job. It deletes Batch rows per
// statement, oldest first, and pauses after each as long as it took, so
// that a backlog (after an outage, or a TTL shortened) takes at most half
// of one database connection, never a long statement. Several instances
// may purge one table: each skips the rows another has locked.
type Purger struct {
	what    string // the rows, for the log: "idempotency keys"
	unit    string // the log's attribute for their number: "keys"
	purge   func(ctx context.Context, ttl time.Duration, batch int32) (int64, error)
	logger  *slog.Logger
	ttl     time.Duration
	timeout time.Duration // each statement's
	// Batch is the most rows one statement deletes: purgeBatch, unless a
	// test sets fewer.
	Batch int32
}

// NewKeyPurger returns a purger of the idempotency keys older than ttl
// (IDEMPOTENCY_TTL), each statement bounded by timeout.
func NewKeyPurger(logger *slog.Logger, store PurgeStore, ttl, timeout time.Duration) *Purger {
	return &Purger{what: "idempotency keys", unit: "keys", logger: logger, ttl: ttl, timeout: timeout, Batch: purgeBatch,
		purge: func(ctx context.Context, ttl time.Duration, batch int32) (int64, error) {
			return store.PurgeIdempotencyKeys(ctx, db.PurgeIdempotencyKeysParams{TtlUs: ttl.Microseconds(), MaxRows: batch})
		}}
}

// NewChangePurger returns a purger of the change feed's changes older than
// retention (CHANGES_RETENTION), each statement bounded by timeout.
func NewChangePurger(logger *slog.Logger, store PurgeStore, retention, timeout time.Duration) *Purger {
	return &Purger{what: "changes", unit: "changes", logger: logger, ttl: retention, timeout: timeout, Batch: purgeBatch,
		purge: func(ctx context.Context, ttl time.Duration, batch int32) (int64, error) {
			return store.PurgeUserChanges(ctx, db.PurgeUserChangesParams{TtlUs: ttl.Microseconds(), MaxRows: batch})
		}}
}

// Run purges every min(ttl, maxPurgeInterval) until ctx is done. A purge
// that fails (the database is down, not migrated yet) is logged and tried
// again at the next tick.
func (p *Purger) Run(ctx context.Context) {
	tick := time.NewTicker(min(p.ttl, maxPurgeInterval))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		n, err := p.Purge(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			p.logger.WarnContext(ctx, "purge "+p.what, slog.Int64(p.unit, n), slog.Any("err", err))
		case n > 0:
			p.logger.InfoContext(ctx, p.what+" purged", slog.Int64(p.unit, n), slog.String("ttl", p.ttl.String()))
		}
	}
}

// Purge deletes every row older than the TTL, batch by batch, and returns
// how many it deleted. It stops at the first error, or when ctx is done.
func (p *Purger) Purge(ctx context.Context) (int64, error) {
	var total int64
	for {
		start := time.Now()
		n, err := p.purgeBatch(ctx)
		total += n
		if err != nil || n < int64(p.Batch) {
			return total, err
		}
		t := time.NewTimer(time.Since(start))
		select {
		case <-ctx.Done():
			t.Stop()
			return total, ctx.Err()
		case <-t.C:
		}
	}
}

func (p *Purger) purgeBatch(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	n, err := p.purge(ctx, p.ttl, p.Batch)
	if err != nil {
		return 0, fmt.Errorf("purge %s older than %s: %w", p.what, p.ttl, err)
	}
	return n, nil
}
