// Package postgres is all that usersvc knows of PostgreSQL beyond its SQL:
// what an error from the database means, the pools and their bounds, the
// one deadline of a request's statements, the retry of a read whose
// connection was lost, the readiness probe and the purge of idempotency
// keys. Its callers see the service's own errors, never a SQLSTATE.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// The outcomes of the database's work that callers branch on, as Translate
// returns them.
var (
	ErrNotFound    = errors.New("no such row")
	ErrNameTaken   = errors.New("another user has this name")
	ErrNameInvalid = errors.New("the name breaks the users_name_length constraint")
	// ErrKeyRecorded is CreateUserIdempotently failing, having done
	// nothing, on a key that has a record already.
	ErrKeyRecorded = errors.New("the idempotency key has a record")
	// errSchema is a constraint that no request can break, only a bug:
	// an internal error.
	errSchema = errors.New("a constraint of the service's own rows was broken")
)

// constraints maps each constraint of the schema to what its violation
// means. A violation of one not listed is an internal error: a schema
// change that forgot this table (TestEveryConstraintHasAProblem).
var constraints = map[string]error{
	"users_name_key":        ErrNameTaken,
	"users_name_length":     ErrNameInvalid,
	"idempotency_keys_pkey": ErrKeyRecorded,
	// The feed's own: its trigger and purge write only what they allow.
	"user_changes_op":          errSchema,
	"user_changes_horizon_one": errSchema,
}

// UnavailableError is a database that cannot serve the service now. Why
// says so in words an operator acts on, naming no host, user or password:
// /readyz shows it to anyone.
type UnavailableError struct {
	Why string
	Err error
}

func (e *UnavailableError) Error() string { return e.Why + ": " + e.Err.Error() }
func (e *UnavailableError) Unwrap() error { return e.Err }

// Translate returns what err, from the database, means to the service:
// ErrNotFound, a constraint's error, or an *UnavailableError, each wrapping
// err; else err itself, an internal failure.
func Translate(err error) error {
	if errors.Is(err, pgx.ErrNoRows) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}
	if why := unavailableBecause(err); why != "" {
		return &UnavailableError{Why: why, Err: err}
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		if meaning := constraints[pgErr.ConstraintName]; meaning != nil &&
			(pgErr.Code == pgerrcode.UniqueViolation || pgErr.Code == pgerrcode.CheckViolation) {
			return fmt.Errorf("%w: %w", meaning, err)
		}
	}
	return err
}

// SQLState returns the SQLSTATE of the server's error in err, or "".
func SQLState(err error) string {
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		return pgErr.Code
	}
	return ""
}

// unavailableBecause returns why err says the database cannot serve the
// service, or "" when err is no such failure: by SQLSTATE class, any other
// refusal while connecting, and, without a SQLSTATE, a database that cannot
// be reached, has no host that takes writes, or does not answer in time.
func unavailableBecause(err error) string {
	_, connecting := errors.AsType[*pgconn.ConnectError](err)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		code := pgErr.Code
		why := func(what, todo string) string {
			if todo == "" {
				return fmt.Sprintf("%s (SQLSTATE %s)", what, code)
			}
			return fmt.Sprintf("%s (SQLSTATE %s): %s", what, code, todo)
		}
		switch {
		case code == pgerrcode.InvalidPassword:
			return why("the database refused the service's credentials", "check the user and password in DATABASE_URL")
		case pgerrcode.IsInvalidAuthorizationSpecification(code):
			return why("the database refused the service's role", "check the user in DATABASE_URL, that the role exists and may log in, and the server's pg_hba.conf")
		case pgerrcode.IsInvalidCatalogName(code):
			return why("the database named in DATABASE_URL does not exist", "create it, or correct the name")
		case code == pgerrcode.TooManyConnections:
			return why("the database has no connection slot free", "too many connections to the server, the database or the service's role; see max_connections, CONNECTION LIMIT and DB_MAX_CONNS")
		case pgerrcode.IsInsufficientResources(code):
			return why("the database is out of resources", "")
		case code == pgerrcode.AdminShutdown:
			return why("the database ended the service's session", "it is shutting down, or an administrator terminated the session")
		case code == pgerrcode.CrashShutdown:
			return why("the database is restarting after one of its processes crashed", "")
		case code == pgerrcode.CannotConnectNow:
			return why("the database accepts no connections now", "it is starting up, shutting down or recovering")
		case code == pgerrcode.QueryCanceled:
			return why("the database cancelled the statement", "a statement_timeout, or the request ran out of REQUEST_TIMEOUT")
		case pgerrcode.IsOperatorIntervention(code):
			return why("the database ended the service's session", "")
		case code == pgerrcode.ReadOnlySQLTransaction:
			return why("the database is read-only", "a standby, or default_transaction_read_only is on; the service needs the primary")
		case pgerrcode.IsConnectionException(code):
			return why("the connection to the database failed", "")
		case code == pgerrcode.UndefinedTable:
			return why("a table the service needs does not exist", "apply the migrations (usersvc migrate up)")
		case connecting:
			return why("the database refused the service's connection", "")
		}
		return ""
	}
	timedOut := errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err)
	switch {
	case connecting && timedOut:
		return "the database did not complete the connection in time"
	case connecting && (errors.Is(err, pgconn.ErrReadOnlyConnection) || errors.Is(err, pgconn.ErrStandbyConnection)):
		// target_session_attrs=read-write or primary turned every host
		// that answered away, as during a failover.
		return "no database host in DATABASE_URL takes writes: those that answer are read-only or standbys, as during a failover"
	case connecting:
		return "the database cannot be reached"
	case timedOut:
		return "the database did not answer in time"
	case errors.Is(err, context.Canceled):
		return "the wait for the database was cancelled"
	}
	if _, netErr := errors.AsType[net.Error](err); netErr ||
		pgconn.SafeToRetry(err) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "the connection to the database failed"
	}
	return ""
}

// lostConnection reports whether err ended the connection a query ran on,
// as a server that shuts down, crashes or vanishes does, rather than
// answered it, timed out, or failed to connect at all, which another
// attempt at once would not change.
func lostConnection(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || pgconn.Timeout(err) {
		return false
	}
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return false
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok {
		switch pgErr.Code {
		case pgerrcode.AdminShutdown, pgerrcode.CrashShutdown, pgerrcode.CannotConnectNow:
			return true
		}
		return pgerrcode.IsConnectionException(pgErr.Code)
	}
	_, netErr := errors.AsType[net.Error](err)
	return netErr || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, pgconn.ErrConnClosed) || pgconn.SafeToRetry(err)
}
