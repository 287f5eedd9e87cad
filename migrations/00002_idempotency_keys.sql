-- +goose Up
-- The outcome of every POST /users that carried an Idempotency-Key, written
-- by the same statement that creates the user (queries/users.sql,
-- CreateUserIdempotently), so that a retry with the key gets the first
-- answer again. serve deletes the keys older than IDEMPOTENCY_TTL.
CREATE TABLE idempotency_keys (
    -- A SHA-256 digest of the client's bearer token (or of its having
    -- none) and the key: whose key, and which.
    key_digest      bytea       NOT NULL,
    -- A digest of the request (method, path and normalized name): the same
    -- key with another request is refused.
    request         bytea       NOT NULL,
    -- 201 with the user created, or 400 when the name was taken.
    status          smallint    NOT NULL,
    user_id         bigint,
    -- The user's created_at, which was its updated_at too when the first
    -- answer showed it.
    user_created_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (key_digest)
);

-- The purge looks for keys older than the TTL. Rows arrive in created_at
-- order, so a BRIN index finds them for almost nothing per insert, where a
-- B-tree would cost every keyed create an index insert.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys USING brin (created_at) WITH (autosummarize = on);

-- +goose Down
DROP TABLE idempotency_keys;
