//go:build linux

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/prometheus/procfs"

	"usersvc/internal/pglocal"
	"usersvc/migrations"
)

const (
	// database is the database the service and pgbench use.
	database = "usersvc"
	// dirPrefix names the benchmark's scratch directories, so that a later
	// run finds those of a run that was killed.
	dirPrefix = "usersvc-bench-"
	// diskDir, under the working directory, holds PostgreSQL's data: on the
	// disk of the checkout, as a production database's data is on a disk,
	// where every commit waits for its flush.
	diskDir = ".bench"
)

// harness is what every mode of bench runs against: wrk, a throwaway
// PostgreSQL over TCP with seeded users, and the service on loopback.
type harness struct {
	binDir   string            // PostgreSQL's binaries
	wrk      string            // the wrk binary
	bin      string            // the service's first binary, which the report describes
	tmp      string            // scratch directory: scripts, log
	scripts  map[string]string // the scripts' paths by name
	machine  machine
	pg       *pglocal.Server
	settings []string // PostgreSQL's, name=value, for the report
	svc      *service
}

// startHarness finds the tools, starts PostgreSQL, seeds ho.seed users and
// starts the service. On error, whatever it started is stopped and
// removed; otherwise the caller must call stop.
func startHarness(ctx context.Context, ho harnessOptions, logf func(string, ...any)) (_ *harness, err error) {
	h := &harness{bin: ho.serviceBins[0]}
	defer func() {
		if err != nil {
			err = errors.Join(err, h.stop())
		}
	}()
	// Tools first: better to fail before a minute of seeding.
	if h.binDir, err = pglocal.FindBinDir(); err != nil {
		return nil, err
	}
	if h.wrk, err = exec.LookPath(ho.wrk); err != nil {
		return nil, fmt.Errorf("%w: make bench and make soak install it (as root), or pass -wrk", err)
	}
	for _, bin := range ho.serviceBins {
		if _, err := os.Stat(bin); err != nil {
			return nil, fmt.Errorf("the service's binary: %w (make build builds it)", err)
		}
	}
	if h.tmp, err = os.MkdirTemp("", "usersvc-bench-"); err != nil {
		return nil, err
	}
	if h.scripts, err = writeScripts(h.tmp); err != nil {
		return nil, err
	}
	h.machine = describeMachine(ctx, h.binDir, h.wrk, h.bin)

	parent := "" // pglocal's scratch directory: /dev/shm
	if !ho.tmpfs {
		if parent, err = filepath.Abs(diskDir); err == nil {
			err = os.MkdirAll(parent, 0o755)
		}
		if err != nil {
			return nil, fmt.Errorf("start postgres: %w", err)
		}
	}
	port, err := pglocal.FreePort()
	if err != nil {
		return nil, err
	}
	logf("starting PostgreSQL")
	// Not pglocal's Ephemeral settings: the service and pgbench are both
	// measured on PostgreSQL's default durability (fsync, synchronous_commit
	// and full_page_writes on), as in production. TCP rather than the unix
	// socket, since a production database is at the other end of one.
	if h.pg, err = pglocal.StartScratch(ctx, parent, dirPrefix, pglocal.Options{Port: port}); err != nil {
		return nil, err
	}
	logf("seeding %d users", ho.seed)
	if err := h.prepareDatabase(ctx, ho.seed); err != nil {
		return nil, err
	}
	if h.settings, err = h.pgSettings(ctx); err != nil {
		return nil, err
	}
	return h, h.startService(ctx, h.bin, ho.env)
}

// stop stops the service and PostgreSQL and removes the scratch
// directories. Returns an error, with the end of the service's log, when
// the service did not stop cleanly.
func (h *harness) stop() error {
	var err error
	if h.svc != nil {
		err = h.svc.stop()
	}
	if h.pg != nil {
		err = errors.Join(err, h.pg.Stop())
	}
	if h.tmp != "" {
		err = errors.Join(err, os.RemoveAll(h.tmp))
	}
	return err
}

// exec runs the statements on a new connection to the server's database
// db, one after the other.
func (h *harness) exec(ctx context.Context, db string, stmts ...string) error {
	conn, err := pgx.Connect(ctx, h.pg.URL(db))
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for _, stmt := range stmts {
		if _, err := conn.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("%s: %w", stmt, err)
		}
	}
	return nil
}

// queryInts returns the integers of the first row of query on the
// service's database.
func (h *harness) queryInts(ctx context.Context, query string, n int) ([]int, error) {
	conn, err := pgx.Connect(ctx, h.pg.URL(database))
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	out := make([]int, n)
	dest := make([]any, n)
	for i := range out {
		dest[i] = &out[i]
	}
	return out, conn.QueryRow(ctx, query).Scan(dest...)
}

// tidy vacuums and analyzes the table and checkpoints, so that the next
// run pays neither for hint bits nor dead rows, nor for a checkpoint it
// did not cause.
var tidy = []string{"VACUUM (ANALYZE) users", "CHECKPOINT"}

// prepareDatabase creates the database, applies the service's migrations
// and seeds seed users.
func (h *harness) prepareDatabase(ctx context.Context, seed int) error {
	if err := h.exec(ctx, "postgres", "CREATE DATABASE "+database); err != nil {
		return fmt.Errorf("create database: %w", err)
	}
	cfg, err := pgx.ParseConfig(h.pg.URL(database))
	if err != nil {
		return err
	}
	sqlDB := stdlib.OpenDB(*cfg)
	defer sqlDB.Close()
	provider, err := migrations.NewProvider(sqlDB)
	if err != nil {
		return err
	}
	if _, err := provider.Up(ctx); err != nil {
		return fmt.Errorf("apply migrations: %w", err)
	}
	if err := h.growTo(ctx, seed); err != nil {
		return err
	}
	if ids, err := h.queryInts(ctx, "SELECT min(id), max(id) FROM users", 2); err != nil || ids[0] != 1 || ids[1] != seed {
		return fmt.Errorf("seed users: ids %v, %v; want 1 to %d", ids, err, seed)
	}
	return nil
}

// growTo adds users until the table holds rows of them, then tidies. The
// first users of an empty table get ids 1, 2, ... and are named for their
// id in decimal ("1", "2", ...): names that pgbench, which computes only
// numbers, can send as well as wrk. Later users, for the deep pages, are
// named "d" and a number, so that they collide with nothing.
func (h *harness) growTo(ctx context.Context, rows int) error {
	have, err := h.queryInts(ctx, "SELECT count(*) FROM users", 1)
	if err != nil || have[0] >= rows {
		return err
	}
	prefix := ""
	if have[0] > 0 {
		prefix = "d"
	}
	insert := fmt.Sprintf("INSERT INTO users (name) SELECT '%s' || g FROM generate_series(%d, %d) g", prefix, have[0]+1, rows)
	if err := h.exec(ctx, database, append([]string{insert}, tidy...)...); err != nil {
		return fmt.Errorf("seed users: %w", err)
	}
	return nil
}

// restore brings the table back to the seed users (ids 1 to seed): it
// deletes the users that runs added, then tidies. Every run that reads or
// writes the table starts from it: otherwise pgbench's inserts alone would
// grow it tenfold in a full run, and each run would step over the dead rows
// of the renames and failed inserts before it, and pay for an autovacuum or
// a checkpoint that an earlier run made due. Renamed users keep their new
// names: no scenario needs their old ones.
func (h *harness) restore(ctx context.Context, seed int) error {
	if err := h.exec(ctx, database, append([]string{fmt.Sprintf("DELETE FROM users WHERE id > %d", seed)}, tidy...)...); err != nil {
		return fmt.Errorf("restore users: %w", err)
	}
	return nil
}

// pgSettings returns, as name=value, the server settings that decide what
// a write costs and the memory the table lives in, then the disk of the
// data directory.
func (h *harness) pgSettings(ctx context.Context) ([]string, error) {
	conn, err := pgx.Connect(ctx, h.pg.URL(database))
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var out []string
	for _, name := range []string{"server_version", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
		"shared_buffers", "max_connections", "log_min_error_statement", "data_directory"} {
		var v string
		if err := conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v); err != nil {
			return nil, fmt.Errorf("show %s: %w", name, err)
		}
		out = append(out, name+"="+v)
	}
	return append(out, "data on "+mountOf(h.pg.Dir())), nil
}

// mountOf returns the device and file system type of the mount that holds
// path, as /proc/self/mountinfo lists them.
func mountOf(path string) string {
	mounts, err := procfs.GetMounts()
	if err != nil {
		return fmt.Sprintf("(unknown: %v)", err)
	}
	var best *procfs.MountInfo
	for _, m := range mounts {
		in := path == m.MountPoint || strings.HasPrefix(path, strings.TrimSuffix(m.MountPoint, "/")+"/")
		if in && (best == nil || len(m.MountPoint) >= len(best.MountPoint)) {
			best = m
		}
	}
	if best == nil {
		return "(unknown mount)"
	}
	return fmt.Sprintf("%s (%s, mounted on %s)", best.Source, best.FSType, best.MountPoint)
}

// service is the running usersvc process.
type service struct {
	cmd     *exec.Cmd
	url     string // http://127.0.0.1:port
	logPath string
	token   string        // the bearer token it requires (AUTH_TOKENS)
	done    chan struct{} // closed when the process has exited
	waitErr error
}

// startService starts (or restarts) the service's binary bin serving on a
// free port of 127.0.0.1, and returns once GET /readyz answers 200. The environment
// holds only what the service is given here, so that settings of the
// caller's environment (DB_MAX_CONNS, say) do not change the benchmark
// unseen; extra are added through -env and -sweep. Its output is appended
// to service.log.
func (h *harness) startService(ctx context.Context, bin string, extra []string) error {
	if h.svc != nil {
		err := h.svc.stop()
		if h.svc = nil; err != nil {
			return err
		}
	}
	port, err := pglocal.FreePort()
	if err != nil {
		return err
	}
	s := &service{url: "http://127.0.0.1:" + strconv.Itoa(port), logPath: filepath.Join(h.tmp, "service.log"), token: rand.Text(), done: make(chan struct{})}
	logFile, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("start the service: %w", err)
	}
	defer logFile.Close() // the process has its own descriptor
	s.cmd = exec.Command(bin, "serve")
	// Authentication on, as it should be in production: its cost is
	// measured too. Otherwise the defaults, as operators run it: JSON logs
	// at info, one access log line per request.
	s.cmd.Env = append([]string{"DATABASE_URL=" + h.pg.URL(database), "HTTP_ADDR=127.0.0.1:" + strconv.Itoa(port), "AUTH_TOKENS=" + s.token}, extra...)
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	// A process group of its own keeps a Ctrl-C in the terminal away from
	// it (bench stops it, after reading its memory); killed should bench
	// die without stopping it.
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return fmt.Errorf("start the service: %w", err)
	}
	go func() {
		s.waitErr = s.cmd.Wait()
		close(s.done)
	}()
	h.svc = s
	if err := s.waitReady(ctx, 30*time.Second); err != nil {
		return fmt.Errorf("start the service: %w; its log ends:\n%s", err, s.logTail())
	}
	return nil
}

// waitReady polls GET /readyz until it answers 200. Returns an error when
// the process exits, or ctx or the timeout ends first.
func (s *service) waitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/readyz", nil)
		if err != nil {
			return err
		}
		if res, err := http.DefaultClient.Do(req); err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-s.done:
			return fmt.Errorf("the service exited: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("wait for GET /readyz to answer 200: %w", ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// memory is what /proc says of the service's memory, in bytes.
type memory struct {
	rss, hwm int64 // resident now, and at its peak
}

// memory reads the service's VmRSS and VmHWM from /proc/<pid>/status.
func (s *service) memory() (memory, error) {
	p, err := procfs.NewProc(s.cmd.Process.Pid)
	if err != nil {
		return memory{}, fmt.Errorf("read the service's memory: %w", err)
	}
	st, err := p.NewStatus()
	if err != nil {
		return memory{}, fmt.Errorf("read the service's memory: %w", err)
	}
	return memory{rss: int64(st.VmRSS), hwm: int64(st.VmHWM)}, nil
}

// stop sends SIGTERM and waits for the graceful shutdown; after 20 seconds
// it kills the process. Returns an error, with the end of its log, when
// the service did not exit with status 0.
func (s *service) stop() error {
	err := s.waitErr
	if !s.exited() {
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
			err = s.waitErr
		case <-time.After(20 * time.Second):
			s.cmd.Process.Kill()
			<-s.done
			err = errors.New("killed after 20s")
		}
	} else {
		err = fmt.Errorf("exited before the end: %v", err)
	}
	if err != nil {
		return fmt.Errorf("stop the service: %w; its log ends:\n%s", err, s.logTail())
	}
	return nil
}

// exited reports whether the service has exited.
func (s *service) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// trouble returns how many lines the service logged at warn or above (a
// 5xx, a database that does not answer: worth a look), and the last few of
// them; -1 and why when the log cannot be read. It reads the log a line at
// a time: a soak's access log runs to hundreds of MiB.
func (s *service) trouble() (int, string) {
	f, err := os.Open(s.logPath)
	if err != nil {
		return -1, fmt.Sprintf("(read the service's log: %v)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	var n int
	var last []string
	for sc.Scan() {
		if line := sc.Bytes(); bytes.Contains(line, []byte(`"level":"WARN"`)) || bytes.Contains(line, []byte(`"level":"ERROR"`)) {
			n++
			last = append(last[max(0, len(last)-4):], sc.Text()+"\n")
		}
	}
	if err := sc.Err(); err != nil {
		return -1, fmt.Sprintf("(read the service's log: %v)", err)
	}
	return n, strings.Join(last, "")
}

// logTail returns the end of the service's log.
func (s *service) logTail() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil {
		return fmt.Sprintf("(read the service's log: %v)", err)
	}
	return string(b[max(0, len(b)-4096):])
}
