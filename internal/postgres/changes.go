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
	"usersvc/migrations"
)

// changesChannel is the channel every instance LISTENs on and NOTIFYs
// after its writes.
const changesChannel = "usersvc_user_changes"

// How often each instance sequences the queued changes and, while a
// request waits, reads the feed's head: the bound on a change's delay when
// no notification comes (CHANGES_LISTEN=false, or a write made outside the
// service).
const headPollInterval = 250 * time.Millisecond

// errPooled is a listener's connection that goes through a pooler.
var errPooled = errors.New("the connection goes through a connection pooler")

// listenCheck is how long the listener waits for a notification before it
// checks that its connection still answers.
const listenCheck = 30 * time.Second

// Changes runs an instance's part of the change feed. It sequences the
// queued changes (see sequence) after each of this instance's writes, on a
// notification from another instance's, and every headPollInterval; and it
// keeps the feed's head, the newest position, to wake the requests waiting
// on the feed when it moves. Waiting requests hold no connection: one read
// of the head wakes them all. Run does the work; without it, Changes never
// moves.
type Changes struct {
	pool    *pgxpool.Pool
	pooled  atomic.Bool // the listener found a pooler: no one listens
	waiting atomic.Int32
	kick    chan struct{} // sequence and read the head now
	notify  chan struct{} // NOTIFY the other instances
	mu      sync.Mutex
	head    int64
	moved   chan struct{} // closed when the head moves, or on Stop
	stopped bool
}

// NewChanges returns the Changes of the feed in pool's database, whose
// head is 0 until Run reads it.
func NewChanges(pool *pgxpool.Pool) *Changes {
	return &Changes{pool: pool, kick: make(chan struct{}, 1), notify: make(chan struct{}, 1), moved: make(chan struct{})}
}

// Sequence sequences the committed changes still queued (see sequence),
// for a read of the feed that must see every write acknowledged before it.
func (c *Changes) Sequence(ctx context.Context) error {
	head, err := c.sequence(ctx)
	if err == nil && c.advance(head) {
		c.poke(c.notify)
	}
	return err
}

// Head returns the newest position the feed served when it was last read,
// a channel closed when that changes or waiting must end, and whether it
// must end: Stop was called.
func (c *Changes) Head() (head int64, moved <-chan struct{}, stopped bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.head, c.moved, c.stopped
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

func (c *Changes) poke(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default: // one is pending already
	}
}

// advance records head, waking the waiting requests, and reports whether
// it moved forward. 0 is no news.
func (c *Changes) advance(head int64) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if head == 0 || head == c.head || c.stopped {
		return false
	}
	forward := head > c.head
	c.head = head
	close(c.moved)
	c.moved = make(chan struct{})
	return forward
}

// Run sequences and keeps the head until ctx is done, through pool, each
// statement bounded by timeout. With listen, it also LISTENs on a
// connection of its own, outside the pool, and NOTIFYs the other instances
// when it moved the head: where LISTEN does not work (PgBouncer in
// transaction mode), CHANGES_LISTEN=false leaves the polling alone.
func (c *Changes) Run(ctx context.Context, logger *slog.Logger, listen bool, timeout time.Duration) {
	var wg sync.WaitGroup
	defer wg.Wait()
	if listen {
		wg.Go(func() { c.listen(ctx, logger, timeout) })
		wg.Go(func() { c.notifyOthers(ctx, logger, timeout) })
	}
	tick := time.NewTicker(headPollInterval)
	defer tick.Stop()
	for {
		// The head matters only to waiting requests, and to the other
		// instances' when this one moved it.
		head, err := c.step(ctx, c.waiting.Load() > 0, timeout)
		if err != nil && ctx.Err() == nil {
			logger.DebugContext(ctx, "change feed: sequence", slog.Any("err", err))
		}
		if c.advance(head) && listen {
			c.poke(c.notify)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		case <-c.kick:
		}
	}
}

// step sequences the queued changes, if any, and returns the head; when
// there were none, it reads the head only if read. A head of 0, with an
// error or unread, leaves the known one.
func (c *Changes) step(ctx context.Context, read bool, timeout time.Duration) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	q := db.New(c.pool)
	st, err := q.ChangesState(ctx)
	switch {
	case err != nil:
		return 0, err
	case st.Queued:
		return c.sequence(ctx)
	case read:
		return q.ChangesHead(ctx)
	}
	return 0, nil
}

// sequence moves the committed changes from the queue to the feed, in one
// transaction that the sequencers of all instances take in turns, and
// returns the feed's head. Positions are given only here, to changes
// already committed, each above every position given before: a position
// the feed has served can never be followed by a lower one.
func (c *Changes) sequence(ctx context.Context) (head int64, err error) {
	err = pgx.BeginFunc(ctx, c.pool, func(tx pgx.Tx) error {
		q := db.New(tx)
		if err := q.LockSequencer(ctx); err != nil {
			return err
		}
		head, err = q.SequenceChanges(ctx)
		return err
	})
	return head, err
}

// notifyOthers sends one NOTIFY for every burst of moves of the head,
// outside the writes' transactions: a NOTIFY in a write's transaction would
// make every such commit wait for the previous one's (PostgreSQL serializes
// them), where the commits of concurrent writes now share a flush.
func (c *Changes) notifyOthers(ctx context.Context, logger *slog.Logger, timeout time.Duration) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.notify:
		}
		if c.pooled.Load() {
			continue // nobody listens behind a pooler
		}
		nctx, cancel := context.WithTimeout(ctx, timeout)
		// Its commit need not wait for the WAL: a NOTIFY lost in a crash
		// only leaves the waiting requests to the polling.
		_, err := c.pool.Exec(nctx, "SELECT set_config('synchronous_commit', 'off', true), pg_notify($1, '')", changesChannel)
		cancel()
		if err != nil && ctx.Err() == nil {
			logger.DebugContext(ctx, "change feed: notify", slog.Any("err", err))
		}
	}
}

// listen sequences and reads the head after every notification, reconnecting after a
// second when its connection fails. A reconnection reads the head too: a
// notification may have been missed meanwhile.
func (c *Changes) listen(ctx context.Context, logger *slog.Logger, timeout time.Duration) {
	cc := c.pool.Config().ConnConfig.Copy()
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
		if errors.Is(err, errPooled) {
			c.pooled.Store(true)
			logger.WarnContext(ctx, "change feed: DATABASE_URL goes through a connection pooler, which does not carry notifications: the requests waiting on the feed are woken by polling; set CHANGES_LISTEN=false to say so")
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
	pooled, err := migrations.ThroughPooler(lctx, conn)
	if err == nil && !pooled {
		_, err = conn.Exec(lctx, "LISTEN "+changesChannel)
	}
	cancel()
	if err != nil {
		return err
	}
	if pooled {
		return errPooled
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
