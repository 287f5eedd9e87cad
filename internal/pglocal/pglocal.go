// Package pglocal starts a private PostgreSQL server from the server binaries
// installed on the machine, for tests and for local development.
//
// The server runs as a child process in its own session, so a Ctrl-C in the
// terminal does not reach it; its owner decides when to stop it. When the
// calling process runs as root, initdb and postgres run as the unprivileged
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

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// socketOnlyPort names the socket file (.s.PGSQL.5432) when the server
	// listens on no TCP port.
	socketOnlyPort = 5432
	// maxSocketPath is the longest unix socket path PostgreSQL accepts
	// (sizeof(sun_path) - 1), counting the ".s.PGSQL.<port>.lock" file.
	maxSocketPath = 107
	startTimeout  = 30 * time.Second
	stopTimeout   = 30 * time.Second
	killTimeout   = 5 * time.Second
	pollInterval  = 10 * time.Millisecond
	logTailBytes  = 4096
)

// Options configures Start.
type Options struct {
	// Dir is the data directory. It is created, and initialised with initdb,
	// when it is missing or has no PG_VERSION file.
	Dir string
	// Port is the TCP port on 127.0.0.1. Zero means no TCP listener: the
	// server is reachable through its unix socket only.
	Port int
	// Ephemeral trades durability for speed, for throwaway test servers:
	// fsync, synchronous_commit and full_page_writes are off, max_connections
	// is raised for parallel tests, dynamic shared memory lives in Dir, and
	// the server is killed when the process that started it dies.
	Ephemeral bool
	// Log receives the server's output. When nil, the output is appended to
	// server.log inside Dir.
	Log io.Writer
}

// Server is a running PostgreSQL server.
type Server struct {
	dir     string
	port    int    // the port number, also for a socket-only server
	host    string // TCP address, empty for a socket-only server
	sockDir string
	reused  bool

	// The fields below are set only for a server this process started.
	cmd        *exec.Cmd
	done       chan struct{} // closed once the postmaster has exited
	waitErr    error         // the postmaster's exit status, valid after done
	logTail    func() string // the end of the server's output since Start
	ownSockDir bool          // sockDir was created by Start and is removed by Stop
	stopOnce   sync.Once
	stopErr    error
}

// FindBinDir returns the directory that holds the PostgreSQL server binaries
// (postgres and initdb). It looks in PATH, then in `pg_config --bindir`, then
// in /usr/lib/postgresql/*/bin, highest version first. Returns an error that
// says how to install them when none is found.
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
	for _, name := range []string{"postgres", "initdb"} {
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
// connections. ctx bounds the start-up only, not the server's life: call
// Stop to stop it.
//
// When a live server already runs on opts.Dir, Start returns it with Reused
// reporting true, whatever opts.Port says.
//
// Returns an error when no server binaries are found (see FindBinDir), when
// initdb fails, or when the server exits or does not become ready within 30
// seconds; the error then includes the tail of the server's log.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("start postgres: no data directory given")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("start postgres: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, startTimeout)
	defer cancel()

	srv, err := findRunning(ctx, dir)
	if err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	if srv != nil {
		return srv, nil
	}

	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	if err := prepareDir(dir, cred); err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	if err := initdb(ctx, binDir, dir, cred, opts.Ephemeral); err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	srv, err = startPostmaster(ctx, binDir, dir, cred, opts)
	if err != nil {
		return nil, fmt.Errorf("start postgres in %s: %w", dir, err)
	}
	return srv, nil
}

// ServerProcAttr returns the process attributes Start runs postgres with,
// for other server programs that refuse to run as root, such as PgBouncer:
// when this process runs as root, the program runs as the user "postgres",
// or "nobody" when that does not exist; for an ephemeral server it is
// killed when the thread that started it dies (Linux only). Returns an
// error when running as root and neither user exists.
func ServerProcAttr(ephemeral bool) (*syscall.SysProcAttr, error) {
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	return sysProcAttr(cred, ephemeral), nil
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
	cmd.SysProcAttr = sysProcAttr(cred, ephemeral)
	// Interrupted, initdb removes what it made; killed, it would leave a
	// broken cluster behind.
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb: %w: %s", err, lastBytes(out.Bytes(), logTailBytes))
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

// startPostmaster runs postgres on the cluster in dir and returns once it
// accepts connections. Returns an error with the tail of the server's output
// when it exits or is not ready before ctx ends.
func startPostmaster(ctx context.Context, binDir, dir string, cred *syscall.Credential, opts Options) (*Server, error) {
	srv := &Server{dir: dir, port: opts.Port, done: make(chan struct{})}
	listen := ""
	if opts.Port == 0 {
		srv.port = socketOnlyPort
	} else {
		listen, srv.host = "127.0.0.1", "127.0.0.1"
	}
	var err error
	srv.sockDir, srv.ownSockDir, err = socketDir(dir, srv.port, cred)
	if err != nil {
		return nil, err
	}
	removeSockDir := func() {
		if srv.ownSockDir {
			os.RemoveAll(srv.sockDir)
		}
	}

	args := []string{
		"-D", dir,
		"-p", strconv.Itoa(srv.port),
		"-c", "listen_addresses=" + listen,
		"-c", "unix_socket_directories=" + srv.sockDir,
	}
	if opts.Ephemeral {
		args = append(args,
			"-c", "fsync=off",
			"-c", "synchronous_commit=off",
			"-c", "full_page_writes=off",
			"-c", "max_connections=300",
			// Segments in Dir, not in /dev/shm: removed with Dir even when
			// the server was killed.
			"-c", "dynamic_shared_memory_type=mmap",
		)
	}
	srv.cmd = exec.Command(filepath.Join(binDir, "postgres"), args...)
	srv.cmd.Dir = dir
	srv.cmd.SysProcAttr = sysProcAttr(cred, opts.Ephemeral)
	srv.cmd.SysProcAttr.Setsid = true // keep terminal signals away from the server

	if opts.Log != nil {
		tail := &tailBuffer{}
		w := io.MultiWriter(opts.Log, tail)
		srv.cmd.Stdout, srv.cmd.Stderr = w, w
		srv.logTail = tail.String
		// Backends outliving a killed postmaster may hold the output pipe
		// open; do not let them hold up Wait for long.
		srv.cmd.WaitDelay = time.Second
	} else {
		// The server writes to the file itself, so its log outlives this
		// process when the server does.
		logPath := filepath.Join(dir, "server.log")
		f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			removeSockDir()
			return nil, fmt.Errorf("open server log: %w", err)
		}
		defer f.Close() // the server has its own descriptor
		offset, err := f.Seek(0, io.SeekEnd)
		if err != nil {
			removeSockDir()
			return nil, fmt.Errorf("open server log: %w", err)
		}
		srv.cmd.Stdout, srv.cmd.Stderr = f, f
		srv.logTail = func() string { return fileTail(logPath, offset) }
	}

	if err := srv.cmd.Start(); err != nil {
		removeSockDir()
		return nil, fmt.Errorf("run postgres: %w", err)
	}
	go func() {
		srv.waitErr = srv.cmd.Wait()
		close(srv.done)
	}()

	if err := srv.waitReady(ctx); err != nil {
		srv.kill()
		removeSockDir()
		return nil, fmt.Errorf("%w; server output:\n%s", err, srv.logTail())
	}
	return srv, nil
}

// waitReady polls until the server reports itself ready in postmaster.pid
// and accepts a connection. Returns an error when the server exits first or
// ctx ends.
func (s *Server) waitReady(ctx context.Context) error {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		pf, err := readPIDFile(s.dir)
		if err == nil && pf.pid == s.cmd.Process.Pid && pf.status == "ready" {
			if err := s.ping(ctx); err == nil {
				return nil
			}
		}
		select {
		case <-s.done:
			return fmt.Errorf("postgres exited during start-up: %v", s.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("wait for postgres to accept connections: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// ping connects to the server's postgres database and disconnects.
func (s *Server) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, s.URL("postgres"))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// kill stops the server immediately and waits for it to exit.
func (s *Server) kill() {
	s.cmd.Process.Signal(syscall.SIGKILL)
	<-s.done
}

// findRunning returns a Server for a live postmaster on dir, or nil when
// there is none. A postmaster that is starting up is waited for, one that is
// shutting down is waited out. Returns an error when a live postmaster does
// not answer before ctx ends.
func findRunning(ctx context.Context, dir string) (*Server, error) {
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	var lastErr error
	for {
		pf, err := readPIDFile(dir)
		if err != nil || !processAlive(pf.pid) {
			// No cluster, or a stale postmaster.pid: postgres handles that.
			return nil, nil
		}
		if pf.port != 0 && pf.sockDir != "" || pf.host != "" {
			srv := &Server{dir: dir, port: pf.port, host: pf.host, sockDir: pf.sockDir, reused: true}
			if lastErr = srv.ping(ctx); lastErr == nil {
				return srv, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("postgres (pid %d) runs but does not answer: %w", pf.pid, errors.Join(ctx.Err(), lastErr))
		case <-tick.C:
		}
	}
}

func processAlive(pid int) bool {
	if pid <= 0 {
		return false
	}
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}

// pidFile holds the lines of postmaster.pid that matter here.
type pidFile struct {
	pid     int
	port    int
	sockDir string
	host    string // first listen address, empty when only the socket listens
	status  string // "starting", "ready", "stopping" (PostgreSQL 10 and later)
}

// readPIDFile reads dir/postmaster.pid. Returns an error when the file is
// missing or has no pid yet.
func readPIDFile(dir string) (pidFile, error) {
	b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid"))
	if err != nil {
		return pidFile{}, err
	}
	lines := strings.Split(string(b), "\n")
	line := func(n int) string { // 1-based, as in PostgreSQL's pidfile.h
		if n > len(lines) {
			return ""
		}
		return strings.TrimSpace(lines[n-1])
	}
	var pf pidFile
	if pf.pid, err = strconv.Atoi(line(1)); err != nil {
		return pidFile{}, fmt.Errorf("read postmaster.pid: bad pid %q", line(1))
	}
	pf.port, _ = strconv.Atoi(line(4))
	pf.sockDir = line(5)
	switch h := line(6); h {
	case "":
	case "*", "0.0.0.0":
		pf.host = "127.0.0.1"
	case "::":
		pf.host = "::1"
	default:
		pf.host = h
	}
	pf.status = line(8)
	return pf, nil
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

// Stop shuts the server down (fast shutdown: open sessions are ended) and
// waits for it to exit. A server that has not exited after 30 seconds is
// sent SIGQUIT, then SIGKILL. Stop does nothing for a reused server, and
// later calls return what the first returned. Returns an error when the
// server could not be signalled or exited with a failure status.
func (s *Server) Stop() error {
	if s.reused {
		return nil
	}
	s.stopOnce.Do(func() {
		s.stopErr = s.stop()
		if s.ownSockDir {
			os.RemoveAll(s.sockDir)
		}
	})
	return s.stopErr
}

func (s *Server) stop() error {
	select {
	case <-s.done:
		return fmt.Errorf("stop postgres: exited before stop: %v", s.waitErr)
	default:
	}
	if err := s.cmd.Process.Signal(syscall.SIGINT); err != nil {
		return fmt.Errorf("stop postgres: %w", err)
	}
	for _, step := range []struct {
		wait time.Duration
		next syscall.Signal
	}{{stopTimeout, syscall.SIGQUIT}, {killTimeout, syscall.SIGKILL}} {
		timer := time.NewTimer(step.wait)
		select {
		case <-s.done:
			timer.Stop()
			if s.waitErr != nil {
				return fmt.Errorf("stop postgres: %w", s.waitErr)
			}
			return nil
		case <-timer.C:
			s.cmd.Process.Signal(step.next)
		}
	}
	<-s.done
	return fmt.Errorf("stop postgres: killed after %v: %v", stopTimeout+killTimeout, s.waitErr)
}

// tailBuffer keeps the last logTailBytes bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*logTailBytes {
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-logTailBytes:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(lastBytes(t.buf, logTailBytes))
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

func lastBytes(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// ScratchDir returns where throwaway data directories belong: /dev/shm when
// the machine has it, since a memory-backed disk makes initdb and the tests
// fast, else the temporary directory.
func ScratchDir() string {
	if fi, err := os.Stat("/dev/shm"); err == nil && fi.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}

// MkdirScratch creates a new directory named prefix followed by a random
// string in ScratchDir, which the user that postgres runs as may enter.
// The caller removes it.
func MkdirScratch(prefix string) (string, error) {
	dir, err := os.MkdirTemp(ScratchDir(), prefix)
	if err != nil {
		return "", err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		os.RemoveAll(dir)
		return "", err
	}
	return dir, nil
}
