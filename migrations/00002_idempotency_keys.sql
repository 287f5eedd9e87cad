-- +goose Up
-- The outcome of every POST /users that carried an Idempotency-Key, written
-- by the same statement that creates the user (queries/users.sql,
-- CreateUserIdempotently), so that a retry with the key gets the first
-- answer again. serve deletes the keys older than IDEMPOTENCY_TTL.
CREATE TABLE idempotency_keys (
    -- Whose key: a digest of the client's bearer token, empty without one.
    scope           bytea       NOT NULL,
    key             text        NOT NULL,
    -- A digest of the request (method, path and normalized name): the same
    -- key for another request is refused.
    request         bytea       NOT NULL,
    -- 201 with the user created, or 400 when the name was taken.
    status          smallint    NOT NULL,
    user_id         bigint,
    user_created_at timestamptz,
    user_updated_at timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (scope, key),
    CONSTRAINT idempotency_keys_key_length CHECK (octet_length(key) BETWEEN 1 AND 255)
);

-- The purge deletes the oldest keys first, in batches.
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);

-- +goose Down
DROP TABLE idempotency_keys;
