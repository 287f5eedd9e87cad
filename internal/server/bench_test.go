package server

import (
	"bytes"
	"context"
	"encoding/json/jsontext"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"usersvc/db"
	"usersvc/internal/metrics"
	"usersvc/migrations"
)

// The benchmarks below measure the request path without the network and
// without the database (`make bench-go`): decoding and validating a body,
// encoding a user and a page, and whole requests through the handler stack
// that New builds, against a store in memory. A fake store is right here,
// unlike in the tests: it takes the database's cost out, so that what is
// left, and its allocations, is this package's own. The load benchmark
// (`make bench`) measures the rest.
//
// Each request is served to a benchWriter, reused, rather than to a fresh
// httptest.ResponseRecorder: the recorder's own allocations (itself, its
// header map, its body buffer and the header snapshot it takes) would hide
// the handler's. Every benchmark first checks one answer through a real
// recorder.

// benchUser is a typical row: a short ASCII name.
var benchUser = db.User{
	ID:        123456,
	Name:      "alice-bench",
	CreatedAt: time.Date(2026, 11, 24, 7, 48, 27, 915089000, time.UTC),
	UpdatedAt: time.Date(2026, 11, 24, 7, 48, 27, 915089000, time.UTC),
}

// benchStore is an in-memory userStore that answers at once: CreateUser
// and RenameUser echo the name, GetUser returns benchUser, ListUsers a
// page of the asked size from a fixed table. A method of userStore that no
// benchmark calls need not be written here: the embedded nil interface
// stands for it (and panics if a benchmark calls it after all).
type benchStore struct {
	userStore
	nextID atomic.Int64
	rows   []db.ListUsersRow // what ListUsers serves from
}

var _ userStore = (*benchStore)(nil)

func newBenchStore() *benchStore {
	s := &benchStore{rows: make([]db.ListUsersRow, maxPageLimit+1)}
	for i := range s.rows {
		s.rows[i] = db.ListUsersRow{ID: int64(i + 1), Name: "user-" + strconv.Itoa(i+1), CreatedAt: benchUser.CreatedAt, UpdatedAt: benchUser.UpdatedAt}
	}
	return s
}

func (s *benchStore) CreateUser(_ context.Context, name string) (db.User, error) {
	u := benchUser
	u.ID, u.Name = s.nextID.Add(1), name
	return u, nil
}

func (s *benchStore) GetUser(_ context.Context, id int64) (db.User, error) {
	u := benchUser
	u.ID = id
	return u, nil
}

// ListUsers returns the rows after arg.After. Like pgx, it returns a new
// slice each time: the handler may keep what it gets.
func (s *benchStore) ListUsers(_ context.Context, arg db.ListUsersParams) ([]db.ListUsersRow, error) {
	from := min(int(arg.After), len(s.rows))
	to := min(from+int(arg.MaxRows), len(s.rows))
	return append([]db.ListUsersRow(nil), s.rows[from:to]...), nil
}

// ListChanges returns a change per row after arg.After, an update of it.
func (s *benchStore) ListChanges(_ context.Context, arg db.ListChangesParams) ([]db.ListChangesRow, error) {
	from := min(int(arg.After), len(s.rows))
	to := min(from+int(arg.MaxRows), len(s.rows))
	changes := make([]db.ListChangesRow, 0, to-from)
	for i, u := range s.rows[from:to] {
		changes = append(changes, db.ListChangesRow{
			Position: int64(from + i + 1), Op: "update", UserID: u.ID, At: u.UpdatedAt,
			Name:      pgtype.Text{String: u.Name, Valid: true},
			CreatedAt: pgtype.Timestamptz{Time: u.CreatedAt, Valid: true},
			UpdatedAt: pgtype.Timestamptz{Time: u.UpdatedAt, Valid: true},
		})
	}
	return changes, nil
}

func (s *benchStore) RenameUser(_ context.Context, arg db.RenameUserParams) (db.User, error) {
	u := benchUser
	u.ID, u.Name = arg.ID, arg.Name
	return u, nil
}

// CreateUserIdempotently creates, as a first request with a key does.
func (s *benchStore) CreateUserIdempotently(ctx context.Context, arg db.CreateUserIdempotentlyParams) (db.CreateUserIdempotentlyRow, error) {
	u, _ := s.CreateUser(ctx, arg.Name)
	return db.CreateUserIdempotentlyRow{
		Claimed:        true,
		RecordedStatus: pgtype.Int2{Int16: http.StatusCreated, Valid: true},
		ID:             pgtype.Int8{Int64: u.ID, Valid: true},
		Name:           pgtype.Text{String: u.Name, Valid: true},
		CreatedAt:      pgtype.Timestamptz{Time: u.CreatedAt, Valid: true},
		UpdatedAt:      pgtype.Timestamptz{Time: u.UpdatedAt, Valid: true},
	}, nil
}

func (s *benchStore) SchemaVersion(context.Context) (int64, error) { return migrations.Latest(), nil }

func (s *benchStore) ReadOnly(context.Context) (string, error) { return "", nil }

// benchWriter is a ResponseWriter that keeps the status and counts the
// body, and is reset between requests, keeping its header map, as a server
// could.
type benchWriter struct {
	header http.Header
	status int
	n      int
}

func newBenchWriter() *benchWriter { return &benchWriter{header: http.Header{}} }

func (w *benchWriter) Header() http.Header { return w.header }

func (w *benchWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *benchWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	w.n += len(b)
	return len(b), nil
}

func (w *benchWriter) reset() {
	clear(w.header)
	w.status, w.n = 0, 0
}

// benchBody is a request body that can be read again after reset, so that
// one request serves every iteration.
type benchBody struct{ bytes.Reader }

func (*benchBody) Close() error { return nil }

// newBenchRequest returns a request with a body that reset rewinds.
func newBenchRequest(method, target, body string) (*http.Request, func()) {
	r := httptest.NewRequest(method, target, nil)
	if body == "" {
		return r, func() {}
	}
	r.Header.Set("Content-Type", "application/json")
	b := &benchBody{}
	reset := func() {
		b.Reset([]byte(body))
		r.Body, r.ContentLength = b, int64(len(body))
	}
	reset()
	return r, reset
}

// benchLogger logs as production does, JSON at info, to nowhere: the
// access log line's cost is part of every request's.
func benchLogger() *slog.Logger { return slog.New(slog.NewJSONHandler(io.Discard, nil)) }

// BenchmarkCreateDecode reads, decodes and validates a POST /users body,
// as handleUserCreate does before it calls the store.
func BenchmarkCreateDecode(b *testing.B) {
	r, reset := newBenchRequest(http.MethodPost, "/users", `{"name":"alice-bench"}`)
	w := newBenchWriter()
	if err := readBody(w, r); err != nil {
		b.Fatal(err)
	}
	name, err := decodeName(r)
	if err != nil || name != "alice-bench" {
		b.Fatalf("decodeName = %q, %v; want alice-bench", name, err)
	}
	b.ReportAllocs()
	for b.Loop() {
		reset()
		if err := readBody(w, r); err != nil {
			b.Fatal(err)
		}
		if _, err := decodeName(r); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkEncodeUser writes one user, the answer of POST, GET and PUT.
func BenchmarkEncodeUser(b *testing.B) {
	benchmarkEncode(b, toUser(benchUser))
}

// BenchmarkEncodeUserPage50 writes a page of 50 users, the default page
// of GET /users.
func BenchmarkEncodeUserPage50(b *testing.B) {
	users := make([]user, defaultPageLimit)
	for i := range users {
		u := benchUser
		u.ID, u.Name = int64(i+1), "user-"+strconv.Itoa(i+1)
		users[i] = toUser(u)
	}
	benchmarkEncode(b, users)
}

func benchmarkEncode(b *testing.B, v any) {
	r := httptest.NewRequest(http.MethodGet, "/users", nil)
	logger := benchLogger()
	rec := httptest.NewRecorder()
	encode(rec, r, logger, http.StatusOK, jsonContentType, v)
	if rec.Code != http.StatusOK || !jsontext.Value(rec.Body.Bytes()).IsValid() {
		b.Fatalf("encode: status %d, body %s", rec.Code, rec.Body)
	}
	w := newBenchWriter()
	b.ReportAllocs()
	b.SetBytes(int64(rec.Body.Len()))
	for b.Loop() {
		w.reset()
		encode(w, r, logger, http.StatusOK, jsonContentType, v)
	}
}

// BenchmarkCreateHandler serves POST /users through the whole handler
// stack: routing, the timeout and header middleware, decoding, validation,
// the store and the encoding of the answer.
func BenchmarkCreateHandler(b *testing.B) {
	benchmarkHandler(b, http.MethodPost, "/users", `{"name":"alice-bench"}`, http.StatusCreated)
}

// BenchmarkCreateKeyedHandler is BenchmarkCreateHandler with an
// Idempotency-Key: what the key costs in Go (parsing it, and the digests of
// the request and of its key), without the database's part.
func BenchmarkCreateKeyedHandler(b *testing.B) {
	benchmarkHandler(b, http.MethodPost, "/users", `{"name":"alice-bench"}`, http.StatusCreated,
		idempotencyKeyHeader, `"8e03978e-40d5-43e8-bc93-6894a57f9324"`, "Authorization", "Bearer bench-0123456789abcdef")
}

// BenchmarkGetHandler serves GET /users/{id} through the whole stack.
func BenchmarkGetHandler(b *testing.B) {
	benchmarkHandler(b, http.MethodGet, "/users/42", "", http.StatusOK)
}

// BenchmarkListHandler50 serves GET /users?after=&limit=50, a full page
// with a next link, through the whole stack.
func BenchmarkListHandler50(b *testing.B) {
	benchmarkHandler(b, http.MethodGet, "/users?after=100&limit=50", "", http.StatusOK)
}

// BenchmarkChangesHandler100 serves GET /users/changes?after=100&limit=100,
// a page of 100 changes, through the whole stack: to compare with
// BenchmarkListHandler50.
func BenchmarkChangesHandler100(b *testing.B) {
	benchmarkHandler(b, http.MethodGet, "/users/changes?after=100&limit=100", "", http.StatusOK)
}

// BenchmarkHealthz serves GET /healthz, the stack without a store call.
func BenchmarkHealthz(b *testing.B) {
	benchmarkHandler(b, http.MethodGet, "/healthz", "", http.StatusOK)
}

// benchmarkHandler serves the request through the stack, with header: names
// and values, in turns.
func benchmarkHandler(b *testing.B, method, target, body string, want int, header ...string) {
	store := newBenchStore()
	h := New(benchLogger(), store, store, Options{RequestTimeout: 5 * time.Second, SchemaVersion: migrations.Latest(), Metrics: metrics.New("bench")})
	r, reset := newBenchRequest(method, target, body)
	for i := 0; i+1 < len(header); i += 2 {
		r.Header.Set(header[i], header[i+1])
	}

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code != want || !jsontext.Value(rec.Body.Bytes()).IsValid() {
		b.Fatalf("%s %s: status %d, want %d; body %s", method, target, rec.Code, want, rec.Body)
	}

	w := newBenchWriter()
	b.ReportAllocs()
	for b.Loop() {
		reset()
		w.reset()
		h.ServeHTTP(w, r)
	}
	if w.status != want {
		b.Fatalf("%s %s: status %d, want %d", method, target, w.status, want)
	}
}
