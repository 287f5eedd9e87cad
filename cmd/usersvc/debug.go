package main

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/pprof"
	"usersvc/internal/config"
)

// startDebug serves net/http/pprof's profiles on addr until the returned
// function is called, which closes the listener and waits for the server.
// The profiles show the program's internals and cost CPU to take: addr
// belongs on loopback or a private network, never on the public one.
func startDebug(ctx context.Context, addr string, logger *slog.Logger) (stop func(), err error) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("POST /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	// No WriteTimeout: a CPU profile or a trace streams for as long as asked.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: config.ReadHeaderTimeout, ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn)}
	stop, bound, err := serveAside("DEBUG_ADDR", addr, srv)
	if err != nil {
		return nil, err
	}
	logger.WarnContext(ctx, "debug listener serves profiles; keep it off public networks", slog.String("addr", bound.String()))
	return stop, nil
}
