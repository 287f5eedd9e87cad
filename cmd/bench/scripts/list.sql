-- ListUsers after a random seeded id, with max_rows 51 as the handler asks
-- for a page of 50: the row more tells whether another page follows.
-- Defined with -D: seed.
\set after random(0, :seed - 51)
\set max_rows 51
SELECT id, name, created_at, updated_at,
       (SELECT coalesce(max(position), 0) FROM user_changes)::bigint AS changes_position
FROM users
WHERE id > :after::bigint
ORDER BY id
LIMIT :max_rows;
