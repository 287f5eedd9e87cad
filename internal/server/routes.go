package server

import (
	"log/slog"
	"net/http"
	"strings"
	"time"

	"usersvc/internal/config"
	"usersvc/internal/metrics"
	"usersvc/internal/postgres"
)

// addRoutes lists every route the service serves. Each route of rs.Handle
// needs a token when tokens are configured; the open ones, rs.Open, are the
// probes, the metrics (when m is set: not when another listener serves
// them), the OpenAPI document and its reference page. The GET routes read
// through reads, the others through store.
func addRoutes(rs routes, store userStore, reads userReader, ready readiness, m *metrics.Metrics) {
	logger := rs.logger
	rs.Handle("POST /users", handleUserCreate(logger, store))
	rs.Handle("GET /users", handleUserList(logger, reads))
	rs.HandleWaiting("GET /users/changes", handleChanges(logger, store, rs.feed))
	rs.Handle("GET /users/{id}", handleUserGet(logger, reads))
	rs.Handle("PUT /users/{id}", handleUserRename(logger, store))
	rs.Handle("PATCH /users/{id}", handleUserPatch(logger, store))
	rs.Handle("DELETE /users/{id}", handleUserDelete(logger, store))

	rs.Open("GET /healthz", handleHealthz(logger))
	rs.Open("GET /readyz", handle(logger, min(rs.timeout, readyTimeout), handleReadyz(logger, ready)))
	rs.Open("GET /openapi.yaml", handleOpenAPI())
	rs.Open("GET /docs", handleDocs())
	rs.Open("GET /docs/{file...}", handleDocsFile(logger))
	rs.Open("GET /{$}", handleRoot())
	if m != nil {
		rs.Open("GET /metrics", m.Handler(logger))
	}
}

// routes registers routes on a mux: protected by default.
type routes struct {
	mux     *http.ServeMux
	auth    authenticator
	logger  *slog.Logger
	timeout time.Duration // REQUEST_TIMEOUT
	feed    *postgres.Changes
}

// Handle serves h at pattern to requests with a valid token, when tokens
// are configured (see protect), each with its database work bounded by
// REQUEST_TIMEOUT (see handle).
func (rs routes) Handle(pattern string, h handlerFunc) {
	if rs.feed != nil && !strings.HasPrefix(pattern, http.MethodGet+" ") {
		h = rs.wrote(h)
	}
	rs.mux.Handle(pattern, rs.auth.protect(rs.logger, handle(rs.logger, rs.timeout, h)))
}

// HandleWaiting is Handle for a route that may wait up to maxChangesWait
// for the database to have something to answer: its database work is
// bounded by REQUEST_TIMEOUT beyond that.
func (rs routes) HandleWaiting(pattern string, h handlerFunc) {
	rs.mux.Handle(pattern, rs.auth.protect(rs.logger, handle(rs.logger, rs.timeout+maxChangesWait, outlast(h))))
}

// outlast moves the connection's deadlines, which the HTTP server's
// ReadTimeout and WriteTimeout set for every request (config.WriteTimeout),
// past h's own: a request that may wait longer still gets its answer.
func outlast(h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if d, ok := r.Context().Deadline(); ok {
			rc := http.NewResponseController(w)
			rc.SetReadDeadline(d.Add(config.WriteMargin))
			rc.SetWriteDeadline(d.Add(config.WriteMargin))
		}
		return h(w, r)
	}
}

// wrote tells the change feed of every write h answers without an error:
// the requests waiting on it then read it at once.
func (rs routes) wrote(h handlerFunc) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		err := h(w, r)
		if err == nil {
			rs.feed.Wrote()
		}
		return err
	}
}

// Open serves h at pattern to anyone, with or without a token.
func (rs routes) Open(pattern string, h http.Handler) {
	rs.mux.Handle(pattern, h)
}

// ServeHTTP serves the mux's routes, but answers a request that matches
// none with a problem document instead of the mux's text/plain 404 or 405,
// or with 401 when tokens are configured and it has none, unless it is
// the 405 of an open route. The mux still decides which of the two applies
// and sets the 405's Allow header.
func (rs routes) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rs.mux.ServeHTTP(&unmatchedWriter{ResponseWriter: w, r: r, rs: rs}, r)
}

// openPath reports whether a GET of r's path is an open route: then the
// 405 of another method there is answered to anyone, as the route is.
func (rs routes) openPath(r *http.Request) bool {
	get := *r
	get.Method = http.MethodGet
	h, pattern := rs.mux.Handler(&get)
	_, protected := h.(protectedRoute)
	return pattern != "" && !protected
}

// unmatchedWriter replaces a 404 or 405 written by the mux, for a request
// that matched no route, with a problem.
type unmatchedWriter struct {
	http.ResponseWriter
	r        *http.Request
	rs       routes
	replaced bool
}

func (w *unmatchedWriter) WriteHeader(status int) {
	if w.r.Pattern != "" || (status != http.StatusNotFound && status != http.StatusMethodNotAllowed) {
		w.ResponseWriter.WriteHeader(status)
		return
	}
	err := w.rs.auth.check(w.r)
	switch {
	case err != nil && (status == http.StatusNotFound || !w.rs.openPath(w.r)):
		// A client without a token learns nothing, not even which
		// methods and paths exist.
		w.Header().Del("Allow")
	case status == http.StatusNotFound:
		err = &apiError{code: codeNotFound, detail: "no route matches this path"}
	default:
		err = &apiError{code: codeMethodNotAllowed, detail: "this path does not support method " + w.r.Method + "; see the Allow header"}
	}
	w.replaced = true
	writeError(w.ResponseWriter, w.r, w.rs.logger, err)
}

func (w *unmatchedWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil // the mux's text body, already replaced
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *unmatchedWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
