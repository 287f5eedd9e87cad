package postgres

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
	"usersvc/internal/config"
	"usersvc/internal/pgtest"
)

// TestReadsRetryLostConnections ends every session of the read pool, as a
// switchover's demotion of its node does, and reads through it at once: the
// read is run again on a new connection and answers, where the plain
// queries fail. A user that does not exist is no lost connection.
func TestReadsRetryLostConnections(t *testing.T) {
	ctx := context.Background()
	const conns = 2 // fewer than readAttempts
	pool, err := NewReadPool(ctx, config.Config{DatabaseURL: "postgres://unused/db", DatabaseReadURL: pgtest.NewURL(t), DBMaxConns: conns})
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	u, err := db.New(pool).CreateUser(ctx, "read back")
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, pgtest.AdminURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	// endSessions fills the pool, then ends all its sessions and waits
	// until they are gone.
	endSessions := func() {
		t.Helper()
		var held []*pgxpool.Conn
		for range conns {
			c, err := pool.Acquire(ctx)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, c)
		}
		for _, c := range held {
			c.Release()
		}
		const sessions = "FROM pg_stat_activity WHERE application_name = 'usersvc-read' AND datname = $1"
		database := pool.Config().ConnConfig.Database
		if _, err := admin.Exec(ctx, "SELECT pg_terminate_backend(pid) "+sessions, database); err != nil {
			t.Fatal(err)
		}
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			var n int
			if err := admin.QueryRow(ctx, "SELECT count(*) "+sessions, database).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d sessions of the read pool left 5s after pg_terminate_backend", n)
			}
		}
	}
	endSessions()
	if _, err := db.New(pool).GetUser(ctx, u.ID); err == nil || !lostConnection(err) {
		t.Fatalf("GetUser on a session that was ended = %v, want an error that lostConnection recognises, or this test shows nothing", err)
	}
	reads := db.New(Reads{Pool: pool})
	endSessions()
	if got, err := reads.GetUser(ctx, u.ID); err != nil || got.ID != u.ID {
		t.Errorf("Reads' GetUser after the pool's sessions were ended = %+v, %v; want the user", got, err)
	}
	endSessions()
	if got, err := reads.ListUsers(ctx, db.ListUsersParams{MaxRows: 10}); err != nil || len(got) != 1 {
		t.Errorf("Reads' ListUsers after the pool's sessions were ended = %v, %v; want the user", got, err)
	}
	if _, err := reads.GetUser(ctx, u.ID+1); err != pgx.ErrNoRows || lostConnection(err) {
		t.Errorf("Reads' GetUser of a missing user = %v, want pgx.ErrNoRows, and no lost connection", err)
	}
}
