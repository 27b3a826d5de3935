//! SMTP AUTH failures count toward the mailbox's failed-login throttling:
//! ingress passes the client address in Authenticate, and a throttled
//! answer becomes `454 4.7.0` without the password being checked.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use tern_proto::accounts_client::AccountsClient;
use tern_proto::{AddUserRequest, AuthenticateRequest};
use tern_runtime::Shutdown;
use tern_runtime::config::Source;
use tern_testkit::{NatsServer, wait_for};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

async fn ready(admin: SocketAddr) {
    wait_for("/readyz", DEADLINE, || async move {
        let mut s = TcpStream::connect(admin).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n").await.ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        (out.split_whitespace().nth(1) == Some("200")).then_some(())
    })
    .await;
}

/// Read one (possibly multi-line) SMTP reply: its code and last line.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> (u16, String) {
    loop {
        let mut l = String::new();
        let n = tokio::time::timeout(DEADLINE, r.read_line(&mut l))
            .await
            .expect("reply in time")
            .expect("read");
        assert!(n > 0, "connection closed");
        if l.as_bytes().get(3) != Some(&b'-') {
            let code = l.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0);
            return (code, l);
        }
    }
}

#[tokio::test]
async fn smtp_auth_failures_throttle_the_account_at_the_mailbox() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().display().to_string();

    let src = Source::from_pairs(vec![
        ("data_dir", data_dir.as_str()),
        ("nats_url", url.as_str()),
        ("local_domains", "example.com"),
        ("imap_listen", ""),
        ("imaps_listen", ""),
        ("pop3_listen", ""),
        ("pop3s_listen", ""),
        ("mailbox_grpc_listen", "127.0.0.1:0"),
        ("mailbox_admin_listen", "127.0.0.1:0"),
        ("login_max_failures", "2"),
        ("login_failure_delay", "0s"),
    ]);
    let mailbox = tern_mailbox::bind(tern_mailbox::Config::from_source(&src).expect("config"))
        .await
        .expect("bind mailbox");
    let m: HashMap<_, _> = mailbox.addrs().into_iter().collect();
    let mailbox_url = format!("http://{}", m["mailbox grpc"]);
    let stop = Shutdown::new();
    let mailbox_task = tokio::spawn(mailbox.run(stop.clone()));
    ready(m["mailbox admin"]).await;
    let mut accounts = AccountsClient::connect(mailbox_url.clone())
        .await
        .expect("accounts client");
    accounts
        .add_user(AddUserRequest {
            address: "alice@example.com".into(),
            password: "right".into(),
        })
        .await
        .expect("add user");

    let ingress_dir = tempfile::tempdir().expect("tempdir");
    let ingress_data = ingress_dir.path().display().to_string();
    let src = Source::from_pairs(vec![
        ("smtp_listen", "127.0.0.1:0"),
        ("submission_listen", "127.0.0.1:0"),
        ("submissions_listen", "127.0.0.1:0"),
        ("api_listen", "127.0.0.1:0"),
        ("ingress_grpc_listen", "127.0.0.1:0"),
        ("ingress_admin_listen", "127.0.0.1:0"),
        ("mailbox_url", mailbox_url.as_str()),
        ("nats_url", url.as_str()),
        ("data_dir", ingress_data.as_str()),
        ("hostname", "mx.test"),
        ("local_domains", "example.com"),
        ("auth_plaintext", "true"),
        // Ingress's own per-client lockout stays out of the way.
        ("auth_max_failures", "50"),
        ("auth_failure_delay", "0s"),
    ]);
    let ingress = tern_ingress::bind(tern_ingress::Config::from_source(&src).expect("config"))
        .await
        .expect("bind ingress");
    let i: HashMap<_, _> = ingress.addrs().into_iter().collect();
    let ingress_task = tokio::spawn(ingress.run(stop.clone()));
    ready(i["ingress admin"]).await;

    let (r, mut w) = TcpStream::connect(i["submission"])
        .await
        .expect("connect")
        .into_split();
    let mut r = BufReader::new(r);
    assert_eq!(reply(&mut r).await.0, 220);
    w.write_all(b"EHLO client.test\r\n").await.expect("send");
    assert_eq!(reply(&mut r).await.0, 250);
    let plain = |pw: &str| {
        format!(
            "AUTH PLAIN {}\r\n",
            tern_smtp::sasl::base64_encode(format!("\0alice@example.com\0{pw}").as_bytes())
        )
    };
    for _ in 0..2 {
        w.write_all(plain("wrong").as_bytes()).await.expect("send");
        let (code, text) = reply(&mut r).await;
        assert_eq!(code, 535, "{text}");
    }
    // The mailbox now refuses alice unchecked: the right password too.
    w.write_all(plain("right").as_bytes()).await.expect("send");
    let (code, text) = reply(&mut r).await;
    assert_eq!(code, 454, "{text}");
    assert!(text.contains("4.7.0"), "{text}");

    // The same lock holds for IMAP/POP3/gRPC logins from anywhere.
    let a = accounts
        .authenticate(AuthenticateRequest {
            username: "alice@example.com".into(),
            password: "right".into(),
            client_address: "192.0.2.9".into(),
        })
        .await
        .expect("authenticate")
        .into_inner();
    assert!(!a.ok && a.throttled, "{a:?}");

    stop.trigger();
    let r = tokio::time::timeout(DEADLINE, ingress_task).await;
    assert!(matches!(r, Ok(Ok(Ok(())))), "ingress stops cleanly");
    let r = tokio::time::timeout(DEADLINE, mailbox_task).await;
    assert!(matches!(r, Ok(Ok(Ok(())))), "mailbox stops cleanly");
}
