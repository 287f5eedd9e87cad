package server

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"
	"usersvc/internal/postgres"
)

//go:embed openapi.yaml
var openAPIDocument []byte

// schemaVersioner reads the database's schema version, and so also tells
// whether the database answers. postgres.Probe is one.
type schemaVersioner interface {
	SchemaVersion(ctx context.Context) (int64, error)
}

// databaseProbe is what /readyz asks the database: its schema version, and
// whether it takes writes. postgres.Probe is one.
type databaseProbe interface {
	schemaVersioner
	// ReadOnly returns why the database refuses writes, or "" when it
	// takes them.
	ReadOnly(ctx context.Context) (string, error)
}

// readiness is what /readyz decides by.
type readiness struct {
	database databaseProbe
	want     int64        // the schema version this build needs
	draining *atomic.Bool // set once the process is shutting down
}

// readyTimeout bounds /readyz's database work below the 1 s that probes
// such as Kubernetes' wait by default, so that they get an answer, a 503,
// while the database does not answer.
const readyTimeout = 800 * time.Millisecond

// check returns nil when the server should get traffic: it is not shutting
// down, the database answers and takes writes, and its schema is at least
// the one this build needs. Returns an unavailable *apiError that says
// which otherwise, or the error of a failure that is not the database's
// unavailability: an internal error.
func (rd readiness) check(ctx context.Context) error {
	if rd.draining.Load() {
		return &apiError{code: codeUnavailable, detail: "the server is shutting down"}
	}
	have, err := rd.database.SchemaVersion(ctx)
	if err != nil {
		return notReady(err) // already says "read schema version"
	}
	readOnly, err := rd.database.ReadOnly(ctx)
	if err != nil {
		return notReady(err)
	}
	if readOnly != "" {
		// A standby, or a primary fenced during a failover: the pool drops
		// the connection (DATABASE_URL's next one looks for a host that
		// takes writes), but this instance cannot serve writes now.
		return &apiError{code: codeUnavailable, detail: "the database refuses writes: " + readOnly}
	}
	if have < rd.want {
		return &apiError{code: codeUnavailable, detail: fmt.Sprintf(
			"the database schema is at version %d, this build needs version %d: apply the migrations (usersvc migrate up)", have, rd.want)}
	}
	return nil
}

// notReady returns what /readyz answers for err, from the database: an
// unavailable *apiError whose detail says why, or err itself, an internal
// error.
func notReady(err error) error {
	if u, ok := errors.AsType[*postgres.UnavailableError](postgres.Translate(err)); ok {
		// Unlike the API's answers, /readyz says why: the operator who
		// asks needs to know what to fix.
		return &apiError{code: codeUnavailable, detail: u.Why, cause: u}
	}
	return err
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

// handleReadyz serves GET /readyz: 200 when the server should get traffic;
// 503 while it shuts down, while the database does not answer or refuses
// writes (a standby, or a primary fenced read-only), and while the
// database's schema is behind this build's migrations.
func handleReadyz(logger *slog.Logger, rd readiness) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := rd.check(r.Context()); err != nil {
			return err
		}
		encode(w, r, logger, http.StatusOK, jsonContentType, status{Status: "ok"})
		return nil
	}
}

// handleOpenAPI serves GET /openapi.yaml: the OpenAPI description of this API.
func handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeBytes(w, "application/yaml", openAPIDocument)
	})
}
