// Package client is a Go client of usersvc's HTTP API, for other Go
// services. Most of it, client.gen.go, is what oapi-codegen generates from
// the service's OpenAPI document (internal/server/openapi.yaml): a method
// per operation, CreateUserWithResponse and so on, and a type per schema.
// This file adds what the generated code does awkwardly:
//
//   - New returns a client whose methods return every response with a
//     status of 400 or more as an *Error, which carries the problem's Code,
//     instead of a response with the problem in one field per status;
//   - WithBearerToken authenticates every request;
//   - AllUsers iterates over every user, page after page, following the
//     Link header;
//   - Changes follows the change feed, long-polling, for as long as the
//     caller wants.
//
// For example:
//
//	c, err := client.New("http://usersvc:8080", client.WithBearerToken(token))
//	res, err := c.CreateUserWithResponse(ctx, nil, client.UserInput{Name: "alice"})
//	if e, ok := errors.AsType[*client.Error](err); ok && e.Code == client.ProblemCodeDuplicateName {
//		// another user has this name
//	}
//	for u, err := range c.AllUsers(ctx, nil) { ... }
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"
	"mime"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// New returns a client of the usersvc at server, its base URL
// ("http://usersvc:8080"). Its methods return an *Error for every response
// with a status of 400 or more, and a response only for the others: a 2xx
// has its body in JSON200 or JSON201, a HEAD its headers in Headers200.
// opts are those of the generated NewClient (WithHTTPClient,
// WithRequestEditorFn) and WithBearerToken.
func New(server string, opts ...ClientOption) (*ClientWithResponses, error) {
	opts = append(slices.Clip(opts), func(c *Client) error {
		next := c.Client
		if next == nil {
			next = &http.Client{} // what NewClient would use
		}
		c.Client = problemDoer{next}
		return nil
	})
	return NewClientWithResponses(server, opts...)
}

// WithBearerToken sends token with every request, as
// Authorization: Bearer token: what a usersvc configured with AUTH_TOKENS
// needs.
func WithBearerToken(token string) ClientOption {
	return WithRequestEditorFn(func(_ context.Context, req *http.Request) error {
		req.Header.Set("Authorization", "Bearer "+token)
		return nil
	})
}

// Error is a usersvc response with a status of 400 or more: the RFC 9457
// problem document it carries, whose Code is what a program branches on
// (errors.As finds it in what New's client returns). The response to a HEAD
// request has no body, and one that did not come from usersvc (a proxy's
// 502) may have another: their Error has the StatusCode and no Code.
type Error struct {
	// Method and URL are the request's.
	Method, URL string
	// StatusCode is the response's HTTP status.
	StatusCode int
	Problem
}

func (e *Error) Error() string {
	msg := fmt.Sprintf("usersvc: %s %s: %d", e.Method, e.URL, e.StatusCode)
	if e.Code != "" {
		msg += " " + string(e.Code)
	}
	if e.Detail != "" {
		return msg + ": " + e.Detail
	}
	return msg + " " + http.StatusText(e.StatusCode)
}

// maxProblemBytes bounds what is read of an error response's body. A
// problem is a few hundred bytes; a validation problem lists a few fields.
const maxProblemBytes = 1 << 16

// problemDoer sends requests with next and returns every response with a
// status of 400 or more as an *Error, its body read and closed.
type problemDoer struct{ next HttpRequestDoer }

func (d problemDoer) Do(req *http.Request) (*http.Response, error) {
	res, err := d.next.Do(req)
	if err != nil || res.StatusCode < http.StatusBadRequest {
		return res, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(io.LimitReader(res.Body, maxProblemBytes))
	if err != nil {
		return nil, fmt.Errorf("usersvc: %s %s: %d: read problem: %w", req.Method, req.URL.Redacted(), res.StatusCode, err)
	}
	return nil, newError(req, res, body)
}

// newError returns the *Error of res, the response to req, whose body is
// body. A body that is not a problem document leaves Problem empty but for
// the request id, which every usersvc response has in X-Request-ID.
func newError(req *http.Request, res *http.Response, body []byte) *Error {
	e := &Error{Method: req.Method, URL: req.URL.Redacted(), StatusCode: res.StatusCode}
	if mt, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type")); mt == "application/problem+json" && len(body) > 0 {
		if err := json.Unmarshal(body, &e.Problem); err != nil {
			e.Problem = Problem{}
		}
	}
	if id := res.Header.Get("X-Request-ID"); e.RequestID == nil && id != "" {
		e.RequestID = &id
	}
	return e
}

// AllUsers returns every user that params selects (by Name; Limit sets the
// page size, After the id to start after), in id order, fetched a page at a
// time as the loop goes on, following each page's Link header to the next
// as the API says to. When a page fails it yields the error (an *Error for
// a problem response) and stops.
func (c *ClientWithResponses) AllUsers(ctx context.Context, params *ListUsersParams, reqEditors ...RequestEditorFn) iter.Seq2[User, error] {
	return func(yield func(User, error) bool) {
		editors := reqEditors
		for {
			res, err := c.ListUsersWithResponse(ctx, params, editors...)
			if err != nil {
				yield(User{}, err)
				return
			}
			if res.JSON200 == nil {
				yield(User{}, pageError(res.HTTPResponse, res.Body, "/users"))
				return
			}
			for _, u := range *res.JSON200 {
				if !yield(u, nil) {
					return
				}
			}
			next, err := nextLink(res.HTTPResponse.Header)
			if err != nil {
				yield(User{}, fmt.Errorf("usersvc: list users: %w", err))
				return
			}
			if next == nil {
				return
			}
			editors = append(slices.Clip(reqEditors), follow(next))
		}
	}
}

// changesWait is the wait of each of Changes's requests, in seconds: well
// under the minute that proxies commonly allow an idle response.
const changesWait = 30

// retryAfter is how long Changes waits before it asks again after a
// failure that the caller's loop went on from.
var retryAfter = time.Second

// Changes returns every change after position after (0: from the oldest
// kept), oldest first, as they come, long-polling and following each
// answer's Link header, until ctx ends or the loop stops. A failed request
// is yielded as its error (an *Error for a problem response); if the loop
// goes on, it is asked again a second later, except for 410
// changes_expired, after which it stops: the caller must list the users
// again (AllUsers, from the first page's Changes-Position) and follow the
// changes after that.
func (c *ClientWithResponses) Changes(ctx context.Context, after int64, reqEditors ...RequestEditorFn) iter.Seq2[Change, error] {
	return func(yield func(Change, error) bool) {
		limit, wait := ChangesLimit(100), Wait(changesWait)
		params := &ListChangesParams{After: &after, Limit: &limit, Wait: &wait}
		editors := reqEditors
		for ctx.Err() == nil {
			res, err := c.ListChangesWithResponse(ctx, params, editors...)
			if err == nil && res.JSON200 == nil {
				err = pageError(res.HTTPResponse, res.Body, "/users/changes")
			}
			if err != nil {
				if ctx.Err() != nil || !yield(Change{}, err) {
					return
				}
				if e, ok := errors.AsType[*Error](err); ok && e.Code == ProblemCodeChangesExpired {
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(retryAfter):
				}
				continue
			}
			for _, ch := range *res.JSON200 {
				if !yield(ch, nil) {
					return
				}
			}
			next, err := nextLink(res.HTTPResponse.Header)
			if err == nil && next == nil {
				err = errors.New("no next link")
			}
			if err != nil {
				yield(Change{}, fmt.Errorf("usersvc: list changes: %w", err))
				return
			}
			editors = append(slices.Clip(reqEditors), follow(next), longPoll)
		}
	}
}

// longPoll adds Changes's wait to the feed's Link, which has none.
func longPoll(_ context.Context, req *http.Request) error {
	q := req.URL.Query()
	q.Set("wait", strconv.Itoa(changesWait))
	req.URL.RawQuery = q.Encode()
	return nil
}

// pageError returns the error of a page that has no JSON body to show, the
// response to a GET of path: an *Error for a problem, which only a client
// from NewClientWithResponses, not New, returns as a response.
func pageError(res *http.Response, body []byte, path string) error {
	req := res.Request
	if req == nil { // an HttpRequestDoer that does not set it
		req = &http.Request{Method: http.MethodGet, URL: &url.URL{Path: path}}
	}
	if res.StatusCode >= http.StatusBadRequest {
		return newError(req, res, body)
	}
	return fmt.Errorf("usersvc: %s %s: %s without a JSON body", req.Method, req.URL.Redacted(), res.Status)
}

// follow returns a request editor that sends the request to link instead,
// resolved against the request's URL, as RFC 8288 resolves a link against
// the URL of the response that carried it (both are the server's /users).
// Returns an error for a link to another origin, which would be sent the
// bearer token.
func follow(link *url.URL) RequestEditorFn {
	return func(_ context.Context, req *http.Request) error {
		target := req.URL.ResolveReference(link)
		if target.Scheme != req.URL.Scheme || target.Host != req.URL.Host {
			return fmt.Errorf("usersvc: list users: the next page's link %s leaves %s://%s", link, req.URL.Scheme, req.URL.Host)
		}
		req.URL = target
		return nil
	}
}

// nextLink returns the target of the rel="next" link of an RFC 8288 Link
// header, or nil when there is none: the page is the last. Returns an error
// for a header it cannot parse.
func nextLink(header http.Header) (*url.URL, error) {
	for _, value := range header.Values("Link") {
		rest := value
		for {
			rest = strings.TrimLeft(rest, " \t,")
			if rest == "" {
				break
			}
			target, params, ok := strings.Cut(strings.TrimPrefix(rest, "<"), ">")
			if !ok || !strings.HasPrefix(rest, "<") {
				return nil, fmt.Errorf("malformed Link header %q", value)
			}
			next, after, err := linkParams(params)
			if err != nil {
				return nil, fmt.Errorf("malformed Link header %q: %w", value, err)
			}
			if next {
				return url.Parse(target)
			}
			rest = after
		}
	}
	return nil, nil
}

// linkParams reads the parameters of one link-value, `; rel="next"` and
// the like, from s up to the comma that ends it. It reports whether rel
// lists "next", and returns what follows the link-value.
func linkParams(s string) (next bool, rest string, err error) {
	for {
		s = strings.TrimLeft(s, " \t")
		if s == "" || s[0] == ',' {
			return next, s, nil
		}
		if s[0] != ';' {
			return false, "", errors.New("want ; before a parameter")
		}
		s = strings.TrimLeft(s[1:], " \t")
		end := strings.IndexAny(s, "=;,")
		if end < 0 {
			end = len(s)
		}
		name := strings.TrimSpace(s[:end])
		s = s[end:]
		var val string
		if strings.HasPrefix(s, "=") {
			if val, s, err = paramValue(strings.TrimLeft(s[1:], " \t")); err != nil {
				return false, "", err
			}
		}
		if strings.EqualFold(name, "rel") && slices.ContainsFunc(strings.Fields(val), func(r string) bool { return strings.EqualFold(r, "next") }) {
			next = true
		}
	}
}

// paramValue reads a token or a quoted-string from the start of s, and
// returns it and what follows it.
func paramValue(s string) (val, rest string, err error) {
	if !strings.HasPrefix(s, `"`) {
		end := strings.IndexAny(s, ";, \t")
		if end < 0 {
			end = len(s)
		}
		return s[:end], s[end:], nil
	}
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '"':
			return b.String(), s[i+1:], nil
		case '\\':
			i++
			if i == len(s) {
				return "", "", errors.New("unterminated quoted string")
			}
		}
		b.WriteByte(s[i])
	}
	return "", "", errors.New("unterminated quoted string")
}
