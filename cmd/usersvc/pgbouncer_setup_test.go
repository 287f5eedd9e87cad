//go:build pgbouncer && linux

package main

import (
	"context"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pglocal"
	"usersvc/internal/pgtest"
)

const (
	// bouncerPoolSize is PgBouncer's default_pool_size: the server
	// connections it opens per database, fewer than the replicas' pools
	// hold in all, so that they really share them.
	bouncerPoolSize = 5
	replicaCount    = 3
	replicaConns    = 4 // each replica's DB_MAX_CONNS
	// execSetting is what docs/operations.md tells operators to add to DATABASE_URL.
	execSetting = "default_query_exec_mode=exec"
)

// protocolTrouble matches what a driver and a pooler that disagree about
// a session's state print: prepared statements missing or doubled,
// messages out of order, parameters bound to another statement.
var protocolTrouble = regexp.MustCompile(`(?i)prepared statement|bind message|unexpected .*message|protocol|pooler error|conn busy|SQLSTATE (08P01|26000|42P05)`)

// pgBouncerPath returns the pgbouncer program, or fails the test saying how
// to get it: Debian installs it in /usr/sbin, which a user's PATH may lack.
func pgBouncerPath(t *testing.T) string {
	t.Helper()
	if path, err := exec.LookPath("pgbouncer"); err == nil {
		return path
	}
	if _, err := os.Stat("/usr/sbin/pgbouncer"); err == nil {
		return "/usr/sbin/pgbouncer"
	}
	t.Fatal("pgbouncer not found in PATH or /usr/sbin: run make test-pgbouncer, which installs it " +
		"(Debian: apt-get install pgbouncer) and runs these tests")
	return ""
}

// bouncer is a PgBouncer of the test's own.
type bouncer struct {
	port    int
	version string
	logs    *syncBuffer
}

// startPgBouncer starts PgBouncer in transaction mode on 127.0.0.1 in front
// of the database usersvc on pgPort, as the user postgres runs as (it
// refuses to run as root), and returns once it accepts connections. Besides
// usersvc (bouncerPoolSize server connections), it serves usersvc_one, the
// same database through a single server connection. It is stopped when the
// test ends.
func startPgBouncer(t *testing.T, pgPort int) *bouncer {
	t.Helper()
	bin := pgBouncerPath(t)
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		t.Fatalf("pgbouncer --version: %v", err)
	}
	b := &bouncer{port: pgtest.FreePort(t), version: strings.SplitN(string(out), "\n", 2)[0], logs: &syncBuffer{}}

	dir, err := pglocal.MkdirScratch("usersvc-test-pgbouncer-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	// trust: the throwaway PostgreSQL trusts every local connection too;
	// the user must still be in auth_file. Logs go to stderr, the pipe below.
	ini := fmt.Sprintf(`[databases]
usersvc = host=127.0.0.1 port=%[1]d dbname=usersvc
usersvc_one = host=127.0.0.1 port=%[1]d dbname=usersvc pool_size=1

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = %[2]d
unix_socket_dir =
auth_type = trust
auth_file = %[3]s
pool_mode = transaction
default_pool_size = %[4]d
max_client_conn = 200
logfile =
pidfile =
`, pgPort, b.port, filepath.Join(dir, "userlist.txt"), bouncerPoolSize)
	for name, content := range map[string]string{"pgbouncer.ini": ini, "userlist.txt": `"postgres" ""` + "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	attr, err := pglocal.ServerProcAttr(true)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, filepath.Join(dir, "pgbouncer.ini"))
	cmd.Dir = dir
	cmd.SysProcAttr = attr
	cmd.Stdout, cmd.Stderr = b.logs, b.logs
	if err := cmd.Start(); err != nil {
		t.Fatalf("start pgbouncer: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM) // immediate shutdown
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})

	deadline := time.Now().Add(15 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		conn, err := pgx.Connect(ctx, b.url("usersvc", execSetting))
		if err == nil {
			err = conn.Ping(ctx)
			conn.Close(ctx)
		}
		cancel()
		if err == nil {
			return b
		}
		select {
		case err := <-exited:
			t.Fatalf("pgbouncer exited during start-up: %v; log:\n%s", err, b.logs.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("pgbouncer does not answer after 15s: %v; log:\n%s", err, b.logs.String())
		}
	}
}

// url returns the URL of database through PgBouncer, with params (a query
// string without "?") added.
func (b *bouncer) url(database, params string) string {
	u := fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable&application_name=usersvc", b.port, database)
	if params != "" {
		u += "&" + params
	}
	return u
}

// troubleLines returns the lines of log from offset on that report a
// problem: PgBouncer's WARNING and ERROR lines, and protocol trouble.
func troubleLines(log string, offset int) []string {
	var out []string
	for line := range strings.Lines(log[offset:]) {
		if strings.Contains(line, " WARNING ") || strings.Contains(line, " ERROR ") || protocolTrouble.MatchString(line) {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return out
}

// replica is a usersvc serve process.
type replica struct {
	base   string
	cmd    *exec.Cmd
	logs   *syncBuffer
	exited chan error
}

// replicaToken is the bearer token every replica requires, as a
// deployment with several replicas behind a load balancer would.
const replicaToken = "replica-token-0123456789abcdef"

// startReplica runs the usersvc binary's serve with env, and HTTP_ADDR,
// LOG_FORMAT, DB_MAX_CONNS and AUTH_TOKENS, as its whole environment, until the test
// ends; it returns once /healthz answers.
func startReplica(t *testing.T, bin string, env ...string) *replica {
	t.Helper()
	r := launchReplica(t, bin, env...)
	waitFor(t, r.base+"/healthz", 10*time.Second, r.exited)
	return r
}

// launchReplica is startReplica without the wait.
func launchReplica(t *testing.T, bin string, env ...string) *replica {
	t.Helper()
	addr := pgtest.FreeAddr(t)
	r := &replica{base: "http://" + addr, logs: &syncBuffer{}, exited: make(chan error, 1)}
	r.cmd = exec.Command(bin, "serve")
	r.cmd.Env = append(env, "HTTP_ADDR="+addr, "LOG_FORMAT=json", "DB_MAX_CONNS="+strconv.Itoa(replicaConns), "AUTH_TOKENS="+replicaToken)
	r.cmd.Stdout, r.cmd.Stderr = r.logs, r.logs
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { r.exited <- r.cmd.Wait() }()
	t.Cleanup(func() {
		r.cmd.Process.Kill()
		select {
		case err := <-r.exited:
			r.exited <- err
		case <-time.After(10 * time.Second):
		}
	})
	return r
}

// stop sends SIGTERM and wants exit status 0 within 20 seconds.
func (r *replica) stop(t *testing.T) {
	t.Helper()
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.exited:
		r.exited <- err
		if err != nil {
			t.Errorf("replica %s after SIGTERM: %v, want exit status 0; log tail:\n%s", r.base, err, tail(r.logs.String(), 2000))
		}
	case <-time.After(20 * time.Second):
		t.Errorf("replica %s still running 20s after SIGTERM", r.base)
	}
}

// client sends requests to the replicas over one HTTP client.
type client struct {
	http     *http.Client
	replicas []*replica
}

func newClient(replicas []*replica) *client {
	return &client{
		http:     &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 64}},
		replicas: replicas,
	}
}

// reply is what a replica answered.
type reply struct {
	status int
	user   apiUser // for a 200 or 201 with a user
	code   string  // a problem's code
}

// do sends method path with body (JSON when not empty) to replica i modulo
// the number of replicas. Returns an error when no answer came or its body
// is not what the status promises.
func (c *client) do(i int, method, path, body string) (reply, error) {
	base := c.replicas[i%len(c.replicas)].base
	req, err := http.NewRequest(method, base+path, strings.NewReader(body))
	if err != nil {
		return reply{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Authorization", "Bearer "+replicaToken)
	res, err := c.http.Do(req)
	if err != nil {
		return reply{}, fmt.Errorf("%s %s%s: %w", method, base, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		return reply{}, fmt.Errorf("%s %s%s: read body: %w", method, base, path, err)
	}
	r := reply{status: res.StatusCode}
	switch {
	case res.StatusCode >= 400:
		var p struct {
			Code string `json:"code"`
		}
		if err := json.Unmarshal(data, &p); err != nil {
			return r, fmt.Errorf("%s %s%s: %d with a body that is no problem document: %q", method, base, path, res.StatusCode, data)
		}
		r.code = p.Code
	case (res.StatusCode == 200 || res.StatusCode == 201) && (method != "GET" || strings.HasPrefix(path, "/users/")):
		if err := json.Unmarshal(data, &r.user); err != nil {
			return r, fmt.Errorf("%s %s%s: %d with a body that is no user: %q", method, base, path, res.StatusCode, data)
		}
	}
	return r, nil
}

// outcome is an answer's label in the tallies: the status, and the
// problem's code for an error.
func (r reply) outcome() string {
	if r.code != "" {
		return fmt.Sprintf("%d %s", r.status, r.code)
	}
	return strconv.Itoa(r.status)
}

// tally counts the outcomes of each operation, and those that were not
// what the operation expects.
type tally struct {
	mu         sync.Mutex
	counts     map[string]map[string]int // operation, outcome
	unexpected map[string]int            // "operation: outcome, want ...", or a transport error
	total      int
}

func newTally() *tally {
	return &tally{counts: map[string]map[string]int{}, unexpected: map[string]int{}}
}

// add records r for op, unexpected unless its outcome is want.
func (t *tally) add(op string, r reply, err error, want string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.total++
	if err != nil {
		t.unexpected[op+": "+err.Error()]++
		return
	}
	if t.counts[op] == nil {
		t.counts[op] = map[string]int{}
	}
	t.counts[op][r.outcome()]++
	if r.outcome() != want {
		t.unexpected[fmt.Sprintf("%s: %s, want %s", op, r.outcome(), want)]++
	}
}

func (t *tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	for _, op := range slices.Sorted(maps.Keys(t.counts)) {
		fmt.Fprintf(&b, "  %-9s", op)
		for _, o := range slices.Sorted(maps.Keys(t.counts[op])) {
			fmt.Fprintf(&b, " %s×%d", o, t.counts[op][o])
		}
		b.WriteByte('\n')
	}
	return b.String()
}

func (t *tally) fivexx() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for _, outcomes := range t.counts {
		for o, c := range outcomes {
			if o[0] == '5' {
				n += c
			}
		}
	}
	return n
}

// direct connects to PostgreSQL itself, not through PgBouncer.
func direct(t *testing.T, url string) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// runUsersvc runs the usersvc binary with args and env; returns its
// combined output and exit status.
func runUsersvc(t *testing.T, bin string, env []string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	status := 0
	if exitErr, ok := errors.AsType[*exec.ExitError](err); ok {
		status = exitErr.ExitCode()
	} else if err != nil {
		t.Fatalf("run usersvc %s: %v", strings.Join(args, " "), err)
	}
	t.Logf("$ usersvc %s  # exit status %d\n%s", strings.Join(args, " "), status, out)
	return string(out), status
}
