package server

import (
	"log/slog"
	"net/http"

	"usersvc/internal/metrics"
)

// addRoutes lists every route the service serves.
func addRoutes(mux *http.ServeMux, logger *slog.Logger, store userStore, ready readiness, m *metrics.Metrics) {
	mux.Handle("POST /users", handleUserCreate(logger, store))
	mux.Handle("GET /users", handleUserList(logger, store))
	mux.Handle("GET /users/{id}", handleUserGet(logger, store))
	mux.Handle("PUT /users/{id}", handleUserRename(logger, store))
	mux.Handle("DELETE /users/{id}", handleUserDelete(logger, store))
	mux.Handle("GET /healthz", handleHealthz(logger))
	mux.Handle("GET /readyz", handleReadyz(logger, ready))
	mux.Handle("GET /openapi.yaml", handleOpenAPI())
	if m != nil {
		mux.Handle("GET /metrics", m.Handler(logger))
	}
}
