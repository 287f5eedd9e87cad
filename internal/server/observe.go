package server

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"usersvc/internal/metrics"
)

// requestIDHeader carries a request's id in and out: X-Request-ID, in the
// canonical form that header maps use, so that no lookup has to build it.
const requestIDHeader = "X-Request-Id"

// Values of the headers every response carries. A header map's values are
// only read when the response is written, so every response may share them.
var (
	nosniff = []string{"nosniff"}
	noStore = []string{"no-store"}
)

// maxRequestIDLen bounds an incoming request id that is kept.
const maxRequestIDLen = 128

// unmatchedRoute is the route label of requests that match no route, so
// that random paths cannot create new time series.
const unmatchedRoute = "unmatched"

type requestIDKey struct{}

// requestID returns the id of the request ctx belongs to, or "".
func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// validRequestID reports whether a client's X-Request-ID is one to keep:
// 1 to 128 characters that need no escaping in a log or a header.
func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-_.:+/=@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// observe serves every request through next with an id (the client's one
// valid X-Request-ID, else a new one) that is echoed in the response header and
// added to every log line of the request; a body that must arrive within
// bodyTimeout of the request's arrival here, the end of its headers (see
// timedBody; 0 for no bound); one access log line at its end; and its count
// and duration in m.
func observe(next http.Handler, logger *slog.Logger, m *metrics.Metrics, bodyTimeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		var id string
		if ids := r.Header[requestIDHeader]; len(ids) == 1 && validRequestID(ids[0]) {
			id = ids[0]
		} else {
			id = rand.Text()
		}
		h := w.Header()
		h[requestIDHeader] = []string{id}
		// API responses are neither to be sniffed as another type nor cached.
		h["X-Content-Type-Options"] = nosniff
		h["Cache-Control"] = noStore

		r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id))
		if bodyTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
			r.Body = newTimedBody(w, r, start.Add(bodyTimeout), bodyTimeout)
		}
		rec := &recorder{ResponseWriter: w}
		next.ServeHTTP(rec, r)

		// The mux set r.Pattern on this very request when a route matched.
		method, route := methodLabel(r.Method), routeLabel(r.Pattern)
		status := rec.statusCode()
		took := time.Since(start)
		if m != nil {
			m.ObserveRequest(method, route, status, took)
		}
		level := slog.LevelInfo
		if quietRoutes[route] {
			level = slog.LevelDebug
		}
		if logger.Enabled(r.Context(), level) {
			logger.LogAttrs(r.Context(), level, "request",
				slog.String("method", method),
				slog.String("route", route),
				slog.String("path", r.URL.Path),
				slog.Int("status", status),
				slog.Int64("bytes", rec.bytes),
				slog.Float64("duration_ms", float64(took.Microseconds())/1000),
				slog.String("remote_addr", r.RemoteAddr),
			)
		}
	})
}

// quietRoutes are polled by machines every few seconds; their access log
// lines are debug, so they do not drown the others.
var quietRoutes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// routeLabel returns the path of a route pattern ("GET /users/{id}" gives
// "/users/{id}"), or unmatchedRoute: a value from a small fixed set.
func routeLabel(pattern string) string {
	if pattern == "" {
		return unmatchedRoute
	}
	if _, path, ok := strings.Cut(pattern, " "); ok {
		return path
	}
	return pattern
}

// methodLabel returns the method, or OTHER for one HTTP does not define, so
// that a client cannot create new time series by inventing methods.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "OTHER"
}

// recorder notes the status and body size of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *recorder) WriteHeader(status int) {
	if w.status == 0 && status >= 200 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *recorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *recorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// statusCode returns the status sent; a handler that wrote nothing sent 200.
func (w *recorder) statusCode() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// requestIDHandler adds the request id of the context to every record
// logged with one, so that every line of a request can be found by its id.
type requestIDHandler struct {
	slog.Handler
}

func (h requestIDHandler) Handle(ctx context.Context, rec slog.Record) error {
	if id := requestID(ctx); id != "" {
		rec.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, rec)
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}
