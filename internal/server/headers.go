package server

import "net/http"

// Values of the headers every response carries. A header map's values are
// only read when the response is written, so every response may share them.
var (
	nosniff = []string{"nosniff"}
	noStore = []string{"no-store"}
)

// withSafeHeaders marks every response as neither to be sniffed as another
// type nor cached.
func withSafeHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h["X-Content-Type-Options"] = nosniff
		h["Cache-Control"] = noStore
		next.ServeHTTP(w, r)
	})
}
