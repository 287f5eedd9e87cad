package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"time"

	"usersvc/db"
	"usersvc/internal/config"
	"usersvc/internal/metrics"
	"usersvc/internal/postgres"
	"usersvc/internal/server"
	"usersvc/internal/tracing"
	"usersvc/migrations"
)

// HTTP server limits. Requests are small JSON documents, so these are
// generous for clients and still bound what a slow or hostile one can hold.
const (
	// idleTimeout is above the 60 s idle timeout of common load balancers
	// (AWS's, for one), which must close an idle connection before the
	// server does: else the balancer may send a request on a connection
	// the server is closing, and its client gets a 502.
	idleTimeout    = 75 * time.Second
	maxHeaderBytes = 64 << 10
)

// authOffWarning is logged at start when no token is configured.
const authOffWarning = "authentication is off: any client may read and change users; set AUTH_TOKENS or AUTH_TOKENS_FILE unless a proxy in front authenticates"

// serve runs the HTTP server until ctx is done, then shuts it down
// gracefully within SHUTDOWN_TIMEOUT. It listens at once, whether or not
// the database answers: /healthz is 200 from the start, and /readyz tells
// when the database is reachable and migrated.
func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: usersvc serve\n\nServes the API; configuration comes from environment variables (see the README).\n")
	}
	if err := parseFlags(fs, args); err != nil {
		return helpIsNoError(err)
	}
	if fs.NArg() > 0 {
		return usageErrorf("serve: unexpected arguments %q", fs.Args())
	}
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	if err := cfg.RequireDatabase(); err != nil {
		return err
	}
	logger := newLogger(cfg, stderr)
	tuneGC(os.LookupEnv)
	stopTracing, err := tracing.Start(ctx, logger, buildVersion())
	if err != nil {
		return err
	}

	pool, err := postgres.NewPool(ctx, cfg)
	if err != nil {
		return err
	}
	defer pool.Close()
	readPool, err := postgres.NewReadPool(ctx, cfg)
	if err != nil {
		return err
	}
	if readPool != nil {
		defer readPool.Close()
	}
	m := metrics.New(buildVersion())
	if err := m.RegisterPool(pool); err != nil {
		return fmt.Errorf("register pool metrics: %w", err)
	}
	opts := server.Options{
		RequestTimeout:   cfg.RequestTimeout,
		BodyTimeout:      cfg.BodyTimeout,
		SchemaVersion:    migrations.Latest(),
		Metrics:          m,
		MetricsElsewhere: cfg.MetricsAddr != "",
		AuthTokens:       cfg.AuthTokens,
	}
	if readPool != nil {
		opts.Reads = db.New(postgres.Reads{Pool: readPool})
	}
	opts.Changes = postgres.NewChanges(pool)
	handler := server.New(logger, db.New(pool), postgres.Probe{Q: pool}, opts)
	srv := newHTTPServer(ctx, cfg, tracing.Handler(handler, server.Polled), logger)
	if cfg.DebugAddr != "" {
		stopDebug, err := startDebug(ctx, cfg.DebugAddr, logger)
		if err != nil {
			return err
		}
		defer stopDebug()
	}
	if cfg.MetricsAddr != "" {
		stopMetrics, err := startMetrics(ctx, cfg.MetricsAddr, m, logger)
		if err != nil {
			return err
		}
		defer stopMetrics()
	}
	ln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.HTTPAddr, err)
	}
	logger.InfoContext(ctx, "listening",
		slog.String("addr", ln.Addr().String()),
		slog.String("version", buildVersion()),
		slog.String("db", cfg.DatabaseHost()),
		slog.Int64("schema_version", migrations.Latest()),
		slog.Bool("auto_migrate", cfg.AutoMigrate),
		slog.Int("auth_tokens", len(cfg.AuthTokens)))
	if len(cfg.AuthTokens) == 0 {
		logger.WarnContext(ctx, authOffWarning)
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(handler.Listener(ln)) }()

	// Beside the server, which answers /readyz with 503 until the database
	// is reachable and migrated.
	startCtx, stopStarting := context.WithCancel(ctx)
	defer stopStarting()
	started := make(chan error, 1)
	go func() { started <- startDatabase(startCtx, cfg, pool, logger) }()
	stopBackground := start(ctx,
		postgres.NewKeyPurger(logger, db.New(pool), cfg.IdempotencyTTL, cfg.RequestTimeout).Run,
		postgres.NewChangePurger(logger, db.New(pool), cfg.ChangesRetention, cfg.RequestTimeout).Run,
		func(ctx context.Context) { opts.Changes.Run(ctx, logger, cfg.ChangesListen, cfg.RequestTimeout) })
	defer stopBackground()

	var failed error
wait:
	for {
		select {
		case err := <-serveErr:
			stopStarting()
			if started != nil {
				<-started
			}
			return fmt.Errorf("serve http: %w", err)
		case err := <-started:
			started = nil // done: stop selecting on it
			if err != nil {
				// A migration that failed on a database that answers: a
				// pipeline or an operator must look at it.
				failed = err
				break wait
			}
		case <-ctx.Done():
			break wait
		}
	}
	handler.Drain() // before the background work stops, which may take a call's time
	stopStarting()
	if started != nil {
		<-started
	}
	stopBackground()
	// SHUTDOWN_TIMEOUT bounds the requests in flight, then the flush of
	// their spans, which loses spans rather than fail the exit.
	shutCtx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	err = shutDown(shutCtx, cfg, srv, serveErr, logger)
	if stopTracing != nil {
		if err := stopTracing(shutCtx); err != nil {
			logger.Warn("traces: spans lost at shutdown", slog.Any("err", err))
		}
	}
	if err != nil {
		return errors.Join(failed, err)
	}
	pool.Close()
	logger.Info("stopped")
	return failed
}

// startDatabase applies the migrations for AUTO_MIGRATE, waiting for the
// database as long as it takes. Without AUTO_MIGRATE it pings the database
// once and warns when it does not answer, which is no error: /readyz says
// so until it does. Returns only a migration's failure.
func startDatabase(ctx context.Context, cfg config.Config, pool pinger, logger *slog.Logger) error {
	if cfg.AutoMigrate {
		err := migrateWhenReachable(ctx, cfg, pool, logger)
		if ctx.Err() != nil {
			return nil // stopped before the database came: nothing failed
		}
		return err
	}
	pingCtx, cancel := context.WithTimeout(ctx, cfg.RequestTimeout)
	defer cancel()
	if err := pool.Ping(pingCtx); err != nil && ctx.Err() == nil {
		logger.WarnContext(ctx, "database not reachable yet", slog.String("db", cfg.DatabaseHost()), slog.Any("err", err))
	}
	return nil
}

// start runs each of run until ctx is done or the returned function is
// called, which waits for them to return and may be called again.
func start(ctx context.Context, run ...func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, r := range run {
		wg.Go(func() { r(ctx) })
	}
	return func() {
		cancel()
		wg.Wait()
	}
}

// shutDown stops serving, drained, before ctx (SHUTDOWN_TIMEOUT) ends:
// requests are still accepted for SHUTDOWN_DELAY, then the listener closes
// and the requests in flight finish. Returns an error when they did not
// finish in time; they are then cut off.
func shutDown(ctx context.Context, cfg config.Config, srv *http.Server, serveErr <-chan error, logger *slog.Logger) error {
	logger.Info("shutting down",
		slog.String("delay", cfg.ShutdownDelay.String()),
		slog.String("timeout", cfg.ShutdownTimeout.String()))
	if cfg.ShutdownDelay > 0 {
		select {
		case <-time.After(cfg.ShutdownDelay):
		case <-ctx.Done():
		}
	}
	if err := srv.Shutdown(ctx); err != nil {
		srv.Close()
		return fmt.Errorf("shut down http server: requests still in flight after SHUTDOWN_TIMEOUT (%s) were cut off: %w", cfg.ShutdownTimeout, err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve http: %w", err)
	}
	return nil
}

// tuneGC sets the garbage collector's target to config.GCPercent unless GOGC is
// in the environment, which then rules as it does in every Go program.
// Returns the GOGC in force.
func tuneGC(lookupEnv func(string) (string, bool)) int {
	if _, set := lookupEnv("GOGC"); set {
		old := debug.SetGCPercent(100)
		debug.SetGCPercent(old)
		return old
	}
	debug.SetGCPercent(config.GCPercent)
	return config.GCPercent
}

// newHTTPServer returns the server for handler with every limit set.
// Requests' contexts descend from ctx but are not cancelled with it, so
// that a signal lets the requests in flight finish. Its read and write
// timeouts (config.Config.ReadTimeout, WriteTimeout) never cut off an
// answer the service may still give: the body's own deadline, BODY_TIMEOUT
// after the headers, comes first and answers 408, and net/http lifts it
// once the body is in.
func newHTTPServer(ctx context.Context, cfg config.Config, handler http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Addr:              cfg.HTTPAddr,
		Handler:           handler,
		ReadHeaderTimeout: config.ReadHeaderTimeout,
		ReadTimeout:       cfg.ReadTimeout(),
		WriteTimeout:      cfg.WriteTimeout(),
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		// "OPTIONS *" goes to the handler, which answers it as any request
		// that matches no route, rather than net/http's bare 200.
		DisableGeneralOptionsHandler: true,
		ErrorLog:                     slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
		BaseContext:                  func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
}

// newLogger returns the process's one logger, as LOG_FORMAT and LOG_LEVEL say.
func newLogger(cfg config.Config, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.LogLevel}
	if cfg.LogFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
}

// serveAside serves srv on a listener of its own at addr, which the
// configuration variable named variable set, beside the API's server, until
// the returned function is called: it closes srv and waits for it. Returns
// the address the listener got, or an error that names variable.
func serveAside(variable, addr string, srv *http.Server) (stop func(), bound net.Addr, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: listen on %s: %w", variable, addr, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln) // returns ErrServerClosed once stopped
	}()
	return func() {
		srv.Close()
		<-done
	}, ln.Addr(), nil
}
