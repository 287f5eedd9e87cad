package postgres

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/internal/config"
	"usersvc/internal/tracing"
)

// NewPool returns the connection pool for DATABASE_URL, with the
// connection settings of every command (config.PoolConfig), through which
// every write goes (and every read without DATABASE_READ_URL). It does not
// connect yet: connections are made on first use, so the database may come
// later. A connection whose server stops taking writes is dropped when it
// is released (see takesWrites). With DATABASE_READ_URL, its sessions
// commit with synchronous_commit=remote_apply unless the URL sets
// synchronous_commit: see NewReadPool.
func NewPool(ctx context.Context, cfg config.Config) (*pgxpool.Pool, error) {
	pc, err := cfg.PoolConfig()
	if err != nil {
		return nil, err
	}
	tunePool(pc, cfg.DatabaseURL, cfg.DBMaxConns, cfg.RequestTimeout)
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

// NewReadPool returns the connection pool for DATABASE_READ_URL, which the
// GET routes use, or nil when it is not set: the same settings, sessions
// named usersvc-read (config.ReadPoolConfig). A client reads its own writes
// through it because the write pool's commits wait for the synchronous
// standbys to apply them (remote_apply) before the service acknowledges
// them: a standby in the synchronous quorum has every acknowledged write.
func NewReadPool(ctx context.Context, cfg config.Config) (*pgxpool.Pool, error) {
	if cfg.DatabaseReadURL == "" {
		return nil, nil
	}
	pc, err := cfg.ReadPoolConfig()
	if err != nil {
		return nil, err
	}
	tunePool(pc, cfg.DatabaseReadURL, cfg.DBMaxConns, cfg.RequestTimeout)
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, fmt.Errorf("create read connection pool: %w", err)
	}
	return pool, nil
}

// tunePool sizes the pool for url, which pc was parsed from: maxConns
// connections (0: pool_max_conns from url, else config.DefaultMaxConns); bounds
// every connection by budget, REQUEST_TIMEOUT, on both ends (boundSessions);
// refuses old primaries (fenceOldPrimaries);
// has each new connection prepare every query when the query mode allows;
// and traces the statements while tracing is on.
func tunePool(pc *pgxpool.Config, url string, maxConns int32, budget time.Duration) {
	if t := tracing.PgxTracer(); t != nil {
		pc.ConnConfig.Tracer = t
	}
	silent := boundSessions(pc.ConnConfig, budget)
	fenceOldPrimaries(&pc.ConnConfig.Config)
	pc.PrepareConn = func(_ context.Context, conn *pgx.Conn) (bool, error) {
		return !silent.outlived(conn.PgConn()) && !wasReset(conn.PgConn()), nil
	}
	switch {
	case maxConns > 0:
		pc.MaxConns = maxConns
	case !strings.Contains(url, "pool_max_conns"):
		pc.MaxConns = config.DefaultMaxConns(runtime.GOMAXPROCS(0))
	}
	// pgx's default mode prepares every statement anyway, through a cache
	// that drops a statement whenever an execution fails, so that the next
	// execution prepares it again: a round trip more after every taken
	// name. Statements prepared by name (their SQL) stay. Other modes, such
	// as default_query_exec_mode=exec in DATABASE_URL for a pooler in
	// transaction mode, prepare nothing, and neither does this.
	// A pooler in transaction mode shares the server's sessions with other
	// clients: no setting of the service's may stay on them.
	if pc.ConnConfig.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement {
		bounds, args := serverBounds(pc.ConnConfig, budget)
		pc.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
			if _, err := conn.Exec(ctx, bounds, args...); err != nil {
				return fmt.Errorf("bound the session: %w", err)
			}
			return prepareQueries(ctx, conn)
		}
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
// statement cache; so are the rest once one would wait on a lock (a
// migration's, say) for longer than prepareLockTimeout, so that a new
// connection is never held back by a table its first call may not need.
// Returns an error only when the connection fails.
func prepareQueries(ctx context.Context, conn *pgx.Conn) error {
	if _, err := conn.Exec(ctx, "SET lock_timeout = "+prepareLockTimeout); err != nil {
		return fmt.Errorf("prepare statements: %w", err)
	}
	for _, sql := range preparedQueries {
		if _, err := conn.Prepare(ctx, sql, sql); err != nil {
			pgErr, refused := errors.AsType[*pgconn.PgError](err)
			if !refused {
				return fmt.Errorf("prepare statements: %w", err)
			}
			if pgErr.Code == pgerrcode.LockNotAvailable {
				break
			}
		}
	}
	// Back to the session's own: DATABASE_URL's, the role's or the server's.
	if _, err := conn.Exec(ctx, "RESET lock_timeout"); err != nil {
		return fmt.Errorf("prepare statements: %w", err)
	}
	return nil
}

// prepareLockTimeout is the longest a new connection waits on a lock to
// prepare a statement.
const prepareLockTimeout = "'100ms'"

// ConnectErr returns err, from a command's work on the database, with the
// database named as host:port/database (never the user or password) and,
// when it did not answer, the connect timeout it had, if err is a failure
// to connect. Returns any other err unchanged.
func ConnectErr(cfg config.Config, err error) error {
	connErr, ok := errors.AsType[*pgconn.ConnectError](err)
	if !ok {
		return err
	}
	if bound := connErr.Config.ConnectTimeout; bound > 0 && (pgconn.Timeout(err) || errors.Is(err, context.DeadlineExceeded)) {
		return fmt.Errorf("the database at %s did not answer within %s: %w", cfg.DatabaseHost(), bound, err)
	}
	return fmt.Errorf("cannot connect to the database at %s: %w", cfg.DatabaseHost(), err)
}

// serverKeepalive is how often, once idle, the server checks that the
// service's end of a session is still there (tcp_keepalives_idle and
// _interval, three probes): a session whose client vanished with the
// network ends within about four times it of the network's return.
const serverKeepalive = 10 * time.Second

// boundSessions makes budget, the most time a request's database work may
// take, hold on both ends of every connection, so that a write the service
// gave up on never commits later (docs/reliability.md, "A vanished
// database host"):
//   - when a call's context ends, its socket is reset at once (SO_LINGER 0):
//     what the kernel still had queued for the server is dropped, not
//     retransmitted once the network returns;
//   - TCP_USER_TIMEOUT ends a connection whose data goes unacknowledged
//     for budget, and the dial of pgx's cancel request has budget too, so
//     that a closing connection frees its pool slot within budget;
//   - each session gets statement_timeout and
//     idle_in_transaction_session_timeout of at most budget, so the server
//     abandons by itself a statement that runs past it, and TCP keepalives
//     and tcp_user_timeout that end a session whose client vanished
//     (serverBounds; set in tunePool);
//   - a host that left the data of a call unacknowledged until its context
//     ended, or until TCP_USER_TIMEOUT ended the connection, has vanished
//     from the network: the returned silence drops every older connection
//     to it (in tunePool's PrepareConn), so that none reaches it once the
//     network returns, when it may be an old primary still taking
//     connections before its fence (docs/reliability.md, "The old primary,
//     once the network returns").
func boundSessions(cc *pgx.ConnConfig, budget time.Duration) *silence {
	silent := &silence{}
	dialer := &net.Dialer{
		Timeout:   budget,
		KeepAlive: -1, // the server's keepalives watch idle sessions
		Control: func(network, _ string, c syscall.RawConn) error {
			if !strings.HasPrefix(network, "tcp") {
				return nil // a Unix socket: no network to vanish
			}
			var err error
			if ctrlErr := c.Control(func(fd uintptr) {
				err = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_TCP, tcpUserTimeout, int(budget.Milliseconds()))
			}); ctrlErr != nil {
				return ctrlErr
			}
			return err
		},
	}
	cc.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &resettableConn{Conn: c, addr: addr, born: time.Now(), silent: silent}, nil
	}
	cc.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return resetOnCancel{resettable(pc)}
	}
	return silent
}

// silence is when each host last went silent: left a call's data
// unacknowledged until the call's context, or TCP_USER_TIMEOUT, ended it.
type silence struct {
	since sync.Map // addr to time.Time
}

// outlived reports whether pc is a connection made before its host last
// went silent.
func (s *silence) outlived(pc *pgconn.PgConn) bool {
	rc := resettable(pc)
	if rc == nil {
		return false
	}
	t, ok := s.since.Load(rc.addr)
	return ok && rc.born.Before(t.(time.Time))
}

// serverBounds returns the statement that gives a new session the
// server-side bounds of boundSessions, with its arguments: each setting
// that cc's startup parameters (DATABASE_URL) leave alone is lowered to
// its bound when the server's own (its configuration, ALTER ROLE or ALTER
// DATABASE) is off or higher, so that an operator's lower value stays.
func serverBounds(cc *pgx.ConnConfig, budget time.Duration) (string, []any) {
	var names []string
	var values []int64
	for _, b := range []struct {
		name  string
		value int64 // in the setting's unit
	}{
		{"statement_timeout", budget.Milliseconds()},
		{"idle_in_transaction_session_timeout", budget.Milliseconds()},
		{"tcp_user_timeout", budget.Milliseconds()},
		{"tcp_keepalives_idle", int64(serverKeepalive.Seconds())},
		{"tcp_keepalives_interval", int64(serverKeepalive.Seconds())},
		{"tcp_keepalives_count", 3},
	} {
		if _, set := cc.RuntimeParams[b.name]; !set {
			names, values = append(names, b.name), append(values, b.value)
		}
	}
	return `SELECT set_config(s.name, b.value::text, false)
FROM pg_settings s JOIN unnest($1::text[], $2::bigint[]) AS b(name, value) USING (name)
WHERE s.setting::bigint = 0 OR s.setting::bigint > b.value`, []any{names, values}
}

// tcpUserTimeout is Linux's TCP_USER_TIMEOUT socket option.
const tcpUserTimeout = 0x12

// resettableConn is a connection to the database that reset can end at
// once. Reads and writes that fail because of it fail as a missed deadline,
// which is what ended them, so that pgx reports the context's error.
type resettableConn struct {
	net.Conn
	addr   string
	born   time.Time
	silent *silence
	reset  atomic.Bool
}

// resettable returns pc's connection, under its TLS if any, or nil for one
// that boundSessions' dialer did not make.
func resettable(pc *pgconn.PgConn) *resettableConn {
	c := pc.Conn()
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	rc, _ := c.(*resettableConn)
	return rc
}

// wasReset reports whether pc's connection was reset: when a call's
// context ends just as the call succeeds, pgx keeps the connection, which
// no call can use any more.
func wasReset(pc *pgconn.PgConn) bool {
	rc := resettable(pc)
	return rc != nil && rc.reset.Load()
}

// resetNow drops what the kernel still had queued for the server and
// resets the connection (SO_LINGER 0), rather than closing it gracefully.
// After a missed deadline, data still unacknowledged marks the host silent;
// a call cancelled (the service stopping its background work) proves
// nothing of the host.
func (c *resettableConn) resetNow(missed bool) {
	c.reset.Store(true)
	if tc, ok := c.Conn.(*net.TCPConn); ok {
		if missed && unacknowledged(tc) {
			c.silent.since.Store(c.addr, time.Now())
		}
		_ = tc.SetLinger(0)
	}
	_ = c.Conn.Close()
	if missed {
		// A statement the network delivered just before the reset commits
		// within its execution time: by the answer, it has happened
		// (docs/reliability.md, "What remains").
		time.Sleep(lateArrivalGrace)
	}
}

// lateArrivalGrace is how long a call that missed its deadline waits,
// once its connection is reset, before it fails.
const lateArrivalGrace = 100 * time.Millisecond

func (c *resettableConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	return n, c.cause(err)
}

func (c *resettableConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	return n, c.cause(err)
}

func (c *resettableConn) cause(err error) error {
	switch {
	case err == nil:
	case c.reset.Load():
		return &net.OpError{Op: "reset", Net: "tcp", Err: os.ErrDeadlineExceeded}
	case errors.Is(err, syscall.ETIMEDOUT):
		// TCP_USER_TIMEOUT ended the connection before the call's context
		// did (as it may on a loaded CPU): the host left its data
		// unacknowledged for the whole budget, so it is silent too.
		c.silent.since.Store(c.addr, time.Now())
	}
	return err
}

// resetOnCancel is the pgx context handler of every connection: when a
// call's context ends, it resets the connection (see boundSessions). The
// call then fails, and pgx closes the connection and sends the server a
// cancel request for whatever it may still run.
type resetOnCancel struct{ conn *resettableConn }

func (h resetOnCancel) HandleCancel(ctx context.Context) {
	if h.conn != nil {
		h.conn.resetNow(errors.Is(ctx.Err(), context.DeadlineExceeded))
	}
}

func (resetOnCancel) HandleUnwatchAfterCancel() {}
