package postgres

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/config"
	"usersvc/internal/pglocal"
	"usersvc/internal/pgtest"
)

// TestPoolRefusesOldPrimary: two primaries of one cluster, as a failover
// leaves them until the old one is demoted (the second a copy of the
// first, promoted to timeline 2). Once a pool has seen the new one, a
// connection to the old one fails, whatever target_session_attrs says, and
// a URL that lists the old one first lands on the new one.
func TestPoolRefusesOldPrimary(t *testing.T) {
	ctx := t.Context()
	dir, err := pglocal.MkdirScratch("usersvc-test-timeline-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	start := func(name string, port int) *pglocal.Server {
		t.Helper()
		pg, err := pglocal.Start(ctx, pglocal.Options{Dir: filepath.Join(dir, name), Port: port, Ephemeral: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pg.Stop() })
		return pg
	}
	if err := start("old", 0).Stop(); err != nil { // initdb's cluster, to copy
		t.Fatal(err)
	}
	if out, err := exec.Command("cp", "-a", filepath.Join(dir, "old"), filepath.Join(dir, "new")).CombinedOutput(); err != nil {
		t.Fatalf("copy the cluster: %v: %s", err, out)
	}
	// Started as a standby of nothing, until promoted.
	if err := os.WriteFile(filepath.Join(dir, "new", "standby.signal"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	oldPort, newPort := pgtest.FreePort(t), pgtest.FreePort(t)
	start("old", oldPort)
	start("new", newPort)

	// connect returns the port of the server a new pool for ports connects
	// to, with target_session_attrs=attrs.
	connect := func(attrs string, ports ...int) (int, error) {
		var hosts []string
		for _, p := range ports {
			hosts = append(hosts, fmt.Sprintf("127.0.0.1:%d", p))
		}
		url := "postgres://postgres@" + strings.Join(hosts, ",") + "/postgres?sslmode=disable&target_session_attrs=" + attrs
		pool, err := NewPool(ctx, config.Config{DatabaseURL: url, RequestTimeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer pool.Close()
		var port int
		err = pool.QueryRow(ctx, "SELECT current_setting('port')::int").Scan(&port)
		return port, err
	}
	if port, err := connect("read-write", newPort, oldPort); err != nil || port != oldPort {
		t.Fatalf("before the failover: port %d, err %v; want the only primary's, %d", port, err, oldPort)
	}
	if _, err := connect("any", newPort); err != nil {
		t.Fatal(err)
	}
	promote, err := pgx.Connect(ctx, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", newPort))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := promote.Exec(ctx, "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	promote.Close(ctx)

	if port, err := connect("read-write", newPort); err != nil || port != newPort {
		t.Fatalf("the new primary: port %d, err %v; want %d", port, err, newPort)
	}
	for _, attrs := range []string{"read-write", "any", "prefer-standby"} {
		if port, err := connect(attrs, oldPort); err == nil || !strings.Contains(err.Error(), "an old primary: it writes timeline 1") {
			t.Errorf("%s, the old primary alone: port %d, err %v; want it refused as an old primary", attrs, port, err)
		}
		if port, err := connect(attrs, oldPort, newPort); err != nil || port != newPort {
			t.Errorf("%s, the old primary first: port %d, err %v; want the new primary's, %d", attrs, port, err, newPort)
		}
	}
}
