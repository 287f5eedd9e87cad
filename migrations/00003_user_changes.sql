-- +goose Up
-- The change feed (GET /users/changes). A trigger queues one row per write
-- of a user, in the write's own transaction; once the write has committed,
-- the service's sequencer moves it to user_changes and gives it its
-- position. docs/api.md, "The change feed", says why no change is skipped.
CREATE TABLE user_change_queue (
    -- Taken by the trigger after the write holds the row's lock: two writes
    -- of one user take it in their commit order.
    seq        bigint      GENERATED ALWAYS AS IDENTITY,
    op         text        NOT NULL,
    user_id    bigint      NOT NULL,
    -- The user as written; null for a delete.
    name       text,
    created_at timestamptz,
    updated_at timestamptz,
    at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_change_queue_pkey PRIMARY KEY (seq)
);

CREATE TABLE user_changes (
    position   bigint      NOT NULL,
    op         text        NOT NULL,
    user_id    bigint      NOT NULL,
    name       text,
    created_at timestamptz,
    updated_at timestamptz,
    at         timestamptz NOT NULL,
    CONSTRAINT user_changes_pkey PRIMARY KEY (position),
    CONSTRAINT user_changes_op CHECK (op IN ('create', 'update', 'delete'))
);

-- The purge looks for changes older than CHANGES_RETENTION; as for the
-- idempotency keys, a BRIN index costs an insert next to nothing.
CREATE INDEX user_changes_at ON user_changes USING brin (at) WITH (autosummarize = on);

-- The highest position the purge has deleted: a consumer that asks for
-- the changes after a lower one may have lost some, and must relist.
CREATE TABLE user_changes_horizon (
    purged_through bigint  NOT NULL,
    one            boolean NOT NULL DEFAULT true,
    CONSTRAINT user_changes_horizon_pkey PRIMARY KEY (one),
    CONSTRAINT user_changes_horizon_one CHECK (one)
);
INSERT INTO user_changes_horizon (purged_through) VALUES (0);

-- +goose StatementBegin
CREATE FUNCTION queue_user_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO user_change_queue (op, user_id) VALUES ('delete', OLD.id);
    ELSE
        INSERT INTO user_change_queue (op, user_id, name, created_at, updated_at)
        VALUES (CASE TG_OP WHEN 'INSERT' THEN 'create' ELSE 'update' END,
                NEW.id, NEW.name, NEW.created_at, NEW.updated_at);
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER users_queue_change
AFTER INSERT OR UPDATE OR DELETE ON users
FOR EACH ROW EXECUTE FUNCTION queue_user_change();

-- +goose Down
DROP TRIGGER users_queue_change ON users;
DROP FUNCTION queue_user_change();
DROP TABLE user_changes_horizon;
DROP TABLE user_changes;
DROP TABLE user_change_queue;
