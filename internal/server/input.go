package server

import (
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
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

	// maxURIBytes bounds a request's target, path and query as sent. The
	// longest a client needs is a list query filtering on a 100-character
	// name of 4-byte characters, all percent-encoded: about 1,300 bytes.
	maxURIBytes = 4 << 10
	// maxQueryParams bounds the parameters of a query string, counted
	// before it is parsed. GET /users takes three, each at most once.
	maxQueryParams = 16
)

var (
	errURITooLong  = &requestError{code: codeURITooLong, detail: fmt.Sprintf("the request target (path and query) is longer than %d bytes", maxURIBytes)}
	errNoResources = &requestError{code: codeNotFound, detail: "the request target * names no resource: this server has only the routes of its OpenAPI document"}
)

// limitURI answers 414 uri_too_long to a request whose target is longer
// than maxURIBytes, and 404 not_found to the target "*" (OPTIONS *, which
// the mux would redirect to /*), before it is routed or its query parsed.
func limitURI(next http.Handler, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := len(r.RequestURI) // as sent; empty only for requests made in-process
		if n == 0 {
			n = len(r.URL.RequestURI())
		}
		switch {
		case n > maxURIBytes:
			writeError(w, r, logger, errURITooLong)
		case r.RequestURI == "*":
			writeError(w, r, logger, errNoResources)
		default:
			next.ServeHTTP(w, r)
		}
	})
}

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
// validation_failed *requestError.
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
// passes for a different query. Returns a validation_failed *requestError.
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
