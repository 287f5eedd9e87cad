package server

import (
	"log/slog"
	"net/http"
	"strings"

	"usersvc/internal/metrics"
)

// addRoutes lists every route the service serves. The API's routes, under
// /users, are wrapped in authed: with tokens configured they answer 401
// unauthorized to a request without one. The probes, the metrics (when m
// is set: not when another listener serves them) and the OpenAPI document
// are open to all.
func addRoutes(mux *http.ServeMux, logger *slog.Logger, store userStore, ready readiness, m *metrics.Metrics, authed func(http.Handler) http.Handler) {
	mux.Handle("POST /users", authed(handleUserCreate(logger, store)))
	mux.Handle("GET /users", authed(handleUserList(logger, store)))
	mux.Handle("GET /users/{id}", authed(handleUserGet(logger, store)))
	mux.Handle("PUT /users/{id}", authed(handleUserRename(logger, store)))
	mux.Handle("DELETE /users/{id}", authed(handleUserDelete(logger, store)))
	mux.Handle("GET /healthz", handleHealthz(logger))
	mux.Handle("GET /readyz", handleReadyz(logger, ready))
	mux.Handle("GET /openapi.yaml", handleOpenAPI())
	if m != nil {
		mux.Handle("GET /metrics", m.Handler(logger))
	}
}

// underAPI reports whether path is /users or below it. A request there
// that matches no route gets the token check too, before its 404 or 405:
// a client without a token learns nothing, not even which methods and
// paths exist.
func underAPI(path string) bool {
	return path == "/users" || strings.HasPrefix(path, "/users/")
}
