-- name: CreateUser :one
-- CreateUser inserts a user. A taken name fails with SQLSTATE 23505.
INSERT INTO users (name)
VALUES ($1)
RETURNING id, name, created_at, updated_at;

-- name: GetUser :one
-- GetUser returns the user with the given id, or pgx.ErrNoRows.
SELECT id, name, created_at, updated_at
FROM users
WHERE id = $1;

-- name: ListUsers :many
-- ListUsers returns up to max_rows users with an id above after, in id order
-- (keyset pagination: the primary key index serves every page alike), each
-- with the position of the change feed that the page reflects.
SELECT id, name, created_at, updated_at,
       (SELECT coalesce(max(position), 0) FROM user_changes)::bigint AS changes_position
FROM users
WHERE id > sqlc.arg(after)::bigint
ORDER BY id
LIMIT sqlc.arg(max_rows);

-- name: ListUsersByName :many
-- ListUsersByName is ListUsers filtered to one exact name; the unique index
-- on name finds it without scanning the table.
SELECT users.id, users.name, users.created_at, users.updated_at,
       (SELECT coalesce(max(position), 0) FROM user_changes)::bigint AS changes_position
FROM users
WHERE users.name = sqlc.arg(name) AND users.id > sqlc.arg(after)::bigint
ORDER BY users.id
LIMIT sqlc.arg(max_rows);

-- name: RenameUser :one
-- RenameUser sets a user's name and returns the user, or pgx.ErrNoRows.
-- updated_at moves forward even if the clock does not. A taken name fails
-- with SQLSTATE 23505.
UPDATE users
SET name = sqlc.arg(name),
    updated_at = greatest(now(), updated_at + interval '1 microsecond')
WHERE id = sqlc.arg(id)
RETURNING id, name, created_at, updated_at;

-- name: DeleteUser :execrows
-- DeleteUser deletes a user and returns how many rows went (0 or 1).
DELETE FROM users
WHERE id = $1;

-- name: CreateUserIdempotently :one
-- CreateUserIdempotently is CreateUser for a request with an Idempotency-Key,
-- in one statement, and so one transaction: a user created and the key's
-- record exist together or not at all. Unless the key is claimed by a
-- statement still running (claimed false: nothing done), it inserts the
-- user, or nothing when the name is taken, and records the outcome: 201
-- with the user, or 400. The advisory lock on lock_id, 64 bits of the key's
-- digest, is that claim, held until the statement ends. Fails with SQLSTATE
-- 23505 on idempotency_keys_pkey, having done nothing, when the key has a
-- record already: GetIdempotencyKey reads it (no lookup first, which would
-- cost every first request for the sake of the rare retry).
WITH claim AS (
    SELECT pg_try_advisory_xact_lock(sqlc.arg(lock_id)::bigint) AS claimed
),
created AS (
    INSERT INTO users (name)
    SELECT sqlc.arg(name)
    FROM claim
    WHERE claim.claimed
    ON CONFLICT (name) DO NOTHING
    RETURNING id, name, created_at, updated_at
),
recorded AS (
    INSERT INTO idempotency_keys (key_digest, request, status, user_id, user_created_at)
    SELECT sqlc.arg(key_digest), sqlc.arg(request),
           CASE WHEN created.id IS NULL THEN 400 ELSE 201 END,
           created.id, created.created_at
    FROM claim LEFT JOIN created ON true
    WHERE claim.claimed
    RETURNING status
)
SELECT claim.claimed,
       recorded.status AS recorded_status,
       created.id, created.name, created.created_at, created.updated_at
FROM claim
LEFT JOIN recorded ON true
LEFT JOIN created ON true;

-- name: RenameUserIf :one
-- RenameUserIf is RenameUser under a request's preconditions, decided and
-- written in one statement under the row's lock: it renames only when the
-- user's updated_at (its ETag) is one of match, or match_any is set (no
-- If-Match, or *), and is none of none_match. Returns pgx.ErrNoRows for a
-- user that does not exist; else renamed, false when a precondition failed
-- and nothing changed, and the user as renamed. A taken name fails with
-- SQLSTATE 23505.
WITH target AS (
    SELECT id, updated_at
    FROM users
    WHERE users.id = sqlc.arg(id)
    FOR UPDATE
),
renamed AS (
    UPDATE users
    SET name = sqlc.arg(name),
        updated_at = greatest(now(), users.updated_at + interval '1 microsecond')
    FROM target
    WHERE users.id = target.id
      -- The preconditions, as in DeleteUserIf.
      AND (sqlc.arg(match_any)::boolean OR target.updated_at = ANY(sqlc.arg(match)::timestamptz[]))
      AND target.updated_at <> ALL(sqlc.arg(none_match)::timestamptz[])
    RETURNING users.id, users.name, users.created_at, users.updated_at
)
SELECT (renamed.id IS NOT NULL)::boolean AS renamed,
       renamed.id, renamed.name, renamed.created_at, renamed.updated_at
FROM target
LEFT JOIN renamed ON true;

-- name: DeleteUserIf :one
-- DeleteUserIf is DeleteUser under a request's preconditions, as
-- RenameUserIf decides them. Returns pgx.ErrNoRows for a user that does not
-- exist; else whether it was deleted, false when a precondition failed and
-- nothing changed.
WITH target AS (
    SELECT id, updated_at
    FROM users
    WHERE users.id = sqlc.arg(id)
    FOR UPDATE
),
deleted AS (
    DELETE FROM users
    USING target
    WHERE users.id = target.id
      -- The preconditions, as in RenameUserIf.
      AND (sqlc.arg(match_any)::boolean OR target.updated_at = ANY(sqlc.arg(match)::timestamptz[]))
      AND target.updated_at <> ALL(sqlc.arg(none_match)::timestamptz[])
    RETURNING users.id
)
SELECT EXISTS (SELECT FROM deleted) AS deleted
FROM target;
