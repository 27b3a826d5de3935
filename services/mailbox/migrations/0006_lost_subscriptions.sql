-- Subscriptions whose mailbox was deleted. RFC 3501 §6.3.6 / RFC 9051
-- §6.3.7: the server must not drop a name from the subscription list
-- because the mailbox is gone; LIST (SUBSCRIBED) names these with
-- \NonExistent (RFC 5258 §3.1). Subscriptions of existing mailboxes stay
-- on their rows (`mailboxes.subscribed`); CREATE of a name here subscribes
-- the new mailbox and removes the name.
CREATE TABLE lost_subscriptions (
    account_id BIGINT NOT NULL,
    name TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
);
