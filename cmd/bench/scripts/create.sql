-- Scenario 3's ceiling: the service's CreateUser query with a name no run
-- has used. pgbench computes only numbers, so the name is one: base (unique
-- per pgbench run, far above the seeded names) + a per-client counter *
-- 1000 + the client's number. Variables persist across a client's
-- transactions, so n counts them. Defined with -D: base, n=0.
\set n :n + 1
\set name :base + :n * 1000 + :client_id
INSERT INTO users (name)
VALUES (:name)
RETURNING id, name, created_at, updated_at;
