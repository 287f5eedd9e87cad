-- ListChanges (db/user_changes.sql.go) after a random position among the
-- seeded changes, with max_rows 100 as the handler asks for a page of 100.
-- Defined with -D: lo and hi, the range of after that leaves a full page.
\set after random(:lo, :hi)
\set max_rows 100
SELECT position, op, user_id, name, created_at, updated_at, at,
       (SELECT purged_through FROM user_changes_horizon)::bigint AS purged_through,
       EXISTS (SELECT FROM user_change_queue ORDER BY seq LIMIT 1) AS queued
FROM user_changes
WHERE position > :after::bigint
ORDER BY position
LIMIT :max_rows;
