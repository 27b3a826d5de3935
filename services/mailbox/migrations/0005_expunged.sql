-- Expunged UIDs per mailbox with the mod-sequence of their expunge (RFC
-- 7162 §3.2 QRESYNC: VANISHED (EARLIER) and VANISHED on reselect).
--
-- Growth is bounded: a mailbox keeps the newest rows (the service keeps
-- 10,000), and when older ones are dropped `expunged_floor` rises to the
-- highest mod-sequence dropped. A client whose mod-sequence is below a
-- mailbox's floor gets every UID it may know that no longer exists instead
-- (allowed by RFC 7162 §3.2.5.2: UIDs it never saw are ignored).

CREATE TABLE expunged (
    mailbox_id BIGINT NOT NULL REFERENCES mailboxes (id) ON DELETE CASCADE,
    uid BIGINT NOT NULL,
    -- The mailbox's highest_modseq given to the expunge.
    modseq BIGINT NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
);

CREATE INDEX expunged_modseq ON expunged (mailbox_id, modseq);

-- Expunges with a mod-sequence up to this one may have been forgotten.
ALTER TABLE mailboxes ADD COLUMN expunged_floor BIGINT NOT NULL DEFAULT 0;
-- Nothing was recorded before this migration.
UPDATE mailboxes SET expunged_floor = highest_modseq;
