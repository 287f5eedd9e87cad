-- name: GetIdempotencyKey :one
-- GetIdempotencyKey returns the record of the key with the digest, or
-- pgx.ErrNoRows.
SELECT request, status, user_id, user_created_at
FROM idempotency_keys
WHERE key_digest = $1;

-- name: PurgeIdempotencyKeys :execrows
-- PurgeIdempotencyKeys deletes up to max_rows of the idempotency keys
-- recorded more than ttl_us microseconds ago and returns how many went.
-- Keys that another session has locked (another instance purging) are left
-- for later rather than waited for.
DELETE FROM idempotency_keys
WHERE key_digest IN (
    SELECT key_digest
    FROM idempotency_keys
    WHERE created_at < now() - sqlc.arg(ttl_us)::bigint * interval '1 microsecond'
    LIMIT sqlc.arg(max_rows)
    FOR UPDATE SKIP LOCKED
);
