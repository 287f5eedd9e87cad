package server

import (
	"bytes"
	"encoding/json/jsontext"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"maps"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"
)

const (
	maxNameChars     = 100
	defaultPageLimit = 50
	maxPageLimit     = 1000

	nameRule = "must be 1 to 100 characters after trimming surrounding whitespace"

	// maxQueryParams bounds the parameters of a query string, counted
	// before it is parsed. GET /users takes three, each at most once.
	maxQueryParams = 16
)

// normalizeName trims surrounding whitespace and NFC-normalizes s, so that
// visually identical names are stored, and collide, as one. Returns the
// name, or a description of what is wrong with it.
func normalizeName(s string) (string, string) {
	if !utf8.ValidString(s) {
		return "", "must be valid UTF-8"
	}
	s = norm.NFC.String(strings.TrimSpace(s))
	if n := utf8.RuneCountInString(s); n < 1 || n > maxNameChars {
		return "", nameRule
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			// Postgres refuses U+0000 in text; the rest have no place in a name.
			return "", "must not contain control characters"
		}
	}
	return s, ""
}

// pathID returns the {id} path value, a positive int64, or a
// validation_failed *apiError.
func pathID(r *http.Request) (int64, error) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id < 1 {
		return 0, invalidFields(fieldError{In: "path", Field: "id", Detail: "must be a positive 64-bit integer"})
	}
	return id, nil
}

// listQuery is a parsed GET /users query.
type listQuery struct {
	after int64
	limit int32
	name  string // "" for no filter
}

// parseListQuery parses and validates the GET /users query string. Unknown
// and repeated parameters are refused rather than ignored, so a typo never
// passes for a different query. Returns a validation_failed *apiError.
func parseListQuery(rawQuery string) (listQuery, error) {
	q := listQuery{limit: defaultPageLimit}
	// Counting separators bounds the parsing, and the problem's list of
	// errors, before either begins.
	if strings.Count(rawQuery, "&") >= maxQueryParams {
		return q, invalidFields(fieldError{In: "query", Field: "", Detail: fmt.Sprintf("more than %d parameters; use limit, after and name, each at most once", maxQueryParams)})
	}
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return q, invalidFields(fieldError{In: "query", Field: "", Detail: "the query string is malformed"})
	}
	var problems []fieldError
	bad := func(field, detail string) {
		// The name is the client's, and may be any bytes; the problem
		// document is JSON, which holds only valid UTF-8.
		field = strings.ToValidUTF8(field, "\uFFFD")
		problems = append(problems, fieldError{In: "query", Field: field, Detail: detail})
	}
	for _, key := range slices.Sorted(maps.Keys(values)) {
		vs := values[key]
		if len(vs) > 1 {
			bad(key, "must be given at most once")
			continue
		}
		v := vs[0]
		switch key {
		case "limit":
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n < 1 || n > maxPageLimit {
				bad(key, fmt.Sprintf("must be an integer from 1 to %d", maxPageLimit))
				continue
			}
			q.limit = int32(n)
		case "after":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				bad(key, "must be a non-negative 64-bit integer (the last id seen)")
				continue
			}
			q.after = n
		case "name":
			name, problem := normalizeName(v)
			if problem != "" {
				bad(key, problem)
				continue
			}
			q.name = name
		default:
			bad(key, "unknown query parameter; use limit, after or name")
		}
	}
	if problems != nil {
		return q, invalidFields(problems...)
	}
	return q, nil
}

// nextLink returns the Link header value for the page after lastID.
func (q listQuery) nextLink(lastID int64) string {
	link := "</users?after=" + strconv.FormatInt(lastID, 10) + "&limit=" + strconv.FormatInt(int64(q.limit), 10)
	if q.name != "" {
		link += "&name=" + url.QueryEscape(q.name)
	}
	return link + `>; rel="next"`
}

// maxBodyBytes caps every request body.
const maxBodyBytes = 1 << 20

var errBodyTooLarge = &apiError{code: codePayloadTooLarge, detail: "the request body is larger than 1 MiB (1048576 bytes)"}

// decode reads a JSON request body into a T: exactly one JSON object whose
// members T knows, each once, in valid UTF-8. Returns a *apiError for
// any problem with the request: unsupported_media_type, payload_too_large,
// invalid_json or validation_failed; or a *slowBodyError (request_timeout)
// for a body that missed BodyTimeout.
func decode[T any](w http.ResponseWriter, r *http.Request) (T, error) {
	var v T
	if err := checkContentType(r.Header.Get("Content-Type")); err != nil {
		return v, err
	}
	// A declared length over the limit is refused before reading, and so
	// before a client waiting on "Expect: 100-continue" sends the body.
	if r.ContentLength > maxBodyBytes {
		return v, errBodyTooLarge
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			return v, errBodyTooLarge
		}
		if slow, ok := errors.AsType[*slowBodyError](err); ok {
			return v, slow
		}
		return v, invalidJSON("the request body could not be read")
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return v, invalidJSON("the request body is empty; send a JSON object")
	}
	if err := json.Unmarshal(body, &v, json.RejectUnknownMembers(true)); err != nil {
		return v, decodeError(err)
	}
	return v, nil
}

// checkContentType accepts application/json with any parameters, but a
// charset other than UTF-8 would be misread, so it is refused too.
func checkContentType(header string) error {
	mediaType, params, err := mime.ParseMediaType(header)
	if err == nil && mediaType == jsonContentType {
		if cs, ok := params["charset"]; !ok || strings.EqualFold(cs, "utf-8") {
			return nil
		}
	}
	detail := "send the body as application/json"
	if header != "" {
		detail = fmt.Sprintf("content type %q is not supported; send application/json (UTF-8)", header)
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
