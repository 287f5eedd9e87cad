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
-- (keyset pagination: the primary key index serves every page alike).
SELECT id, name, created_at, updated_at
FROM users
WHERE id > sqlc.arg(after)::bigint
ORDER BY id
LIMIT sqlc.arg(max_rows);

-- name: ListUsersByName :many
-- ListUsersByName is ListUsers filtered to one exact name; the unique index
-- on name finds it without scanning the table.
SELECT id, name, created_at, updated_at
FROM users
WHERE name = sqlc.arg(name) AND id > sqlc.arg(after)::bigint
ORDER BY id
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
