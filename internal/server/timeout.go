package server

import (
	"context"
	"net/http"
	"time"
)

// withTimeout bounds every request's context by timeout, and so the
// database work done under it; 0 sets no bound.
func withTimeout(timeout time.Duration) middleware {
	return func(next http.Handler) http.Handler {
		if timeout <= 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), timeout)
			defer cancel()
			next.ServeHTTP(w, r.WithContext(ctx))
		})
	}
}
