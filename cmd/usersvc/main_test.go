package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"usersvc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// syncBuffer is a bytes.Buffer that run's goroutines may write while the
// test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// setenv sets the variables for this test and unsets every other variable
// of the service, so the machine's environment cannot leak in. The
// environment is restored when the test ends.
func setenv(t *testing.T, vars map[string]string) {
	t.Helper()
	for _, k := range []string{"DATABASE_URL", "HTTP_ADDR", "LOG_LEVEL", "LOG_FORMAT", "DB_MAX_CONNS", "REQUEST_TIMEOUT", "SHUTDOWN_TIMEOUT", "AUTO_MIGRATE"} {
		v, ok := vars[k]
		t.Setenv(k, v) // registers the restore
		if !ok {
			os.Unsetenv(k)
		}
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitFor polls url until it answers 200, or fails the test after timeout.
func waitFor(t *testing.T, url string, timeout time.Duration, runErr <-chan error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		res, err := http.Get(url)
		if err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case err := <-runErr:
			t.Fatalf("run returned %v before %s answered", err, url)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within %v (last error %v)", url, timeout, err)
		}
	}
}

// TestRunServe starts the whole program as main does, with AUTO_MIGRATE on
// an empty database, uses it, and stops it as a signal would.
func TestRunServe(t *testing.T) {
	addr := freeAddr(t)
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
		"LOG_FORMAT":   "text",
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	runErr := make(chan error, 1)
	go func() { runErr <- run(ctx, []string{"serve"}, &stdout, &stderr) }()

	base := "http://" + addr
	waitFor(t, base+"/healthz", 10*time.Second, runErr)
	waitFor(t, base+"/readyz", 10*time.Second, runErr)
	res, err := http.Post(base+"/users", "application/json", strings.NewReader(`{"name":"via run"}`))
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusCreated {
		t.Errorf("POST /users: status = %d, want 201", res.StatusCode)
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
	for _, want := range []string{"migration applied", "listening", "shutting down", "stopped"} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("log lacks %q:\n%s", want, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), password) {
		t.Errorf("log shows the database password:\n%s", stderr.String())
	}
}

func TestRunMigrateCycle(t *testing.T) {
	setenv(t, map[string]string{"DATABASE_URL": pgtest.NewEmptyURL(t)})
	ctx := context.Background()
	steps := []struct {
		args []string
		want []string
	}{
		{[]string{"migrate", "status"}, []string{"00001_create_users.sql", "pending"}},
		{[]string{"migrate", "up"}, []string{"applied 00001_create_users.sql", "schema version 1 (latest embedded: 1)"}},
		{[]string{"migrate", "up"}, []string{"no pending migrations", "schema version 1"}},
		{[]string{"migrate", "status"}, []string{"00001_create_users.sql", "applied"}},
		{[]string{"migrate", "down"}, []string{"rolled back 00001_create_users.sql", "schema version 0"}},
		{[]string{"migrate", "down"}, []string{"no migration to roll back", "schema version 0"}},
		{[]string{"migrate", "up"}, []string{"applied 00001_create_users.sql", "schema version 1"}},
		{[]string{"migrate", "version"}, []string{"schema version 1 (latest embedded: 1)"}},
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
		name    string
		args    []string
		env     map[string]string
		wantErr string
	}{
		{"unknown command", []string{"frobnicate"}, nil, `unknown command "frobnicate"`},
		{"serve without DATABASE_URL", []string{"serve"}, nil, "DATABASE_URL: required"},
		{"migrate without DATABASE_URL", []string{"migrate", "up"}, nil, "DATABASE_URL: required"},
		{"migrate without a command", []string{"migrate"}, map[string]string{"DATABASE_URL": "postgres://localhost/x"}, "expected exactly one"},
		{"migrate sideways", []string{"migrate", "sideways"}, map[string]string{"DATABASE_URL": "postgres://localhost/x"}, `unknown command "sideways"`},
		{"malformed duration", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "REQUEST_TIMEOUT": "soon"}, "REQUEST_TIMEOUT"},
		{"malformed bool", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "AUTO_MIGRATE": "perhaps"}, "AUTO_MIGRATE"},
		{"malformed level", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "LOG_LEVEL": "loud"}, "LOG_LEVEL"},
		{"bad log format", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "LOG_FORMAT": "xml"}, "LOG_FORMAT"},
		{"negative pool size", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "DB_MAX_CONNS": "-1"}, "DB_MAX_CONNS"},
		{"zero timeout", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "SHUTDOWN_TIMEOUT": "0s"}, "SHUTDOWN_TIMEOUT"},
		{"malformed URL", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://u:hunter2@[::1"}, "DATABASE_URL"},
		{"unusable address", []string{"serve"}, map[string]string{"DATABASE_URL": "postgres://localhost/x", "HTTP_ADDR": "bad::addr::"}, "listen on bad::addr::"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setenv(t, tt.env)
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), tt.args, &stdout, &stderr)
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("run %q = %v, want an error containing %q", tt.args, err, tt.wantErr)
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
