// Package migrations embeds the goose SQL migrations of the users schema and
// applies them through goose's Provider API.
//
// The same files work with the plain goose CLI:
//
//	goose -dir migrations postgres "$DATABASE_URL" up
package migrations

import (
	"database/sql"
	"embed"
	"fmt"
	"io/fs"

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
