-- Scenario 1's ceiling: the service's GetUser query (db/users.sql.go) for a
-- random existing id. Defined with -D: lo, hi.
\set id random(:lo, :hi)
SELECT id, name, created_at, updated_at
FROM users
WHERE id = :id;
