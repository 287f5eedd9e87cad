package postgres

import (
	"context"
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"usersvc/db"
	"usersvc/internal/config"
	"usersvc/internal/pgtest"
)

// TestPreparedQueriesListsEveryQuery checks preparedQueries against the
// exported SQL constants that sqlc generated in db/.
func TestPreparedQueriesListsEveryQuery(t *testing.T) {
	pkgs, err := parser.ParseDir(token.NewFileSet(), "../../db", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var consts int
	for _, pkg := range pkgs {
		for _, f := range pkg.Files {
			for _, decl := range f.Decls {
				if gd, ok := decl.(*ast.GenDecl); ok && gd.Tok == token.CONST {
					for _, spec := range gd.Specs {
						for _, name := range spec.(*ast.ValueSpec).Names {
							if name.IsExported() {
								consts++
							}
						}
					}
				}
			}
		}
	}
	if consts != len(preparedQueries) {
		t.Errorf("db/ exports %d queries, preparedQueries lists %d: add the new ones", consts, len(preparedQueries))
	}
}

// TestPoolKeepsPreparedStatements checks that a failed execution, a taken
// name, does not cost the statement: the connection neither drops nor
// prepares anything.
func TestPoolKeepsPreparedStatements(t *testing.T) {
	ctx := context.Background()
	pool, err := NewPool(ctx, config.Config{DatabaseURL: pgtest.NewURL(t), DBMaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	q := db.New(pool)
	if _, err := q.CreateUser(ctx, "taken"); err != nil {
		t.Fatal(err)
	}
	serverStatements := func() []string {
		rows, err := pool.Query(ctx, "SELECT statement FROM pg_prepared_statements ORDER BY statement")
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for rows.Next() {
			var s string
			if err := rows.Scan(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
		return out
	}
	before := serverStatements()
	for _, sql := range preparedQueries {
		if !slices.ContainsFunc(before, func(s string) bool { return strings.TrimSpace(s) == strings.TrimSpace(sql) }) {
			t.Errorf("the connection has not prepared %.40q...", sql)
		}
	}
	for range 3 {
		_, err := q.CreateUser(ctx, "taken")
		if pgErr, ok := err.(*pgconn.PgError); !ok || pgErr.Code != "23505" {
			t.Fatalf("CreateUser of a taken name = %v, want a 23505", err)
		}
	}
	if after := serverStatements(); !slices.Equal(before, after) {
		t.Errorf("prepared statements after failed inserts = %d, before %d: want the same", len(after), len(before))
	}
}

// TestPoolConnectsPastALock checks that a new connection is not held back
// by a lock on a table it prepares statements for, as a migration takes:
// with users locked, a query on another table answers, and the session's
// lock_timeout is DATABASE_URL's again.
func TestPoolConnectsPastALock(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewURL(t)
	tx, err := pgtest.NewPoolOn(t, url).Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	pool, err := NewPool(ctx, config.Config{DatabaseURL: url + "&lock_timeout=7s", DBMaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	var lockTimeout string
	if err := pool.QueryRow(callCtx, "SELECT current_setting('lock_timeout') FROM (VALUES (1)) v LEFT JOIN idempotency_keys ON false").Scan(&lockTimeout); err != nil {
		t.Fatalf("a query on another table while users is locked: %v", err)
	}
	if lockTimeout != "7s" {
		t.Errorf("lock_timeout after connecting = %q, want DATABASE_URL's 7s", lockTimeout)
	}
}

func TestPoolSize(t *testing.T) {
	for _, tt := range []struct {
		name string
		cfg  config.Config
		want int32
	}{
		{"DB_MAX_CONNS", config.Config{DatabaseURL: "postgres://h/db", DBMaxConns: 3}, 3},
		{"DB_MAX_CONNS over the URL", config.Config{DatabaseURL: "postgres://h/db?pool_max_conns=9", DBMaxConns: 3}, 3},
		{"the URL's pool_max_conns", config.Config{DatabaseURL: "postgres://h/db?pool_max_conns=9"}, 9},
		{"the default", config.Config{DatabaseURL: "postgres://h/db"}, config.DefaultMaxConns(runtime.GOMAXPROCS(0))},
	} {
		pool, err := NewPool(context.Background(), tt.cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := pool.Config().MaxConns; got != tt.want {
			t.Errorf("%s: MaxConns = %d, want %d", tt.name, got, tt.want)
		}
		pool.Close()
	}
	for procs, want := range map[int]int32{1: 16, 2: 16, 8: 16, 16: 32} {
		if got := config.DefaultMaxConns(procs); got != want {
			t.Errorf("config.DefaultMaxConns(%d) = %d, want %d", procs, got, want)
		}
	}
}

// TestPoolConnectTimeout checks that serve's pool bounds its connects as
// every command does, whose own tests run against a silent database.
func TestPoolConnectTimeout(t *testing.T) {
	pool, err := NewPool(context.Background(), config.Config{DatabaseURL: "postgres://h/db", DBConnectTimeout: 7 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if got := pool.Config().ConnConfig.ConnectTimeout; got != 7*time.Second {
		t.Errorf("ConnectTimeout = %v, want DB_CONNECT_TIMEOUT's 7s", got)
	}
}

// TestPoolDropsReadOnlySessions checks that a connection whose session has
// turned read-only, as every session of a server fenced with
// default_transaction_read_only does, leaves the write pool when released,
// while one that takes writes stays.
func TestPoolDropsReadOnlySessions(t *testing.T) {
	ctx := context.Background()
	pool, err := NewPool(ctx, config.Config{DatabaseURL: pgtest.NewURL(t), DBMaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	// sessionPID runs sql on the pool's one connection and returns its
	// backend's pid.
	sessionPID := func(sql string) uint32 {
		t.Helper()
		conn, err := pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
		return conn.Conn().PgConn().PID()
	}
	first := sessionPID("SELECT 1")
	if again := sessionPID("SELECT 1"); again != first {
		t.Fatalf("a session that takes writes was replaced (pid %d, then %d): want it kept", first, again)
	}
	// The server tells the session of the change, as it does after a
	// reload that fences it.
	sessionPID("SET default_transaction_read_only = on")
	deadline := time.Now().Add(5 * time.Second)
	for sessionPID("SELECT 1") == first {
		// AfterRelease runs in a goroutine of the pool's.
		if time.Now().After(deadline) {
			t.Fatal("the read-only session is still in the pool 5s after its release: want it dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestPoolSettingsForReadURL checks what DATABASE_READ_URL changes: the
// write pool's sessions wait for the synchronous standbys to apply each
// commit, unless DATABASE_URL says otherwise, and the read pool's sessions
// have a name of their own. Without it, nothing changes.
func TestPoolSettingsForReadURL(t *testing.T) {
	ctx := context.Background()
	const readURL = "postgres://h1,h2/db?target_session_attrs=prefer-standby"
	for _, tt := range []struct {
		name, url, readURL, want string
	}{
		{"without DATABASE_READ_URL", "postgres://h/db", "", ""},
		{"with DATABASE_READ_URL", "postgres://h/db", readURL, "remote_apply"},
		{"DATABASE_URL's own setting", "postgres://h/db?synchronous_commit=local", readURL, "local"},
	} {
		cfg := config.Config{DatabaseURL: tt.url, DatabaseReadURL: tt.readURL}
		pool, err := NewPool(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if got := pool.Config().ConnConfig.RuntimeParams["synchronous_commit"]; got != tt.want {
			t.Errorf("%s: the write pool's synchronous_commit = %q, want %q", tt.name, got, tt.want)
		}
		pool.Close()
		reads, err := NewReadPool(ctx, cfg)
		switch {
		case err != nil:
			t.Fatal(err)
		case tt.readURL == "" && reads != nil:
			t.Errorf("%s: a read pool, want none", tt.name)
		case tt.readURL != "":
			if got := reads.Config().ConnConfig.RuntimeParams["application_name"]; got != "usersvc-read" {
				t.Errorf("%s: the read pool's application_name = %q, want usersvc-read", tt.name, got)
			}
			reads.Close()
		}
	}
}

// TestPoolBoundsSessions checks boundSessions on a real server: the
// server itself ends a statement that runs past REQUEST_TIMEOUT, a call
// whose context ends fails with the context's error on a connection that
// is then gone, a setting in DATABASE_URL wins, and a pooler's query mode
// gets no server-side settings.
func TestPoolBoundsSessions(t *testing.T) {
	ctx := context.Background()
	url := pgtest.NewURL(t)
	pool, err := NewPool(ctx, config.Config{DatabaseURL: url, RequestTimeout: 700 * time.Millisecond, DBMaxConns: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	_, err = pool.Exec(ctx, "SELECT pg_sleep(5)")
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != pgerrcode.QueryCanceled {
		t.Errorf("a statement past REQUEST_TIMEOUT, without a deadline of its own: err = %v, want the server's query_canceled", err)
	}
	short, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(short, "SELECT pg_sleep(5)")
	if !errors.Is(err, context.DeadlineExceeded) || !conn.Conn().IsClosed() {
		t.Errorf("a call whose context ends: err = %v, closed = %v; want DeadlineExceeded on a closed connection", err, conn.Conn().IsClosed())
	}
	conn.Release()

	for _, tt := range []struct{ name, url, want string }{
		{"the default", url, "700ms"},
		{"DATABASE_URL's own", url + "&statement_timeout=3s", "3s"},
		{"a pooler's query mode", url + "&default_query_exec_mode=exec", "0"},
	} {
		pool, err := NewPool(ctx, config.Config{DatabaseURL: tt.url, RequestTimeout: 700 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		var got string
		if err := pool.QueryRow(ctx, "SHOW statement_timeout").Scan(&got); err != nil {
			t.Fatal(err)
		}
		if got != tt.want {
			t.Errorf("%s: statement_timeout = %s, want %s", tt.name, got, tt.want)
		}
		pool.Close()
	}
}

// TestKernelTimeoutSilencesItsHost: a connection that TCP_USER_TIMEOUT
// ended, before the call's context did, marks its host silent, as a missed
// deadline with data unacknowledged does; another failure does not. The
// kernel's error is faked: only a network that drops packets gives it.
func TestKernelTimeoutSilencesItsHost(t *testing.T) {
	for _, tt := range []struct {
		name   string
		err    error
		silent bool
	}{
		{"TCP_USER_TIMEOUT", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ETIMEDOUT)}, true},
		{"the server closed it", io.EOF, false},
		{"reset by the server", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}, false},
	} {
		s := &silence{}
		rc := &resettableConn{Conn: failingConn{err: tt.err}, addr: "10.0.0.1:5432", born: time.Now().Add(-time.Millisecond), silent: s}
		if _, err := rc.Read(make([]byte, 1)); !errors.Is(err, tt.err) {
			t.Errorf("%s: Read = %v, want %v", tt.name, err, tt.err)
		}
		since, silent := s.since.Load(rc.addr)
		if silent != tt.silent {
			t.Errorf("%s: host silent = %v, want %v", tt.name, silent, tt.silent)
		}
		if silent && !rc.born.Before(since.(time.Time)) {
			t.Errorf("%s: the connection, born %v, is not older than its host's silence at %v", tt.name, rc.born, since)
		}
	}
}

// failingConn is a net.Conn whose reads fail with err.
type failingConn struct {
	net.Conn
	err error
}

func (c failingConn) Read([]byte) (int, error) { return 0, c.err }
