//go:build tracing

// The test in this file follows requests of serve into Jaeger, a real
// tracing backend that it starts on loopback: the Jaeger v2 binary that
// make test-tracing builds from tools/jaeger/go.mod (an OpenTelemetry
// Collector distribution: OTLP in, a query API out, traces in memory).

package main

import (
	"bytes"
	"encoding/json/v2"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"usersvc/internal/pgtest"
)

// jaegerConfig is Jaeger's configuration: OTLP over HTTP in, the query API
// out, traces in memory, every port on loopback and nothing else.
const jaegerConfig = `service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 10000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:%d
    grpc:
      endpoint: 127.0.0.1:%d
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:%d
processors:
  batch:
    timeout: 100ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
`

// jaeger is a Jaeger process of the test's.
type jaeger struct {
	otlp, query string // base URLs
	cmd         *exec.Cmd
	exited      chan error
	killOnce    sync.Once
}

// startJaeger starts Jaeger and waits for its query API.
func startJaeger(t *testing.T) *jaeger {
	t.Helper()
	bin := os.Getenv("JAEGER")
	if bin == "" {
		t.Fatal("JAEGER is not set: run make test-tracing, which builds Jaeger from tools/jaeger/go.mod")
	}
	queryPort, queryGRPC, otlpPort := pgtest.FreePort(t), pgtest.FreePort(t), pgtest.FreePort(t)
	conf := filepath.Join(t.TempDir(), "jaeger.yaml")
	if err := os.WriteFile(conf, fmt.Appendf(nil, jaegerConfig, queryPort, queryGRPC, otlpPort), 0o644); err != nil {
		t.Fatal(err)
	}
	j := &jaeger{
		otlp:   fmt.Sprintf("http://127.0.0.1:%d", otlpPort),
		query:  fmt.Sprintf("http://127.0.0.1:%d", queryPort),
		cmd:    exec.Command(bin, "--config", conf),
		exited: make(chan error, 1),
	}
	var log syncBuffer
	j.cmd.Stdout, j.cmd.Stderr = &log, &log
	if err := j.cmd.Start(); err != nil {
		t.Fatalf("start jaeger: %v", err)
	}
	go func() { j.exited <- j.cmd.Wait() }()
	t.Cleanup(j.kill)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if res, err := http.Get(j.query + "/api/services"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				t.Logf("jaeger (pid %d): OTLP on %s, query API on %s", j.cmd.Process.Pid, j.otlp, j.query)
				return j
			}
		}
		select {
		case err := <-j.exited:
			t.Fatalf("jaeger exited: %v\n%s", err, log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("jaeger's query API does not answer after 30s:\n%s", log.String())
		}
	}
}

// kill stops Jaeger, by its PID, and waits for it; it may be called again.
func (j *jaeger) kill() {
	j.killOnce.Do(func() {
		_ = j.cmd.Process.Signal(syscall.SIGKILL)
		<-j.exited
	})
}

// jaegerSpan is what the test reads of a span from Jaeger's query API.
type jaegerSpan struct {
	TraceID       string `json:"traceID"`
	SpanID        string `json:"spanID"`
	OperationName string `json:"operationName"`
	References    []struct {
		RefType string `json:"refType"`
		SpanID  string `json:"spanID"`
	} `json:"references"`
	Tags []struct {
		Key   string `json:"key"`
		Value any    `json:"value"`
	} `json:"tags"`
}

func (s jaegerSpan) tag(key string) string {
	for _, tag := range s.Tags {
		if tag.Key == key {
			return fmt.Sprint(tag.Value)
		}
	}
	return ""
}

func (s jaegerSpan) parent() string {
	for _, r := range s.References {
		if r.RefType == "CHILD_OF" {
			return r.SpanID
		}
	}
	return ""
}

// trace waits up to 10 s for the trace id to hold a server span and at
// least one SQL statement's span, and returns its spans and the raw answer.
func (j *jaeger) trace(t *testing.T, id string) ([]jaegerSpan, []byte) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		var answer struct {
			Data []struct {
				TraceID string       `json:"traceID"`
				Spans   []jaegerSpan `json:"spans"`
			} `json:"data"`
		}
		res, err := http.Get(j.query + "/api/traces/" + id)
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if res.StatusCode == http.StatusOK {
			if err := json.Unmarshal(body, &answer); err != nil {
				t.Fatalf("GET /api/traces/%s: %v: %s", id, err, body)
			}
			if len(answer.Data) > 1 {
				t.Fatalf("GET /api/traces/%s: %d traces, want one: %s", id, len(answer.Data), body)
			}
			if len(answer.Data) == 1 {
				spans := answer.Data[0].Spans
				if slices.ContainsFunc(spans, isServer) && slices.ContainsFunc(spans, isStatement) {
					return spans, body
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("trace %s not in jaeger with its server and SQL spans after 10s: %d %s", id, res.StatusCode, body)
		}
	}
}

func isServer(s jaegerSpan) bool { return s.tag("span.kind") == "server" }

// isStatement reports whether s is the span of an SQL statement, not of
// a connect or a pool's acquire.
func isStatement(s jaegerSpan) bool {
	return s.tag("db.system") == "postgresql" && s.OperationName != "connect" && s.OperationName != "pool.acquire"
}

// traceparent returns a W3C traceparent for a new trace: its trace id, its
// parent's span id, and the header.
func traceparent(n int) (traceID, parentID, header string) {
	traceID = fmt.Sprintf("%016x%016x", time.Now().UnixNano(), n+1)
	parentID = fmt.Sprintf("%016x", 0xfeed0000+n)
	return traceID, parentID, "00-" + traceID + "-" + parentID + "-01"
}

// TestTracing: a request with a traceparent appears in Jaeger as one
// trace of that id, its server span the child of the given parent and each
// SQL statement a span below it, with nothing secret in any of them; the
// log lines carry the trace; a 400 is no error on the server; spans are
// flushed on SIGTERM; and Jaeger going away costs requests nothing.
func TestTracing(t *testing.T) {
	j := startJaeger(t)
	databaseURL := pgtest.NewURL(t)
	const token = "tracing-test-token-0123456789"
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", j.otlp)
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", "usersvc-tracing-test")
	env := map[string]string{"DATABASE_URL": databaseURL, "AUTH_TOKENS": token, "SHUTDOWN_DELAY": "0s", "SHUTDOWN_TIMEOUT": "3s"}

	t.Run("flushed on SIGTERM", func(t *testing.T) {
		// Spans wait a minute for their batch: only the shutdown sends them.
		t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "60000")
		s := startServe(t, env)
		traceID, _, header := traceparent(0)
		status, _ := s.requestWith(t, "GET", "/users?limit=1", "", http.Header{"Traceparent": {header}, "Authorization": {"Bearer " + token}})
		if status != http.StatusOK {
			t.Fatalf("GET /users: %d", status)
		}
		// The probes, which machines poll, have no spans.
		probeTrace, _, probeHeader := traceparent(10)
		if status, _ := s.requestWith(t, "GET", "/readyz", "", http.Header{"Traceparent": {probeHeader}}); status != http.StatusOK {
			t.Fatalf("GET /readyz: %d", status)
		}
		start := time.Now()
		if err := s.stop(t, 10*time.Second); err != nil {
			t.Fatalf("serve after SIGTERM: %v", err)
		}
		t.Logf("serve stopped %v after SIGTERM", time.Since(start).Round(time.Millisecond))
		spans, _ := j.trace(t, traceID)
		t.Logf("trace %s in jaeger after the shutdown: %d spans", traceID, len(spans))
		if res, err := http.Get(j.query + "/api/traces/" + probeTrace); err != nil || res.StatusCode != http.StatusNotFound {
			t.Errorf("GET /api/traces/%s, the trace of a GET /readyz: %v %v, want 404: probes have no spans", probeTrace, res, err)
		} else {
			res.Body.Close()
		}
	})

	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	s := startServe(t, env)
	auth := "Bearer " + token

	t.Run("a keyed create", func(t *testing.T) {
		traceID, parentID, header := traceparent(1)
		const name, key = "traced user 5f1d", "tracing-key-9b2c41e7"
		status, h := s.requestWith(t, "POST", "/users", `{"name":"`+name+`"}`, http.Header{
			"Traceparent": {header}, "Tracestate": {"usersvc=test"}, "Authorization": {auth}, "Idempotency-Key": {`"` + key + `"`}})
		if status != http.StatusCreated {
			t.Fatalf("POST /users: %d", status)
		}
		spans, raw := j.trace(t, traceID)
		t.Logf("trace %s, as /api/traces/%s returned it: %d spans", traceID, traceID, len(spans))
		var server jaegerSpan
		for _, sp := range spans {
			if isServer(sp) {
				server = sp
			}
			var line strings.Builder
			fmt.Fprintf(&line, "span %s %q parent %s:", sp.SpanID, sp.OperationName, sp.parent())
			for _, tag := range sp.Tags {
				fmt.Fprintf(&line, " %s=%v", tag.Key, tag.Value)
			}
			t.Log(line.String())
		}
		if server.OperationName != "POST /users" || server.parent() != parentID {
			t.Errorf("server span %q, parent %s; want POST /users, child of %s", server.OperationName, server.parent(), parentID)
		}
		if got := server.tag("http.route"); got != "/users" {
			t.Errorf("server span http.route = %q, want /users", got)
		}
		var statements []string
		for _, sp := range spans {
			if isStatement(sp) {
				statements = append(statements, sp.OperationName)
				if sp.parent() != server.SpanID {
					t.Errorf("statement span %s %q is the child of %s, want the server span %s", sp.SpanID, sp.OperationName, sp.parent(), server.SpanID)
				}
			}
		}
		if !slices.Contains(statements, "CreateUserIdempotently") {
			t.Errorf("statement spans %q, want one named CreateUserIdempotently (sqlc's name)", statements)
		}
		for _, secret := range []string{token, key, name, "INSERT", "idempotency_keys"} {
			if bytes.Contains(raw, []byte(secret)) {
				t.Errorf("the trace holds %q: no span may carry a token, a key, a value or the SQL", secret)
			}
		}
		// Every log line of the request carries its trace and server span.
		requestID := h.Get("X-Request-Id")
		var lines int
		for _, line := range strings.Split(s.logs.String(), "\n") {
			if !strings.Contains(line, requestID) {
				continue
			}
			lines++
			var rec struct {
				TraceID string `json:"trace_id"`
				SpanID  string `json:"span_id"`
			}
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("log line %s: %v", line, err)
			}
			if rec.TraceID != traceID || rec.SpanID != server.SpanID {
				t.Errorf("log line %s: trace_id %q span_id %q, want %s and %s", line, rec.TraceID, rec.SpanID, traceID, server.SpanID)
			}
		}
		if lines == 0 {
			t.Errorf("no log line has the request id %s:\n%s", requestID, s.logs.String())
		}
	})

	t.Run("a 400 is no error", func(t *testing.T) {
		status, _ := s.requestWith(t, "POST", "/users", `{"name":"taken"}`, http.Header{"Authorization": {auth}})
		if status != http.StatusCreated {
			t.Fatalf("POST /users: %d", status)
		}
		traceID, _, header := traceparent(2)
		status, _ = s.requestWith(t, "POST", "/users", `{"name":"taken"}`, http.Header{"Traceparent": {header}, "Authorization": {auth}})
		if status != http.StatusBadRequest {
			t.Fatalf("POST /users of a taken name: %d, want 400", status)
		}
		spans, _ := j.trace(t, traceID)
		server := spans[slices.IndexFunc(spans, isServer)]
		if got := server.tag("http.response.status_code"); got != "400" {
			t.Errorf("server span http.response.status_code = %q, want 400", got)
		}
		if code, e := server.tag("otel.status_code"), server.tag("error"); code == "ERROR" || e == "true" {
			t.Errorf("server span of a 400: otel.status_code %q, error %q; want no error status (4xx is the client's)", code, e)
		}
	})

	t.Run("jaeger down", func(t *testing.T) { testCollectorAway(t, s, auth, j.kill) })
	t.Run("collector silent", func(t *testing.T) {
		// A collector whose host vanished: connections are accepted and
		// never answered, so each export waits out its timeout.
		t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://"+silentAddr(t))
		t.Setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "60000")
		testCollectorAway(t, startServe(t, env), auth, func() {})
	})
}

// testCollectorAway sends GET /users to s before and after away() takes
// the collector away: every request still answers 200, none more than 5ms
// slower than the slowest before, a log line says that spans were lost,
// and SIGTERM still stops s within SHUTDOWN_TIMEOUT (3s).
func testCollectorAway(t *testing.T, s *serving, auth string, away func()) {
	const n = 200
	get := func() time.Duration {
		start := time.Now()
		if status, _ := s.requestWith(t, "GET", "/users?limit=1", "", http.Header{"Authorization": {auth}}); status != http.StatusOK {
			t.Fatalf("GET /users with the collector away: %d, want 200", status)
		}
		return time.Since(start)
	}
	var before, after []time.Duration
	for range n {
		before = append(before, get())
	}
	away()
	for i := range n {
		after = append(after, get())
		if i == n/2 {
			time.Sleep(300 * time.Millisecond) // a few exports fail meanwhile
		}
	}
	slowestBefore, slowestAfter := slices.Max(before), slices.Max(after)
	slices.Sort(before)
	slices.Sort(after)
	t.Logf("GET /users, %d requests each: before median %v slowest %v; collector away median %v slowest %v",
		n, before[n/2], slowestBefore, after[n/2], slowestAfter)
	if slowestAfter > slowestBefore+5*time.Millisecond {
		t.Errorf("with the collector away the slowest request took %v, more than 5ms over the slowest before (%v)", slowestAfter, slowestBefore)
	}
	start := time.Now()
	if err := s.stop(t, 10*time.Second); err != nil {
		t.Errorf("serve after SIGTERM with the collector away: %v, want nil", err)
	}
	took := time.Since(start)
	t.Logf("serve stopped %v after SIGTERM with the collector away", took.Round(time.Millisecond))
	if took > 4*time.Second {
		t.Errorf("serve took %v to stop with the collector away, want SHUTDOWN_TIMEOUT (3s) at most", took)
	}
	if logs := s.logs.String(); !strings.Contains(logs, "traces: export failed") && !strings.Contains(logs, "traces: spans lost at shutdown") {
		t.Errorf("no log line says that spans were lost:\n%s", logs)
	}
}
