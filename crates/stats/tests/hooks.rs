//! The webhook registry on a real nats-server: add returns a fresh secret,
//! list shows only the tenant's own webhooks, delete removes one.
#![allow(clippy::unwrap_used, missing_docs)]

use async_nats::jetstream;
use tern_stats::hooks::{HookError, Registry};
use tern_testkit::NatsServer;

#[tokio::test]
async fn webhooks_belong_to_their_tenant() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let reg = Registry::open(&js, 1).await.unwrap();
    let a = reg
        .add("acme", "https://hooks.acme.test/t", vec![])
        .await
        .unwrap();
    let b = reg
        .add("acme", "http://127.0.0.1:9/x", vec!["bounced".into()])
        .await
        .unwrap();
    let g = reg.add("globex", "https://g.test/", vec![]).await.unwrap();
    assert_eq!(a.secret.len(), 64);
    assert_ne!(a.secret, b.secret);
    let mut ids: Vec<String> = reg
        .list("acme")
        .await
        .unwrap()
        .into_iter()
        .map(|h| h.id)
        .collect();
    let mut want = vec![a.id.clone(), b.id.clone()];
    ids.sort();
    want.sort();
    assert_eq!(ids, want);
    assert!(b.wants("acme", "bounced") && !b.wants("acme", "delivered"));
    assert!(!a.wants("globex", "delivered"));
    // A tenant cannot delete another's webhook.
    assert!(!reg.delete("acme", &g.id).await.unwrap());
    assert!(reg.delete("acme", &a.id).await.unwrap());
    assert_eq!(reg.list("acme").await.unwrap(), vec![b]);
    assert_eq!(reg.list("globex").await.unwrap().len(), 1);
    assert!(matches!(
        reg.add("acme", "gopher://x", vec![]).await,
        Err(HookError::Url(_))
    ));
}
