//! Property tests for the command parser, the DATA reader and the whole
//! session: random and adversarial input, cut into random pieces. No input
//! may panic, and the SMTP-smuggling vectors may never end a message early.
//!
//! A seeded generator keeps failures reproducible: every failure message
//! names its seed. `TERN_FUZZ_ITERS` (default 3000) sets the number of cases
//! per property, `TERN_FUZZ_SEED` the first seed; `crates/smtp/fuzz.sh` runs
//! many more cases.

use tern_smtp::sasl::base64_encode;
use tern_smtp::{
    Action, AuthDecision, DataOutcome, DataReader, MessageOutcome, RcptDecision, Session,
    SessionConfig, command,
};

/// xorshift64*: small, fast, deterministic.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn pick(&mut self, items: &[&'static [u8]]) -> &'static [u8] {
        items[self.below(items.len())]
    }
}

fn iters() -> u64 {
    std::env::var("TERN_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000)
}

fn first_seed() -> u64 {
    std::env::var("TERN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
}

/// Pieces that make interesting SMTP input.
const TOKENS: &[&[u8]] = &[
    b"EHLO x\r\n",
    b"HELO x\r\n",
    b"MAIL FROM:<a@b.example>",
    b"MAIL FROM:<>",
    b" SIZE=",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b" RET=HDRS",
    b" ENVID=a+2Bb",
    b" AUTH=<>",
    b"RCPT TO:<c@d.example>",
    b"RCPT TO:<Postmaster>",
    b" NOTIFY=SUCCESS,FAILURE",
    b" ORCPT=rfc822;x@y",
    b"DATA\r\n",
    b"BDAT ",
    b"0",
    b"5",
    b"99999999999999999999",
    b" LAST",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
    b"VRFY x\r\n",
    b"HELP\r\n",
    b"STARTTLS\r\n",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b" AGEAc2VjcmV0",
    b"*",
    b"=",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\r",
    b"\0",
    b"\xff\xfe",
    "ü".as_bytes(),
    b"<",
    b">",
    b":",
    b" ",
    b"@",
    b"[IPv6:::1]",
    b"[127.0.0.1]",
    b"\"quoted\\\" x\"",
];

fn random_input(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..rng.below(40) {
        if rng.below(8) == 0 {
            for _ in 0..rng.below(16) {
                out.push(rng.next() as u8);
            }
        } else {
            out.extend_from_slice(rng.pick(TOKENS));
        }
    }
    if rng.below(20) == 0 {
        out.extend(std::iter::repeat_n(b'A', 5000));
    }
    out
}

/// Drive `session` with `input` cut into random pieces, answering every
/// request at random. Returns the deliveries. Panics (with the seed) if the
/// session fails to make progress.
fn drive(session: &mut Session, input: &[u8], rng: &mut Rng, seed: u64) -> Vec<Vec<u8>> {
    let mut delivered = Vec::new();
    let mut pos = 0;
    // Each poll either consumes input, answers a request or returns
    // NeedInput, so this bound is generous.
    let mut budget = 100_000usize;
    loop {
        budget = budget
            .checked_sub(1)
            .unwrap_or_else(|| panic!("seed {seed}: no progress"));
        match session.poll() {
            Action::Reply(r) => {
                let wire = r.to_bytes();
                assert!(wire.ends_with(b"\r\n"), "seed {seed}");
                assert!(wire.len() >= 5, "seed {seed}");
            }
            Action::NeedInput => {
                if pos >= input.len() {
                    return delivered;
                }
                let n = 1 + rng.below(input.len() - pos);
                session.feed(&input[pos..pos + n]);
                pos += n;
            }
            Action::CheckRecipient(_) => session.recipient_checked(if rng.below(2) == 0 {
                RcptDecision::Accept
            } else {
                RcptDecision::Reject(tern_smtp::Reply::new(
                    550,
                    tern_smtp::codes::NO_SUCH_USER,
                    "no",
                ))
            }),
            Action::Deliver(m) => {
                delivered.push(m.body.to_vec());
                session.message_stored(MessageOutcome::Queued { id: "X".into() });
            }
            Action::Authenticate(c) => session.auth_checked(if rng.below(2) == 0 {
                AuthDecision::Accept { user: c.username }
            } else {
                AuthDecision::Reject(tern_smtp::Reply::new(
                    535,
                    tern_smtp::codes::AUTH_INVALID,
                    "no",
                ))
            }),
            Action::StartTls => session.tls_established(),
            Action::Close => return delivered,
        }
    }
}

fn config(rng: &mut Rng) -> SessionConfig {
    let mut c = SessionConfig::new("mx.example");
    c.max_message_size = 1 + rng.below(4096);
    c.max_command_line = 64 + rng.below(1024);
    c.max_data_line = 16 + rng.below(1024);
    c.max_recipients = 1 + rng.below(5);
    c.max_errors = 1 + rng.below(50);
    c.starttls = rng.below(2) == 0;
    c.auth = rng.below(2) == 0;
    c.auth_plaintext = rng.below(2) == 0;
    c.require_auth = rng.below(4) == 0;
    c.require_tls = rng.below(4) == 0;
    c
}

#[test]
fn command_parser_never_panics() {
    let seed0 = first_seed();
    for seed in seed0..seed0 + iters() {
        let mut rng = Rng::new(seed);
        let line = random_input(&mut rng);
        let _ = command::parse(&line);
        // And every prefix, which is what a cut line looks like.
        let cut = rng.below(line.len() + 1);
        let _ = command::parse(&line[..cut]);
    }
}

#[test]
fn session_never_panics_on_random_input() {
    let seed0 = first_seed();
    for seed in seed0..seed0 + iters() {
        let mut rng = Rng::new(seed);
        let cfg = config(&mut rng);
        let mut session = Session::new(cfg, rng.below(2) == 0);
        let input = random_input(&mut rng);
        drive(&mut session, &input, &mut rng, seed);
    }
}

/// Dot-stuff `body` the way a sender must (RFC 5321 §4.5.2): a period at the
/// start of a line (after CRLF, or at the very start) gets another one.
fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut line_start = true;
    let mut prev = 0u8;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = prev == b'\r' && b == b'\n';
        prev = b;
    }
    out
}

#[test]
fn data_unstuffing_round_trips_crlf_bodies() {
    let seed0 = first_seed();
    let pieces: &[&[u8]] = &[b".", b"..", b"a", b" ", b"\r\n", b"From x", b".\r\n", b"\t"];
    for seed in seed0..seed0 + iters() {
        let mut rng = Rng::new(seed);
        // A body of whole CRLF lines, some starting with dots.
        let mut body = Vec::new();
        for _ in 0..rng.below(30) {
            body.extend_from_slice(rng.pick(pieces));
            if rng.below(3) == 0 {
                body.extend_from_slice(b"\r\n");
            }
        }
        if !body.is_empty() && !body.ends_with(b"\r\n") {
            body.extend_from_slice(b"\r\n");
        }
        let mut wire = stuff(&body);
        wire.extend_from_slice(b".\r\nNEXT");
        let mut r = DataReader::new(1 << 20, 1 << 20);
        let mut used = 0;
        let mut outcome = None;
        while outcome.is_none() && used < wire.len() {
            let n = 1 + rng.below(wire.len() - used);
            let (u, o) = r.feed(&wire[used..used + n]);
            used += u;
            outcome = o;
        }
        assert_eq!(
            outcome,
            Some(DataOutcome::Complete(body.clone().into())),
            "seed {seed}: {:?}",
            String::from_utf8_lossy(&wire)
        );
        assert_eq!(&wire[used..], b"NEXT", "seed {seed}");
    }
}

/// The published SMTP-smuggling vectors (SEC Consult, 2023) and their mixes.
const SMUGGLING: &[&[u8]] = &[
    b"\n.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r\n.\r",
    b"\r.\n",
    b"\n.\r",
    b"\r\n.\n",
    b"\r.\r\n",
    b"\n\r.\r\n",
    b"\r\r\n.\r\n",
    b"\n\n.\n\n",
    b".\n",
    b".\r",
    b"\r\n..\r\n",
];

#[test]
fn smuggling_vectors_never_end_a_message_early() {
    let seed0 = first_seed();
    for seed in seed0..seed0 + iters() {
        let mut rng = Rng::new(seed);
        let mut raw = b"Subject: x\r\n\r\n".to_vec();
        for _ in 0..1 + rng.below(6) {
            raw.extend_from_slice(rng.pick(SMUGGLING));
            if rng.below(2) == 0 {
                raw.extend_from_slice(
                    b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<v@y.example>\r\nDATA\r\n",
                );
            }
        }
        raw.extend_from_slice(b"ENDMARK\r\n");
        // A correct sender stuffs "CRLF ." so CRLF.CRLF never appears early.
        let mut input =
            b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&stuff(&raw));
        input.extend_from_slice(b".\r\nNOOP\r\n");
        let mut cfg = SessionConfig::new("mx.example");
        cfg.max_recipients = 10;
        let mut session = Session::new(cfg, false);
        // Accept every recipient, so only a smuggled message could add one.
        let mut delivered = Vec::new();
        let mut pos = 0;
        let mut replies = Vec::new();
        loop {
            match session.poll() {
                Action::NeedInput if pos >= input.len() => break,
                Action::NeedInput => {
                    let n = 1 + rng.below(input.len() - pos);
                    session.feed(&input[pos..pos + n]);
                    pos += n;
                }
                Action::Reply(r) => replies.push(r.code),
                Action::CheckRecipient(_) => session.recipient_checked(RcptDecision::Accept),
                Action::Deliver(m) => {
                    delivered.push(m.body.to_vec());
                    session.message_stored(MessageOutcome::Queued { id: "X".into() });
                }
                other => panic!("seed {seed}: unexpected {other:?}"),
            }
        }
        assert_eq!(delivered.len(), 1, "seed {seed}: exactly one message");
        let body = &delivered[0];
        assert!(
            body.ends_with(b"ENDMARK\r\n"),
            "seed {seed}: the message runs to the real end: {:?}",
            String::from_utf8_lossy(body)
        );
        // Stored bodies only ever have CRLF line endings.
        for (i, &b) in body.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && body[i - 1] == b'\r', "seed {seed}: bare LF stored");
            }
            if b == b'\r' {
                assert_eq!(body.get(i + 1), Some(&b'\n'), "seed {seed}: bare CR stored");
            }
        }
        // greeting, EHLO, MAIL, RCPT, 354, 250 queued, NOOP.
        assert_eq!(replies, [220, 250, 250, 250, 354, 250, 250], "seed {seed}");
    }
}

#[test]
fn bdat_chunks_in_random_pieces_are_stored_as_sent() {
    let seed0 = first_seed();
    for seed in seed0..seed0 + iters() {
        let mut rng = Rng::new(seed);
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n".to_vec();
        let mut expect = Vec::new();
        let chunks = 1 + rng.below(4);
        for i in 0..chunks {
            let mut chunk = Vec::new();
            for _ in 0..rng.below(10) {
                chunk.extend_from_slice(rng.pick(SMUGGLING));
                chunk.extend_from_slice(rng.pick(TOKENS));
            }
            expect.extend_from_slice(&chunk);
            let last = if i + 1 == chunks { " LAST" } else { "" };
            input.extend_from_slice(format!("BDAT {}{last}\r\n", chunk.len()).as_bytes());
            input.extend_from_slice(&chunk);
        }
        input.extend_from_slice(b"NOOP\r\n");
        let mut session = Session::new(SessionConfig::new("mx.example"), false);
        let delivered = drive_accepting(&mut session, &input, &mut rng, seed);
        assert_eq!(delivered, vec![expect], "seed {seed}");
    }
}

fn drive_accepting(session: &mut Session, input: &[u8], rng: &mut Rng, seed: u64) -> Vec<Vec<u8>> {
    let mut delivered = Vec::new();
    let mut pos = 0;
    loop {
        match session.poll() {
            Action::NeedInput if pos >= input.len() => return delivered,
            Action::NeedInput => {
                let n = 1 + rng.below(input.len() - pos);
                session.feed(&input[pos..pos + n]);
                pos += n;
            }
            Action::Reply(r) => assert!(r.code < 400, "seed {seed}: {r}"),
            Action::CheckRecipient(_) => session.recipient_checked(RcptDecision::Accept),
            Action::Deliver(m) => {
                delivered.push(m.body.to_vec());
                session.message_stored(MessageOutcome::Queued { id: "X".into() });
            }
            other => panic!("seed {seed}: unexpected {other:?}"),
        }
    }
}

#[test]
fn sasl_exchanges_in_random_pieces() {
    let seed0 = first_seed();
    for seed in seed0..seed0.saturating_add(iters() / 10) {
        let mut rng = Rng::new(seed);
        let mut cfg = SessionConfig::new("mx.example");
        cfg.auth = true;
        let mut session = Session::new(cfg, true);
        let user = base64_encode(b"u@example.com");
        let pass = base64_encode(b"pw");
        let input = format!("EHLO c\r\nAUTH LOGIN\r\n{user}\r\n{pass}\r\nNOOP\r\n");
        drive(&mut session, input.as_bytes(), &mut rng, seed);
    }
}
