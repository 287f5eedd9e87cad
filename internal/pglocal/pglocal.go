// Package pglocal starts a private PostgreSQL server from the server binaries
// installed on the machine, for tests, local development and the benchmark.
//
// initdb creates the cluster and pg_ctl starts and stops the server, which
// then runs detached in a session of its own, so a Ctrl-C in the terminal
// does not reach it; its owner decides when to stop it. When the calling
// process runs as root, initdb, pg_ctl and postgres run as the unprivileged
// user "postgres" (or "nobody"), because PostgreSQL refuses to run as root.
//
// The superuser postgres connects without a password; every other role
// needs its password, as on a production server.
package pglocal

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	// socketOnlyPort names the socket file (.s.PGSQL.5432) when the server
	// listens on no TCP port.
	socketOnlyPort = 5432
	// maxSocketPath is the longest unix socket path PostgreSQL accepts
	// (sizeof(sun_path) - 1), counting the ".s.PGSQL.<port>.lock" file.
	maxSocketPath = 107
	// timeout bounds a start, and each of pg_ctl's waits for a stop.
	timeout      = 30 * time.Second
	logTailBytes = 4096
)

// Options configures Start.
type Options struct {
	// Dir is the data directory. It is created, and initialised with initdb,
	// when it is missing or has no PG_VERSION file. The server's output is
	// appended to server.log inside it.
	Dir string
	// Port is the TCP port on 127.0.0.1 (FreePort finds one). Zero means no TCP listener: the
	// server is reachable through its unix socket only.
	Port int
	// Ephemeral trades durability for speed, for throwaway test servers:
	// fsync, synchronous_commit and full_page_writes are off, max_connections
	// is raised for parallel tests, and dynamic shared memory lives in Dir.
	Ephemeral bool
}

// Server is a running PostgreSQL server.
type Server struct {
	dir     string
	port    int    // the port number, also for a socket-only server
	host    string // TCP address, empty for a socket-only server
	sockDir string
	pid     int // the postmaster's
	reused  bool

	// The fields below are set only for a server this process started.
	binDir     string
	cred       *syscall.Credential // who runs pg_ctl; nil for this process's user
	ownSockDir bool                // sockDir was created by Start and is removed by Stop
	scratch    *scratch            // removed by Stop, for StartScratch's servers
	stopOnce   sync.Once
	stopErr    error
}

// FindBinDir returns the directory that holds the PostgreSQL server binaries
// (postgres, initdb and pg_ctl). It looks in PATH, then in `pg_config
// --bindir`, then in /usr/lib/postgresql/*/bin, highest version first.
// Returns an error that says how to install them when none is found.
func FindBinDir() (string, error) {
	return findBinDir(os.Getenv("PATH"), "pg_config", "/usr/lib/postgresql/*/bin")
}

// findBinDir is FindBinDir with the places to look in as arguments: a
// PATH-style list, the pg_config command and a glob whose parent directories
// are named for versions.
func findBinDir(path, pgConfig, glob string) (string, error) {
	for _, dir := range filepath.SplitList(path) {
		if dir != "" && hasServerBinaries(dir) {
			return dir, nil
		}
	}
	if out, err := exec.Command(pgConfig, "--bindir").Output(); err == nil {
		if dir := strings.TrimSpace(string(out)); hasServerBinaries(dir) {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob(glob) // the only error is for a malformed pattern
	slices.SortFunc(dirs, func(a, b string) int {
		return compareVersions(filepath.Base(filepath.Dir(b)), filepath.Base(filepath.Dir(a)))
	})
	for _, dir := range dirs {
		if hasServerBinaries(dir) {
			return dir, nil
		}
	}
	return "", errors.New("no PostgreSQL server binaries found (looked in PATH, pg_config --bindir, " +
		"/usr/lib/postgresql/*/bin): install them (Debian: apt-get install postgresql) " +
		"or set DATABASE_URL to an existing database")
}

func hasServerBinaries(dir string) bool {
	for _, name := range []string{"postgres", "initdb", "pg_ctl"} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

// compareVersions compares dotted version numbers such as "9.6" and "15",
// numerically component by component.
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// Start starts a PostgreSQL server on opts.Dir, running initdb first when
// the directory holds no cluster, and returns once the server accepts
// connections (pg_ctl start -w). ctx bounds the start-up only, not the
// server's life: call Stop to stop it.
//
// When a server already runs on opts.Dir, Start returns it with Reused
// reporting true, whatever opts.Port says.
//
// Returns an error when no server binaries are found (see FindBinDir), when
// initdb fails, when a server runs on opts.Dir but is not ready, or when
// the server does not start within 30 seconds; the error then includes the
// tail of the server's log.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("start postgres: no data directory given")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	srv, err := start(ctx, dir, opts)
	if err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	return srv, nil
}

func start(ctx context.Context, dir string, opts Options) (*Server, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	srv := &Server{dir: dir, port: opts.Port, binDir: binDir, cred: cred}
	if running, err := srv.running(ctx); err != nil || running {
		return srv, err
	}
	if err := prepareDir(dir, cred); err != nil {
		return nil, err
	}
	if err := initdb(ctx, binDir, dir, cred, opts.Ephemeral); err != nil {
		return nil, err
	}

	listen := ""
	if opts.Port == 0 {
		srv.port = socketOnlyPort
	} else {
		listen, srv.host = "127.0.0.1", "127.0.0.1"
	}
	if srv.sockDir, srv.ownSockDir, err = socketDir(dir, srv.port, cred); err != nil {
		return nil, err
	}
	settings := []string{"listen_addresses=" + listen, "unix_socket_directories=" + srv.sockDir}
	if opts.Ephemeral {
		settings = append(settings, "fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300",
			// Segments in Dir, not in /dev/shm: removed with Dir even when
			// the server was killed.
			"dynamic_shared_memory_type=mmap")
	}
	// pg_ctl passes -o to postgres through a shell.
	postgresArgs := "-p " + strconv.Itoa(srv.port)
	for _, s := range settings {
		postgresArgs += " -c '" + strings.ReplaceAll(s, "'", `'\''`) + "'"
	}
	logPath := filepath.Join(dir, "server.log")
	var logStart int64
	if fi, err := os.Stat(logPath); err == nil {
		logStart = fi.Size()
	}
	adoptOrphans()
	err = srv.pgCtl(ctx, "start", "-w", "-t", strconv.Itoa(int(timeout/time.Second)), "-l", logPath, "-o", postgresArgs)
	if err == nil {
		srv.pid, err = readPID(dir)
	}
	if err != nil {
		// A postmaster that pg_ctl gave up waiting for may still be up.
		srv.pgCtl(context.Background(), "stop", "-m", "immediate")
		srv.removeSockDir()
		return nil, fmt.Errorf("%w; server log:\n%s", err, fileTail(logPath, logStart))
	}
	return srv, nil
}

// running reports whether a server runs on s.dir (pg_ctl status) and, when
// one does, fills s in from its postmaster.pid and marks it reused.
// Returns an error when the server is not ready, or not answering.
func (s *Server) running(ctx context.Context) (bool, error) {
	if _, err := os.Stat(filepath.Join(s.dir, "postmaster.pid")); err != nil {
		return false, nil
	}
	// A stale postmaster.pid, left by a server that was killed, is no
	// server: postgres itself handles that on start.
	if s.pgCtl(ctx, "status") != nil {
		return false, nil
	}
	b, err := os.ReadFile(filepath.Join(s.dir, "postmaster.pid"))
	if err != nil {
		return false, err
	}
	// The lines of PostgreSQL's pidfile.h: 1 pid, 4 port, 5 socket
	// directory, 6 first listen address, 8 status.
	lines := append(strings.Split(string(b), "\n"), make([]string, 8)...)
	if status := strings.TrimSpace(lines[7]); status != "ready" {
		return false, fmt.Errorf("postgres runs but is not ready (%q): try again", status)
	}
	s.pid, _ = strconv.Atoi(strings.TrimSpace(lines[0]))
	s.port, _ = strconv.Atoi(strings.TrimSpace(lines[3]))
	s.sockDir = strings.TrimSpace(lines[4])
	switch h := strings.TrimSpace(lines[5]); h {
	case "":
		s.host = ""
	case "*", "0.0.0.0":
		s.host = "127.0.0.1"
	case "::":
		s.host = "::1"
	default:
		s.host = h
	}
	s.reused = true
	return true, nil
}

// readPID returns the postmaster's pid from dir/postmaster.pid.
func readPID(dir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

// pgCtl runs pg_ctl with args on the server's data directory, as the user
// postgres runs as, in a session of its own, which the server it starts
// inherits. Returns an error with pg_ctl's output when it fails.
func (s *Server) pgCtl(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, filepath.Join(s.binDir, "pg_ctl"), append(args, "-D", s.dir)...)
	cmd.Dir = s.dir // the caller's working directory may be closed to the server's user
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setsid: true}
	cmd.WaitDelay = time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("pg_ctl %s: %w: %s", args[0], err, bytes.TrimSpace(out))
	}
	return nil
}

// ServerProcAttr returns the process attributes Start runs postgres with,
// for other server programs that refuse to run as root, such as PgBouncer:
// when this process runs as root, the program runs as the user "postgres",
// or "nobody" when that does not exist; with dieWithParent it is killed
// when the thread that started it dies (Linux only). Returns an error when
// running as root and neither user exists.
func ServerProcAttr(dieWithParent bool) (*syscall.SysProcAttr, error) {
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	return sysProcAttr(cred, dieWithParent), nil
}

// serverCredential returns the credential to run the server binaries with:
// nil when not root, else the user "postgres", or "nobody" when that does
// not exist.
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	var lookupErrs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			lookupErrs = append(lookupErrs, err)
			continue
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parse uid of %s: %w", name, err)
		}
		gid, err := strconv.ParseUint(u.Gid, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("parse gid of %s: %w", name, err)
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	return nil, fmt.Errorf("running as root and no unprivileged user to run postgres as: %w", errors.Join(lookupErrs...))
}

// prepareDir creates dir (with 0755 parents) and, for a cluster that is not
// initialised yet, gives it to the server's user with mode 0700. Returns an
// error when that user cannot reach dir through its parents.
func prepareDir(dir string, cred *syscall.Credential) error {
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return fmt.Errorf("create parent directory: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("create data directory: %w", err)
	}
	if cred == nil {
		return nil
	}
	if err := checkTraversable(filepath.Dir(dir), cred); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return nil // postgres checks the ownership of an existing cluster itself
	}
	if err := os.Chown(dir, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("give data directory to uid %d: %w", cred.Uid, err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("chmod data directory: %w", err)
	}
	return nil
}

// checkTraversable returns an error naming a directory on the way from /
// to dir, dir included, that the user of cred may not search.
func checkTraversable(dir string, cred *syscall.Credential) error {
	for d := dir; ; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		var bit os.FileMode = 0o001
		switch {
		case !ok:
		case st.Uid == cred.Uid:
			bit = 0o100
		case st.Gid == cred.Gid:
			bit = 0o010
		}
		if fi.Mode().Perm()&bit == 0 {
			return fmt.Errorf("uid %d, which runs postgres, cannot enter %s (mode %v): make it searchable, e.g. chmod o+x %s",
				cred.Uid, d, fi.Mode().Perm(), d)
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// initdb initialises a cluster in dir unless it has one already.
func initdb(ctx context.Context, binDir, dir string, cred *syscall.Credential, ephemeral bool) error {
	if _, err := os.Stat(filepath.Join(dir, "PG_VERSION")); err == nil {
		return nil
	}
	args := []string{"-D", dir, "--auth=trust", "-U", "postgres", "--encoding=UTF8", "--locale=C"}
	if ephemeral {
		args = append(args, "--no-sync")
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "initdb"), args...)
	cmd.Dir = dir // the caller's working directory may be closed to the server's user
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	// Interrupted, initdb removes what it made; killed, it would leave a
	// broken cluster behind.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, out[max(0, len(out)-logTailBytes):])
	}
	// initdb made the file, as the server's user: truncating keeps its owner.
	if err := os.WriteFile(filepath.Join(dir, "pg_hba.conf"), []byte(hbaConf), 0o600); err != nil {
		return fmt.Errorf("initdb: write pg_hba.conf: %w", err)
	}
	return nil
}

// hbaConf is the client authentication of a cluster that initdb made: the
// superuser postgres, whom URL names, connects without a password, and
// every other role with its own (scram-sha-256), as on a real server, so
// that a wrong password is refused (SQLSTATE 28P01) in tests too.
const hbaConf = `# TYPE  DATABASE  USER      ADDRESS       METHOD
local   all       postgres                trust
host    all       postgres  127.0.0.1/32  trust
host    all       postgres  ::1/128       trust
local   all       all                     scram-sha-256
host    all       all       127.0.0.1/32  scram-sha-256
host    all       all       ::1/128       scram-sha-256
`

// socketDir returns the directory for the server's unix socket: dir itself
// when the socket path fits, else a new short directory under /tmp; own
// reports whether the directory is new.
func socketDir(dir string, port int, cred *syscall.Credential) (sockDir string, own bool, err error) {
	if len(filepath.Join(dir, fmt.Sprintf(".s.PGSQL.%d.lock", port))) <= maxSocketPath {
		return dir, false, nil
	}
	sockDir, err = os.MkdirTemp("/tmp", "pgsock-")
	if err != nil {
		return "", false, fmt.Errorf("create socket directory: %w", err)
	}
	if cred != nil {
		if err := os.Chown(sockDir, int(cred.Uid), int(cred.Gid)); err != nil {
			os.Remove(sockDir)
			return "", false, fmt.Errorf("give socket directory to uid %d: %w", cred.Uid, err)
		}
	}
	return sockDir, true, nil
}

func (s *Server) removeSockDir() {
	if s.ownSockDir {
		os.RemoveAll(s.sockDir)
	}
}

// URL returns a postgres:// URL that connects to database as the superuser
// postgres, through TCP when the server listens on a port, else through its
// unix socket. pgx and psql both accept it.
func (s *Server) URL(database string) string {
	if s.host != "" {
		host := s.host
		if strings.Contains(host, ":") {
			host = "[" + host + "]"
		}
		return fmt.Sprintf("postgres://postgres@%s:%d/%s?sslmode=disable", host, s.port, url.PathEscape(database))
	}
	q := url.Values{"host": {s.sockDir}, "port": {strconv.Itoa(s.port)}, "sslmode": {"disable"}}
	return fmt.Sprintf("postgres://postgres@/%s?%s", url.PathEscape(database), q.Encode())
}

// Dir returns the server's data directory.
func (s *Server) Dir() string { return s.dir }

// Reused reports whether Start found the server already running rather than
// starting it. Stop leaves a reused server running.
func (s *Server) Reused() bool { return s.reused }

// Stop shuts the server down with pg_ctl stop -m fast (open sessions are
// ended) and waits for it to exit; a server that has not exited after 30
// seconds is stopped with -m immediate. Stop does nothing for a reused
// server, and later calls return what the first returned. Returns an error
// when the server was not running or did not stop in time.
func (s *Server) Stop() error {
	if s.reused {
		return nil
	}
	s.stopOnce.Do(func() {
		t := strconv.Itoa(int(timeout / time.Second))
		err := s.pgCtl(context.Background(), "stop", "-m", "fast", "-w", "-t", t)
		stopped := err == nil
		if !stopped && s.pgCtl(context.Background(), "status") == nil {
			ierr := s.pgCtl(context.Background(), "stop", "-m", "immediate", "-w", "-t", t)
			stopped, err = ierr == nil, errors.Join(err, ierr)
		}
		if stopped && s.pid > 0 {
			// Ours to reap when adoptOrphans made it our child; ECHILD
			// otherwise.
			syscall.Wait4(s.pid, nil, 0, nil)
		}
		s.removeSockDir()
		if s.scratch != nil {
			err = errors.Join(err, s.scratch.remove())
		}
		if err != nil {
			s.stopErr = fmt.Errorf("stop postgres in %s: %w", s.dir, err)
		}
	})
	return s.stopErr
}

// Crash stops the server as a crash would, with pg_ctl stop -m immediate:
// no checkpoint, and recovery at the next start on the same directory.
func (s *Server) Crash() error {
	err := s.pgCtl(context.Background(), "stop", "-m", "immediate", "-w")
	if err == nil && s.pid > 0 {
		syscall.Wait4(s.pid, nil, 0, nil)
	}
	return err
}

// fileTail returns the last bytes of the file at path from offset on, or a
// note saying why it could not be read.
func fileTail(path string, offset int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(read server log: %v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(read server log: %v)", err)
	}
	offset = max(offset, fi.Size()-logTailBytes)
	b, err := io.ReadAll(io.NewSectionReader(f, offset, fi.Size()-offset))
	if err != nil {
		return fmt.Sprintf("(read server log: %v)", err)
	}
	return string(b)
}

// FreePort returns a TCP port of 127.0.0.1 that was free a moment ago: one
// for Options.Port, or for anything else a test or a benchmark starts.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
