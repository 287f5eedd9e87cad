-- Scenario 4's ceiling: the service's CreateUser query with a seeded name
-- (lo..hi), which fails on the unique constraint. pgbench 15 aborts a
-- client at such an error, so cmd/bench runs this script's SQL through its
-- own driver (driver.go) instead; the \set line says what it draws.
-- Defined with -D: lo, hi.
\set name random(:lo, :hi)
INSERT INTO users (name)
VALUES (:name)
RETURNING id, name, created_at, updated_at;
