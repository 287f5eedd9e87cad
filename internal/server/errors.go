package server

import (
	"cmp"
	"context"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"usersvc/internal/postgres"
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
	codeChangesExpired       = "changes_expired"
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
	codeChangesExpired:       {http.StatusGone, "Changes expired"},
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

// databaseProblems is what a client gets for each outcome of the
// database's work that is its to know (postgres.Translate).
var databaseProblems = []struct {
	outcome error
	problem *apiError
}{
	{postgres.ErrNotFound, errNotFound},
	{postgres.ErrNameTaken, errNameTaken},
	// The handlers validate names as the constraint does; this is the
	// database holding the line should they ever disagree.
	{postgres.ErrNameInvalid, invalidFields(fieldError{In: "body", Field: "name", Detail: nameRule}).(*apiError)},
}

// classify returns err as an *apiError: err itself when it is one (or
// wraps one), what it means when it comes from the database, else
// internal.
func classify(err error) *apiError {
	if e, ok := errors.AsType[*apiError](err); ok {
		return e
	}
	meaning := postgres.Translate(err)
	if u, ok := errors.AsType[*postgres.UnavailableError](meaning); ok {
		// The client's detail is generic on purpose: why is for operators
		// (the log, /readyz).
		return &apiError{code: codeUnavailable, detail: "the database is unavailable or did not answer in time; retry later", cause: u}
	}
	for _, p := range databaseProblems {
		if errors.Is(meaning, p.outcome) {
			return p.problem
		}
	}
	return &apiError{code: codeInternal, detail: "the server failed to handle the request", cause: err}
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
		if code := postgres.SQLState(err); code != "" {
			attrs = append(attrs, slog.String("sqlstate", code))
		}
		level := slog.LevelError
		if p.Status == http.StatusServiceUnavailable {
			level = slog.LevelWarn
		}
		logger.LogAttrs(r.Context(), level, "request failed", attrs...)
	}
	if r.Method == refusalMethod {
		// Neither method nor path to log: what net/http refused, and why.
		logger.LogAttrs(r.Context(), slog.LevelInfo, "request refused",
			slog.Int("status", p.Status),
			slog.String("detail", p.Detail),
			slog.String("remote_addr", r.RemoteAddr))
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
	case codePayloadTooLarge, codeRequestTimeout, codeLengthRequired,
		codeInvalidRequest, codeHeadersTooLarge, codeExpectationFailed:
		// What follows on the connection, if anything, is not to be read
		// as a request: the rest of a body, or the bytes after a request
		// that could not be parsed.
		h.Set("Connection", "close")
	}
	encode(w, r, logger, p.Status, problemContentType, p)
}

// handlerFunc is a handler that returns how it failed, if it did.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// handle returns h as an http.Handler that answers h's error with its
// problem: the one way a handler's failure becomes a response. It reads
// the request's body first (readBody), then gives h a context whose
// deadline is timeout from then (0: none): the one bound of all of h's
// database work.
func handle(logger *slog.Logger, timeout time.Duration, h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := readBody(w, r); err != nil {
			writeError(w, r, logger, err)
			return
		}
		if timeout > 0 {
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			r = r.WithContext(ctx)
		}
		if err := h(w, r); err != nil {
			writeError(w, r, logger, err)
		}
	})
}
