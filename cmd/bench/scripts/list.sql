-- Scenario 2's ceiling: the service's ListUsers query after a random id.
-- max_rows is 51, as the handler asks for a page of 50: one row more tells
-- whether another page follows. Defined with -D: lo, hi, max_rows.
\set after random(:lo, :hi)
SELECT id, name, created_at, updated_at
FROM users
WHERE id > :after::bigint
ORDER BY id
LIMIT :max_rows;
