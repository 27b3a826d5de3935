//! Interop with real, independent SMTP implementations over loopback:
//! curl, swaks and Postfix (relaying to Tern as its relayhost). Python's
//! smtplib is in ingress.rs, AUTH with swaks in auth.rs.

mod common;

use std::time::Duration;

use common::*;
use tern_testkit::{NatsServer, wait_for};

fn queued_in(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(|l| l.split("Ok: queued as ").nth(1))
        .unwrap_or_else(|| panic!("no queued id in {transcript}"))
        .trim()
        .to_string()
}

#[tokio::test]
async fn curl_plain_and_starttls_with_auth() {
    let nats = NatsServer::start().await;
    let (mailbox, _) =
        start_accounts_auth(&["bob@example.com"], &[("alice@example.com", "pw")]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let dir = tempfile::tempdir().expect("dir");
    let mail = dir.path().join("mail.txt");
    std::fs::write(
        &mail,
        "Subject: curl\r\nFrom: a@remote.test\r\n\r\n.leading dot\r\nhello from curl\r\n",
    )
    .expect("write");
    let mail = mail.to_str().expect("utf-8");
    let smtp = format!(
        "smtp://127.0.0.1:{}/client.test",
        ingress.addr("smtp").port()
    );
    let submission = format!(
        "smtp://127.0.0.1:{}/client.test",
        ingress.addr("submission").port()
    );
    let cases: [(&str, Vec<&str>); 2] = [
        ("plain", vec![smtp.as_str(), "--mail-from", "a@remote.test"]),
        (
            "starttls+auth",
            vec![
                submission.as_str(),
                "--ssl-reqd",
                "-k",
                "--user",
                "alice@example.com:pw",
                "--mail-from",
                "alice@example.com",
            ],
        ),
    ];
    for (name, args) in cases {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-v",
                "--max-time",
                "20",
                "--mail-rcpt",
                "bob@example.com",
                "-T",
                mail,
            ])
            .args(&args)
            .output()
            .await
            .expect("run curl");
        let log = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{name}: {log}");
        let (env, _) = spooled(&nats.url(), &queued_in(&log)).await;
        let body = inline_body(&env);
        let (received, rest) = split_received(&body);
        assert_eq!(
            rest,
            b"Subject: curl\r\nFrom: a@remote.test\r\n\r\n.leading dot\r\nhello from curl\r\n",
            "{name}"
        );
        if name == "starttls+auth" {
            assert_eq!(env.auth_user, "alice@example.com");
            assert!(received.contains("ESMTPSA"), "{received}");
        }
    }
    ingress.stop().await;
}

#[tokio::test]
async fn swaks_plain_and_starttls_on_mx() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let port = ingress.addr("smtp").port().to_string();
    for tls in [None, Some("--tls")] {
        let mut args = vec![
            "--server",
            "127.0.0.1",
            "--port",
            &port,
            "--from",
            "a@remote.test",
            "--to",
            "bob@example.com",
            "--pipeline",
            "--timeout",
            "15",
            "--hide-informational",
        ];
        args.extend(tls);
        let out = tokio::process::Command::new("swaks")
            .args(&args)
            .output()
            .await
            .expect("swaks");
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(out.status.success(), "{t}");
        let (env, _) = spooled(&nats.url(), &queued_in(&t)).await;
        let body = inline_body(&env);
        let (received, _) = split_received(&body);
        assert_eq!(received.contains("ESMTPS"), tls.is_some(), "{received}");
        // Open relay attempt from an untrusted, unauthenticated client.
        let out = tokio::process::Command::new("swaks")
            .args([
                "--server",
                "127.0.0.1",
                "--port",
                &port,
                "--from",
                "a@remote.test",
            ])
            .args(["--to", "victim@elsewhere.test", "--timeout", "15"])
            .output()
            .await
            .expect("swaks");
        let t = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(!out.status.success() && t.contains("554 5.7.1"), "{t}");
    }
    ingress.stop().await;
}

/// Postfix with Tern ingress as its relayhost, on loopback: mail given to
/// Postfix arrives on Tern's spool, over STARTTLS.
#[tokio::test]
async fn postfix_relays_to_tern() {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/bench/ingress/postfix-instance.sh"
    );
    assert!(
        std::path::Path::new("/usr/sbin/postfix").exists(),
        "postfix is required (scripts/deps.sh --test installs it)"
    );
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(
        &nats.url(),
        &mailbox,
        &[("trusted_networks", "127.0.0.1/32")],
    )
    .await;
    let dir = tempfile::tempdir().expect("dir");
    let pf_dir = dir.path().join("postfix");
    let pf_dir_s = pf_dir.to_str().expect("utf-8").to_string();
    let pf_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        l.local_addr().expect("addr").port()
    };
    struct Stop(String, String);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = std::process::Command::new(&self.0)
                .args(["stop", &self.1])
                .status();
        }
    }
    let status = std::process::Command::new(script)
        .args([
            "start",
            &pf_dir_s,
            &pf_port.to_string(),
            &ingress.addr("smtp").port().to_string(),
        ])
        .status()
        .expect("start postfix");
    assert!(status.success(), "postfix did not start");
    let _stop = Stop(script.to_string(), pf_dir_s.clone());
    let pf = std::net::SocketAddr::from(([127, 0, 0, 1], pf_port));
    wait_for("postfix smtpd", Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(pf).await.ok().map(|_| ())
    })
    .await;
    let mut c = Smtp::connect(pf).await;
    c.cmd("EHLO app.test").await;
    let (code, text) = c
        .transaction(
            "app@relay.test",
            &["bob@example.com"],
            b"Subject: through postfix\r\nMessage-ID: <pf-1@relay.test>\r\n\r\n..dot\r\nrelayed\r\n",
        )
        .await;
    assert_eq!(code, 250, "{text}");
    c.cmd("QUIT").await;
    let nats_url = nats.url();
    let env = wait_for(
        "the relayed message on the spool",
        Duration::from_secs(30),
        || {
            let nats_url = nats_url.clone();
            async move { find_by_message_id(&nats_url, "<pf-1@relay.test>").await }
        },
    )
    .await;
    assert_eq!(env.mail_from, "app@relay.test");
    assert_eq!(env.helo, "relay.test");
    let body = inline_body(&env);
    let (received, rest) = split_received(&body);
    assert!(
        received.contains("from relay.test ([127.0.0.1])"),
        "{received}"
    );
    assert!(
        received.contains("with ESMTPS"),
        "Postfix used STARTTLS: {received}"
    );
    let rest = String::from_utf8_lossy(rest);
    assert!(rest.contains("\r\n.dot\r\nrelayed\r\n"), "{rest}");
    ingress.stop().await;
}

/// The spooled envelope whose body has this Message-ID header.
async fn find_by_message_id(nats: &str, message_id: &str) -> Option<tern_proto::Envelope> {
    use prost::Message as _;
    let client = async_nats::connect(nats).await.ok()?;
    let js = async_nats::jetstream::new(client);
    let mut stream = js.get_stream(tern_runtime::bus::SPOOL_STREAM).await.ok()?;
    let last = stream.info().await.ok()?.state.last_sequence;
    for seq in 1..=last {
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        let env = tern_proto::Envelope::decode(msg.payload).ok()?;
        let body = inline_body(&env);
        if String::from_utf8_lossy(&body).contains(&format!("Message-ID: {message_id}")) {
            return Some(env);
        }
    }
    None
}
