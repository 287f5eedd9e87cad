-- Scenario 5's ceiling: the service's RenameUser query, a random id of the
-- range scenario 5 uses renamed to a name no run has used (see create.sql).
-- Defined with -D: lo, hi, base, n=0.
\set id random(:lo, :hi)
\set n :n + 1
\set name :base + :n * 1000 + :client_id
UPDATE users
SET name = :name,
    updated_at = greatest(now(), updated_at + interval '1 microsecond')
WHERE id = :id
RETURNING id, name, created_at, updated_at;
