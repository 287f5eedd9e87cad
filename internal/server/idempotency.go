package server

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"net/http"
	"strings"
	"time"

	"usersvc/db"
	"usersvc/internal/postgres"
)

// Idempotent creates (draft-ietf-httpapi-idempotency-key-header): a POST
// /users with an Idempotency-Key is executed once; its outcome, a 201 with
// the user or a 400 duplicate_name, is recorded by the statement that
// creates the user, and a later request with the key gets it again.

// Headers of idempotent creates, in the canonical form header maps use.
const (
	idempotencyKeyHeader = "Idempotency-Key"
	replayedHeader       = "Idempotent-Replayed"
)

// maxIdempotencyKeyLen bounds a key, in characters of printable ASCII.
const maxIdempotencyKeyLen = 255

// inFlightGrace is how long a keyed create waits for a statement that holds
// its key before answering 409 idempotency_key_in_use. A client whose
// attempt got 503 retries at once, and that attempt's session may hold the
// key a moment longer: a cancelled statement releases its locks just after
// it reports its error, a terminated session as its process exits. Within
// the grace the retry waits for that, so that it gets its own attempt's
// outcome, not a 409 for a request that is over.
const inFlightGrace = 200 * time.Millisecond

// keyRule is what a valid Idempotency-Key is, for the client.
const keyRule = `must be 1 to 255 characters of printable ASCII, bare or as a quoted string ("…", with \" and \\ escaped)`

var (
	errKeyReused = &apiError{code: codeIdempotencyKeyReused,
		detail: "this Idempotency-Key was used for another request (another name); send a new key with a new request"}
	errKeyInUse = &apiError{code: codeIdempotencyKeyInUse,
		detail: "a request with this Idempotency-Key is still in progress; retry after Retry-After seconds for its outcome"}
	errKeyInvalid = invalidFields(fieldError{In: "header", Field: idempotencyKeyHeader, Detail: keyRule}).(*apiError)
)

// idempotencyKey returns the key of r's Idempotency-Key header and whether
// it sent one: the draft's form, a structured-field string ("…", with \"
// and \\ escapes), or the common bare form. Returns a validation_failed
// *apiError for a header sent twice, or a key that is not 1 to 255
// characters of printable ASCII.
func idempotencyKey(r *http.Request) (string, bool, error) {
	values, sent := r.Header[idempotencyKeyHeader]
	if !sent {
		return "", false, nil
	}
	if len(values) > 1 {
		return "", true, invalidFields(fieldError{In: "header", Field: idempotencyKeyHeader, Detail: "send one Idempotency-Key header, not several"})
	}
	key, ok := values[0], true
	if strings.HasPrefix(key, `"`) {
		key, ok = unquoteKey(key)
	}
	if !ok || key == "" || len(key) > maxIdempotencyKeyLen || strings.ContainsFunc(key, func(c rune) bool { return c < 0x20 || c > 0x7e }) {
		return "", true, errKeyInvalid
	}
	return key, true, nil
}

// unquoteKey returns the content of an RFC 8941 string, "…" with \" and \\
// the only escapes, or false when s is not one.
func unquoteKey(s string) (string, bool) {
	if len(s) < 2 || s[len(s)-1] != '"' {
		return "", false
	}
	s = s[1 : len(s)-1]
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			i++
			if i == len(s) || (s[i] != '"' && s[i] != '\\') {
				return "", false
			}
			b.WriteByte(s[i])
		case c == '"':
			return "", false
		default:
			b.WriteByte(c)
		}
	}
	return b.String(), true
}

// keyDigest returns what names key in the table for r's client: a SHA-256
// digest of r's bearer token, or of its having none, and the key, so that
// one client's key never replays to a client with another token. (Tokens
// and keys hold no NUL, and the prefix says which form follows. The digest
// differs from the one the token check compares: the table holds nothing
// that a token check uses, and neither the token nor the key.)
func keyDigest(r *http.Request, key string) []byte {
	whose := "\x00"
	if token, err := bearerToken(r); err == nil {
		whose = "\x01" + token + "\x00"
	}
	d := sha256.Sum256([]byte("usersvc idempotency key\x00" + whose + key))
	return d[:]
}

// keyedCreate is a POST /users with an Idempotency-Key.
type keyedCreate struct {
	digest []byte // keyDigest's
	name   string // normalized
	// request is a digest of the method, path and name: what a later
	// request with the key must repeat to be replayed.
	request []byte
}

func newKeyedCreate(r *http.Request, key, name string) keyedCreate {
	request := sha256.Sum256([]byte(r.Method + " " + r.URL.Path + "\n" + name))
	return keyedCreate{digest: keyDigest(r, key), name: name, request: request[:]}
}

// lockID returns the advisory lock that claims c's key while its statement
// runs: 64 bits of its digest. Two keys that share them only make each
// other wait, or answer 409, and only while both are in flight.
func (c keyedCreate) lockID() int64 {
	return int64(binary.BigEndian.Uint64(c.digest[:8]))
}

// createOutcome is what a keyed create answers.
type createOutcome struct {
	user     db.User // when created
	created  bool    // 201; else 400 duplicate_name
	replayed bool    // recorded by an earlier request with the key
}

// createIdempotently executes c, or finds the outcome of an earlier request
// with its key. Returns errKeyReused when the key came with another
// request, errKeyInUse when a statement with the key still runs after
// inFlightGrace, or the store's error.
func createIdempotently(ctx context.Context, store userStore, c keyedCreate) (createOutcome, error) {
	arg := db.CreateUserIdempotentlyParams{LockID: c.lockID(), KeyDigest: c.digest, Name: c.name, Request: c.request}
	wait, waited := 5*time.Millisecond, time.Duration(0)
	for {
		row, err := store.CreateUserIdempotently(ctx, arg)
		switch {
		case err == nil && row.Claimed && !row.RecordedStatus.Valid:
			return createOutcome{}, errors.New("the key was claimed, but no outcome recorded")
		case err == nil && row.Claimed && row.ID.Valid:
			return createOutcome{created: true, user: db.User{ID: row.ID.Int64, Name: row.Name.String,
				CreatedAt: row.CreatedAt.Time, UpdatedAt: row.UpdatedAt.Time}}, nil
		case err == nil && row.Claimed:
			return createOutcome{}, nil // the name is taken: 400, recorded
		case err != nil && !errors.Is(postgres.Translate(err), postgres.ErrKeyRecorded):
			return createOutcome{}, err
		}
		// The key has a record (the statement failed on it and did
		// nothing), or a statement that holds it may have made one by now.
		out, found, err := recordedOutcome(ctx, store, c)
		if found || err != nil {
			return out, err
		}
		// No record: the key is claimed by a statement still running (or,
		// rarely, its record was purged just now: the next round tells).
		if waited+wait > inFlightGrace {
			return createOutcome{}, errKeyInUse
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return createOutcome{}, ctx.Err()
		case <-t.C:
		}
		waited += wait
		wait *= 2
	}
}

// recordedOutcome returns the outcome recorded for c's key, replayed, and
// whether there is one; errKeyReused when it was recorded for another
// request.
func recordedOutcome(ctx context.Context, store userStore, c keyedCreate) (createOutcome, bool, error) {
	rec, err := store.GetIdempotencyKey(ctx, c.digest)
	switch {
	case errors.Is(postgres.Translate(err), postgres.ErrNotFound):
		return createOutcome{}, false, nil
	case err != nil:
		return createOutcome{}, false, err
	case string(rec.Request) != string(c.request):
		return createOutcome{}, true, errKeyReused
	}
	out := createOutcome{created: rec.Status == http.StatusCreated, replayed: true}
	if out.created {
		// The name is the request's, the same as the first one's;
		// updated_at was created_at until a first rename.
		out.user = db.User{ID: rec.UserID.Int64, Name: c.name, CreatedAt: rec.UserCreatedAt.Time, UpdatedAt: rec.UserCreatedAt.Time}
	}
	return out, true, nil
}
