-- name: PurgeIdempotencyKeys :execrows
-- PurgeIdempotencyKeys deletes up to max_rows of the idempotency keys
-- recorded more than ttl_us microseconds ago, oldest first, and returns how
-- many went. Keys that another session has locked (another instance
-- purging) are left for later rather than waited for.
DELETE FROM idempotency_keys
WHERE (scope, key) IN (
    SELECT scope, key
    FROM idempotency_keys
    WHERE created_at < now() - sqlc.arg(ttl_us)::bigint * interval '1 microsecond'
    ORDER BY created_at
    LIMIT sqlc.arg(max_rows)
    FOR UPDATE SKIP LOCKED
);
