package server

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json/v2"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"usersvc/db"
	"usersvc/internal/metrics"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
	"usersvc/migrations"
)

// logBuffer collects the JSON log lines the handlers write.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// reset forgets the log lines so far.
func (l *logBuffer) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b.Reset()
}

// records returns every log record so far, decoded.
func (l *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var recs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(l.b.Bytes()))
	for sc.Scan() {
		var rec map[string]any
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		recs = append(recs, rec)
	}
	return recs
}

// withID returns the records that carry request id id.
func withID(recs []map[string]any, id string) []map[string]any {
	var out []map[string]any
	for _, rec := range recs {
		if rec["request_id"] == id {
			out = append(out, rec)
		}
	}
	return out
}

// newObservedServer is newTestServer with its logs at level collected and
// metrics served.
func newObservedServer(t *testing.T, store userStore, database databaseProbe, level slog.Level) (*testServer, *logBuffer) {
	t.Helper()
	return newObservedServerTimeout(t, store, database, level, 2*time.Second)
}

// newObservedServerTimeout is newObservedServer with this REQUEST_TIMEOUT.
func newObservedServerTimeout(t *testing.T, store userStore, database databaseProbe, level slog.Level, requestTimeout time.Duration) (*testServer, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	m := metrics.New("v0.0.0-test")
	logger := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: level}))
	url := serveAPI(t, logger, store, database, Options{RequestTimeout: requestTimeout, SchemaVersion: migrations.Latest(), Metrics: m})
	return &testServer{t: t, url: url}, logs
}

// sendWithID sends a GET with the header X-Request-ID: id (none when id is
// empty) and returns the response and the id it came back with.
func (s *testServer) sendWithID(method, target, id string) (response, string) {
	s.t.Helper()
	req, err := http.NewRequest(method, s.url+target, nil)
	if err != nil {
		s.t.Fatal(err)
	}
	if id != "" {
		req.Header.Set(requestIDHeader, id)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer res.Body.Close()
	var body bytes.Buffer
	if _, err := body.ReadFrom(res.Body); err != nil {
		s.t.Fatal(err)
	}
	return response{status: res.StatusCode, header: res.Header, body: body.Bytes()}, res.Header.Get(requestIDHeader)
}

func TestRequestID(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	s, logs := newObservedServer(t, db.New(pool), postgres.Probe{Q: pool}, slog.LevelInfo)

	for _, id := range []string{"abc-123", "req_7.x:y+z/w=@v", strings.Repeat("a", maxRequestIDLen)} {
		r, got := s.sendWithID("GET", "/users/1", id)
		if got != id {
			t.Errorf("GET /users/1 with X-Request-ID %q: response X-Request-ID = %q, want it kept", id, got)
		}
		if p := decodeJSON[problem](t, r.body); p.RequestID != id {
			t.Errorf("GET /users/1 with X-Request-ID %q: problem request_id = %q, want it", id, p.RequestID)
		}
	}
	seen := map[string]bool{}
	for _, id := range []string{"", "has space", "tab\there", "caf\u00e9", strings.Repeat("a", maxRequestIDLen+1), "<script>"} {
		_, got := s.sendWithID("GET", "/healthz", id)
		if got == id || !validRequestID(got) || len(got) < 20 {
			t.Errorf("GET /healthz with X-Request-ID %q: response X-Request-ID = %q, want a new valid id", id, got)
		}
		if seen[got] {
			t.Errorf("GET /healthz: id %q handed out twice", got)
		}
		seen[got] = true
	}

	// The id reaches the access log line of its request.
	r, id := s.sendWithID("GET", "/users?limit=1", "trace-me-1")
	if r.status != http.StatusOK || id != "trace-me-1" {
		t.Fatalf("GET /users: %d, id %q", r.status, id)
	}
	if got := withID(logs.records(t), "trace-me-1"); len(got) != 1 || got[0]["msg"] != "request" {
		t.Errorf("log lines with request_id trace-me-1 = %v, want the one access log line", got)
	}
}

// TestServerErrorCarriesRequestID checks that a 5xx can be matched to its
// log: the problem body and the error line share the request id, and the
// error line has the SQLSTATE.
func TestServerErrorCarriesRequestID(t *testing.T) {
	t.Parallel()
	store := faultyStore{err: &pgconn.PgError{Code: "42601", Message: "syntax error"}}
	s, logs := newObservedServer(t, store, okDatabase{}, slog.LevelInfo)
	r, id := s.sendWithID("GET", "/users/7", "")
	p := wantProblem(t, "GET /users/7", r, 500, codeInternal)
	if p.RequestID == "" || p.RequestID != id {
		t.Fatalf("GET /users/7: problem request_id %q, header %q: want equal, set", p.RequestID, id)
	}
	recs := withID(logs.records(t), id)
	var failed, access map[string]any
	for _, rec := range recs {
		switch rec["msg"] {
		case "request failed":
			failed = rec
		case "request":
			access = rec
		}
	}
	if failed == nil || failed["sqlstate"] != "42601" || failed["level"] != "ERROR" || !strings.Contains(failed["err"].(string), "get user 7") {
		t.Errorf("error line of request %s = %v, want level ERROR, sqlstate 42601 and the cause", id, failed)
	}
	if access == nil || access["status"] != float64(500) {
		t.Errorf("access line of request %s = %v, want status 500", id, access)
	}
	if len(recs) != 2 {
		t.Errorf("request %s logged %d lines, want 2 (the error once, the access line): %v", id, len(recs), recs)
	}
}

func TestAccessLog(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	for _, tt := range []struct {
		level      slog.Level
		wantHealth bool
	}{
		{slog.LevelInfo, false},
		{slog.LevelDebug, true},
	} {
		t.Run(tt.level.String(), func(t *testing.T) {
			s, logs := newObservedServer(t, db.New(pool), postgres.Probe{Q: pool}, tt.level)
			body := `{"name":"logged ` + tt.level.String() + `"}`
			created := s.postJSON("/users", body)
			if created.status != http.StatusCreated {
				t.Fatalf("POST /users: status = %d, want 201", created.status)
			}
			id := created.header.Get(requestIDHeader)
			for _, path := range []string{"/healthz", "/readyz", "/metrics", "/no/such/path/42"} {
				s.sendWithID("GET", path, "")
			}

			recs := logs.records(t)
			access := withID(recs, id)
			if len(access) != 1 {
				t.Fatalf("POST /users logged %v, want one line", access)
			}
			want := map[string]any{
				"level": "INFO", "msg": "request", "method": "POST", "route": "/users", "path": "/users",
				"status": float64(201), "bytes": float64(len(created.body)),
			}
			for k, v := range want {
				if access[0][k] != v {
					t.Errorf("access line %s = %v, want %v", k, access[0][k], v)
				}
			}
			if d, ok := access[0]["duration_ms"].(float64); !ok || d < 0 || d > 2000 {
				t.Errorf("access line duration_ms = %v, want milliseconds", access[0]["duration_ms"])
			}
			if ra, _ := access[0]["remote_addr"].(string); !strings.HasPrefix(ra, "127.0.0.1:") {
				t.Errorf("access line remote_addr = %q", ra)
			}

			routes := map[string]string{} // route: level
			for _, rec := range recs {
				if rec["msg"] == "request" {
					routes[rec["route"].(string)], _ = rec["level"].(string)
				}
			}
			for _, route := range []string{"/healthz", "/readyz", "/metrics"} {
				level, logged := routes[route]
				if logged != tt.wantHealth || (logged && level != "DEBUG") {
					t.Errorf("GET %s at log level %v: logged %v at %q, want logged %v at DEBUG", route, tt.level, logged, level, tt.wantHealth)
				}
			}
			if routes[unmatchedRoute] != "INFO" {
				t.Errorf("an unmatched path was logged at %q with route %q, want INFO", routes[unmatchedRoute], unmatchedRoute)
			}
		})
	}
}

func TestMetrics(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	s, _ := newObservedServer(t, db.New(pool), postgres.Probe{Q: pool}, slog.LevelWarn)
	u := s.createUser("counted")
	s.postJSON("/users", `{"name":"counted"}`) // 400
	s.get(userPath(u.ID))
	s.get(userPath(u.ID + 1000)) // 404
	for i := range 3 {
		s.sendWithID("GET", "/random/"+strings.Repeat("x", i), "") // unmatched, never a route of its own
	}
	s.sendWithID("BREW", "/users", "") // an invented method

	r := s.get("/metrics")
	if r.status != http.StatusOK || !strings.HasPrefix(r.header.Get("Content-Type"), "text/plain") {
		t.Fatalf("GET /metrics = %d %s", r.status, r.header.Get("Content-Type"))
	}
	text := string(r.body)
	for _, want := range []string{
		`usersvc_http_requests_total{code="201",method="POST",route="/users"} 1`,
		`usersvc_http_requests_total{code="400",method="POST",route="/users"} 1`,
		`usersvc_http_requests_total{code="200",method="GET",route="/users/{id}"} 1`,
		`usersvc_http_requests_total{code="404",method="GET",route="/users/{id}"} 1`,
		`usersvc_http_requests_total{code="404",method="GET",route="unmatched"} 3`,
		`usersvc_http_requests_total{code="405",method="OTHER",route="unmatched"} 1`,
		`usersvc_http_request_duration_seconds_bucket{code="201",method="POST",route="/users",le="+Inf"} 1`,
		`usersvc_build_info{goversion="go`,
		`version="v0.0.0-test"} 1`,
		"go_goroutines ",
		"process_resident_memory_bytes ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("GET /metrics lacks %s", want)
		}
	}
	for _, unwanted := range []string{"/random", "BREW"} {
		if strings.Contains(text, unwanted) {
			t.Errorf("GET /metrics has a label value %q from a client", unwanted)
		}
	}
	problems, err := promlint.New(bytes.NewReader(r.body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}

	// A scraper that asks for OpenMetrics (as Prometheus does by default)
	// gets it, as openapi.yaml describes.
	scraper := *s
	scraper.header = http.Header{"Accept": {"application/openmetrics-text;version=1.0.0;q=0.5,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"}}
	if r := scraper.get("/metrics"); !strings.HasPrefix(r.header.Get("Content-Type"), "application/openmetrics-text; version=1.0.0;") {
		t.Errorf("GET /metrics as Prometheus: Content-Type = %q, want OpenMetrics 1.0.0", r.header.Get("Content-Type"))
	}
}

// versionAt is a database whose schema is at a given version.
type versionAt int64

func (v versionAt) SchemaVersion(context.Context) (int64, error) { return int64(v), nil }

func (versionAt) ReadOnly(context.Context) (string, error) { return "", nil }

// unreachable is a database that does not answer.
type unreachable struct{}

func (unreachable) SchemaVersion(context.Context) (int64, error) {
	return 0, &pgconn.ConnectError{}
}

func (unreachable) ReadOnly(context.Context) (string, error) {
	return "", &pgconn.ConnectError{}
}

func TestReadyz(t *testing.T) {
	t.Parallel()
	latest := migrations.Latest()
	for _, tt := range []struct {
		name     string
		database databaseProbe
		drain    bool
		status   int
		detail   []string // what the 503's detail names
	}{
		{"up to date", versionAt(latest), false, 200, nil},
		{"newer schema, older build", versionAt(latest + 1), false, 200, nil},
		{"schema behind", versionAt(latest - 1), false, 503, []string{fmt.Sprintf("version %d", latest-1), fmt.Sprintf("version %d", latest), "migrate up"}},
		{"database unreachable", unreachable{}, false, 503, []string{"database"}},
		{"draining", versionAt(latest), true, 503, []string{"shutting down"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			h := New(slog.New(slog.DiscardHandler), faultyStore{err: errors.New("unused")}, tt.database, Options{SchemaVersion: latest})
			if tt.drain {
				h.Drain()
			}
			srv := startServer(t, h)
			s := &testServer{t: t, url: srv.URL}
			r := s.get("/readyz")
			if r.status != tt.status {
				t.Fatalf("GET /readyz = %d %s, want %d", r.status, r.body, tt.status)
			}
			if r.close != tt.drain {
				t.Errorf("GET /readyz: Connection: close %v, want %v: a draining server closes each connection after its answer", r.close, tt.drain)
			}
			if tt.status == 200 {
				return
			}
			p := wantProblem(t, "GET /readyz", r, 503, codeUnavailable)
			for _, want := range tt.detail {
				if !strings.Contains(p.Detail, want) {
					t.Errorf("GET /readyz: detail %q does not name %q", p.Detail, want)
				}
			}
		})
	}
}

// TestReadyzFollowsMigrations runs /readyz against a real database before
// and after its migrations.
func TestReadyzFollowsMigrations(t *testing.T) {
	t.Parallel()
	url := pgtest.NewEmptyURL(t)
	pool := pgtest.NewPoolOn(t, url)
	s, _ := newObservedServer(t, db.New(pool), postgres.Probe{Q: pool}, slog.LevelWarn)

	p := wantProblem(t, "GET /readyz before the migrations", s.get("/readyz"), 503, codeUnavailable)
	if !strings.Contains(p.Detail, "at version 0") || !strings.Contains(p.Detail, fmt.Sprintf("needs version %d", migrations.Latest())) {
		t.Errorf("GET /readyz before the migrations: detail %q, want versions 0 and %d named", p.Detail, migrations.Latest())
	}
	// A deploy that skipped the migrations: API requests are 503, not 500.
	wantProblem(t, "GET /users/1 before the migrations", s.get("/users/1"), 503, codeUnavailable)

	pgtest.Migrate(t, url)
	if r := s.get("/readyz"); r.status != http.StatusOK {
		t.Errorf("GET /readyz after the migrations = %d %s, want 200", r.status, r.body)
	}
}

// TestClientGoneIs499 hangs up on a request that waits on the database:
// it is logged and counted as 499, not as a failure of the database.
func TestClientGoneIs499(t *testing.T) {
	t.Parallel()
	s, logs := newObservedServer(t, faultyStore{block: true}, okDatabase{}, slog.LevelInfo)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url+"/users/1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set(requestIDHeader, "gone-1")
	if res, err := http.DefaultClient.Do(req); err == nil {
		res.Body.Close()
		t.Fatalf("GET /users/1 answered %d before the client gave up", res.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := withID(logs.records(t), "gone-1")
		if len(recs) > 0 {
			if len(recs) != 1 || recs[0]["msg"] != "request" || recs[0]["status"] != float64(499) {
				t.Errorf("log of a request whose client hung up = %v, want only its access line, status 499", recs)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no log line for the request whose client hung up")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if r := s.get("/metrics"); !strings.Contains(string(r.body), `usersvc_http_requests_total{code="499",method="GET",route="/users/{id}"} 1`) {
		t.Error("/metrics does not count the request as a 499")
	}
}
