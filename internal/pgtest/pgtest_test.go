package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

func TestMain(m *testing.M) { Main(m) }

// checkIsolated inserts a user named "alice" into a fresh database and
// fails when the database was not fresh or sees another test's rows.
func checkIsolated(t *testing.T, pool *pgxpool.Pool) {
	t.Helper()
	ctx := t.Context()
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
		t.Fatalf("count users: %v", err)
	}
	if n != 0 {
		t.Fatalf("count users in a new database = %d, want 0", n)
	}
	// users.name is unique: a shared database would refuse the second alice.
	if _, err := pool.Exec(ctx, "INSERT INTO users (name) VALUES ('alice')"); err != nil {
		t.Fatalf("insert alice: %v", err)
	}
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM users").Scan(&n); err != nil {
		t.Fatalf("count users: %v", err)
	}
	if n != 1 {
		t.Fatalf("count users after one insert = %d, want 1", n)
	}
}

func TestNewPoolIsolated(t *testing.T) {
	t.Parallel()
	for _, name := range []string{"first", "second", "third"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			checkIsolated(t, NewPool(t))
		})
	}
}

func TestNewPoolTwiceInOneTest(t *testing.T) {
	t.Parallel()
	a, b := NewPool(t), NewPool(t)
	checkIsolated(t, a)
	checkIsolated(t, b)
}

func TestNewURLIsMigrated(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := connect(t, NewURL(t))
	var version int64
	if err := conn.QueryRow(ctx, "SELECT max(version_id) FROM goose_db_version").Scan(&version); err != nil {
		t.Fatalf("read goose version: %v", err)
	}
	if version < 1 {
		t.Errorf("goose version = %d, want at least 1", version)
	}
}

func TestNewEmptyURL(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := connect(t, NewEmptyURL(t))
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&n); err != nil {
		t.Fatalf("count tables: %v", err)
	}
	if n != 0 {
		t.Errorf("tables in an empty database = %d, want 0", n)
	}
}

func TestAdminURL(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	conn := connect(t, AdminURL(t))
	var canCreate bool
	if err := conn.QueryRow(ctx, "SELECT rolcreatedb FROM pg_roles WHERE rolname = current_user").Scan(&canCreate); err != nil {
		t.Fatalf("read role: %v", err)
	}
	if !canCreate {
		t.Errorf("AdminURL's role cannot create databases")
	}
}

func TestConfigFromURL(t *testing.T) {
	t.Parallel()
	tests := []struct {
		url      string
		wantConf string // the URL pgtestdb builds from the config
	}{
		{
			url:      "postgres://postgres@/postgres?host=%2Fdev%2Fshm%2Fx&port=5432&sslmode=disable",
			wantConf: "postgres://postgres:@:5432/postgres?host=%2Fdev%2Fshm%2Fx&port=5432&sslmode=disable",
		},
		{
			url:      "postgres://u:p%40ss@127.0.0.1:5433/db?sslmode=disable",
			wantConf: "postgres://u:p%40ss@127.0.0.1:5433/db?sslmode=disable",
		},
		{
			url:      "postgresql://u@[::1]/db",
			wantConf: "postgres://u:@[::1]:5432/db?",
		},
	}
	for _, tt := range tests {
		conf, err := configFromURL(tt.url)
		if err != nil {
			t.Errorf("configFromURL(%s): %v", tt.url, err)
			continue
		}
		if got := conf.URL(); got != tt.wantConf {
			t.Errorf("configFromURL(%s).URL() = %s, want %s", tt.url, got, tt.wantConf)
		}
	}
	if _, err := configFromURL("host=/tmp dbname=x"); err == nil {
		t.Errorf("configFromURL of a keyword/value string: err = nil, want an error")
	}
}

func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}
