//! IMAP and POP3 protocol code for the mailbox service: pure parsers,
//! formatters and state machines over bytes, with no I/O.
//!
//! The service reads from the network, feeds bytes in here and writes the
//! bytes that come out. Everything in this crate is total: no input, however
//! malformed or oversized, makes it panic, and every buffer is bounded.
//!
//! - [`line`]: bounded CRLF line splitting (POP3 framing);
//! - [`pop3`]: RFC 1939 commands, the session state machine and message
//!   formatting (byte-stuffing, TOP);
//! - [`imap`]: RFC 3501/9051 command framing with literals, the command
//!   parser, sequence sets, FETCH attributes and response formatting.

pub mod imap;
pub mod line;
pub mod pop3;
