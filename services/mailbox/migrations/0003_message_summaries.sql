-- Pre-parsed message summaries, written at delivery, APPEND and COPY, so
-- FETCH ENVELOPE / BODY / BODYSTRUCTURE / header sections and SEARCH by
-- header never read or parse bodies. All BYTEA (blobs in SQLite): a header
-- may hold any octet, and PostgreSQL TEXT refuses NUL.
--
-- Rows stored before this migration have NULLs here; the service fills them
-- from the body on first access (Store::summaries), so no backfill runs at
-- startup.

-- This copy's header block (prefix + the body's header, through the blank line).
ALTER TABLE messages ADD COLUMN header BYTEA;
-- The ENVELOPE value (RFC 3501 §7.4.2), ready to send.
ALTER TABLE messages ADD COLUMN envelope BYTEA;
-- The BODYSTRUCTURE value (with extension data).
ALTER TABLE messages ADD COLUMN body_structure BYTEA;
-- The BODY value (BODYSTRUCTURE without extension data).
ALTER TABLE messages ADD COLUMN body_basic BYTEA;
