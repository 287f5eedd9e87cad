package postgres

import (
	"testing"

	"usersvc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
