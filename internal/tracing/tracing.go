// Package tracing exports OpenTelemetry traces of the requests and of
// their SQL statements when the standard OTEL_* variables ask for it, and
// adds nothing to the request path when they do not.
package tracing

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strings"

	"github.com/exaring/otelpgx"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.opentelemetry.io/contrib/instrumentation/net/http/otelhttp"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"
)

// provider is the tracer provider Start made, while tracing is on.
var provider *sdktrace.TracerProvider

// Start turns tracing on when the environment asks for it, as the
// OpenTelemetry specification says: an OTLP endpoint in
// OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, with
// OTEL_SDK_DISABLED not true and OTEL_TRACES_EXPORTER otlp or unset. The
// SDK reads the rest itself: OTEL_SERVICE_NAME (default usersvc),
// OTEL_TRACES_SAMPLER and its _ARG, the OTLP and batch settings. Export
// failures are logged to logger and lose spans, never requests. Returns
// the function that flushes the spans and stops, and nil when tracing
// stays off.
func Start(ctx context.Context, logger *slog.Logger, version string) (stop func(context.Context) error, err error) {
	getenv := func(name string) string { return strings.TrimSpace(os.Getenv(name)) }
	switch {
	case strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true"):
		return nil, nil
	case getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "":
		return nil, nil
	}
	switch e := getenv("OTEL_TRACES_EXPORTER"); e {
	case "", "otlp":
	case "none":
		return nil, nil
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: %q is not supported: use otlp or none", e)
	}
	var exporter sdktrace.SpanExporter
	protocol := cmp.Or(getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"), getenv("OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf")
	switch protocol {
	case "http/protobuf":
		exporter, err = otlptracehttp.New(ctx)
	case "grpc":
		exporter, err = otlptracegrpc.New(ctx)
	default:
		return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL: %q is not supported: use http/protobuf or grpc", protocol)
	}
	if err != nil {
		return nil, fmt.Errorf("the traces' OTLP exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(semconv.ServiceName("usersvc"), semconv.ServiceVersion(version)),
		resource.WithFromEnv(), // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES override
		resource.WithTelemetrySDK())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, fmt.Errorf("OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	// Handler and PgxTracer hand provider over themselves: no global but
	// the SDK's error handler, where the exporter's failures go.
	provider = sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		logger.Warn("traces: export failed; spans were dropped", slog.Any("err", err))
	}))
	logger.Info("tracing on", slog.String("protocol", protocol))
	return func(ctx context.Context) error {
		p := provider
		provider = nil
		if err := p.Shutdown(ctx); err != nil {
			return fmt.Errorf("flush the traces: %w", err)
		}
		return nil
	}, nil
}

// Handler returns h with a server span for each request but those polled
// reports, the child of the one its traceparent names, if any, while
// tracing is on; else h.
func Handler(h http.Handler, polled func(*http.Request) bool) http.Handler {
	if provider == nil {
		return h
	}
	return otelhttp.NewHandler(h, "usersvc",
		otelhttp.WithFilter(func(r *http.Request) bool { return !polled(r) }),
		otelhttp.WithTracerProvider(provider),
		otelhttp.WithPropagators(propagation.TraceContext{}),
		// Until the mux has matched a route, which Route then adds.
		otelhttp.WithSpanNameFormatter(func(_ string, r *http.Request) string { return r.Method }))
}

// Route names ctx's server span after the method and the route the mux
// matched, as the HTTP conventions say, once it has.
func Route(ctx context.Context, method, route string) {
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.SetName(method + " " + route)
		span.SetAttributes(semconv.HTTPRoute(route))
	}
}

// PgxTracer returns the tracer that gives each SQL statement a span,
// named after its sqlc query, and each connect and pool acquire one, while
// tracing is on; else nil. No span carries the statement's text or its
// arguments, so prepares have none: their statements are named by their
// SQL (postgres.prepareQueries).
func PgxTracer() pgx.QueryTracer {
	if provider == nil {
		return nil
	}
	return struct{ statementTracer }{otelpgx.NewTracer(
		otelpgx.WithTracerProvider(provider),
		otelpgx.WithSpanNameFunc(statementName),
		otelpgx.WithDisableQuerySpanNamePrefix(),
		otelpgx.WithDisableSQLStatementInAttributes(),
		// The older name of db.system.name, which many backends still query.
		otelpgx.WithTracerAttributes(attribute.String("db.system", "postgresql")))}
}

// statementTracer is what PgxTracer's tracer shows pgx of otelpgx's.
type statementTracer interface {
	pgx.QueryTracer
	pgx.ConnectTracer
	pgxpool.AcquireTracer
}

// statementName returns the name sqlc gives sql ("-- name: GetUser :one"),
// or else its first word: never its text.
func statementName(sql string) string {
	if rest, ok := strings.CutPrefix(sql, "-- name: "); ok {
		name, _, _ := strings.Cut(rest, " ")
		return name
	}
	if words := strings.Fields(sql); len(words) > 0 {
		return strings.ToUpper(words[0])
	}
	return "SQL"
}

// LogAttrs returns the trace_id and span_id of ctx's span, or nothing.
func LogAttrs(ctx context.Context) []slog.Attr {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return nil
	}
	return []slog.Attr{slog.String("trace_id", sc.TraceID().String()), slog.String("span_id", sc.SpanID().String())}
}
