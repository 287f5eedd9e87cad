package server

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
)

const (
	defaultPageLimit = 50
	maxPageLimit     = 1000

	// maxQueryParams bounds the parameters of a query string, counted
	// before it is parsed. GET /users takes three, each at most once.
	maxQueryParams = 16
)

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
