// Package pgtest gives each test a real PostgreSQL database of its own,
// migrated with the service's migrations and dropped when the test passes.
//
// A test package opts in with
//
//	func TestMain(m *testing.M) { pgtest.Main(m) }
//
// Main uses the server that TEST_DATABASE_URL points at or, when that is
// unset, starts a throwaway server (see package pglocal) for the package's
// tests. Each database is cloned from a template that is migrated once per
// server and migration set, which takes a few milliseconds per test. Under
// go test -fuzz, the fuzzing workers share the server the coordinating
// process started.
package pgtest

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib" // also the "pgx" database/sql driver pgtestdb uses
	"github.com/peterldowns/pgtestdb"
	"github.com/peterldowns/pgtestdb/migrators/common"

	"usersvc/internal/pglocal"
	"usersvc/migrations"
)

// maxConns bounds each test's pool: many tests hold pools at once.
const maxConns = 4

// dirPrefix names the directories of throwaway servers, so that Main can
// recognise those a killed test binary left behind.
const dirPrefix = "pgtest-"

// server is what Main found or started for the tests of this binary.
type server struct {
	conf     pgtestdb.Config // admin connection for pgtestdb
	adminURL string
	err      error // why there is no server; every test that asks fails with it
}

// current is the one piece of package state: NewURL's signature leaves no
// other way to hand it the server that Main started. Main stores it before
// the tests run and never changes it afterwards.
var current atomic.Pointer[server]

// Main runs the tests of a package against a PostgreSQL server and returns
// their result to the testing package (do not call os.Exit after it).
//
// With TEST_DATABASE_URL set, tests create their databases on that server,
// through that URL's user, which needs the CREATEDB and CREATEROLE
// privileges; tests of refused credentials need the server to check the
// passwords of the roles they create, as the throwaway server does. Otherwise Main starts a throwaway server in a new directory
// under /dev/shm (or the temporary directory) and removes both after the
// tests. When that fails the tests still run, and every test that asks for
// a database fails with the reason.
func Main(m *testing.M) {
	srv, stop := setUp()
	if srv.err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", srv.err)
	}
	current.Store(srv)
	m.Run()
	if err := stop(); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: %v\n", err)
	}
}

// setUp returns the server to use and the function that releases it.
func setUp() (*server, func() error) {
	noop := func() error { return nil }
	if u := os.Getenv("TEST_DATABASE_URL"); u != "" {
		return fromURL(u), noop
	}

	pg, err := pglocal.StartScratch(context.Background(), "", dirPrefix, pglocal.Options{Ephemeral: true})
	if err != nil {
		return &server{err: fmt.Errorf("start test database: %w", err)}, noop
	}
	stop := pg.Stop
	if fuzzCoordinator() {
		// go test -fuzz runs the test binary again for each fuzzing worker,
		// with this process's environment: they create their databases on
		// this server rather than each starting one. It outlives them.
		if err := os.Setenv("TEST_DATABASE_URL", pg.URL("postgres")); err != nil {
			stop()
			return &server{err: fmt.Errorf("share the test database with fuzzing workers: %w", err)}, noop
		}
	}
	return fromURL(pg.URL("postgres")), stop
}

// fuzzCoordinator reports whether this test binary coordinates fuzzing
// (go test -fuzz), as opposed to being one of its workers or running tests.
func fuzzCoordinator() bool {
	if !flag.Parsed() {
		flag.Parse() // the testing package's flags; m.Run would parse them next
	}
	fuzz, worker := flag.Lookup("test.fuzz"), flag.Lookup("test.fuzzworker")
	return fuzz != nil && fuzz.Value.String() != "" && worker != nil && worker.Value.String() != "true"
}

// fromURL returns the server that the postgres:// URL u points at.
func fromURL(u string) *server {
	conf, err := configFromURL(u)
	if err != nil {
		return &server{err: err}
	}
	return &server{conf: conf, adminURL: u}
}

// configFromURL turns a postgres:// URL into a pgtestdb.Config, which
// pgtestdb turns back into URLs without escaping anything: its fields keep
// their escaped form.
func configFromURL(raw string) (pgtestdb.Config, error) {
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return pgtestdb.Config{}, errors.New("TEST_DATABASE_URL: want a URL of the form postgres://user:password@host:port/database?options")
	}
	conf := pgtestdb.Config{
		DriverName: "pgx",
		Host:       u.Host,
		Port:       u.Port(),
		Database:   strings.TrimPrefix(u.EscapedPath(), "/"),
		Options:    u.RawQuery,
	}
	conf.Host = strings.TrimSuffix(conf.Host, ":"+conf.Port)
	if conf.Port == "" {
		conf.Port = "5432"
	}
	if u.User != nil {
		conf.User, conf.Password, _ = strings.Cut(u.User.String(), ":")
	}
	return conf, nil
}

// get returns the server to create databases on. Returns an error when Main
// could not start one, or when Main did not run and TEST_DATABASE_URL is
// unset.
func get() (*server, error) {
	srv := current.Load()
	if srv == nil {
		u := os.Getenv("TEST_DATABASE_URL")
		if u == "" {
			return nil, errors.New("no test database: call pgtest.Main from TestMain, or set TEST_DATABASE_URL")
		}
		srv = fromURL(u)
	}
	if srv.err != nil {
		return nil, srv.err
	}
	return srv, nil
}

// NewURL returns the URL of a new database of this test's own, cloned from
// a template migrated with the service's migrations. The database is dropped
// when the test ends, unless the test failed: it is then kept for
// inspection (its URL is in the test's log). The test fails at once when no
// database can be made.
func NewURL(t testing.TB) string {
	t.Helper()
	return newDatabase(t, migrator{})
}

// NewEmptyURL is like NewURL, but the database is empty: no migration has
// run in it.
func NewEmptyURL(t testing.TB) string {
	t.Helper()
	return newDatabase(t, pgtestdb.NoopMigrator{})
}

func newDatabase(t testing.TB, m pgtestdb.Migrator) string {
	t.Helper()
	srv, err := get()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return pgtestdb.Custom(t, srv.conf, m).URL()
}

// NewPool returns a small pool (4 connections at most) on a database of the
// test's own, as made by NewURL. The pool is closed when the test ends; the
// test fails at once when the pool cannot connect.
func NewPool(t testing.TB) *pgxpool.Pool {
	t.Helper()
	return NewPoolOn(t, NewURL(t))
}

// Migrate applies the service's migrations to the database at u, as
// `usersvc migrate up` does. The test fails at once when they fail.
func Migrate(t testing.TB, u string) {
	t.Helper()
	cc, err := pgx.ParseConfig(u)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", u, err)
	}
	db := stdlib.OpenDB(*cc)
	defer db.Close()
	if err := (migrator{}).Migrate(context.Background(), db, pgtestdb.Config{}); err != nil {
		t.Fatalf("pgtest: migrate %s: %v", u, err)
	}
}

// NewPoolOn is NewPool on the database at u, such as one from NewEmptyURL.
func NewPoolOn(t testing.TB, u string) *pgxpool.Pool {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(u)
	if err != nil {
		t.Fatalf("pgtest: parse %s: %v", u, err)
	}
	cfg.MaxConns = maxConns
	ctx := context.Background()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatalf("pgtest: connect to %s: %v", u, err)
	}
	// Registered after pgtestdb's clean-up, so it runs before the drop.
	t.Cleanup(pool.Close)
	if err := pool.Ping(ctx); err != nil {
		t.Fatalf("pgtest: connect to %s: %v", u, err)
	}
	return pool
}

// AdminURL returns the URL that databases are created through: the
// server's postgres database as its superuser for a throwaway server, else
// TEST_DATABASE_URL. Tests that use it clean up after themselves. The test
// fails at once when there is no server.
func AdminURL(t testing.TB) string {
	t.Helper()
	srv, err := get()
	if err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	return srv.adminURL
}

// migrator applies the service's migrations to pgtestdb's template
// database.
type migrator struct{}

// Hash identifies the migrations by the contents of their files, so that a
// changed or added migration gets a new template.
func (migrator) Hash() (string, error) {
	h, err := common.HashDirs(migrations.FS(), "*.sql", ".")
	if err != nil {
		return "", fmt.Errorf("hash migrations: %w", err)
	}
	return h, nil
}

// Migrate applies every migration to db.
func (migrator) Migrate(ctx context.Context, db *sql.DB, _ pgtestdb.Config) error {
	p, err := migrations.NewProvider(db)
	if err != nil {
		return err
	}
	if _, err := p.Up(ctx); err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	return nil
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago; the
// test fails at once when there is none.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := pglocal.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// FreeAddr returns FreePort's port as an address, 127.0.0.1:port.
func FreeAddr(t testing.TB) string {
	t.Helper()
	return fmt.Sprintf("127.0.0.1:%d", FreePort(t))
}
