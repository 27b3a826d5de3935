//! The parse error, with the tag when it could be read.

use super::*;

/// A command that could not be parsed; answer with [`ParseError::response`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ParseError {
    /// The tag, when it could be read (tagged BAD), else untagged BAD.
    pub tag: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ParseError {
    /// The BAD response for this error.
    pub fn response(&self) -> Vec<u8> {
        match &self.tag {
            Some(t) => tagged(t, Status::Bad, &self.message),
            None => untagged(&format!("BAD {}", self.message)),
        }
    }
}
