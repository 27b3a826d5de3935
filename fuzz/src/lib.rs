//! Fuzz targets for every parser that reads from the network (issue 19 §3):
//! SMTP commands, sessions and DATA/BDAT framing, PROXY headers, IMAP
//! commands and literals, POP3, MIME as parsed for BODYSTRUCTURE, DSN and
//! ARF reports, DNS answers as the resolver receives them, and the
//! injection API's JSON.
//!
//! Each target is a plain function over one input that panics when an
//! invariant breaks: no parser panics, replies are well-formed, and where
//! a renderer exists, parse → render → parse gives the same value. The same
//! functions run in `cargo test` (`tests/corpus.rs`: the corpus under
//! `fuzz/corpus/<target>/` plus seeded mutations of it) and under AFL++
//! (`fuzz/afl`, built and run by `scripts/fuzz.sh`).

mod bounce;
mod dns;
mod imap;
mod inject;
mod mime;
mod pop3;
mod proxy;
mod smtp;

/// One fuzz target.
pub struct Target {
    /// The name: the corpus is `fuzz/corpus/<name>/`.
    pub name: &'static str,
    /// Runs one input; panics when an invariant breaks.
    pub run: fn(&[u8]),
}

/// Every target, in the order `scripts/fuzz.sh` runs them.
pub const TARGETS: &[Target] = &[
    Target {
        name: "smtp_command",
        run: smtp::command,
    },
    Target {
        name: "smtp_session",
        run: smtp::session,
    },
    Target {
        name: "smtp_data",
        run: smtp::data,
    },
    Target {
        name: "proxy_header",
        run: proxy::header,
    },
    Target {
        name: "imap_command",
        run: imap::command,
    },
    Target {
        name: "imap_framer",
        run: imap::framer,
    },
    Target {
        name: "pop3",
        run: pop3::session,
    },
    Target {
        name: "mime",
        run: mime::structure,
    },
    Target {
        name: "bounce_report",
        run: bounce::report,
    },
    Target {
        name: "inject_request",
        run: inject::request,
    },
    Target {
        name: "dns_answer",
        run: dns::answer,
    },
];

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    TARGETS.iter().find(|t| t.name == name)
}

/// A small deterministic generator seeded from the input itself, so a
/// target cuts one input into the same pieces on every run (AFL++ needs
/// a target to be a function of its input).
pub struct Rng(u64);

impl Rng {
    /// A generator seeded from `data` (FNV-1a).
    pub fn from_input(data: &[u8]) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in data {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        Rng(h | 1)
    }

    /// A generator from a seed (the mutation loop in `tests/corpus.rs`).
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next value (xorshift64*).
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// `data` cut into 1 to 4 pieces of random length, the way reads from
    /// a socket arrive.
    pub fn pieces<'a>(&mut self, data: &'a [u8]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let n = if out.len() == 3 {
                rest.len()
            } else {
                1 + self.below(rest.len())
            };
            out.push(&rest[..n]);
            rest = &rest[n..];
        }
        out
    }
}

/// Panics unless `wire` is one or more well-formed reply lines: each ends
/// in CRLF, with no other CR or LF in it (a client's input echoed into a
/// reply must not start a line of its own).
pub fn assert_crlf_lines(wire: &[u8], what: &str) {
    assert!(
        wire.ends_with(b"\r\n"),
        "{what}: reply without CRLF: {wire:?}"
    );
    for line in wire[..wire.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            !line.contains(&b'\r'),
            "{what}: bare CR in a reply: {wire:?}"
        );
    }
    let crlf = wire.windows(2).filter(|w| w == b"\r\n").count();
    let lf = wire.iter().filter(|&&b| b == b'\n').count();
    assert_eq!(crlf, lf, "{what}: bare LF in a reply: {wire:?}");
}
