//! Suppression lists on a real nats-server: what one replica adds or
//! removes, another sees through its watch; scopes (tenant, campaign, the
//! system list); a replica started later loads what is there; a batch check
//! marks exactly the listed recipients.

#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Duration;

use async_nats::jetstream;
use tern_bounce::suppress::{Entry, Index, Reason, Suppressions};
use tern_runtime::Shutdown;
use tern_testkit::{NatsServer, wait_for};

fn entry(tenant: &str, campaign: &str, address: &str, reason: Reason) -> Entry {
    Entry {
        tenant: tenant.into(),
        campaign: campaign.into(),
        address: address.into(),
        reason,
        at_unix_ms: 1_700_000_000_000,
        source: "test".into(),
    }
}

async fn sees(s: &Suppressions, tenant: &str, campaign: &str, address: &str, want: bool) {
    wait_for(
        &format!("{tenant}/{campaign}/{address} suppressed={want}"),
        Duration::from_secs(10),
        || async move { (s.check(tenant, campaign, &[address]) == [want]).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_adds_removes_and_scopes() {
    let nats = NatsServer::start().await;
    let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stop = Shutdown::new();
    let a = Suppressions::open(&js, 1, stop.clone()).await.unwrap();
    let b = Suppressions::open(&js, 1, stop.clone()).await.unwrap();

    a.add(&entry("acme", "", "Bob@Example.COM", Reason::HardBounce))
        .await
        .unwrap();
    a.add(&entry(
        "acme",
        "spring",
        "carol@example.com",
        Reason::Unsubscribe,
    ))
    .await
    .unwrap();
    a.add(&entry("", "", "dave@example.com", Reason::Manual))
        .await
        .unwrap();

    // Case-insensitive, for every campaign of the tenant; not for another tenant.
    sees(&b, "acme", "", "bob@example.com", true).await;
    sees(&b, "acme", "autumn", "BOB@example.com", true).await;
    assert_eq!(b.check("other", "", &["bob@example.com"]), [false]);
    // A list unsubscribe holds for that list only.
    sees(&b, "acme", "spring", "carol@example.com", true).await;
    assert_eq!(b.check("acme", "autumn", &["carol@example.com"]), [false]);
    assert_eq!(b.check("acme", "", &["carol@example.com"]), [false]);
    // The system list applies to plain mail and to every tenant.
    sees(&b, "", "", "dave@example.com", true).await;
    assert_eq!(b.check("acme", "spring", &["dave@example.com"]), [true]);

    // A replica started now loads every entry before it answers.
    let c = Suppressions::open(&js, 1, stop.clone()).await.unwrap();
    assert_eq!(c.len(), 3);
    assert_eq!(
        c.check(
            "acme",
            "spring",
            &["x@example.com", "bob@example.com", "carol@example.com"]
        ),
        [false, true, true]
    );

    let listed = c.list("acme").await.unwrap();
    let got: Vec<_> = listed
        .iter()
        .map(|e| (e.address.as_str(), e.campaign.as_str(), e.reason))
        .collect();
    assert_eq!(
        got,
        [
            ("Bob@Example.COM", "", Reason::HardBounce),
            ("carol@example.com", "spring", Reason::Unsubscribe),
        ]
    );

    assert!(b.remove("acme", "", "bob@example.com").await.unwrap());
    assert!(
        !b.remove("acme", "", "bob@example.com").await.unwrap(),
        "already gone"
    );
    sees(&a, "acme", "", "bob@example.com", false).await;
    sees(&c, "acme", "", "bob@example.com", false).await;
    assert_eq!(c.list("acme").await.unwrap().len(), 1);
    // Opened after the delete: the delete marker is not an entry.
    let d = Suppressions::open(&js, 1, stop.clone()).await.unwrap();
    assert_eq!(d.len(), 2);
    stop.trigger();
}

/// One batch's check answers per recipient, in order: listed addresses (any
/// case) are suppressed, the others are not, another tenant's entries do
/// not count. The cost at a million entries is measured by
/// `benches/suppress.rs`, not asserted here.
#[test]
fn a_batch_check_marks_exactly_the_listed_recipients() {
    let mut ix = Index::default();
    for i in 0..100_000u32 {
        ix.insert("acme", "", &format!("user{i}@example.com"));
    }
    // Another tenant lists an address of the batch (i = 1): not acme's.
    ix.insert("other", "", "user7@example.net");
    assert_eq!(ix.len(), 100_001);
    // Even i: listed (example.com); odd i: not (example.net).
    let batch: Vec<String> = (0..10_000u32)
        .map(|i| {
            let domain = if i % 2 == 0 {
                "example.com"
            } else {
                "example.net"
            };
            let addr = format!("user{}@{domain}", i * 7);
            if i % 4 == 0 {
                addr.to_uppercase()
            } else {
                addr
            }
        })
        .collect();
    let hits = ix.check("acme", "spring", &batch);
    assert_eq!(hits.len(), batch.len());
    for (i, hit) in hits.iter().enumerate() {
        assert_eq!(*hit, i % 2 == 0, "{}", batch[i]);
    }
}
