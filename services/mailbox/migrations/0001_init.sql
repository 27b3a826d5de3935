-- One schema for SQLite and PostgreSQL: only BIGINT, TEXT and BYTEA columns
-- (SQLite stores BYTEA values as blobs untouched), and ids are assigned by
-- the service rather than by SERIAL/AUTOINCREMENT, which differ between them.

CREATE TABLE accounts (
    id BIGINT PRIMARY KEY,
    -- Lower-cased local-part@domain.
    address TEXT NOT NULL UNIQUE,
    -- Argon2id PHC string.
    password_hash TEXT NOT NULL,
    created_at_unix_ms BIGINT NOT NULL
);

CREATE TABLE mailboxes (
    id BIGINT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    uidvalidity BIGINT NOT NULL,
    uidnext BIGINT NOT NULL,
    -- Messages with uid > recent_uid have not been seen by any SELECT yet (\Recent).
    recent_uid BIGINT NOT NULL,
    UNIQUE (account_id, name)
);

-- Content-addressed message bodies: one row per distinct body, however many
-- recipients or redeliveries refer to it.
CREATE TABLE bodies (
    -- Lower-case hex SHA-256 of data.
    hash TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    data BYTEA NOT NULL
);

CREATE TABLE messages (
    id BIGINT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid BIGINT NOT NULL,
    -- The Tern message id (ULID) this copy was delivered from.
    message_id TEXT NOT NULL,
    -- Space-separated system flags.
    flags TEXT NOT NULL,
    internal_date_unix_ms BIGINT NOT NULL,
    -- Octets of prefix + body.
    size BIGINT NOT NULL,
    -- Per-copy header lines (Return-Path, Delivered-To) put before the body.
    prefix BYTEA NOT NULL,
    body_hash TEXT NOT NULL REFERENCES bodies (hash),
    UNIQUE (mailbox_id, uid),
    -- Idempotent delivery: a redelivered job never makes a second copy.
    UNIQUE (message_id, account_id)
);

CREATE INDEX messages_body_hash ON messages (body_hash);
