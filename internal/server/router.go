package server

import (
	"log/slog"
	"net/http"
)

// withRoute looks up the route that r matches and notes it in the
// request's state, for the token check, the access log and the metrics.
func withRoute(mux *http.ServeMux) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			st := stateOf(r.Context())
			st.handler, st.pattern = mux.Handler(r)
			_, st.open = st.handler.(openRoute)
			if st.pattern == "" {
				st.open = openPath(mux, r)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// openPath reports whether a GET of r's path is an open route: then the
// 405 of another method there is answered to anyone, as the route is.
func openPath(mux *http.ServeMux, r *http.Request) bool {
	get := *r
	get.Method = http.MethodGet
	h, pattern := mux.Handler(&get)
	_, open := h.(openRoute)
	return pattern != "" && open
}

// serveRoute serves mux, but answers requests that match no route with a
// problem document instead of the mux's text/plain 404 or 405. The mux
// still decides which of the two applies and sets the 405's Allow header.
// A request that matched is routed by the mux a second time (withRoute
// looked it up first), so that its handler gets its path values: that
// costs less than putting every response through an unmatchedWriter.
func serveRoute(mux *http.ServeMux, logger *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := stateOf(r.Context())
		if st.pattern != "" {
			mux.ServeHTTP(w, r)
			return
		}
		// No route matched: the handler is the mux's own 404, 405 or redirect.
		st.handler.ServeHTTP(&unmatchedWriter{ResponseWriter: w, r: r, logger: logger}, r)
	})
}

// unmatchedWriter replaces a 404 or 405 written by the mux with a problem.
type unmatchedWriter struct {
	http.ResponseWriter
	r        *http.Request
	logger   *slog.Logger
	replaced bool
}

func (w *unmatchedWriter) WriteHeader(status int) {
	var err error
	switch status {
	case http.StatusNotFound:
		err = &apiError{code: codeNotFound, detail: "no route matches this path"}
	case http.StatusMethodNotAllowed:
		err = &apiError{code: codeMethodNotAllowed, detail: "this path does not support method " + w.r.Method + "; see the Allow header"}
	default:
		w.ResponseWriter.WriteHeader(status)
		return
	}
	w.replaced = true
	writeError(w.ResponseWriter, w.r, w.logger, err)
}

func (w *unmatchedWriter) Write(b []byte) (int, error) {
	if w.replaced {
		return len(b), nil // the mux's text body, already replaced
	}
	return w.ResponseWriter.Write(b)
}
