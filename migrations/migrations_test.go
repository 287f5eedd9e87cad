package migrations_test

import (
	"context"
	"database/sql"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"

	"usersvc/internal/pgtest"
	"usersvc/migrations"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func openDB(t *testing.T, url string) *sql.DB {
	t.Helper()
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	db := stdlib.OpenDB(*cc)
	t.Cleanup(func() { db.Close() })
	return db
}

// TestConcurrentUp migrates one empty database from several providers at
// once, as instances starting together with AUTO_MIGRATE do: the session
// lock makes them take turns, so every one succeeds and each migration is
// applied once.
func TestConcurrentUp(t *testing.T) {
	url := pgtest.NewEmptyURL(t)
	const n = 3
	applied := make([]int, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			p, err := migrations.NewProvider(openDB(t, url))
			if err != nil {
				errs[i] = err
				return
			}
			results, err := p.Up(context.Background())
			applied[i], errs[i] = len(results), err
		})
	}
	wg.Wait()
	total := 0
	for i, err := range errs {
		if err != nil {
			t.Errorf("provider %d: Up = %v, want nil", i, err)
		}
		total += applied[i]
	}
	if want := int(migrations.Latest()); total != want {
		t.Errorf("%d concurrent Up calls applied %v migrations, want %d in all", n, applied, want)
	}
	var rows int
	if err := openDB(t, url).QueryRow("SELECT count(*) FROM goose_db_version WHERE version_id = 1").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Errorf("goose_db_version has %d rows for version 1, want 1", rows)
	}
}

// TestGooseCLICompatible applies the files on disk the way the goose CLI
// does (goose -dir migrations postgres "$DATABASE_URL" up), then checks that
// the embedded Provider agrees, and the other way round.
func TestGooseCLICompatible(t *testing.T) {
	db := openDB(t, pgtest.NewEmptyURL(t))
	ctx := context.Background()
	if err := goose.SetDialect("postgres"); err != nil {
		t.Fatal(err)
	}
	if err := goose.UpContext(ctx, db, "."); err != nil {
		t.Fatalf("goose up from the directory: %v", err)
	}
	p, err := migrations.NewProvider(db)
	if err != nil {
		t.Fatal(err)
	}
	current, target, err := p.GetVersions(ctx)
	if err != nil || current != target || current < 1 {
		t.Fatalf("after the CLI's up, Provider versions = %d, %d, %v; want equal and at least 1", current, target, err)
	}
	if _, err := p.DownTo(ctx, 0); err != nil {
		t.Fatalf("Provider down to 0: %v", err)
	}
	if v, err := goose.GetDBVersionContext(ctx, db); err != nil || v != 0 {
		t.Errorf("after the Provider's down, goose version = %d, %v; want 0", v, err)
	}
}
