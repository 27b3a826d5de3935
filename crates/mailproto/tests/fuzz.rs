//! A property-style fuzz harness over the IMAP and POP3 parsers and state
//! machines: many pseudo-random inputs (a fixed-seed generator, so failures
//! reproduce) built from random bytes and from mutated valid commands. The
//! property: nothing panics, every command gets an answer, and the IMAP
//! framer never holds more than its limits.

#![allow(clippy::unwrap_used)]

use tern_mailproto::imap::{self, Frame, Framer};
use tern_mailproto::{mime, pop3, utf7};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const IMAP_SEEDS: &[&[u8]] = &[
    b"a1 LOGIN alice pw\r\n",
    b"a2 SELECT INBOX\r\n",
    b"a3 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (FROM SUBJECT)] BODYSTRUCTURE ENVELOPE)\r\n",
    b"a4 FETCH 1,3:5 BODY[1.2.MIME]<0.100>\r\n",
    b"a5 UID STORE 1:* +FLAGS.SILENT (\\Seen $Junk)\r\n",
    b"a6 SEARCH CHARSET UTF-8 OR (FROM \"x\" SINCE 1-Jan-2020) NOT HEADER X-A {3}\r\nabc\r\n",
    b"a7 LIST (SPECIAL-USE) \"\" (* %) RETURN (STATUS (MESSAGES UNSEEN))\r\n",
    b"a8 APPEND Drafts (\\Draft) \"01-Jan-2020 10:00:00 +0100\" {5+}\r\nhello\r\n",
    b"a9 UID MOVE 1:3 Trash\r\n",
    b"b1 AUTHENTICATE PLAIN AGEAYg==\r\n",
    b"b2 STATUS INBOX (MESSAGES UIDNEXT SIZE)\r\n",
    b"b3 RENAME \"a b\" c/d\r\n",
    b"b4 UID EXPUNGE 4:*\r\n",
    b"b5 ID (\"name\" \"x\")\r\n",
    b"b6 FETCH 1:* (BINARY[1.2]<0.10> BINARY.PEEK[] BINARY.SIZE[3])\r\n",
    b"b7 APPEND INBOX ~{6}\r\nab\x00cd\n\r\n",
    b"b8 APPEND INBOX {99+}\r\nshort {3+}\r\nabc\r\nb9 NOOP\r\n",
    b"c1 LOGIN {2+}\r\nab {0+}\r\n\r\n",
    b"c2 UID SEARCH RETURN (SAVE MIN) OR $ UID $ NOT DELETED\r\n",
    b"c3 UID FETCH $ (UID FLAGS)\r\n",
    b"c4 STATUS \"Gr\xc3\xb6\xc3\x9fe/&U,BTFw-\" (DELETED MESSAGES)\r\n",
    b"c5 ENABLE IMAP4rev2 CONDSTORE\r\n",
    b"q1 ENABLE QRESYNC\r\n",
    b"q2 SELECT INBOX (QRESYNC (67890007 90060115194045000 41:211,214:541 (1:3,7 41,43,50:52)))\r\n",
    b"q3 EXAMINE x (CONDSTORE QRESYNC (1 2))\r\n",
    b"q4 UID FETCH 300:* (FLAGS) (CHANGEDSINCE 12 VANISHED)\r\n",
];

const POP3_SEEDS: &[&[u8]] = &[
    b"USER alice\r\n",
    b"PASS a secret\r\n",
    b"AUTH PLAIN AGEAYg==\r\n",
    b"AUTH PLAIN\r\n",
    b"STLS\r\n",
    b"TOP 1 10\r\n",
    b"UIDL\r\n",
    b"LIST 2\r\n",
    b"DELE 1\r\n",
    b"CAPA\r\n",
];

const SPICE: &[u8] = b" (){}[]<>\"\\*%:,.+-~0123456789\r\n\x00\xff";

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len() + 1);
        match rng.below(4) {
            0 if !v.is_empty() => {
                let end = (at + rng.below(8)).min(v.len());
                v.drain(at.min(v.len())..end);
            }
            1 => v.insert(at, SPICE[rng.below(SPICE.len())]),
            2 => v.insert(at, rng.next() as u8),
            _ => {
                let other = IMAP_SEEDS[rng.below(IMAP_SEEDS.len())];
                let cut = rng.below(other.len());
                v.splice(at..at, other[cut..].iter().copied());
            }
        }
    }
    v
}

#[test]
fn imap_parser_and_framer_survive_random_input() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut framer = Framer::with_limits(256, 64, 512);
    for i in 0..40_000 {
        let input: Vec<u8> = if i % 4 == 0 {
            (0..rng.below(80)).map(|_| rng.next() as u8).collect()
        } else {
            let seed = IMAP_SEEDS[rng.below(IMAP_SEEDS.len())];
            mutate(&mut rng, seed)
        };
        // The parser alone, on the whole input.
        match imap::parse_command(&input) {
            Ok(cmd) => assert!(!cmd.tag.is_empty()),
            Err(e) => assert!(!e.response().is_empty()),
        }
        // The framer, fed in random chunks.
        let mut rest = &input[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len());
            framer.push(&rest[..n]);
            rest = &rest[n..];
            while let Some(f) = framer.next_frame() {
                if let Frame::Command(c) = f {
                    assert!(c.len() <= 512 + 256, "framer exceeded its command limit");
                    let _ = imap::parse_command(&c);
                }
            }
        }
    }
}

#[test]
fn pop3_session_survives_random_input() {
    let mut rng = Rng(0x0dd_ba11_cafe_f00d);
    for _ in 0..2_000 {
        let mut s = pop3::Session::new(rng.below(2) == 0);
        s.offer_stls(rng.below(2) == 0);
        for _ in 0..20 {
            let line: Vec<u8> = if rng.below(5) == 0 {
                (0..rng.below(40)).map(|_| rng.next() as u8).collect()
            } else {
                let seed = POP3_SEEDS[rng.below(POP3_SEEDS.len())];
                mutate(&mut rng, seed)
            };
            match s.handle_line(&line) {
                pop3::Action::Authenticate { .. } => {
                    if rng.below(2) == 0 {
                        let listing = (0..rng.below(4))
                            .map(|i| pop3::MessageInfo {
                                size: rng.next() % 1000,
                                uid: format!("1.{i}"),
                            })
                            .collect();
                        assert!(!s.login_ok(listing).is_empty());
                    } else {
                        assert!(!s.login_failed().is_empty());
                    }
                }
                pop3::Action::Close(_) | pop3::Action::Update { .. } => break,
                pop3::Action::Reply(r) | pop3::Action::StartTls(r) => assert!(!r.is_empty()),
                pop3::Action::Retrieve { .. } => {}
            }
        }
    }
}

#[test]
fn mime_survives_random_messages() {
    let mut rng = Rng(42);
    let seed: &[u8] = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\nFrom: \"a\" <b@c>\r\nContent-Type: multipart/alternative; boundary=\"c\"\r\n\r\n--c\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC=x\r\n--c\r\nContent-Transfer-Encoding: x\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc\r\n\r\n?\r\n--c\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\na=3D=\r\nb=Z\r\n--c--\r\n--b--\r\n";
    for _ in 0..5_000 {
        let mut m = seed.to_vec();
        for _ in 0..rng.below(10) {
            let at = rng.below(m.len() + 1);
            if rng.below(2) == 0 && at < m.len() {
                m.remove(at);
            } else {
                m.insert(at, SPICE[rng.below(SPICE.len())]);
            }
        }
        let tree = mime::parse(&m);
        let bs = mime::body_structure(&tree, true);
        assert!(bs.starts_with('('));
        let _ = mime::envelope(tree.header);
        let _ = tree.find(&[1, 1, 1]);
        for path in [vec![], vec![1], vec![1, 1], vec![1, 2], vec![2]] {
            let bin = imap::FetchAttr::Binary {
                path: path.clone(),
                peek: true,
                partial: Some((rng.below(8) as u32, 1 + rng.below(64) as u32)),
            };
            if let Some(Ok(item)) = bin.binary_item(&m) {
                assert!(!imap::fetch_response(1, &[item]).is_empty());
            }
            let _ = imap::FetchAttr::BinarySize { path }.binary_item(&m);
        }
    }
}

#[test]
fn utf7_codec_survives_random_names() {
    let mut rng = Rng(0x07f7_0ddf_00d5);
    const PIECES: &[&str] = &[
        "&", "-", "&-", "A", "P", "w", ",", "+", "/", "ü", "台", "😀", " ", "\u{7f}", "\u{d7ff}",
    ];
    for _ in 0..20_000 {
        let name: String = (0..rng.below(12))
            .map(|_| PIECES[rng.below(PIECES.len())])
            .collect();
        // Any UTF-8 name encodes to a valid form that decodes back.
        let enc = utf7::encode(&name);
        assert!(enc.bytes().all(|b| (0x20..0x7f).contains(&b)), "{enc:?}");
        assert_eq!(utf7::decode(&enc).as_deref(), Ok(name.as_str()), "{enc}");
        // Decoding arbitrary text never panics, and what it accepts
        // re-encodes to the same (canonical) text.
        if let Ok(d) = utf7::decode(&name) {
            assert_eq!(utf7::encode(&d), name);
        }
    }
}
