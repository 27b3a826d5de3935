//! `tern user` against a running mailbox service: accounts, aliases and
//! catch-alls, and quotas, as an operator types them.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use tern_runtime::Shutdown;
use tern_runtime::config::Source;
use tern_testkit::NatsServer;

/// `tern user ARGS` against the mailbox at `url`, with `stdin` piped in.
async fn tern_user(url: &str, args: &[&str], stdin: &str) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    // Only what the test sets: no TERN_* leaks in from the developer's shell.
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            c.env_remove(k);
        }
    }
    c.arg("user")
        .args(args)
        .env("TERN_MAILBOX_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let stdin = stdin.to_string();
    tokio::task::spawn_blocking(move || {
        let mut child = c.spawn().expect("run tern");
        if let Some(mut i) = child.stdin.take() {
            i.write_all(stdin.as_bytes()).expect("stdin");
        }
        child.wait_with_output().expect("tern output")
    })
    .await
    .expect("join")
}

/// Stdout of a successful run.
async fn ok(url: &str, args: &[&str]) -> String {
    let out = tern_user(url, args, "").await;
    assert!(
        out.status.success(),
        "tern user {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stderr of a failed run.
async fn fails(url: &str, args: &[&str]) -> String {
    let out = tern_user(url, args, "").await;
    assert!(!out.status.success(), "tern user {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn user_alias_and_quota_commands() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().display().to_string();
    let nats_url = nats.url();
    let src = Source::from_pairs(vec![
        ("data_dir", data_dir.as_str()),
        ("nats_url", nats_url.as_str()),
        ("local_domains", "example.com"),
        ("imap_listen", ""),
        ("imaps_listen", ""),
        ("pop3_listen", ""),
        ("pop3s_listen", ""),
        ("mailbox_grpc_listen", "127.0.0.1:0"),
        ("mailbox_admin_listen", "127.0.0.1:0"),
    ]);
    let config = tern_mailbox::Config::from_source(&src).expect("config");
    let bound = tern_mailbox::bind(config).await.expect("bind");
    let grpc = bound
        .addrs()
        .into_iter()
        .find(|(n, _)| *n == "mailbox grpc")
        .map(|(_, a)| a)
        .expect("grpc address");
    let url = format!("http://{grpc}");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(bound.run(shutdown.clone()));

    let out = tern_user(&url, &["add", "alice@example.com"], "secret\n").await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_eq!(
        ok(
            &url,
            &["alias", "add", "Sales@example.com", "alice@example.com"]
        )
        .await,
        "alias Sales@example.com -> alice@example.com\n"
    );
    ok(&url, &["alias", "add", "@example.com", "alice@example.com"]).await;
    assert_eq!(
        ok(&url, &["alias", "list"]).await,
        "@example.com\talice@example.com\nsales@example.com\talice@example.com\n"
    );
    assert_eq!(ok(&url, &["alias", "list", "nobody@example.com"]).await, "");
    let err = fails(
        &url,
        &["alias", "add", "x@elsewhere.test", "alice@example.com"],
    )
    .await;
    assert!(err.contains("not a local domain"), "{err}");
    let err = fails(&url, &["alias", "add", "x@example.com", "bob@example.com"]).await;
    assert!(err.contains("bob@example.com does not exist"), "{err}");
    assert_eq!(
        ok(&url, &["alias", "del", "sales@example.com"]).await,
        "deleted alias sales@example.com\n"
    );
    assert_eq!(
        ok(&url, &["alias", "list", "alice@example.com"]).await,
        "@example.com\talice@example.com\n"
    );

    assert_eq!(
        ok(&url, &["quota", "alice@example.com"]).await,
        "alice@example.com: 0 bytes used, no quota\n"
    );
    assert_eq!(
        ok(&url, &["quota", "alice@example.com", "10M"]).await,
        "alice@example.com: 0 of 10485760 bytes used (0%)\n"
    );
    assert_eq!(
        ok(&url, &["quota", "Alice@example.com"]).await,
        "alice@example.com: 0 of 10485760 bytes used (0%)\n"
    );
    assert_eq!(
        ok(&url, &["quota", "alice@example.com", "none"]).await,
        "alice@example.com: 0 bytes used, no quota\n"
    );
    let err = fails(&url, &["quota", "alice@example.com", "lots"]).await;
    assert!(err.contains("bad quota"), "{err}");
    let err = fails(&url, &["quota", "nobody@example.com"]).await;
    assert!(err.contains("does not exist"), "{err}");

    shutdown.trigger();
    let r = tokio::time::timeout(std::time::Duration::from_secs(20), task)
        .await
        .expect("mailbox stops");
    assert!(matches!(r, Ok(Ok(()))), "{r:?}");
}
