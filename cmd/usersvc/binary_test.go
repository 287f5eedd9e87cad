package main

import (
	"context"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pgtest"
)

// TestConcurrentMigrateProcesses runs three `usersvc migrate up` processes
// on one fresh database at once, as three deploy jobs might: all exit 0 and
// the schema is applied once.
func TestConcurrentMigrateProcesses(t *testing.T) {
	bin := usersvcBinary(t)
	databaseURL := pgtest.NewEmptyURL(t)
	const n = 3
	outs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			cmd := exec.Command(bin, "migrate", "up")
			cmd.Env = append(os.Environ(), "DATABASE_URL="+databaseURL)
			out, err := cmd.CombinedOutput()
			outs[i], errs[i] = string(out), err
		})
	}
	wg.Wait()
	applied := 0
	for i := range n {
		if errs[i] != nil {
			t.Errorf("migrate up #%d: %v, want exit status 0; output:\n%s", i, errs[i], outs[i])
		}
		if !strings.Contains(outs[i], "schema version 3 (latest embedded: 3)") {
			t.Errorf("migrate up #%d output lacks the final version:\n%s", i, outs[i])
		}
		applied += strings.Count(outs[i], "applied 00001_create_users.sql")
	}
	if applied != 1 {
		t.Errorf("%d concurrent migrate up applied the migration %d times, want once:\n%s", n, applied, strings.Join(outs, "\n"))
	}
	conn, err := pgx.Connect(context.Background(), databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var rows int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM goose_db_version WHERE version_id = 1").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if rows != 1 {
		t.Errorf("goose_db_version has %d rows for version 1, want 1", rows)
	}
}
