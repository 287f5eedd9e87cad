//go:build partition && linux

package main

import (
	"bufio"
	"encoding/json/v2"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"usersvc/internal/pgtest"
)

// TestPartition runs usersvc against a PostgreSQL on a host of its own
// (newLAN), and cuts that host off with iptables (both directions, one
// direction, short and long, idle and under load) while 16 writers create,
// rename and delete users. For each fault it checks that every 503 is an
// `unavailable` answered within REQUEST_TIMEOUT+0.5s, that no write
// answered 503 committed after its answer (lateCommits), that no acknowledged write
// is lost, that writes succeed again within 2 s of the heal, and that 60 s
// after the heal no session of usersvc is left without a socket on the
// service's side. Needs root (make test-partition).
func TestPartition(t *testing.T) {
	const (
		requestTimeout = 2 * time.Second
		writers        = 16
	)
	network := newLAN(t)
	ns, nsIP := network.addHost("pg")
	nsExec := func(args ...string) []string { return append([]string{"ip", "netns", "exec", ns}, args...) }

	// PostgreSQL, owned by postgres, listening on the namespace's address.
	if exec.Command("id", "-u", "postgres").Run() != nil {
		sh(t, "useradd", "--system", "--no-create-home", "postgres")
	}
	bin := "/usr/lib/postgresql/15/bin"
	dir, err := os.MkdirTemp("", "usvc-part-pg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	data := filepath.Join(dir, "data")
	const password = "partition-secret"
	os.WriteFile(filepath.Join(dir, "pw"), []byte(password+"\n"), 0o644)
	sh(t, "chown", "-R", "postgres", dir)
	sh(t, "runuser", "-u", "postgres", "--", bin+"/initdb", "-D", data, "-U", "postgres",
		"--pwfile="+filepath.Join(dir, "pw"), "--auth-local=trust", "--auth-host=scram-sha-256")
	conf := fmt.Sprintf("listen_addresses = '%s'\nport = 5432\nunix_socket_directories = '%s'\ntrack_commit_timestamp = on\nmax_connections = 200\n", nsIP, dir)
	appendFile(t, filepath.Join(data, "postgresql.conf"), conf)
	appendFile(t, filepath.Join(data, "pg_hba.conf"), fmt.Sprintf("host all all %s.0/24 scram-sha-256\n", network.subnet))
	pgctl := func(args ...string) []string {
		return nsExec(append([]string{"runuser", "-u", "postgres", "--", bin + "/pg_ctl", "-D", data}, args...)...)
	}
	sh(t, pgctl("-l", filepath.Join(dir, "log"), "-w", "-t", "30", "start")...)
	t.Cleanup(func() {
		exec.Command(pgctl("-m", "fast", "-w", "stop")[0], pgctl("-m", "fast", "-w", "stop")[1:]...).Run()
	})
	adminURL := fmt.Sprintf("postgres://postgres:%s@%s:5432/postgres?sslmode=disable&connect_timeout=5", password, nsIP)
	databaseURL := strings.Replace(adminURL, "/postgres?", "/usersvc?", 1)
	sql(t, adminURL, "CREATE DATABASE usersvc")

	// The real binary, on loopback, migrating at start.
	addr := pgtest.FreeAddr(t)
	base := "http://" + addr
	logs := &syncBuffer{}
	svc := exec.Command(usersvcBinary(t), "serve")
	svc.Env = append(os.Environ(), "DATABASE_URL="+databaseURL, "HTTP_ADDR="+addr, "AUTO_MIGRATE=true",
		"REQUEST_TIMEOUT="+requestTimeout.String(), "LOG_FORMAT=json")
	svc.Stdout, svc.Stderr = logs, logs
	if err := svc.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- svc.Wait() }()
	t.Cleanup(func() {
		svc.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			svc.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("usersvc log tail:\n%s", tail(logs.String(), 40))
		}
	})
	waitFor(t, base+"/readyz", 30*time.Second, exited)

	sql(t, databaseURL, commitLogSQL)

	type fault struct {
		name   string
		chains []string
		hold   time.Duration
		idle   bool // no load for 5 s before the partition, load only once it is on
		long   bool
	}
	faults := []fault{
		{"both 7s", []string{"INPUT", "OUTPUT"}, 7 * time.Second, false, false},
		{"both 20s", []string{"INPUT", "OUTPUT"}, 20 * time.Second, false, false},
		{"both 90s", []string{"INPUT", "OUTPUT"}, 90 * time.Second, false, true},
		{"both 30s after 5s idle", []string{"INPUT", "OUTPUT"}, 30 * time.Second, true, false},
		{"INPUT only 15s", []string{"INPUT"}, 15 * time.Second, false, false},
		{"OUTPUT only 15s", []string{"OUTPUT"}, 15 * time.Second, false, false},
	}
	probe := &http.Client{Timeout: 3 * time.Second}
	for fi, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			if f.long && testing.Short() {
				t.Skip("a long fault, left out with -short")
			}
			var mu sync.Mutex
			var writes []write
			l := newLoad(t, base, writers)
			l.setPhase(f.name)
			startLoad := func() {
				l.run(writers, func(c int) {
					var mine []int64
					var last int
					record := func(op string, id int64, name string, a attempt) {
						last = a.status
						mu.Lock()
						writes = append(writes, write{op, id, name, a})
						mu.Unlock()
					}
					for i := 0; i < 20000 && !l.stopped(); i++ {
						switch {
						case len(mine) > 0 && i%5 == 4:
							id := mine[0]
							a := l.do("delete", strconv.FormatInt(id, 10), "DELETE", fmt.Sprintf("/users/%d", id), "")
							record("delete", id, "", a)
							if a.status == http.StatusNoContent || a.status == http.StatusNotFound {
								mine = mine[1:]
							}
						case len(mine) > 0 && i%5 >= 2:
							id := mine[i%len(mine)]
							name := fmt.Sprintf("p%d c%d r%d", fi, c, i)
							record("rename", id, name, l.do("rename", name, "PUT", fmt.Sprintf("/users/%d", id), nameBody(name)))
						default:
							name := fmt.Sprintf("p%d c%d u%d", fi, c, i)
							a := l.do("create", name, "POST", "/users", nameBody(name))
							var u apiUser
							if a.status == http.StatusCreated && json.Unmarshal(a.body, &u) == nil {
								mine = append(mine, u.ID)
							}
							record("create", u.ID, name, a)
						}
						if last == http.StatusServiceUnavailable {
							l.pause(50 * time.Millisecond)
						}
					}
				})
			}
			if f.idle {
				time.Sleep(5 * time.Second)
			} else {
				startLoad()
				l.waitFor(f.name, "50 creates", 20*time.Second, createdAtLeast(50))
			}
			network.cut(ns, f.chains...)
			cutAt := time.Now()
			if f.idle {
				startLoad()
			}
			time.Sleep(min(f.hold/2, 5*time.Second))
			start := time.Now()
			res, err := probe.Get(base + "/readyz")
			if took := time.Since(start); err != nil || res.StatusCode != http.StatusServiceUnavailable || took > time.Second {
				t.Errorf("%s: GET /readyz during the partition: %v %v after %v, want 503 within 1s", f.name, status(res), err, took)
			}
			if res, err := probe.Get(base + "/healthz"); err != nil || res.StatusCode != http.StatusOK {
				t.Errorf("%s: GET /healthz during the partition: %v %v, want 200", f.name, status(res), err)
			}
			time.Sleep(time.Until(cutAt.Add(f.hold)))
			network.heal(ns, f.chains...)
			healedAt := time.Now()
			time.Sleep(5 * time.Second)
			l.finish()

			mu.Lock()
			ws := writes
			mu.Unlock()
			all := l.phaseAttempts(f.name)
			var n503 int
			var slowest503 time.Duration
			for _, a := range all {
				if a.status == http.StatusServiceUnavailable {
					n503++
					slowest503 = max(slowest503, a.took())
					if a.code != "unavailable" || a.took() > requestTimeout+500*time.Millisecond {
						t.Errorf("%s: %v, want 503 unavailable within %v", f.name, a, requestTimeout+500*time.Millisecond)
					}
				}
			}
			recovery := time.Duration(-1)
			if first, ok := firstAfter(all, healedAt, func(a attempt) bool { return a.err == nil && a.status < 300 }); ok {
				recovery = first.Sub(healedAt)
			}
			if recovery < 0 || recovery > 2*time.Second {
				t.Errorf("%s: first 2xx %v after the heal, want within 2s", f.name, recovery)
			}
			in503, late := lateCommits(t, databaseURL, all)
			lost := lostWrites(t, databaseURL, ws)
			if late != 0 || lost != 0 {
				t.Errorf("%s: %d writes answered 503 committed after their answer, %d acknowledged writes lost", f.name, late, lost)
			}

			time.Sleep(time.Until(healedAt.Add(60 * time.Second)))
			orphans, sessions := orphanSessions(t, adminURL, nsIP)
			if orphans != 0 {
				t.Errorf("%s: %d of usersvc's %d sessions have no socket on the service's side 60s after the heal", f.name, orphans, sessions)
			}
			t.Logf("%s: %d requests, %d 503s, slowest 503 %v, %d writes answered 503 in the side table (%d committed after the answer), %d lost acknowledged writes, first 2xx %v after the heal, %d/%d usersvc sessions orphaned 60s after the heal",
				f.name, len(all), n503, slowest503.Round(time.Millisecond), in503, late, lost, recovery.Round(time.Millisecond), orphans, sessions)
		})
	}
}

// write is one create, rename or delete a writer sent, on which user.
type write struct {
	op   string
	id   int64
	name string
	a    attempt
}

func ok2xx(a attempt) bool { return a.err == nil && a.status >= 200 && a.status < 300 }

// lostWrites returns how many users do not end as their last acknowledged
// write left them, nor as a later unacknowledged one did.
func lostWrites(t *testing.T, databaseURL string, ws []write) int {
	t.Helper()
	final := map[int64]string{}
	for _, r := range query(t, databaseURL, "SELECT id, name FROM users") {
		final[r[0].(int64)] = r[1].(string)
	}
	byID := map[int64][]write{}
	for _, w := range ws {
		if w.id != 0 {
			byID[w.id] = append(byID[w.id], w)
		}
	}
	lost := 0
	for id, hist := range byID {
		last := -1
		for i, w := range hist {
			if ok2xx(w.a) {
				last = i
			}
		}
		if last < 0 {
			continue
		}
		name, exists := final[id]
		matches := func(w write) bool {
			switch w.op {
			case "delete":
				return !exists
			case "rename", "create":
				return exists && name == w.name
			}
			return false
		}
		good := matches(hist[last])
		for _, w := range hist[last+1:] {
			good = good || matches(w)
		}
		if !good {
			lost++
			t.Logf("user %d: %s %q acknowledged at %v, but the table has %q (exists %v)", id, hist[last].op, hist[last].name, hist[last].a.end.Format(time.StampMicro), name, exists)
		}
	}
	return lost
}

// orphanSessions returns how many of usersvc's backends have a client port
// with no socket to nsIP:5432 on this side, and how many there are.
func orphanSessions(t *testing.T, adminURL, nsIP string) (orphans, sessions int) {
	t.Helper()
	ports := map[int64]bool{}
	f, err := os.Open("/proc/net/tcp")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var a, b, c, d int
	fmt.Sscanf(nsIP, "%d.%d.%d.%d", &a, &b, &c, &d)
	remote := fmt.Sprintf("%02X%02X%02X%02X:1538", d, c, b, a) // little-endian address, port 5432
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 3 && fields[2] == remote {
			if i := strings.IndexByte(fields[1], ':'); i >= 0 {
				p, _ := strconv.ParseInt(fields[1][i+1:], 16, 64)
				ports[p] = true
			}
		}
	}
	for _, r := range query(t, adminURL, "SELECT client_port::bigint FROM pg_stat_activity WHERE application_name = 'usersvc' AND backend_type = 'client backend'") {
		sessions++
		if !ports[r[0].(int64)] {
			orphans++
		}
	}
	return orphans, sessions
}

func status(res *http.Response) any {
	if res == nil {
		return "no answer"
	}
	res.Body.Close()
	return res.StatusCode
}
