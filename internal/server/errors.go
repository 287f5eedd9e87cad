package server

import (
	"context"
	"errors"
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
// storeErr produces them from driver errors.
var (
	errNotFound    = errors.New("not found")
	errNameTaken   = errors.New("name taken")
	errUnavailable = errors.New("database unavailable")
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

// notReadyError is why /readyz answers 503 although nothing failed.
type notReadyError struct {
	detail string
}

func (e *notReadyError) Error() string { return "not ready: " + e.detail }

func invalidJSON(detail string) error {
	return &requestError{code: codeInvalidJSON, detail: detail}
}

func invalidFields(fields ...fieldError) error {
	return &requestError{code: codeValidationFailed, detail: "the request has invalid fields; see errors", fields: fields}
}

// storeErr translates an error from the database into errNotFound,
// errNameTaken or errUnavailable (wrapping the cause), a validation error for
// a check violation, or returns it unchanged: an internal error.
func storeErr(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return errNotFound
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch {
		case pgErr.Code == pgerrcode.UniqueViolation:
			return errNameTaken
		case pgErr.Code == pgerrcode.CheckViolation:
			// The handlers validate names as the constraint does; this is
			// the database holding the line should they ever disagree.
			return invalidFields(fieldError{In: "body", Field: "name", Detail: nameRule})
		case pgerrcode.IsConnectionException(pgErr.Code),
			pgerrcode.IsInsufficientResources(pgErr.Code),
			pgerrcode.IsOperatorIntervention(pgErr.Code),
			pgErr.Code == pgerrcode.UndefinedTable:
			// Includes 57014 query_canceled (a statement timeout), 57P01
			// admin_shutdown (a backend terminated under us), and 42P01
			// undefined_table: a database whose migrations have not run
			// yet, as /readyz says too.
			return errors.Join(errUnavailable, err)
		}
		return err
	}
	var netErr net.Error
	var connErr *pgconn.ConnectError
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		pgconn.Timeout(err) || pgconn.SafeToRetry(err) ||
		errors.As(err, &connErr) || errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errors.Join(errUnavailable, err)
	}
	return err
}

// problemFor returns the problem document for err, as seen from r.
func problemFor(r *http.Request, err error) problem {
	p := problem{Instance: r.URL.EscapedPath(), RequestID: requestID(r.Context())}
	var re *requestError
	var nr *notReadyError
	switch {
	case errors.As(err, &re):
		p.Code, p.Detail, p.Errors = re.code, re.detail, re.fields
	case errors.As(err, &nr):
		p.Code, p.Detail = codeUnavailable, nr.detail
	case errors.Is(err, errNotFound):
		p.Code, p.Detail = codeNotFound, "no user has this id"
	case errors.Is(err, errNameTaken):
		p.Code, p.Detail = codeDuplicateName, "another user already has this name"
	case errors.Is(err, errUnavailable):
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
