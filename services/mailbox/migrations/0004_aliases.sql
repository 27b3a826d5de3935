-- Aliases and per-domain catch-alls: mail to `address` is delivered to the
-- account `account_id`. A catch-all has an empty local part (`@example.com`)
-- and applies only to addresses that are neither an account nor an alias.

CREATE TABLE aliases (
    -- Lower-cased local-part@domain, or @domain for a catch-all.
    address TEXT PRIMARY KEY,
    account_id BIGINT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    created_at_unix_ms BIGINT NOT NULL
);

CREATE INDEX aliases_account ON aliases (account_id);
