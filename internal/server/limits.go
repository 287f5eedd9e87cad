package server

import (
	"fmt"
	"log/slog"
	"net/http"
)

// maxURIBytes bounds a request's target, path and query as sent. The
// longest a client needs is a list query filtering on a 100-character
// name of 4-byte characters, all percent-encoded: about 1,300 bytes.
const maxURIBytes = 4 << 10

var (
	errURITooLong  = &apiError{code: codeURITooLong, detail: fmt.Sprintf("the request target (path and query) is longer than %d bytes", maxURIBytes)}
	errNoResources = &apiError{code: codeNotFound, detail: "the request target * names no resource: this server has only the routes of its OpenAPI document"}
)

// limitURI answers 414 uri_too_long to a request whose target is longer
// than maxURIBytes, and 404 not_found to the target "*" (OPTIONS *, which
// the mux would redirect to /*), before it is routed or its query parsed.
func limitURI(logger *slog.Logger) middleware {
	return func(next http.Handler) http.Handler {
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
}
