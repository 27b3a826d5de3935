//! IMAP4 (an RFC 3501 / RFC 9051 subset): command framing with literals,
//! the command parser, sequence sets, FETCH attributes and response
//! formatting.
//!
//! The service feeds bytes into a [`Framer`], which yields whole commands
//! (lines plus any literals they carry) or asks for a literal continuation;
//! [`parse_command`] turns a whole command into a [`Command`]. Everything is
//! bounded: lines by [`MAX_LINE`], literals by [`MAX_LITERAL`], whole
//! commands by [`MAX_COMMAND`].

//!
//! One module per concern: [`framing`](self::framing) (lines and
//! literals), the command types, the parser, SEARCH, FETCH rendering and
//! responses. Everything public is re-exported here, so callers name
//! `imap::X` whatever module `X` lives in.

mod command;
mod error;
mod fetch;
mod framing;
mod parser;
mod response;
mod search;

pub use command::*;
pub use error::*;
pub use fetch::*;
pub use framing::*;
pub use parser::*;
pub use response::*;
pub use search::*;

#[cfg(test)]
mod test_util {
    use super::parse_command;

    /// Every input fails to parse.
    #[track_caller]
    pub(super) fn assert_refused(inputs: &[&[u8]]) {
        for bad in inputs {
            assert!(
                parse_command(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
