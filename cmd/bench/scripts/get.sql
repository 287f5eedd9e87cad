-- GetUser (db/users.sql.go) for a random seeded user. Defined with -D: seed.
\set id random(1, :seed)
SELECT id, name, created_at, updated_at
FROM users
WHERE id = :id;
