package postgres

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
)

// changesChannel is the channel every instance LISTENs on and NOTIFYs
// after its writes.
const changesChannel = "usersvc_user_changes"

// How often the feed's head is read while a request waits on it: the bound
// on a change's delay when no notification comes (CHANGES_LISTEN=false, or
// a write made outside the service).
const headPollInterval = 250 * time.Millisecond

// listenCheck is how long the listener waits for a notification before it
// checks that its connection still answers.
const listenCheck = 30 * time.Second

// Changes tells an instance's requests waiting on the change feed when it
// has moved: it keeps the feed's head, the newest position the feed serves,
// and reads it again after this instance's writes, on a notification from
// another instance's, and every headPollInterval while a request waits.
// Waiting requests hold no connection: one read of the head wakes them
// all. Run does the reading; without it, Changes never moves.
type Changes struct {
	waiting atomic.Int32
	kick    chan struct{} // read the head now
	notify  chan struct{} // NOTIFY the other instances
	mu      sync.Mutex
	head    int64
	moved   chan struct{} // closed when the head moves, or on Stop
	stopped bool
}

// NewChanges returns a Changes whose head is 0 until Run reads it.
func NewChanges() *Changes {
	return &Changes{kick: make(chan struct{}, 1), notify: make(chan struct{}, 1), moved: make(chan struct{})}
}

// Head returns the newest position the feed served when it was last read,
// and a channel closed when that changes or waiting must end (Stopped).
func (c *Changes) Head() (head int64, moved <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.head, c.moved
}

// Waiting counts a waiting request until done is called: the head is
// polled only while one waits.
func (c *Changes) Waiting() (done func()) {
	c.waiting.Add(1)
	c.poke(c.kick)
	return func() { c.waiting.Add(-1) }
}

// Wrote tells c that this instance committed a write of a user.
func (c *Changes) Wrote() {
	c.poke(c.kick)
	c.poke(c.notify)
}

// Stop ends every wait, now and from now on: the instance is draining.
func (c *Changes) Stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.stopped {
		c.stopped = true
		close(c.moved)
	}
}

// Stopped reports whether Stop was called.
func (c *Changes) Stopped() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopped
}

func (c *Changes) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // one is pending already
	}
}

// advance records head, waking the waiting requests if it moved.
func (c *Changes) advance(head int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if head == c.head || c.stopped {
		return
	}
	c.head = head
	close(c.moved)
	c.moved = make(chan struct{})
}

// Run keeps the head until ctx is done, reading it through pool, each read
// bounded by timeout. With listen, it also LISTENs on a connection of its
// own, outside the pool, and NOTIFYs after this instance's writes: where
// LISTEN does not work (PgBouncer in transaction mode), CHANGES_LISTEN=false
// leaves the polling alone.
func (c *Changes) Run(ctx context.Context, logger *slog.Logger, pool *pgxpool.Pool, listen bool, timeout time.Duration) {
	var wg sync.WaitGroup
	if listen {
		wg.Go(func() { c.listen(ctx, logger, pool, timeout) })
		wg.Go(func() { c.notifyOthers(ctx, logger, pool, timeout) })
	}
	c.readHead(ctx, pool, timeout)
	tick := time.NewTicker(headPollInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			wg.Wait()
			return
		case <-tick.C:
			if c.waiting.Load() == 0 {
				continue
			}
		case <-c.kick:
		}
		c.readHead(ctx, pool, timeout)
	}
}

func (c *Changes) readHead(ctx context.Context, pool *pgxpool.Pool, timeout time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if head, err := db.New(pool).ChangesHead(ctx); err == nil {
		c.advance(head)
	} // else the next tick tries again: a database down fails the requests, not this
}

// notifyOthers sends one NOTIFY for every burst of this instance's writes,
// outside their transactions: a NOTIFY in a write's transaction would make
// every such commit wait for the previous one's (PostgreSQL serializes
// them), where the commits of concurrent writes now share a flush.
func (c *Changes) notifyOthers(ctx context.Context, logger *slog.Logger, pool *pgxpool.Pool, timeout time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.notify:
		}
		nctx, cancel := context.WithTimeout(ctx, timeout)
		_, err := pool.Exec(nctx, "SELECT pg_notify($1, '')", changesChannel)
		cancel()
		if err != nil && ctx.Err() == nil {
			logger.DebugContext(ctx, "change feed: notify", slog.Any("err", err))
		}
	}
}

// listen reads the head after every notification, reconnecting after a
// second when its connection fails. A reconnection reads the head too: a
// notification may have been missed meanwhile.
func (c *Changes) listen(ctx context.Context, logger *slog.Logger, pool *pgxpool.Pool, timeout time.Duration) {
	cc := pool.Config().ConnConfig.Copy()
	// A wait that ends unanswered leaves the connection usable.
	cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.DeadlineContextWatcherHandler{Conn: pc.Conn()}
	}
	cc.RuntimeParams["application_name"] = "usersvc-listen"
	for {
		err := c.listenOn(ctx, cc, timeout)
		if ctx.Err() != nil {
			return
		}
		logger.WarnContext(ctx, "change feed: listen", slog.Any("err", err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

func (c *Changes) listenOn(ctx context.Context, cc *pgx.ConnConfig, timeout time.Duration) error {
	cctx, cancel := context.WithTimeout(ctx, timeout)
	conn, err := pgx.ConnectConfig(cctx, cc)
	cancel()
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	lctx, cancel := context.WithTimeout(ctx, timeout)
	_, err = conn.Exec(lctx, "LISTEN "+changesChannel)
	cancel()
	if err != nil {
		return err
	}
	c.poke(c.kick)
	for {
		wctx, cancel := context.WithTimeout(ctx, listenCheck)
		_, err := conn.WaitForNotification(wctx)
		cancel()
		switch {
		case err == nil:
			c.poke(c.kick)
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, context.DeadlineExceeded):
			pctx, cancel := context.WithTimeout(ctx, timeout)
			err = conn.Ping(pctx)
			cancel()
			if err != nil {
				return err
			}
		default:
			return err
		}
	}
}
