package server

import (
	"bytes"
	"encoding/json/jsontext"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"
)

const (
	jsonContentType    = "application/json"
	mergePatchType     = "application/merge-patch+json"
	problemContentType = "application/problem+json"
)

// encode writes v as JSON with the given status. The body is marshalled
// before any header is written, so a failure still becomes a clean 500.
func encode(w http.ResponseWriter, r *http.Request, logger *slog.Logger, status int, contentType string, v any) {
	body, err := marshal(v)
	if err != nil {
		logger.ErrorContext(r.Context(), "encode response", slog.String("path", r.URL.Path), slog.Any("err", err))
		status, contentType = http.StatusInternalServerError, problemContentType
		body = []byte(`{"type":"urn:usersvc:problem:internal","title":"Internal error","status":500,"detail":"the server failed to encode the response","code":"internal"}`)
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// marshal returns v as JSON. Users, pages of users and of changes, the bulk of the
// service's output, are written by hand, byte for byte as json.Marshal
// writes them (the tests compare the two), for less CPU per request
// (docs/benchmarks.md, "Speed tricks, measured").
func marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case user:
		return appendUser(make([]byte, 0, 128), v)
	case []user:
		return appendArray(make([]byte, 0, 2+len(v)*128), v, appendUser)
	case []change:
		return appendArray(make([]byte, 0, 2+len(v)*192), v, appendChange)
	}
	return json.Marshal(v)
}

// appendArray appends vs as a JSON array to b, each by appendOne.
func appendArray[T any](b []byte, vs []T, appendOne func([]byte, T) ([]byte, error)) ([]byte, error) {
	b = append(b, '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		var err error
		if b, err = appendOne(b, v); err != nil {
			return nil, err
		}
	}
	return append(b, ']'), nil
}

// appendUser appends u as JSON to b. Returns an error, as json.Marshal
// does, for a name that is not valid UTF-8.
func appendUser(b []byte, u user) ([]byte, error) {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, u.ID, 10)
	b = append(b, `,"name":`...)
	b, err := jsontext.AppendQuote(b, u.Name)
	if err != nil {
		return nil, fmt.Errorf("encode user %d: %w", u.ID, err)
	}
	b = append(b, `,"created_at":"`...)
	b = u.CreatedAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","updated_at":"`...)
	b = u.UpdatedAt.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...), nil
}

// appendChange appends c as JSON to b, as appendUser does a user.
func appendChange(b []byte, c change) ([]byte, error) {
	b = append(b, `{"position":`...)
	b = strconv.AppendInt(b, c.Position, 10)
	b = append(b, `,"op":"`...)
	b = append(b, c.Op...) // create, update or delete: nothing to escape
	b = append(b, `","id":`...)
	b = strconv.AppendInt(b, c.ID, 10)
	b = append(b, `,"user":`...)
	if c.User == nil {
		b = append(b, "null"...)
	} else {
		var err error
		if b, err = appendUser(b, *c.User); err != nil {
			return nil, err
		}
	}
	b = append(b, `,"at":"`...)
	b = c.At.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...), nil
}

// maxBodyBytes caps every request body.
const maxBodyBytes = 1 << 20

var errBodyTooLarge = &apiError{code: codePayloadTooLarge, detail: "the request body is larger than 1 MiB (1048576 bytes)"}

// readBody reads r's body into memory, so that the database's time, which
// follows, is not the client's: a body that does not arrive within
// BodyTimeout gets 408 request_timeout, and one that does is what decode
// reads. A body decode would refuse unread, of another content type or a
// declared length over maxBodyBytes, is left for it to refuse (415, 413) in
// its turn, before a client waiting on "Expect: 100-continue" sends it.
func readBody(w http.ResponseWriter, r *http.Request) error {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength > maxBodyBytes {
		return nil
	}
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != jsonContentType && mt != mergePatchType {
		return nil
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if slow, ok := errors.AsType[*slowBodyError](err); ok {
		return slow
	}
	if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
		return errBodyTooLarge
	}
	if err != nil {
		return invalidJSON("the request body could not be read")
	}
	r.Body = bufferedBody{Reader: bytes.NewReader(body), bytes: body}
	return nil
}

// bufferedBody is a request body that readBody has read into memory.
type bufferedBody struct {
	*bytes.Reader
	bytes []byte
}

func (bufferedBody) Close() error { return nil }

// bodyBytes returns what readBody read of r's body: none when it had none.
func bodyBytes(r *http.Request) []byte {
	b, _ := r.Body.(bufferedBody)
	return b.bytes
}

// decode reads a request body of mediaType, a JSON type, into a T: exactly
// one JSON object whose members T knows, each once, in valid UTF-8.
// Returns a *apiError for any problem with the request:
// unsupported_media_type, payload_too_large, invalid_json or
// validation_failed.
func decode[T any](r *http.Request, mediaType string) (T, error) {
	var v T
	if err := checkContentType(r.Header.Get("Content-Type"), mediaType); err != nil {
		return v, err
	}
	if r.ContentLength > maxBodyBytes {
		return v, errBodyTooLarge
	}
	body := bodyBytes(r)
	if len(bytes.TrimSpace(body)) == 0 {
		return v, invalidJSON("the request body is empty; send a JSON object")
	}
	if err := json.Unmarshal(body, &v, json.RejectUnknownMembers(true)); err != nil {
		return v, decodeError(err)
	}
	return v, nil
}

// checkContentType accepts the content type want with any parameters, but
// a charset other than UTF-8 would be misread, so it is refused too.
func checkContentType(header, want string) error {
	mediaType, params, err := mime.ParseMediaType(header)
	if err == nil && mediaType == want {
		if cs, ok := params["charset"]; !ok || strings.EqualFold(cs, "utf-8") {
			return nil
		}
	}
	detail := "send the body as " + want
	if header != "" {
		detail = fmt.Sprintf("content type %q is not supported; send %s (UTF-8)", header, want)
	}
	return &apiError{code: codeUnsupportedMediaType, detail: detail}
}

// decodeError turns a json.Unmarshal error into a *apiError.
func decodeError(err error) error {
	if serr, ok := errors.AsType[*json.SemanticError](err); ok {
		field := strings.TrimPrefix(string(serr.JSONPointer), "/")
		switch {
		case errors.Is(serr.Err, json.ErrUnknownName):
			return invalidFields(fieldError{In: "body", Field: serr.JSONPointer.LastToken(), Detail: "unknown field"})
		case field == "":
			return invalidJSON("the request body must be a JSON object")
		default:
			return invalidFields(fieldError{In: "body", Field: field, Detail: "must be a " + jsonTypeName(serr)})
		}
	}
	if serr, ok := errors.AsType[*jsontext.SyntacticError](err); ok {
		switch {
		case errors.Is(serr.Err, jsontext.ErrDuplicateName):
			return invalidJSON(fmt.Sprintf("member %q appears more than once", serr.JSONPointer.LastToken()))
		case errors.Is(serr.Err, io.ErrUnexpectedEOF):
			return invalidJSON("the request body ends before the JSON value does")
		case strings.Contains(serr.Err.Error(), "after top-level value"):
			return invalidJSON(fmt.Sprintf("unexpected data after the JSON object at byte %d; send one object", serr.ByteOffset))
		}
		return invalidJSON(fmt.Sprintf("malformed JSON at byte %d", serr.ByteOffset))
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return invalidJSON("the request body ends before the JSON value does")
	}
	return invalidJSON("the request body is not valid JSON")
}

// jsonTypeName names the JSON type a Go field wants.
func jsonTypeName(serr *json.SemanticError) string {
	if serr.GoType == nil {
		return "value of another type"
	}
	t := serr.GoType
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() == reflect.String {
		return "string"
	}
	return "value of another type"
}

// timedBody is a request body that must arrive by a deadline, which
// newTimedBody sets on the connection at once: a read that misses it fails
// with a *slowBodyError. So does net/http's own reading of what no handler
// read, to discard it before the answer: that client waits for its answer
// until the deadline at most. Once the body is in, net/http lifts the
// deadline itself, as its background read begins (which watches for a
// client that hangs up while the handler works, and cancels the request
// when a read fails): the database's time that follows is not cut short.
type timedBody struct {
	io.ReadCloser
	timeout  time.Duration
	length   int64 // the declared Content-Length
	received int64
}

// newTimedBody returns r's body bounded by timeout from now, a deadline it
// sets at once on the connection that w writes to. Served in-process, as
// benchmarks do, there is no connection: no network, then, to be slow.
func newTimedBody(w http.ResponseWriter, r *http.Request, timeout time.Duration) *timedBody {
	_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout))
	return &timedBody{ReadCloser: r.Body, timeout: timeout, length: r.ContentLength}
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.received += int64(n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline stays: net/http reads nothing more of this body
		// after the answer, and closes the connection.
		return n, &slowBodyError{timeout: b.timeout, received: b.received, length: b.length}
	}
	return n, err
}

// slowBodyError is a request body that did not arrive within BodyTimeout.
// It unwraps to the request_timeout *apiError the client gets.
type slowBodyError struct {
	timeout          time.Duration
	received, length int64
}

func (e *slowBodyError) Error() string {
	return fmt.Sprintf("slow client: %d of %d body bytes received within BODY_TIMEOUT (%s)", e.received, e.length, e.timeout)
}

func (e *slowBodyError) Unwrap() error {
	return &apiError{code: codeRequestTimeout, detail: fmt.Sprintf(
		"the request body did not arrive within %s of the request's headers; send it at once after them, then retry", e.timeout)}
}
