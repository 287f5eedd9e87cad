package main

import (
	"bytes"
	"context"
	"encoding/json/v2"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"usersvc/internal/config"
	"usersvc/internal/pgtest"
	"usersvc/migrations"
)

// TestRunServe starts the whole program as main does, with AUTO_MIGRATE on
// an empty database, uses it, reads its logs and metrics, and stops it as
// a signal would.
func TestRunServe(t *testing.T) {
	addr := pgtest.FreeAddr(t)
	databaseURL := pgtest.NewEmptyURL(t)
	u, err := url.Parse(databaseURL)
	if err != nil {
		t.Fatal(err)
	}
	password, ok := u.User.Password()
	if !ok || password == "" {
		t.Fatalf("test database URL %s has no password to look for in the log", databaseURL)
	}
	setenv(t, map[string]string{
		"DATABASE_URL": databaseURL,
		"HTTP_ADDR":    addr,
		"AUTO_MIGRATE": "true",
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	runErr := make(chan error, 1)
	go func() { runErr <- run(ctx, []string{"serve"}, &stdout, &stderr) }()

	base := "http://" + addr
	waitFor(t, base+"/healthz", 10*time.Second, runErr)
	waitFor(t, base+"/readyz", 10*time.Second, runErr)
	req, err := http.NewRequest(http.MethodPost, base+"/users", strings.NewReader(`{"name":"via run"}`))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-ID", "run-test-1")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusCreated || res.Header.Get("X-Request-ID") != "run-test-1" {
		t.Errorf("POST /users: status = %d, X-Request-ID %q; want 201, run-test-1", res.StatusCode, res.Header.Get("X-Request-ID"))
	}
	checkMetrics(t, base)
	checkServerLimits(t, base)

	// /readyz turns 200 once the migration commits, a moment before goose
	// returns and the line is logged; a cancel in between stops goose
	// before it says what it applied.
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(stderr.String(), `"msg":"migration applied"`); {
		if time.Now().After(deadline) {
			t.Fatalf("no migration applied line 10s after /readyz turned 200:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-runErr:
		if err != nil {
			t.Errorf("run after cancel = %v, want nil; log:\n%s", err, stderr.String())
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return within 15s of cancel")
	}

	logs := logRecords(t, stderr.String())
	for _, msg := range []string{"migration applied", "listening", "shutting down", "stopped"} {
		if findRecord(logs, "msg", msg) == nil {
			t.Errorf("log lacks %q:\n%s", msg, stderr.String())
		}
	}
	if start := findRecord(logs, "msg", "listening"); start != nil {
		db := config.Config{DatabaseURL: databaseURL}.DatabaseHost()
		if start["version"] != buildVersion() || start["addr"] != addr || start["db"] != db || start["schema_version"] != float64(migrations.Latest()) || start["auth_tokens"] != float64(0) {
			t.Errorf("start-up line = %v, want version %s, addr %s, db %s, schema_version %d, auth_tokens 0", start, buildVersion(), addr, db, migrations.Latest())
		}
	}
	if warning := findRecord(logs, "msg", authOffWarning); warning == nil || warning["level"] != "WARN" {
		t.Errorf("without tokens, the log has no warning %q:\n%s", authOffWarning, stderr.String())
	}
	access := findRecord(logs, "request_id", "run-test-1")
	if access == nil || access["route"] != "/users" || access["status"] != float64(201) {
		t.Errorf("access line of run-test-1 = %v, want route /users, status 201", access)
	}
	for _, msg := range []string{"listening", "migration applied", "shutting down"} {
		if rec := findRecord(logs, "msg", msg); rec != nil {
			checkLogFieldsDocumented(t, rec)
		}
	}
	checkLogFieldsDocumented(t, access)
	if strings.Contains(stderr.String(), password) {
		t.Errorf("log shows the database password:\n%s", stderr.String())
	}
}

// checkMetrics scrapes base/metrics, which must pass promlint and hold
// every family docs/operations.md lists.
func checkMetrics(t *testing.T, base string) {
	t.Helper()
	res, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status = %d, want 200", res.StatusCode)
	}
	problems, err := promlint.New(bytes.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	for _, family := range documentedMetrics {
		if !bytes.Contains(body, []byte("\n# TYPE "+family+" ")) {
			t.Errorf("GET /metrics lacks %s", family)
		}
	}
	if want := `usersvc_build_info{goversion="` + runtime.Version() + `",version="` + buildVersion() + `"} 1`; !bytes.Contains(body, []byte(want)) {
		t.Errorf("GET /metrics lacks %s", want)
	}
}

// documentedMetrics are the metric families docs/operations.md lists;
// TestREADMEDocumentsOperations checks that it does.
var documentedMetrics = []string{
	"usersvc_http_requests_total",
	"usersvc_http_request_duration_seconds",
	"usersvc_build_info",
	"usersvc_db_pool_acquired_connections",
	"usersvc_db_pool_idle_connections",
	"usersvc_db_pool_constructing_connections",
	"usersvc_db_pool_total_connections",
	"usersvc_db_pool_max_connections",
	"usersvc_db_pool_acquires_total",
	"usersvc_db_pool_acquire_duration_seconds_total",
	"usersvc_db_pool_empty_acquires_total",
	"usersvc_db_pool_empty_acquire_wait_seconds_total",
	"usersvc_db_pool_canceled_acquires_total",
	"usersvc_db_pool_new_connections_total",
	"usersvc_db_pool_max_lifetime_destroys_total",
	"usersvc_db_pool_max_idle_destroys_total",
	"go_goroutines",
	"process_resident_memory_bytes",
}

// checkServerLimits checks the limit on header bytes, which a test can
// see without waiting for a timeout. (net/http allows 4 KiB of slack.)
func checkServerLimits(t *testing.T, base string) {
	t.Helper()
	for _, tt := range []struct {
		padding int
		want    int
	}{
		{maxHeaderBytes - 4<<10, http.StatusOK},
		{maxHeaderBytes + 8<<10, http.StatusRequestHeaderFieldsTooLarge},
	} {
		req, err := http.NewRequest(http.MethodGet, base+"/healthz", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-Padding", strings.Repeat("x", tt.padding))
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.want {
			t.Errorf("GET /healthz with a %d-byte header: status = %d, want %d", tt.padding, res.StatusCode, tt.want)
		}
		// net/http's own refusal, turned into a problem like any other.
		if tt.want != http.StatusOK && (res.Header.Get("Content-Type") != "application/problem+json" || res.Header.Get("X-Request-Id") == "") {
			t.Errorf("GET /healthz with a %d-byte header: %d with Content-Type %q, X-Request-Id %q; want a problem document with a request id",
				tt.padding, res.StatusCode, res.Header.Get("Content-Type"), res.Header.Get("X-Request-Id"))
		}
	}
}

func TestHTTPServerLimits(t *testing.T) {
	cfg := config.Config{HTTPAddr: ":0", RequestTimeout: 2 * time.Second, BodyTimeout: 10 * time.Second}
	srv := newHTTPServer(context.Background(), cfg, http.NotFoundHandler(), slog.New(slog.DiscardHandler))
	for _, tt := range []struct {
		name      string
		got, want time.Duration
	}{
		{"ReadHeaderTimeout", srv.ReadHeaderTimeout, 5 * time.Second},
		{"ReadTimeout", srv.ReadTimeout, 15 * time.Second},   // ReadHeaderTimeout + BODY_TIMEOUT
		{"WriteTimeout", srv.WriteTimeout, 17 * time.Second}, // BODY_TIMEOUT + REQUEST_TIMEOUT + 5s
		{"IdleTimeout", srv.IdleTimeout, 75 * time.Second},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v (as docs/operations.md, Life cycle, says)", tt.name, tt.got, tt.want)
		}
	}
	// No timeout may cut off an answer still allowed: one whose body came
	// at BODY_TIMEOUT and whose database work took REQUEST_TIMEOUT, with
	// time to write it. WriteTimeout counts from the end of the headers,
	// ReadTimeout from their start.
	if last := cfg.BodyTimeout + cfg.RequestTimeout + config.WriteMargin; srv.WriteTimeout < last {
		t.Errorf("WriteTimeout %v: an answer ready %v after the headers would be cut off", srv.WriteTimeout, cfg.BodyTimeout+cfg.RequestTimeout)
	}
	if srv.ReadTimeout < srv.ReadHeaderTimeout+cfg.BodyTimeout {
		t.Errorf("ReadTimeout %v: a body that comes within BODY_TIMEOUT of slow headers would be cut off", srv.ReadTimeout)
	}
	if srv.MaxHeaderBytes != 64<<10 {
		t.Errorf("MaxHeaderBytes = %d, want 64 KiB", srv.MaxHeaderBytes)
	}
	if !srv.DisableGeneralOptionsHandler {
		t.Error("DisableGeneralOptionsHandler is off: net/http answers OPTIONS * itself")
	}
}

// logRecords decodes JSON log lines.
func logRecords(t *testing.T, log string) []map[string]any {
	t.Helper()
	var recs []map[string]any
	for line := range strings.Lines(log) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q is not JSON: %v", line, err)
		}
		recs = append(recs, rec)
	}
	return recs
}

// findRecord returns the first record whose key has value, or nil.
func findRecord(recs []map[string]any, key string, value any) map[string]any {
	for _, rec := range recs {
		if rec[key] == value {
			return rec
		}
	}
	return nil
}

func TestRunMigrateCycle(t *testing.T) {
	setenv(t, map[string]string{"DATABASE_URL": pgtest.NewEmptyURL(t)})
	ctx := context.Background()
	steps := []struct {
		args []string
		want []string
	}{
		{[]string{"migrate", "status"}, []string{"00001_create_users.sql", "00002_idempotency_keys.sql", "00003_user_changes.sql", "pending"}},
		{[]string{"migrate", "up"}, []string{"applied 00001_create_users.sql", "applied 00002_idempotency_keys.sql", "applied 00003_user_changes.sql", "schema version 3 (latest embedded: 3)"}},
		{[]string{"migrate", "up"}, []string{"no pending migrations", "schema version 3"}},
		{[]string{"migrate", "status"}, []string{"00001_create_users.sql", "00002_idempotency_keys.sql", "00003_user_changes.sql", "applied"}},
		{[]string{"migrate", "down"}, []string{"rolled back 00003_user_changes.sql", "schema version 2"}},
		{[]string{"migrate", "down"}, []string{"rolled back 00002_idempotency_keys.sql", "schema version 1"}},
		{[]string{"migrate", "down"}, []string{"rolled back 00001_create_users.sql", "schema version 0"}},
		{[]string{"migrate", "down"}, []string{"no migration to roll back", "schema version 0"}},
		{[]string{"migrate", "up"}, []string{"applied 00001_create_users.sql", "applied 00002_idempotency_keys.sql", "applied 00003_user_changes.sql", "schema version 3"}},
		{[]string{"migrate", "version"}, []string{"schema version 3 (latest embedded: 3)"}},
		{[]string{"migrate", "redo"}, []string{"rolled back 00003_user_changes.sql", "applied 00003_user_changes.sql", "schema version 3"}},
	}
	for _, step := range steps {
		var stdout, stderr bytes.Buffer
		if err := run(ctx, step.args, &stdout, &stderr); err != nil {
			t.Fatalf("run %q = %v; stderr %s", step.args, err, stderr.String())
		}
		for _, want := range step.want {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("run %q: output lacks %q:\n%s", step.args, want, stdout.String())
			}
		}
	}
}

func TestRunErrors(t *testing.T) {
	for _, tt := range []struct {
		name     string
		args     []string
		env      map[string]string
		wantErr  string
		wantExit int
	}{
		{"unknown command", []string{"frobnicate"}, nil, `unknown command "frobnicate"`, 2},
		{"unknown flag", []string{"serve", "-verbose"}, nil, "flag provided but not defined", 2},
		{"serve with arguments", []string{"serve", "now"}, nil, "unexpected arguments", 2},
		{"serve without DATABASE_URL", []string{"serve"}, nil, "DATABASE_URL: required", 1},
		{"migrate without DATABASE_URL", []string{"migrate", "up"}, nil, "DATABASE_URL: required", 1},
		{"migrate without a command", []string{"migrate"}, map[string]string{"DATABASE_URL": "postgres://localhost/x"}, "expected exactly one", 2},
		{"migrate sideways", []string{"migrate", "sideways"}, map[string]string{"DATABASE_URL": "postgres://localhost/x"}, `unknown command "sideways"`, 2},
		{"migrate to no database", []string{"migrate", "up"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@" + pgtest.FreeAddr(t) + "/x?connect_timeout=2"}, "migrate up", 1},
		{"healthcheck with arguments", []string{"healthcheck", "please"}, nil, "unexpected arguments", 2},
		{"healthcheck with nothing listening", []string{"healthcheck"}, map[string]string{"HTTP_ADDR": pgtest.FreeAddr(t)}, "connection refused", 1},
		{"healthcheck with a bad address", []string{"healthcheck"}, map[string]string{"HTTP_ADDR": "8080"}, "HTTP_ADDR", 1},
		{"malformed duration", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "REQUEST_TIMEOUT": "soon"}, "REQUEST_TIMEOUT", 1},
		{"malformed bool", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "AUTO_MIGRATE": "perhaps"}, "AUTO_MIGRATE", 1},
		{"malformed level", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "LOG_LEVEL": "loud"}, "LOG_LEVEL", 1},
		{"bad log format", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "LOG_FORMAT": "xml"}, "LOG_FORMAT", 1},
		{"negative pool size", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "DB_MAX_CONNS": "-1"}, "DB_MAX_CONNS", 1},
		{"zero timeout", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "SHUTDOWN_TIMEOUT": "0s"}, "SHUTDOWN_TIMEOUT", 1},
		{"malformed URL", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@[::1"}, "DATABASE_URL", 1},
		{"auth tokens file missing", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "AUTH_TOKENS_FILE": "/nonexistent/tokens"}, "AUTH_TOKENS_FILE: open /nonexistent/tokens: no such file", 1},
		{"auth tokens twice", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "AUTH_TOKENS": "hunter2hunter2hunter2", "AUTH_TOKENS_FILE": "/dev/null"}, "AUTH_TOKENS: AUTH_TOKENS_FILE is set too", 1},
		{"auth token too short", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "AUTH_TOKENS": "hunter2"}, "AUTH_TOKENS: token 1 of 1 is shorter than 16 characters", 1},
		{"unusable address", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "HTTP_ADDR": "bad::addr::"}, "listen on bad::addr::", 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setenv(t, tt.env)
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("run %q = %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
			var reported bytes.Buffer
			if got := exitCode(err, &reported); got != tt.wantExit {
				t.Errorf("run %q: exit status %d, want %d", tt.args, got, tt.wantExit)
			}
			if !strings.HasPrefix(reported.String(), "usersvc: ") {
				t.Errorf("run %q: reported %q, want it behind usersvc: ", tt.args, reported.String())
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(stderr.String(), "hunter2") {
				t.Errorf("run %q: the password leaks: %v %s", tt.args, err, stderr.String())
			}
		})
	}
}

// TestCommandsGiveUpOnSilentDatabase runs every migrate command against a
// database that accepts connections and never answers, and healthcheck
// against such a server: each exits 1 within its bound, naming what it
// waited for and never the password.
func TestCommandsGiveUpOnSilentDatabase(t *testing.T) {
	addr := silentAddr(t)
	const bound = time.Second
	for _, tt := range []struct {
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"migrate up", []string{"migrate", "up"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@" + addr + "/users", "DB_CONNECT_TIMEOUT": "1s"},
			"migrate up: the database at " + addr + "/users did not answer within 1s"},
		{"migrate down", []string{"migrate", "down"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@" + addr + "/users", "DB_CONNECT_TIMEOUT": "1s"},
			"migrate down: the database at " + addr + "/users did not answer within 1s"},
		{"migrate redo", []string{"migrate", "redo"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@" + addr + "/users", "DB_CONNECT_TIMEOUT": "1s"},
			"migrate redo: the database at " + addr + "/users did not answer within 1s"},
		{"migrate status", []string{"migrate", "status"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@" + addr + "/users", "DB_CONNECT_TIMEOUT": "1s"},
			"migrate status: the database at " + addr + "/users did not answer within 1s"},
		{"migrate version", []string{"migrate", "version"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@" + addr + "/users", "DB_CONNECT_TIMEOUT": "1s"},
			"migrate version: the database at " + addr + "/users did not answer within 1s"},
		{"connect_timeout in the URL wins", []string{"migrate", "up"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@" + addr + "/users?connect_timeout=1", "DB_CONNECT_TIMEOUT": "1m"},
			"migrate up: the database at " + addr + "/users did not answer within 1s"},
		{"healthcheck", []string{"healthcheck", "-timeout", "1s"}, map[string]string{"HTTP_ADDR": addr},
			"healthcheck: GET http://" + addr + "/healthz: no answer within 1s"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setenv(t, tt.env)
			// Without a bound of its own the command waits for this.
			ctx, cancel := context.WithTimeout(context.Background(), bound+5*time.Second)
			defer cancel()
			var stdout, stderr bytes.Buffer
			start := time.Now()
			err := run(ctx, tt.args, &stdout, &stderr)
			took := time.Since(start)
			if took < bound/2 || took > bound+2*time.Second {
				t.Errorf("run %q returned after %v, want about %v", tt.args, took, bound)
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("run %q = %v, want an error containing %q", tt.args, err, tt.wantErr)
			}
			if got := exitCode(err, io.Discard); got != 1 {
				t.Errorf("run %q: exit status %d, want 1", tt.args, got)
			}
			if strings.Contains(err.Error(), "hunter2") || strings.Contains(stderr.String(), "hunter2") {
				t.Errorf("run %q: the password leaks: %v %s", tt.args, err, stderr.String())
			}
		})
	}
}

func TestRunVersion(t *testing.T) {
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"version"}, &stdout, &bytes.Buffer{}); err != nil {
		t.Fatal(err)
	}
	if got, want := stdout.String(), fmt.Sprintf("usersvc %s\n", buildVersion()); got != want || want == "usersvc \n" {
		t.Errorf("version printed %q, want %q", got, want)
	}
}

func TestRunHelp(t *testing.T) {
	setenv(t, nil)
	for _, args := range [][]string{{"-h"}, {"help"}, {"serve", "-h"}, {"migrate", "-h"}} {
		var stdout, stderr bytes.Buffer
		if err := run(context.Background(), args, &stdout, &stderr); err != nil {
			t.Errorf("run %q = %v, want nil", args, err)
		}
		if !strings.Contains(stdout.String()+stderr.String(), "usage") {
			t.Errorf("run %q printed no usage: %q %q", args, stdout.String(), stderr.String())
		}
	}
}

func TestLogFormats(t *testing.T) {
	for _, tt := range []struct {
		format string
		want   string
	}{
		{"json", `"msg":"hello","user_id":7}`},
		{"text", `level=INFO msg=hello user_id=7`},
	} {
		var out bytes.Buffer
		newLogger(config.Config{LogFormat: tt.format, LogLevel: slog.LevelInfo}, &out).Info("hello", slog.Int("user_id", 7))
		if !strings.Contains(out.String(), tt.want) {
			t.Errorf("LOG_FORMAT=%s logged %q, want it to contain %q", tt.format, out.String(), tt.want)
		}
	}
}

func TestTuneGC(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	if got := tuneGC(func(string) (string, bool) { return "", false }); got != config.GCPercent || debug.SetGCPercent(config.GCPercent) != config.GCPercent {
		t.Errorf("tuneGC without GOGC = %d, want %d in force", got, config.GCPercent)
	}
	debug.SetGCPercent(150) // as GOGC=150 would have set it at start
	if got := tuneGC(func(k string) (string, bool) { return "150", k == "GOGC" }); got != 150 || debug.SetGCPercent(150) != 150 {
		t.Errorf("tuneGC with GOGC=150 = %d, want 150 left in force", got)
	}
}
