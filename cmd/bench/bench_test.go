//go:build linux

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"usersvc/db"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestScriptsSendServiceSQL checks that each scenario's pgbench script
// sends the statement that the service sends, as sqlc generated it in
// db/, with its parameters in the same order, as pgbench -M prepared
// numbers them: so that the ceiling is the same SQL, and a changed query
// fails here until its script follows. Every wrk script must load
// common.lua first.
func TestScriptsSendServiceSQL(t *testing.T) {
	want := map[string]struct {
		query string
		vars  []string
	}{
		"get.sql":     {db.GetUser, []string{"id"}},
		"list.sql":    {db.ListUsers, []string{"after", "max_rows"}},
		"create.sql":  {db.CreateUser, []string{"name"}},
		"changes.sql": {db.ListChanges, []string{"after", "max_rows"}},
	}
	variable := regexp.MustCompile(`::|:[A-Za-z_][A-Za-z0-9_]*`)
	for _, s := range scenarios {
		body, err := scripts.ReadFile("scripts/" + s.sql)
		if err != nil {
			t.Fatal(err)
		}
		var lines, vars []string
		for line := range strings.Lines(string(body)) {
			if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "--") && !strings.HasPrefix(l, `\`) {
				lines = append(lines, l)
			}
		}
		sql := variable.ReplaceAllStringFunc(strings.Join(lines, " "), func(v string) string {
			if v == "::" {
				return v
			}
			if !slices.Contains(vars, v[1:]) {
				vars = append(vars, v[1:])
			}
			return "$" + strconv.Itoa(slices.Index(vars, v[1:])+1)
		})
		w, ok := want[s.sql]
		if !ok {
			t.Errorf("%s: %s is not checked against db/", s.name, s.sql)
			continue
		}
		_, query, _ := strings.Cut(w.query, "\n") // after its "-- name:" line
		if got, want := strings.TrimSuffix(sql, ";"), strings.Join(strings.Fields(query), " "); got != want {
			t.Errorf("%s sends\n\t%s\nbut the service sends\n\t%s", s.sql, got, want)
		}
		if !slices.Equal(vars, w.vars) {
			t.Errorf("%s: variables %q, want %q", s.sql, vars, w.vars)
		}
		lua, err := scripts.ReadFile("scripts/" + s.lua)
		if err != nil || !strings.Contains(string(lua), `dofile(os.getenv("BENCH_SCRIPTS") .. "/common.lua")`) {
			t.Errorf("%s does not load common.lua (%v)", s.lua, err)
		}
	}
}

func TestParseOptions(t *testing.T) {
	o, err := parseBenchOptions([]string{"-quick", "-reps", "3", "-service-bin", "/tmp/a/usersvc", "-service-bin", "/tmp/old"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	// -quick changes the defaults only: -reps, given, wins.
	if o.duration != 2*time.Second || o.reps != 3 || o.seed != 20000 || !slices.Equal(o.clients, []int{4}) || !slices.Equal(o.bins, []string{"/tmp/a/usersvc", "/tmp/old"}) {
		t.Errorf("-quick -reps 3: %+v, want 2s runs, 3 rounds, 20000 users, pgbench at 4 clients, both binaries", o)
	}
	if o, err := parseBenchOptions(nil, io.Discard); err != nil || o.reps != 10 || o.duration != 5*time.Second || !slices.Equal(o.bins, []string{"bin/usersvc"}) || o.connections != 16 {
		t.Errorf("no flags: %+v, %v; want 10 rounds of 5s, bin/usersvc, 16 connections", o, err)
	}
	for _, args := range [][]string{
		{"-duration", "1500ms"},
		{"-reps", "0"},
		{"-pgbench-clients", "2,x"},
		{"-seed", "10"},
		{"-env", "=1"},
		{"-service-bin", "a/usersvc", "-service-bin", "b/usersvc"}, // the same name twice
		{"-service-bin", "bin/floor"},
		{"extra"},
	} {
		if _, err := parseBenchOptions(args, io.Discard); err == nil {
			t.Errorf("bench %q: no error", args)
		}
	}

	// The soak's warm-up is a fifth of the run, whole intervals, one at
	// least; two samples at least come after it.
	for _, tc := range []struct {
		args   []string
		warmup time.Duration
	}{
		{nil, time.Minute},
		{[]string{"-duration", "30s"}, 10 * time.Second},
		{[]string{"-duration", "20s", "-interval", "2s"}, 4 * time.Second},
	} {
		if o, err := parseSoakOptions(tc.args, io.Discard); err != nil || o.warmup != tc.warmup {
			t.Errorf("soak %q: warm-up %v, %v; want %v", tc.args, o.warmup, err, tc.warmup)
		}
	}
	for _, args := range [][]string{{"-duration", "20s"}, {"-interval", "0s"}, {"-service-bin", "a", "-service-bin", "b"}} {
		if _, err := parseSoakOptions(args, io.Discard); err == nil {
			t.Errorf("soak %q: no error", args)
		}
	}
}

func TestBenchmarkLine(t *testing.T) {
	m := measured{n: 50_000, seconds: 2, http: true, p50: 1.5e6, p99: 4e6, cpu: 1, client: 0.5, pg: 0.75, rss: 30 << 20}
	want := "BenchmarkGetUser/impl=usersvc 50000 25000 req/s 1500000 p50-ns 4000000 p99-ns 20000 cpu-ns/op 10000 client-cpu-ns/op 15000 pg-cpu-ns/op 31457280 rss-bytes 125.0 floor-cpu-%"
	if got := m.line("GetUser/impl=usersvc", " 125.0 floor-cpu-%"); got != want {
		t.Errorf("line =\n%s\nwant\n%s", got, want)
	}
	// pgbench's: no latencies, no target.
	m = measured{n: 1000, seconds: 0.5, client: 0.01, pg: 0.02}
	if got, want := m.line("GetUser/impl=pgbench-c2"), "BenchmarkGetUser/impl=pgbench-c2 1000 2000 req/s 10000 client-cpu-ns/op 20000 pg-cpu-ns/op"; got != want {
		t.Errorf("line =\n%s\nwant\n%s", got, want)
	}
}

func TestParseOutputs(t *testing.T) {
	out := "Running 2s test @ http://127.0.0.1:1\n  53418 requests in 2.00s\n" +
		`BENCH_RESULT {"requests":53418,"duration_us":2000221,"connect_errors":1,"read_errors":2,"write_errors":3,"timeouts":4,"status_errors":7,"p50_us":1020,"p99_us":4502,"max_us":20110,"expected":53400,"unexpected":18}` + "\n" +
		`SOAK_ANSWERS {"expect":{"get":200},"answers":{"get 200":10,"get 503":2},"unexpected":{"get 503":2}}` + "\n"
	var r wrkResult
	if err := parseLine([]byte(out), "BENCH_RESULT ", &r); err != nil {
		t.Fatal(err)
	}
	want := wrkResult{Requests: 53418, DurationUS: 2000221, Connect: 1, Read: 2, Write: 3, Timeouts: 4, Status: 7, P50US: 1020, P99US: 4502, MaxUS: 20110, Expected: 53400, Unexpected: 18}
	if r != want || r.socketErrors() != 10 {
		t.Errorf("wrk result = %+v (%d socket errors), want %+v (10)", r, r.socketErrors(), want)
	}
	var a soakAnswers
	if err := parseLine([]byte(out), "SOAK_ANSWERS ", &a); err != nil || a.Answers["get 503"] != 2 || a.Unexpected["get 503"] != 2 || a.Expect["get"] != 200 {
		t.Errorf("soak answers = %+v, %v", a, err)
	}
	if err := parseLine([]byte("Running 2s test\n"), "BENCH_RESULT ", &r); err == nil {
		t.Error("no result line: no error")
	}

	pgbench := "number of failed transactions: 0 (0.000%)\nnumber of transactions actually processed: 178406\nlatency average = 0.089 ms\ninitial connection time = 3.966 ms\ntps = 89295.123456 (without initial connection time)\n"
	if tps, n := pgbenchTPS.FindStringSubmatch(pgbench), pgbenchN.FindStringSubmatch(pgbench); tps == nil || tps[1] != "89295.123456" || n == nil || n[1] != "178406" {
		t.Errorf("pgbench's summary: tps %q, processed %q; want 89295.123456 and 178406", tps, n)
	}
}

const metricsText = `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 41
# TYPE go_memstats_heap_inuse_bytes gauge
go_memstats_heap_inuse_bytes 8.8e+06
# TYPE process_open_fds gauge
process_open_fds 31
# TYPE usersvc_db_pool_total_connections gauge
usersvc_db_pool_total_connections{pool="write"} 4
# TYPE usersvc_http_requests_total counter
usersvc_http_requests_total{code="200",method="GET",route="GET /users/{id}"} 1000
usersvc_http_requests_total{code="503",method="GET",route="say \"}\" here"} 7
`

func TestReadMetrics(t *testing.T) {
	s, err := readMetrics(strings.NewReader(metricsText))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]float64{"go_goroutines": 41, "go_memstats_heap_inuse_bytes": 8.8e6, "process_open_fds": 31, "usersvc_db_pool_total_connections": 4, requestsTotal: 1007}
	for k, v := range want {
		if s.values[k] != v {
			t.Errorf("%s = %v, want %v", k, s.values[k], v)
		}
	}
	for _, text := range []string{strings.Replace(metricsText, "go_goroutines 41", "", 1), metricsText + "go_threads many\n"} {
		if _, err := readMetrics(strings.NewReader(text)); err == nil {
			t.Errorf("readMetrics(%q): no error", text)
		}
	}
}

func TestJudgeSoak(t *testing.T) {
	const mib = 1 << 20
	// samples returns before, a sample under load every 10 s with the RSS
	// of rss(i) and goroutines(i), and after, idle with idleAfter.
	samples := func(n int, rss, goroutines func(i int) float64, idleAfter float64) []sample {
		ss := []sample{{values: map[string]float64{"go_goroutines": 10}}}
		for i := range n {
			ss = append(ss, sample{at: time.Duration(i+1) * 10 * time.Second, load: true, values: map[string]float64{"rss": rss(i), "go_goroutines": goroutines(i)}})
		}
		return append(ss, sample{at: time.Hour, values: map[string]float64{"go_goroutines": idleAfter}})
	}
	flat := func(v float64) func(int) float64 { return func(int) float64 { return v } }
	for _, tc := range []struct {
		name string
		ss   []sample
		want []bool // RSS, goroutines under load, when idle
	}{
		{"steady", samples(29, flat(26*mib), flat(40), 10), []bool{true, true, true}},
		// 0.25 MiB more every sample: 6.5 MiB between the windows' maxima.
		{"RSS leak", samples(29, func(i int) float64 { return 26*mib + float64(i)*mib/4 }, flat(40), 10), []bool{false, true, true}},
		// A spike between the windows is no trend.
		{"RSS spike", samples(29, func(i int) float64 {
			if i == 12 {
				return 46 * mib
			}
			return 26 * mib
		}, flat(40), 10), []bool{true, true, true}},
		{"goroutine leak", samples(29, flat(26*mib), func(i int) float64 { return 40 + 2*float64(i) }, 10), []bool{true, false, true}},
		{"idle leak", samples(29, flat(26*mib), flat(40), 13), []bool{true, true, false}},
		{"no sample after the warm-up", samples(1, flat(26*mib), flat(40), 10), []bool{false, false, true}},
	} {
		vs := judgeSoak(tc.ss, 60*time.Second, 16)
		var got []bool
		for _, v := range vs {
			got = append(got, v.flat())
		}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: flat = %v, want %v (%+v)", tc.name, got, tc.want, vs)
		}
	}
}

// TestCPUTimes spins until getrusage says this process has spent 200 ms
// of CPU, and checks what /proc says of it and of the machine.
func TestCPUTimes(t *testing.T) {
	self := func() time.Duration {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			t.Fatal(err)
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	m0, p0, err := cpuTimes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	for t0 := self(); self()-t0 < 200*time.Millisecond; {
	}
	m1, p1, err := cpuTimes(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	// /proc counts in ticks of 10 ms.
	if p := p1 - p0; p < 0.18 || m1-m0 < p-0.02 {
		t.Errorf("after 200 ms of CPU: this process %.3f s, the machine %.3f s; want about 0.2 s, and at least as much", p, m1-m0)
	}
}

// TestFloor checks the floor's answers against a real database: the
// statuses, headers and JSON of the service's, on the benchmarked routes.
func TestFloor(t *testing.T) {
	pool := pgtest.NewPool(t)
	srv := httptest.NewServer(floorHandler(db.New(pool)))
	defer srv.Close()
	do := func(method, path, body string, status int) (*http.Response, []map[string]any) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != status {
			t.Fatalf("%s %s: status = %d, want %d: %s", method, path, res.StatusCode, status, b)
		}
		if status >= 300 {
			return res, nil
		}
		if ct := res.Header.Get("Content-Type"); ct != "application/json" || res.Header.Get("Content-Length") != strconv.Itoa(len(b)) {
			t.Errorf("%s %s: Content-Type %q, Content-Length %q for %d bytes", method, path, ct, res.Header.Get("Content-Length"), len(b))
		}
		var users []map[string]any
		if b[0] == '{' {
			b = append(append([]byte("["), b...), ']')
		}
		if err := json.Unmarshal(b, &users); err != nil {
			t.Fatalf("%s %s: %v: %s", method, path, err, b)
		}
		for _, u := range users {
			created, _ := time.Parse(time.RFC3339Nano, u["created_at"].(string))
			if len(u) != 4 || u["name"] == nil || u["id"] == nil || created.IsZero() || !strings.HasSuffix(u["updated_at"].(string), "Z") {
				t.Errorf("%s %s: user %v, want id, name, created_at and updated_at in UTC", method, path, u)
			}
		}
		return res, users
	}
	for i := range 3 {
		res, users := do("POST", "/users", `{"name":"u`+strconv.Itoa(i)+`"}`, http.StatusCreated)
		if id := strconv.Itoa(int(users[0]["id"].(float64))); res.Header.Get("Location") != "/users/"+id || !strings.HasPrefix(res.Header.Get("ETag"), `"`+id+"-") {
			t.Errorf("POST /users: Location %q, ETag %q for user %s", res.Header.Get("Location"), res.Header.Get("ETag"), id)
		}
	}
	do("POST", "/users", `{"name":"u1"}`, http.StatusBadRequest)
	res, users := do("GET", "/users?limit=2", "", http.StatusOK)
	if len(users) != 2 || users[0]["name"] != "u0" || !strings.HasPrefix(res.Header.Get("Link"), "</users?after=") {
		t.Errorf("GET /users?limit=2: %v, Link %q; want u0 and u1, and a next link", users, res.Header.Get("Link"))
	}
	id := strconv.Itoa(int(users[1]["id"].(float64)))
	if res, _ := do("GET", "/users?after="+id+"&limit=2", "", http.StatusOK); res.Header.Get("Link") != "" {
		t.Errorf("last page: Link %q, want none", res.Header.Get("Link"))
	}
	if res, users := do("GET", "/users/"+id, "", http.StatusOK); users[0]["name"] != "u1" || res.Header.Get("ETag") == "" {
		t.Errorf("GET /users/%s: %v, ETag %q", id, users, res.Header.Get("ETag"))
	}
	do("GET", "/users/999999", "", http.StatusNotFound)
	if res.Header.Get("Changes-Position") == "" {
		t.Error("GET /users?limit=2: no Changes-Position")
	}

	// The feed: the three creates, oldest first, each with its user, once
	// the service's sequencer has numbered them.
	if err := postgres.NewChanges(pool).Sequence(context.Background()); err != nil {
		t.Fatal(err)
	}
	res, err := http.Get(srv.URL + "/users/changes?limit=2")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	var changes []struct {
		Position int64
		Op       string
		ID       int64
		User     map[string]any
		At       time.Time
	}
	if err := json.NewDecoder(res.Body).Decode(&changes); err != nil || len(changes) != 2 || changes[0].Op != "create" || changes[0].User["name"] != "u0" ||
		changes[1].Position <= changes[0].Position || changes[1].At.IsZero() || res.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /users/changes?limit=2: %+v, %v", changes, err)
	}
	if want := fmt.Sprintf(`</users/changes?after=%d&limit=2>; rel="next"`, changes[1].Position); res.Header.Get("Link") != want {
		t.Errorf("GET /users/changes?limit=2: Link %q, want %q", res.Header.Get("Link"), want)
	}
}
