-- Folders beyond INBOX (RFC 6154 special use, subscriptions), per-message
-- mod-sequences (RFC 7162 CONDSTORE; also how sessions notice changes made
-- by other sessions cheaply) and per-account quotas.

-- 1 when subscribed (LSUB), 0 when not.
ALTER TABLE mailboxes ADD COLUMN subscribed BIGINT NOT NULL DEFAULT 1;
-- RFC 6154 attribute (\Sent, \Drafts, \Trash, \Junk, \Archive) or ''.
ALTER TABLE mailboxes ADD COLUMN special_use TEXT NOT NULL DEFAULT '';
-- Bumped by every change to the mailbox (delivery, flags, expunge).
ALTER TABLE mailboxes ADD COLUMN highest_modseq BIGINT NOT NULL DEFAULT 1;

-- The mailbox's highest_modseq when this message last changed.
ALTER TABLE messages ADD COLUMN modseq BIGINT NOT NULL DEFAULT 1;

-- Storage limit in octets; 0 means no limit.
ALTER TABLE accounts ADD COLUMN quota_bytes BIGINT NOT NULL DEFAULT 0;

CREATE INDEX messages_account ON messages (account_id);
