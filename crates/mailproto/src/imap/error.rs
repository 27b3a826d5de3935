//! The parse error: what is wrong with a command, and its tag when it could
//! be read. The `Display` of [`ParseErrorKind`] is the text of the BAD
//! response (RFC 9051 §7.1.5).

use super::*;

/// A command that could not be parsed; answer with [`ParseError::response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}")]
pub struct ParseError {
    /// The tag, when it could be read (tagged BAD), else untagged BAD.
    pub tag: Option<String>,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

impl ParseError {
    /// The BAD response for this error.
    pub fn response(&self) -> Vec<u8> {
        let text = self.kind.to_string();
        match &self.tag {
            Some(t) => tagged(t, Status::Bad, &text),
            None => untagged(&format!("BAD {text}")),
        }
    }
}

/// What is wrong with a command. Names in `&'static str` fields are the
/// grammar element concerned ("a space", "sequence set", "search key").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// The line does not start with a valid tag (untagged BAD).
    #[error("missing or invalid tag")]
    MissingTag,
    /// The tag is not followed by a space and a command name.
    #[error("expected a command after the tag")]
    MissingCommand,
    /// A command name this server does not implement.
    #[error("unknown or unsupported command {0}")]
    UnknownCommand(String),
    /// `UID` followed by a command that has no UID form.
    #[error("UID {0} is not supported")]
    UnknownUidCommand(String),
    /// A required element is absent.
    #[error("expected {0}")]
    Expected(&'static str),
    /// Characters left after a complete command.
    #[error("unexpected characters at end of command")]
    TrailingInput,
    /// A number with more digits than its type holds.
    #[error("number out of range")]
    NumberOutOfRange,
    /// A quoted string without its closing quote on the line.
    #[error("unterminated quoted string")]
    UnterminatedQuoted,
    /// A backslash in a quoted string before anything but `"` or `\`.
    #[error("invalid escape in quoted string")]
    InvalidEscape,
    /// A literal announced but its octets not in the command.
    #[error("literal data missing")]
    MissingLiteral,
    /// A string that must be UTF-8 is not.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    /// An element present but malformed.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// A keyword not known in its position.
    #[error("unknown {0}")]
    Unknown(&'static str),
    /// More of an element than the bounds allow.
    #[error("too many {0}")]
    TooMany(&'static str),
    /// Nesting past the bound.
    #[error("{0} nested too deeply")]
    TooDeep(&'static str),
    /// A FETCH attribute this server does not implement.
    #[error("FETCH {0} is not supported")]
    UnsupportedFetch(String),
    /// A body section this server does not implement.
    #[error("section [{0}] is not supported")]
    UnsupportedSection(String),
    /// A `\Flag` that is not one of the system flags.
    #[error("unknown system flag \\{0}")]
    UnknownSystemFlag(String),
    /// SEARCH with a charset other than UTF-8 or US-ASCII (RFC 9051 §6.4.4).
    #[error("[BADCHARSET (UTF-8 US-ASCII)] unsupported charset")]
    BadCharset,
    /// `\*` given as a flag to set.
    #[error("\\* is not a flag")]
    StarFlag,
    /// `\Recent` given to STORE or APPEND (RFC 3501 §2.3.2: server-set only).
    #[error("\\Recent cannot be changed")]
    RecentFlag,
    /// A partial `<n.0>`.
    #[error("partial count must be non-zero")]
    ZeroPartial,
    /// VANISHED without UID FETCH and CHANGEDSINCE (RFC 7162 §3.2.6).
    #[error("VANISHED needs UID FETCH and CHANGEDSINCE")]
    VanishedWithoutChangedSince,
    /// A SEARCH MODSEQ entry type other than priv, shared or all.
    #[error("MODSEQ entry type must be priv, shared or all")]
    ModSeqEntryType,
    /// ENABLE with no capability.
    #[error("ENABLE needs a capability")]
    EnableWithoutCapability,
    /// LIST with RECURSIVEMATCH as its only selection option (RFC 5258 §3).
    #[error("RECURSIVEMATCH needs another selection option")]
    RecursiveMatchAlone,
    /// A mailbox name of zero length.
    #[error("empty mailbox name")]
    EmptyMailbox,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The kind is typed for the caller and its text is the BAD response.
    #[test]
    fn kinds_and_their_responses() {
        let cases: [(&[u8], ParseErrorKind, &[u8]); 4] = [
            (
                b"a1 FROB\r\n",
                ParseErrorKind::UnknownCommand("FROB".into()),
                b"a1 BAD unknown or unsupported command FROB\r\n",
            ),
            (
                b"a2 SELECT\r\n",
                ParseErrorKind::Expected("a space"),
                b"a2 BAD expected a space\r\n",
            ),
            (
                b"a3 STORE 1 FLAGS (\\Recent)\r\n",
                ParseErrorKind::RecentFlag,
                b"a3 BAD \\Recent cannot be changed\r\n",
            ),
            (
                b"* NOOP\r\n",
                ParseErrorKind::MissingTag,
                b"* BAD missing or invalid tag\r\n",
            ),
        ];
        for (input, kind, response) in cases {
            let e = parse_command(input).unwrap_err();
            assert_eq!(e.kind, kind, "{:?}", String::from_utf8_lossy(input));
            assert_eq!(
                String::from_utf8_lossy(&e.response()),
                String::from_utf8_lossy(response)
            );
        }
    }
}
