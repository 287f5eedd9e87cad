//go:build compose && linux

// The test in this file brings compose.yaml up, unchanged, as an operator
// does: Docker Compose (pinned in tools/go.mod) on the Docker-compatible
// API of a podman system service that the test starts. It needs podman,
// runc, netavark, aardvark-dns and busybox-static, so it is not part of
// make test: make test-compose installs them when they are missing, builds
// Compose and runs it.

package main

import (
	"bytes"
	"context"
	"encoding/json/v2"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const (
	// composeProject names the test's stack, apart from an operator's.
	composeProject = "usersvc-compose-test"
	// composeAPI is where compose.yaml publishes the API.
	composeAPI = "127.0.0.1:8080"
	// upTimeout bounds each docker compose command.
	upTimeout = 5 * time.Minute
)

// podmanServiceConf is the containers.conf of the test's podman service and
// of its own podman commands: runc and cgroupfs, as podmanGlobal says;
// events in a file, where no journald runs; the limits that the machine
// lets runc set (raising nofile or nproc is refused); and netavark, whose
// aardvark-dns resolves a service's name on the stack's network, which
// CNI without its dnsname plugin does not.
const podmanServiceConf = `[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"

[network]
network_backend = "netavark"
`

func TestCompose(t *testing.T) {
	bin := os.Getenv("COMPOSE")
	if bin == "" {
		t.Fatal("COMPOSE is not set: run make test-compose, which builds Docker Compose from tools/go.mod and installs podman, runc, netavark, aardvark-dns and busybox-static")
	}
	if ln, err := net.Listen("tcp", composeAPI); err != nil {
		t.Fatalf("compose.yaml publishes the API on %s, which is taken: %v", composeAPI, err)
	} else {
		ln.Close()
	}
	s := &stack{bin: bin, env: append(os.Environ(), "DOCKER_HOST="+startPodmanService(t),
		// The classic builder: BuildKit would pull an image of its own.
		"DOCKER_BUILDKIT=0")}
	t.Log(strings.TrimSpace(s.mustRun(t, "version")))

	for _, ref := range baseImages(t) {
		ensureImage(t, ref, makeGoStandIn)
	}
	ensureImage(t, composeImage(t, "postgres"), makePostgresStandIn)
	// Compose's own build then finds every layer in podman's cache.
	buildImage(t, composeImage(t, "migrate"), "devel")

	s.mustRun(t, "down", "--volumes") // what an earlier, killed run left
	t.Cleanup(func() { s.run(t, "down", "--volumes", "--timeout", "5") })
	stopChecks := runHealthChecks(t)
	defer stopChecks()

	s.up(t)
	postgres, migrate, app := s.inspect(t, "postgres"), s.inspect(t, "migrate"), s.inspect(t, "app")
	if postgres.Health.Status != "healthy" {
		t.Errorf("postgres after up: health %q, want healthy", postgres.Health.Status)
	}
	if migrate.Status != "exited" || migrate.ExitCode != 0 || !migrate.FinishedAt.Before(app.StartedAt) {
		t.Errorf("migrate: %s, exit code %d, finished %v; want exited 0 before app started at %v",
			migrate.Status, migrate.ExitCode, migrate.FinishedAt, app.StartedAt)
	}
	t.Logf("migrate exited %d at %v, %v before app started", migrate.ExitCode, migrate.FinishedAt, app.StartedAt.Sub(migrate.FinishedAt))
	s.waitHealthy(t, "app")

	var created struct {
		ID int64 `json:"id"`
	}
	body := composeRequest(t, "POST", "/users", `{"name":"compose"}`, http.StatusCreated)
	if err := json.Unmarshal(body, &created); err != nil || created.ID == 0 {
		t.Fatalf("POST /users: %v, body %s", err, body)
	}
	body = composeRequest(t, "POST", "/users", `{"name":"compose"}`, http.StatusBadRequest)
	if !bytes.Contains(body, []byte(`"duplicate_name"`)) {
		t.Errorf("POST /users of a taken name: %s, want code duplicate_name", body)
	}
	user := fmt.Sprintf("/users/%d", created.ID)

	s.mustRun(t, "down")
	s.up(t)
	s.waitHealthy(t, "app")
	if body := composeRequest(t, "GET", user, "", http.StatusOK); !bytes.Contains(body, []byte(`"name":"compose"`)) {
		t.Errorf("GET %s after down and up: %s, want the user created before", user, body)
	}

	testPostgresRestart(t, s, user)

	s.mustRun(t, "down", "--volumes")
	if r := podman(t, "volume", "exists", composeProject+"_pgdata"); r.status == 0 {
		t.Errorf("the volume %s_pgdata is still there after down --volumes", composeProject)
	}
	if ids := strings.Fields(mustPodman(t, "ps", "-aq", "--filter", "label=com.docker.compose.project="+composeProject)); len(ids) > 0 {
		t.Errorf("containers left after down --volumes: %v", ids)
	}
}

// testPostgresRestart restarts postgres under a GET of path every 25 ms:
// the app answers 503 while the database is away, and 200 again within
// seconds of its return, without being restarted itself.
func testPostgresRestart(t *testing.T, s *stack, path string) {
	before := s.inspect(t, "app")
	type answer struct {
		status int
		at     time.Time
	}
	var (
		mu      sync.Mutex
		answers []answer // each change of status
	)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() {
		defer close(done)
		client := &http.Client{Timeout: 5 * time.Second}
		for ctx.Err() == nil {
			status := 0 // the request failed
			if res, err := client.Get("http://" + composeAPI + path); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				status = res.StatusCode
			}
			mu.Lock()
			if len(answers) == 0 || answers[len(answers)-1].status != status {
				answers = append(answers, answer{status, time.Now()})
			}
			mu.Unlock()
			time.Sleep(25 * time.Millisecond)
		}
	}()
	start := time.Now()
	s.mustRun(t, "restart", "postgres")
	restarted := time.Now()
	// Back within seconds: the app's pool reconnects by itself.
	deadline := restarted.Add(30 * time.Second)
	for {
		mu.Lock()
		last := answers[len(answers)-1]
		mu.Unlock()
		if last.status == http.StatusOK && last.at.After(start) && time.Now().After(last.at.Add(time.Second)) || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	<-done

	var steps []string
	saw503, back := false, time.Time{}
	for _, a := range answers {
		steps = append(steps, fmt.Sprintf("%d at %+.2fs", a.status, a.at.Sub(start).Seconds()))
		switch {
		case a.status == http.StatusServiceUnavailable:
			saw503 = true
		case a.status == http.StatusOK && saw503 && back.IsZero():
			back = a.at
		case a.status != http.StatusOK:
			t.Errorf("GET %s during the restart answered %d: want only 200 and 503", path, a.status)
		}
	}
	t.Logf("GET %s every 25 ms across docker compose restart postgres (%.2fs): %s", path, restarted.Sub(start).Seconds(), strings.Join(steps, ", "))
	if !saw503 || back.IsZero() {
		t.Fatalf("GET %s across the restart: want 503 while postgres is away, then 200", path)
	}
	if wait := back.Sub(restarted); wait > 10*time.Second {
		t.Errorf("the app answered 200 again %v after postgres restarted, want within 10s", wait)
	}
	if after := s.inspect(t, "app"); !after.StartedAt.Equal(before.StartedAt) || after.Status != "running" {
		t.Errorf("app across the postgres restart: started %v, then %v (%s); want one run", before.StartedAt, after.StartedAt, after.Status)
	}
}

// composeImage returns the image of service in compose.yaml.
func composeImage(t *testing.T, service string) string {
	t.Helper()
	data, err := os.ReadFile("../../compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^  ` + regexp.QuoteMeta(service) + `:\n(?:    .*\n|\s*\n)*?    image: (\S+)`).FindSubmatch(data)
	if m == nil {
		t.Fatalf("compose.yaml: no image for service %s", service)
	}
	return string(m[1])
}

// stack runs Docker Compose on compose.yaml, as the test's project.
type stack struct {
	bin string
	env []string
}

// run runs docker compose with args in the repository's root, as an
// operator would, within upTimeout, and logs what it printed.
func (s *stack) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, s.bin, append([]string{"--project-name", composeProject}, args...)...)
	cmd.Dir, cmd.Env, cmd.WaitDelay = "../..", s.env, 10*time.Second
	start := time.Now()
	out, err := cmd.CombinedOutput()
	outcome := "ok"
	if err != nil {
		outcome = err.Error()
	}
	t.Logf("$ docker compose %s  # %s, %.1fs\n%s", strings.Join(args, " "), outcome, time.Since(start).Seconds(), lastLines(string(out), 20))
	return string(out), err
}

func (s *stack) mustRun(t *testing.T, args ...string) string {
	t.Helper()
	out, err := s.run(t, args...)
	if err != nil {
		t.Fatalf("docker compose %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// up brings the stack up in the background and logs how long it took.
func (s *stack) up(t *testing.T) {
	t.Helper()
	start := time.Now()
	s.mustRun(t, "up", "--detach", "--build")
	t.Logf("docker compose up --detach --build returned in %.1fs", time.Since(start).Seconds())
}

// containerState is what the test reads of a container's state.
type containerState struct {
	Status     string
	ExitCode   int
	StartedAt  time.Time
	FinishedAt time.Time
	Health     struct{ Status string }
}

// inspect returns the state of service's container.
func (s *stack) inspect(t *testing.T, service string) containerState {
	t.Helper()
	var out []struct{ State containerState }
	name := composeProject + "-" + service + "-1"
	if err := json.Unmarshal([]byte(mustPodman(t, "container", "inspect", name)), &out); err != nil || len(out) != 1 {
		t.Fatalf("podman container inspect %s: %v, %d containers", name, err, len(out))
	}
	return out[0].State
}

// waitHealthy waits up to two minutes for service's health check to pass.
func (s *stack) waitHealthy(t *testing.T, service string) {
	t.Helper()
	start := time.Now()
	for {
		st := s.inspect(t, service)
		if st.Health.Status == "healthy" {
			t.Logf("%s healthy after %.1fs", service, time.Since(start).Seconds())
			return
		}
		if time.Since(start) > 2*time.Minute || st.Status != "running" {
			t.Fatalf("%s: %s, health %q, after %v; want healthy", service, st.Status, st.Health.Status, time.Since(start))
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// composeRequest sends method path with body to the stack's API and
// returns the body of the answer, which must have status want.
func composeRequest(t *testing.T, method, path, body string, want int) []byte {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+composeAPI+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	client := &http.Client{Timeout: 10 * time.Second}
	res, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s %s: %d %s", method, path, res.StatusCode, bytes.TrimSpace(data))
	if res.StatusCode != want {
		t.Fatalf("%s %s: %d, want %d", method, path, res.StatusCode, want)
	}
	return data
}

// startPodmanService writes podmanServiceConf for the test's podman
// commands and starts podman system service with it on a socket of its
// own, until the test ends. Returns the socket's DOCKER_HOST.
func startPodmanService(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	conf := filepath.Join(dir, "containers.conf")
	if err := os.WriteFile(conf, []byte(podmanServiceConf), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CONTAINERS_CONF", conf)
	sock := filepath.Join(dir, "podman.sock")
	var log bytes.Buffer
	cmd := exec.Command("podman", append(slices.Clone(podmanGlobal), "system", "service", "--time=0", "unix://"+sock)...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("podman system service: %v", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if res, err := client.Get("http://podman/_ping"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				t.Logf("podman system service (pid %d) answers on %s", cmd.Process.Pid, sock)
				return "unix://" + sock
			}
		}
		select {
		case err := <-exited:
			t.Fatalf("podman system service exited: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("podman system service does not answer on %s after 30s:\n%s", sock, log.String())
		}
	}
}

// runHealthChecks runs each of the test's containers' health check every
// 2 s until the returned function is called. podman runs them from systemd
// timers, and no systemd runs here: without this, no container would turn
// healthy, and depends_on's service_healthy would wait forever.
func runHealthChecks(t *testing.T) (stop func()) {
	t.Log("no systemd runs podman's health checks here: the test runs podman healthcheck run on each of the stack's containers every 2s in its stead")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			out, _ := exec.CommandContext(ctx, "podman", append(slices.Clone(podmanGlobal),
				"ps", "--quiet", "--filter", "label=com.docker.compose.project="+composeProject)...).Output()
			for _, id := range strings.Fields(string(out)) {
				// A container without a health check fails this, harmlessly.
				_ = exec.CommandContext(ctx, "podman", append(slices.Clone(podmanGlobal), "healthcheck", "run", id)...).Run()
			}
			select {
			case <-ctx.Done():
			case <-time.After(2 * time.Second):
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// postgresEntrypoint is the stand-in's docker-entrypoint.sh: what the
// official image's does for compose.yaml. As root, it hands PGDATA to
// postgres and starts again as postgres. On an empty PGDATA it runs initdb
// with POSTGRES_USER as the superuser, POSTGRES_PASSWORD as its password,
// scram-sha-256 over TCP from anywhere and trust on the Unix socket, and
// creates POSTGRES_DB. Then it serves on every address.
const postgresEntrypoint = `#!/bin/sh
set -eu
if [ "$(id -u)" = 0 ]; then
	mkdir -p "$PGDATA" /var/run/postgresql
	chown -R postgres:postgres "$PGDATA" /var/run/postgresql
	chmod 700 "$PGDATA"
	exec su -p -s /bin/sh postgres -c 'exec "$0" "$@"' "$0" "$@"
fi
POSTGRES_USER=${POSTGRES_USER:-postgres}
POSTGRES_DB=${POSTGRES_DB:-$POSTGRES_USER}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
	: "${POSTGRES_PASSWORD:?is not set: the official image refuses to start without it too}"
	pwfile=$(mktemp)
	printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
	initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C
	rm -f "$pwfile"
	echo 'host all all all scram-sha-256' >>"$PGDATA/pg_hba.conf"
	if [ "$POSTGRES_DB" != postgres ]; then
		echo "CREATE DATABASE \"$POSTGRES_DB\"" | postgres --single -D "$PGDATA" postgres >/dev/null
	fi
fi
if [ "${1:-}" = postgres ]; then
	shift
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' "$@"
`

// makePostgresStandIn imports, under name, a stand-in for PostgreSQL's
// official image ref (postgres:VERSION-bookworm) made of this machine's
// Debian server of the same major version: its binaries and the libraries
// ldd lists for them (without the JIT, which nothing here needs), its
// share directory, the time zones, a static busybox for the shell, a
// postgres user of uid 999 as the official image has, and
// postgresEntrypoint, with the official image's environment.
func makePostgresStandIn(t *testing.T, ref, name string) {
	t.Helper()
	version, ok := strings.CutPrefix(ref, "postgres:")
	major, _, _ := strings.Cut(version, ".")
	if !ok || major == "" {
		t.Fatalf("image %s cannot be pulled, and the test can only stand in for postgres:VERSION", ref)
	}
	bindir := "/usr/lib/postgresql/" + major + "/bin"
	libdir, share := "/usr/lib/postgresql/"+major+"/lib", "/usr/share/postgresql/"+major
	serverVersion, err := exec.Command(bindir+"/postgres", "--version").Output()
	if err != nil {
		t.Fatalf("the stand-in for %s needs PostgreSQL %s's server binaries in %s: %v (Debian: apt-get install postgresql-%s)", ref, major, bindir, err, major)
	}
	bins := []string{bindir + "/postgres", bindir + "/initdb", bindir + "/pg_isready"}
	modules, err := filepath.Glob(libdir + "/*.so")
	if err != nil {
		t.Fatal(err)
	}
	modules = slices.DeleteFunc(modules, func(p string) bool { return strings.Contains(filepath.Base(p), "llvmjit") })
	libs := map[string]bool{}
	for _, f := range append(slices.Clone(bins), modules...) {
		out, err := exec.Command("ldd", f).Output()
		if err != nil {
			t.Fatalf("ldd %s: %v", f, err)
		}
		for _, m := range regexp.MustCompile(`(?m)(?:=> )?(/\S+) \(0x`).FindAllStringSubmatch(string(out), -1) {
			libs[m[1]] = true
		}
	}

	busybox := staticBusybox(t)
	write := func(w io.Writer) error {
		root := newRootFS(w)
		for _, d := range []struct {
			name string
			mode int64
			uid  int
		}{{"bin", 0o755, 0}, {"etc", 0o755, 0}, {"tmp", 0o1777, 0}, {"usr/local/bin", 0o755, 0},
			{"var/lib/postgresql", 0o755, 999}, {"var/lib/postgresql/data", 0o700, 999}, {"var/run/postgresql", 0o2775, 999}} {
			root.dir(d.name, d.mode, d.uid)
		}
		root.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\npostgres:x:999:999:PostgreSQL:/var/lib/postgresql:/bin/sh\n"))
		root.file("etc/group", 0o644, []byte("root:x:0:\npostgres:x:999:\n"))
		root.file("usr/local/bin/docker-entrypoint.sh", 0o755, []byte(postgresEntrypoint))
		root.busybox(busybox)
		for _, f := range append(bins, modules...) {
			root.copyTree(f, strings.TrimPrefix(f, "/"), nil)
		}
		for _, lib := range slices.Sorted(maps.Keys(libs)) {
			data, err := os.ReadFile(lib) // through the links ldd names
			if err != nil {
				return err
			}
			root.file(strings.TrimPrefix(lib, "/"), 0o755, data)
		}
		root.copyTree(share, strings.TrimPrefix(share, "/"), nil)
		root.copyTree("/usr/share/zoneinfo", "usr/share/zoneinfo", nil)
		return root.close()
	}
	importStandIn(t, ref, name, fmt.Sprintf("%s of %s, busybox-static", strings.TrimSpace(string(serverVersion)), hostOS()), write,
		"ENV PATH="+bindir+":/usr/local/bin:/usr/bin:/bin",
		"ENV PGDATA=/var/lib/postgresql/data",
		"ENV PG_MAJOR="+major,
		`ENTRYPOINT ["docker-entrypoint.sh"]`,
		`CMD ["postgres"]`,
		"EXPOSE 5432",
		"STOPSIGNAL SIGINT")
}
