package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"usersvc/db"
)

// A request has two bounds of its own, one after the other: its body must
// arrive within BodyTimeout of its headers (the client's time), and its
// database work must end within RequestTimeout of its start, which comes
// after the body (the database's time). A client too slow with its body gets
// 408 request_timeout and a log line that says so; it is never taken for a
// database that did not answer.

// timedBody is a request body that must arrive by a deadline, which
// newTimedBody sets on the connection at once: a read that misses it fails
// with a *slowBodyError. So does net/http's own reading of what no handler
// read, to discard it before the answer: that client waits for its answer
// until the deadline at most. Once the body is in, net/http lifts the
// deadline itself, as its background read begins (which watches for a
// client that hangs up while the handler works, and cancels the request
// when a read fails): the database's time that follows is not cut short.
type timedBody struct {
	io.ReadCloser
	timeout  time.Duration
	length   int64 // the declared Content-Length
	received int64
}

// newTimedBody returns r's body bounded by deadline, which it sets at once
// on the connection that w writes to. Served in-process, as benchmarks do,
// there is no connection: no network, then, to be slow.
func newTimedBody(w http.ResponseWriter, r *http.Request, deadline time.Time, timeout time.Duration) *timedBody {
	_ = http.NewResponseController(w).SetReadDeadline(deadline)
	return &timedBody{ReadCloser: r.Body, timeout: timeout, length: r.ContentLength}
}

func (b *timedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.received += int64(n)
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The deadline stays: net/http reads nothing more of this body
		// after the answer, and closes the connection.
		return n, &slowBodyError{timeout: b.timeout, received: b.received, length: b.length}
	}
	return n, err
}

// slowBodyError is a request body that did not arrive within BodyTimeout.
// It unwraps to the request_timeout *apiError the client gets.
type slowBodyError struct {
	timeout          time.Duration
	received, length int64
}

func (e *slowBodyError) Error() string {
	return fmt.Sprintf("slow client: %d of %d body bytes received within BODY_TIMEOUT (%s)", e.received, e.length, e.timeout)
}

func (e *slowBodyError) Unwrap() error {
	return &apiError{code: codeRequestTimeout, detail: fmt.Sprintf(
		"the request body did not arrive within %s of the request's headers; send it at once after them, then retry", e.timeout)}
}

// withBodyTimeout bounds the arrival of every request's body by timeout
// from now, the end of its headers (see timedBody); 0 sets no bound.
func withBodyTimeout(timeout time.Duration) middleware {
	return func(next http.Handler) http.Handler {
		if timeout <= 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.Body != nil && r.Body != http.NoBody {
				r.Body = newTimedBody(w, r, time.Now().Add(timeout), timeout)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// timedReader, timedStore and timedProbe bound each call to the database
// by timeout, from the moment it is made: after the request's body, when it
// has one, has been read. Each handler makes one call, so timeout bounds a
// request's database work.
type timedReader struct {
	reader  userReader
	timeout time.Duration
}

func (s timedReader) GetUser(ctx context.Context, id int64) (db.User, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.reader.GetUser(ctx, id)
}

func (s timedReader) ListUsers(ctx context.Context, arg db.ListUsersParams) ([]db.User, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.reader.ListUsers(ctx, arg)
}

func (s timedReader) ListUsersByName(ctx context.Context, arg db.ListUsersByNameParams) ([]db.User, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.reader.ListUsersByName(ctx, arg)
}

// timedStore is timedReader for a userStore's writes too.
type timedStore struct {
	timedReader
	store userStore
}

func (s timedStore) CreateUser(ctx context.Context, name string) (db.User, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.store.CreateUser(ctx, name)
}

func (s timedStore) RenameUser(ctx context.Context, arg db.RenameUserParams) (db.User, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.store.RenameUser(ctx, arg)
}

func (s timedStore) DeleteUser(ctx context.Context, id int64) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.store.DeleteUser(ctx, id)
}

func (s timedStore) CreateUserIdempotently(ctx context.Context, arg db.CreateUserIdempotentlyParams) (db.CreateUserIdempotentlyRow, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.store.CreateUserIdempotently(ctx, arg)
}

func (s timedStore) GetIdempotencyKey(ctx context.Context, keyDigest []byte) (db.GetIdempotencyKeyRow, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.store.GetIdempotencyKey(ctx, keyDigest)
}

func (s timedStore) RenameUserIf(ctx context.Context, arg db.RenameUserIfParams) (db.RenameUserIfRow, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.store.RenameUserIf(ctx, arg)
}

func (s timedStore) DeleteUserIf(ctx context.Context, arg db.DeleteUserIfParams) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	return s.store.DeleteUserIf(ctx, arg)
}
