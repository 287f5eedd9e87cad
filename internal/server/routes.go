package server

import (
	"log/slog"
	"net/http"

	"usersvc/internal/metrics"
)

// addRoutes lists every route the service serves. With tokens configured,
// every route needs one (requireToken), and so does every request that
// matches no route, except the open ones marked here: the probes, the
// metrics (when m is set: not when another listener serves them), the
// OpenAPI document and its reference page. The GET routes read through
// reads, the others through store.
func addRoutes(mux *http.ServeMux, logger *slog.Logger, store userStore, reads userReader, ready readiness, m *metrics.Metrics) {
	mux.Handle("POST /users", handleUserCreate(logger, store))
	mux.Handle("GET /users", handleUserList(logger, reads))
	mux.Handle("GET /users/{id}", handleUserGet(logger, reads))
	mux.Handle("PUT /users/{id}", handleUserRename(logger, store))
	mux.Handle("DELETE /users/{id}", handleUserDelete(logger, store))

	mux.Handle("GET /healthz", open(handleHealthz(logger)))
	mux.Handle("GET /readyz", open(handleReadyz(logger, ready)))
	mux.Handle("GET /openapi.yaml", open(handleOpenAPI()))
	mux.Handle("GET /docs", open(handleDocs()))
	mux.Handle("GET /docs/{file...}", open(handleDocsFile(logger)))
	mux.Handle("GET /{$}", open(handleRoot()))
	if m != nil {
		mux.Handle("GET /metrics", open(m.Handler(logger)))
	}
}

// openRoute is a route that needs no token: see open.
type openRoute struct{ http.Handler }

// open marks h as a route that anyone may call, with or without a token.
func open(h http.Handler) http.Handler { return openRoute{h} }
