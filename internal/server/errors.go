package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// This file is the one place that maps errors to HTTP statuses.

// Outcomes of a store call that handlers and the problem table branch on.
// storeErr produces them, and unavailableError, from driver errors.
var (
	errNotFound  = errors.New("not found")
	errNameTaken = errors.New("name taken")
)

// Problem codes: the stable, machine-readable "code" member of every
// problem document. openapi.yaml lists the same set.
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
	In     string `json:"in"` // body, query or path
	Field  string `json:"field"`
	Detail string `json:"detail"`
}

// requestError is a client mistake found before or instead of a store call.
type requestError struct {
	code   string
	detail string
	fields []fieldError
}

func (e *requestError) Error() string { return e.code + ": " + e.detail }

// notReadyError is why /readyz answers 503, in its detail: a state such as
// a shutdown, or the reason of a failure, err, that it wraps.
type notReadyError struct {
	detail string
	err    error // nil when nothing failed
}

func (e *notReadyError) Error() string {
	if e.err != nil {
		return "not ready: " + e.err.Error()
	}
	return "not ready: " + e.detail
}

func (e *notReadyError) Unwrap() error { return e.err }

func invalidJSON(detail string) error {
	return &requestError{code: codeInvalidJSON, detail: detail}
}

func invalidFields(fields ...fieldError) error {
	return &requestError{code: codeValidationFailed, detail: "the request has invalid fields; see errors", fields: fields}
}

// storeErr translates an error from the database into errNotFound,
// errNameTaken, an *unavailableError (wrapping the cause), a validation
// error for a check violation, or returns it unchanged: an internal error.
func storeErr(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotFound
	}
	if why := unavailableBecause(err); why != "" {
		return &unavailableError{why: why, err: err}
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pgErr.Code {
		case pgerrcode.UniqueViolation:
			return errNameTaken
		case pgerrcode.CheckViolation:
			// The handlers validate names as the constraint does; this is
			// the database holding the line should they ever disagree.
			return invalidFields(fieldError{In: "body", Field: "name", Detail: nameRule})
		}
	}
	return err
}

// unavailableError is a database that cannot serve the service now, through
// no fault of the request: the client gets 503 and may retry.
type unavailableError struct {
	why string // for operators: /readyz's detail, and the log through Error
	err error
}

func (e *unavailableError) Error() string {
	return "database unavailable: " + e.why + ": " + e.err.Error()
}

func (e *unavailableError) Unwrap() error { return e.err }

// unavailableBecause returns what err says about why the database cannot
// serve the service, in words an operator acts on, or "" when err is not
// such a failure. By SQLSTATE class: credentials refused (28), no such
// database (3D), out of connection slots or other resources (53), shut
// down, restarting or a statement cancelled (57), a read-only database
// (25006), a broken connection (08), and a table missing because the
// migrations have not run (42P01); any other refusal while connecting; and,
// without a SQLSTATE, a database that cannot be reached, has no host that
// takes writes (target_session_attrs), or does not answer in time. The words name no host, user or password: /readyz shows them to
// anyone.
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

// problemFor returns the problem document for err, as seen from r.
func problemFor(r *http.Request, err error) problem {
	p := problem{Instance: r.URL.EscapedPath(), RequestID: requestID(r.Context())}
	var re *requestError
	var nr *notReadyError
	var ue *unavailableError
	switch {
	case errors.As(err, &re):
		p.Code, p.Detail, p.Errors = re.code, re.detail, re.fields
	case errors.As(err, &nr):
		p.Code, p.Detail = codeUnavailable, nr.detail
	case errors.Is(err, errNotFound):
		p.Code, p.Detail = codeNotFound, "no user has this id"
	case errors.Is(err, errNameTaken):
		p.Code, p.Detail = codeDuplicateName, "another user already has this name"
	case errors.As(err, &ue):
		// Generic on purpose: why is for operators (the log, /readyz).
		p.Code, p.Detail = codeUnavailable, "the database is unavailable or did not answer in time; retry later"
	default:
		p.Code, p.Detail = codeInternal, "the server failed to handle the request"
	}
	if p.Code == codeURITooLong {
		// The path may be most of what was too long: not worth echoing.
		p.Instance = ""
	}
	kind := problemKinds[p.Code]
	p.Type = "urn:usersvc:problem:" + p.Code
	p.Title, p.Status = kind.title, kind.status
	return p
}

// writeError answers r with the problem for err. Server-side failures are
// logged here, once, with their cause and the request's id (added by the
// logger); the client sees only the problem.
func writeError(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err error) {
	if r.Context().Err() == context.Canceled {
		// The client hung up (a deadline would be DeadlineExceeded): what
		// failed is the request, not the database, and no one reads the
		// answer. The access log and the metrics show nginx's 499.
		w.WriteHeader(statusClientClosedRequest)
		return
	}
	p := problemFor(r, err)
	if p.Status >= http.StatusInternalServerError {
		attrs := []slog.Attr{
			slog.String("method", r.Method),
			slog.String("path", r.URL.Path),
			slog.Int("status", p.Status),
			slog.Any("err", err),
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			attrs = append(attrs, slog.String("sqlstate", pgErr.Code))
		}
		level := slog.LevelError
		if p.Status == http.StatusServiceUnavailable {
			level = slog.LevelWarn
		}
		logger.LogAttrs(r.Context(), level, "request failed", attrs...)
	}
	if p.Status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	encode(w, r, logger, p.Status, problemContentType, p)
}
