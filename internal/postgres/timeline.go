package postgres

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"

	"github.com/jackc/pgx/v5/pgconn"
)

// fenceOldPrimaries makes a new connection to a primary fail, so that pgx
// tries DATABASE_URL's next host, when this process has seen a primary of
// the same cluster (its system identifier) on a later timeline: a failover
// has promoted another node, and this one, reached again once the network
// returns, takes connections until its keeper demotes it
// (docs/reliability.md, "The old primary, once the network returns"). It
// runs after cc's own check, target_session_attrs's.
func fenceOldPrimaries(cc *pgconn.Config) {
	validate := cc.ValidateConnect
	cc.ValidateConnect = func(ctx context.Context, pc *pgconn.PgConn) error {
		var err error
		if validate != nil {
			err = validate(ctx, pc)
		}
		// prefer-standby's answer for a primary, which pgx may still take.
		if _, notPreferred := err.(*pgconn.NotPreferredError); err != nil && !notPreferred {
			return err
		}
		if stale := checkTimeline(ctx, pc); stale != nil {
			return stale
		}
		return err
	}
}

// timelineQuery reads the server's cluster and, on a primary, its timeline;
// 0 on a standby, which replays whichever timeline its primary writes.
const timelineQuery = `SELECT system_identifier,
       CASE WHEN pg_is_in_recovery() THEN 0
            ELSE ('x' || left(pg_walfile_name(pg_current_wal_lsn()), 8))::bit(32)::int END
FROM pg_control_system()`

// timelines is the latest timeline this process has seen on a primary of
// each cluster.
var timelines = struct {
	sync.Mutex
	latest map[string]int64
}{latest: map[string]int64{}}

// checkTimeline returns an error when pc's server is a primary on an
// earlier timeline than one seen before, or when the connection fails; a
// server that refuses the query is not judged.
func checkTimeline(ctx context.Context, pc *pgconn.PgConn) error {
	result, err := pc.Exec(ctx, timelineQuery).ReadAll()
	if _, refused := errors.AsType[*pgconn.PgError](err); refused {
		return nil
	}
	if err != nil {
		return err
	}
	row := result[0].Rows[0]
	system := string(row[0])
	timeline, err := strconv.ParseInt(string(row[1]), 10, 64)
	if err != nil || timeline == 0 {
		return err
	}
	timelines.Lock()
	defer timelines.Unlock()
	if latest := timelines.latest[system]; timeline < latest {
		return fmt.Errorf("an old primary: it writes timeline %d, and a primary of the same cluster has been seen on timeline %d since a failover", timeline, latest)
	}
	timelines.latest[system] = timeline
	return nil
}
