//! IMAP extensions end to end, each scenario on SQLite and on PostgreSQL:
//! BINARY (RFC 3516) and literal8 APPEND, LITERAL+ (RFC 7888), IMAP4rev2
//! (RFC 9051) sessions, RENAME INBOX, QRESYNC (RFC 7162 §3.2), and SEARCH
//! over MIME-decoded text. Driven by a byte-exact client
//! (responses may carry NUL octets) and by Python's imaplib.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{DEADLINE, Mailbox, Raw, run};
use tern_testkit::NatsServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// `#[tokio::test]`s running `$scenario` on SQLite and on a throwaway
/// PostgreSQL ([`common::backend_tests`]), with `$extra` config.
/// `on_both_backends!(@run runner, ...)` starts them with `runner`
/// instead of [`with_mailbox`].
macro_rules! on_both_backends {
    (@run $with:ident, $sqlite:ident, $postgres:ident, $scenario:ident, $extra:expr) => {
        common::backend_tests!($sqlite, $postgres, |db| {
            let base: &[(&str, &str)] = $extra;
            $with(&[base, db].concat(), $scenario).await;
        });
    };
    ($sqlite:ident, $postgres:ident, $scenario:ident) => {
        on_both_backends!($sqlite, $postgres, $scenario, &[]);
    };
    ($sqlite:ident, $postgres:ident, $scenario:ident, $extra:expr) => {
        on_both_backends!(@run with_mailbox, $sqlite, $postgres, $scenario, $extra);
    };
}

/// Start NATS and the mailbox (with `extra` config), add
/// `alice@example.com` / `pw`, run `scenario`, stop.
async fn with_mailbox<F>(extra: &[(&str, &str)], scenario: impl FnOnce(SocketAddr) -> F)
where
    F: std::future::Future<Output = ()>,
{
    with_imap_and_pop3(extra, |imap, _| scenario(imap)).await;
}

/// [`with_mailbox`] for scenarios that also use POP3: `scenario(imap, pop3)`.
async fn with_imap_and_pop3<F>(
    extra: &[(&str, &str)],
    scenario: impl FnOnce(SocketAddr, SocketAddr) -> F,
) where
    F: std::future::Future<Output = ()>,
{
    with_delivered(extra, &[], scenario).await;
}

/// [`with_imap_and_pop3`], with `mail` delivered to alice (through the
/// bus, as a job) before the scenario starts.
async fn with_delivered<F>(
    extra: &[(&str, &str)],
    mail: &[&[u8]],
    scenario: impl FnOnce(SocketAddr, SocketAddr) -> F,
) where
    F: std::future::Future<Output = ()>,
{
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = Mailbox::start(dir.path(), &nats.url(), extra).await;
    m.add_user("alice@example.com", "pw").await;
    for (i, body) in mail.iter().enumerate() {
        let r = m
            .deliver(&format!("01JDELIVERED{i}"), &["alice@example.com"], body)
            .await;
        assert_eq!(r.results[0].code, 250, "{r:?}");
    }
    scenario(m.addr("imap"), m.addr("pop3")).await;
    m.stop().await;
}

/// An IMAP client that keeps responses as bytes and reads literals
/// (`{n}` and `~{n}`) by their announced length.
struct Client {
    s: BufReader<TcpStream>,
    n: u32,
}

impl Client {
    /// Connect, read the greeting and log in as alice.
    async fn login(addr: SocketAddr) -> Client {
        let mut c = Client {
            s: BufReader::new(TcpStream::connect(addr).await.unwrap()),
            n: 0,
        };
        let greeting = c.response().await;
        assert!(greeting.starts_with(b"* OK"), "{}", show(&greeting));
        c.ok("LOGIN alice@example.com pw").await;
        c
    }

    async fn send(&mut self, data: &[u8]) {
        self.s.get_mut().write_all(data).await.unwrap();
    }

    /// One response: a line, with any literals it announces and the
    /// lines after them. Empty at EOF.
    async fn response(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let start = out.len();
            let n = tokio::time::timeout(DEADLINE, self.s.read_until(b'\n', &mut out))
                .await
                .expect("a response in time")
                .unwrap();
            if n == 0 {
                return out;
            }
            let line = &out[start..];
            let Some(size) = literal_size(line) else {
                return out;
            };
            let mut data = vec![0; size];
            tokio::time::timeout(DEADLINE, self.s.read_exact(&mut data))
                .await
                .expect("literal data in time")
                .unwrap();
            out.extend_from_slice(&data);
        }
    }

    /// Send `tag command` and read responses through the tagged one.
    async fn cmd(&mut self, command: &str) -> Vec<Vec<u8>> {
        self.n += 1;
        let tag = format!("t{}", self.n);
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until(&tag).await
    }

    /// Responses through the one tagged `tag`.
    async fn until(&mut self, tag: &str) -> Vec<Vec<u8>> {
        let mut all = Vec::new();
        loop {
            let r = self.response().await;
            assert!(!r.is_empty(), "closed; got {}", show_all(&all));
            let done = r.starts_with(format!("{tag} ").as_bytes());
            all.push(r);
            if done {
                return all;
            }
        }
    }

    /// `cmd`, asserting a tagged OK.
    async fn ok(&mut self, command: &str) -> Vec<Vec<u8>> {
        let r = self.cmd(command).await;
        let last = show(r.last().unwrap());
        assert!(
            last.split_whitespace().nth(1) == Some("OK"),
            "{command}: {}",
            show_all(&r)
        );
        r
    }

    /// APPEND `message` to `mailbox` with a synchronizing literal (a
    /// literal8 `~{n}` when `literal8`), waiting for the continuation.
    async fn append(&mut self, mailbox: &str, message: &[u8], literal8: bool) -> Vec<Vec<u8>> {
        self.n += 1;
        let tag = format!("t{}", self.n);
        let eight = if literal8 { "~" } else { "" };
        let line = format!("{tag} APPEND {mailbox} {eight}{{{}}}\r\n", message.len());
        self.send(line.as_bytes()).await;
        let cont = self.response().await;
        assert!(cont.starts_with(b"+"), "{}", show(&cont));
        self.send(message).await;
        self.send(b"\r\n").await;
        self.until(&tag).await
    }
}

/// `{n}` or `~{n}` at the end of a response line.
fn literal_size(line: &[u8]) -> Option<usize> {
    let l = line.strip_suffix(b"\r\n")?.strip_suffix(b"}")?;
    let open = l.iter().rposition(|&b| b == b'{')?;
    std::str::from_utf8(&l[open + 1..]).ok()?.parse().ok()
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn show_all(r: &[Vec<u8>]) -> String {
    r.iter().map(|x| show(x)).collect::<Vec<_>>().join("")
}

/// Does any response contain `needle`?
fn has(r: &[Vec<u8>], needle: &[u8]) -> bool {
    r.iter()
        .any(|x| x.windows(needle.len()).any(|w| w == needle))
}

/// Assert that a response of `r` contains `needle`.
#[track_caller]
fn expect(r: &[Vec<u8>], needle: &[u8]) {
    assert!(has(r, needle), "no {:?} in:\n{}", show(needle), show_all(r));
}

/// Assert that no response of `r` contains `needle`.
#[track_caller]
fn expect_not(r: &[Vec<u8>], needle: &[u8]) {
    assert!(!has(r, needle), "{:?} in:\n{}", show(needle), show_all(r));
}

/// Assert the untagged responses of `r` starting with `prefix`.
#[track_caller]
fn expect_lines(r: &[Vec<u8>], prefix: &str, want: &[&str]) {
    assert_eq!(lines_with(r, prefix), want, "{}", show_all(r));
}

/// Assert that the tagged response of `r` contains `text`.
#[track_caller]
fn expect_tagged(r: &[Vec<u8>], text: &str) {
    assert!(tagged(r).contains(text), "{}", show_all(r));
}

/// The untagged responses of `r` that start with `prefix`, as text.
fn lines_with(r: &[Vec<u8>], prefix: &str) -> Vec<String> {
    r.iter()
        .map(|x| show(x))
        .filter(|l| l.starts_with(prefix))
        .collect()
}

/// The tagged (last) response, as text.
fn tagged(r: &[Vec<u8>]) -> String {
    show(r.last().unwrap())
}

/// Run a Python script with arguments; stdout, or a panic with stderr.
async fn python(script: &'static str, args: Vec<String>) -> String {
    let mut cmd = Command::new("python3");
    cmd.arg("-c").arg(script).args(args);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn py_args(addr: SocketAddr) -> Vec<String> {
    vec![addr.ip().to_string(), addr.port().to_string()]
}

// ------------------------------------------------------------------ BINARY

/// A multipart message: a quoted-printable text part, a base64 part whose
/// decoded octets hold NULs, and a part in an encoding nobody knows.
const MULTIPART: &[u8] = b"From: a@example.com\r\nSubject: parts\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
gr=C3=BC=C3=9Fe, =\r\nsoft break\r\n--b\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n\
AAECAwD/\r\nAA==\r\n--b\r\n\
Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: x-mystery\r\n\r\n\
???\r\n--b--\r\n";

/// A single-part message in the `binary` encoding, NULs and bare CRs in it.
const RAW_BINARY: &[u8] =
    b"Subject: raw\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n\x00\x01\r\x00 tail\xff";

/// imaplib reads BINARY literal8 responses and decodes the base64 part.
const PY_BINARY: &str = r#"
import imaplib, sys
M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=10)
M.login("alice@example.com", "pw")
assert "BINARY" in M.capabilities, M.capabilities
M.select("INBOX")
typ, d = M.fetch("1", "(BINARY.PEEK[2] BINARY.SIZE[1])")
assert typ == "OK", (typ, d)
assert d[0][1] == b"\x00\x01\x02\x03\x00\xff\x00", d
assert b"BINARY.SIZE[1] 19" in d[1], d
typ, d = M.fetch("2", "(BINARY.PEEK[1])")
assert d[0][1] == b"\x00\x01\r\x00 tail\xff", d
M.logout()
print("ok")
"#;

async fn binary_scenario(addr: SocketAddr) {
    let mut c = Client::login(addr).await;
    let caps = c.ok("CAPABILITY").await;
    assert!(has(&caps, b" BINARY"), "{}", show_all(&caps));
    let r = c.append("INBOX", MULTIPART, false).await;
    expect_tagged(&r, "OK [APPENDUID");
    // RFC 3516 §4.4: APPEND takes a literal8; its NULs survive (in base64).
    let r = c.append("INBOX", RAW_BINARY, true).await;
    expect_tagged(&r, "OK [APPENDUID");
    c.ok("SELECT INBOX").await;

    // Quoted-printable undone (soft break joined), as a plain literal.
    let r = c.ok("FETCH 1 (BINARY.PEEK[1])").await;
    expect(&r, "BINARY[1] {19}\r\ngrüße, soft break)".as_bytes());
    // Base64 with NULs: a literal8.
    let r = c.ok("FETCH 1 (BINARY.PEEK[2] BINARY.SIZE[2])").await;
    assert!(
        has(
            &r,
            b"BINARY[2] ~{7}\r\n\x00\x01\x02\x03\x00\xff\x00 BINARY.SIZE[2] 7)"
        ),
        "{}",
        show_all(&r)
    );
    // A partial of the decoded data.
    let r = c.ok("FETCH 1 (BINARY.PEEK[2]<5.10>)").await;
    expect(&r, b"BINARY[2]<5> ~{2}\r\n\xff\x00)");
    // PEEK left \Seen alone; BINARY sets it (and reports the new flags).
    let r = c.ok("FETCH 1 (FLAGS)").await;
    expect_not(&r, b"\\Seen");
    let r = c.ok("FETCH 1 (BINARY[1])").await;
    expect(&r, b"\\Seen");
    // An encoding the server cannot undo (RFC 3516 §4.3): the FETCH
    // fails, and does not set \Seen either.
    let r = c.cmd("FETCH 2,1 (BINARY[3])").await;
    expect_tagged(&r, "NO [UNKNOWN-CTE]");
    let r = c.ok("FETCH 2 (FLAGS)").await;
    expect_not(&r, b"\\Seen");
    let r = c.cmd("FETCH 1 (BINARY.PEEK[3])").await;
    expect_tagged(&r, "NO [UNKNOWN-CTE]");
    let r = c.cmd("UID FETCH 1 (BINARY.SIZE[3])").await;
    expect_tagged(&r, "NO [UNKNOWN-CTE]");
    // BINARY takes part numbers only.
    let r = c.cmd("FETCH 1 (BINARY[1.MIME])").await;
    expect_tagged(&r, " BAD ");

    // The literal8 APPEND's binary part is stored base64 (RFC 3516 §4.4),
    // so BODY[] carries no NUL (RFC 9051 §4.3: not in a literal), and
    // BINARY reads the octets back byte for byte.
    let r = c.ok("FETCH 2 (BODY.PEEK[])").await;
    let stored = b"Subject: raw\r\nContent-Type: application/octet-stream\r\n\
Content-Transfer-Encoding: base64\r\n\r\nAAENACB0YWls/w==\r\n";
    let mut want = format!("BODY[] {{{}}}\r\n", stored.len()).into_bytes();
    want.extend_from_slice(stored);
    expect(&r, &want);
    let r = c.ok("UID FETCH 2 (BINARY.PEEK[1] BINARY.SIZE[])").await;
    expect(&r, b"BINARY[1] ~{10}\r\n\x00\x01\r\x00 tail\xff");
    let size = format!("BINARY.SIZE[] {})", stored.len());
    expect(&r, size.as_bytes());
    c.ok("LOGOUT").await;

    assert_eq!(python(PY_BINARY, py_args(addr)).await.trim(), "ok");
}

on_both_backends!(
    binary_fetch_and_literal8_append,
    binary_fetch_and_literal8_append_on_postgres,
    binary_scenario
);

// ---------------------------------------------------------------- LITERAL+

/// The literal bound for the LITERAL+ scenario.
const SMALL_LIMIT: usize = 65_536;

async fn literal_plus_scenario(addr: SocketAddr) {
    let mut c = Client::login(addr).await;
    let caps = c.ok("CAPABILITY").await;
    assert!(has(&caps, b" LITERAL+ "), "{}", show_all(&caps));
    assert!(!has(&caps, b"LITERAL-"), "{}", show_all(&caps));

    // A non-synchronizing literal far over LITERAL-'s 4096 octets, sent
    // with the rest of the pipeline without waiting for a continuation.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 40_000 {
        big.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    }
    let mut pipeline = format!("p1 APPEND INBOX (\\Seen) {{{}+}}\r\n", big.len()).into_bytes();
    pipeline.extend_from_slice(&big);
    pipeline.extend_from_slice(b"\r\np2 SELECT INBOX\r\n");
    c.send(&pipeline).await;
    let r = c.until("p1").await;
    assert!(
        tagged(&r).starts_with("p1 OK [APPENDUID"),
        "{}",
        show_all(&r)
    );
    let r = c.until("p2").await;
    expect(&r, b"* 1 EXISTS");
    let r = c.ok("FETCH 1 (RFC822.SIZE)").await;
    let size = format!("RFC822.SIZE {}", big.len());
    expect(&r, size.as_bytes());

    // Over the bound: the literal is refused and its data (and a second
    // literal of the same command) consumed, not run as commands (RFC 7888
    // §4); the next command works.
    let inside: &[u8] = b"\r\np9 LOGOUT\r\n";
    let mut over = format!("p3 APPEND INBOX {{{}+}}\r\n", SMALL_LIMIT + 1).into_bytes();
    over.extend(std::iter::repeat_n(b'x', SMALL_LIMIT + 1 - inside.len()));
    over.extend_from_slice(inside);
    over.extend_from_slice(b" {12+}\r\np8 LOGOUT\r\n.\r\np4 NOOP\r\n");
    c.send(&over).await;
    let r = c.until("p3").await;
    assert!(
        tagged(&r).starts_with("p3 BAD [TOOBIG]"),
        "{}",
        show_all(&r)
    );
    let r = c.until("p4").await;
    assert!(tagged(&r).starts_with("p4 OK"), "{}", show_all(&r));
    // Still one message, and the connection is in step.
    let r = c.ok("STATUS INBOX (MESSAGES)").await;
    expect(&r, b"(MESSAGES 1)");

    // A whole command is bounded too: two literals each under the bound
    // but together over literal bound + 128 KiB.
    let each = SMALL_LIMIT;
    let mut cmd = Vec::new();
    cmd.extend_from_slice(b"p5 LOGIN ");
    let mut sent = 0;
    while sent < 4 {
        cmd.extend_from_slice(format!("{{{each}+}}\r\n").as_bytes());
        cmd.extend(std::iter::repeat_n(b'y', each));
        cmd.push(b' ');
        sent += 1;
    }
    cmd.extend_from_slice(b"x\r\np6 NOOP\r\n");
    c.send(&cmd).await;
    let r = c.until("p5").await;
    assert!(tagged(&r).starts_with("p5 BAD"), "{}", show_all(&r));
    let r = c.until("p6").await;
    assert!(tagged(&r).starts_with("p6 OK"), "{}", show_all(&r));
    c.ok("LOGOUT").await;
}

on_both_backends!(
    literal_plus_appends_without_waiting_and_consumes_oversized_literals,
    literal_plus_appends_without_waiting_and_consumes_oversized_literals_on_postgres,
    literal_plus_scenario,
    &[("mailbox_max_message_bytes", "65536")]
);

// --------------------------------------------------------------- IMAP4rev2

/// imaplib: after ENABLE IMAP4rev2, SEARCH answers with ESEARCH.
const PY_REV2: &str = r#"
import imaplib, sys
M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=10)
M.login("alice@example.com", "pw")
assert "IMAP4REV2" in M.capabilities, M.capabilities
typ, d = M.enable("IMAP4rev2")
assert typ == "OK", (typ, d)
assert M.untagged_responses.pop("ENABLED") == [b"IMAP4rev2"], M.untagged_responses
typ, d = M.select("INBOX")
assert typ == "OK" and "RECENT" not in M.untagged_responses, M.untagged_responses
typ, d = M.search(None, "UNDELETED")
assert typ == "OK", (typ, d)
es = M.untagged_responses.pop("ESEARCH")
assert es[0].endswith(b" ALL 1:4"), es
name = "Ma\xdfe/\u53f0\u5317".encode("utf-8")
typ, d = M.status(b'"' + name + b'"', "(MESSAGES DELETED)")
assert typ == "OK" and b"(MESSAGES 0 DELETED 0)" in d[0], d
assert name in d[0], d
M.logout()
print("ok")
"#;

async fn rev2_scenario(addr: SocketAddr) {
    let mut one = Client::login(addr).await;
    let caps = one.ok("CAPABILITY").await;
    assert!(
        has(&caps, b"CAPABILITY IMAP4rev1 IMAP4rev2 ") && has(&caps, b" SEARCHRES "),
        "{}",
        show_all(&caps)
    );
    // IMAP4rev1 names are modified UTF-7 (RFC 3501 §5.1.3); other forms
    // are refused.
    one.ok("CREATE Entw&APw-rfe").await;
    for bad in ["Bad&APw", "\"Gr\u{f6}\u{df}e\"", "&AGE-", "x/&2D0-"] {
        let r = one.cmd(&format!("CREATE {bad}")).await;
        assert!(
            tagged(&r).contains(" NO [CANNOT]"),
            "{bad}: {}",
            show_all(&r)
        );
    }
    for (flags, subject) in [("()", "one"), ("(\\Seen)", "two"), ("(\\Deleted)", "three")] {
        let msg = format!("Subject: {subject}\r\n\r\nbody {subject}\r\n");
        let r = one
            .ok(&format!("APPEND INBOX {flags} {{{}+}}\r\n{msg}", msg.len()))
            .await;
        expect_tagged(&r, "[APPENDUID");
    }
    let r = one.ok("STATUS INBOX (MESSAGES DELETED)").await;
    expect(&r, b"(MESSAGES 3 DELETED 1)");

    let mut two = Client::login(addr).await;
    let r = two.ok("ENABLE IMAP4rev2").await;
    expect(&r, b"* ENABLED IMAP4rev2\r\n");
    // UTF-8 on the wire, modified UTF-7 in storage: both sessions agree.
    let r = two.ok("LIST \"\" \"Entw*\"").await;
    expect_lines(
        &r,
        "* LIST",
        &["* LIST (\\HasNoChildren) \"/\" \"Entwürfe\"\r\n"],
    );
    two.ok("CREATE \"Größe/台北\"").await;
    let r = one.ok("LIST \"\" \"Gr*\"").await;
    expect_lines(
        &r,
        "* LIST",
        &[
            "* LIST (\\HasChildren) \"/\" \"Gr&APYA3w-e\"\r\n",
            "* LIST (\\HasNoChildren) \"/\" \"Gr&APYA3w-e/&U,BTFw-\"\r\n",
        ],
    );
    two.ok("RENAME \"Größe\" \"Maße\"").await;
    let r = one.ok("LIST \"\" \"Ma*\"").await;
    expect(&r, b"\"Ma&AN8-e/&U,BTFw-\"");
    let r = two.ok("STATUS \"Maße/台北\" (MESSAGES DELETED)").await;
    assert!(
        has(
            &r,
            "* STATUS \"Maße/台北\" (MESSAGES 0 DELETED 0)".as_bytes()
        ),
        "{}",
        show_all(&r)
    );
    // Not UTF-8: a BAD, and the session goes on.
    two.send(b"x1 CREATE \"\xff\xfe\"\r\n").await;
    let r = two.until("x1").await;
    assert!(tagged(&r).starts_with("x1 BAD"), "{}", show_all(&r));

    // SELECT: a LIST response and no RECENT (RFC 9051 §6.3.2).
    let r = two.ok("SELECT \"Entwürfe\"").await;
    assert!(
        has(
            &r,
            "* LIST (\\HasNoChildren) \"/\" \"Entwürfe\"\r\n".as_bytes()
        ),
        "{}",
        show_all(&r)
    );
    expect_not(&r, b"RECENT");
    // Selecting another mailbox closes this one: OK [CLOSED] comes first.
    let r = two.ok("SELECT INBOX").await;
    assert!(r[0].starts_with(b"* OK [CLOSED]"), "{}", show_all(&r));
    assert!(
        has(&r, b"* 3 EXISTS") && !has(&r, b"RECENT"),
        "{}",
        show_all(&r)
    );
    // A rev1 session's SELECT is unchanged.
    let r = one.ok("SELECT INBOX").await;
    // (The rev2 session selected it first, so none are recent.)
    assert!(
        has(&r, b"* 0 RECENT") && !has(&r, b"* LIST"),
        "{}",
        show_all(&r)
    );
    let r = one.ok("EXAMINE INBOX").await;
    expect_not(&r, b"[CLOSED]");
    let r = one.ok("SEARCH UNDELETED").await;
    expect(&r, b"* SEARCH 1 2\r\n");

    // SEARCH answers with ESEARCH.
    let r = two.cmd("SEARCH UNDELETED").await;
    let tag = show(r.last().unwrap())
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    let want = format!("* ESEARCH (TAG \"{tag}\") ALL 1:2\r\n");
    expect_lines(&r, "* ESEARCH", &[&want]);
    let r = two.ok("UID SEARCH SUBJECT nothing-matches").await;
    assert!(
        lines_with(&r, "* ESEARCH")[0].ends_with("UID\r\n"),
        "{}",
        show_all(&r)
    );
    // SEARCHRES (RFC 5182): SAVE alone answers nothing, then `$` names it.
    let r = two.ok("SEARCH RETURN (SAVE) DELETED").await;
    assert_eq!(r.len(), 1, "{}", show_all(&r));
    let r = two.ok("FETCH $ (UID FLAGS)").await;
    expect_lines(&r, "* ", &["* 3 FETCH (UID 3 FLAGS (\\Deleted))\r\n"]);
    let r = two.ok("UID SEARCH NOT $").await;
    expect(&r, b" UID ALL 1:2\r\n");
    let r = two.ok("SEARCH RETURN (SAVE MAX COUNT) UNDELETED").await;
    expect(&r, b" MAX 2 COUNT 2\r\n");
    let r = two.ok("UID FETCH $ (UID)").await;
    assert_eq!(lines_with(&r, "* ").len(), 2, "{}", show_all(&r));
    two.ok("SEARCH RETURN (SAVE MIN) UNDELETED").await;
    two.ok("STORE $ +FLAGS.SILENT (\\Flagged)").await;
    let r = two.ok("SEARCH FLAGGED").await;
    expect(&r, b" ALL 1\r\n");
    two.ok("SEARCH RETURN (SAVE) DELETED").await;
    let r = two.ok("UID EXPUNGE $").await;
    expect(&r, b"* 3 EXPUNGE\r\n");
    let r = two.ok("FETCH $ (UID)").await;
    assert_eq!(r.len(), 1, "{}", show_all(&r));
    // A new SELECT forgets the saved result.
    two.ok("SEARCH RETURN (SAVE) ALL").await;
    two.ok("SELECT INBOX").await;
    let r = two.ok("FETCH $ (UID)").await;
    assert_eq!(r.len(), 1, "{}", show_all(&r));

    // Mail from elsewhere: EXISTS without RECENT for rev2, with it for rev1.
    let msg = "Subject: four\r\n\r\nfour\r\n";
    let mut three = Client::login(addr).await;
    three
        .ok(&format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
        .await;
    let r = two.ok("NOOP").await;
    assert!(
        has(&r, b"* 3 EXISTS") && !has(&r, b"RECENT"),
        "{}",
        show_all(&r)
    );
    one.ok("SELECT INBOX").await;
    three
        .ok(&format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
        .await;
    let r = one.ok("NOOP").await;
    assert!(
        has(&r, b"* 4 EXISTS") && has(&r, b"RECENT"),
        "{}",
        show_all(&r)
    );
    for c in [&mut one, &mut two, &mut three] {
        c.ok("LOGOUT").await;
    }
    assert_eq!(python(PY_REV2, py_args(addr)).await.trim(), "ok");
}

on_both_backends!(
    imap4rev2_sessions_use_utf8_names_esearch_and_searchres,
    imap4rev2_sessions_use_utf8_names_esearch_and_searchres_on_postgres,
    rev2_scenario
);

// ------------------------------------------------------------ RENAME INBOX

/// imaplib: RENAME INBOX moves the mail and leaves INBOX there, empty.
const PY_RENAME_INBOX: &str = r#"
import imaplib, sys
M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=10)
M.login("alice@example.com", "pw")
typ, d = M.append("INBOX", None, None, b"Subject: py\r\n\r\nfrom python\r\n")
assert typ == "OK", (typ, d)
typ, d = M.rename("INBOX", "Older")
assert typ == "OK", (typ, d)
typ, d = M.select("INBOX")
assert typ == "OK" and d == [b"0"], (typ, d)
typ, d = M.select("Older")
assert typ == "OK" and d == [b"2"], (typ, d)
typ, d = M.fetch("2", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert d[0][1] == b"Subject: py\r\n\r\n", d
M.logout()
print("ok")
"#;

/// `KEY n` from a STATUS response.
fn status_value(r: &[Vec<u8>], key: &str) -> u64 {
    let line = lines_with(r, "* STATUS").pop().expect("a STATUS response");
    let rest = &line[line.find(&format!("{key} ")).expect(key) + key.len() + 1..];
    rest.split([' ', ')']).next().unwrap().parse().unwrap()
}

async fn rename_inbox_scenario(addr: SocketAddr) {
    let mut c = Client::login(addr).await;
    for (flags, subject) in [("(\\Flagged)", "first"), ("()", "second")] {
        let msg = format!("Subject: {subject}\r\n\r\n{subject} body\r\n");
        c.ok(&format!("APPEND INBOX {flags} {{{}+}}\r\n{msg}", msg.len()))
            .await;
    }
    c.ok("CREATE INBOX/child").await;
    let before = c.ok("STATUS INBOX (UIDVALIDITY UIDNEXT)").await;
    let mut watch = Client::login(addr).await;
    watch.ok("SELECT INBOX").await;

    let r = c.ok("RENAME INBOX \"Old Mail\"").await;
    expect_tagged(&r, "OK");
    // INBOX is still there, empty, with its UIDVALIDITY and UIDNEXT.
    let after = c.ok("STATUS INBOX (MESSAGES UIDVALIDITY UIDNEXT)").await;
    assert_eq!(status_value(&after, "MESSAGES"), 0, "{}", show_all(&after));
    for key in ["UIDVALIDITY", "UIDNEXT"] {
        assert_eq!(
            status_value(&after, key),
            status_value(&before, key),
            "{key}"
        );
    }
    // The new mailbox has the messages, their UIDs and flags.
    let moved = c.ok("STATUS \"Old Mail\" (MESSAGES UIDNEXT)").await;
    assert_eq!(status_value(&moved, "MESSAGES"), 2, "{}", show_all(&moved));
    assert_eq!(status_value(&moved, "UIDNEXT"), 3);
    c.ok("EXAMINE \"Old Mail\"").await;
    let r = c
        .ok("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert!(
        has(&r, b"* 1 FETCH (UID 1 FLAGS (\\Flagged) BODY[HEADER.FIELDS (SUBJECT)] {18}\r\nSubject: first\r\n\r\n)")
            && has(&r, b"* 2 FETCH (UID 2 FLAGS () BODY[HEADER.FIELDS (SUBJECT)] {19}\r\nSubject: second\r\n\r\n)"),
        "{}",
        show_all(&r)
    );
    // A session with INBOX selected sees the messages go.
    let r = watch.ok("NOOP").await;
    expect_lines(&r, "* ", &["* 2 EXPUNGE\r\n", "* 1 EXPUNGE\r\n"]);
    // INBOX's children stay where they were (RFC 3501 §6.3.5).
    let r = c.ok("LIST \"\" \"INBOX*\"").await;
    assert_eq!(lines_with(&r, "* LIST").len(), 2, "{}", show_all(&r));
    expect(&r, b"\"INBOX/child\"");
    // The name is taken now; nothing can be renamed to INBOX.
    let r = c.cmd("RENAME INBOX \"Old Mail\"").await;
    expect_tagged(&r, "NO [ALREADYEXISTS]");
    let r = c.cmd("RENAME Sent INBOX").await;
    expect_tagged(&r, "NO [ALREADYEXISTS]");
    // New mail in INBOX gets a fresh UID: old ones are never reused.
    let msg = "Subject: third\r\n\r\nthird\r\n";
    let r = c
        .ok(&format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
        .await;
    expect_tagged(&r, " 3] APPEND");
    let r = watch.ok("NOOP").await;
    expect(&r, b"* 1 EXISTS");
    let r = watch.ok("UID FETCH 1:* (UID)").await;
    expect_lines(&r, "* ", &["* 1 FETCH (UID 3)\r\n"]);
    c.ok("LOGOUT").await;
    watch.ok("LOGOUT").await;
    assert_eq!(python(PY_RENAME_INBOX, py_args(addr)).await.trim(), "ok");
}

on_both_backends!(
    rename_inbox_moves_its_mail_and_leaves_it_empty,
    rename_inbox_moves_its_mail_and_leaves_it_empty_on_postgres,
    rename_inbox_scenario
);

// ----------------------------------------------------------------- QRESYNC

/// `[KEY n]` from the untagged responses of `r`.
fn code_value(r: &[Vec<u8>], key: &str) -> u64 {
    let all = show_all(r);
    let rest = &all[all.find(&format!("[{key} ")).expect(key) + key.len() + 2..];
    rest.split(']').next().unwrap().parse().unwrap()
}

/// Index of the first response of `r` starting with `prefix`.
fn position(r: &[Vec<u8>], prefix: &str) -> usize {
    r.iter()
        .position(|x| x.starts_with(prefix.as_bytes()))
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{}", show_all(r)))
}

/// A QRESYNC session logged in and enabled.
async fn qresync_client(addr: SocketAddr) -> Client {
    let mut c = Client::login(addr).await;
    let r = c.ok("ENABLE QRESYNC").await;
    expect_lines(&r, "* ENABLED", &["* ENABLED QRESYNC\r\n"]);
    c
}

async fn qresync_scenario(addr: SocketAddr, pop3: SocketAddr) {
    let mut b = Client::login(addr).await;
    for i in 1..=4 {
        let msg = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        b.ok(&format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
            .await;
    }
    // A remembers UIDVALIDITY and HIGHESTMODSEQ, then goes away.
    let mut a = qresync_client(addr).await;
    let r = a.ok("SELECT INBOX").await;
    let (v, h) = (
        code_value(&r, "UIDVALIDITY"),
        code_value(&r, "HIGHESTMODSEQ"),
    );
    a.ok("LOGOUT").await;

    // B: a flag change (h+1), two expunged (\Deleted at h+2, expunge at
    // h+3) and a new message (h+4, UID 5).
    b.ok("SELECT INBOX").await;
    b.ok("STORE 1 +FLAGS.SILENT (\\Flagged)").await;
    b.ok("STORE 2:3 +FLAGS.SILENT (\\Deleted)").await;
    let r = b.ok("EXPUNGE").await;
    expect_lines(&r, "* ", &["* 3 EXPUNGE\r\n", "* 2 EXPUNGE\r\n"]);
    let msg = "Subject: m5\r\n\r\nbody 5\r\n";
    b.ok(&format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
        .await;

    // A comes back: one round trip tells it everything (RFC 7162 §3.2.5).
    let mut a = qresync_client(addr).await;
    let r = a.ok(&format!("SELECT INBOX (QRESYNC ({v} {h}))")).await;
    expect(&r, b"* 3 EXISTS\r\n");
    assert_eq!(code_value(&r, "HIGHESTMODSEQ"), h + 4);
    expect_lines(&r, "* VANISHED", &["* VANISHED (EARLIER) 2:3\r\n"]);
    let fetches = [
        format!("* 1 FETCH (UID 1 FLAGS (\\Flagged) MODSEQ ({}))\r\n", h + 1),
        format!("* 3 FETCH (UID 5 FLAGS () MODSEQ ({}))\r\n", h + 4),
    ];
    let fetches: Vec<&str> = fetches.iter().map(String::as_str).collect();
    assert_eq!(
        lines_with(&r, "* ")
            .into_iter()
            .filter(|l| l.contains(" FETCH "))
            .collect::<Vec<_>>(),
        fetches,
        "{}",
        show_all(&r)
    );
    // After the other untagged data, VANISHED before the FETCHes.
    assert!(position(&r, "* OK [HIGHESTMODSEQ") < position(&r, "* VANISHED"));
    assert!(position(&r, "* VANISHED") < position(&r, "* 1 FETCH"));
    expect_tagged(&r, "OK [READ-WRITE]");

    // Known UIDs limit the report; a reselect says CLOSED first.
    let r = a
        .ok(&format!("SELECT INBOX (QRESYNC ({v} {h} 1:2 (1:2 1:2)))"))
        .await;
    assert_eq!(position(&r, "* OK [CLOSED]"), 0, "{}", show_all(&r));
    expect_lines(&r, "* VANISHED", &["* VANISHED (EARLIER) 2\r\n"]);
    expect_lines(&r, "* 1 FETCH", &[fetches[0]]);
    expect_not(&r, b"* 3 FETCH");
    // Another UIDVALIDITY: no resynchronization, a plain EXAMINE.
    let r = a
        .ok(&format!("EXAMINE INBOX (QRESYNC ({} {h}))", v + 1))
        .await;
    expect_not(&r, b"VANISHED");
    expect_not(&r, b" FETCH ");
    expect_tagged(&r, "OK [READ-ONLY]");
    // Up to date: nothing to report.
    let r = a
        .ok(&format!("SELECT INBOX (QRESYNC ({v} {}))", h + 4))
        .await;
    expect_not(&r, b"VANISHED");
    expect_not(&r, b" FETCH ");

    // Another session's expunge reaches A as VANISHED (§3.2.10), never
    // as EXPUNGE; B itself (no QRESYNC) still gets EXPUNGE.
    b.ok("UID STORE 4 +FLAGS.SILENT (\\Deleted)").await;
    let r = b.ok("UID EXPUNGE 4").await;
    expect_lines(&r, "* ", &["* 2 EXPUNGE\r\n"]);
    let r = a.ok("NOOP").await;
    expect_lines(&r, "* ", &["* VANISHED 4\r\n"]);
    // A's own EXPUNGE: VANISHED, and the new HIGHESTMODSEQ (h+8) in the
    // tagged OK.
    a.ok("UID STORE 1 +FLAGS.SILENT (\\Deleted)").await;
    let r = a.ok("EXPUNGE").await;
    expect_lines(&r, "* ", &["* VANISHED 1\r\n"]);
    expect_tagged(&r, &format!("OK [HIGHESTMODSEQ {}] EXPUNGE", h + 8));

    // UID FETCH ... (CHANGEDSINCE n VANISHED) (§3.2.6).
    let r = a
        .ok(&format!(
            "UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h} VANISHED)"
        ))
        .await;
    let want = format!("* 1 FETCH (UID 5 FLAGS () MODSEQ ({}))\r\n", h + 4);
    expect_lines(&r, "* ", &["* VANISHED (EARLIER) 1:4\r\n", &want]);
    let r = a
        .ok(&format!(
            "UID FETCH 3:* (FLAGS) (CHANGEDSINCE {} VANISHED)",
            h + 4
        ))
        .await;
    expect_lines(&r, "* ", &["* VANISHED (EARLIER) 4\r\n"]);

    // Without ENABLE QRESYNC both are BAD (§3.2.5, §3.2.6).
    let mut d = Client::login(addr).await;
    let r = d.cmd(&format!("SELECT INBOX (QRESYNC ({v} {h}))")).await;
    expect_tagged(&r, "BAD");
    d.ok("SELECT INBOX").await;
    let r = d
        .cmd("UID FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        .await;
    expect_tagged(&r, "BAD");
    let r = d.cmd("FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)").await;
    expect_tagged(&r, "BAD");
    d.ok("LOGOUT").await;

    // A POP3 deletion is an expunge too.
    let mut p = Raw::connect(pop3).await;
    assert!(p.line().await.starts_with("+OK"));
    assert!(p.cmd("USER alice@example.com\r\n").await.starts_with("+OK"));
    assert!(p.cmd("PASS pw\r\n").await.starts_with("+OK"));
    assert!(p.cmd("DELE 1\r\n").await.starts_with("+OK"));
    assert!(p.cmd("QUIT\r\n").await.starts_with("+OK"));
    let r = a.ok("NOOP").await;
    expect_lines(&r, "* ", &["* VANISHED 5\r\n"]);
    let r = a.ok("STATUS INBOX (MESSAGES HIGHESTMODSEQ)").await;
    assert_eq!(status_value(&r, "MESSAGES"), 0);
    assert_eq!(status_value(&r, "HIGHESTMODSEQ"), h + 9);

    // An expunge held back during FETCH (RFC 9051 §7.5.1) while newer
    // MODSEQ data is sent: an untagged HIGHESTMODSEQ from before the
    // expunge comes with it (RFC 7162 §3.2), VANISHED at the next NOOP.
    for i in 6..=7 {
        let msg = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
        b.ok(&format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
            .await;
    }
    let r = a.ok("NOOP").await;
    expect(&r, b"* 2 EXISTS\r\n");
    b.ok("UID STORE 6 +FLAGS.SILENT (\\Deleted)").await;
    b.ok("UID EXPUNGE 6").await;
    b.ok("UID STORE 7 +FLAGS.SILENT (\\Seen)").await;
    let r = a.ok("FETCH 2 (FLAGS)").await;
    // UID 7 arrived while `a` had INBOX selected, so it is \Recent there
    // (RFC 3501 §2.3.2), which FLAGS shows.
    let seen = format!(
        "* 2 FETCH (UID 7 FLAGS (\\Recent \\Seen) MODSEQ ({}))\r\n",
        h + 14
    );
    let held = format!("* OK [HIGHESTMODSEQ {}] expunges pending\r\n", h + 11);
    expect_lines(
        &r,
        "* ",
        &[&seen, &held, "* 2 FETCH (FLAGS (\\Recent \\Seen))\r\n"],
    );
    let r = a.ok("NOOP").await;
    expect_lines(&r, "* ", &["* VANISHED 6\r\n"]);
    a.ok("LOGOUT").await;
    b.ok("LOGOUT").await;
}

on_both_backends!(
    @run with_imap_and_pop3,
    qresync_resynchronizes_in_one_round_trip,
    qresync_resynchronizes_in_one_round_trip_on_postgres,
    qresync_scenario,
    &[]
);

// ------------------------------------------------------ SEARCH, decoded

/// Delivered: an RFC 2047 subject (B and Q words, adjacent) and sender,
/// and a base64 UTF-8 body.
const BASE64_MAIL: &[u8] = b"From: =?ISO-8859-1?Q?Jos=E9_Garc=EDa?= <jose@example.org>\r\n\
To: alice@example.com\r\nSubject: =?UTF-8?B?R3LDvMOfZQ==?= =?UTF-8?Q?_aus_Wien?=\r\n\
MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
RnLDvGhsaW5nc2dyw7zDn2Ugdm9tIEJvZGVuc2VlDQo=\r\n";

/// A raw UTF-8 sender (RFC 6532), a Latin-1 Q subject, and a
/// quoted-printable Latin-1 body with a soft line break.
const QP_MAIL: &str = "From: Zo\u{eb} <zoe@example.org>\r\n\
Subject: =?ISO-8859-1?Q?Caf=E9_cr=E8me?=\r\n\
Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n\
Un caf=E9 et une cr=E8me br=FBl=E9e, s'il vous pla=EEt. Tr=E8s =\r\nbon.\r\n";

/// multipart/alternative (plain text, base64 HTML), a base64 attachment
/// holding a word, and a forwarded message/rfc822 with an encoded subject
/// and a quoted-printable body.
const MIXED_MAIL: &[u8] = b"From: news@example.org\r\nSubject: newsletter\r\n\
Content-Type: multipart/mixed; boundary=\"m\"\r\n\r\n--m\r\n\
Content-Type: multipart/alternative; boundary=\"a\"\r\n\r\n--a\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\r\nSurprise inside\r\n--a\r\n\
Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n\
PHA+w5xiZXJyYXNjaHVuZyE8L3A+DQo=\r\n--a--\r\n--m\r\n\
Content-Type: application/octet-stream; name=z.bin\r\nContent-Transfer-Encoding: base64\r\n\r\n\
emVicmEtYXR0YWNobWVudC13b3JkDQo=\r\n--m\r\n\
Content-Type: message/rfc822\r\n\r\n\
Subject: =?utf-8?q?Fr=C3=BChling?=\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\r\nSch=C3=B6ne Gr=C3=BC=C3=9Fe\r\n--m--\r\n";

/// Plain ASCII look-alikes of the words above.
const PLAIN_MAIL: &[u8] =
    b"From: Jose <jose@example.org>\r\nSubject: Grusse aus Wien\r\n\r\nplain text, cafe creme, zebra\r\n";

/// imaplib: UTF-8 search strings sent as (synchronizing) literals.
const PY_DECODED_SEARCH: &str = r#"
import imaplib, sys
M = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]), timeout=10)
M.login("alice@example.com", "pw")
M.select("INBOX")
def uids(key, text):
    M.literal = text.encode("utf-8")
    typ, d = M.uid("SEARCH", "CHARSET", "UTF-8", key)
    assert typ == "OK", (typ, d)
    return d[0].split()
for key, text, want in [
    ("SUBJECT", "Grüße", [b"1"]),
    ("FROM", "José", [b"1"]),
    ("BODY", "Frühlingsgrüße", [b"1"]),
    ("TEXT", "CRÈME BRÛLÉE", [b"2"]),
    ("BODY", "überraschung", [b"3"]),
    ("TEXT", "zebra-attachment-word", []),
]:
    got = uids(key, text)
    assert got == want, (key, text, got)
M.logout()
print("ok")
"#;

async fn decoded_search_scenario(addr: SocketAddr, _pop3: SocketAddr) {
    let mut c = Client::login(addr).await;
    for m in [QP_MAIL.as_bytes(), MIXED_MAIL, PLAIN_MAIL] {
        let r = c.append("INBOX", m, false).await;
        expect_tagged(&r, "OK [APPENDUID");
    }
    c.ok("SELECT INBOX").await;
    // UID 1 was delivered, 2 to 4 appended. UTF-8 strings go as LITERAL+.
    for (key, text, want) in [
        // Header keys: encoded-words decoded, in the display name too.
        ("SUBJECT", "Grüße", "1"),
        ("SUBJECT", "grüße AUS wien", "1"),
        ("SUBJECT", "aus Wien", "1 4"),
        ("SUBJECT", "UTF-8", ""),
        ("SUBJECT", "café CRÈME", "2"),
        ("FROM", "José", "1"),
        ("FROM", "GARCÍA", "1"),
        ("FROM", "jose@", "1 4"),
        ("FROM", "zoë", "2"),
        ("HEADER Subject", "=?", ""),
        // BODY: base64 and quoted-printable text, charsets converted.
        ("BODY", "frühlingsgrüße", "1"),
        ("BODY", "Bodensee", "1"),
        ("BODY", "RnLDvGhs", ""),
        ("BODY", "crème brûlée", "2"),
        ("BODY", "très bon", "2"),
        ("BODY", "café crème", ""),
        ("TEXT", "café crème", "2"),
        ("BODY", "cafe", "4"),
        // multipart/alternative: the plain and the HTML part.
        ("BODY", "surprise", "3"),
        ("BODY", "<P>ÜBERRASCHUNG", "3"),
        // The forwarded message: its decoded header and body.
        ("BODY", "frühling", "1 3"),
        ("BODY", "schöne grüße", "3"),
        // A word only inside a base64 attachment is not found.
        ("BODY", "zebra-attachment-word", ""),
        ("TEXT", "zebra-attachment-word", ""),
        ("BODY", "emVicmEt", ""),
        ("TEXT", "zebra", "4"),
    ] {
        let cmd = format!(
            "UID SEARCH CHARSET UTF-8 {key} {{{}+}}\r\n{text}",
            text.len()
        );
        let r = c.ok(&cmd).await;
        let line = format!(
            "* SEARCH{}{want}\r\n",
            if want.is_empty() { "" } else { " " }
        );
        assert_eq!(lines_with(&r, "* SEARCH"), [line], "{key} {text}");
    }
    // Decoded keys combine with the others.
    let r = c
        .ok("SEARCH OR BODY Bodensee SUBJECT newsletter NOT FROM zoe")
        .await;
    expect_lines(&r, "* SEARCH", &["* SEARCH 1 3\r\n"]);
    c.ok("LOGOUT").await;

    assert_eq!(python(PY_DECODED_SEARCH, py_args(addr)).await.trim(), "ok");
}

on_both_backends!(
    @run with_base64_mail_delivered,
    search_matches_decoded_text,
    search_matches_decoded_text_on_postgres,
    decoded_search_scenario,
    &[]
);

/// [`with_delivered`] with [`BASE64_MAIL`].
async fn with_base64_mail_delivered<F>(
    extra: &[(&str, &str)],
    scenario: impl FnOnce(SocketAddr, SocketAddr) -> F,
) where
    F: std::future::Future<Output = ()>,
{
    with_delivered(extra, &[BASE64_MAIL], scenario).await;
}

/// What Dovecot's imaptest (`deploy/compliance/imaptest.sh`) found, one
/// assertion per fix.
async fn imaptest_findings_scenario(addr: SocketAddr) {
    let mut c = Client::login(addr).await;
    // RFC 2971 §3.3: 30 field-value pairs of up to 1024 octets each fit
    // one command line (RFC 9051 §4: lines are not limited to 8000).
    let pairs: Vec<String> = (0..30)
        .map(|i| format!("\"k{i}\" \"{}\"", "v".repeat(1024)))
        .collect();
    let r = c.ok(&format!("ID ({})", pairs.join(" "))).await;
    expect(&r, b"* ID ");
    // RFC 3501 §2.3.1.1 / RFC 9051 §2.3.1.1: a re-created name gets a new
    // UIDVALIDITY, even within the same second.
    c.ok("CREATE again").await;
    let first = c.ok("STATUS again (UIDVALIDITY)").await;
    c.ok("DELETE again").await;
    c.ok("CREATE again").await;
    let second = c.ok("STATUS again (UIDVALIDITY)").await;
    assert_ne!(
        status_value(&first, "UIDVALIDITY"),
        status_value(&second, "UIDVALIDITY")
    );
    let msg = "From: user@domain (Real Name)\r\nTo: group: g1@d1.org, g2@d2.org;\r\n\
Cc: <user-cc (comment)@ (comment) domain.org>\r\nContent-Type: message/rfc822\r\n\r\n\
From: sub@domain.org\r\nSubject: submsg\r\n\r\nHello world\r\n";
    c.ok(&format!("APPEND INBOX {{{}+}}\r\n{msg}", msg.len()))
        .await;
    c.ok("SELECT INBOX").await;
    // RFC 3501 §7.4.2 / RFC 9051 §7.5.2: a comment names an address that
    // has no phrase; groups keep their start and end markers.
    let r = c.ok("FETCH 1 ENVELOPE").await;
    expect(
        &r,
        b"((\"Real Name\" NIL \"user\" \"domain\")) ((\"Real Name\" NIL \"user\" \"domain\")) \
((\"Real Name\" NIL \"user\" \"domain\")) ((NIL NIL \"group\" NIL)(NIL NIL \"g1\" \"d1.org\")\
(NIL NIL \"g2\" \"d2.org\")(NIL NIL NIL NIL)) ((NIL NIL \"user-cc\" \"domain.org\"))",
    );
    // RFC 3501 §6.4.5 / RFC 9051 §6.4.5: part 1 of a message/rfc822
    // message is the enclosed message; 1.HEADER is its header.
    let r = c
        .ok("FETCH 1 (BODY.PEEK[1.HEADER] BODY.PEEK[1.TEXT])")
        .await;
    expect(
        &r,
        b"BODY[1.HEADER] {41}\r\nFrom: sub@domain.org\r\nSubject: submsg\r\n\r\n",
    );
    expect(&r, b"BODY[1.TEXT] {13}\r\nHello world\r\n");
    let r = c.ok("FETCH 1 BODY.PEEK[1]").await;
    expect(&r, b"BODY[1] {54}\r\nFrom: sub@domain.org\r\n");
    // RFC 3501 §6.4.4: FROM/CC match the address, comments aside.
    let r = c.ok("SEARCH CC user-cc@domain.org").await;
    expect_lines(&r, "* SEARCH", &["* SEARCH 1\r\n"]);
    // RFC 3501 §6.3.3: CREATE does not subscribe; §6.3.9: `%` stopping
    // above a subscribed mailbox lists that level as \Noselect.
    c.ok("CREATE box/sub/leaf").await;
    c.ok("SUBSCRIBE box/sub/leaf").await;
    let r = c.ok("LSUB \"\" box/%").await;
    expect_lines(&r, "* LSUB", &["* LSUB (\\Noselect) \"/\" \"box/sub\"\r\n"]);
    c.ok("LOGOUT").await;
}

on_both_backends!(
    imaptest_findings,
    imaptest_findings_on_postgres,
    imaptest_findings_scenario
);

// ------------------------------------------------- new keywords and LIST-EXTENDED

/// A keyword new to the mailbox is named in an untagged FLAGS before any
/// FETCH shows it, in the session that set it and in another that sees
/// the change (RFC 9051 §7.3.5; imaptest's "Keyword used without being in
/// FLAGS").
async fn keyword_scenario(addr: SocketAddr) {
    let mut a = Client::login(addr).await;
    let r = a
        .append("INBOX", b"Subject: k\r\n\r\nbody\r\n", false)
        .await;
    expect_tagged(&r, "OK [APPENDUID");
    let r = a.ok("SELECT INBOX").await;
    expect_not(&r, b"$Fresh");
    let mut b = Client::login(addr).await;
    b.ok("SELECT INBOX").await;

    let r = a.ok("STORE 1 +FLAGS ($Fresh)").await;
    let flags = r
        .iter()
        .position(|l| l.starts_with(b"* FLAGS (") && has(std::slice::from_ref(l), b"$Fresh"));
    let fetch = r
        .iter()
        .position(|l| l.starts_with(b"* 1 FETCH") && has(std::slice::from_ref(l), b"$Fresh"));
    assert!(flags.is_some() && flags < fetch, "{}", show_all(&r));
    expect(&r, b"* OK [PERMANENTFLAGS (");
    // The other session learns of the keyword from NOOP, FLAGS first.
    let r = b.ok("NOOP").await;
    let flags = r
        .iter()
        .position(|l| l.starts_with(b"* FLAGS (") && has(std::slice::from_ref(l), b"$Fresh"));
    let fetch = r
        .iter()
        .position(|l| l.starts_with(b"* 1 FETCH") && has(std::slice::from_ref(l), b"$Fresh"));
    assert!(flags.is_some() && flags < fetch, "{}", show_all(&r));
    // Known now: not announced again.
    let r = a.ok("STORE 1 -FLAGS ($Fresh)").await;
    expect_not(&r, b"* FLAGS");
    let r = a.ok("STORE 1 +FLAGS ($Fresh)").await;
    expect_not(&r, b"* FLAGS");
    a.ok("LOGOUT").await;
    b.ok("LOGOUT").await;
}

on_both_backends!(
    new_keywords_are_announced_in_flags,
    new_keywords_are_announced_in_flags_on_postgres,
    keyword_scenario
);

/// RFC 5258: RECURSIVEMATCH alone is BAD; with SUBSCRIBED, a parent of
/// an unmatched subscribed mailbox comes with CHILDINFO; RETURN
/// (SUBSCRIBED) marks subscribed mailboxes.
async fn listext_scenario(addr: SocketAddr) {
    let mut c = Client::login(addr).await;
    for name in ["p", "p/a", "p/a/b", "p/c"] {
        c.ok(&format!("CREATE {name}")).await;
    }
    c.ok("SUBSCRIBE p/a/b").await;
    c.ok("SUBSCRIBE p/c").await;
    let r = c.cmd("LIST (RECURSIVEMATCH) \"\" \"*\"").await;
    expect_tagged(&r, " BAD ");
    let r = c.ok("LIST (SUBSCRIBED RECURSIVEMATCH) \"\" p/%").await;
    expect_lines(
        &r,
        "* LIST",
        &[
            "* LIST (\\HasChildren) \"/\" \"p/a\" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n",
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"p/c\"\r\n",
        ],
    );
    let r = c.ok("LIST \"\" p/% RETURN (CHILDREN SUBSCRIBED)").await;
    expect_lines(
        &r,
        "* LIST",
        &[
            "* LIST (\\HasChildren) \"/\" \"p/a\"\r\n",
            "* LIST (\\HasNoChildren \\Subscribed) \"/\" \"p/c\"\r\n",
        ],
    );
    // A subscription outlives its mailbox (RFC 9051 §6.3.7), listed as
    // \NonExistent by SUBSCRIBED (RFC 5258 §3.1); CREATE brings it back
    // subscribed; UNSUBSCRIBE of the lost name drops it.
    c.ok("DELETE p/c").await;
    let r = c.ok("LIST (SUBSCRIBED) \"\" p/c").await;
    expect_lines(
        &r,
        "* LIST",
        &["* LIST (\\NonExistent \\Subscribed) \"/\" \"p/c\"\r\n"],
    );
    let r = c.ok("LIST \"\" p/c").await;
    expect_lines(&r, "* LIST", &[]);
    c.ok("CREATE p/c").await;
    let r = c.ok("LIST \"\" p/c RETURN (SUBSCRIBED)").await;
    expect_lines(
        &r,
        "* LIST",
        &["* LIST (\\HasNoChildren \\Subscribed) \"/\" \"p/c\"\r\n"],
    );
    c.ok("DELETE p/c").await;
    c.ok("UNSUBSCRIBE p/c").await;
    let r = c.ok("LIST (SUBSCRIBED) \"\" p/c").await;
    expect_lines(&r, "* LIST", &[]);
    c.ok("LOGOUT").await;
}

on_both_backends!(
    list_extended_recursivematch_and_return_subscribed,
    list_extended_recursivematch_and_return_subscribed_on_postgres,
    listext_scenario
);
