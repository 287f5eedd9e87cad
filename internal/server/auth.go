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
var (
	challengeMissing = []string{`Bearer realm="usersvc"`}
	challengeInvalid = []string{`Bearer realm="usersvc", error="invalid_token"`}
)

// authenticator checks bearer tokens. It keeps the SHA-256 digests of the
// tokens, not the tokens, and compares digests, which all have one length,
// in constant time, with every token, so that neither how much of a token a
// guess got right, nor its length, nor which token matched shows in the
// time an answer takes. The zero value lets every request through.
type authenticator struct {
	digests [][sha256.Size]byte
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

// authError is why a request was refused. Its detail is for the client and
// never repeats what the client sent.
type authError struct {
	challenge []string
	detail    string
}

// check returns nil when r carries exactly one Authorization header of
// scheme Bearer (in any case) whose token is one of a's. Returns an
// *authError otherwise: with the plain challenge when r sent no bearer
// token at all, with error="invalid_token" when it sent a wrong, empty or
// doubled one.
func (a authenticator) check(r *http.Request) *authError {
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
		return &authError{challengeInvalid, "the bearer token is not valid"}
	}
	return nil
}

// bearerToken returns the token of r's one Authorization header of scheme
// Bearer (in any case), or an *authError that says what is wrong, with the
// challenge check answers it with.
func bearerToken(r *http.Request) (string, *authError) {
	values := r.Header["Authorization"]
	switch {
	case len(values) == 0:
		return "", &authError{challengeMissing, "this route needs a bearer token: send Authorization: Bearer <token>"}
	case len(values) > 1:
		return "", &authError{challengeInvalid, "send one Authorization header, not several"}
	}
	scheme, token, _ := strings.Cut(values[0], " ")
	if !strings.EqualFold(scheme, "Bearer") {
		// RFC 6750 3.1: another scheme gets the plain challenge.
		return "", &authError{challengeMissing, "this route needs a bearer token: send Authorization: Bearer <token>; no other scheme is accepted"}
	}
	token = strings.TrimLeft(token, " ")
	if token == "" {
		return "", &authError{challengeInvalid, "the Authorization header has no token after Bearer"}
	}
	return token, nil
}

// unauthorized answers r with 401 for err.
func unauthorized(w http.ResponseWriter, r *http.Request, logger *slog.Logger, err *authError) {
	w.Header()["Www-Authenticate"] = err.challenge
	writeError(w, r, logger, &requestError{code: codeUnauthorized, detail: err.detail})
}
