package main

import (
	"context"
	"log/slog"
	"net/http"
	"time"

	"usersvc/internal/config"
	"usersvc/internal/metrics"
)

// scrapeTimeout bounds reading a scrape's request and writing its answer.
const scrapeTimeout = 15 * time.Second

// startMetrics serves m at /metrics on addr (METRICS_ADDR) until the
// returned function is called, which closes the listener and waits for the
// server. The API's listener then does not serve /metrics, so that the
// metrics can stay on a private network while the API is public.
func startMetrics(ctx context.Context, addr string, m *metrics.Metrics, logger *slog.Logger) (stop func(), err error) {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", m.Handler(logger))
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: config.ReadHeaderTimeout,
		ReadTimeout:       scrapeTimeout,
		WriteTimeout:      scrapeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	stop, bound, err := serveAside("METRICS_ADDR", addr, srv)
	if err != nil {
		return nil, err
	}
	logger.InfoContext(ctx, "metrics listening", slog.String("addr", bound.String()))
	return stop, nil
}
