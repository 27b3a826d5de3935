//! The `/u/TOKEN` endpoint served on a loopback port, driven by curl (a
//! real HTTP client): RFC 8058 one-click POST unsubscribes at once, GET
//! shows the page with its one button, a tampered token gets 404 and
//! changes nothing; suppressions land in a real nats-server.

#![allow(clippy::unwrap_used, missing_docs)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use async_nats::jetstream;
use tern_bounce::suppress::Suppressions;
use tern_bounce::token::{Secret, UnsubscribeFields, unsubscribe_token};
use tern_bounce::unsubscribe::{Names, UnsubscribeState, router};
use tern_runtime::Shutdown;
use tern_testkit::NatsServer;

struct Fixed;
impl Names for Fixed {
    fn tenant(&self, id: u32) -> Option<String> {
        (id == 7).then(|| "acme".to_string())
    }
    fn list(&self, tenant: u32, id: u32) -> Option<String> {
        (tenant == 7 && id == 3).then(|| "newsletter".to_string())
    }
}

/// curl: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

async fn serve(state: Arc<UnsubscribeState>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_click_post_unsubscribes_and_a_tampered_token_changes_nothing() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stop = Shutdown::new();
    let lists = Suppressions::open(&js, 1, stop.clone()).await.unwrap();
    let secret = Secret::from_bytes(&[42u8; 32]).unwrap();
    let token = |list: u32, rcpt: &str| {
        unsubscribe_token(
            &secret,
            &UnsubscribeFields {
                tenant: 7,
                list,
                recipient: rcpt.into(),
            },
        )
        .unwrap()
    };
    let whole = token(0, "bob@example.com");
    let listed = token(3, "carol@example.com");
    let state = Arc::new(UnsubscribeState {
        secret: secret.clone(),
        lists: lists.clone(),
        names: Arc::new(Fixed),
    });
    let addr = serve(state).await;
    let url = |t: &str| format!("http://{addr}/u/{t}");

    // GET: the page, one button, nothing changed yet.
    let (code, page) = curl(&[&url(&whole)]);
    assert_eq!(code, 200, "{page}");
    assert!(
        page.contains("bob@example.com") && page.contains("<button"),
        "{page}"
    );
    assert!(page.contains("name=\"List-Unsubscribe\" value=\"One-Click\""));
    assert_eq!(lists.check("acme", "", &["bob@example.com"]), [false]);

    // A tampered token (one character changed): 404, nothing stored.
    let mut bad = whole.clone().into_bytes();
    bad[10] = if bad[10] == b'a' { b'b' } else { b'a' };
    let bad = String::from_utf8(bad).unwrap();
    let (code, _) = curl(&["-d", "List-Unsubscribe=One-Click", &url(&bad)]);
    assert_eq!(code, 404);
    let (code, _) = curl(&[&url(&bad)]);
    assert_eq!(code, 404);
    assert!(lists.list("acme").await.unwrap().is_empty());

    // A POST without the one-click field does nothing.
    let (code, _) = curl(&["-d", "x=y", &url(&whole)]);
    assert_eq!(code, 400);
    assert_eq!(lists.check("acme", "", &["bob@example.com"]), [false]);

    // RFC 8058 §3.2: the provider's POST unsubscribes at once.
    let (code, body) = curl(&["-d", "List-Unsubscribe=One-Click", &url(&whole)]);
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        lists.check("acme", "any-campaign", &["Bob@example.com"]),
        [true]
    );
    // A list token unsubscribes from that list only.
    let (code, _) = curl(&["-d", "List-Unsubscribe=One-Click", &url(&listed)]);
    assert_eq!(code, 200);
    assert_eq!(
        lists.check("acme", "newsletter", &["carol@example.com"]),
        [true]
    );
    assert_eq!(
        lists.check("acme", "other", &["carol@example.com"]),
        [false]
    );
    let entries = lists.list("acme").await.unwrap();
    assert_eq!(entries.len(), 2);
    assert!(
        entries
            .iter()
            .all(|e| e.reason == tern_bounce::Reason::Unsubscribe)
    );
    stop.trigger();
}
