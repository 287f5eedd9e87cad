//go:build linux

package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/procfs"

	"usersvc/db"
	"usersvc/internal/pglocal"
	"usersvc/migrations"
)

// scripts are the wrk Lua scripts and the pgbench scripts.
//
//go:embed scripts
var scripts embed.FS

// harness is what the benchmark and the soak run against: wrk, a
// throwaway PostgreSQL over TCP with seeded users, and the targets on
// loopback.
type harness struct {
	binDir  string // PostgreSQL's binaries, pgbench's too
	wrkBin  string
	tmp     string // the scripts and the targets' logs
	token   string // the bearer token the service requires (AUTH_TOKENS)
	flags   harnessFlags
	pg      *pglocal.Server
	db      *benchDB // the floor's and pgbench's
	dbs     []*benchDB
	targets []*target
	facts   []string // about the machine and the software, for the output
}

// startHarness finds the tools, starts PostgreSQL, seeds hf.seed users and
// starts a target per service binary, and the floor when withFloor. On
// error, what it started is stopped; otherwise the caller must call stop.
func startHarness(ctx context.Context, hf harnessFlags, withFloor bool, logf func(string, ...any)) (_ *harness, err error) {
	h := &harness{token: rand.Text(), flags: hf}
	defer func() {
		if err != nil {
			err = errors.Join(err, h.stop())
		}
	}()
	// Tools first: better to fail before the seeding.
	if h.binDir, err = pglocal.FindBinDir(); err != nil {
		return nil, err
	}
	if h.wrkBin, err = exec.LookPath("wrk"); err != nil {
		return nil, fmt.Errorf("%w: make bench and make soak install it (as root)", err)
	}
	if h.tmp, err = os.MkdirTemp("", "usersvc-bench-"); err != nil {
		return nil, err
	}
	sub, _ := fs.Sub(scripts, "scripts")
	if err := os.CopyFS(h.tmp, sub); err != nil {
		return nil, err
	}
	parent := "" // pglocal's scratch directory: /dev/shm
	if !hf.tmpfs {
		// On the checkout's disk, as a production database's data is on a
		// disk, where each commit waits for its flush.
		parent, _ = filepath.Abs(".bench")
		if err := os.MkdirAll(parent, 0o755); err != nil {
			return nil, err
		}
	}
	port, err := pglocal.FreePort()
	if err != nil {
		return nil, err
	}
	logf("starting PostgreSQL, seeding %d users", hf.seed)
	// PostgreSQL's default durability (fsync, synchronous_commit and
	// full_page_writes on), not pglocal's Ephemeral settings; TCP, not the
	// unix socket: as in production.
	if h.pg, err = pglocal.StartScratch(ctx, parent, "usersvc-bench-", pglocal.Options{Port: port}); err != nil {
		return nil, err
	}
	if h.db, err = h.prepareDatabase(ctx, "postgres", ""); err != nil {
		return nil, err
	}
	h.describe(ctx)
	for i, bin := range hf.bins {
		d, err := h.prepareDatabase(ctx, "target"+strconv.Itoa(i+1), bin)
		if err != nil {
			return nil, err
		}
		// Authentication on, as in production; otherwise the defaults, as
		// operators run it: JSON logs at info, an access log line per
		// request.
		if _, err := h.start(ctx, filepath.Base(bin), bin, d, []string{"serve"}, append([]string{"AUTH_TOKENS=" + h.token}, hf.env...)); err != nil {
			return nil, err
		}
	}
	if withFloor {
		self, err := os.Executable()
		if err != nil {
			return nil, err
		}
		if _, err := h.start(ctx, "floor", self, h.db, []string{"floor"}, nil); err != nil {
			return nil, err
		}
	}
	return h, nil
}

// stop stops the targets and PostgreSQL and removes the scratch
// directories. Returns an error when a target did not stop cleanly.
func (h *harness) stop() error {
	var err error
	for _, t := range h.targets {
		err = errors.Join(err, t.stop())
	}
	for _, d := range h.dbs {
		err = errors.Join(err, d.conn.Close(context.Background()))
	}
	if h.pg != nil {
		err = errors.Join(err, h.pg.Stop())
	}
	if h.tmp != "" {
		err = errors.Join(err, os.RemoveAll(h.tmp))
	}
	return err
}

// benchDB is a database of the server, seeded alike: the floor's and
// pgbench's (postgres), and one per service binary, which applies its own
// migrations to it, so that a binary from before a migration runs on the
// schema it knows.
type benchDB struct {
	name  string
	conn  *pgx.Conn // for the harness's own statements
	feed  bool      // it has the change feed (user_changes)
	after [2]int64  // ChangesPage's range of after: each leaves a full page of 100
	reset []string  // what brings it back to the seeded users
}

// prepareDatabase creates database name (but postgres), applies bin's
// migrations (usersvc migrate up), or this checkout's when bin is "",
// seeds the users, sequences their changes, and keeps a session open.
func (h *harness) prepareDatabase(ctx context.Context, name, bin string) (*benchDB, error) {
	if name != "postgres" {
		if err := h.db.exec(ctx, "CREATE DATABASE "+name); err != nil {
			return nil, err
		}
	}
	conn, err := pgx.Connect(ctx, h.pg.URL(name))
	if err != nil {
		return nil, err
	}
	d, seed, out := &benchDB{name: name, conn: conn}, h.flags.seed, []byte(nil)
	h.dbs = append(h.dbs, d)
	if bin != "" {
		cmd := exec.CommandContext(ctx, bin, "migrate", "up")
		cmd.Env = []string{"DATABASE_URL=" + h.pg.URL(name)}
		out, err = cmd.CombinedOutput()
	} else if p, perr := migrations.NewProvider(stdlib.OpenDB(*conn.Config())); perr != nil {
		err = perr
	} else {
		_, err = p.Up(ctx)
		p.Close()
	}
	if err != nil {
		return nil, fmt.Errorf("%s: migrate: %w\n%s", name, err, out)
	}
	// Users 1 to seed, each named for its id: names that pgbench, which
	// computes only numbers, sends as well as wrk. Then the tables of the
	// change feed that the schema has: the trigger's queue, which the
	// sequencer moves to the feed as the service's does, and the feed.
	var tables []string
	err = d.exec(ctx, fmt.Sprintf("INSERT INTO users (name) SELECT g::text FROM generate_series(1, %d) g", seed))
	if err == nil {
		err = conn.QueryRow(ctx, `SELECT coalesce(array_agg(t), '{}') FROM unnest(ARRAY['user_change_queue', 'user_changes']) t
			WHERE to_regclass(t) IS NOT NULL`).Scan(&tables)
	}
	if err == nil && slices.Contains(tables, "user_change_queue") {
		err = d.exec(ctx, "BEGIN", db.LockSequencer, db.SequenceChanges, "COMMIT")
	}
	if d.feed = slices.Contains(tables, "user_changes"); err == nil && d.feed {
		// From before the first change to the 101st from the end.
		err = conn.QueryRow(ctx, `SELECT min(position) - 1, (SELECT position FROM user_changes ORDER BY position DESC OFFSET 100 LIMIT 1)
			FROM user_changes`).Scan(&d.after[0], &d.after[1])
	}
	if err != nil {
		return nil, err
	}
	d.reset = []string{fmt.Sprintf("DELETE FROM users WHERE id > %d", seed)}
	for _, t := range tables {
		d.reset = append(d.reset, fmt.Sprintf("DELETE FROM %s WHERE user_id > %d", t, seed))
	}
	d.reset = append(d.reset, "VACUUM (ANALYZE) "+strings.Join(append([]string{"users"}, tables...), ", "), "CHECKPOINT")
	// Without triggers from now on: the harness's deletes queue no changes.
	return d, d.exec(ctx, append([]string{"SET session_replication_role = replica"}, d.reset...)...)
}

// exec runs the statements in turn.
func (d *benchDB) exec(ctx context.Context, stmts ...string) error {
	for _, stmt := range stmts {
		if _, err := d.conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %s: %w", d.name, stmt, err)
		}
	}
	return nil
}

// describe gathers what makes one run's figures comparable with another's;
// a fact that cannot be read says why instead.
func (h *harness) describe(ctx context.Context) {
	version := func(name string, args ...string) string {
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if line, _, _ := strings.Cut(string(bytes.TrimSpace(out)), "\n"); line != "" {
			return line
		}
		return err.Error()
	}
	var settings string
	if err := h.db.conn.QueryRow(ctx, `SELECT string_agg(name || '=' || current_setting(name), ' ' ORDER BY name) FROM pg_settings
		WHERE name IN ('fsync', 'synchronous_commit', 'full_page_writes', 'shared_buffers', 'data_directory')`).Scan(&settings); err != nil {
		settings = err.Error()
	}
	for _, bin := range h.flags.bins {
		h.facts = append(h.facts, filepath.Base(bin)+": "+version(bin, "version")+", GOMAXPROCS "+strconv.Itoa(runtime.GOMAXPROCS(0)))
	}
	h.facts = append(h.facts, "postgres: "+version(filepath.Join(h.binDir, "postgres"), "--version")+"; "+settings,
		"wrk: "+version(h.wrkBin, "-v")) // wrk -v exits with status 1
}

// target is a running HTTP server under load: usersvc, or the floor.
type target struct {
	name    string // in the benchmark's names
	db      *benchDB
	cmd     *exec.Cmd
	url     string             // http://127.0.0.1:port
	log     string             // its output
	cancel  context.CancelFunc // stops it
	done    chan struct{}
	waitErr error
}

// start starts bin with args, serving on a free port of 127.0.0.1 the
// database d, and returns once GET /readyz answers 200. The
// environment holds only what it is given here, so that the caller's
// (DB_MAX_CONNS, say) cannot change the figures unseen.
func (h *harness) start(ctx context.Context, name, bin string, d *benchDB, args, env []string) (*target, error) {
	port, err := pglocal.FreePort()
	if err != nil {
		return nil, err
	}
	t := &target{name: name, db: d, url: "http://127.0.0.1:" + strconv.Itoa(port), log: filepath.Join(h.tmp, name+".log"), done: make(chan struct{})}
	out, err := os.Create(t.log)
	if err != nil {
		return nil, err
	}
	defer out.Close()                                                // the process has its own descriptor
	cmdCtx, cancel := context.WithCancel(context.WithoutCancel(ctx)) // stop ends it, not ctx
	t.cmd, t.cancel = exec.CommandContext(cmdCtx, bin, args...), cancel
	t.cmd.Cancel = func() error { return t.cmd.Process.Signal(syscall.SIGTERM) }
	t.cmd.WaitDelay = 20 * time.Second
	t.cmd.Env = append([]string{"DATABASE_URL=" + h.pg.URL(d.name), "HTTP_ADDR=127.0.0.1:" + strconv.Itoa(port)}, env...)
	t.cmd.Stdout, t.cmd.Stderr = out, out
	// A process group of its own keeps a Ctrl-C away from it (bench stops
	// it itself); it dies should bench die first.
	t.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := t.cmd.Start(); err != nil {
		cancel()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	go func() {
		t.waitErr = t.cmd.Wait()
		close(t.done)
	}()
	h.targets = append(h.targets, t)
	timeout := time.After(30 * time.Second)
	for {
		if res, err := http.Get(t.url + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return t, nil
			}
		}
		select {
		case <-t.done:
			return nil, fmt.Errorf("%s exited: %v; its log ends:\n%s", name, t.waitErr, t.logTail())
		case <-timeout:
			return nil, fmt.Errorf("%s: GET /readyz did not answer 200 within 30s", name)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and waits for the graceful shutdown (20 seconds at
// most, then SIGKILL). Returns an error, with the end of its log, unless
// the process exited with status 0 after the signal.
func (t *target) stop() error {
	err := t.alive()
	t.cancel()
	<-t.done
	if err == nil && !errors.Is(t.waitErr, context.Canceled) { // what Wait returns after a clean exit
		err = fmt.Errorf("stop %s: %v; its log ends:\n%s", t.name, t.waitErr, t.logTail())
	}
	return err
}

// alive returns an error, with the end of its log, when the process has
// exited.
func (t *target) alive() error {
	select {
	case <-t.done:
		return fmt.Errorf("%s exited: %v; its log ends:\n%s", t.name, t.waitErr, t.logTail())
	default:
		return nil
	}
}

// rss returns the process's VmRSS in bytes.
func (t *target) rss() (int64, error) {
	p, err := procfs.NewProc(t.cmd.Process.Pid)
	if err != nil {
		return 0, err
	}
	st, err := p.NewStatus()
	return int64(st.VmRSS), err
}

// logTail returns the end of the target's log.
func (t *target) logTail() string {
	b, err := os.ReadFile(t.log)
	if err != nil {
		return err.Error()
	}
	return string(b[max(0, len(b)-4096):])
}
