package server

import (
	"context"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"

	"usersvc/db"
	"usersvc/internal/pgtest"
	"usersvc/migrations"
)

// TestReadyzRefusesReadOnly fences a database read-only, as pg_auto_failover
// fences a node during a failover (default_transaction_read_only): /readyz
// answers 503 and says why, then 200 once sessions take writes again.
func TestReadyzRefusesReadOnly(t *testing.T) {
	t.Parallel()
	url := pgtest.NewURL(t)
	cc, err := pgx.ParseConfig(url)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, pgtest.AdminURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	fence := func(value string) {
		t.Helper()
		sql := "ALTER DATABASE " + pgx.Identifier{cc.Database}.Sanitize() + " SET default_transaction_read_only = " + value
		if _, err := admin.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	fence("on") // for the sessions that start from now on
	pool := pgtest.NewPoolOn(t, url)
	s, _ := newObservedServer(t, db.New(pool), migrations.VersionReader{Q: pool}, slog.LevelError)

	p := wantProblem(t, "GET /readyz on a read-only database", s.get("/readyz"), 503, codeUnavailable)
	if !strings.Contains(p.Detail, "refuses writes") || !strings.Contains(p.Detail, "transaction_read_only") {
		t.Errorf("GET /readyz on a read-only database: detail %q, want it to say the database refuses writes, transaction_read_only being on", p.Detail)
	}
	fence("off")
	pool.Reset() // the sessions opened under the fence keep it
	if r := s.get("/readyz"); r.status != http.StatusOK {
		t.Errorf("GET /readyz after the fence = %d %s, want 200", r.status, r.body)
	}
}
