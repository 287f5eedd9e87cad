package pglocal

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// testDir returns a new directory, searchable by the user postgres runs as,
// on /dev/shm when there is one, removed at the end of the test.
func testDir(t *testing.T) string {
	t.Helper()
	dir, err := MkdirScratch("pglocal-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// freePort is FreePort for a test, which fails when there is none.
func freePort(t *testing.T) int {
	t.Helper()
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	ctx := t.Context()
	begin := time.Now()
	srv, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("Start(%+v): %v", opts, err)
	}
	t.Logf("Start took %v (reused: %v)", time.Since(begin), srv.Reused())
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	return srv
}

// connect returns a connection to url, closed when the test ends.
func connect(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), url)
	if err != nil {
		t.Fatalf("connect to %s: %v", url, err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// queryOne connects to url and returns the result of the query.
func queryOne(t *testing.T, url, query string) string {
	t.Helper()
	var s string
	if err := connect(t, url).QueryRow(t.Context(), query).Scan(&s); err != nil {
		t.Fatalf("%s on %s: %v", query, url, err)
	}
	return s
}

// execSQL connects to url and runs the statement.
func execSQL(t *testing.T, url, stmt string) {
	t.Helper()
	if _, err := connect(t, url).Exec(t.Context(), stmt); err != nil {
		t.Fatalf("%s on %s: %v", stmt, url, err)
	}
}

func TestFindBinDir(t *testing.T) {
	t.Parallel()
	dir, err := FindBinDir()
	if err != nil {
		t.Fatalf("FindBinDir: %v", err)
	}
	for _, name := range []string{"postgres", "initdb", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("FindBinDir() = %s, which has no %s: %v", dir, name, err)
		}
	}
}

func TestFindBinDirOrder(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	// mkBin makes dir with the given fake executables.
	mkBin := func(dir string, names ...string) string {
		dir = filepath.Join(root, dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range names {
			if err := os.WriteFile(filepath.Join(dir, name), []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	inPath := mkBin("path/bin", "postgres", "initdb", "pg_ctl")
	clientOnly := mkBin("client/bin", "psql", "pg_config")
	mkBin("lib/9.6/bin", "postgres", "initdb", "pg_ctl")
	v10 := mkBin("lib/10/bin", "postgres", "initdb", "pg_ctl")
	mkBin("lib/16/bin", "postgres", "pg_ctl") // no initdb: incomplete
	glob := filepath.Join(root, "lib/*/bin")

	tests := []struct {
		name    string
		path    string
		glob    string
		want    string
		wantErr string
	}{
		{name: "PATH first", path: clientOnly + string(filepath.ListSeparator) + inPath, glob: glob, want: inPath},
		{name: "highest complete version", path: clientOnly, glob: glob, want: v10},
		{name: "none", path: clientOnly, glob: filepath.Join(root, "none/*/bin"), wantErr: "apt-get install postgresql"},
	}
	for _, tt := range tests {
		got, err := findBinDir(tt.path, filepath.Join(root, "no-pg_config"), tt.glob)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s: findBinDir() = %q, %v; want an error with %q", tt.name, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s: findBinDir() = %q, %v; want %q", tt.name, got, err, tt.want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want int // sign only
	}{
		{"15", "9.6", 1},
		{"9.6", "10", -1},
		{"16", "16", 0},
		{"9.6", "9.5", 1},
	}
	for _, tt := range tests {
		got := compareVersions(tt.a, tt.b)
		if (got > 0) != (tt.want > 0) || (got < 0) != (tt.want < 0) {
			t.Errorf("compareVersions(%q, %q) = %d, want sign %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestStartStop(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		port     bool
		longDir  bool
		wantHost string // in the URL
	}{
		{name: "socket", wantHost: "host=%2Fdev%2Fshm%2F"},
		{name: "tcp", port: true, wantHost: "@127.0.0.1:"},
		{name: "long dir", longDir: true, wantHost: "host=%2Ftmp%2Fpgsock-"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(testDir(t), "data")
			if tt.longDir {
				dir = filepath.Join(testDir(t), strings.Repeat("d", 100))
			}
			opts := Options{Dir: dir, Ephemeral: true}
			if tt.port {
				opts.Port = freePort(t)
			}
			srv := startServer(t, opts)
			url := srv.URL("postgres")
			if !strings.Contains(url, tt.wantHost) {
				t.Errorf("URL = %s, want it to contain %s", url, tt.wantHost)
			}
			if srv.Reused() {
				t.Errorf("Reused() = true for a new server")
			}
			if got := queryOne(t, url, "SHOW fsync"); got != "off" {
				t.Errorf("SHOW fsync = %s, want off", got)
			}
			if got := queryOne(t, url, "SELECT current_user"); got != "postgres" {
				t.Errorf("current_user = %s, want postgres", got)
			}
			// Any other role needs its password.
			execSQL(t, url, "CREATE ROLE app LOGIN PASSWORD 'right'")
			if got := queryOne(t, strings.Replace(url, "//postgres@", "//app:right@", 1), "SELECT current_user"); got != "app" {
				t.Errorf("current_user = %s, want app", got)
			}
			for _, who := range []string{"app:wrong", "app", "nobody:right"} {
				conn, err := pgx.Connect(t.Context(), strings.Replace(url, "//postgres@", "//"+who+"@", 1))
				if err == nil {
					conn.Close(t.Context())
				}
				if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "28P01" {
					t.Errorf("connect as %s: %v, want SQLSTATE 28P01 (invalid_password)", who, err)
				}
			}

			pid := srv.pid
			if err := srv.Stop(); err != nil {
				t.Fatalf("Stop: %v", err)
			}
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("after Stop, kill(%d, 0) = %v, want ESRCH", pid, err)
			}
			if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("after Stop, postmaster.pid: %v, want it gone", err)
			}
			if srv.ownSockDir {
				if _, err := os.Stat(srv.sockDir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("after Stop, socket directory %s: %v, want it gone", srv.sockDir, err)
				}
			}
			if err := srv.Stop(); err != nil {
				t.Errorf("second Stop: %v", err)
			}
		})
	}
}

func TestStartReusesRunningServer(t *testing.T) {
	t.Parallel()
	for _, port := range []bool{false, true} {
		name := map[bool]string{false: "socket", true: "tcp"}[port]
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			opts := Options{Dir: filepath.Join(testDir(t), "data"), Ephemeral: true}
			if port {
				opts.Port = freePort(t)
			}
			first := startServer(t, opts)
			execSQL(t, first.URL("postgres"), "CREATE TABLE marker (x int)")

			second := startServer(t, opts)
			if !second.Reused() {
				t.Fatalf("second Start: Reused() = false, want true")
			}
			if got, want := second.URL("postgres"), first.URL("postgres"); got != want {
				t.Errorf("second URL = %s, want %s", got, want)
			}
			queryOne(t, second.URL("postgres"), "SELECT count(*)::text FROM marker")

			if err := second.Stop(); err != nil {
				t.Fatalf("Stop of reused server: %v", err)
			}
			// The reused server's Stop must leave the server running.
			queryOne(t, first.URL("postgres"), "SELECT 'still up'")
		})
	}
}

// TestStartLog checks that the server's output, from its start to its
// shutdown, goes to server.log in its data directory.
func TestStartLog(t *testing.T) {
	t.Parallel()
	srv := startServer(t, Options{Dir: filepath.Join(testDir(t), "data"), Ephemeral: true})
	if err := srv.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	log, err := os.ReadFile(filepath.Join(srv.Dir(), "server.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ready to accept connections", "database system is shut down"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("server log does not contain %q:\n%s", want, log)
		}
	}
}

func TestStartFailureShowsServerOutput(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(testDir(t), "data")
	// An occupied port makes the postmaster exit at once.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	_, err = Start(t.Context(), Options{Dir: dir, Port: l.Addr().(*net.TCPAddr).Port, Ephemeral: true})
	if err == nil {
		t.Fatal("Start on an occupied port: err = nil, want an error")
	}
	if !strings.Contains(err.Error(), "could not bind") {
		t.Errorf("Start on an occupied port: err = %v, want the server's complaint in it", err)
	}
	if _, statErr := os.Stat(filepath.Join(dir, "server.log")); statErr != nil {
		t.Errorf("server.log: %v", statErr)
	}
}

func TestStartUnreachableDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("only root runs the server as another user")
	}
	t.Parallel()
	parent := filepath.Join(testDir(t), "closed")
	if err := os.Mkdir(parent, 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Start(context.Background(), Options{Dir: filepath.Join(parent, "data"), Ephemeral: true})
	if err == nil || !strings.Contains(err.Error(), "cannot enter "+parent) {
		t.Errorf("Start under a 0700 directory: err = %v, want it to name %s", err, parent)
	}
}

// TestServerProcAttr checks that a program started with ServerProcAttr, as
// PgBouncer is in the tests, runs as the user postgres runs as: not root.
func TestServerProcAttr(t *testing.T) {
	attr, err := ServerProcAttr(true)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("id", "-u")
	cmd.SysProcAttr = attr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("id -u with ServerProcAttr: %v", err)
	}
	uid, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("id -u printed %q", out)
	}
	if uid == 0 {
		t.Errorf("id -u with ServerProcAttr = 0, want an unprivileged user")
	}
	if os.Geteuid() != 0 && uid != os.Geteuid() {
		t.Errorf("id -u with ServerProcAttr = %d, want this process's own uid %d when not root", uid, os.Geteuid())
	}
}
