package server

import (
	"log/slog"
	"net/http"
	"strings"

	"usersvc/internal/metrics"
)

// addRoutes lists every route the service serves. With tokens configured,
// every request under /users (see underAPI), these routes' and those that
// match none, needs one: problemMux checks it before any handler. The probes,
// the metrics (when m is set: not when another listener serves them), the
// OpenAPI document and its reference page are open to all.
func addRoutes(mux *http.ServeMux, logger *slog.Logger, store userStore, ready readiness, m *metrics.Metrics) {
	mux.Handle("POST /users", handleUserCreate(logger, store))
	mux.Handle("GET /users", handleUserList(logger, store))
	mux.Handle("GET /users/{id}", handleUserGet(logger, store))
	mux.Handle("PUT /users/{id}", handleUserRename(logger, store))
	mux.Handle("DELETE /users/{id}", handleUserDelete(logger, store))
	mux.Handle("GET /healthz", handleHealthz(logger))
	mux.Handle("GET /readyz", handleReadyz(logger, ready))
	mux.Handle("GET /openapi.yaml", handleOpenAPI())
	mux.Handle("GET /docs", handleDocs())
	mux.Handle("GET /docs/{file...}", handleDocsFile(logger))
	mux.Handle("GET /{$}", handleRoot())
	if m != nil {
		mux.Handle("GET /metrics", m.Handler(logger))
	}
}

// underAPI reports whether path is /users or below it: the paths that need
// a token when tokens are configured. A request there that matches no
// route is checked too, before its 404 or 405, so that a client without a
// token learns nothing, not even which methods and paths exist.
func underAPI(path string) bool {
	return path == "/users" || strings.HasPrefix(path, "/users/")
}
