package server

import (
	"context"
	"crypto/rand"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
	"usersvc/internal/pglocal"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
)

// databaseRequests are a request to every route that needs the database.
var databaseRequests = []struct{ method, path, body string }{
	{"GET", "/readyz", ""},
	{"GET", "/users", ""},
	{"GET", "/users/1", ""},
	{"POST", "/users", `{"name":"x"}`},
	{"PUT", "/users/1", `{"name":"x"}`},
	{"DELETE", "/users/1", ""},
}

// genericUnavailable is the detail of every 503 outside /readyz.
const genericUnavailable = "the database is unavailable or did not answer in time; retry later"

// TestDatabaseUnavailable serves against a real PostgreSQL that refuses the
// service's connections for each reason an operator must fix: every route
// answers 503 unavailable with Retry-After, /readyz's detail and the log
// say which reason (never the password), the API's detail does not.
func TestDatabaseUnavailable(t *testing.T) {
	t.Parallel()
	const password = "pa55-w0rd-never-shown"
	for _, tt := range []struct {
		name     string
		sqlstate string
		why      string // in /readyz's detail and the log's err
		// databaseURL returns the URL the service gets, given the test's
		// own database and a superuser connection to its server.
		databaseURL func(t *testing.T, admin *pgx.Conn, databaseURL string) string
	}{
		{"wrong password", "28P01", "the database refused the service's credentials (SQLSTATE 28P01): check the user and password in DATABASE_URL",
			func(t *testing.T, admin *pgx.Conn, databaseURL string) string {
				role := newRole(t, admin, "LOGIN PASSWORD 'the-right-one'")
				return withUser(t, databaseURL, role, password)
			}},
		{"no such role", "28P01", "the database refused the service's credentials (SQLSTATE 28P01)",
			func(t *testing.T, admin *pgx.Conn, databaseURL string) string {
				return withUser(t, databaseURL, "usersvc_test_nobody", password)
			}},
		{"role may not log in", "28000", "the database refused the service's role (SQLSTATE 28000)",
			func(t *testing.T, admin *pgx.Conn, databaseURL string) string {
				return withUser(t, databaseURL, newRole(t, admin, "NOLOGIN PASSWORD '"+password+"'"), password)
			}},
		{"no such database", "3D000", "the database named in DATABASE_URL does not exist (SQLSTATE 3D000)",
			func(t *testing.T, admin *pgx.Conn, databaseURL string) string {
				return withDatabase(t, databaseURL, "usersvc_test_never_created")
			}},
		{"no connection slot", "53300", "the database has no connection slot free (SQLSTATE 53300)",
			func(t *testing.T, admin *pgx.Conn, databaseURL string) string {
				u := withUser(t, databaseURL, newRole(t, admin, "LOGIN PASSWORD '"+password+"' CONNECTION LIMIT 1"), password)
				connect(t, u) // the role's one slot, taken
				return u
			}},
		{"no CONNECT privilege", "42501", "the database refused the service's connection (SQLSTATE 42501)",
			func(t *testing.T, admin *pgx.Conn, databaseURL string) string {
				role := newRole(t, admin, "LOGIN PASSWORD '"+password+"'")
				mustExec(t, admin, "REVOKE CONNECT ON DATABASE "+pgx.Identifier{databaseName(t, databaseURL)}.Sanitize()+" FROM PUBLIC")
				return withUser(t, databaseURL, role, password)
			}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			databaseURL := pgtest.NewURL(t)
			admin := connect(t, pgtest.AdminURL(t))
			s, logs := serverOn(t, tt.databaseURL(t, admin, databaseURL))
			wantUnavailable(t, s, logs, tt.sqlstate, tt.why, password)
		})
	}
}

// TestDatabaseDropped drops the service's database under it: 503, never
// 500, and /readyz then says that the database does not exist.
func TestDatabaseDropped(t *testing.T) {
	t.Parallel()
	databaseURL := pgtest.NewURL(t)
	admin := connect(t, pgtest.AdminURL(t))
	s, logs := serverOn(t, databaseURL)
	s.createUser("before the drop")
	mustExec(t, admin, "DROP DATABASE "+pgx.Identifier{databaseName(t, databaseURL)}.Sanitize()+" WITH (FORCE)")
	for _, req := range databaseRequests {
		r := s.do(req.method, req.path, "application/json", strings.NewReader(req.body))
		wantProblem(t, req.method+" "+req.path+" after the drop", r, http.StatusServiceUnavailable, codeUnavailable)
	}
	// The sessions the drop ended are gone from the pool by now.
	logs.reset()
	wantUnavailable(t, s, logs, "3D000", "the database named in DATABASE_URL does not exist (SQLSTATE 3D000)", "")
}

// TestDatabaseReadOnly serves from a database whose sessions are read-only,
// as a standby's are after a failover: writes get 503, as the database is
// unavailable for them, not 500.
func TestDatabaseReadOnly(t *testing.T) {
	t.Parallel()
	databaseURL := pgtest.NewURL(t)
	admin := connect(t, pgtest.AdminURL(t))
	mustExec(t, admin, "ALTER DATABASE "+pgx.Identifier{databaseName(t, databaseURL)}.Sanitize()+" SET default_transaction_read_only = on")
	s, logs := serverOn(t, databaseURL)
	writes := databaseRequests[3:]
	for _, req := range writes {
		r := s.do(req.method, req.path, "application/json", strings.NewReader(req.body))
		p := wantProblem(t, req.method+" "+req.path+" on a read-only database", r, http.StatusServiceUnavailable, codeUnavailable)
		if r.header.Get("Retry-After") == "" || p.Detail != genericUnavailable {
			t.Errorf("%s %s on a read-only database: Retry-After %q, detail %q; want one, and %q", req.method, req.path, r.header.Get("Retry-After"), p.Detail, genericUnavailable)
		}
	}
	wantLogged(t, logs, len(writes), "25006", "the database is read-only (SQLSTATE 25006)", "")
}

// TestSessionTerminated ends the session of a request that waits for a
// lock, as pg_terminate_backend or a fast shutdown does: 503, not 500.
func TestSessionTerminated(t *testing.T) {
	t.Parallel()
	databaseURL := pgtest.NewURL(t)
	s, logs := serverOn(t, databaseURL)
	u := s.createUser("locked")
	adminURL := withDatabase(t, pgtest.AdminURL(t), databaseName(t, databaseURL))
	locker, watcher := connect(t, adminURL), connect(t, adminURL)
	ctx := t.Context()
	tx, err := locker.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE users IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}

	type answer struct {
		req *http.Request
		r   response
		err error
	}
	answered := make(chan answer, 1)
	go func() {
		req, r, err := s.send("GET", userPath(u.ID), "", nil)
		answered <- answer{req, r, err}
	}()
	var pid int32
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		err := watcher.QueryRow(ctx, `SELECT pid FROM pg_stat_activity
			WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> $1`, locker.PgConn().PID()).Scan(&pid)
		if err == nil {
			break
		}
		if !errors.Is(err, pgx.ErrNoRows) || time.Now().After(deadline) {
			t.Fatalf("find the session waiting for the lock: %v", err)
		}
	}
	mustExec(t, watcher, "SELECT pg_terminate_backend("+strconv.Itoa(int(pid))+")")
	a := <-answered
	if a.err != nil {
		t.Fatal(a.err)
	}
	s.check(a.req, a.r)
	wantProblem(t, "GET "+userPath(u.ID)+" whose session was terminated", a.r, http.StatusServiceUnavailable, codeUnavailable)
	wantLogged(t, logs, 1, "57P01", "the database ended the service's session (SQLSTATE 57P01)", "")
}

// TestDatabaseShuttingDown serves against a PostgreSQL of the test's own
// in a smart shutdown, which lets its open sessions finish but accepts no
// new ones.
func TestDatabaseShuttingDown(t *testing.T) {
	t.Parallel()
	dir, err := pglocal.MkdirScratch("usersvc-test-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	pg, err := pglocal.Start(t.Context(), pglocal.Options{Dir: filepath.Join(dir, "data"), Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	databaseURL := pg.URL("postgres")
	pgtest.Migrate(t, databaseURL)
	connect(t, databaseURL) // a session that holds the shutdown open

	pidFile, err := os.ReadFile(filepath.Join(pg.Dir(), "postmaster.pid"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(string(pidFile), "\n")
	pid, err := strconv.Atoi(line)
	if err != nil {
		t.Fatalf("postmaster.pid: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil { // smart shutdown
		t.Fatal(err)
	}
	s, logs := serverOn(t, databaseURL)
	// The postmaster refuses new sessions once it has read its signal.
	for deadline := time.Now().Add(5 * time.Second); s.get("/readyz").status == http.StatusOK; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("GET /readyz still 200 5s after the smart shutdown began")
		}
	}
	logs.reset()
	wantUnavailable(t, s, logs, "57P03", "the database accepts no connections now (SQLSTATE 57P03)", "")
}

// wantUnavailable sends databaseRequests to s and fails the test unless
// each gets 503 unavailable with Retry-After, /readyz with why in its
// detail and the others with the generic detail, and the log has a line
// for each with the sqlstate and why. Neither the answers nor the log may
// show password, when given.
func wantUnavailable(t *testing.T, s *testServer, logs *logBuffer, sqlstate, why, password string) {
	t.Helper()
	for _, req := range databaseRequests {
		what := req.method + " " + req.path
		r := s.do(req.method, req.path, "application/json", strings.NewReader(req.body))
		p := wantProblem(t, what, r, http.StatusServiceUnavailable, codeUnavailable)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s: 503 without Retry-After", what)
		}
		want := genericUnavailable
		if req.path == "/readyz" {
			want = why
		}
		if !strings.Contains(p.Detail, want) {
			t.Errorf("%s: detail %q, want it to say %q", what, p.Detail, want)
		}
		if password != "" && strings.Contains(string(r.body), password) {
			t.Errorf("%s: the answer shows the password: %s", what, r.body)
		}
	}
	wantLogged(t, logs, len(databaseRequests), sqlstate, why, password)
}

// wantLogged fails the test unless logs has n lines for failed requests, each
// a warning with the sqlstate and why in its err, and none shows password.
func wantLogged(t *testing.T, logs *logBuffer, n int, sqlstate, why, password string) {
	t.Helper()
	var failed int
	for _, rec := range logs.records(t) {
		if rec["msg"] != "request failed" {
			continue
		}
		failed++
		if err, _ := rec["err"].(string); rec["level"] != "WARN" || rec["sqlstate"] != sqlstate || !strings.Contains(err, why) {
			t.Errorf("log line %v, want level WARN, sqlstate %s and an err that says %q", rec, sqlstate, why)
		}
	}
	if failed != n {
		t.Errorf("%d log lines for failed requests, want %d", failed, n)
	}
	if password != "" && strings.Contains(logs.String(), password) {
		t.Errorf("the log shows the password:\n%s", logs.String())
	}
}

// serverOn serves the real handler stack on a pool for databaseURL that,
// like serve's, connects only when a request needs it, with a REQUEST_TIMEOUT
// that leaves a test time to act while a request waits.
func serverOn(t *testing.T, databaseURL string) (*testServer, *logBuffer) {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 2
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return newObservedServerTimeout(t, db.New(pool), postgres.Probe{Q: pool}, slog.LevelWarn, 10*time.Second)
}

// newRole creates a role with a new name and options on the server of
// admin, dropped when the test ends, and returns its name.
func newRole(t *testing.T, admin *pgx.Conn, options string) string {
	t.Helper()
	name := "usersvc_test_" + strings.ToLower(rand.Text()[:12])
	mustExec(t, admin, "CREATE ROLE "+pgx.Identifier{name}.Sanitize()+" "+options)
	t.Cleanup(func() {
		if _, err := admin.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{name}.Sanitize()); err != nil {
			t.Errorf("drop role %s: %v", name, err)
		}
	})
	return name
}

// connect returns a connection to databaseURL, closed when the test ends.
func connect(t *testing.T, databaseURL string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), databaseURL)
	if err != nil {
		t.Fatalf("connect to %s: %v", databaseURL, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// mustExec runs sql on conn; the test fails at once when it fails.
func mustExec(t *testing.T, conn *pgx.Conn, sql string) {
	t.Helper()
	if _, err := conn.Exec(t.Context(), sql); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// withUser returns databaseURL with its user and password replaced.
func withUser(t *testing.T, databaseURL, user, password string) string {
	t.Helper()
	u := parseURL(t, databaseURL)
	u.User = url.UserPassword(user, password)
	return u.String()
}

// withDatabase returns databaseURL with its database replaced.
func withDatabase(t *testing.T, databaseURL, database string) string {
	t.Helper()
	u := parseURL(t, databaseURL)
	u.Path = "/" + database
	return u.String()
}

// databaseName returns the database databaseURL names.
func databaseName(t *testing.T, databaseURL string) string {
	t.Helper()
	return strings.TrimPrefix(parseURL(t, databaseURL).Path, "/")
}

func parseURL(t *testing.T, databaseURL string) *url.URL {
	t.Helper()
	u, err := url.Parse(databaseURL)
	if err != nil {
		t.Fatalf("parse %s: %v", databaseURL, err)
	}
	return u
}
