//! Negative and abuse tests against a real nats-server over loopback:
//! limits, malformed input, SMTP smuggling, slow clients, connection
//! limits, PROXY protocol, certificate reload and many idle connections.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tern_runtime::bus;
use tern_testkit::{NatsServer, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Messages in the spool stream.
async fn spool_count(nats: &str) -> u64 {
    let client = async_nats::connect(nats).await.expect("NATS");
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(bus::SPOOL_STREAM).await.expect("spool");
    stream.info().await.expect("info").state.messages
}

fn enh(text: &str) -> &str {
    &text[4..9]
}

#[tokio::test]
async fn oversize_is_refused_at_mail_and_at_the_end_of_data_and_bdat() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[("max_message_size", "1000")]).await;
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    let (_, ehlo) = c.cmd("EHLO c.test").await;
    assert!(ehlo.contains("SIZE 1000"), "{ehlo}");
    // Declared too big: refused at MAIL (RFC 1870 §6.3).
    let (code, text) = c.cmd("MAIL FROM:<a@remote.test> SIZE=1001").await;
    assert_eq!((code, enh(&text)), (552, "5.3.4"), "{text}");
    // Undeclared, too big: refused after the body.
    c.cmd("MAIL FROM:<a@remote.test> SIZE=10").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&b"0123456789abcdef\r\n".repeat(100)).await;
    let (code, text) = c.cmd(".").await;
    assert_eq!((code, enh(&text)), (552, "5.3.4"), "{text}");
    // BDAT too.
    c.cmd("MAIL FROM:<a@remote.test>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    c.send(b"BDAT 1200 LAST\r\n").await;
    let (code, text) = c.cmd(&"x".repeat(1198)).await;
    assert_eq!((code, enh(&text)), (552, "5.3.4"), "{text}");
    // The session goes on, and a message within the limit is accepted.
    let (code, text) = c
        .transaction(
            "a@remote.test",
            &["bob@example.com"],
            b"Subject: small\r\n\r\nok\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(spool_count(&nats.url()).await, 1);
    ingress.stop().await;
}

#[tokio::test]
async fn overlong_lines_and_malformed_commands_get_5xx_and_the_session_continues() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[("max_command_line", "512"), ("max_line_length", "1000")],
    )
    .await;
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    c.cmd("EHLO c.test").await;
    let (code, text) = c.cmd(&format!("NOOP {}", "x".repeat(600))).await;
    assert_eq!((code, enh(&text)), (500, "5.5.2"), "{text}");
    for (line, want) in [
        ("FROB", (500, "5.5.2")),
        ("MAIL FROM:alice", (501, "5.1.7")),
        ("MAIL FROM:<a@remote.test> FOO=BAR", (555, "5.5.4")),
        ("RCPT TO:<bob@example.com>", (503, "5.5.1")),
        ("BDAT x", (501, "5.5.4")),
    ] {
        let (code, text) = c.cmd(line).await;
        assert_eq!((code, enh(&text)), want, "{line}: {text}");
    }
    assert_eq!(c.cmd("VRFY bob").await.0, 252);
    let (code, help) = c.cmd("HELP").await;
    assert!(code == 214 && help.contains("STARTTLS"), "{help}");
    // A text line over 1000 octets: the message is refused, the session lives.
    c.cmd("MAIL FROM:<a@remote.test>").await;
    c.cmd("RCPT TO:<bob@example.com>").await;
    c.cmd("DATA").await;
    c.send(format!("{}\r\n", "y".repeat(1200)).as_bytes()).await;
    let (code, text) = c.cmd(".").await;
    assert_eq!((code, enh(&text)), (554, "5.6.0"), "{text}");
    assert_eq!(c.cmd("NOOP").await.0, 250);
    assert_eq!(spool_count(&nats.url()).await, 0);
    ingress.stop().await;
}

#[tokio::test]
async fn smuggling_vectors_never_split_or_end_a_message_early() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com", "victim@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let smuggled = b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.com>\r\nDATA\r\nSubject: smuggled\r\n\r\nwire money\r\n";
    let vectors: [&[u8]; 8] = [
        b"\n.\n", b"\r.\r", b"\n.\r\n", b"\r\n.\r", b"\r.\n", b"\n.\r", b"\r\n.\n", b"\r.\r\n",
    ];
    let mut c = Smtp::connect(ingress.addr("smtp")).await;
    c.cmd("EHLO c.test").await;
    for (i, v) in vectors.iter().enumerate() {
        for mixed in [false, true] {
            let mut body = format!("Subject: vector {i}\r\n\r\nbefore\r\n").into_bytes();
            body.extend_from_slice(v);
            body.extend_from_slice(smuggled);
            if mixed {
                // Mixes: another vector of a different kind, then more text.
                body.extend_from_slice(vectors[(i + 3) % vectors.len()]);
                body.extend_from_slice(smuggled);
            }
            body.extend_from_slice(b"END OF REAL MESSAGE\r\n");
            let (code, text) = c
                .transaction("a@remote.test", &["bob@example.com"], &body)
                .await;
            assert_eq!(code, 250, "vector {i}: {text}");
            let (env, _) = spooled(&nats.url(), &queued_id(&text)).await;
            assert_eq!(env.rcpts.len(), 1);
            assert_eq!(env.rcpts[0].address, "bob@example.com");
            let stored = inline_body(&env);
            let (_, rest) = split_received(&stored);
            assert!(rest.ends_with(b"END OF REAL MESSAGE\r\n"), "vector {i}");
            // What was smuggled is text of this one message, with CRLFs only.
            assert!(rest.windows(11).any(|w| w == b"wire money\r"), "vector {i}");
            assert!(
                !rest.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'),
                "bare LF stored"
            );
        }
        // Nothing was left over as commands.
        assert_eq!(c.cmd("NOOP").await.0, 250);
    }
    assert_eq!(spool_count(&nats.url()).await, 2 * vectors.len() as u64);
    ingress.stop().await;
}

#[tokio::test]
async fn a_client_sending_one_byte_a_second_is_cut_off_at_the_command_timeout() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&[]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[("command_timeout", "3s")]).await;
    let mut s = TcpStream::connect(ingress.addr("smtp"))
        .await
        .expect("connect");
    let mut greeting = [0u8; 256];
    let n = s.read(&mut greeting).await.expect("greeting");
    assert!(greeting[..n].starts_with(b"220 "));
    let start = Instant::now();
    let (mut r, mut w) = s.into_split();
    // Bounded: at most 20 bytes, one a second; never a whole line.
    let writer = tokio::spawn(async move {
        for b in b"EHLO slow.client.example.com".iter().take(20) {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let mut got = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), r.read_to_end(&mut got))
        .await
        .expect("closed within the deadline")
        .ok();
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("421 4.4.2 "), "{text}");
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(8),
        "cut off after {elapsed:?}, not at the 3 s timeout"
    );
    writer.abort();
    ingress.stop().await;
}

#[tokio::test]
async fn connections_over_the_per_client_limit_get_421() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&[]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[("max_connections_per_ip", "2")]).await;
    let a = Smtp::connect(ingress.addr("smtp")).await;
    let _b = Smtp::connect(ingress.addr("submission")).await;
    let mut s = TcpStream::connect(ingress.addr("smtp"))
        .await
        .expect("connect");
    let mut got = Vec::new();
    tokio::time::timeout(IO_DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("closed")
        .ok();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("421 4.7.0 "), "{text}");
    // A slot frees when a client leaves.
    drop(a);
    let addr = ingress.addr("smtp");
    wait_for("a free slot", Duration::from_secs(10), || async move {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.ok()?;
        (&buf == b"220 ").then_some(())
    })
    .await;
    ingress.stop().await;
}

#[tokio::test]
async fn proxy_protocol_v1_and_v2_carry_the_client_address() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[("smtp_proxy_protocol", "true")]).await;
    let addr = ingress.addr("smtp");
    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    v2.extend_from_slice(&[
        0x21, 0x11, 0, 12, 198, 51, 100, 9, 127, 0, 0, 1, 0x9c, 0x40, 0, 25,
    ]);
    for (header, ip) in [
        (
            b"PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\n".to_vec(),
            "192.0.2.7",
        ),
        (v2, "198.51.100.9"),
    ] {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.try_write(&header).expect("header");
        let mut c = Smtp::from_stream(stream).await;
        c.cmd("EHLO lb.test").await;
        let (code, text) = c
            .transaction(
                "a@remote.test",
                &["bob@example.com"],
                b"Subject: p\r\n\r\nx\r\n",
            )
            .await;
        assert_eq!(code, 250, "{text}");
        let (env, _) = spooled(&nats.url(), &queued_id(&text)).await;
        assert_eq!(env.client_ip, ip);
        let body = inline_body(&env);
        assert!(split_received(&body).0.contains(&format!("([{ip}])")));
    }
    // Without a header the connection is dropped unanswered.
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"EHLO direct.test\r\n").await.expect("write");
    let mut got = Vec::new();
    tokio::time::timeout(IO_DEADLINE, s.read_to_end(&mut got))
        .await
        .expect("closed")
        .ok();
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
    ingress.stop().await;
}

/// The certificate ingress presents on implicit TLS, as PEM (python3 ssl).
async fn served_cert(port: u16) -> Option<String> {
    let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10) as s:
    with ctx.wrap_socket(s) as t:
        print(ssl.DER_cert_to_PEM_cert(t.getpeercert(True)))
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).to_string())
}

fn pem_body(pem: &str) -> String {
    pem.lines().filter(|l| !l.starts_with("-----")).collect()
}

fn make_cert(dir: &std::path::Path, cn: &str) {
    let status = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-days", "2", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(dir.join(format!("{cn}.key")))
        .arg("-out")
        .arg(dir.join(format!("{cn}.crt")))
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success());
}

#[tokio::test]
async fn a_changed_certificate_is_served_without_a_restart() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&[]).await;
    let dir = tempfile::tempdir().expect("dir");
    make_cert(dir.path(), "one.test");
    make_cert(dir.path(), "two.test");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(dir.path().join("one.test.crt"), &cert).expect("copy");
    std::fs::copy(dir.path().join("one.test.key"), &key).expect("copy");
    let (c, k) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[
            ("tls_cert", c),
            ("tls_key", k),
            ("tls_reload_interval", "200ms"),
        ],
    )
    .await;
    let port = ingress.addr("submissions").port();
    let one = std::fs::read_to_string(dir.path().join("one.test.crt")).expect("read");
    let two = std::fs::read_to_string(dir.path().join("two.test.crt")).expect("read");
    let served = served_cert(port).await.expect("TLS handshake");
    assert_eq!(pem_body(&served), pem_body(&one));
    // Replace both files (key first: a mismatched pair is not taken).
    std::fs::copy(dir.path().join("two.test.key"), &key).expect("copy");
    std::fs::copy(dir.path().join("two.test.crt"), &cert).expect("copy");
    let want = pem_body(&two);
    wait_for("the new certificate", Duration::from_secs(15), || {
        let want = want.clone();
        async move { (pem_body(&served_cert(port).await?) == want).then_some(()) }
    })
    .await;
    ingress.stop().await;
}

/// 10,000 idle connections (opened by a python3 process, so the fds are
/// split between two processes) are all greeted, held, and still answer.
#[tokio::test]
async fn ten_thousand_idle_connections_are_held() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&[]).await;
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[("max_connections_per_ip", "20000")],
    )
    .await;
    let script = r#"
import asyncio, sys
N = int(sys.argv[2])
async def one(port):
    r, w = await asyncio.open_connection("127.0.0.1", port)
    line = await r.readline()
    assert line.startswith(b"220 "), line
    return r, w
async def main():
    port = int(sys.argv[1])
    conns = []
    for i in range(0, N, 250):
        conns += await asyncio.wait_for(asyncio.gather(*(one(port) for _ in range(min(250, N - i)))), 60)
    print("open", len(conns), flush=True)
    # Held: wait for the go-ahead, then every 100th still answers NOOP.
    sys.stdin.readline()
    for r, w in conns[::100]:
        w.write(b"NOOP\r\n")
        await w.drain()
        line = await asyncio.wait_for(r.readline(), 30)
        assert line.startswith(b"250 "), line
    print("ok", flush=True)
asyncio.run(main())
"#;
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new("python3")
        .args([
            "-c",
            script,
            &ingress.addr("smtp").port().to_string(),
            "10000",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("python3");
    let mut out = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = tokio::time::timeout(Duration::from_secs(120), out.next_line())
        .await
        .expect("opened in time")
        .expect("read");
    assert_eq!(line.as_deref(), Some("open 10000"));
    let admin = ingress.addr("ingress admin");
    wait_for(
        "10000 active connections in /metrics",
        Duration::from_secs(20),
        || async move {
            let m = http_get(admin, "/metrics").await?;
            m.lines()
                .any(|l| l.starts_with("tern_smtp_connections_active") && l.ends_with(" 10000"))
                .then_some(())
        },
    )
    .await;
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").await.expect("go");
    let line = tokio::time::timeout(Duration::from_secs(60), out.next_line())
        .await
        .expect("answered in time")
        .expect("read");
    assert_eq!(line.as_deref(), Some("ok"));
    let status = child.wait().await.expect("python exits");
    assert!(status.success());
    ingress.stop().await;
}
