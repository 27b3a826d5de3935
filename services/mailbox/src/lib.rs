//! Mailbox service: accounts, storage, IMAP, POP3
