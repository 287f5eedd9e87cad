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
		HTTPAddr:         ":8080",
		LogLevel:         slog.LevelInfo,
		LogFormat:        "json",
		DBConnectTimeout: 10 * time.Second,
		RequestTimeout:   5 * time.Second,
		BodyTimeout:      10 * time.Second,
		ShutdownTimeout:  15 * time.Second,
		IdempotencyTTL:   24 * time.Hour,
		ChangesRetention: 168 * time.Hour,
		ChangesListen:    true,
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
		"DATABASE_URL":       "postgres://u:hunter2@db.internal:6432/users?sslmode=require",
		"DATABASE_READ_URL":  "postgres://u:hunter2@standby1.internal,standby2.internal/users?target_session_attrs=prefer-standby",
		"HTTP_ADDR":          "127.0.0.1:9000",
		"LOG_LEVEL":          "DEBUG",
		"LOG_FORMAT":         "Text",
		"DB_MAX_CONNS":       "12",
		"DB_CONNECT_TIMEOUT": "3s",
		"REQUEST_TIMEOUT":    "750ms",
		"BODY_TIMEOUT":       "2s",
		"SHUTDOWN_TIMEOUT":   "1m",
		"SHUTDOWN_DELAY":     "5s",
		"AUTO_MIGRATE":       "true",
		"DEBUG_ADDR":         "127.0.0.1:6060",
		"METRICS_ADDR":       ":9090",
		"IDEMPOTENCY_TTL":    "1h30m",
		"CHANGES_RETENTION":  "48h",
		"CHANGES_LISTEN":     "false",
	})
	got, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		DatabaseURL:      "postgres://u:hunter2@db.internal:6432/users?sslmode=require",
		DatabaseReadURL:  "postgres://u:hunter2@standby1.internal,standby2.internal/users?target_session_attrs=prefer-standby",
		HTTPAddr:         "127.0.0.1:9000",
		LogLevel:         slog.LevelDebug,
		LogFormat:        "text",
		DBMaxConns:       12,
		DBConnectTimeout: 3 * time.Second,
		RequestTimeout:   750 * time.Millisecond,
		BodyTimeout:      2 * time.Second,
		ShutdownTimeout:  time.Minute,
		ShutdownDelay:    5 * time.Second,
		AutoMigrate:      true,
		DebugAddr:        "127.0.0.1:6060",
		MetricsAddr:      ":9090",
		IdempotencyTTL:   90 * time.Minute,
		ChangesRetention: 48 * time.Hour,
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
		{"DB_CONNECT_TIMEOUT", "0s"},
		{"DB_CONNECT_TIMEOUT", "10"},
		{"REQUEST_TIMEOUT", "5"},
		{"REQUEST_TIMEOUT", "-1s"},
		{"BODY_TIMEOUT", "0s"},
		{"BODY_TIMEOUT", "soon"},
		{"SHUTDOWN_TIMEOUT", "0"},
		{"SHUTDOWN_DELAY", "-1s"},
		{"SHUTDOWN_DELAY", "15s"}, // not less than the default SHUTDOWN_TIMEOUT
		{"AUTO_MIGRATE", "yes please"},
		{"IDEMPOTENCY_TTL", "0"},
		{"IDEMPOTENCY_TTL", "-1h"},
		{"IDEMPOTENCY_TTL", "a day"},
		{"CHANGES_RETENTION", "0"},
		{"CHANGES_RETENTION", "a week"},
		{"CHANGES_LISTEN", "maybe"},
		{"DATABASE_URL", "postgres://u:hunter2@[::1"},
		{"DATABASE_READ_URL", "postgres://u:hunter2@[::1"},
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
	want := "DATABASE_URL DATABASE_READ_URL HTTP_ADDR LOG_LEVEL LOG_FORMAT DB_MAX_CONNS DB_CONNECT_TIMEOUT REQUEST_TIMEOUT BODY_TIMEOUT SHUTDOWN_TIMEOUT SHUTDOWN_DELAY AUTO_MIGRATE DEBUG_ADDR METRICS_ADDR IDEMPOTENCY_TTL CHANGES_RETENTION CHANGES_LISTEN AUTH_TOKENS AUTH_TOKENS_FILE"
	if got != want {
		t.Errorf("Variables() = %s, want %s", got, want)
	}
}

// TestPoolConfig checks the connection settings every command uses: the
// connect timeout from the URL or PGCONNECT_TIMEOUT, else
// DB_CONNECT_TIMEOUT, and the session's name.
func TestPoolConfig(t *testing.T) {
	for _, tt := range []struct {
		name        string
		env         map[string]string
		pgTimeout   string // PGCONNECT_TIMEOUT, libpq's variable, which pgx reads too
		wantTimeout time.Duration
		wantApp     string
	}{
		{"default", map[string]string{"DATABASE_URL": "postgres://u:hunter2@db:5432/users"}, "", 10 * time.Second, "usersvc"},
		{"DB_CONNECT_TIMEOUT", map[string]string{"DATABASE_URL": "postgres://u@db/users", "DB_CONNECT_TIMEOUT": "1500ms"}, "", 1500 * time.Millisecond, "usersvc"},
		{"connect_timeout wins", map[string]string{"DATABASE_URL": "postgres://u@db/users?connect_timeout=3", "DB_CONNECT_TIMEOUT": "1m"}, "", 3 * time.Second, "usersvc"},
		{"connect_timeout as a keyword", map[string]string{"DATABASE_URL": "host=db dbname=users connect_timeout=4 application_name=mine"}, "", 4 * time.Second, "mine"},
		{"PGCONNECT_TIMEOUT wins", map[string]string{"DATABASE_URL": "postgres://u@db/users"}, "5", 5 * time.Second, "usersvc"},
		{"connect_timeout=0 is no exception", map[string]string{"DATABASE_URL": "postgres://u@db/users?connect_timeout=0"}, "", 10 * time.Second, "usersvc"},
		{"a parameter that merely mentions it", map[string]string{"DATABASE_URL": "postgres://u@db/users?application_name=connect_timeout%3D1"}, "", 10 * time.Second, "connect_timeout=1"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setenv(t, tt.env)
			t.Setenv("PGCONNECT_TIMEOUT", tt.pgTimeout)
			if tt.pgTimeout == "" {
				os.Unsetenv("PGCONNECT_TIMEOUT")
			}
			c, err := Load()
			if err != nil {
				t.Fatal(err)
			}
			pc, err := c.PoolConfig()
			if err != nil {
				t.Fatal(err)
			}
			if got := pc.ConnConfig.ConnectTimeout; got != tt.wantTimeout {
				t.Errorf("ConnectTimeout = %v, want %v", got, tt.wantTimeout)
			}
			if got := pc.ConnConfig.RuntimeParams["application_name"]; got != tt.wantApp {
				t.Errorf("application_name = %q, want %q", got, tt.wantApp)
			}
		})
	}
	c := Config{DatabaseURL: "postgres://u:hunter2@[::1"}
	if _, err := c.PoolConfig(); err == nil || !strings.HasPrefix(err.Error(), "DATABASE_URL:") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("PoolConfig() of a malformed URL = %v, want an error that names DATABASE_URL and not the password", err)
	}
	// DATABASE_READ_URL's connections have the same bound, and a name of
	// their own.
	c = Config{DatabaseReadURL: "postgres://u@standby1,standby2/users?target_session_attrs=prefer-standby", DBConnectTimeout: 2 * time.Second}
	pc, err := c.ReadPoolConfig()
	if err != nil {
		t.Fatal(err)
	}
	if got, app := pc.ConnConfig.ConnectTimeout, pc.ConnConfig.RuntimeParams["application_name"]; got != 2*time.Second || app != "usersvc-read" {
		t.Errorf("ReadPoolConfig(): ConnectTimeout %v, application_name %q; want 2s and usersvc-read", got, app)
	}
	c = Config{DatabaseReadURL: "postgres://u:hunter2@[::1"}
	if _, err := c.ReadPoolConfig(); err == nil || !strings.HasPrefix(err.Error(), "DATABASE_READ_URL:") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("ReadPoolConfig() of a malformed URL = %v, want an error that names DATABASE_READ_URL and not the password", err)
	}
}
