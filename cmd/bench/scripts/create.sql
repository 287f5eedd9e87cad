-- CreateUser with a name no run has used. pgbench computes only numbers, so
-- the name is one: base (per run, far above the seeded names) + a counter
-- of the client's transactions * 1000 + the client's number. Defined with
-- -D: base, n=0.
\set n :n + 1
\set name :base + :n * 1000 + :client_id
INSERT INTO users (name)
VALUES (:name)
RETURNING id, name, created_at, updated_at;
