package config

import (
	"log/slog"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"
)

// setenv sets vars and unsets the other variables for the test.
func setenv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, k := range Variables() {
		v, ok := vars[k]
		t.Setenv(k, v)
		if !ok {
			os.Unsetenv(k)
		}
	}
}

// TestDefaults pins the defaults that the README documents.
func TestDefaults(t *testing.T) {
	setenv(t, nil)
	got, err := Load()
	if err != nil {
		t.Fatalf("Load() with nothing set = %v", err)
	}
	want := Config{
		HTTPAddr:        ":8080",
		LogLevel:        slog.LevelInfo,
		LogFormat:       "json",
		RequestTimeout:  5 * time.Second,
		ShutdownTimeout: 15 * time.Second,
		IdempotencyTTL:  24 * time.Hour,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load() = %+v, want %+v", got, want)
	}
	if err := got.RequireDatabase(); err == nil || !strings.Contains(err.Error(), "DATABASE_URL") {
		t.Errorf("RequireDatabase() without DATABASE_URL = %v, want an error naming it", err)
	}
}

func TestLoad(t *testing.T) {
	setenv(t, map[string]string{
		"DATABASE_URL":     "postgres://u:hunter2@db.internal:6432/users?sslmode=require",
		"HTTP_ADDR":        "127.0.0.1:9000",
		"LOG_LEVEL":        "DEBUG",
		"LOG_FORMAT":       "Text",
		"DB_MAX_CONNS":     "12",
		"REQUEST_TIMEOUT":  "750ms",
		"SHUTDOWN_TIMEOUT": "1m",
		"SHUTDOWN_DELAY":   "5s",
		"AUTO_MIGRATE":     "true",
		"DEBUG_ADDR":       "127.0.0.1:6060",
		"METRICS_ADDR":     ":9090",
		"IDEMPOTENCY_TTL":  "1h30m",
	})
	got, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		DatabaseURL:     "postgres://u:hunter2@db.internal:6432/users?sslmode=require",
		HTTPAddr:        "127.0.0.1:9000",
		LogLevel:        slog.LevelDebug,
		LogFormat:       "text",
		DBMaxConns:      12,
		RequestTimeout:  750 * time.Millisecond,
		ShutdownTimeout: time.Minute,
		ShutdownDelay:   5 * time.Second,
		AutoMigrate:     true,
		DebugAddr:       "127.0.0.1:6060",
		MetricsAddr:     ":9090",
		IdempotencyTTL:  90 * time.Minute,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load() = %+v, want %+v", got, want)
	}
	if host := got.DatabaseHost(); host != "db.internal:6432/users" {
		t.Errorf("DatabaseHost() = %q, want %q (and never the password)", host, "db.internal:6432/users")
	}
}

func TestLoadRejects(t *testing.T) {
	for _, tt := range []struct{ variable, value string }{
		{"HTTP_ADDR", ""},
		{"LOG_LEVEL", "loud"},
		{"LOG_FORMAT", "xml"},
		{"DB_MAX_CONNS", "many"},
		{"DB_MAX_CONNS", "-1"},
		{"DB_MAX_CONNS", "99999999999"},
		{"REQUEST_TIMEOUT", "5"},
		{"REQUEST_TIMEOUT", "-1s"},
		{"SHUTDOWN_TIMEOUT", "0"},
		{"SHUTDOWN_DELAY", "-1s"},
		{"SHUTDOWN_DELAY", "15s"}, // not less than the default SHUTDOWN_TIMEOUT
		{"AUTO_MIGRATE", "yes please"},
		{"IDEMPOTENCY_TTL", "0"},
		{"IDEMPOTENCY_TTL", "-1h"},
		{"IDEMPOTENCY_TTL", "a day"},
		{"DATABASE_URL", "postgres://u:hunter2@[::1"},
	} {
		setenv(t, map[string]string{tt.variable: tt.value})
		_, err := Load()
		if err == nil || !strings.HasPrefix(err.Error(), tt.variable+":") {
			t.Errorf("Load() with %s=%q = %v, want an error that starts with %s:", tt.variable, tt.value, err, tt.variable)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("Load() with %s=%q: the error shows the password: %v", tt.variable, tt.value, err)
		}
	}
}

func TestVariables(t *testing.T) {
	got := strings.Join(Variables(), " ")
	want := "DATABASE_URL HTTP_ADDR LOG_LEVEL LOG_FORMAT DB_MAX_CONNS REQUEST_TIMEOUT SHUTDOWN_TIMEOUT SHUTDOWN_DELAY AUTO_MIGRATE DEBUG_ADDR METRICS_ADDR IDEMPOTENCY_TTL AUTH_TOKENS AUTH_TOKENS_FILE"
	if got != want {
		t.Errorf("Variables() = %s, want %s", got, want)
	}
}
