package server

import (
	"context"
	"crypto/rand"
	"log/slog"
	"net/http"
	"strings"
)

// requestIDHeader carries a request's id in and out: X-Request-ID, in the
// canonical form that header maps use, so that no lookup has to build it.
const requestIDHeader = "X-Request-Id"

// maxRequestIDLen bounds an incoming request id that is kept.
const maxRequestIDLen = 128

type requestStateKey struct{}

// requestState is what the middleware learn about a request and pass on to
// each other through its context: its id, and the route it matched.
type requestState struct {
	id string
	// Set by withRoute: the mux's handler for the request and its route's
	// pattern ("" when no route matched: the mux's 404 or 405), and
	// whether the route needs no token.
	handler http.Handler
	pattern string
	open    bool
}

// stateOf returns the state withRequestID gave ctx's request, or nil.
func stateOf(ctx context.Context) *requestState {
	st, _ := ctx.Value(requestStateKey{}).(*requestState)
	return st
}

// requestID returns the id of the request ctx belongs to, or "".
func requestID(ctx context.Context) string {
	if st := stateOf(ctx); st != nil {
		return st.id
	}
	return ""
}

// withRequestID gives every request an id, the client's one valid
// X-Request-ID or else a new one, which the response echoes and every log
// line of the request carries (requestIDHandler).
func withRequestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		st := &requestState{}
		if ids := r.Header[requestIDHeader]; len(ids) == 1 && validRequestID(ids[0]) {
			st.id = ids[0]
		} else {
			st.id = rand.Text()
		}
		w.Header()[requestIDHeader] = []string{st.id}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestStateKey{}, st)))
	})
}

// validRequestID reports whether a client's X-Request-ID is one to keep:
// 1 to 128 characters that need no escaping in a log or a header.
func validRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("-_.:+/=@", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// requestIDHandler adds the request id of the context to every record
// logged with one, so that every line of a request can be found by its id.
type requestIDHandler struct {
	slog.Handler
}

func (h requestIDHandler) Handle(ctx context.Context, rec slog.Record) error {
	if id := requestID(ctx); id != "" {
		rec.AddAttrs(slog.String("request_id", id))
	}
	return h.Handler.Handle(ctx, rec)
}

func (h requestIDHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return requestIDHandler{h.Handler.WithAttrs(attrs)}
}

func (h requestIDHandler) WithGroup(name string) slog.Handler {
	return requestIDHandler{h.Handler.WithGroup(name)}
}
