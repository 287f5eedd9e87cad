package server

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
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
	s, _ := newObservedServer(t, db.New(pool), postgres.Probe{Q: pool}, slog.LevelError)

	p := wantProblem(t, "GET /readyz on a read-only database", s.get("/readyz"), 503, codeUnavailable)
	if !strings.Contains(p.Detail, "refuses writes") || !strings.Contains(p.Detail, "transaction_read_only") {
		t.Errorf("GET /readyz on a read-only database: detail %q, want it to say the database refuses writes, transaction_read_only being on", p.Detail)
	}
	// A pool that asks for a host that takes writes, as DATABASE_URL with
	// target_session_attrs=read-write does, finds none.
	writable, err := pgxpool.New(ctx, url+"&target_session_attrs=read-write")
	if err != nil {
		t.Fatal(err)
	}
	defer writable.Close()
	w, _ := newObservedServer(t, db.New(writable), postgres.Probe{Q: writable}, slog.LevelError)
	p = wantProblem(t, "GET /readyz through target_session_attrs=read-write to a read-only database", w.get("/readyz"), 503, codeUnavailable)
	if !strings.Contains(p.Detail, "takes writes") {
		t.Errorf("GET /readyz through target_session_attrs=read-write to a read-only database: detail %q, want it to say no host takes writes", p.Detail)
	}

	fence("off")
	pool.Reset() // the sessions opened under the fence keep it
	if r := s.get("/readyz"); r.status != http.StatusOK {
		t.Errorf("GET /readyz after the fence = %d %s, want 200", r.status, r.body)
	}
}

// TestReadsGoToTheirOwnStore serves the GET routes from one database and
// the writes from another, as Options.Reads does for DATABASE_READ_URL: a
// user created through the API is found only once the reads' database has
// it too.
func TestReadsGoToTheirOwnStore(t *testing.T) {
	t.Parallel()
	writes, reads := pgtest.NewPool(t), pgtest.NewPool(t)
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	srv := httptest.NewServer(New(logger, db.New(writes), postgres.Probe{Q: writes}, Options{
		RequestTimeout: 5 * time.Second,
		SchemaVersion:  migrations.Latest(),
		Reads:          db.New(reads),
	}))
	t.Cleanup(srv.Close)
	s := &testServer{t: t, url: srv.URL, pool: writes}

	u := s.createUser("written")
	wantProblem(t, "GET "+userPath(u.ID)+" before the reads' database has the user", s.get(userPath(u.ID)), 404, codeNotFound)
	if r := s.get("/users"); r.status != http.StatusOK || string(r.body) != "[]" {
		t.Errorf("GET /users before the reads' database has the user = %d %s, want 200 []", r.status, r.body)
	}
	_, err := reads.Exec(context.Background(), "INSERT INTO users (id, name, created_at, updated_at) OVERRIDING SYSTEM VALUE VALUES ($1, $2, $3, $4)",
		u.ID, u.Name, u.CreatedAt, u.UpdatedAt)
	if err != nil {
		t.Fatal(err)
	}
	if r := s.get(userPath(u.ID)); r.status != http.StatusOK || decodeJSON[user](t, r.body) != u {
		t.Errorf("GET %s once the reads' database has the user = %d %s, want 200 and %+v", userPath(u.ID), r.status, r.body, u)
	}
	if r := s.get("/users?name=written"); r.status != http.StatusOK || len(decodeJSON[[]user](t, r.body)) != 1 {
		t.Errorf("GET /users?name=written once the reads' database has the user = %d %s, want the user", r.status, r.body)
	}
	// Writes, and the checks they make, stay on the writes' database.
	if r := s.putJSON(userPath(u.ID), `{"name":"renamed"}`); r.status != http.StatusOK {
		t.Errorf("PUT %s = %d %s, want 200", userPath(u.ID), r.status, r.body)
	}
	var name string
	if err := writes.QueryRow(context.Background(), "SELECT name FROM users WHERE id = $1", u.ID).Scan(&name); err != nil || name != "renamed" {
		t.Errorf("the writes' database has %q (%v) after the rename, want renamed", name, err)
	}
}
