-- +goose Up
CREATE TABLE users (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT users_name_key UNIQUE (name),
    CONSTRAINT users_name_length CHECK (char_length(name) BETWEEN 1 AND 100)
);

-- +goose Down
DROP TABLE users;
