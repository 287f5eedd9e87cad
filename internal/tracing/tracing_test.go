package tracing

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

type handler struct{}

func (*handler) ServeHTTP(http.ResponseWriter, *http.Request) {}

// TestOff checks that tracing stays off, and wraps nothing, unless an OTLP
// endpoint is set and nothing turns it off.
func TestOff(t *testing.T) {
	for _, tt := range []struct {
		name string
		env  map[string]string
	}{
		{"no endpoint", nil},
		{"disabled", map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}},
		{"no exporter", map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318", "OTEL_TRACES_EXPORTER": "none"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setenv(t, tt.env)
			stop, err := Start(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), "test")
			if err != nil || stop != nil {
				t.Fatalf("Start = %v, %v; want off", stop != nil, err)
			}
			h := &handler{}
			if got := Handler(h, func(*http.Request) bool { return false }); got != http.Handler(h) {
				t.Errorf("Handler wrapped the handler with tracing off")
			}
			if PgxTracer() != nil {
				t.Errorf("PgxTracer is not nil with tracing off")
			}
		})
	}
}

// TestStartRefuses checks that values the service cannot honour stop it
// with a message that names the variable.
func TestStartRefuses(t *testing.T) {
	for _, tt := range []struct{ name, value string }{
		{"OTEL_TRACES_EXPORTER", "zipkin"},
		{"OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"},
	} {
		setenv(t, map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", tt.name: tt.value})
		stop, err := Start(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), "test")
		if err == nil || !strings.Contains(err.Error(), tt.name) || stop != nil {
			t.Errorf("%s=%s: Start = %v, %v; want an error naming %s", tt.name, tt.value, stop != nil, err, tt.name)
		}
	}
}

func TestStatementName(t *testing.T) {
	for sql, want := range map[string]string{
		"-- name: GetUser :one\nSELECT id FROM users WHERE id = $1": "GetUser",
		"begin":                       "BEGIN",
		"  select set_config($1, $2)": "SELECT",
		"":                            "SQL",
	} {
		if got := statementName(sql); got != want {
			t.Errorf("statementName(%q) = %q, want %q", sql, got, want)
		}
	}
}

// setenv sets env and unsets every other OTEL_ variable the tests use, for
// the test.
func setenv(t *testing.T, env map[string]string) {
	t.Helper()
	for _, name := range []string{"OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED",
		"OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"} {
		t.Setenv(name, env[name])
	}
}
