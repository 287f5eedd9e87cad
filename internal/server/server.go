// Package server is the HTTP API of usersvc: its routes, handlers and the
// mapping of every error to an RFC 9457 problem response.
package server

import (
	"context"
	"log/slog"
	"net/http"
	"time"
)

// Options are the server's settings.
type Options struct {
	// RequestTimeout bounds the database work of every request.
	RequestTimeout time.Duration
}

// New returns the service's HTTP handler: every route of routes.go, with the
// mux's own 404 and 405 answers turned into problem documents, and every
// request's context bounded by RequestTimeout. Production passes
// db.New(pool) as the store and the pool as the pinger.
func New(logger *slog.Logger, store userStore, database pinger, opts Options) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, logger, store, database)
	var h http.Handler = problemMux{mux: mux, logger: logger}
	h = withTimeout(h, opts.RequestTimeout)
	h = withSecurityHeaders(h)
	return h
}

// withTimeout bounds the context of every request, and so every database
// call made with it.
func withTimeout(next http.Handler, d time.Duration) http.Handler {
	if d <= 0 {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), d)
		defer cancel()
		next.ServeHTTP(w, r.WithContext(ctx))
	})
}

// withSecurityHeaders sets the headers every response carries: API
// responses are neither to be sniffed as another type nor cached.
func withSecurityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Cache-Control", "no-store")
		next.ServeHTTP(w, r)
	})
}

// problemMux serves a ServeMux, but answers requests that match no route
// with a problem document instead of the mux's text/plain 404 or 405. The
// mux still decides which of the two applies and sets the 405's Allow header.
type problemMux struct {
	mux    *http.ServeMux
	logger *slog.Logger
}

// ServeHTTP asks the mux which route matches, then serves through the mux
// as usual, so a matched handler gets the mux's own ResponseWriter and its
// path values. That routes a request twice, which costs less than wrapping
// every response: a wrapper would hide the writer's optional interfaces,
// such as the one http.MaxBytesReader uses to close an oversized request's
// connection.
func (m problemMux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := m.mux.Handler(r)
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
