// Package server is the HTTP API of usersvc: its routes, handlers and the
// mapping of every error to an RFC 9457 problem response, with the request
// id, access log and metrics every request gets.
package server

import (
	"log/slog"
	"net/http"
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
	// AuthTokens, when set, are the bearer tokens the /users routes accept;
	// any other request to them gets 401 unauthorized. Empty: no check.
	AuthTokens []string
}

// Server is the service's HTTP handler.
type Server struct {
	handler  http.Handler
	draining atomic.Bool
	logger   *slog.Logger
	metrics  *metrics.Metrics
}

// New returns the service's HTTP handler: every route of routes.go, with the
// mux's own 404 and 405 answers turned into problem documents (after the
// token check for paths under /users, as for the routes there), a request
// framed by Transfer-Encoding or with a target longer than maxURIBytes
// refused before routing, every request's body bounded by BodyTimeout and
// its database work by RequestTimeout, and every request given an id, a
// line in the access log and a place in the metrics. Production passes
// db.New(pool) as the store and migrations.VersionReader{Q: pool} as the
// database, and serves it on s.Listener(ln).
func New(logger *slog.Logger, store userStore, database schemaVersioner, opts Options) *Server {
	logger = slog.New(requestIDHandler{logger.Handler()})
	s := &Server{logger: logger, metrics: opts.Metrics}
	if opts.RequestTimeout > 0 {
		store = timedStore{store: store, timeout: opts.RequestTimeout}
		database = timedVersioner{database: database, timeout: opts.RequestTimeout}
	}
	mux := http.NewServeMux()
	served := opts.Metrics
	if opts.MetricsElsewhere {
		served = nil
	}
	addRoutes(mux, logger, store, readiness{database: database, want: opts.SchemaVersion, draining: &s.draining}, served)
	s.handler = observe(checkFraming(limitURI(problemMux{mux: mux, logger: logger, auth: newAuthenticator(opts.AuthTokens)}, logger), logger), logger, opts.Metrics, opts.BodyTimeout)
	return s
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

// problemMux serves a ServeMux, but answers requests that match no route
// with a problem document instead of the mux's text/plain 404 or 405. The
// mux still decides which of the two applies and sets the 405's Allow header.
// Under /users, with tokens configured, a request without a valid one gets
// auth's 401 before any handler runs, whether a route matches or not.
type problemMux struct {
	mux    *http.ServeMux
	logger *slog.Logger
	auth   authenticator
}

// ServeHTTP asks the mux which route matches, then serves through the mux
// as usual, so that a matched handler gets its path values and the request
// its Pattern. That routes a request twice, which costs less than putting
// every response through an unmatchedWriter.
func (m problemMux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := m.mux.Handler(r)
	if m.auth.enabled() && underAPI(r.URL.Path) {
		if err := m.auth.check(r); err != nil {
			r.Pattern = pattern // the access log and metrics name the route refused, as the mux would
			unauthorized(w, r, m.logger, err)
			return
		}
	}
	if pattern != "" {
		m.mux.ServeHTTP(w, r)
		return
	}
	// No route matched: h is the mux's own 404, 405 or redirect handler.
	h.ServeHTTP(&unmatchedWriter{ResponseWriter: w, r: r, logger: m.logger}, r)
}

// unmatchedWriter replaces a 404 or 405 written by the mux with a problem.
type unmatchedWriter struct {
	http.ResponseWriter
	r        *http.Request
	logger   *slog.Logger
	replaced bool
}

func (w *unmatchedWriter) WriteHeader(status int) {
	var err error
	switch status {
	case http.StatusNotFound:
		err = &requestError{code: codeNotFound, detail: "no route matches this path"}
	case http.StatusMethodNotAllowed:
		err = &requestError{code: codeMethodNotAllowed, detail: "this path does not support method " + w.r.Method + "; see the Allow header"}
	default:
		w.ResponseWriter.WriteHeader(status)
		return
	}
	w.replaced = true
	writeError(w.ResponseWriter, w.r, w.logger, err)
}

func (w *unmatchedWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil // the mux's text body, already replaced
	}
	return w.ResponseWriter.Write(b)
}
