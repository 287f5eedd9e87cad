package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"usersvc/internal/pglocal"
	"usersvc/internal/pgtest"
)

// securitySQL returns the sql code blocks of docs/security.md, in order:
// the roles as that page tells operators to make them.
func securitySQL(t *testing.T) []string {
	t.Helper()
	doc, err := os.ReadFile("../../docs/security.md")
	if err != nil {
		t.Fatal(err)
	}
	section := string(doc)
	var blocks []string
	for {
		_, rest, ok := strings.Cut(section, "\n```sql\n")
		if !ok {
			return blocks
		}
		block, after, ok := strings.Cut(rest, "\n```\n")
		if !ok {
			t.Fatal("docs/security.md has an unterminated sql block")
		}
		blocks = append(blocks, block+"\n")
		section = after
	}
}

// psql runs script with psql against url, stopping at the first error.
func psql(t *testing.T, url, script string) {
	t.Helper()
	// The psql beside the server binaries, else the one on PATH; Debian's
	// postgresql package brings both.
	bin := "psql"
	if binDir, err := pglocal.FindBinDir(); err == nil {
		if _, err := os.Stat(filepath.Join(binDir, "psql")); err == nil {
			bin = filepath.Join(binDir, "psql")
		}
	}
	cmd := exec.Command(bin, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("psql %s: %v\n%s\nscript:\n%s", url, err, out, script)
	}
}

// TestLeastPrivilege makes the two roles exactly as docs/security.md shows,
// migrates as the owner and serves as the app role: the API works, and the
// app role can change rows but not the schema.
func TestLeastPrivilege(t *testing.T) {
	blocks := securitySQL(t)
	if len(blocks) != 2 {
		t.Fatalf("docs/security.md has %d sql blocks, want 2: the roles, then the grant after the first migration", len(blocks))
	}
	port := pgtest.FreePort(t)
	pg := startPostgres(t, newPGDir(t), port)
	roleURL := func(role, password string) string {
		return fmt.Sprintf("postgres://%s:%s@127.0.0.1:%d/usersvc?sslmode=disable", role, password, port)
	}
	ownerURL, appURL := roleURL("usersvc_owner", "change-me-owner"), roleURL("usersvc_app", "change-me-app")
	ctx := context.Background()

	psql(t, pg.URL("postgres"), blocks[0])
	setenv(t, map[string]string{"DATABASE_URL": ownerURL})
	var out syncBuffer
	if err := run(ctx, []string{"migrate", "up"}, &out, &out); err != nil {
		t.Fatalf("migrate up as usersvc_owner = %v\n%s", err, out.String())
	}
	psql(t, ownerURL, blocks[1])

	// serve as the app role: the whole API. Keys expire after a second, so
	// that the purge runs as the app role too.
	s := startServe(t, map[string]string{"DATABASE_URL": appURL, "IDEMPOTENCY_TTL": "1s"})
	s.eventually(t, "GET", "/readyz", "", 200, 10*time.Second)
	for _, step := range []struct {
		method, path, body string
		want               int
	}{
		{"POST", "/users", `{"name":"alice"}`, 201},
		{"POST", "/users", `{"name":"alice"}`, 400},
		{"POST", "/users", `{"name":"bob"}`, 201},
		{"GET", "/users/1", "", 200},
		{"GET", "/users?limit=1", "", 200},
		{"GET", "/users?name=bob", "", 200},
		{"PUT", "/users/1", `{"name":"alicia"}`, 200},
		{"PUT", "/users/1", `{"name":"bob"}`, 400},
		{"DELETE", "/users/1", "", 204},
		{"GET", "/users/1", "", 404},
		{"POST", "/users", `{"name":"alice"}`, 201}, // a deleted user's name is free again
	} {
		if status, _ := s.request(t, step.method, step.path, step.body); status != step.want {
			t.Errorf("%s %s as usersvc_app: status = %d, want %d; log:\n%s", step.method, step.path, status, step.want, s.logs.String())
		}
	}
	// A keyed create and its replay; conditional writes, patches among them;
	// the purge.
	var tags []string
	for _, step := range []struct {
		method, path, body string
		header             http.Header
		want               int
	}{
		{"POST", "/users", `{"name":"carol"}`, http.Header{"Idempotency-Key": {"k"}}, 201},
		{"POST", "/users", `{"name":"carol"}`, http.Header{"Idempotency-Key": {"k"}}, 201},
		{"POST", "/users", `{"name":"carl"}`, http.Header{"Idempotency-Key": {"k"}}, 422},
		{"PUT", "/users/5", `{"name":"caroline"}`, http.Header{"If-Match": {"<tag 0>"}}, 200},
		{"PUT", "/users/5", `{"name":"carolina"}`, http.Header{"If-Match": {"<tag 0>"}}, 412},
		{"GET", "/users/5", "", http.Header{"If-None-Match": {"<tag 3>"}}, 304},
		{"DELETE", "/users/5", "", http.Header{"If-Match": {"<tag 3>"}}, 204},
		{"PATCH", "/users/3", `{"name":"robert"}`, http.Header{"Content-Type": {"application/merge-patch+json"}}, 200},
		{"PATCH", "/users/3", `{}`, http.Header{"Content-Type": {"application/merge-patch+json"}, "If-Match": {"<tag 7>"}}, 200},
		{"PATCH", "/users/3", `{"name":"bobby"}`, http.Header{"Content-Type": {"application/merge-patch+json"}, "If-None-Match": {"<tag 7>"}}, 412},
	} {
		for i, tag := range tags {
			for _, values := range step.header {
				if values[0] == fmt.Sprintf("<tag %d>", i) {
					values[0] = tag
				}
			}
		}
		status, header := s.requestWith(t, step.method, step.path, step.body, step.header)
		if status != step.want {
			t.Errorf("%s %s with %v as usersvc_app: status = %d, want %d; log:\n%s", step.method, step.path, step.header, status, step.want, s.logs.String())
		}
		tags = append(tags, header.Get("ETag"))
	}
	if tags[1] != tags[0] || tags[0] == "" {
		t.Errorf("the keyed create's ETag %q, its replay's %q: want one, the same", tags[0], tags[1])
	}
	// The change feed, sequenced as the app role: one change per write.
	res, err := http.Get(s.base + "/users/changes?limit=1000")
	if err != nil {
		t.Fatal(err)
	}
	var feed []feedChange
	err = json.NewDecoder(res.Body).Decode(&feed)
	res.Body.Close()
	if err != nil || res.StatusCode != http.StatusOK || len(feed) != 9 {
		t.Errorf("GET /users/changes as usersvc_app: status %d, %d changes (%v), want 200 and the 9 writes; log:\n%s", res.StatusCode, len(feed), err, s.logs.String())
	}
	app, err := pgx.Connect(ctx, appURL)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(ctx)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var keys int
		if err := app.QueryRow(ctx, "SELECT count(*) FROM idempotency_keys").Scan(&keys); err != nil {
			t.Fatal(err)
		}
		if keys == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d idempotency keys left 10 s after they expired: serve purges them as usersvc_app; log:\n%s", keys, s.logs.String())
		}
	}
	if err := s.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve as usersvc_app = %v, want nil", err)
	}

	// The app role changes rows, not the schema or goose's bookkeeping.
	for _, stmt := range []string{
		"DROP TABLE users",
		"TRUNCATE users",
		"ALTER TABLE users ADD COLUMN email text",
		"ALTER TABLE users DROP CONSTRAINT users_name_key",
		"CREATE TABLE stolen (x int)",
		"CREATE TEMP TABLE scratch (x int)",
		"CREATE INDEX ON users (created_at)",
		"CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
		"DROP TABLE goose_db_version",
		"DELETE FROM goose_db_version",
		"INSERT INTO goose_db_version (version_id, is_applied) VALUES (99, true)",
		"DROP TABLE idempotency_keys",
		"TRUNCATE idempotency_keys",
		"ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey",
		"TRUNCATE user_changes",
		"DROP TABLE user_change_queue",
		"ALTER TABLE user_changes DROP CONSTRAINT user_changes_pkey",
		"DROP TRIGGER users_queue_change ON users",
	} {
		_, err := app.Exec(ctx, stmt)
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != pgerrcode.InsufficientPrivilege {
			t.Errorf("%s as usersvc_app: %v, want insufficient_privilege (42501)", stmt, err)
		}
	}
	var tables int
	if err := app.QueryRow(ctx, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").Scan(&tables); err != nil || tables != 6 {
		t.Errorf("public tables after the attempts: %d (%v), want users, idempotency_keys, goose_db_version and the feed's three", tables, err)
	}

	// AUTO_MIGRATE as the app role: with nothing pending there is nothing
	// to do, so serve starts; with a migration pending, serve stops with
	// exit status 1 and says the app role may not create it.
	s = startServe(t, map[string]string{"DATABASE_URL": appURL, "AUTO_MIGRATE": "true"})
	s.eventually(t, "GET", "/users/3", "", 200, 10*time.Second) // bob, robert since: the duplicate used id 2 up
	if err := s.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve with AUTO_MIGRATE as usersvc_app on a migrated database = %v, want nil", err)
	}
	setenv(t, map[string]string{"DATABASE_URL": ownerURL})
	if err := run(ctx, []string{"migrate", "down"}, &out, &out); err != nil {
		t.Fatalf("migrate down as usersvc_owner = %v\n%s", err, out.String())
	}
	setenv(t, map[string]string{"DATABASE_URL": appURL, "AUTO_MIGRATE": "true", "HTTP_ADDR": pgtest.FreeAddr(t)})
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var logs syncBuffer
	err = run(runCtx, []string{"serve"}, &logs, &logs)
	if err == nil || !strings.Contains(err.Error(), "permission denied for schema public") || !strings.Contains(err.Error(), "42501") || exitCode(err, &out) != 1 {
		t.Errorf("serve with AUTO_MIGRATE as usersvc_app on a database behind = %v, want exit status 1 for permission denied for schema public (42501); log:\n%s", err, logs.String())
	}
}
