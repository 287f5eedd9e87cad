-- +goose Up
-- The change feed (GET /users/changes): one row per committed write of a
-- user, written by the trigger below in the write's own transaction.
-- docs/api.md, "The change feed", says why the positions have no gaps.
CREATE TABLE user_changes (
    -- The writing transaction's id, shifted left by 16 bits, plus the
    -- change's rank within it: positions follow transaction-id order.
    position   bigint      NOT NULL,
    op         text        NOT NULL,
    user_id    bigint      NOT NULL,
    -- The user as written; null for a delete.
    name       text,
    created_at timestamptz,
    updated_at timestamptz,
    at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT user_changes_pkey PRIMARY KEY (position),
    CONSTRAINT user_changes_op CHECK (op IN ('create', 'update', 'delete'))
);

-- The purge looks for changes older than CHANGES_RETENTION; as for the
-- idempotency keys, a BRIN index costs an insert next to nothing.
CREATE INDEX user_changes_at ON user_changes USING brin (at) WITH (autosummarize = on);

-- The highest position the purge has deleted: a consumer that asks for
-- the changes after a lower one may have lost some, and must relist.
CREATE TABLE user_changes_horizon (
    purged_through bigint NOT NULL,
    one            boolean NOT NULL DEFAULT true,
    CONSTRAINT user_changes_horizon_pkey PRIMARY KEY (one),
    CONSTRAINT user_changes_horizon_one CHECK (one)
);
INSERT INTO user_changes_horizon (purged_through) VALUES (0);

-- user_changes_bound returns the lowest position that a transaction still
-- running, or one not yet begun, may write: every change below it is
-- committed, or never will be. The feed serves only those.
CREATE FUNCTION user_changes_bound() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE
RETURN pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 16;

-- +goose StatementBegin
CREATE FUNCTION record_user_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    first bigint := pg_current_xact_id()::text::bigint << 16;
    pos   bigint;
BEGIN
    -- The next rank in this transaction's range of 65536 positions.
    SELECT coalesce(max(position) + 1, first) INTO pos
    FROM user_changes
    WHERE position >= first AND position < first + 65536;
    IF pos >= first + 65536 THEN
        RAISE EXCEPTION 'a transaction may change at most 65536 users';
    END IF;
    IF TG_OP = 'DELETE' THEN
        INSERT INTO user_changes (position, op, user_id)
        VALUES (pos, 'delete', OLD.id);
    ELSE
        INSERT INTO user_changes (position, op, user_id, name, created_at, updated_at)
        VALUES (pos, CASE TG_OP WHEN 'INSERT' THEN 'create' ELSE 'update' END,
                NEW.id, NEW.name, NEW.created_at, NEW.updated_at);
    END IF;
    RETURN NULL;
END;
$$;
-- +goose StatementEnd

CREATE TRIGGER users_record_change
AFTER INSERT OR UPDATE OR DELETE ON users
FOR EACH ROW EXECUTE FUNCTION record_user_change();

-- +goose Down
DROP TRIGGER users_record_change ON users;
DROP FUNCTION record_user_change();
DROP FUNCTION user_changes_bound();
DROP TABLE user_changes_horizon;
DROP TABLE user_changes;
