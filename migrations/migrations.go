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

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
func NewProvider(db *sql.DB) (*goose.Provider, error) {
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockTimeout(1, 300))
	if err != nil {
		return nil, fmt.Errorf("create migration locker: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, files, goose.WithSessionLocker(locker))
	if err != nil {
		return nil, fmt.Errorf("create migration provider: %w", err)
	}
	return p, nil
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

// Querier runs a query through pgx; *pgxpool.Pool and *pgx.Conn are ones.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// VersionReader reads the schema version of the database that Q queries.
type VersionReader struct {
	Q Querier
}

// SchemaVersion returns the highest migration version goose has recorded
// as applied (as goose's own Provider reads it), or 0 when goose never ran
// in the database. Returns the driver's error when the database does not
// answer.
func (r VersionReader) SchemaVersion(ctx context.Context) (int64, error) {
	var v int64
	err := r.Q.QueryRow(ctx, "SELECT coalesce(max(version_id), 0) FROM "+goose.DefaultTablename).Scan(&v)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == pgerrcode.UndefinedTable {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read schema version: %w", err)
	}
	return v, nil
}
