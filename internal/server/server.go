// Package server is the HTTP API of usersvc: its routes, handlers and the
// mapping of every error to an RFC 9457 problem response, with the request
// id, access log and metrics every request gets.
package server

import (
	"log/slog"
	"net/http"
	"slices"
	"sync/atomic"
	"time"

	"usersvc/internal/metrics"
)

// Options are the server's settings and its optional parts.
type Options struct {
	// RequestTimeout bounds the database work of every request, from its
	// start, after the request's body has been read. 0: no bound.
	RequestTimeout time.Duration
	// BodyTimeout bounds the time a request's body may take to arrive,
	// from the end of its headers; a body later than that gets 408
	// request_timeout. 0: no bound.
	BodyTimeout time.Duration
	// SchemaVersion is the migration version this build's queries need:
	// /readyz answers 503 while the database is behind it.
	SchemaVersion int64
	// Metrics, when set, counts every request and is served at /metrics,
	// unless MetricsElsewhere.
	Metrics *metrics.Metrics
	// MetricsElsewhere leaves /metrics out of the routes: another listener
	// serves it (METRICS_ADDR).
	MetricsElsewhere bool
	// AuthTokens, when set, are the bearer tokens every route but the open
	// ones of addRoutes accepts; any other request to them, or to a path
	// that matches no route, gets 401 unauthorized. Empty: no check.
	AuthTokens []string
	// Reads, when set, serves the GET routes' queries instead of the store:
	// production passes db.New(pool) for the pool of DATABASE_READ_URL.
	Reads userReader
}

// Server is the service's HTTP handler.
type Server struct {
	handler  http.Handler
	draining atomic.Bool
	logger   *slog.Logger
	metrics  *metrics.Metrics
}

// New returns the service's HTTP handler: every route of routes.go behind
// the middleware chain of newHandler, with the database work of each
// request bounded by RequestTimeout from its start, which comes after the
// request's body has been read (timeout.go). Production passes
// db.New(pool) as the store and migrations.VersionReader{Q: pool} as the
// database, and serves it on s.Listener(ln).
func New(logger *slog.Logger, store userStore, database databaseProbe, opts Options) *Server {
	logger = slog.New(requestIDHandler{logger.Handler()})
	s := &Server{logger: logger, metrics: opts.Metrics}
	mux := http.NewServeMux()
	served := opts.Metrics
	if opts.MetricsElsewhere {
		served = nil
	}
	reads := opts.Reads
	if reads == nil {
		reads = store
	}
	if opts.RequestTimeout > 0 {
		reads = timedReader{reader: reads, timeout: opts.RequestTimeout}
		store = timedStore{timedReader: timedReader{reader: store, timeout: opts.RequestTimeout}, store: store}
	}
	addRoutes(mux, logger, store, reads, readiness{database: database, want: opts.SchemaVersion, draining: &s.draining, timeout: min(opts.RequestTimeout, readyTimeout)}, served)
	s.handler = newHandler(mux, logger, opts)
	return s
}

// middleware wraps a handler in one step of the chain every request takes.
type middleware func(http.Handler) http.Handler

// newHandler serves mux's routes through the middleware every request
// takes, outermost first.
func newHandler(mux *http.ServeMux, logger *slog.Logger, opts Options) http.Handler {
	chain := []middleware{
		withRequestID,                         // requestid.go
		logRequests(logger),                   // accesslog.go
		countRequests(opts.Metrics),           // metrics.go
		withSafeHeaders,                       // headers.go
		checkFraming(logger),                  // framing.go
		limitURI(logger),                      // limits.go
		withBodyTimeout(opts.BodyTimeout),     // timeout.go
		withRoute(mux),                        // router.go
		requireToken(opts.AuthTokens, logger), // auth.go
	}
	h := serveRoute(mux, logger) // router.go
	for _, m := range slices.Backward(chain) {
		h = m(h)
	}
	return h
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		// A client's next request then goes out on a new connection, which
		// the listener accepts or refuses, not on a kept-alive one that
		// the shutdown may close as idle just as the request is sent.
		w.Header().Set("Connection", "close")
	}
	s.handler.ServeHTTP(w, r)
}

// Drain makes /readyz answer 503 from now on, so that load balancers stop
// sending new requests while the ones in flight finish, and every response
// close its connection. It does not stop serving: that is
// http.Server.Shutdown's job.
func (s *Server) Drain() {
	s.draining.Store(true)
}
