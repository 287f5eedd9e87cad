-- name: ListChanges :many
-- ListChanges returns up to max_rows changes with a position above after,
-- oldest first, each with the purge's horizon and whether committed changes
-- wait in the queue (ChangesState's, read in the same snapshot).
SELECT position, op, user_id, name, created_at, updated_at, at,
       (SELECT purged_through FROM user_changes_horizon)::bigint AS purged_through,
       EXISTS (SELECT FROM user_change_queue ORDER BY seq LIMIT 1) AS queued
FROM user_changes
WHERE position > sqlc.arg(after)::bigint
ORDER BY position
LIMIT sqlc.arg(max_rows);

-- name: ChangesState :one
-- ChangesState returns the highest position the purge has deleted, and
-- whether committed changes wait in the queue.
SELECT purged_through, EXISTS (SELECT FROM user_change_queue ORDER BY seq LIMIT 1) AS queued
FROM user_changes_horizon;

-- name: ChangesHead :one
-- ChangesHead returns the position of the newest change, or 0: every
-- change up to it is reflected in what a later read sees.
SELECT coalesce(max(position), 0)::bigint AS head FROM user_changes;

-- name: LockSequencer :exec
-- LockSequencer makes the sequencers of every instance take turns, until
-- the transaction ends: the next one's SequenceChanges sees this one's. Its
-- commit waits for the WAL's flush even where the session's commits do
-- not: a move lost in a crash after a consumer read it would hand its
-- positions to other changes.
SELECT pg_advisory_xact_lock(7306010947012917025),
       set_config('synchronous_commit',
                  CASE WHEN current_setting('synchronous_commit') IN ('off', 'local') THEN 'on'
                       ELSE current_setting('synchronous_commit') END,
                  true);

-- name: SequenceChanges :one
-- SequenceChanges moves every committed change from the queue to the feed,
-- numbered after the feed's newest in the order the trigger queued them,
-- and returns the feed's newest position. Run after LockSequencer, in its
-- transaction.
WITH moved AS (
    DELETE FROM user_change_queue
    RETURNING seq, op, user_id, name, created_at, updated_at, at
),
numbered AS (
    INSERT INTO user_changes (position, op, user_id, name, created_at, updated_at, at)
    SELECT (SELECT coalesce(max(position), 0) FROM user_changes) + row_number() OVER (ORDER BY seq),
           op, user_id, name, created_at, updated_at, at
    FROM moved
    RETURNING position
)
SELECT coalesce((SELECT max(position) FROM numbered), (SELECT max(position) FROM user_changes), 0)::bigint AS head;

-- name: PurgeUserChanges :one
-- PurgeUserChanges deletes up to max_rows of the changes made more than
-- ttl_us microseconds ago, raises the horizon to the highest position
-- deleted, and returns how many went. Changes that another instance is
-- purging are left to it.
WITH purged AS (
    DELETE FROM user_changes
    WHERE position IN (
        SELECT position
        FROM user_changes
        WHERE at < now() - sqlc.arg(ttl_us)::bigint * interval '1 microsecond'
        LIMIT sqlc.arg(max_rows)
        FOR UPDATE SKIP LOCKED
    )
    RETURNING position
),
raised AS (
    UPDATE user_changes_horizon
    SET purged_through = greatest(purged_through, (SELECT max(position) FROM purged))
    WHERE EXISTS (SELECT FROM purged)
)
SELECT count(*) AS purged FROM purged;
