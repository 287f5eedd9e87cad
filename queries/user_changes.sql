-- name: ListChanges :many
-- ListChanges returns up to max_rows changes with a position above after and
-- below user_changes_bound(), oldest first, each with the purge's horizon.
SELECT position, op, user_id, name, created_at, updated_at, at,
       (SELECT purged_through FROM user_changes_horizon)::bigint AS purged_through
FROM user_changes
WHERE position > sqlc.arg(after)::bigint AND position < user_changes_bound()
ORDER BY position
LIMIT sqlc.arg(max_rows);

-- name: ChangesHorizon :one
-- ChangesHorizon returns the highest position the purge has deleted.
SELECT purged_through FROM user_changes_horizon;

-- name: ChangesHead :one
-- ChangesHead returns the position of the newest change the feed serves,
-- or 0.
SELECT coalesce(max(position), 0)::bigint AS head
FROM user_changes
WHERE position < user_changes_bound();

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
