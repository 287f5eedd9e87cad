package main

import (
	"context"
	"errors"
	"io"
	"net"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5/pgconn"

	"usersvc/db"
)

// readAttempts bounds how often retriedReads runs one read: the first
// attempt and two retries, each on another connection of the pool.
const readAttempts = 3

// retriedReads serves the GET routes' queries from the DATABASE_READ_URL
// pool, running again, on another connection, a read whose connection was
// lost: its node went away (demoted by a switchover, or its machine lost)
// while the pool still held sessions to it. A read changes nothing, so
// running it again is always safe, and the node that remains answers it;
// without the retry, each session to the lost node would fail one request.
type retriedReads struct {
	q *db.Queries
}

func (r retriedReads) GetUser(ctx context.Context, id int64) (db.User, error) {
	return retryRead(ctx, func() (db.User, error) { return r.q.GetUser(ctx, id) })
}

func (r retriedReads) ListUsers(ctx context.Context, arg db.ListUsersParams) ([]db.User, error) {
	return retryRead(ctx, func() ([]db.User, error) { return r.q.ListUsers(ctx, arg) })
}

func (r retriedReads) ListUsersByName(ctx context.Context, arg db.ListUsersByNameParams) ([]db.User, error) {
	return retryRead(ctx, func() ([]db.User, error) { return r.q.ListUsersByName(ctx, arg) })
}

// retryRead runs read until it succeeds, fails otherwise than by a lost
// connection, ctx ends, or it has run readAttempts times. Returns what the
// last run returned.
func retryRead[T any](ctx context.Context, read func() (T, error)) (T, error) {
	for attempt := 1; ; attempt++ {
		v, err := read()
		if err == nil || attempt == readAttempts || ctx.Err() != nil || !lostConnection(err) {
			return v, err
		}
	}
}

// lostConnection reports whether err ended the connection a query ran on,
// as a server that shuts down, crashes or vanishes does, rather than
// answered the query (a row not found, a refusal), timed out, or failed to
// connect at all, which another attempt right away would not change.
func lostConnection(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return false
	}
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return false
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		// 57P01 admin_shutdown (a fast shutdown, as a demotion makes),
		// 57P02 crash_shutdown, 57P03 cannot_connect_now, and class 08.
		switch pgErr.Code {
		case pgerrcode.AdminShutdown, pgerrcode.CrashShutdown, pgerrcode.CannotConnectNow:
			return true
		}
		return pgerrcode.IsConnectionException(pgErr.Code)
	}
	// No answer: the socket was closed or reset under the query, or the
	// pool handed out a connection that had just broken.
	_, netErr := errors.AsType[net.Error](err)
	return netErr || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.SafeToRetry(err)
}
