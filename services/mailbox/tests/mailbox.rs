//! End-to-end tests of the mailbox service: a real nats-server, the service
//! bound on loopback ephemeral ports with a temp data dir, accounts added
//! over gRPC, jobs published on the bus, and mail read back with Python's
//! poplib/imaplib and raw protocol bytes.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use common::{Postgres, Raw};
use futures::StreamExt;
use prost::Message as _;
use tern_mailbox::{Config, Error};
use tern_proto::accounts_client::AccountsClient;
use tern_proto::body_ref::Location;
use tern_proto::{
    AddUserRequest, AuthenticateRequest, BodyRef, CheckRecipientRequest, DeleteUserRequest, Job,
    JobResult, ListUsersRequest, Outcome, Recipient, SetPasswordRequest,
};
use tern_runtime::Shutdown;
use tern_runtime::bus;
use tern_runtime::config::Source;
use tern_testkit::{NatsServer, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

const DEADLINE: Duration = Duration::from_secs(20);

/// A body with the things that trip byte-exactness: a leading dot, an empty
/// line, trailing spaces and 8-bit text.
const BODY: &[u8] = b"From: Sender <sender@remote.test>\r\n\
To: alice@example.com\r\n\
Subject: walking skeleton\r\n\
\r\n\
Hello Alice,\r\n\
.a line that starts with a dot\r\n\
..and two dots\r\n\
\r\n\
trailing spaces   \r\n\
gr\xc3\xbc\xc3\x9fe\r\n\
.\r\n";

struct Harness {
    _nats: NatsServer,
    _dir: tempfile::TempDir,
    shutdown: Shutdown,
    task: Option<JoinHandle<Result<(), Error>>>,
    addrs: HashMap<&'static str, SocketAddr>,
    js: jetstream::Context,
}

impl Harness {
    async fn start() -> Harness {
        Self::start_with(NatsServer::start().await, &[]).await
    }

    async fn start_with(nats: NatsServer, extra: &[(&str, &str)]) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().display().to_string();
        let url = nats.url();
        let mut pairs = vec![
            ("data_dir", data_dir.as_str()),
            ("nats_url", url.as_str()),
            ("hostname", "mx.test"),
            ("local_domains", "example.com,example.org"),
            ("imap_listen", "127.0.0.1:0"),
            ("imaps_listen", "127.0.0.1:0"),
            ("pop3_listen", "127.0.0.1:0"),
            ("pop3s_listen", "127.0.0.1:0"),
            ("mailbox_grpc_listen", "127.0.0.1:0"),
            ("mailbox_admin_listen", "127.0.0.1:0"),
            ("shutdown_grace", "5s"),
        ];
        pairs.extend_from_slice(extra);
        let src = Source::from_pairs(pairs);
        let config = Config::from_source(&src).unwrap();
        src.finish().expect("every key is known");
        let bound = tern_mailbox::bind(config).await.unwrap();
        let addrs: HashMap<_, _> = bound.addrs().into_iter().collect();
        for name in [
            "imap",
            "imaps",
            "pop3",
            "pop3s",
            "mailbox grpc",
            "mailbox admin",
        ] {
            assert!(addrs.contains_key(name), "missing {name} in {addrs:?}");
        }
        let shutdown = Shutdown::new();
        let task = tokio::spawn(bound.run(shutdown.clone()));
        let admin = addrs["mailbox admin"];
        wait_for("mailbox /readyz", DEADLINE, || async move {
            (http_get(admin, "/readyz").await.as_deref() == Some("200")).then_some(())
        })
        .await;
        let client = async_nats::connect(&url).await.unwrap();
        Harness {
            _nats: nats,
            _dir: dir,
            shutdown,
            task: Some(task),
            addrs,
            js: jetstream::new(client),
        }
    }

    fn addr(&self, name: &str) -> SocketAddr {
        self.addrs[name]
    }

    async fn accounts(&self) -> AccountsClient<tonic::transport::Channel> {
        AccountsClient::connect(format!("http://{}", self.addr("mailbox grpc")))
            .await
            .unwrap()
    }

    async fn add_user(&self, address: &str, password: &str) {
        self.accounts()
            .await
            .add_user(AddUserRequest {
                address: address.into(),
                password: password.into(),
            })
            .await
            .unwrap();
    }

    /// Publish a local job with an inline body.
    async fn publish_job(&self, message_id: &str, attempt: u32, rcpts: &[&str], body: &[u8]) {
        let job = Job {
            job_id: format!("{message_id}/local"),
            message_id: message_id.into(),
            mail_from: "sender@remote.test".into(),
            rcpts: rcpts
                .iter()
                .map(|r| Recipient {
                    address: (*r).into(),
                    ..Default::default()
                })
                .collect(),
            destination: "local".into(),
            body: Some(BodyRef {
                location: Some(Location::Inline(body.to_vec().into())),
                size: body.len() as u64,
            }),
            attempt,
            received_at_unix_ms: 1_700_000_000_000,
            ..Default::default()
        };
        self.js
            .publish(bus::LOCAL_JOBS_SUBJECT, job.encode_to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// A consumer of local results (the queue's role in production).
    async fn results(&self) -> jetstream::consumer::pull::Stream {
        let consumer = bus::pull_consumer(
            &self.js,
            bus::RESULTS_STREAM,
            "test-results",
            &bus::results_subject("local"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        consumer.messages().await.unwrap()
    }

    async fn stop(mut self) {
        self.shutdown.trigger();
        let task = self.task.take().unwrap();
        let r = tokio::time::timeout(DEADLINE, task)
            .await
            .expect("run returns after shutdown");
        r.unwrap().unwrap();
    }
}

/// The next result, acked, with its message id header.
async fn next_result(stream: &mut jetstream::consumer::pull::Stream) -> (JobResult, String) {
    let msg = tokio::time::timeout(DEADLINE, stream.next())
        .await
        .expect("a job result in time")
        .unwrap()
        .unwrap();
    msg.ack().await.unwrap();
    let id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
        .map(|v| v.to_string())
        .unwrap_or_default();
    (JobResult::decode(msg.payload.clone()).unwrap(), id)
}

/// Status code of a plain HTTP/1.0 GET, or None if unreachable.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    out.split_whitespace().nth(1).map(str::to_string)
}

/// Run a Python script with arguments; returns stdout, panicking with
/// stderr on a non-zero exit.
async fn python(script: &'static str, args: Vec<String>) -> Vec<u8> {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(&args)
            .output()
            .expect("run python3");
        assert!(
            out.status.success(),
            "python failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    })
    .await
    .unwrap()
}

fn expected_copy(rcpt: &str, body: &[u8]) -> Vec<u8> {
    let mut v =
        format!("Return-Path: <sender@remote.test>\r\nDelivered-To: {rcpt}\r\n").into_bytes();
    v.extend_from_slice(body);
    v
}

/// poplib: log in, print "count size" on stderr-free stdout line 1, then RETR 1 raw.
const POP3_RETR: &str = r#"
import poplib, sys
host, port, user, pw, tls = sys.argv[1:6]
if tls == "1":
    import ssl
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    p = poplib.POP3_SSL(host, int(port), context=ctx, timeout=10)
else:
    p = poplib.POP3(host, int(port), timeout=10)
assert p.getwelcome().startswith(b"+OK"), p.getwelcome()
p.user(user)
p.pass_(pw)
count, size = p.stat()
out = sys.stdout.buffer
out.write(b"%d %d\n" % (count, size))
if count:
    resp, lines, octets = p.retr(1)
    assert resp.startswith(b"+OK"), resp
    uid = p.uidl(1).split()[2]
    out.write(b"uid " + uid + b"\n")
    out.write(b"\r\n".join(lines) + b"\r\n")
p.quit()
"#;

/// imaplib: log in, SELECT, check PEEK does not set \Seen and BODY[] does,
/// then print the BODY.PEEK[] bytes.
const IMAP_READ: &str = r#"
import imaplib, sys, re
host, port, user, pw, tls = sys.argv[1:6]
if tls == "1":
    import ssl
    ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    M = imaplib.IMAP4_SSL(host, int(port), ssl_context=ctx, timeout=10)
else:
    M = imaplib.IMAP4(host, int(port), timeout=10)
typ, _ = M.login(user, pw)
assert typ == "OK"
typ, data = M.select("INBOX")
assert typ == "OK" and data == [b"1"], (typ, data)
assert M.untagged_responses.get("UIDVALIDITY"), M.untagged_responses
assert M.untagged_responses.get("UIDNEXT") == [b"2"], M.untagged_responses
assert M.untagged_responses.get("RECENT") == [b"1"], M.untagged_responses
typ, d = M.fetch("1", "(FLAGS)")
assert typ == "OK" and b"\\Seen" not in d[0], d
typ, d = M.fetch("1", "(RFC822.SIZE BODY.PEEK[])")
assert typ == "OK", d
peek = d[0][1]
size = int(re.search(rb"RFC822.SIZE (\d+)", d[0][0]).group(1))
assert size == len(peek), (size, len(peek))
typ, d = M.fetch("1", "(FLAGS)")
assert b"\\Seen" not in d[0], d
typ, d = M.uid("FETCH", "1:*", "(BODY[])")
assert typ == "OK" and b"UID 1" in d[0][0], d
assert d[0][1] == peek
typ, d = M.fetch("1", "(FLAGS)")
assert b"\\Seen" in d[0], d
typ, d = M.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
assert d[0][1] == b"Subject: walking skeleton\r\n\r\n", d
typ, d = M.uid("FETCH", "99:*", "(UID)")
assert typ == "OK"
M.logout()
sys.stdout.buffer.write(peek)
"#;

fn args(addr: SocketAddr, user: &str, pw: &str, tls: bool) -> Vec<String> {
    vec![
        addr.ip().to_string(),
        addr.port().to_string(),
        user.to_string(),
        pw.to_string(),
        if tls { "1" } else { "0" }.to_string(),
    ]
}

#[tokio::test]
async fn delivers_once_and_reads_back_over_pop3_and_imap() {
    let h = Harness::start().await;
    assert!(
        h._dir.path().join("mailbox.db").exists(),
        "default SQLite file in the data dir"
    );
    h.add_user("Alice@Example.com", "s3cret pass").await;
    let mut results = h.results().await;

    h.publish_job(
        "01JTEST0000000000000000001",
        0,
        &["alice@example.com", "nobody@example.com"],
        BODY,
    )
    .await;
    let (r, id) = next_result(&mut results).await;
    assert_eq!(id, "01JTEST0000000000000000001/local/0");
    assert_eq!(r.job_id, "01JTEST0000000000000000001/local");
    assert_eq!(r.destination, "local");
    assert_eq!(r.results.len(), 2);
    assert_eq!(r.results[0].address, "alice@example.com");
    assert_eq!(r.results[0].outcome(), Outcome::Delivered);
    assert_eq!(r.results[0].code, 250);
    assert_eq!(r.results[1].outcome(), Outcome::Bounced);
    assert_eq!(
        (r.results[1].code, r.results[1].enhanced.as_str()),
        (550, "5.1.1")
    );

    let expected = expected_copy("alice@example.com", BODY);

    // POP3 (poplib un-stuffs the dot lines; the message must be byte-identical).
    let out = python(
        POP3_RETR,
        args(h.addr("pop3"), "alice@example.com", "s3cret pass", false),
    )
    .await;
    let mut parts = out.splitn(3, |&b| b == b'\n');
    let stat = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
    assert_eq!(stat, format!("1 {}", expected.len()));
    let uid_line = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
    assert!(
        uid_line.starts_with("uid ") && uid_line.ends_with(".1"),
        "{uid_line}"
    );
    assert_eq!(parts.next().unwrap(), expected.as_slice());

    // IMAP.
    let peek = python(
        IMAP_READ,
        args(h.addr("imap"), "ALICE@example.com", "s3cret pass", false),
    )
    .await;
    assert_eq!(peek, expected);

    // Redelivery (same message id, even as a new attempt) never makes a second copy.
    h.publish_job(
        "01JTEST0000000000000000001",
        1,
        &["alice@example.com"],
        BODY,
    )
    .await;
    let (r, id) = next_result(&mut results).await;
    assert_eq!(id, "01JTEST0000000000000000001/local/1");
    assert_eq!(r.results[0].outcome(), Outcome::Delivered);
    let out = python(
        POP3_RETR,
        args(h.addr("pop3"), "alice@example.com", "s3cret pass", false),
    )
    .await;
    assert!(out.starts_with(format!("1 {}\n", expected.len()).as_bytes()));

    // Metrics are exported.
    let metrics = http_body(h.addr("mailbox admin"), "/metrics").await;
    assert!(
        metrics.contains("tern_mailbox_deliveries_total{outcome=\"delivered\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tern_mailbox_deliveries_total{outcome=\"bounced\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tern_mailbox_sessions_total{protocol=\"pop3\"}"),
        "{metrics}"
    );
    h.stop().await;
}

async fn http_body(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn tls_ports_serve_pop3_and_imap() {
    let h = Harness::start().await;
    h.add_user("alice@example.com", "pw").await;
    let mut results = h.results().await;
    h.publish_job("01JTLS", 0, &["alice@example.com"], BODY)
        .await;
    next_result(&mut results).await;
    let expected = expected_copy("alice@example.com", BODY);
    let out = python(
        POP3_RETR,
        args(h.addr("pop3s"), "alice@example.com", "pw", true),
    )
    .await;
    assert!(out.ends_with(&expected));
    let peek = python(
        IMAP_READ,
        args(h.addr("imaps"), "alice@example.com", "pw", true),
    )
    .await;
    assert_eq!(peek, expected);
    h.stop().await;
}

#[tokio::test]
async fn wrong_password_is_rejected() {
    let h = Harness::start().await;
    h.add_user("alice@example.com", "right").await;

    let mut pop = Raw::connect(h.addr("pop3")).await;
    assert!(pop.line().await.starts_with("+OK"));
    assert!(
        pop.cmd("USER alice@example.com\r\n")
            .await
            .starts_with("+OK")
    );
    assert!(pop.cmd("PASS wrong\r\n").await.starts_with("-ERR [AUTH]"));
    assert!(pop.cmd("STAT\r\n").await.starts_with("-ERR"));
    assert!(
        pop.cmd("USER nobody@example.com\r\n")
            .await
            .starts_with("+OK")
    );
    assert!(pop.cmd("PASS right\r\n").await.starts_with("-ERR [AUTH]"));
    assert!(
        pop.cmd("USER alice@example.com\r\n")
            .await
            .starts_with("+OK")
    );
    assert!(pop.cmd("PASS right\r\n").await.starts_with("+OK"));
    assert!(pop.cmd("QUIT\r\n").await.starts_with("+OK"));

    let mut imap = Raw::connect(h.addr("imap")).await;
    assert!(imap.line().await.starts_with("* OK [CAPABILITY IMAP4rev1"));
    let r = imap.cmd("a1 LOGIN alice@example.com wrong\r\n").await;
    assert!(r.starts_with("a1 NO [AUTHENTICATIONFAILED]"), "{r}");
    assert!(imap.cmd("a2 SELECT INBOX\r\n").await.starts_with("a2 BAD"));
    assert!(
        imap.cmd("a3 LOGIN alice@example.com right\r\n")
            .await
            .starts_with("a3 OK")
    );
    imap.send(b"a4 LOGOUT\r\n").await;
    imap.until("a4 OK").await;

    // Python's clients see the same.
    let err = tokio::task::spawn_blocking({
        let a = h.addr("pop3");
        move || {
            Command::new("python3")
                .args([
                    "-c",
                    "import poplib,sys\np=poplib.POP3(sys.argv[1],int(sys.argv[2]))\np.user('alice@example.com')\ntry:\n  p.pass_('nope')\nexcept poplib.error_proto as e:\n  print(e)",
                    &a.ip().to_string(),
                    &a.port().to_string(),
                ])
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&err.stdout).contains("-ERR"),
        "{err:?}"
    );

    let ok = h
        .accounts()
        .await
        .authenticate(AuthenticateRequest {
            username: "alice@example.com".into(),
            password: "wrong".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.ok);
    h.stop().await;
}

#[tokio::test]
async fn pop3_dele_is_applied_only_on_quit() {
    let h = Harness::start().await;
    h.add_user("bob@example.org", "pw").await;
    let mut results = h.results().await;
    h.publish_job(
        "01JDELE1",
        0,
        &["bob@example.org"],
        b"Subject: one\r\n\r\n1\r\n",
    )
    .await;
    next_result(&mut results).await;
    h.publish_job(
        "01JDELE2",
        0,
        &["bob@example.org"],
        b"Subject: two\r\n\r\n2\r\n",
    )
    .await;
    next_result(&mut results).await;

    let login = |addr| async move {
        let mut p = Raw::connect(addr).await;
        assert!(p.line().await.starts_with("+OK"));
        assert!(p.cmd("USER bob@example.org\r\n").await.starts_with("+OK"));
        let r = p.cmd("PASS pw\r\n").await;
        (p, r)
    };

    // DELE without QUIT: nothing is removed.
    let (mut p, r) = login(h.addr("pop3")).await;
    assert!(r.starts_with("+OK maildrop has 2 messages"), "{r}");
    assert!(p.cmd("DELE 1\r\n").await.starts_with("+OK"));
    drop(p);

    let (mut p, r) = login(h.addr("pop3")).await;
    assert!(r.starts_with("+OK maildrop has 2 messages"), "{r}");
    p.send(b"LIST\r\n").await;
    assert_eq!(p.until(".").await.len(), 4);
    p.send(b"TOP 2 0\r\n").await;
    let top = p.until(".").await;
    assert!(top.contains(&"Subject: two\r\n".to_string()), "{top:?}");
    assert!(!top.contains(&"2\r\n".to_string()), "{top:?}");
    assert!(p.cmd("DELE 1\r\n").await.starts_with("+OK"));
    assert!(p.cmd("RETR 1\r\n").await.starts_with("-ERR"));
    let second = expected_copy("bob@example.org", b"Subject: two\r\n\r\n2\r\n");
    assert_eq!(
        p.cmd("STAT\r\n").await,
        format!("+OK 1 {}\r\n", second.len())
    );
    assert!(p.cmd("QUIT\r\n").await.starts_with("+OK"));

    let (mut p, r) = login(h.addr("pop3")).await;
    assert!(r.starts_with("+OK maildrop has 1 messages"), "{r}");
    p.send(b"RETR 1\r\n").await;
    let msg = p.until(".").await.concat();
    assert!(msg.contains("Subject: two"), "{msg}");
    assert!(p.cmd("QUIT\r\n").await.starts_with("+OK"));

    // IMAP sees the same mailbox.
    let mut imap = Raw::connect(h.addr("imap")).await;
    imap.line().await;
    assert!(
        imap.cmd("a LOGIN bob@example.org pw\r\n")
            .await
            .starts_with("a OK")
    );
    imap.send(b"b EXAMINE INBOX\r\n").await;
    let sel = imap.until("b ").await;
    assert!(sel.contains(&"* 1 EXISTS\r\n".to_string()), "{sel:?}");
    assert!(
        sel.last().unwrap().starts_with("b OK [READ-ONLY]"),
        "{sel:?}"
    );
    h.stop().await;
}

#[tokio::test]
async fn imap_bad_input_gets_bad_and_the_session_continues() {
    let h = Harness::start().await;
    h.add_user("carol@example.com", "pw").await;
    let mut c = Raw::connect(h.addr("imap")).await;
    c.line().await;
    assert!(c.cmd("\r\n").await.starts_with("* BAD"));
    assert!(c.cmd("garbage\r\n").await.starts_with("garbage BAD"));
    assert!(c.cmd("a1 FROBNICATE\r\n").await.starts_with("a1 BAD"));
    assert!(c.cmd("a2 FETCH 1 FLAGS\r\n").await.starts_with("a2 BAD"));
    assert!(
        c.cmd("a3 LOGIN \"unterminated\r\n")
            .await
            .starts_with("a3 BAD")
    );
    // An overlong line is refused without being buffered.
    let mut long = b"a4 NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 20_000));
    long.extend_from_slice(b"\r\n");
    assert!(
        c.cmd(std::str::from_utf8(&long).unwrap())
            .await
            .starts_with("a4 BAD")
    );
    // A synchronizing literal gets a continuation request.
    assert!(c.cmd("a5 LOGIN {17}\r\n").await.starts_with("+ "));
    c.send(b"carol@example.com {2}\r\n").await;
    assert!(c.line().await.starts_with("+ "));
    assert!(c.cmd("pw\r\n").await.starts_with("a5 OK"));
    assert!(c.cmd("a6 LOGIN x y\r\n").await.starts_with("a6 BAD"));
    assert!(
        c.cmd("a7 SELECT NoSuchFolder\r\n")
            .await
            .starts_with("a7 NO [NONEXISTENT]")
    );
    c.send(b"a8 SELECT inbox\r\n").await;
    let sel = c.until("a8 ").await;
    assert!(sel.contains(&"* 0 EXISTS\r\n".to_string()), "{sel:?}");
    assert!(c.cmd("a9 FETCH 1 FLAGS\r\n").await.starts_with("a9 BAD"));
    assert!(
        c.cmd("b1 FETCH 1 ENVELOPES\r\n")
            .await
            .starts_with("b1 BAD")
    );
    assert!(
        c.cmd("b2 UID FETCH 1:* FLAGS\r\n")
            .await
            .starts_with("b2 OK")
    );

    // NOOP announces mail delivered after SELECT.
    let mut results = h.results().await;
    h.publish_job(
        "01JNOOP",
        0,
        &["carol@example.com"],
        b"Subject: new\r\n\r\nx\r\n",
    )
    .await;
    next_result(&mut results).await;
    c.send(b"b3 NOOP\r\n").await;
    let noop = c.until("b3 ").await;
    assert!(noop.contains(&"* 1 EXISTS\r\n".to_string()), "{noop:?}");
    c.send(b"b4 FETCH 1 (UID RFC822.SIZE FLAGS)\r\n").await;
    let f = c.until("b4 ").await;
    assert!(f[0].starts_with("* 1 FETCH (UID 1 RFC822.SIZE "), "{f:?}");
    c.send(b"b5 LOGOUT\r\n").await;
    let bye = c.until("b5 ").await;
    assert!(bye[0].starts_with("* BYE"), "{bye:?}");
    assert_eq!(c.line().await, "", "closed after LOGOUT");
    h.stop().await;
}

#[tokio::test]
async fn accounts_api() {
    let h = Harness::start().await;
    let mut a = h.accounts().await;
    h.add_user("dave@example.com", "pw1").await;
    let dup = a
        .add_user(AddUserRequest {
            address: "DAVE@example.com".into(),
            password: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code(), tonic::Code::AlreadyExists);
    let foreign = a
        .add_user(AddUserRequest {
            address: "eve@elsewhere.test".into(),
            password: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), tonic::Code::FailedPrecondition);
    let invalid = a
        .add_user(AddUserRequest {
            address: "not an address".into(),
            password: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), tonic::Code::InvalidArgument);
    let empty_pw = a
        .add_user(AddUserRequest {
            address: "frank@example.com".into(),
            password: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(empty_pw.code(), tonic::Code::InvalidArgument);

    let checker = a.clone();
    let exists = |addr: &'static str| {
        let mut a = checker.clone();
        async move {
            a.check_recipient(CheckRecipientRequest {
                address: addr.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .exists
        }
    };
    assert!(exists("Dave@Example.com").await);
    assert!(!exists("nobody@example.com").await);

    a.set_password(SetPasswordRequest {
        address: "dave@example.com".into(),
        password: "pw2".into(),
    })
    .await
    .unwrap();
    let auth = a
        .authenticate(AuthenticateRequest {
            username: "Dave@example.com".into(),
            password: "pw2".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(auth.ok);
    assert_eq!(auth.address, "dave@example.com");

    let users = a
        .list_users(ListUsersRequest {})
        .await
        .unwrap()
        .into_inner()
        .addresses;
    assert_eq!(users, vec!["dave@example.com"]);
    a.delete_user(DeleteUserRequest {
        address: "dave@example.com".into(),
    })
    .await
    .unwrap();
    let gone = a
        .delete_user(DeleteUserRequest {
            address: "dave@example.com".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert!(!exists("dave@example.com").await);
    h.stop().await;
}

#[tokio::test]
async fn plaintext_auth_can_be_disabled() {
    let h = Harness::start_with(
        NatsServer::start().await,
        &[("allow_plaintext_auth", "false")],
    )
    .await;
    h.add_user("alice@example.com", "pw").await;
    let mut imap = Raw::connect(h.addr("imap")).await;
    assert!(imap.line().await.contains("LOGINDISABLED"));
    let r = imap.cmd("a LOGIN alice@example.com pw\r\n").await;
    assert!(r.starts_with("a NO [PRIVACYREQUIRED]"), "{r}");
    let mut pop = Raw::connect(h.addr("pop3")).await;
    pop.line().await;
    assert!(
        pop.cmd("USER alice@example.com\r\n")
            .await
            .starts_with("-ERR")
    );
    // TLS still works.
    let out = python(
        POP3_RETR,
        args(h.addr("pop3s"), "alice@example.com", "pw", true),
    )
    .await;
    assert!(out.starts_with(b"0 0\n"));
    h.stop().await;
}

#[tokio::test]
async fn shutdown_says_bye_to_idle_sessions_and_returns() {
    let h = Harness::start().await;
    let mut imap = Raw::connect(h.addr("imap")).await;
    imap.line().await;
    let mut pop = Raw::connect(h.addr("pop3")).await;
    pop.line().await;
    let imap_addr = h.addr("imap");
    let started = std::time::Instant::now();
    h.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "drained idle sessions promptly"
    );
    assert_eq!(imap.line().await, "* BYE server shutting down\r\n");
    assert_eq!(imap.line().await, "");
    assert_eq!(pop.line().await, "");
    assert!(
        TcpStream::connect(imap_addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn postgres_backend_delivers_and_reads_back() {
    let Some(pg) = tokio::task::spawn_blocking(Postgres::start).await.unwrap() else {
        return;
    };
    let h = Harness::start_with(
        NatsServer::start().await,
        &[("database_url", pg.url.as_str())],
    )
    .await;
    assert!(
        !h._dir.path().join("mailbox.db").exists(),
        "PostgreSQL, not SQLite, is in use"
    );
    h.add_user("alice@example.com", "pw").await;
    let mut results = h.results().await;
    h.publish_job(
        "01JPG",
        0,
        &["alice@example.com", "nobody@example.com"],
        BODY,
    )
    .await;
    let (r, _) = next_result(&mut results).await;
    assert_eq!(r.results[0].outcome(), Outcome::Delivered);
    assert_eq!(r.results[1].outcome(), Outcome::Bounced);
    h.publish_job("01JPG", 1, &["alice@example.com"], BODY)
        .await;
    next_result(&mut results).await;

    let expected = expected_copy("alice@example.com", BODY);
    let out = python(
        POP3_RETR,
        args(h.addr("pop3"), "alice@example.com", "pw", false),
    )
    .await;
    assert!(out.starts_with(format!("1 {}\n", expected.len()).as_bytes()));
    assert!(out.ends_with(&expected));
    let peek = python(
        IMAP_READ,
        args(h.addr("imap"), "alice@example.com", "pw", false),
    )
    .await;
    assert_eq!(peek, expected);
    h.stop().await;
    drop(pg);
}

/// imaplib, the way a desktop client works a mailbox: folders, APPEND,
/// flags, SEARCH, ENVELOPE/BODYSTRUCTURE/parts, COPY/MOVE with UIDPLUS,
/// EXPUNGE, CLOSE/UNSELECT, AUTHENTICATE PLAIN and STARTTLS.
const IMAP_CLIENT: &str = r#"
import imaplib, sys, re, ssl, time
host, port, user, pw = sys.argv[1:5]
M = imaplib.IMAP4(host, int(port), timeout=10)
caps = M.capabilities
for c in ("STARTTLS", "AUTH=PLAIN", "IDLE", "UIDPLUS", "MOVE", "SPECIAL-USE", "UNSELECT", "NAMESPACE"):
    assert c in caps, (c, caps)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
typ, _ = M.starttls(ssl_context=ctx)
assert typ == "OK"
assert "STARTTLS" not in M.capabilities, M.capabilities
typ, _ = M.authenticate("PLAIN", lambda _: ("\0%s\0%s" % (user, pw)).encode())
assert typ == "OK", typ

# Default folders with special-use attributes.
typ, lines = M.list()
assert typ == "OK"
names = {}
for l in lines:
    m = re.match(rb'\(([^)]*)\) "/" "?([^"]*)"?', l)
    names[m.group(2).decode()] = m.group(1).decode()
for n, attr in (("Sent", "\\Sent"), ("Drafts", "\\Drafts"), ("Trash", "\\Trash"), ("Junk", "\\Junk"), ("Archive", "\\Archive")):
    assert attr in names.get(n, ""), (n, names)
assert "INBOX" in names, names
typ, lines = M.list('""', "%")
assert typ == "OK" and len(lines) == 6, lines

# CREATE / RENAME / SUBSCRIBE / LSUB / DELETE.
assert M.create("Projects/Tern")[0] == "OK"
assert M.create("Projects/Tern")[0] == "NO"
typ, lines = M.list("Projects/", "%")
assert lines == [b'(\\HasNoChildren) "/" "Projects/Tern"'], lines
typ, lines = M.list('""', "Projects")
assert b"\\HasChildren" in lines[0], lines
assert M.rename("Projects", "Work")[0] == "OK"
typ, lines = M.list('""', "Work/*")
assert lines == [b'(\\HasNoChildren) "/" "Work/Tern"'], lines
assert M.unsubscribe("Work/Tern")[0] == "OK"
typ, lines = M.lsub('""', "Work/*")
assert lines == [None], lines
assert M.subscribe("Work/Tern")[0] == "OK"
typ, lines = M.lsub('""', "Work/*")
assert len(lines) == 1 and lines[0].startswith(b"(") and b"Work/Tern" in lines[0], lines
assert M.delete("Work/Tern")[0] == "OK"
assert M.delete("Work/Tern")[0] == "NO"
assert M.delete("INBOX")[0] == "NO"

# APPEND with flags and date: APPENDUID, then STATUS.
msg1 = (b"From: Bob Example <bob@remote.test>\r\nTo: alice@example.com\r\nSubject: Quarterly numbers\r\n"
        b"Date: Tue, 3 Feb 2026 10:00:00 +0000\r\nMessage-ID: <q1@remote.test>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
        b"--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee the attached sheet\r\n"
        b"--b1\r\nContent-Type: text/csv; name=q.csv\r\nContent-Disposition: attachment; filename=q.csv\r\n\r\na,b\r\n1,2\r\n--b1--\r\n")
msg2 = b"From: carol@remote.test\r\nSubject: lunch?\r\n\r\nnoon at the usual place\r\n"
typ, d = M.append("INBOX", "(\\Flagged $Important)", imaplib.Time2Internaldate(1700000000), msg1)
assert typ == "OK" and re.search(rb"\[APPENDUID \d+ 1\]", d[0]), d
typ, d = M.append("INBOX", None, None, msg2)
assert typ == "OK" and re.search(rb"\[APPENDUID \d+ 2\]", d[0]), d
typ, d = M.append("Nope", None, None, msg2)
assert typ == "NO" and b"TRYCREATE" in d[0], d
typ, d = M.status("INBOX", "(MESSAGES UNSEEN UIDNEXT RECENT)")
assert typ == "OK" and b"MESSAGES 2" in d[0] and b"UNSEEN 2" in d[0] and b"UIDNEXT 3" in d[0], d

typ, d = M.select("INBOX")
assert typ == "OK" and d == [b"2"], d
typ, d = M.fetch("1", "(FLAGS INTERNALDATE)")
assert b"\\Flagged" in d[0] and b"$Important" in d[0] and b"14-Nov-2023" in d[0], d
typ, d = M.fetch("1", "(ENVELOPE)")
env = d[0]
assert b'"Quarterly numbers"' in env and b'(("Bob Example" NIL "bob" "remote.test"))' in env and b'"<q1@remote.test>"' in env, env
typ, d = M.fetch("1", "(BODYSTRUCTURE)")
bs = d[0]
assert b'("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 22 1' in bs and b'"MIXED"' in bs and b'("ATTACHMENT" ("FILENAME" "q.csv"))' in bs, bs
typ, d = M.fetch("1", "(BODY.PEEK[2] BODY.PEEK[1.MIME] BODY.PEEK[TEXT]<0.4> RFC822.HEADER)")
parts = {re.search(rb"(BODY\[[^\]]*\](<\d+>)?|RFC822.HEADER)", x[0]).group(1): x[1] for x in d if isinstance(x, tuple)}
assert parts[b"BODY[2]"] == b"a,b\r\n1,2", parts
assert parts[b"BODY[1.MIME]"] == b"Content-Type: text/plain; charset=utf-8\r\n\r\n", parts
assert parts[b"BODY[TEXT]<0>"] == b"--b1", parts
assert parts[b"RFC822.HEADER"].endswith(b"\r\n\r\n") and b"Subject: Quarterly" in parts[b"RFC822.HEADER"], parts
typ, d = M.fetch("1", "(FLAGS)")
assert b"\\Seen" not in d[0], d

# SEARCH.
def search(*q):
    typ, d = M.search(None, *q)
    assert typ == "OK", (q, d)
    return d[0].split()
assert search("ALL") == [b"1", b"2"]
assert search("FLAGGED") == [b"1"]
assert search("UNFLAGGED") == [b"2"]
assert search("FROM", "carol") == [b"2"]
assert search("SUBJECT", '"quarterly NUMBERS"') == [b"1"]
assert search("BODY", "usual") == [b"2"]
assert search("TEXT", "attached") == [b"1"]
assert search("KEYWORD", "$Important") == [b"1"]
assert search("OR", "FROM", "bob", "SUBJECT", "lunch") == [b"1", b"2"]
assert search("NOT", "FROM", "bob") == [b"2"]
assert search("SENTON", "3-Feb-2026") == [b"1"]
assert search("LARGER", "200") == [b"1"]
assert search("HEADER", "Message-ID", "q1@remote") == [b"1"]
assert search("CHARSET", "UTF-8", "SUBJECT", "lunch") == [b"2"]
typ, d = M.uid("SEARCH", "UNSEEN")
assert d[0].split() == [b"1", b"2"], d

# STORE +FLAGS / -FLAGS / .SILENT / replace.
typ, d = M.store("1:2", "+FLAGS", "(\\Seen)")
assert typ == "OK" and len(d) == 2 and all(b"\\Seen" in x for x in d), d
typ, d = M.store("1", "-FLAGS.SILENT", "(\\Flagged)")
assert typ == "OK" and d == [None], d
typ, d = M.store("2", "FLAGS", "(\\Answered $Label1)")
assert b"\\Answered" in d[0] and b"$Label1" in d[0] and b"\\Seen" not in d[0], d
typ, d = M.uid("STORE", "1", "+FLAGS", "(\\Draft)")
assert b"UID 1" in d[0] and b"\\Draft" in d[0], d
try:
    M.store("9", "+FLAGS", "(\\Seen)")
    raise AssertionError("STORE to a sequence number past the end must fail")
except imaplib.IMAP4.error as e:
    assert "invalid message sequence number" in str(e), e
assert search("UNSEEN") == [b"2"]

# COPY / MOVE with COPYUID.
typ, d = M.copy("1:2", "Archive")
assert typ == "OK" and re.search(rb"\[COPYUID \d+ 1:2 1:2\]", d[0]), d
typ, d = M.status("Archive", "(MESSAGES)")
assert b"MESSAGES 2" in d[0], d
typ, d = M.uid("MOVE", "2", "Trash")
assert typ == "OK", d
assert M.untagged_responses.get("EXPUNGE") == [b"2"], M.untagged_responses
typ, d = M.select("INBOX")
assert d == [b"1"], d
typ, d = M.status("Trash", "(MESSAGES)")
assert b"MESSAGES 1" in d[0], d
typ, d = M.copy("1", "Nope")
assert typ == "NO" and b"TRYCREATE" in d[0], d

# EXPUNGE, UID EXPUNGE, CLOSE, UNSELECT.
typ, d = M.select("Archive")
assert d == [b"2"], d
M.store("1:2", "+FLAGS.SILENT", "(\\Deleted)")
typ, d = M.uid("EXPUNGE", "2")
assert typ == "OK" and M.untagged_responses.pop("EXPUNGE", None) == [b"2"], M.untagged_responses
typ, d = M.select("Archive", readonly=True)
assert d == [b"1"], d
typ, d = M.store("1", "+FLAGS", "(\\Seen)")
assert typ == "NO", d
assert M.unselect()[0] == "OK"
typ, d = M.select("Archive")
assert M.close()[0] == "OK"
typ, d = M.status("Archive", "(MESSAGES)")
assert b"MESSAGES 0" in d[0], d
typ, d = M.select("Trash")
M.store("1", "+FLAGS", "(\\Deleted)")
typ, d = M.expunge()
assert typ == "OK" and d == [b"1"], d
M.logout()
print("ok")
"#;

/// A harness on a fresh PostgreSQL cluster (None: skipped, only when
/// TEST_REQUIRE_POSTGRES is unset and PostgreSQL is not installed).
async fn pg_harness() -> Option<(Postgres, Harness)> {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()?;
    let h = Harness::start_with(
        NatsServer::start().await,
        &[("database_url", pg.url.as_str())],
    )
    .await;
    Some((pg, h))
}

#[tokio::test]
async fn imap_client_works_folders_flags_search_and_moves() {
    imap_client_scenario(Harness::start().await).await;
}

#[tokio::test]
async fn imap_client_works_folders_flags_search_and_moves_on_postgres() {
    if let Some((_pg, h)) = pg_harness().await {
        imap_client_scenario(h).await;
    }
}

async fn imap_client_scenario(h: Harness) {
    h.add_user("dave@example.com", "secret").await;
    let addr = h.addr("imap");
    let out = python(
        IMAP_CLIENT,
        vec![
            addr.ip().to_string(),
            addr.port().to_string(),
            "dave@example.com".into(),
            "secret".into(),
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out).trim(), "ok");
    h.stop().await;
}

/// Read until a line contains `needle` or the deadline passes.
async fn wait_line(c: &mut Raw, needle: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let l = c.line().await;
        assert!(
            !l.is_empty(),
            "closed while waiting for {needle:?}: {seen:?}"
        );
        let hit = l.contains(needle);
        seen.push(l);
        if hit {
            return seen;
        }
    }
}

/// Two sessions on one mailbox: an IDLE session sees the other's APPEND,
/// flag change and expunge as untagged EXISTS, FETCH and EXPUNGE; a
/// non-IDLE session sees them at its next NOOP.
#[tokio::test]
async fn imap_sessions_see_each_others_changes() {
    sessions_scenario(Harness::start().await).await;
}

#[tokio::test]
async fn imap_sessions_see_each_others_changes_on_postgres() {
    if let Some((_pg, h)) = pg_harness().await {
        sessions_scenario(h).await;
    }
}

async fn sessions_scenario(h: Harness) {
    h.add_user("erin@example.com", "pw").await;
    let addr = h.addr("imap");
    let mut a = Raw::connect(addr).await;
    let mut b = Raw::connect(addr).await;
    let mut c = Raw::connect(addr).await;
    for (s, t) in [(&mut a, "a"), (&mut b, "b"), (&mut c, "c")] {
        s.line().await;
        s.send(format!("{t}1 LOGIN erin@example.com pw\r\n").as_bytes())
            .await;
        s.until(&format!("{t}1 ")).await;
        s.send(format!("{t}2 SELECT INBOX\r\n").as_bytes()).await;
        let sel = s.until(&format!("{t}2 ")).await;
        assert!(sel.last().unwrap().contains("OK"), "{sel:?}");
    }
    a.send(b"a3 IDLE\r\n").await;
    assert!(a.line().await.starts_with("+ "));

    b.send(b"b3 APPEND INBOX {21}\r\n").await;
    assert!(b.line().await.starts_with("+ "));
    b.send(b"Subject: x\r\n\r\nhello\r\n\r\n").await;
    let r = b.until("b3 ").await;
    assert!(r.last().unwrap().starts_with("b3 OK [APPENDUID"), "{r:?}");
    let seen = tokio::time::timeout(Duration::from_secs(1), wait_line(&mut a, "* 1 EXISTS"))
        .await
        .expect("IDLE sees the new message within 1 s");
    assert!(!seen.is_empty());
    c.send(b"c3 NOOP\r\n").await;
    let r = c.until("c3 ").await;
    assert!(r.contains(&"* 1 EXISTS\r\n".to_string()), "{r:?}");

    b.send(b"b4 STORE 1 +FLAGS.SILENT (\\Flagged)\r\n").await;
    b.until("b4 ").await;
    let seen = tokio::time::timeout(Duration::from_secs(1), wait_line(&mut a, "FETCH"))
        .await
        .expect("IDLE sees the flag change within 1 s");
    assert!(seen.last().unwrap().contains("\\Flagged"), "{seen:?}");

    b.send(b"b5 STORE 1 +FLAGS.SILENT (\\Deleted)\r\n").await;
    b.until("b5 ").await;
    wait_line(&mut a, "\\Deleted").await;
    b.send(b"b6 EXPUNGE\r\n").await;
    let r = b.until("b6 ").await;
    assert!(r.contains(&"* 1 EXPUNGE\r\n".to_string()), "{r:?}");
    tokio::time::timeout(Duration::from_secs(1), wait_line(&mut a, "* 1 EXPUNGE"))
        .await
        .expect("IDLE sees the expunge within 1 s");
    a.send(b"DONE\r\n").await;
    assert!(a.until("a3 ").await.last().unwrap().starts_with("a3 OK"));

    // c was not idling: FETCH must not announce the expunge (RFC 9051
    // §7.5.1), NOOP does.
    c.send(b"c5 FETCH 1 (FLAGS)\r\n").await;
    let r = c.until("c5 ").await;
    assert!(!r.iter().any(|l| l.contains("EXPUNGE")), "{r:?}");
    c.send(b"c4 NOOP\r\n").await;
    let r = c.until("c4 ").await;
    assert!(r.contains(&"* 1 EXPUNGE\r\n".to_string()), "{r:?}");
    h.stop().await;
}

/// Another replica (same database, same NATS): an IDLE session on replica
/// one sees mail delivered through replica two within one second.
#[tokio::test]
async fn idle_sees_delivery_on_another_replica_within_a_second() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let h = Harness::start_with(nats, &[]).await;
    h.add_user("fay@example.com", "pw").await;
    let db = format!("sqlite://{}/mailbox.db", h._dir.path().display());
    let dir2 = tempfile::tempdir().unwrap();
    let data2 = dir2.path().display().to_string();
    let src = Source::from_pairs(vec![
        ("data_dir", data2.as_str()),
        ("nats_url", url.as_str()),
        ("hostname", "mx2.test"),
        ("local_domains", "example.com"),
        ("database_url", db.as_str()),
        ("imap_listen", "127.0.0.1:0"),
        ("imaps_listen", ""),
        ("pop3_listen", ""),
        ("pop3s_listen", ""),
        ("mailbox_grpc_listen", "127.0.0.1:0"),
        ("mailbox_admin_listen", "127.0.0.1:0"),
        ("shutdown_grace", "5s"),
    ]);
    let bound = tern_mailbox::bind(Config::from_source(&src).unwrap())
        .await
        .unwrap();
    let addrs2: HashMap<_, _> = bound.addrs().into_iter().collect();
    let stop2 = Shutdown::new();
    let task2 = tokio::spawn(bound.run(stop2.clone()));
    let admin2 = addrs2["mailbox admin"];
    wait_for("replica 2 /readyz", DEADLINE, || async move {
        (http_get(admin2, "/readyz").await.as_deref() == Some("200")).then_some(())
    })
    .await;

    let mut a = Raw::connect(h.addr("imap")).await;
    a.line().await;
    a.send(b"a1 LOGIN fay@example.com pw\r\na2 SELECT INBOX\r\n")
        .await;
    a.until("a2 ").await;
    a.send(b"a3 IDLE\r\n").await;
    assert!(a.line().await.starts_with("+ "));

    let mut b = Raw::connect(addrs2["imap"]).await;
    b.line().await;
    b.send(b"b1 LOGIN fay@example.com pw\r\n").await;
    b.until("b1 ").await;
    b.send(b"b2 APPEND INBOX {19+}\r\nSubject: r2\r\n\r\nhi\r\n\r\n")
        .await;
    let r = b.until("b2 ").await;
    assert!(r.last().unwrap().starts_with("b2 OK"), "{r:?}");
    tokio::time::timeout(Duration::from_secs(1), wait_line(&mut a, "* 1 EXISTS"))
        .await
        .expect("replica one's IDLE session sees replica two's delivery within 1 s");
    a.send(b"DONE\r\n").await;
    a.until("a3 ").await;
    stop2.trigger();
    tokio::time::timeout(DEADLINE, task2)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    h.stop().await;
}

/// poplib over STLS with AUTH PLAIN on a server that refuses cleartext
/// passwords; UIDLs stay the same in the next session.
const POP3_STLS: &str = r#"
import poplib, sys, ssl, base64
host, port, user, pw = sys.argv[1:5]
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def session():
    p = poplib.POP3(host, int(port), timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps, caps
    try:
        p.user(user)
        raise AssertionError("USER accepted in the clear")
    except poplib.error_proto as e:
        assert b"[AUTH]" in e.args[0], e
    p.stls(context=ctx)
    caps = p.capa()
    assert "STLS" not in caps and "SASL" in caps and "PLAIN" in caps["SASL"], caps
    resp = p._shortcmd("AUTH PLAIN " + base64.b64encode(("\0%s\0%s" % (user, pw)).encode()).decode())
    assert resp.startswith(b"+OK"), resp
    return p
p = session()
count, size = p.stat()
assert count == 2, count
uids = p.uidl()[1]
resp, lines, _ = p.top(1, 0)
assert b"Subject: one" in lines and b"body one" not in lines, lines
p.dele(1)
p.quit()
p = session()
assert p.stat()[0] == 1
after = p.uidl()[1]
assert after[0].split()[1] == uids[1].split()[1], (uids, after)
p.quit()
print("ok")
"#;

#[tokio::test]
async fn pop3_stls_auth_plain_and_curl_clients() {
    let h = Harness::start_with(
        NatsServer::start().await,
        &[("allow_plaintext_auth", "false")],
    )
    .await;
    h.add_user("gus@example.com", "pw").await;
    let mut results = h.results().await;
    h.publish_job(
        "01JP1",
        0,
        &["gus@example.com"],
        b"Subject: one\r\n\r\nbody one\r\n",
    )
    .await;
    next_result(&mut results).await;
    h.publish_job(
        "01JP2",
        0,
        &["gus@example.com"],
        b"Subject: two\r\n\r\nbody two\r\n",
    )
    .await;
    next_result(&mut results).await;
    let pop3 = h.addr("pop3");
    let out = python(
        POP3_STLS,
        vec![
            pop3.ip().to_string(),
            pop3.port().to_string(),
            "gus@example.com".into(),
            "pw".into(),
        ],
    )
    .await;
    assert_eq!(String::from_utf8_lossy(&out).trim(), "ok");

    // curl, a real client, over STARTTLS (required: cleartext logins are off).
    let curl = |url: String| async move {
        tokio::task::spawn_blocking(move || {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-S",
                    "--max-time",
                    "10",
                    "-k",
                    "--ssl-reqd",
                    "-u",
                    "gus@example.com:pw",
                ])
                .arg(&url)
                .output()
                .expect("run curl (Debian package curl)");
            assert!(
                out.status.success(),
                "curl {url}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out.stdout
        })
        .await
        .unwrap()
    };
    let body = curl(format!("pop3://{pop3}/1")).await;
    assert!(
        body.ends_with(b"Subject: two\r\n\r\nbody two\r\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let imap = h.addr("imap");
    let body = curl(format!("imap://{imap}/INBOX;UID=2")).await;
    assert!(
        body.ends_with(b"Subject: two\r\n\r\nbody two\r\n"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    let listing = curl(format!("imap://{imap}/")).await;
    let listing = String::from_utf8_lossy(&listing);
    assert!(
        listing.contains("\\Sent") && listing.contains("INBOX"),
        "{listing}"
    );
    h.stop().await;
}

/// CONDSTORE (RFC 7162): HIGHESTMODSEQ, FETCH MODSEQ and CHANGEDSINCE,
/// STORE UNCHANGEDSINCE refusing a message another session changed, SEARCH
/// MODSEQ.
#[tokio::test]
async fn condstore_detects_concurrent_flag_changes() {
    let h = Harness::start().await;
    h.add_user("hal@example.com", "pw").await;
    let addr = h.addr("imap");
    let mut a = Raw::connect(addr).await;
    let mut b = Raw::connect(addr).await;
    for (s, t) in [(&mut a, "a"), (&mut b, "b")] {
        s.line().await;
        s.send(format!("{t}1 LOGIN hal@example.com pw\r\n").as_bytes())
            .await;
        s.until(&format!("{t}1 ")).await;
    }
    for i in 0..3 {
        a.send(format!("x{i} APPEND INBOX {{12+}}\r\nSubject: {i}\r\n\r\n").as_bytes())
            .await;
        a.until(&format!("x{i} ")).await;
    }
    a.send(b"a2 SELECT INBOX (CONDSTORE)\r\n").await;
    let sel = a.until("a2 ").await;
    let hms = sel
        .iter()
        .find_map(|l| l.strip_prefix("* OK [HIGHESTMODSEQ "))
        .and_then(|r| r.split(']').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no HIGHESTMODSEQ in {sel:?}"));
    b.send(b"b2 SELECT INBOX\r\nb3 STORE 2 +FLAGS.SILENT (\\Flagged)\r\n")
        .await;
    b.until("b3 ").await;
    a.send(format!("a3 FETCH 1:* (FLAGS) (CHANGEDSINCE {hms})\r\n").as_bytes())
        .await;
    let r = a.until("a3 ").await;
    let fetches: Vec<&String> = r.iter().filter(|l| l.starts_with("* 2 FETCH")).collect();
    assert!(!fetches.is_empty(), "{r:?}");
    assert!(
        !r.iter()
            .any(|l| l.starts_with("* 1 FETCH") || l.starts_with("* 3 FETCH")),
        "only the changed message: {r:?}"
    );
    assert!(fetches.iter().all(|l| l.contains("MODSEQ (")), "{r:?}");
    a.send(format!("a4 STORE 1:3 (UNCHANGEDSINCE {hms}) +FLAGS (\\Seen)\r\n").as_bytes())
        .await;
    let r = a.until("a4 ").await;
    assert!(r.last().unwrap().starts_with("a4 OK [MODIFIED 2]"), "{r:?}");
    a.send(b"a5 FETCH 2 (FLAGS)\r\n").await;
    let r = a.until("a5 ").await;
    assert!(
        r[0].contains("\\Flagged") && !r[0].contains("\\Seen"),
        "{r:?}"
    );
    a.send(format!("a6 SEARCH MODSEQ {}\r\n", hms + 1).as_bytes())
        .await;
    let r = a.until("a6 ").await;
    assert!(r[0].starts_with("* SEARCH 1 2 3 (MODSEQ "), "{r:?}");
    h.stop().await;
}

/// Quotas: a delivery that would exceed the account's quota is deferred
/// with 452 4.2.2 (so the queue retries and finally bounces with a DSN),
/// APPEND gets NO [OVERQUOTA], and GETQUOTAROOT shows usage.
#[tokio::test]
async fn quota_defers_delivery_and_refuses_append() {
    let h = Harness::start_with(
        NatsServer::start().await,
        &[("mailbox_default_quota_bytes", "2048")],
    )
    .await;
    h.add_user("ivy@example.com", "pw").await;
    let mut results = h.results().await;
    let small = b"Subject: fits\r\n\r\nsmall\r\n".to_vec();
    h.publish_job("01JQ1", 0, &["ivy@example.com"], &small)
        .await;
    let (r, _) = next_result(&mut results).await;
    assert_eq!(r.results[0].outcome(), Outcome::Delivered);
    let big = [b"Subject: big\r\n\r\n".to_vec(), vec![b'x'; 4000]].concat();
    h.publish_job("01JQ2", 0, &["ivy@example.com"], &big).await;
    let (r, _) = next_result(&mut results).await;
    assert_eq!(r.results[0].outcome(), Outcome::Deferred);
    assert_eq!(r.results[0].code, 452, "{:?}", r.results[0]);

    let mut c = Raw::connect(h.addr("imap")).await;
    c.line().await;
    c.send(b"a1 LOGIN ivy@example.com pw\r\n").await;
    c.until("a1 ").await;
    c.send(b"a2 GETQUOTAROOT INBOX\r\n").await;
    let r = c.until("a2 ").await;
    assert!(
        r.contains(&"* QUOTAROOT \"INBOX\" \"\"\r\n".to_string()),
        "{r:?}"
    );
    assert!(
        r.contains(&"* QUOTA \"\" (STORAGE 1 2)\r\n".to_string()),
        "{r:?}"
    );
    c.send(b"a3 APPEND Drafts {3000+}\r\n").await;
    c.send(&[b'y'; 3000]).await;
    c.send(b"\r\n").await;
    let r = c.until("a3 ").await;
    assert!(r.last().unwrap().starts_with("a3 NO [OVERQUOTA]"), "{r:?}");
    h.stop().await;
}

/// Run one statement on the service's database directly (as an older
/// version of Tern left it); returns the first column of the first row as
/// a number, or the rows affected.
async fn sql(url: &str, statement: &'static str) -> i64 {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(url).await.unwrap();
    let n = if statement.starts_with("SELECT") {
        sqlx::query_scalar(statement)
            .fetch_one(&pool)
            .await
            .unwrap()
    } else {
        let r = sqlx::query(statement).execute(&pool).await.unwrap();
        i64::try_from(r.rows_affected()).unwrap()
    };
    pool.close().await;
    n
}

/// Messages stored before migration 0003 (their summary columns NULL)
/// FETCH ENVELOPE, BODY, BODYSTRUCTURE and header sections, and SEARCH by
/// header, exactly like new ones; the first access fills the columns.
#[tokio::test]
async fn messages_without_stored_summaries_fetch_and_search_the_same() {
    let h = Harness::start().await;
    let url = format!("sqlite://{}/mailbox.db", h._dir.path().display());
    summaries_scenario(h, &url).await;
}

#[tokio::test]
async fn messages_without_stored_summaries_fetch_and_search_the_same_on_postgres() {
    if let Some((pg, h)) = pg_harness().await {
        let url = pg.url.clone();
        summaries_scenario(h, &url).await;
    }
}

/// FETCH and SEARCH what the summaries answer, with tags `f<n>`, `s<n>`,
/// `t<n>`; the response lines with the tags taken out.
async fn summary_round(c: &mut Raw, n: u32) -> Vec<String> {
    let cmds = format!(
        "f{n} FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY BODY.PEEK[HEADER.FIELDS (SUBJECT)] RFC822.HEADER)\r\n\
         s{n} SEARCH SUBJECT \"folded subject\"\r\n\
         t{n} SEARCH HEADER Delivered-To kim@\r\n"
    );
    c.send(cmds.as_bytes()).await;
    let mut out = Vec::new();
    for t in ["f", "s", "t"] {
        let tag = format!("{t}{n} ");
        for l in c.until(&tag).await {
            out.push(match l.strip_prefix(&tag) {
                Some(rest) => format!("{t} {rest}"),
                None => l,
            });
        }
    }
    out
}

async fn summaries_scenario(h: Harness, url: &str) {
    h.add_user("kim@example.com", "pw").await;
    let mut results = h.results().await;
    // A delivered copy (with its Return-Path / Delivered-To prefix) ...
    h.publish_job("01JSUM", 0, &["kim@example.com"], BODY).await;
    let (r, _) = next_result(&mut results).await;
    assert_eq!(r.results[0].outcome(), Outcome::Delivered);
    let mut c = Raw::connect(h.addr("imap")).await;
    c.line().await;
    c.send(b"a1 LOGIN kim@example.com pw\r\n").await;
    c.until("a1 ").await;
    // ... and an APPENDed multipart with a folded Subject.
    let multipart = "From: \"Bob, B.\" <bob@example.com>\r\nTo: a@x.test\r\n\
Subject: folded\r\n subject line\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n\
--XX\r\nContent-Type: text/plain\r\n\r\nhello\r\n--XX--\r\n";
    c.send(
        format!(
            "a2 APPEND INBOX {{{}+}}\r\n{multipart}\r\n",
            multipart.len()
        )
        .as_bytes(),
    )
    .await;
    assert!(c.until("a2 ").await.last().unwrap().starts_with("a2 OK"));
    c.send(b"a3 SELECT INBOX\r\n").await;
    c.until("a3 ").await;
    let fresh = summary_round(&mut c, 1).await;
    let joined = fresh.concat();
    assert!(
        joined.contains("ENVELOPE (NIL \"walking skeleton\"")
            && joined.contains("\"folded subject line\"")
            && joined.contains("BODYSTRUCTURE ((\"TEXT\" \"PLAIN\""),
        "{fresh:?}"
    );
    assert!(fresh.contains(&"* SEARCH 2\r\n".to_string()), "{fresh:?}");
    assert!(fresh.contains(&"* SEARCH 1\r\n".to_string()), "{fresh:?}");

    let cleared = sql(
        url,
        "UPDATE messages SET header = NULL, envelope = NULL, body_structure = NULL, body_basic = NULL",
    )
    .await;
    assert_eq!(cleared, 2);
    assert_eq!(
        summary_round(&mut c, 2).await,
        fresh,
        "same answers from the bodies"
    );
    let nulls = sql(
        url,
        "SELECT COUNT(*) FROM messages WHERE envelope IS NULL OR header IS NULL",
    )
    .await;
    assert_eq!(nulls, 0, "the first access stored the summaries");
    assert_eq!(summary_round(&mut c, 3).await, fresh);

    // Only the SEARCH filled the headers this time: FETCH still works.
    sql(url, "UPDATE messages SET header = NULL, envelope = NULL, body_structure = NULL, body_basic = NULL").await;
    c.send(b"s4 SEARCH SUBJECT \"folded subject\"\r\n").await;
    assert!(c.until("s4 ").await.contains(&"* SEARCH 2\r\n".to_string()));
    assert_eq!(summary_round(&mut c, 5).await, fresh);
    h.stop().await;
}
