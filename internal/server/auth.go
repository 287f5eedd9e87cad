package server

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"strings"
)

// The WWW-Authenticate challenges of RFC 6750: the plain one for a request
// that sent no bearer token, the one with an error for a token refused.
const (
	challengeMissing = `Bearer realm="usersvc"`
	challengeInvalid = `Bearer realm="usersvc", error="invalid_token"`
)

// authenticator checks bearer tokens. It keeps the SHA-256 digests of the
// tokens, not the tokens, and compares digests, which all have one length,
// in constant time, with every token, so that neither how much of a token a
// guess got right, nor its length, nor which token matched shows in the
// time an answer takes.
type authenticator struct {
	digests [][sha256.Size]byte
}

// protectedRoute is a route that needs a token: see protect.
type protectedRoute struct{ http.Handler }

// protect refuses, with 401, every request to h that carries no valid
// bearer token, when tokens are configured.
func (a authenticator) protect(logger *slog.Logger, h http.Handler) http.Handler {
	if !a.enabled() {
		return protectedRoute{h}
	}
	return protectedRoute{http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := a.check(r); err != nil {
			writeError(w, r, logger, err)
			return
		}
		h.ServeHTTP(w, r)
	})}
}

func newAuthenticator(tokens []string) authenticator {
	a := authenticator{digests: make([][sha256.Size]byte, len(tokens))}
	for i, token := range tokens {
		a.digests[i] = sha256.Sum256([]byte(token))
	}
	return a
}

// enabled reports whether requests need a token.
func (a authenticator) enabled() bool { return len(a.digests) > 0 }

// refused returns the 401 error for a request refused with challenge. Its
// detail is for the client and never repeats what the client sent.
func refused(challenge, detail string) *apiError {
	return &apiError{code: codeUnauthorized, detail: detail, challenge: challenge}
}

// check returns nil when no token is configured, or when r carries exactly
// one Authorization header of scheme Bearer (in any case) whose token is one
// of a's. Returns an
// unauthorized *apiError otherwise: with the plain challenge when r sent no bearer
// token at all, with error="invalid_token" when it sent a wrong, empty or
// doubled one.
func (a authenticator) check(r *http.Request) *apiError {
	if !a.enabled() {
		return nil
	}
	token, err := bearerToken(r)
	if err != nil {
		return err
	}
	got := sha256.Sum256([]byte(token))
	match := 0
	for i := range a.digests {
		match |= subtle.ConstantTimeCompare(got[:], a.digests[i][:])
	}
	if match != 1 {
		return refused(challengeInvalid, "the bearer token is not valid")
	}
	return nil
}

// bearerToken returns the token of r's one Authorization header of scheme
// Bearer (in any case), or the unauthorized *apiError that check answers
// when there is none.
func bearerToken(r *http.Request) (string, *apiError) {
	values := r.Header["Authorization"]
	switch {
	case len(values) == 0:
		return "", refused(challengeMissing, "this route needs a bearer token: send Authorization: Bearer <token>")
	case len(values) > 1:
		return "", refused(challengeInvalid, "send one Authorization header, not several")
	}
	scheme, token, _ := strings.Cut(values[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		// RFC 6750 3.1: another scheme gets the plain challenge.
		return "", refused(challengeMissing, "this route needs a bearer token: send Authorization: Bearer <token>; no other scheme is accepted")
	}
	token = strings.TrimLeft(token, " ")
	if token == "" {
		return "", refused(challengeInvalid, "the Authorization header has no token after Bearer")
	}
	return token, nil
}
