//go:build ha && linux

package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/procfs"

	"usersvc/internal/pglocal"
	"usersvc/internal/pgtest"
)

// pgAutoctlPath returns the pg_autoctl program, or fails the test saying
// how to get it.
func pgAutoctlPath(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("pg_autoctl")
	if err != nil {
		t.Fatal("pg_autoctl not found in PATH: run make test-ha, which installs it " +
			"(Debian: apt-get install postgresql-15-auto-failover) and runs this test")
	}
	return path
}

// autoFailoverBinDir returns the bin directory of the PostgreSQL version
// whose extension directory holds pg_auto_failover's.
func autoFailoverBinDir(t *testing.T) string {
	t.Helper()
	libs, _ := filepath.Glob("/usr/lib/postgresql/*/lib/pgautofailover.so") // the pattern is valid
	for _, lib := range libs {
		bin := filepath.Join(filepath.Dir(filepath.Dir(lib)), "bin")
		if _, err := os.Stat(filepath.Join(bin, "pg_ctl")); err == nil {
			return bin
		}
	}
	t.Fatal("no /usr/lib/postgresql/*/lib/pgautofailover.so beside a pg_ctl: run make test-ha, which installs " +
		"postgresql-15-auto-failover")
	return ""
}

// formation is a pg_auto_failover monitor and its nodes, each a
// `pg_autoctl run` process of the test's own with its PostgreSQL.
type formation struct {
	t       *testing.T
	bin     string // pg_autoctl
	pgCtl   string
	dir     string // where the data directories are, owned by the user PostgreSQL runs as
	env     []string
	monitor *autoctl
	nodes   map[string]*autoctl
	lan     *lan // the monitor is on this machine, each node a host of its own
}

// autoctl is a `pg_autoctl run` process: the monitor, or a node's keeper,
// and the PostgreSQL it runs.
type autoctl struct {
	name   string
	pgdata string
	ns     string // its network namespace; "" for this machine's
	host   string // its address
	port   int
	cmd    *exec.Cmd
	exited chan struct{}
	logs   *syncBuffer
}

// newFormation starts a monitor with monitorSettings and nodes named
// names, in that order (the first is the primary), each node a host of
// its own on a private network (newLAN) and the monitor on this machine,
// and returns once the first is primary and the others are secondaries.
// The database usersvc on them belongs to the role usersvc; the table
// ha_probe is the test's own; track_commit_timestamp is on. Every process
// is stopped when the test ends.
func newFormation(t *testing.T, names ...string) *formation {
	t.Helper()
	f := &formation{t: t, bin: pgAutoctlPath(t), nodes: map[string]*autoctl{}, lan: newLAN(t)}
	binDir := autoFailoverBinDir(t)
	f.pgCtl = filepath.Join(binDir, "pg_ctl")
	scratchDir, err := pglocal.MkdirScratch("usersvc-test-ha-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(scratchDir) })
	// pg_autoctl writes beside each data directory (base backups), so the
	// directory that holds them belongs to the user PostgreSQL runs as.
	f.dir = filepath.Join(scratchDir, "formation")
	home := filepath.Join(f.dir, "home")
	for _, dir := range []string{f.dir, home} {
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := f.chown(dir); err != nil {
			t.Fatal(err)
		}
	}
	// Its own configuration, state and run directories, and a PATH
	// without the caller's.
	f.env = []string{
		"PATH=" + binDir + ":/usr/bin:/bin",
		"HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, "config"),
		"XDG_DATA_HOME=" + filepath.Join(home, "share"),
		"XDG_RUNTIME_DIR=" + home,
	}
	t.Cleanup(f.stop)
	t.Cleanup(func() {
		if t.Failed() && f.monitor != nil && f.monitor.running() {
			t.Logf("the monitor's events:\n%s", f.events())
		}
	})

	began := time.Now()
	// pg_autoctl create leaves its PostgreSQL stopped: what is added to
	// its configuration then holds from pg_autoctl run on.
	lanTrust := fmt.Sprintf("host all all %[1]s.0/24 trust\nhost replication all %[1]s.0/24 trust\n", f.lan.subnet)
	f.monitor = &autoctl{name: "monitor", pgdata: filepath.Join(f.dir, "monitor"), host: f.lan.hostIP, port: pgtest.FreePort(t)}
	f.run("", "create", "monitor", "--pgdata", f.monitor.pgdata, "--pgport", strconv.Itoa(f.monitor.port),
		"--hostname", f.monitor.host, "--auth", "trust", "--no-ssl", "--pgctl", f.pgCtl)
	f.run("", "config", "set", "--pgdata", f.monitor.pgdata, "postgresql.listen_addresses", f.monitor.host)
	appendFile(t, filepath.Join(f.monitor.pgdata, "pg_hba.conf"), lanTrust)
	f.start(f.monitor)
	monitor := f.connect(f.monitor, "pg_auto_failover")
	for _, s := range monitorSettings {
		if _, err := monitor.Exec(context.Background(), fmt.Sprintf("ALTER SYSTEM SET %s = %s", s[0], s[1])); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := monitor.Exec(context.Background(), "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	monitor.Close(context.Background())

	for i, name := range names {
		n := &autoctl{name: name, pgdata: filepath.Join(f.dir, name), port: pgtest.FreePort(t)}
		n.ns, n.host = f.lan.addHost(name)
		f.nodes[name] = n
		f.run(n.ns, "create", "postgres", "--pgdata", n.pgdata, "--pgport", strconv.Itoa(n.port),
			"--hostname", n.host, "--listen", n.host, "--auth", "trust", "--no-ssl",
			"--monitor", f.monitorURL("autoctl_node"), "--dbname", "usersvc", "--name", name, "--pgctl", f.pgCtl)
		f.run("", "config", "set", "--pgdata", n.pgdata, "timeout.network_partition_timeout", networkPartitionTimeout)
		appendFile(t, filepath.Join(n.pgdata, "pg_hba.conf"), lanTrust)
		appendFile(t, filepath.Join(n.pgdata, "postgresql.conf"), "track_commit_timestamp = on\n")
		f.start(n)
		if i == 0 {
			f.waitStates(30*time.Second, map[string]string{name: "single"})
			conn := f.connect(n, "usersvc")
			for _, sql := range []string{
				"CREATE ROLE usersvc LOGIN",
				"ALTER DATABASE usersvc OWNER TO usersvc",
				"CREATE TABLE ha_probe (at timestamptz NOT NULL DEFAULT clock_timestamp())",
			} {
				if _, err := conn.Exec(context.Background(), sql); err != nil {
					t.Fatal(err)
				}
			}
			conn.Close(context.Background())
		}
	}
	want := map[string]string{names[0]: "primary"}
	for _, name := range names[1:] {
		want[name] = "secondary"
	}
	f.waitStates(60*time.Second, want)
	t.Logf("pg_auto_failover formation up in %v: monitor on :%d, %s", time.Since(began).Round(time.Millisecond), f.monitor.port, f.describe())
	return f
}

// chown gives path to the user PostgreSQL runs as, when that is not this
// process's user.
func (f *formation) chown(path string) error {
	attr, err := pglocal.ServerProcAttr(true)
	if err != nil || attr.Credential == nil {
		return err
	}
	return os.Chown(path, int(attr.Credential.Uid), int(attr.Credential.Gid))
}

// command returns pg_autoctl with args, to run as the user PostgreSQL
// runs as, in the formation's environment.
func (f *formation) command(args ...string) *exec.Cmd {
	f.t.Helper()
	attr, err := pglocal.ServerProcAttr(true)
	if err != nil {
		f.t.Fatal(err)
	}
	cmd := exec.Command(f.bin, args...)
	cmd.Dir, cmd.Env, cmd.SysProcAttr = f.dir, f.env, attr
	return cmd
}

// run runs pg_autoctl with args in network namespace ns ("": this
// machine's) to completion and returns its output. The test fails when it
// fails.
func (f *formation) run(ns string, args ...string) string {
	f.t.Helper()
	var out syncBuffer
	cmd := f.command(args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := f.startIn(ns, cmd)
	if err == nil {
		err = cmd.Wait()
	}
	if err != nil {
		f.t.Fatalf("pg_autoctl %s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	return out.String()
}

// startIn starts cmd in network namespace ns ("": this machine's).
func (f *formation) startIn(ns string, cmd *exec.Cmd) error {
	if ns == "" {
		return cmd.Start()
	}
	return in(ns, cmd.Start)
}

// start starts `pg_autoctl run` for a, which runs until stop or kill.
func (f *formation) start(a *autoctl) {
	f.t.Helper()
	a.logs, a.exited = &syncBuffer{}, make(chan struct{})
	a.cmd = f.command("run", "--pgdata", a.pgdata)
	a.cmd.Stdout, a.cmd.Stderr = a.logs, a.logs
	if err := f.startIn(a.ns, a.cmd); err != nil {
		f.t.Fatalf("pg_autoctl run --pgdata %s: %v", a.pgdata, err)
	}
	go func() {
		a.cmd.Wait()
		close(a.exited)
	}()
}

// running reports whether a's pg_autoctl run has been started and not
// exited.
func (a *autoctl) running() bool {
	if a.cmd == nil {
		return false
	}
	select {
	case <-a.exited:
		return false
	default:
		return true
	}
}

// kill stops node name as the loss of its machine would: its keeper, its
// PostgreSQL and every session of it are frozen, then killed, at once.
func (f *formation) kill(name string) {
	f.t.Helper()
	a := f.nodes[name]
	// Frozen twice over, so that a backend forked between the listing and
	// the first SIGSTOP is frozen too, before any is killed.
	var pids []int
	for range 2 {
		pids = descendants(f.t, a.cmd.Process.Pid)
		for _, pid := range pids {
			syscall.Kill(pid, syscall.SIGSTOP)
		}
	}
	for _, pid := range pids {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	select {
	case <-a.exited:
	case <-time.After(10 * time.Second):
		f.t.Fatalf("pg_autoctl run of %s still runs 10s after SIGKILL", name)
	}
	reap(f.t, pids[1:]) // pids[0], the keeper, is a.cmd's to wait for
}

// reap waits for the killed processes pids to be gone. This process is
// their subreaper (pglocal makes it one, to collect the servers it starts),
// so those whose parent died too are its children now: it reaps them, or
// the killed postmaster would stay a zombie whose pid, still in
// postmaster.pid, keeps pg_autoctl from starting PostgreSQL again.
func reap(t *testing.T, pids []int) {
	t.Helper()
	pending := map[int]bool{}
	for _, pid := range pids {
		pending[pid] = true
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(pending) > 0 {
		for pid := range pending {
			got, err := syscall.Wait4(pid, nil, syscall.WNOHANG, nil)
			if got == pid {
				delete(pending, pid)
			} else if errors.Is(err, syscall.ECHILD) {
				if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, fs.ErrNotExist) {
					delete(pending, pid) // gone: its own parent reaped it
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("killed processes %v still there 10s after SIGKILL", slices.Sorted(maps.Keys(pending)))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// descendants returns pid and every process descended from it.
func descendants(t *testing.T, pid int) []int {
	t.Helper()
	procs, err := procfs.AllProcs()
	if err != nil {
		t.Fatal(err)
	}
	children := map[int][]int{}
	for _, p := range procs {
		if st, err := p.Stat(); err == nil { // a process may have gone meanwhile
			children[st.PPID] = append(children[st.PPID], p.PID)
		}
	}
	out := []int{pid}
	for i := 0; i < len(out); i++ {
		out = append(out, children[out[i]]...)
	}
	return out
}

// stop stops the nodes, then the monitor: pg_autoctl stops its
// PostgreSQL on SIGTERM; what still runs after 20 s is killed.
func (f *formation) stop() {
	for _, a := range append(slices.Collect(maps.Values(f.nodes)), f.monitor) {
		if a == nil || !a.running() {
			continue
		}
		a.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-a.exited:
		case <-time.After(20 * time.Second):
			f.t.Errorf("pg_autoctl run --pgdata %s still runs 20s after SIGTERM: killed", a.pgdata)
			for _, pid := range descendants(f.t, a.cmd.Process.Pid) {
				syscall.Kill(pid, syscall.SIGKILL)
			}
			<-a.exited
		}
	}
}

// monitorURL returns the monitor's URL for user.
func (f *formation) monitorURL(user string) string {
	return fmt.Sprintf("postgres://%s@%s:%d/pg_auto_failover?sslmode=disable", user, f.monitor.host, f.monitor.port)
}

// nodeURL returns the URL of database on node name alone, as the
// superuser postgres.
func (f *formation) nodeURL(name, database string) string {
	return f.url(f.nodes[name], database)
}

// url returns the URL of database on a's PostgreSQL, as postgres.
func (f *formation) url(a *autoctl, database string) string {
	return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable&connect_timeout=2", a.host, a.port, database)
}

// connect connects to database on a's PostgreSQL as postgres, retrying
// for 15 s while it starts.
func (f *formation) connect(a *autoctl, database string) *pgx.Conn {
	f.t.Helper()
	u := f.url(a, database)
	deadline := time.Now().Add(15 * time.Second)
	for {
		conn, err := pgx.Connect(context.Background(), u)
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("connect to %s: %v; pg_autoctl's log:\n%s", a.name, err, tail(a.logs.String(), 3000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// nodeState is a node as the monitor sees it.
type nodeState struct {
	port             int
	reported, assign string
}

// states returns the monitor's view of each node, by name.
func (f *formation) states() map[string]nodeState {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.monitorURL("postgres"))
	if err != nil {
		f.t.Fatalf("connect to the monitor: %v", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT nodename, nodeport, reportedstate::text, goalstate::text FROM pgautofailover.node")
	if err != nil {
		f.t.Fatal(err)
	}
	out := map[string]nodeState{}
	var name string
	var s nodeState
	_, err = pgx.ForEachRow(rows, []any{&name, &s.port, &s.reported, &s.assign}, func() error {
		out[name] = s
		return nil
	})
	if err != nil {
		f.t.Fatal(err)
	}
	return out
}

// events returns the monitor's events, oldest first, one a line.
func (f *formation) events() string {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, f.monitorURL("postgres"))
	if err != nil {
		return fmt.Sprintf("(connect to the monitor: %v)", err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT to_char(eventtime, 'HH24:MI:SS.MS'), nodename, reportedstate::text, goalstate::text, description
		FROM pgautofailover.event ORDER BY eventid`)
	if err != nil {
		return fmt.Sprintf("(read the monitor's events: %v)", err)
	}
	var b strings.Builder
	var at, node, reported, goal, description string
	_, err = pgx.ForEachRow(rows, []any{&at, &node, &reported, &goal, &description}, func() error {
		fmt.Fprintf(&b, "%s %s %s -> %s: %s\n", at, node, reported, goal, description)
		return nil
	})
	if err != nil {
		fmt.Fprintf(&b, "(read the monitor's events: %v)", err)
	}
	return b.String()
}

// describe returns each node's name, port and state, for the log.
func (f *formation) describe() string {
	states := f.states()
	var parts []string
	for _, name := range slices.Sorted(maps.Keys(states)) {
		s := states[name]
		parts = append(parts, fmt.Sprintf("%s :%d %s", name, s.port, s.reported))
	}
	return strings.Join(parts, ", ")
}

// waitStates polls the monitor until each node named in want reports the
// state want gives it and is assigned that state, or fails the test after
// within.
func (f *formation) waitStates(within time.Duration, want map[string]string) {
	f.t.Helper()
	deadline := time.Now().Add(within)
	for {
		states := f.states()
		done := true
		for name, state := range want {
			if s := states[name]; s.reported != state || s.assign != state {
				done = false
			}
		}
		if done {
			return
		}
		if time.Now().After(deadline) {
			var logs strings.Builder
			for _, n := range f.nodes {
				fmt.Fprintf(&logs, "--- %s:\n%s\n", n.name, tail(n.logs.String(), 2000))
			}
			f.t.Fatalf("the monitor reports %v %v after %v, want %v\n%s", states, time.Now().Format(time.TimeOnly), within, want, logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// uri returns the formation's URL as the monitor gives it (pg_autoctl
// show uri), for the role usersvc: every node, target_session_attrs=read-write.
func (f *formation) uri() string {
	f.t.Helper()
	out := strings.TrimSpace(f.run("", "show", "uri", "--pgdata", f.monitor.pgdata, "--formation", "default"))
	u, ok := strings.CutPrefix(out, "postgres://")
	if !ok || !strings.Contains(u, "target_session_attrs=read-write") {
		f.t.Fatalf("pg_autoctl show uri --formation default = %q, want a postgres:// URL with target_session_attrs=read-write", out)
	}
	return "postgres://usersvc@" + u
}

// probeWrites starts committing rows to ha_probe on node name, one attempt
// every 10 ms on a connection of its own, until one commits; it then
// sends when on the returned channel. It gives up when ctx ends.
func (f *formation) probeWrites(ctx context.Context, name string) <-chan time.Time {
	accepted := make(chan time.Time, 1)
	u := f.nodeURL(name, "usersvc")
	go func() {
		var conn *pgx.Conn
		defer func() {
			if conn != nil {
				conn.Close(context.Background())
			}
		}()
		for ctx.Err() == nil {
			attemptCtx, cancel := context.WithTimeout(ctx, time.Second)
			var err error
			if conn == nil || conn.IsClosed() {
				conn, err = pgx.Connect(attemptCtx, u)
			}
			if err == nil {
				_, err = conn.Exec(attemptCtx, "INSERT INTO ha_probe DEFAULT VALUES")
			}
			cancel()
			if err == nil {
				accepted <- time.Now()
				return
			}
			if conn != nil && err != nil && conn.IsClosed() {
				conn = nil
			}
			select {
			case <-ctx.Done():
			case <-time.After(10 * time.Millisecond):
			}
		}
	}()
	return accepted
}
