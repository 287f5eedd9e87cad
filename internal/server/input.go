package server

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

const (
	defaultPageLimit = 50
	maxPageLimit     = 1000

	defaultChangesLimit = 100
	maxChangesLimit     = 1000
	// maxChangesWait bounds a GET /users/changes's wait.
	maxChangesWait = 60 * time.Second

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

// parseListQuery parses and validates the GET /users query string.
// Returns a validation_failed *apiError.
func parseListQuery(rawQuery string) (listQuery, error) {
	q := listQuery{limit: defaultPageLimit}
	err := parseQuery(rawQuery, []string{"limit", "after", "name"}, func(key, v string) (problem string) {
		switch key {
		case "limit":
			q.limit, problem = parseLimit(v, maxPageLimit)
		case "after":
			q.after, problem = parseAfter(v, "the last id seen")
		case "name":
			q.name, problem = normalizeName(v)
		}
		return problem
	})
	return q, err
}

// changesQuery is a parsed GET /users/changes query.
type changesQuery struct {
	after int64
	limit int32
	wait  time.Duration
}

// parseChangesQuery parses and validates the GET /users/changes query
// string. Returns a validation_failed *apiError.
func parseChangesQuery(rawQuery string) (changesQuery, error) {
	q := changesQuery{limit: defaultChangesLimit}
	err := parseQuery(rawQuery, []string{"after", "limit", "wait"}, func(key, v string) (problem string) {
		switch key {
		case "limit":
			q.limit, problem = parseLimit(v, maxChangesLimit)
		case "after":
			q.after, problem = parseAfter(v, "the last position seen")
		case "wait":
			n, err := strconv.ParseInt(v, 10, 32)
			if err != nil || n < 0 || n > int64(maxChangesWait/time.Second) {
				return fmt.Sprintf("must be a whole number of seconds from 0 to %d", maxChangesWait/time.Second)
			}
			q.wait = time.Duration(n) * time.Second
		}
		return problem
	})
	return q, err
}

// nextLink returns the Link header value for the changes after last.
func (q changesQuery) nextLink(last int64) string {
	return "</users/changes?after=" + strconv.FormatInt(last, 10) + "&limit=" + strconv.FormatInt(int64(q.limit), 10) + `>; rel="next"`
}

func parseLimit(v string, most int64) (int32, string) {
	n, err := strconv.ParseInt(v, 10, 32)
	if err != nil || n < 1 || n > most {
		return 0, fmt.Sprintf("must be an integer from 1 to %d", most)
	}
	return int32(n), ""
}

func parseAfter(v, what string) (int64, string) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, "must be a non-negative 64-bit integer (" + what + ")"
	}
	return n, ""
}

// parseQuery parses rawQuery and gives set each parameter named in keys,
// which returns what is wrong with its value, or "". Unknown and repeated
// parameters are refused rather than ignored, so a typo never passes for a
// different query. Returns a validation_failed *apiError listing every
// problem.
func parseQuery(rawQuery string, keys []string, set func(key, v string) (problem string)) error {
	last := len(keys) - 1
	list := strings.Join(keys[:last], ", ")
	// Counting separators bounds the parsing, and the problem's list of
	// errors, before either begins.
	if strings.Count(rawQuery, "&") >= maxQueryParams {
		return invalidFields(fieldError{In: "query", Field: "", Detail: fmt.Sprintf("more than %d parameters; use %s and %s, each at most once", maxQueryParams, list, keys[last])})
	}
	values, err := url.ParseQuery(rawQuery)
	if err != nil {
		return invalidFields(fieldError{In: "query", Field: "", Detail: "the query string is malformed"})
	}
	var problems []fieldError
	for _, key := range slices.Sorted(maps.Keys(values)) {
		problem := ""
		switch vs := values[key]; {
		case len(vs) > 1:
			problem = "must be given at most once"
		case !slices.Contains(keys, key):
			problem = "unknown query parameter; use " + list + " or " + keys[last]
		default:
			problem = set(key, vs[0])
		}
		if problem != "" {
			// The name is the client's, and may be any bytes; the problem
			// document is JSON, which holds only valid UTF-8.
			problems = append(problems, fieldError{In: "query", Field: strings.ToValidUTF8(key, "\uFFFD"), Detail: problem})
		}
	}
	if problems != nil {
		return invalidFields(problems...)
	}
	return nil
}

// nextLink returns the Link header value for the page after lastID.
func (q listQuery) nextLink(lastID int64) string {
	link := "</users?after=" + strconv.FormatInt(lastID, 10) + "&limit=" + strconv.FormatInt(int64(q.limit), 10)
	if q.name != "" {
		link += "&name=" + url.QueryEscape(q.name)
	}
	return link + `>; rel="next"`
}
