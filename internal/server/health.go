package server

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
)

//go:embed openapi.yaml
var openAPIDocument []byte

// pinger reports whether the database answers; *pgxpool.Pool is one.
type pinger interface {
	Ping(ctx context.Context) error
}

type status struct {
	Status string `json:"status"`
}

// handleHealthz serves GET /healthz: 200 while the process runs.
func handleHealthz(logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		encode(w, r, logger, http.StatusOK, jsonContentType, status{Status: "ok"})
	})
}

// handleReadyz serves GET /readyz: 200 when the database answers, else 503.
func handleReadyz(logger *slog.Logger, database pinger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := database.Ping(r.Context()); err != nil {
			writeError(w, r, logger, fmt.Errorf("ping database: %w", errors.Join(errUnavailable, err)))
			return
		}
		encode(w, r, logger, http.StatusOK, jsonContentType, status{Status: "ok"})
	})
}

// handleOpenAPI serves GET /openapi.yaml: the OpenAPI description of this API.
func handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/yaml")
		h.Set("Content-Length", strconv.Itoa(len(openAPIDocument)))
		_, _ = w.Write(openAPIDocument)
	})
}
