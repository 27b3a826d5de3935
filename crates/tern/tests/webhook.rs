//! `tern webhook add|list|del` against a real nats-server: the secret is
//! printed once (last line) and is the one the dispatcher signs with; a
//! tenant lists and deletes only its own webhooks; bad input is refused.
#![allow(clippy::unwrap_used, missing_docs)]

use std::process::{Command, Output};

use async_nats::jetstream;
use tern_stats::hooks::Registry;
use tern_testkit::NatsServer;

fn tern(nats: &str, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TERN_") {
            c.env_remove(k);
        }
    }
    c.args(args).env("TERN_NATS_URL", nats).output().unwrap()
}

fn ok(nats: &str, args: &[&str]) -> String {
    let out = tern(nats, args);
    assert!(
        out.status.success(),
        "tern {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn fails(nats: &str, args: &[&str]) -> String {
    let out = tern(nats, args);
    assert!(!out.status.success(), "tern {args:?} should fail");
    String::from_utf8(out.stderr).unwrap()
}

#[tokio::test]
async fn webhooks_are_added_listed_and_deleted_per_tenant() {
    let nats = NatsServer::start().await;
    let url = nats.url();
    let n = url.as_str();
    ok(n, &["tenant", "add", "acme", "--domain", "acme.test"]);
    ok(n, &["tenant", "add", "globex", "--domain", "globex.test"]);

    let add = ok(
        n,
        &[
            "webhook",
            "add",
            "--tenant",
            "acme",
            "--url",
            "http://127.0.0.1:9/h",
            "--events",
            "bounced,delivered",
        ],
    );
    let secret = add.lines().last().unwrap().to_string();
    assert_eq!(secret.len(), 64, "{add}");
    assert!(secret.chars().all(|c| c.is_ascii_hexdigit()));
    let id = add.split_whitespace().nth(1).unwrap().to_string();
    ok(
        n,
        &[
            "webhook",
            "add",
            "--tenant",
            "globex",
            "--url",
            "http://127.0.0.1:9/g",
        ],
    );

    // The secret shown is the one the dispatcher signs with.
    let js = jetstream::new(async_nats::connect(n).await.unwrap());
    let stored = Registry::open(&js, 1)
        .await
        .unwrap()
        .list("acme")
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].id.as_str(), stored[0].secret.as_str()),
        (id.as_str(), secret.as_str())
    );

    let list = ok(n, &["webhook", "list", "--tenant", "acme"]);
    assert_eq!(
        list,
        format!("{id}\thttp://127.0.0.1:9/h\tbounced,delivered\n")
    );
    assert!(!list.contains(&secret), "list never shows the secret");
    assert!(!ok(n, &["webhook", "list", "--tenant", "globex"]).contains(&id));

    // Another tenant cannot delete it; its own can.
    assert!(fails(n, &["webhook", "del", "--tenant", "globex", &id]).contains(&id));
    ok(n, &["webhook", "del", "--tenant", "acme", &id]);
    assert_eq!(ok(n, &["webhook", "list", "--tenant", "acme"]), "");

    let bad = fails(
        n,
        &["webhook", "add", "--tenant", "acme", "--url", "ftp://x"],
    );
    assert!(bad.contains("ftp://x"), "{bad}");
    let bad = fails(
        n,
        &[
            "webhook",
            "add",
            "--tenant",
            "acme",
            "--url",
            "http://x/",
            "--events",
            "opened",
        ],
    );
    assert!(bad.contains("opened"), "{bad}");
    fails(
        n,
        &["webhook", "add", "--tenant", "nosuch", "--url", "http://x/"],
    );
}
