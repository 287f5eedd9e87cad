package server

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
	"usersvc/internal/pgtest"
	"usersvc/internal/postgres"
	"usersvc/migrations"
)

func TestUnmatchedRoutesAreProblems(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	for _, tt := range []struct {
		method, path string
		status       int
		code         string
		allow        string
	}{
		{"GET", "/nope", 404, codeNotFound, ""},
		{"GET", "/users/1/extra", 404, codeNotFound, ""},
		{"GET", "/users/", 404, codeNotFound, ""},
		{"TRACE", "/users", 405, codeMethodNotAllowed, documentedAllow(t, "/users")},
		{"DELETE", "/users", 405, codeMethodNotAllowed, documentedAllow(t, "/users")},
		{"POST", "/users/1", 405, codeMethodNotAllowed, documentedAllow(t, "/users/{id}")},
		{"TRACE", "/users/1", 405, codeMethodNotAllowed, documentedAllow(t, "/users/{id}")},
		{"POST", "/healthz", 405, codeMethodNotAllowed, documentedAllow(t, "/healthz")},
	} {
		var r response
		if tt.status == http.StatusNotFound {
			// openapi.yaml describes no unknown path, so check by hand.
			_, res, err := s.send(tt.method, tt.path, "", nil)
			if err != nil {
				t.Fatal(err)
			}
			s.checkProblem(tt.method, tt.path, res)
			r = res
		} else {
			r = s.do(tt.method, tt.path, "", nil)
		}
		wantProblem(t, tt.method+" "+tt.path, r, tt.status, tt.code)
		if got := r.header.Get("Allow"); got != tt.allow {
			t.Errorf("%s %s: Allow = %q, want %q", tt.method, tt.path, got, tt.allow)
		}
	}
}

func TestHealthAndDocument(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	for _, path := range []string{"/healthz", "/readyz"} {
		r := s.get(path)
		if r.status != http.StatusOK || string(r.body) != `{"status":"ok"}` {
			t.Errorf("GET %s = %d %s, want 200 {\"status\":\"ok\"}", path, r.status, r.body)
		}
	}
	r := s.get("/openapi.yaml")
	want, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if r.status != http.StatusOK || string(r.body) != string(want) || r.header.Get("Content-Type") != "application/yaml" {
		t.Errorf("GET /openapi.yaml = %d, %s, %d bytes; want 200, application/yaml, the %d bytes of openapi.yaml",
			r.status, r.header.Get("Content-Type"), len(r.body), len(want))
	}
}

// TestDatabaseUnreachable runs the real stack against a pool whose server
// refuses connections.
func TestDatabaseUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@"+addr+"/none?connect_timeout=2")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	s := &testServer{t: t, url: serveAPIOn(t, slog.New(slog.NewTextHandler(t.Output(), nil)), pool, Options{RequestTimeout: 3 * time.Second, SchemaVersion: 1})}

	if r := s.get("/healthz"); r.status != http.StatusOK {
		t.Errorf("GET /healthz without a database: status = %d, want 200", r.status)
	}
	for _, tt := range databaseRequests {
		r := s.do(tt.method, tt.path, "application/json", strings.NewReader(tt.body))
		wantProblem(t, tt.method+" "+tt.path+" without a database", r, 503, codeUnavailable)
		if r.header.Get("Retry-After") == "" {
			t.Errorf("%s %s: 503 without Retry-After", tt.method, tt.path)
		}
	}
	// Client errors are still client errors.
	wantProblem(t, "GET /users/abc without a database", s.get("/users/abc"), 400, codeValidationFailed)
}

// faultyStore forces failures a real database does not produce on demand.
type faultyStore struct {
	userStore
	err   error
	block bool // wait for the context to end, as a hung database would
}

func (f faultyStore) GetUser(ctx context.Context, id int64) (db.User, error) {
	return f.fail(ctx)
}

func (f faultyStore) CreateUser(ctx context.Context, name string) (db.User, error) {
	return f.fail(ctx)
}

func (f faultyStore) fail(ctx context.Context) (db.User, error) {
	if f.block {
		<-ctx.Done()
		return db.User{}, ctx.Err()
	}
	return db.User{}, f.err
}

// okDatabase is a database that answers and is up to date.
type okDatabase struct{}

func (okDatabase) SchemaVersion(context.Context) (int64, error) { return migrations.Latest(), nil }

func (okDatabase) ReadOnly(context.Context) (string, error) { return "", nil }

func TestStoreFailures(t *testing.T) {
	t.Parallel()
	secret := "relation users: SELECT secret FROM pg_shadow"
	for _, tt := range []struct {
		name    string
		store   faultyStore
		status  int
		code    string
		maxTime time.Duration
	}{
		{"unknown error", faultyStore{err: errors.New(secret)}, 500, codeInternal, time.Second},
		{"syntax error from postgres", faultyStore{err: &pgconn.PgError{Code: "42601", Message: secret}}, 500, codeInternal, time.Second},
		{"terminated backend", faultyStore{err: &pgconn.PgError{Code: "57P01", Message: secret}}, 503, codeUnavailable, time.Second},
		{"statement timeout", faultyStore{err: &pgconn.PgError{Code: "57014", Message: secret}}, 503, codeUnavailable, time.Second},
		// PostgreSQL 14 and later tell the client of a crash in a warning,
		// and a server sends class 08 when the protocol breaks: the tests
		// against a real one cannot see these codes.
		{"crash of another server process", faultyStore{err: &pgconn.PgError{Code: "57P02", Message: secret}}, 503, codeUnavailable, time.Second},
		{"connection failure", faultyStore{err: &pgconn.PgError{Code: "08006", Message: secret}}, 503, codeUnavailable, time.Second},
		{"disk full", faultyStore{err: &pgconn.PgError{Code: "53100", Message: secret}}, 503, codeUnavailable, time.Second},
		{"hung database", faultyStore{block: true}, 503, codeUnavailable, 2 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := &testServer{t: t, url: serveAPI(t, slog.New(slog.NewTextHandler(t.Output(), nil)), tt.store, okDatabase{}, Options{RequestTimeout: 200 * time.Millisecond})}
			start := time.Now()
			r := s.get("/users/1")
			if took := time.Since(start); took > tt.maxTime {
				t.Errorf("GET /users/1 took %v, want under %v", took, tt.maxTime)
			}
			wantProblem(t, "GET /users/1", r, tt.status, tt.code)
			if strings.Contains(string(r.body), "secret") || strings.Contains(string(r.body), "42601") {
				t.Errorf("GET /users/1: the response leaks the cause: %s", r.body)
			}
		})
	}
}

// TestNewRoutesAreProtected checks that a route added to the mux without a
// thought for authentication needs a token like the API's own, while the
// open routes stay open.
func TestNewRoutesAreProtected(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	logger := slog.New(slog.NewTextHandler(t.Output(), nil))
	rs := routes{mux: http.NewServeMux(), auth: newAuthenticator([]string{tokenOld}), logger: logger, timeout: 5 * time.Second}
	addRoutes(rs, db.New(pool), db.New(pool), readiness{database: postgres.Probe{Q: pool}, want: migrations.Latest(), draining: new(atomic.Bool)}, nil)
	rs.Handle("GET /groups", func(w http.ResponseWriter, r *http.Request) error {
		encode(w, r, logger, http.StatusOK, jsonContentType, []string{})
		return nil
	})
	srv := httptest.NewServer(chain(rs, observe(logger, nil), guard(logger, 0, new(atomic.Bool))))
	t.Cleanup(srv.Close)
	for _, tt := range []struct {
		path, authorization string
		status              int
	}{
		{"/groups", "", http.StatusUnauthorized},
		{"/groups", "Bearer " + wrongToken, http.StatusUnauthorized},
		{"/groups", "Bearer " + tokenOld, http.StatusOK},
		{"/healthz", "", http.StatusOK},
	} {
		req, err := http.NewRequest(http.MethodGet, srv.URL+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tt.authorization != "" {
			req.Header.Set("Authorization", tt.authorization)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != tt.status {
			t.Errorf("GET %s with Authorization %q: status = %d, want %d", tt.path, tt.authorization, res.StatusCode, tt.status)
		}
	}
}

// TestREADMEListsEveryRoute checks that the README's route table has a row
// for each route that routes.go registers, and none for a route it does
// not.
func TestREADMEListsEveryRoute(t *testing.T) {
	t.Parallel()
	source, err := os.ReadFile("routes.go")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var registered, listed []string
	for _, m := range regexp.MustCompile(`rs\.(?:Handle|HandleWaiting|Open)\("([A-Z]+ [^"]+)"`).FindAllSubmatch(source, -1) {
		registered = append(registered, strings.TrimSuffix(string(m[1]), "{$}"))
	}
	for _, m := range regexp.MustCompile("(?m)^\\| `([A-Z]+ /[^`?]*)").FindAllSubmatch(readme, -1) {
		listed = append(listed, string(m[1]))
	}
	slices.Sort(registered)
	slices.Sort(listed)
	if len(registered) < 10 || !slices.Equal(registered, listed) {
		t.Errorf("README's route table lists\n%q\nroutes.go registers\n%q", listed, registered)
	}
}
