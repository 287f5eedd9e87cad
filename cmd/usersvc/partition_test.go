//go:build partition

package main

import (
	"bufio"
	"context"
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

	"github.com/jackc/pgx/v5"
)

// TestPartition runs usersvc against a PostgreSQL inside its own network
// namespace, reached over a veth pair, and cuts that link with iptables
// (both directions, one direction, short and long, idle and under load)
// while 16 writers create, rename and delete users. For each fault it
// checks that every 503 is an `unavailable` answered within
// REQUEST_TIMEOUT+0.5s, that no write answered 503 committed after its
// answer (a trigger records every change of users with its transaction,
// track_commit_timestamp gives the commit time), that no acknowledged write
// is lost, that writes succeed again within 2 s of the heal, and that 60 s
// after the heal no session of usersvc is left without a socket on the
// service's side. Needs root (make test-partition).
func TestPartition(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: network namespaces and iptables")
	}
	for _, tool := range []string{"ip", "iptables", "runuser"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing (make test-partition installs iptables)", tool)
		}
	}
	const (
		requestTimeout = 2 * time.Second
		writers        = 16
	)
	pid := os.Getpid()
	ns := fmt.Sprintf("usvc-part-%d", pid)
	subnet := fmt.Sprintf("10.213.%d", (pid%63)*4)
	hostIP, nsIP := subnet+".1", subnet+".2"
	hostIf, nsIf := fmt.Sprintf("vph%d", pid), fmt.Sprintf("vpn%d", pid)
	sh(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	sh(t, "ip", "link", "add", hostIf, "type", "veth", "peer", "name", nsIf)
	t.Cleanup(func() { exec.Command("ip", "link", "del", hostIf).Run() })
	sh(t, "ip", "link", "set", nsIf, "netns", ns)
	sh(t, "ip", "addr", "add", hostIP+"/30", "dev", hostIf)
	sh(t, "ip", "link", "set", hostIf, "up")
	nsExec := func(args ...string) []string { return append([]string{"ip", "netns", "exec", ns}, args...) }
	sh(t, nsExec("ip", "addr", "add", nsIP+"/30", "dev", nsIf)...)
	sh(t, nsExec("ip", "link", "set", nsIf, "up")...)
	sh(t, nsExec("ip", "link", "set", "lo", "up")...)

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
	appendFile(t, filepath.Join(data, "pg_hba.conf"), fmt.Sprintf("host all all %s.0/30 scram-sha-256\n", subnet))
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

	// Every change of users, with its transaction.
	sql(t, databaseURL, `CREATE TABLE user_changes (op text, user_id bigint, name text, xid xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE FUNCTION record_user_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN INSERT INTO user_changes (op, user_id, name) VALUES (TG_OP, OLD.id, OLD.name);
	ELSE INSERT INTO user_changes (op, user_id, name) VALUES (TG_OP, NEW.id, NEW.name); END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER record_user_change AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION record_user_change()`)

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
		if f.long && testing.Short() {
			t.Logf("%s: skipped with -short", f.name)
			continue
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
						a := l.do("delete", "", "DELETE", fmt.Sprintf("/users/%d", id), "")
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
		for _, chain := range f.chains {
			sh(t, nsExec("iptables", "-A", chain, "-j", "DROP")...)
		}
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
		for _, chain := range f.chains {
			sh(t, nsExec("iptables", "-D", chain, "-j", "DROP")...)
		}
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
		in503, late := check503s(t, databaseURL, ws)
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

// check503s returns how many writes answered 503 are in user_changes, and
// how many of those committed after their answer.
func check503s(t *testing.T, databaseURL string, ws []write) (in, late int) {
	t.Helper()
	type key struct {
		op   string
		id   int64
		name string
	}
	committed := map[key]time.Time{}
	rows := query(t, databaseURL, "SELECT op, user_id, coalesce(name, ''), pg_xact_commit_timestamp(xid::text::xid) FROM user_changes")
	for _, r := range rows {
		k := key{r[0].(string), r[1].(int64), r[2].(string)}
		switch k.op {
		case "INSERT", "UPDATE":
			k.id = 0
		case "DELETE":
			k.name = ""
		}
		committed[k] = r[3].(time.Time)
	}
	redeleted := map[int64]bool{} // a later delete acknowledged: the row is its
	for _, w := range ws {
		if w.op == "delete" && ok2xx(w.a) {
			redeleted[w.id] = true
		}
	}
	for _, w := range ws {
		if w.a.status != http.StatusServiceUnavailable || w.op == "delete" && redeleted[w.id] {
			continue
		}
		k := map[string]key{"create": {"INSERT", 0, w.name}, "rename": {"UPDATE", 0, w.name}, "delete": {"DELETE", w.id, ""}}[w.op]
		if at, ok := committed[k]; ok {
			in++
			if at.After(w.a.end) {
				late++
				t.Logf("%s on user %d answered 503 at %v, committed at %v", w.op, w.id, w.a.end.Format(time.StampMicro), at.Format(time.StampMicro))
			}
		}
	}
	return in, late
}

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

func sh(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err == nil {
		_, err = f.WriteString(s)
		f.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
}

// query runs q on a fresh connection and returns its rows' values.
func query(t *testing.T, url, q string) [][]any {
	t.Helper()
	ctx, conn, done := connectFor30s(t, url)
	defer done()
	rows, err := conn.Query(ctx, q, pgx.QueryExecModeSimpleProtocol)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sql(t *testing.T, url, q string) {
	t.Helper()
	ctx, conn, done := connectFor30s(t, url)
	defer done()
	if _, err := conn.Exec(ctx, q); err != nil {
		t.Fatal(err)
	}
}

// connectFor30s returns a fresh connection to url, a context that bounds
// its use to 30 s, and the function that closes both.
func connectFor30s(t *testing.T, url string) (context.Context, *pgx.Conn, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return ctx, conn, func() {
		conn.Close(context.Background())
		cancel()
	}
}
