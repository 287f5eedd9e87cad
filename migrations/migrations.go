// Package migrations embeds the goose SQL migrations of the users schema and
// applies them through goose's Provider API.
//
// The same files work with the plain goose CLI:
//
//	goose -dir migrations postgres "$DATABASE_URL" up
package migrations

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
)

//go:embed *.sql
var files embed.FS

// NewProvider returns a goose Provider over the embedded migrations. It holds
// a PostgreSQL advisory lock for the whole of each operation, so two
// instances migrating one database at once apply every migration once. An
// instance waiting for the lock tries again every second (goose's default
// is every 5), for at most 5 minutes.
//
// db must be pgx's database/sql driver (stdlib) connected to PostgreSQL
// itself: the operations that change the schema (Up, Down, UpByOne...)
// return ErrThroughPooler, having done nothing, when a connection pooler
// such as PgBouncer stands between them and the server. Status and
// GetVersions take no lock and work through a pooler too.
func NewProvider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, fmt.Errorf("create migration locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(directLocker{locker}))
	if err != nil {
		return nil, fmt.Errorf("create migration provider: %w", err)
	}
	return p, nil
}

// ErrThroughPooler is returned by the operations that change the schema
// when the connection goes through a connection pooler.
var ErrThroughPooler = errors.New("the database connection goes through a connection pooler such as PgBouncer, " +
	"where the session-level advisory lock that makes concurrent migrations take turns does not hold: " +
	"run the migrations against PostgreSQL itself")

// directLocker is goose's session locker that first makes sure that the
// session is PostgreSQL's own. Behind a pooler in transaction mode, each
// statement may run on another server connection: the lock would be taken
// on one, left held on it after the statement (where the pooler hands it
// to other clients, for whom pg_try_advisory_lock then succeeds too) and
// released, or not, on another. Session mode would be safe, but a client
// cannot tell the modes apart.
type directLocker struct {
	lock.SessionLocker
}

// SessionLock returns ErrThroughPooler when conn goes through a pooler,
// else takes the lock as goose's locker does.
func (l directLocker) SessionLock(ctx context.Context, conn *sql.Conn) error {
	if err := checkDirect(ctx, conn); err != nil {
		return err
	}
	return l.SessionLocker.SessionLock(ctx, conn)
}

// checkDirect returns ErrThroughPooler when conn goes through a pooler
// (ThroughPooler), or another error when conn is not pgx's or the
// query fails.
func checkDirect(ctx context.Context, conn *sql.Conn) error {
	return conn.Raw(func(driverConn any) error {
		c, ok := driverConn.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("migrations need pgx's database/sql driver, not %T", driverConn)
		}
		pooled, err := ThroughPooler(ctx, c.Conn())
		if err == nil && pooled {
			err = ErrThroughPooler
		}
		return err
	})
}

// ThroughPooler reports whether conn goes through a connection pooler such
// as PgBouncer: whether the server process behind it is not the one its
// start-up named. PostgreSQL tells a client its process id (in
// BackendKeyData, for cancelling); a pooler cannot, since it gives the
// client no server of its own, and makes one up. Migrations refuse to run
// there, and the change feed does not LISTEN there.
func ThroughPooler(ctx context.Context, conn *pgx.Conn) (bool, error) {
	var backend int64
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		return false, fmt.Errorf("read the server's process id: %w", err)
	}
	return backend != int64(conn.PgConn().PID()), nil
}

// FS returns the embedded migration files, for callers that need their
// contents, such as the test harness that hashes them to name its template
// database.
func FS() fs.FS {
	return files
}

// Latest returns the highest version among the embedded migrations: the
// schema version this build's queries are written for.
func Latest() int64 {
	names, _ := fs.Glob(files, "*.sql") // the pattern is valid
	var latest int64
	for _, name := range names {
		// The embedded files are the ones goose accepts, so each has a
		// version; a misnamed one fails the migrations' tests.
		if v, err := goose.NumericComponent(path.Base(name)); err == nil && v > latest {
			latest = v
		}
	}
	return latest
}
