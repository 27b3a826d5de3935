//! IMAP and POP3 protocol parsing
