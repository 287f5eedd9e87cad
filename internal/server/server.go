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
	"usersvc/internal/postgres"
)

// Options are the server's settings and its optional parts.
type Options struct {
	// RequestTimeout bounds the database work of every request, from the
	// moment its body has been read. 0: no bound.
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
	// production passes db.New(postgres.Reads{Pool: pool}) for the pool of
	// DATABASE_READ_URL.
	Reads userReader
	// Changes, when set, sequences the change feed and wakes the requests
	// waiting on it: production runs it (postgres.Changes.Run). Unset, the
	// feed serves what another instance sequenced, without waiting.
	Changes *postgres.Changes
}

// Server is the service's HTTP handler.
type Server struct {
	http.Handler
	draining *atomic.Bool
	feed     *postgres.Changes
}

// New returns the service's HTTP handler: every route of routes.go behind
// the middleware every request takes. Production passes db.New(pool) as
// the store and postgres.Probe{Q: pool} as the database, and serves it on
// s.Listener(ln).
func New(logger *slog.Logger, store userStore, database databaseProbe, opts Options) *Server {
	logger = slog.New(requestIDHandler{logger.Handler()})
	s := &Server{draining: new(atomic.Bool), feed: opts.Changes}
	served := opts.Metrics
	if opts.MetricsElsewhere {
		served = nil
	}
	reads := opts.Reads
	if reads == nil {
		reads = store
	}
	rs := routes{mux: http.NewServeMux(), auth: newAuthenticator(opts.AuthTokens), logger: logger, timeout: opts.RequestTimeout, feed: opts.Changes}
	addRoutes(rs, store, reads, readiness{database: database, want: opts.SchemaVersion, draining: s.draining}, served)
	s.Handler = chain(rs,
		observe(logger, opts.Metrics),               // observe.go
		guard(logger, opts.BodyTimeout, s.draining), // framing.go
	)
	return s
}

// middleware wraps a handler in one step of the chain every request takes.
type middleware func(http.Handler) http.Handler

// chain returns h behind the middleware, outermost first.
func chain(h http.Handler, outermostFirst ...middleware) http.Handler {
	for _, m := range slices.Backward(outermostFirst) {
		h = m(h)
	}
	return h
}

// Drain makes /readyz answer 503 from now on, so that load balancers stop
// sending new requests while the ones in flight finish, and every response
// close its connection, and the requests waiting on the change feed
// answer at once. It does not stop serving: that is
// http.Server.Shutdown's job.
func (s *Server) Drain() {
	s.draining.Store(true)
	if s.feed != nil {
		s.feed.Stop()
	}
}
