//! IMAP: the command parser and the framer that assembles commands and
//! their literals from the byte stream.

use tern_mailproto::imap::{self, Frame, Framer, Status};

use crate::{Rng, assert_crlf_lines};

/// One whole command: no panic, a parsed command has a tag that is safe to
/// echo, and a refusal is a well-formed BAD response.
pub fn command(data: &[u8]) {
    match imap::parse_command(data) {
        Ok(cmd) => {
            assert!(!cmd.tag.is_empty());
            assert!(
                !cmd.tag.bytes().any(|b| b <= b' ' || b == 0x7f),
                "tag {:?}",
                cmd.tag
            );
            assert_crlf_lines(&imap::tagged(&cmd.tag, Status::Ok, "done"), "tagged OK");
        }
        Err(e) => assert_crlf_lines(&e.response(), "BAD response"),
    }
}

/// Limits small enough that inputs reach them.
const LINE: usize = 128;
const LITERAL: usize = 64;
const COMMAND: usize = 512;

/// The byte stream framed whole and framed in pieces gives the same
/// frames; no command exceeds the limits; every command parses without a
/// panic.
pub fn framer(data: &[u8]) {
    let whole = frames(&[data]);
    let mut rng = Rng::from_input(data);
    let pieces = frames(&rng.pieces(data));
    assert_eq!(whole, pieces, "framing depends on how the input was cut");
    for f in whole {
        if let Frame::Command(c) = f {
            assert!(c.len() <= COMMAND + LINE, "a command over the limit");
            command(&c);
        }
    }
}

fn frames(pieces: &[&[u8]]) -> Vec<Frame> {
    let mut framer = Framer::with_limits(LINE, LITERAL, COMMAND);
    let mut out = Vec::new();
    for p in pieces {
        framer.push(p);
        while let Some(f) = framer.next_frame() {
            out.push(f);
        }
    }
    out
}
