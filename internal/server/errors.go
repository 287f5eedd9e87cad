package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// This file is the one place that maps errors to problem responses: a
// handler returns an error, writeError answers with its problem.

// Problem codes: the stable, machine-readable "code" member of every
// problem document. openapi.yaml lists the same set, each on the responses
// of its status (TestOpenAPIProblemCodes).
const (
	codeInvalidJSON          = "invalid_json"
	codeValidationFailed     = "validation_failed"
	codeDuplicateName        = "duplicate_name"
	codeNotFound             = "not_found"
	codeUnauthorized         = "unauthorized"
	codeMethodNotAllowed     = "method_not_allowed"
	codeUnsupportedMediaType = "unsupported_media_type"
	codePayloadTooLarge      = "payload_too_large"
	codeURITooLong           = "uri_too_long"
	codeRequestTimeout       = "request_timeout"
	codeLengthRequired       = "length_required"
	codeInvalidRequest       = "invalid_request"
	codeHeadersTooLarge      = "headers_too_large"
	codeExpectationFailed    = "expectation_failed"
	codePreconditionFailed   = "precondition_failed"
	codeIdempotencyKeyInUse  = "idempotency_key_in_use"
	codeIdempotencyKeyReused = "idempotency_key_reused"
	codeUnavailable          = "unavailable"
	codeInternal             = "internal"
)

// statusClientClosedRequest is nginx's status for a request whose client
// closed the connection before the answer.
const statusClientClosedRequest = 499

// problemKinds gives each code its status and title.
var problemKinds = map[string]struct {
	status int
	title  string
}{
	codeInvalidJSON:          {http.StatusBadRequest, "Invalid JSON"},
	codeValidationFailed:     {http.StatusBadRequest, "Validation failed"},
	codeDuplicateName:        {http.StatusBadRequest, "Duplicate name"},
	codeNotFound:             {http.StatusNotFound, "Not found"},
	codeUnauthorized:         {http.StatusUnauthorized, "Unauthorized"},
	codeMethodNotAllowed:     {http.StatusMethodNotAllowed, "Method not allowed"},
	codeUnsupportedMediaType: {http.StatusUnsupportedMediaType, "Unsupported media type"},
	codePayloadTooLarge:      {http.StatusRequestEntityTooLarge, "Payload too large"},
	codeURITooLong:           {http.StatusRequestURITooLong, "URI too long"},
	codeRequestTimeout:       {http.StatusRequestTimeout, "Request timeout"},
	codeLengthRequired:       {http.StatusLengthRequired, "Length required"},
	codeInvalidRequest:       {http.StatusBadRequest, "Invalid request"},
	codeHeadersTooLarge:      {http.StatusRequestHeaderFieldsTooLarge, "Request headers too large"},
	codeExpectationFailed:    {http.StatusExpectationFailed, "Expectation failed"},
	codePreconditionFailed:   {http.StatusPreconditionFailed, "Precondition failed"},
	codeIdempotencyKeyInUse:  {http.StatusConflict, "Idempotency key in use"},
	codeIdempotencyKeyReused: {http.StatusUnprocessableEntity, "Idempotency key reused"},
	codeUnavailable:          {http.StatusServiceUnavailable, "Service unavailable"},
	codeInternal:             {http.StatusInternalServerError, "Internal error"},
}

// problem is an RFC 9457 problem details document with our "code" and, for
// validation failures, "errors" extension members.
type problem struct {
	Type     string       `json:"type"`
	Title    string       `json:"title"`
	Status   int          `json:"status"`
	Detail   string       `json:"detail"`
	Instance string       `json:"instance,omitempty"`
	Code     string       `json:"code"`
	Errors   []fieldError `json:"errors,omitempty"`
	// RequestID is the request's X-Request-ID, which its log lines carry
	// too: a user's report of a problem can be matched to the log.
	RequestID string `json:"request_id,omitempty"`
}

// fieldError says what is wrong with one input.
type fieldError struct {
	In     string `json:"in"` // body, query, path or header
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// apiError is the API's one error type: how a request failed, as the
// client is to see it. Its code decides the status and title
// (problemKinds); detail and fields are for the client; challenge is the
// WWW-Authenticate value of a 401; cause, when set, is for the log only.
// Handlers return it, or any other error, which classify translates.
type apiError struct {
	code      string
	detail    string
	fields    []fieldError
	challenge string
	cause     error
}

func (e *apiError) Error() string {
	if e.cause != nil {
		return e.code + ": " + e.detail + ": " + e.cause.Error()
	}
	return e.code + ": " + e.detail
}

func (e *apiError) Unwrap() error { return e.cause }

// Errors that stand for one outcome wherever they occur.
var (
	errNotFound  = &apiError{code: codeNotFound, detail: "no user has this id"}
	errNameTaken = &apiError{code: codeDuplicateName, detail: "another user already has this name"}
)

func invalidJSON(detail string) error {
	return &apiError{code: codeInvalidJSON, detail: detail}
}

func invalidFields(fields ...fieldError) error {
	return &apiError{code: codeValidationFailed, detail: "the request has invalid fields; see errors", fields: fields}
}

// unavailable returns the error for a database that cannot serve now, for
// the reason why (see unavailableBecause), which the log shows before the
// cause; the client's detail is generic on purpose: why is for operators
// (the log, /readyz).
func unavailable(why string, cause error) *apiError {
	return &apiError{code: codeUnavailable, detail: "the database is unavailable or did not answer in time; retry later", cause: fmt.Errorf("%s: %w", why, cause)}
}

// constraintErrors maps each constraint of the schema to what its
// violation means to a client. A violation of a constraint not listed is an
// internal error: a schema change that forgot this table, which a test
// catches (TestEveryConstraintHasAProblem).
var constraintErrors = map[string]*apiError{
	"users_name_key": errNameTaken,
	// The handlers validate names as this constraint does; this is the
	// database holding the line should they ever disagree.
	"users_name_length": {code: codeValidationFailed, detail: "the request has invalid fields; see errors",
		fields: []fieldError{{In: "body", Field: "name", Detail: nameRule}}},
}

// classify returns err as an *apiError: err itself when it is one (or
// wraps one), the meaning of a database error, else internal.
func classify(err error) *apiError {
	if e, ok := errors.AsType[*apiError](err); ok {
		return e
	}
	if e := databaseError(err); e != nil {
		return e
	}
	return &apiError{code: codeInternal, detail: "the server failed to handle the request", cause: err}
}

// databaseError returns what a database error means to a client: not
// found, a violated constraint, or the database unavailable. Returns nil
// for an error that is none of these.
func databaseError(err error) *apiError {
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotFound
	}
	if why := unavailableBecause(err); why != "" {
		return unavailable(why, err)
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pgErr.Code {
		case pgerrcode.UniqueViolation, pgerrcode.CheckViolation:
			return constraintErrors[pgErr.ConstraintName]
		}
	}
	return nil
}

// unavailableBecause returns what err says about why the database cannot
// serve the service, in words an operator acts on, or "" when err is not
// such a failure. By SQLSTATE class: credentials refused (28), no such
// database (3D), out of connection slots or other resources (53), shut
// down, restarting or a statement cancelled (57), a read-only database
// (25006), a broken connection (08), and a table missing because the
// migrations have not run (42P01); any other refusal while connecting; and,
// without a SQLSTATE, a database that cannot be reached, has no host that
// takes writes (target_session_attrs), or does not answer in time. The
// words name no host, user or password: /readyz shows them to anyone.
func unavailableBecause(err error) string {
	_, connecting := errors.AsType[*pgconn.ConnectError](err)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		code := pgErr.Code
		why := func(what, todo string) string {
			if todo == "" {
				return fmt.Sprintf("%s (SQLSTATE %s)", what, code)
			}
			return fmt.Sprintf("%s (SQLSTATE %s): %s", what, code, todo)
		}
		switch {
		case code == pgerrcode.InvalidPassword:
			return why("the database refused the service's credentials", "check the user and password in DATABASE_URL")
		case pgerrcode.IsInvalidAuthorizationSpecification(code):
			return why("the database refused the service's role", "check the user in DATABASE_URL, that the role exists and may log in, and the server's pg_hba.conf")
		case pgerrcode.IsInvalidCatalogName(code):
			return why("the database named in DATABASE_URL does not exist", "create it, or correct the name")
		case code == pgerrcode.TooManyConnections:
			return why("the database has no connection slot free", "too many connections to the server, the database or the service's role; see max_connections, CONNECTION LIMIT and DB_MAX_CONNS")
		case pgerrcode.IsInsufficientResources(code):
			return why("the database is out of resources", "")
		case code == pgerrcode.AdminShutdown:
			return why("the database ended the service's session", "it is shutting down, or an administrator terminated the session")
		case code == pgerrcode.CrashShutdown:
			return why("the database is restarting after one of its processes crashed", "")
		case code == pgerrcode.CannotConnectNow:
			return why("the database accepts no connections now", "it is starting up, shutting down or recovering")
		case code == pgerrcode.QueryCanceled:
			return why("the database cancelled the statement", "a statement_timeout, or the request ran out of REQUEST_TIMEOUT")
		case pgerrcode.IsOperatorIntervention(code):
			return why("the database ended the service's session", "")
		case code == pgerrcode.ReadOnlySQLTransaction:
			return why("the database is read-only", "a standby, or default_transaction_read_only is on; the service needs the primary")
		case pgerrcode.IsConnectionException(code):
			return why("the connection to the database failed", "")
		case code == pgerrcode.UndefinedTable:
			return why("a table the service needs does not exist", "apply the migrations (usersvc migrate up)")
		case connecting:
			return why("the database refused the service's connection", "")
		}
		return ""
	}
	timedOut := errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
	switch {
	case connecting && timedOut:
		return "the database did not complete the connection in time"
	case connecting && (errors.Is(err, pgconn.ErrReadOnlyConnection) || errors.Is(err, pgconn.ErrStandbyConnection)):
		// target_session_attrs=read-write or primary turned every host
		// that answered away, as during a failover.
		return "no database host in DATABASE_URL takes writes: those that answer are read-only or standbys, as during a failover"
	case connecting:
		return "the database cannot be reached"
	case timedOut:
		return "the database did not answer in time"
	case errors.Is(err, context.Canceled):
		return "the wait for the database was cancelled"
	}
	if _, netErr := errors.AsType[net.Error](err); netErr ||
		pgconn.SafeToRetry(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "the connection to the database failed"
	}
	return ""
}

// problemFor returns the problem document for e, as seen from r.
func problemFor(r *http.Request, e *apiError) problem {
	p := problem{
		Type:      "urn:usersvc:problem:" + e.code,
		Title:     problemKinds[e.code].title,
		Status:    problemKinds[e.code].status,
		Detail:    e.detail,
		Instance:  r.URL.EscapedPath(),
		Code:      e.code,
		Errors:    e.fields,
		RequestID: requestID(r.Context()),
	}
	if e.code == codeURITooLong || !strings.HasPrefix(p.Instance, "/") {
		// The path may be most of what was too long: not worth echoing;
		// and "*" (OPTIONS *) is no path at all.
		p.Instance = ""
	}
	return p
}

// writeError answers r with the problem for err, and the headers that go
// with it. Server-side failures are logged here, once, with their cause and
// the request's id (added by the logger); the client sees only the problem.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	e := classify(err)
	if r.Context().Err() == context.Canceled && e.code != codeRequestTimeout {
		// The client hung up (a deadline would be DeadlineExceeded): what
		// failed is the request, not the database, and no one reads the
		// answer. The access log and the metrics show nginx's 499. (A body
		// that missed BODY_TIMEOUT cancels the request too, as net/http
		// cancels it on any failed read; that client may still read its 408.)
		w.WriteHeader(statusClientClosedRequest)
		return
	}
	p := problemFor(r, e)
	if p.Status >= http.StatusInternalServerError {
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", p.Status),
			slog.Any("err", cmp.Or(e.cause, err)),
		}
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
			attrs = append(attrs, slog.String("sqlstate", pgErr.Code))
		}
		level := slog.LevelError
		if p.Status == http.StatusServiceUnavailable {
			level = slog.LevelWarn
		}
		logger.LogAttrs(r.Context(), level, "request failed", attrs...)
	}
	if e.code == codeRequestTimeout {
		// Not our failure, but one the access log's 408 alone would not
		// explain: err says how much of the body came.
		logger.LogAttrs(r.Context(), slog.LevelInfo, "slow client",
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", p.Status),
			slog.Any("err", err))
	}
	h := w.Header()
	switch e.code {
	case codeUnavailable, codeIdempotencyKeyInUse:
		h.Set("Retry-After", "1")
	case codeUnauthorized:
		h.Set("WWW-Authenticate", e.challenge)
	case codePayloadTooLarge, codeRequestTimeout:
		// The server then neither reads nor keeps the rest of the body
		// (which may still be on its way).
		// (http.MaxBytesReader would do that, but only when given the
		// server's own ResponseWriter, and handlers get a wrapped one.)
		h.Set("Connection", "close")
	}
	encode(w, r, logger, p.Status, problemContentType, p)
}

// handlerFunc is a handler that returns how it failed, if it did.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle returns h as an http.Handler that answers h's error with its
// problem: the one way a handler's failure becomes a response.
func handle(logger *slog.Logger, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			writeError(w, r, logger, err)
		}
	})
}
