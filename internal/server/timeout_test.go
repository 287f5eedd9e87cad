package server

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestTimeoutsInTurn sends a body at once to a database that never
// answers, with a BodyTimeout far shorter than the RequestTimeout: the
// database gets its whole RequestTimeout, and the body's deadline, long
// passed, cuts nothing off. That rests on net/http lifting the connection's
// read deadline once the body is in: else its background read would fail
// at the deadline, and cancel the request. (Slow bodies are tested over
// real connections in cmd/usersvc.)
func TestTimeoutsInTurn(t *testing.T) {
	t.Parallel()
	const bodyTimeout, requestTimeout = 100 * time.Millisecond, 600 * time.Millisecond
	h := New(slog.New(slog.NewTextHandler(t.Output(), nil)), faultyStore{block: true}, okDatabase{}, Options{BodyTimeout: bodyTimeout, RequestTimeout: requestTimeout})
	s := &testServer{t: t, url: startServer(t, h).URL}
	start := time.Now()
	req, r, err := s.send(http.MethodPost, "/users", "application/json", strings.NewReader(`{"name":"waits"}`))
	took := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	s.check(req, r)
	wantProblem(t, "POST /users to a hung database", r, http.StatusServiceUnavailable, codeUnavailable)
	if took < requestTimeout || took > requestTimeout+time.Second {
		t.Errorf("POST /users to a hung database: 503 after %v, want at REQUEST_TIMEOUT (%v)", took, requestTimeout)
	}
}
