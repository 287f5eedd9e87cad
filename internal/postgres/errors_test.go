package postgres

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5"

	"usersvc/internal/pgtest"
)

// TestEveryConstraintHasAProblem checks that constraints says what a
// violation of each unique and check constraint of the schema means to a
// client, so that a new constraint is not reported as another one, or as an
// internal error.
func TestEveryConstraintHasAProblem(t *testing.T) {
	t.Parallel()
	pool := pgtest.NewPool(t)
	rows, err := pool.Query(context.Background(), `
		SELECT conname FROM pg_constraint
		WHERE contype IN ('u', 'c') AND connamespace = 'public'::regnamespace
		ORDER BY conname`)
	if err != nil {
		t.Fatal(err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatal("the schema has no unique or check constraint; want at least users_name_key")
	}
	for _, name := range names {
		if constraints[name] == nil {
			t.Errorf("constraint %s has no entry in constraints", name)
		}
	}
}
