package server

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"usersvc/db"
)

// Conditional requests (RFC 9110 §8.8.3 and §13): every state of a user has
// a strong ETag, "<id>-<updated_at in µs since 1970>". updated_at names the
// state: the rename that changes it moves it forward by at least a
// microsecond, whatever the clock does, in the same UPDATE (RenameUser), so
// a user never has one updated_at twice, a rename to its own name included;
// ids are never reused; and PostgreSQL stores it to the microsecond, so it
// compares exactly in SQL. A version column would have named the states as
// well, at the cost of a column, a migration of users and a change to every
// query: updated_at is already there, and already shown.

// Request and response headers of conditional requests, in the canonical
// form header maps use.
const (
	etagHeader        = "Etag"
	ifMatchHeader     = "If-Match"
	ifNoneMatchHeader = "If-None-Match"
)

// etag returns the strong entity tag of u's current state.
func etag(u db.User) string {
	return `"` + strconv.FormatInt(u.ID, 10) + "-" + strconv.FormatInt(u.UpdatedAt.UnixMicro(), 10) + `"`
}

// condition is one precondition header as sent for one user.
type condition struct {
	sent bool
	any  bool    // "*": any current state
	tags []int64 // the updated_at, in µs, of each tag that names a state of this user
}

// matches reports whether the state of u whose updated_at is updatedAt is
// one the condition lists.
func (c condition) matches(updatedAt time.Time) bool {
	return c.any || slices.Contains(c.tags, updatedAt.UnixMicro())
}

// times returns the tags as the updated_at they name, for SQL.
func (c condition) times() []time.Time {
	ts := make([]time.Time, len(c.tags))
	for i, us := range c.tags {
		ts[i] = time.UnixMicro(us)
	}
	return ts
}

// preconditions are a request's If-Match and If-None-Match for one user.
// If-Modified-Since and If-Unmodified-Since are not among them: responses
// carry no Last-Modified, so, as RFC 9110 §13.1.3 and §13.1.4 allow, they
// are ignored.
type preconditions struct {
	ifMatch, ifNoneMatch condition
}

// parsePreconditions returns the If-Match and If-None-Match of r, for the
// user id. A tag in If-Match matches by strong comparison, so a weak one
// never does; If-None-Match compares weakly. Tags of another user, or that
// this service never made, are kept only as never matching. Returns a
// validation_failed *apiError for a header that is not "*" or a list of
// entity tags.
func parsePreconditions(r *http.Request, id int64) (preconditions, error) {
	var p preconditions
	var problems []fieldError
	for _, h := range []struct {
		name   string
		into   *condition
		strong bool
	}{{ifMatchHeader, &p.ifMatch, true}, {ifNoneMatchHeader, &p.ifNoneMatch, false}} {
		values, sent := r.Header[h.name]
		if !sent {
			continue
		}
		c, ok := parseCondition(values, id, h.strong)
		if !ok {
			problems = append(problems, fieldError{In: "header", Field: h.name,
				Detail: `must be * or a comma-separated list of entity tags such as "42-1764316800000000" (from an ETag) or W/"…"`})
			continue
		}
		*h.into = c
	}
	if problems != nil {
		return p, invalidFields(problems...)
	}
	return p, nil
}

// parseCondition parses the values of one precondition header: "*" alone,
// or a list of entity tags (RFC 9110 §5.6.1 lists: empty elements and
// spaces around commas are allowed). Returns false for anything else.
func parseCondition(values []string, id int64, strong bool) (condition, bool) {
	c := condition{sent: true}
	if len(values) == 1 && strings.Trim(values[0], " \t") == "*" {
		c.any = true
		return c, true
	}
	prefix := strconv.FormatInt(id, 10) + "-"
	for _, v := range values {
		for {
			v = strings.TrimLeft(v, " \t,")
			if v == "" {
				break
			}
			weak := strings.HasPrefix(v, "W/")
			if weak {
				v = v[2:]
			}
			if !strings.HasPrefix(v, `"`) {
				return c, false
			}
			end := strings.IndexByte(v[1:], '"')
			if end < 0 {
				return c, false
			}
			opaque := v[1 : 1+end]
			if !validOpaqueTag(opaque) {
				return c, false
			}
			v = strings.TrimLeft(v[2+end:], " \t")
			if v != "" && v[0] != ',' {
				return c, false
			}
			if weak && strong {
				continue // never matches by strong comparison
			}
			if rest, ok := strings.CutPrefix(opaque, prefix); ok {
				if us, err := strconv.ParseInt(rest, 10, 64); err == nil && us >= 0 && strconv.FormatInt(us, 10) == rest {
					c.tags = append(c.tags, us)
				}
			}
		}
	}
	return c, true
}

// validOpaqueTag reports whether s may stand between an entity tag's quotes:
// etagc, %x21 / %x23-7E / obs-text.
func validOpaqueTag(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c == 0x7f {
			return false
		}
	}
	return true
}

// sent reports whether the request has any precondition.
func (p preconditions) sent() bool {
	return p.ifMatch.sent || p.ifNoneMatch.sent
}

// readStatus returns what a GET or HEAD of u answers under p (RFC 9110
// §13.2.2): 412 when If-Match fails, 304 when If-None-Match does, else 200.
func (p preconditions) readStatus(u db.User) int {
	switch {
	case p.ifMatch.sent && !p.ifMatch.matches(u.UpdatedAt):
		return http.StatusPreconditionFailed
	case p.ifNoneMatch.sent && p.ifNoneMatch.matches(u.UpdatedAt):
		return http.StatusNotModified
	}
	return http.StatusOK
}

// writeArgs returns p as RenameUserIf and DeleteUserIf take it: the write
// goes ahead when matchAny is set or updated_at is one of match, and it is
// none of noneMatch. If-Match "*" is no condition (there is no write
// without a user); If-None-Match "*" fails for every user, which an
// If-Match that nothing matches says as well.
func (p preconditions) writeArgs() (matchAny bool, match, noneMatch []time.Time) {
	if p.ifNoneMatch.any {
		return false, []time.Time{}, []time.Time{}
	}
	return !p.ifMatch.sent || p.ifMatch.any, p.ifMatch.times(), p.ifNoneMatch.times()
}

var errPreconditionFailed = &apiError{code: codePreconditionFailed,
	detail: "the user's current state does not satisfy If-Match or If-None-Match: it changed since its ETag was read, or the tag is not one of this user's; GET it again"}
