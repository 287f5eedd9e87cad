package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pgtest"
)

// imageUID is the user the image runs as (the Dockerfile's USER).
const imageUID = 65532

// readOnlyCopy copies bin into a new directory that the image's user may
// enter but not write, as the image's / is to it, and returns the copy.
func readOnlyCopy(t *testing.T, bin string) string {
	t.Helper()
	top, err := os.MkdirTemp("", "usersvc-image-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(top) })
	dir := filepath.Join(top, "root")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	copied := filepath.Join(dir, "usersvc")
	if err := os.WriteFile(copied, data, 0o555); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{top, dir} {
		if err := os.Chmod(d, 0o555); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { os.Chmod(top, 0o755) })
	return copied
}

// asImageUser makes cmd run as the image's unprivileged user, from the
// binary's read-only directory, with env as its whole environment: no
// PATH, no HOME, no file but the binary. A test not running as root is
// unprivileged already and runs cmd as itself.
func asImageUser(cmd *exec.Cmd, env []string) {
	cmd.Dir = filepath.Dir(cmd.Path)
	cmd.Env = env
	if os.Geteuid() == 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: imageUID, Gid: imageUID}}
	}
}

// TestContainerBinary proves what can be proved of the image without a
// container engine: the binary that the Dockerfile's own build command
// makes serves, migrates, checks health and prints its version when run as
// the image runs it.
func TestContainerBinary(t *testing.T) {
	bin := readOnlyCopy(t, usersvcBinary(t))
	// Over TCP, as a container reaches its database; the test's own server,
	// since the shared one is reached through a socket the image's user may
	// not enter.
	pg := startPostgres(t, newPGDir(t), freePort(t))
	addr := freeAddr(t)
	env := []string{"DATABASE_URL=" + pg.URL("postgres"), "HTTP_ADDR=" + addr, "LOG_FORMAT=json"}

	exitStatus := func(err error) int {
		if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
			return exitErr.ExitCode()
		}
		if err != nil {
			t.Fatalf("run usersvc: %v", err)
		}
		return 0
	}
	usersvc := func(args ...string) (string, int) {
		t.Helper()
		cmd := exec.Command(bin, args...)
		asImageUser(cmd, env)
		out, err := cmd.CombinedOutput()
		status := exitStatus(err)
		t.Logf("$ usersvc %s  # exit status %d\n%s", strings.Join(args, " "), status, out)
		return string(out), status
	}

	for _, step := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"version"}, 0, "usersvc " + testVersion + "\n"},
		{[]string{"healthcheck"}, 1, "connection refused"}, // nothing serves yet
		{[]string{"migrate", "status"}, 0, "pending"},
		{[]string{"migrate", "up"}, 0, "applied 00001_create_users.sql"},
		{[]string{"migrate", "version"}, 0, "schema version 2 (latest embedded: 2)"},
		{[]string{"migrate", "sideways"}, 2, "unknown command"},
	} {
		out, status := usersvc(step.args...)
		if status != step.status || !strings.Contains(out, step.want) {
			t.Errorf("usersvc %s: exit status %d, output %q; want %d and %q", strings.Join(step.args, " "), status, out, step.status, step.want)
		}
	}

	serve := exec.Command(bin) // the image's CMD is serve; so is no argument
	asImageUser(serve, env)
	var logs syncBuffer
	serve.Stdout, serve.Stderr = &logs, &logs
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- serve.Wait() }()
	t.Cleanup(func() { serve.Process.Kill() })

	// The image's HEALTHCHECK: usersvc healthcheck, until it passes.
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, status := usersvc("healthcheck")
		if status == 0 {
			if !strings.Contains(out, "200 OK") {
				t.Errorf("usersvc healthcheck: %q, want it to say 200 OK", out)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("usersvc healthcheck still fails 10s after serve started: %s; log:\n%s", out, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
	uid := processUID(t, serve.Process.Pid)
	if os.Geteuid() == 0 && uid != fmt.Sprint(imageUID) {
		t.Errorf("serve runs as uid %s, want %d", uid, imageUID)
	}
	t.Logf("serve runs as uid %s from %s, environment %q", uid, filepath.Dir(bin), env)
	base := "http://" + addr
	waitFor(t, base+"/readyz", 10*time.Second, exited)
	res, err := http.Post(base+"/users", "application/json", strings.NewReader(`{"name":"from the image"}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Errorf("POST /users: status = %d, want 201", res.StatusCode)
	}
	res, err = http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if want := `version="` + testVersion + `"} 1`; !bytes.Contains(metrics, []byte(want)) {
		t.Errorf("GET /metrics lacks build_info with %s", want)
	}

	if err := serve.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if status := exitStatus(err); status != 0 {
			t.Errorf("serve after SIGTERM: exit status %d, want 0; log:\n%s", status, logs.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("serve still running 15s after SIGTERM")
	}
	if !strings.Contains(logs.String(), `"version":"`+testVersion+`"`) {
		t.Errorf("serve's start-up line lacks the version:\n%s", logs.String())
	}
}

// processUID returns the real uid of process pid.
func processUID(t *testing.T, pid int) string {
	t.Helper()
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if fields := strings.Fields(line); len(fields) > 1 && fields[0] == "Uid:" {
			return fields[1]
		}
	}
	t.Fatalf("no Uid line in /proc/%d/status", pid)
	return ""
}

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
		if !strings.Contains(outs[i], "schema version 2 (latest embedded: 2)") {
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
