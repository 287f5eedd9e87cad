package server

import (
	"net/http"
	"strings"
	"time"

	"usersvc/internal/metrics"
)

// unmatchedRoute is the route label of requests that match no route, so
// that random paths cannot create new time series.
const unmatchedRoute = "unmatched"

// countRequests counts every request and its duration in m, by method,
// route and status. A nil m counts nothing.
func countRequests(m *metrics.Metrics) middleware {
	return func(next http.Handler) http.Handler {
		if m == nil {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := time.Now()
			rec := &recorder{ResponseWriter: w}
			next.ServeHTTP(rec, r)
			m.ObserveRequest(methodLabel(r.Method), routeLabel(stateOf(r.Context()).pattern), rec.statusCode(), time.Since(start))
		})
	}
}

// routeLabel returns the path of a route pattern ("GET /users/{id}" gives
// "/users/{id}"), or unmatchedRoute: a value from a small fixed set.
func routeLabel(pattern string) string {
	if pattern == "" {
		return unmatchedRoute
	}
	if _, path, ok := strings.Cut(pattern, " "); ok {
		return path
	}
	return pattern
}

// methodLabel returns the method, or OTHER for one HTTP does not define, so
// that a client cannot create new time series by inventing methods.
func methodLabel(method string) string {
	switch method {
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodOptions, http.MethodConnect, http.MethodTrace:
		return method
	}
	return "OTHER"
}
