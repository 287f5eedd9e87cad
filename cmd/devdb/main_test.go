package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pglocal"
	"usersvc/internal/pgtest"
)

// helperEnv makes the test binary act as the command devdb runs; see
// helperMain.
const helperEnv = "DEVDB_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		helperMain()
	}
	m.Run()
}

// helperMain is the command that the tests below have devdb run: the test
// binary itself, with helperEnv set. It prints DATABASE_URL, then exits with
// the status read from stdin, or with 0 after printing the name of a SIGINT
// or SIGTERM.
func helperMain() {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	fmt.Println(os.Getenv("DATABASE_URL"))
	status := make(chan int, 1)
	go func() {
		line, _ := bufio.NewReader(os.Stdin).ReadString('\n')
		n, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			n = 2
		}
		status <- n
	}()
	select {
	case n := <-status:
		os.Exit(n)
	case sig := <-sigs:
		fmt.Println("got", sig)
		os.Exit(0)
	}
}

// helperCommand returns the arguments that run helperMain.
func helperCommand() []string {
	return []string{"env", helperEnv + "=1", os.Args[0]}
}

// devdb is one run of the program, with pipes for its standard streams.
type devdb struct {
	stdin  *os.File // the command's stdin
	stdout *bufio.Reader
	stderr *bufio.Reader
	cancel context.CancelFunc
	done   chan error // run's result
}

// dataDir returns a new data directory, under /dev/shm when there is one,
// removed at the end of the test.
func dataDir(t *testing.T) string {
	t.Helper()
	dir, err := pglocal.MkdirScratch("devdb-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "data")
}

func pipe(t *testing.T) (r, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return r, w
}

// start runs devdb with args. At the end of the test it cancels the run
// and waits for it, so no server outlives a failed test.
func start(t *testing.T, args ...string) *devdb {
	t.Helper()
	inR, inW := pipe(t)
	outR, outW := pipe(t)
	errR, errW := pipe(t)
	ctx, cancel := context.WithCancel(context.Background())
	d := &devdb{stdin: inW, stdout: bufio.NewReader(outR), stderr: bufio.NewReader(errR), cancel: cancel, done: make(chan error, 1)}
	go func() {
		err := run(ctx, args, inR, outW, errW)
		// Let readers see the end of the output.
		outW.Close()
		errW.Close()
		d.done <- err
	}()
	t.Cleanup(func() {
		cancel()
		d.wait()
	})
	return d
}

// wait waits for run to return and returns its result.
func (d *devdb) wait() error {
	err := <-d.done
	d.done <- err
	return err
}

func readLine(t *testing.T, r *bufio.Reader, what string) string {
	t.Helper()
	line, err := r.ReadString('\n')
	if err != nil {
		t.Fatalf("read %s: %v (so far: %q)", what, err, line)
	}
	return strings.TrimSpace(line)
}

// checkDatabase connects to url and checks that it is the usersvc database.
func checkDatabase(t *testing.T, url string) {
	t.Helper()
	ctx := t.Context()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect to DATABASE_URL %s: %v", url, err)
	}
	defer conn.Close(ctx)
	var db string
	if err := conn.QueryRow(ctx, "SELECT current_database()").Scan(&db); err != nil {
		t.Fatalf("query %s: %v", url, err)
	}
	if db != "usersvc" {
		t.Errorf("current_database() = %s, want usersvc", db)
	}
}

// checkStopped fails unless the server of dir has stopped.
func checkStopped(t *testing.T, dir string) {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "postmaster.pid")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("postmaster.pid after devdb: %v, want the server stopped", err)
	}
}

func TestRunCommandExitStatus(t *testing.T) {
	t.Parallel()
	tests := []struct {
		status  int
		wantErr string
	}{
		{0, ""},
		{3, "exit status 3"},
	}
	for _, tt := range tests {
		t.Run(strconv.Itoa(tt.status), func(t *testing.T) {
			t.Parallel()
			dir := dataDir(t)
			args := append([]string{"-dir", dir, "-port", strconv.Itoa(pgtest.FreePort(t)), "--"}, helperCommand()...)
			d := start(t, args...)
			line := readLine(t, d.stderr, "devdb's first line")
			url := readLine(t, d.stdout, "DATABASE_URL from the command")
			if !strings.Contains(line, "DATABASE_URL="+url+" ") {
				t.Errorf("devdb printed %q, want the command's DATABASE_URL %s in it", line, url)
			}
			if !strings.HasPrefix(url, "postgres://postgres@127.0.0.1:") {
				t.Errorf("DATABASE_URL = %s, want a TCP URL on 127.0.0.1", url)
			}
			checkDatabase(t, url)

			fmt.Fprintln(d.stdin, tt.status)
			err := d.wait()
			if tt.wantErr == "" && err != nil {
				t.Errorf("devdb after the command exited 0: %v, want no error", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("devdb after the command exited %d: %v, want an error with %q", tt.status, err, tt.wantErr)
			}
			checkStopped(t, dir)
		})
	}
}

// TestRunPassesSignals sends signals to the test process itself, so it
// does not run in parallel with the other tests, whose devdb would pass
// them on too.
func TestRunPassesSignals(t *testing.T) {
	dir := dataDir(t) // the second run finds the cluster made by the first
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			args := append([]string{"-dir", dir, "-port", "0", "--"}, helperCommand()...)
			d := start(t, args...)
			readLine(t, d.stderr, "devdb's first line")
			checkDatabase(t, readLine(t, d.stdout, "DATABASE_URL from the command"))

			// run has registered for the signals before it printed.
			if err := syscall.Kill(os.Getpid(), sig); err != nil {
				t.Fatal(err)
			}
			if got, want := readLine(t, d.stdout, "the command's report"), "got "+sig.String(); got != want {
				t.Errorf("command printed %q, want %q", got, want)
			}
			if err := d.wait(); err != nil {
				t.Errorf("devdb after the command exited 0 on %v: %v, want no error", sig, err)
			}
			checkStopped(t, dir)
		})
	}
}

func TestRunWithoutCommand(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	d := start(t, "-dir", dir, "-port", "0")
	line := readLine(t, d.stderr, "devdb's first line")
	url, _, _ := strings.Cut(strings.TrimPrefix(line, "devdb: DATABASE_URL="), " ")
	checkDatabase(t, url)
	d.cancel()
	if err := d.wait(); err != nil {
		t.Errorf("devdb without a command, cancelled: %v, want no error", err)
	}
	checkStopped(t, dir)
}

func TestRunReusesRunningServer(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	srv, err := pglocal.Start(t.Context(), pglocal.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()

	args := append([]string{"-dir", dir, "--"}, helperCommand()...)
	d := start(t, args...)
	line := readLine(t, d.stderr, "devdb's first line")
	if !strings.Contains(line, "already running") {
		t.Errorf("devdb printed %q, want it to say the server was already running", line)
	}
	checkDatabase(t, readLine(t, d.stdout, "DATABASE_URL from the command"))
	fmt.Fprintln(d.stdin, 0)
	if err := d.wait(); err != nil {
		t.Fatalf("devdb: %v", err)
	}
	// devdb must leave a server it did not start running.
	checkDatabase(t, srv.URL("usersvc"))
}

func TestRunCommandNotFound(t *testing.T) {
	t.Parallel()
	dir := dataDir(t)
	d := start(t, "-dir", dir, "-port", "0", "--", "/nonexistent/command")
	err := d.wait()
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/command") {
		t.Errorf("devdb with a missing command: %v, want an error naming it", err)
	}
	checkStopped(t, dir)
}
