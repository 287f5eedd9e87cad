package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"usersvc/internal/config"
	"usersvc/internal/pglocal"
	"usersvc/internal/pgtest"
)

// testVersion is stamped into the binary the tests build.
const testVersion = "v0.0.0-test+dockerfile"

// binDir holds the binary that the tests build, once, as the Dockerfile does.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "usersvc-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	pgtest.Main(m)
	os.RemoveAll(dir)
}

// builtBinary builds usersvc once per test run.
var builtBinary = sync.OnceValues(buildAsDockerfile)

// usersvcBinary returns the path of usersvc built as the Dockerfile builds
// it. The test fails when it cannot be built.
func usersvcBinary(t *testing.T) string {
	t.Helper()
	path, err := builtBinary()
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// buildAsDockerfile runs the Dockerfile's own go build command (its one RUN
// line that runs go build) from the repository's root, with VERSION set and
// the output moved from /out/usersvc to binDir, so that the binary the tests
// run is the one the image holds.
func buildAsDockerfile() (string, error) {
	const root = "../.."
	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	if err != nil {
		return "", err
	}
	var build string
	for line := range strings.Lines(string(dockerfile)) {
		if strings.HasPrefix(line, "RUN ") && strings.Contains(line, " go build ") {
			if build != "" {
				return "", errors.New("Dockerfile: more than one RUN line runs go build")
			}
			build = strings.TrimSpace(strings.TrimPrefix(line, "RUN "))
		}
	}
	const out = " -o /out/usersvc "
	if !strings.Contains(build, out) {
		return "", fmt.Errorf("Dockerfile: want one RUN line that runs go build%s..., found %q", out, build)
	}
	bin := filepath.Join(binDir, "usersvc")
	cmd := exec.Command("sh", "-c", strings.Replace(build, out, " -o "+bin+" ", 1))
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "VERSION="+testVersion)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("%s: %v\n%s", cmd, err, out)
	}
	return bin, nil
}

// newPGDir returns a new directory for a PostgreSQL server of the test's
// own, removed when the test ends.
func newPGDir(t *testing.T) string {
	t.Helper()
	dir, err := pglocal.MkdirScratch("usersvc-test-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "data")
}

// startPostgres starts (or restarts) a throwaway PostgreSQL of the test's
// own in dir, on 127.0.0.1:port, for tests that stop it, restart it, or
// share it with processes running as another user. It is stopped when the
// test ends, if the test has not stopped it before.
func startPostgres(t *testing.T, dir string, port int) *pglocal.Server {
	t.Helper()
	pg, err := pglocal.Start(context.Background(), pglocal.Options{Dir: dir, Port: port, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pg.Stop() })
	return pg
}

// syncBuffer is a bytes.Buffer that run's goroutines may write while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// tail returns the last n bytes of s, marked as cut when they are not all.
func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// setenv sets the variables for this test and unsets every other variable
// of the service, so the machine's environment cannot leak in. The
// environment is restored when the test ends.
func setenv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, k := range config.Variables() {
		v, ok := vars[k]
		t.Setenv(k, v) // registers the restore
		if !ok {
			os.Unsetenv(k)
		}
	}
}

// silentAddr returns the address of a listener that accepts every
// connection and never answers, as a lost network or a hung server looks,
// until the test ends.
func silentAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn // the goroutine's until done is closed
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c) // held open, never answered
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String()
}

// waitFor polls url until it answers 200, or fails the test after timeout.
func waitFor(t *testing.T, url string, timeout time.Duration, runErr <-chan error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res, err := http.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-runErr:
			t.Fatalf("run returned %v before %s answered", err, url)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within %v (last error %v)", url, timeout, err)
		}
	}
}
