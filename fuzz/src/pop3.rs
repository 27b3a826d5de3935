//! POP3: lines from the stream, the session state machine, and the
//! byte-stuffed RETR/TOP responses.

use tern_mailproto::line::{Line, LineBuffer};
use tern_mailproto::pop3::{self, Action, MessageInfo, Session};
use tern_smtp::{DataOutcome, DataReader};

use crate::{Rng, assert_crlf_lines};

/// The input as a client's lines through a session: every reply is
/// well-formed; RETR and TOP of the input itself (as the stored message)
/// are terminated exactly at their end, and RETR gives back the message.
pub fn session(data: &[u8]) {
    let mut rng = Rng::from_input(data);
    let first = data.first().copied().unwrap_or(0);
    let mut s = Session::new(first & 1 != 0);
    s.offer_stls(first & 2 != 0);
    let mut lines = LineBuffer::new(pop3::MAX_LINE);
    'input: for piece in rng.pieces(data) {
        lines.push(piece);
        while let Some(line) = lines.next_line() {
            let Line::Complete(line) = line else {
                assert_crlf_lines(&Session::line_too_long(), "line too long");
                continue;
            };
            let _ = pop3::parse_command(&line);
            match s.handle_line(&line) {
                Action::Authenticate { .. } if rng.below(2) == 0 => {
                    let listing = vec![MessageInfo {
                        size: data.len() as u64,
                        uid: "1.1".into(),
                    }];
                    assert_crlf_lines(&s.login_ok(listing), "login ok");
                }
                Action::Authenticate { .. } => assert_crlf_lines(&s.login_failed(), "login"),
                Action::Reply(r) | Action::StartTls(r) => assert_crlf_lines(&r, "reply"),
                Action::Retrieve { top, .. } => retrieve(data, top),
                Action::Close(r) => {
                    assert_crlf_lines(&r, "close");
                    break 'input;
                }
                Action::Update { .. } => break 'input,
            }
        }
    }
    retrieve(data, None);
    retrieve(data, Some(u32::from(first)));
}

/// RETR/TOP of `content`: the response ends at its `.CRLF` and nowhere
/// earlier; undoing the stuffing gives the content back (RETR) with its
/// line endings made CRLF.
fn retrieve(content: &[u8], top: Option<u32>) {
    let wire = pop3::format_retrieve(content, top);
    let nl = wire
        .iter()
        .position(|&b| b == b'\n')
        .expect("a status line");
    let body = &wire[nl + 1..];
    let mut reader = DataReader::new(usize::MAX, usize::MAX);
    let (used, outcome) = reader.feed(body);
    assert_eq!(used, body.len(), "the response ends early: {wire:?}");
    let Some(DataOutcome::Complete(got)) = outcome else {
        panic!("the response does not end in .CRLF: {wire:?}");
    };
    let bare_cr = content
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\r' && content.get(i + 1) != Some(&b'\n'));
    if top.is_none() && !bare_cr {
        assert_eq!(got, crlf(content), "RETR round trip via {wire:?}");
    }
}

/// `content` with every line ending CRLF and a final one added.
fn crlf(content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 2);
    for (i, &b) in content.iter().enumerate() {
        if b == b'\n' && (i == 0 || content[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out
}
