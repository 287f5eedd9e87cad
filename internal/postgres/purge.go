package postgres

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"usersvc/db"
)

// PurgeStore is what KeyPurger needs of the database; *db.Queries is one.
type PurgeStore interface {
	PurgeIdempotencyKeys(ctx context.Context, arg db.PurgeIdempotencyKeysParams) (int64, error)
}

var _ PurgeStore = (*db.Queries)(nil)

// purgeBatch bounds the keys one statement of the purge deletes: a few
// milliseconds of work that locks no row a request waits for.
const purgeBatch = 1000

// maxPurgeInterval bounds the time between purges: keys are forgotten
// within it after IDEMPOTENCY_TTL.
const maxPurgeInterval = time.Minute

// KeyPurger deletes the idempotency keys older than their TTL: the service
// purges its own table, with no cron job. It deletes purgeBatch keys per
// statement, oldest first, and pauses after each as long as it took, so
// that a backlog (after an outage, or a TTL shortened) takes at most half
// of one database connection, never a long statement. Several instances
// may purge one table: each skips the keys another has locked.
type KeyPurger struct {
	store   PurgeStore
	logger  *slog.Logger
	ttl     time.Duration
	timeout time.Duration // each statement's
	// Batch is the most keys one statement deletes: purgeBatch, unless a
	// test sets fewer.
	Batch int32
}

// NewKeyPurger returns a purger of the keys older than ttl, each statement
// bounded by timeout.
func NewKeyPurger(logger *slog.Logger, store PurgeStore, ttl, timeout time.Duration) *KeyPurger {
	return &KeyPurger{store: store, logger: logger, ttl: ttl, timeout: timeout, Batch: purgeBatch}
}

// Run purges every min(ttl, maxPurgeInterval) until ctx is done. A purge
// that fails (the database is down, not migrated yet) is logged and tried
// again at the next tick.
func (p *KeyPurger) Run(ctx context.Context) {
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
			p.logger.WarnContext(ctx, "purge idempotency keys", slog.Int64("keys", n), slog.Any("err", err))
		case n > 0:
			p.logger.InfoContext(ctx, "idempotency keys purged", slog.Int64("keys", n), slog.String("ttl", p.ttl.String()))
		}
	}
}

// Purge deletes every key older than the TTL, batch by batch, and returns
// how many it deleted. It stops at the first error, or when ctx is done.
func (p *KeyPurger) Purge(ctx context.Context) (int64, error) {
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

func (p *KeyPurger) purgeBatch(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	n, err := p.store.PurgeIdempotencyKeys(ctx, db.PurgeIdempotencyKeysParams{TtlUs: p.ttl.Microseconds(), MaxRows: p.Batch})
	if err != nil {
		return 0, fmt.Errorf("purge idempotency keys older than %s: %w", p.ttl, err)
	}
	return n, nil
}
