package server

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"usersvc/internal/metrics"
	"usersvc/internal/tracing"
)

// requestIDHeader carries a request's id in and out: X-Request-ID, in the
// canonical form that header maps use, so that no lookup has to build it.
const requestIDHeader = "X-Request-Id"

// maxRequestIDLen bounds an incoming request id that is kept.
const maxRequestIDLen = 128

// unmatchedRoute is the route label of requests that match no route, so
// that random paths cannot create new time series.
const unmatchedRoute = "unmatched"

// quietRoutes are polled by machines every few seconds; their access log
// lines are debug, so they do not drown the others.
var quietRoutes = map[string]bool{"/healthz": true, "/readyz": true, "/metrics": true}

// Polled reports whether r is for a route that machines poll, which
// tracing leaves out as the access log quiets it.
func Polled(r *http.Request) bool { return quietRoutes[r.URL.Path] }

type requestIDKey struct{}

// requestID returns the id of the request ctx belongs to, or "".
func requestID(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id
}

// observe gives every request an id, the client's one valid X-Request-ID or
// else a new one, which the response echoes and every log line of the
// request carries (requestIDHandler); marks every response as neither to be
// sniffed as another type nor cached; and, once it is answered, writes its
// access log line and counts it in m (when set), by method, route and
// status. The route is the pattern the mux matched, which it notes in the
// request itself (r.Pattern).
func observe(logger *slog.Logger, m *metrics.Metrics) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			id := r.Header[requestIDHeader]
			if len(id) != 1 || !validRequestID(id[0]) {
				id = []string{rand.Text()}
			}
			h := w.Header()
			h[requestIDHeader] = id
			h.Set("X-Content-Type-Options", "nosniff")
			h.Set("Cache-Control", "no-store")
			r = r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id[0]))
			rec := &recorder{ResponseWriter: w}
			next.ServeHTTP(rec, r)

			took, route, status := time.Since(start), routeLabel(r.Pattern), rec.statusCode()
			if route != unmatchedRoute {
				tracing.Route(r.Context(), methodLabel(r.Method), route)
			}
			// net/http's refusal: no handler took any time, and writeError
			// logged it as "request refused".
			refused := r.Method == refusalMethod
			if refused {
				took = 0
			}
			if m != nil {
				m.ObserveRequest(methodLabel(r.Method), route, status, took)
			}
			if refused {
				return
			}
			level := slog.LevelInfo
			if quietRoutes[route] {
				level = slog.LevelDebug
			}
			if !logger.Enabled(r.Context(), level) {
				return
			}
			logger.LogAttrs(r.Context(), level, "request",
				slog.String("method", methodLabel(r.Method)),
				slog.String("route", route),
				slog.String("path", r.URL.Path),
				slog.Int("status", status),
				slog.Int64("bytes", rec.bytes),
				slog.Float64("duration_ms", float64(took.Microseconds())/1000),
				slog.String("remote_addr", r.RemoteAddr),
			)
		})
	}
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

// requestIDHandler adds the request id of the context to every record
// logged with one, so that every line of a request can be found by its id,
// and the ids of its trace and span when it is traced.
type requestIDHandler struct {
	slog.Handler
}

func (h requestIDHandler) Handle(ctx context.Context, rec slog.Record) error {
	if id := requestID(ctx); id != "" {
		rec.AddAttrs(slog.String("request_id", id))
		rec.AddAttrs(tracing.LogAttrs(ctx)...)
	}
	return h.Handler.Handle(ctx, rec)
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}
