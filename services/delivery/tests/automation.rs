//! Shaping automation against a real SMTP peer: a Python server on
//! loopback, reached as Google's MX (`aspmx.l.google.com` in the test DNS),
//! answers MAIL with Gmail's `421 4.7.28` rate-limit text. Delivery
//! suspends the (source, provider) pair for every process (NATS KV): the
//! peer sees no connection while it is in force, `tern shaping status`'s
//! function lists it, it ends by itself and the held mail goes out; a
//! second action is lifted early with `clear`.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use prost::Message as _;
use tern_delivery::automation;
use tern_proto::{Event, Outcome};
use tern_runtime::{Shutdown, bus};
use tern_testkit::wait_for;

/// Gmail's reply when it rate-limits a sending IP (multi-line, 421 closes).
const GMAIL_421: &str = "421-4.7.28 [127.0.0.1] Our system has detected an unusual rate of\r\n\
421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n\
421 4.7.28 users from spam, mail from your IP address has been rate limited. - gsmtp\r\n";

const RULES: &str = r#"
[[automation]]
name = "gmail-421-test"
provider = "google"
code = 421
match = '4\.7\.28'
action = "suspend"
duration = "4s"
"#;

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// The shaping events stored so far, oldest first (their `reply` says
/// started/ended/cleared).
async fn shaping_events(h: &Harness) -> Vec<String> {
    let stream = h.js.get_stream(bus::EVENTS_STREAM).await.unwrap();
    let info = stream.get_info().await.unwrap();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await
            && m.subject.as_str() == automation::EVENTS_SUBJECT
        {
            let e = Event::decode(m.payload).unwrap();
            assert_eq!(e.kind, "shaping");
            out.push(e.reply);
        }
    }
    out
}

#[tokio::test]
async fn gmail_421_suspends_the_provider_everywhere_until_it_ends_or_is_cleared() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(&file, RULES).unwrap();
    let throttle = dir.path().join("throttle");
    std::fs::write(&throttle, GMAIL_421).unwrap();
    let path = file.to_str().unwrap().to_string();
    let config = [
        ("shaping_file", path.as_str()),
        ("delivery_concurrency", "4"),
    ];
    let h = Harness::start_extra(&config).await;
    // A second delivery process: the suspension must hold for it too.
    let second = Shutdown::new();
    let d2 = h.base.spawn(&config, second.clone()).await;
    let peer = PyPeer::start(
        "127.0.0.13",
        &h.base.port,
        false,
        &["--throttle-file", throttle.to_str().unwrap()],
    );

    // 1. The throttling reply: deferred, and the action is in force.
    h.publish(&job("g0", "gws.test", &["a@gws.test"], BODY))
        .await;
    let results = wait_for("the throttled attempt's result", WAIT, || async {
        let r = h.results("gws.test").await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    let r = &results[0].results[0];
    assert_eq!(r.outcome, Outcome::Deferred as i32);
    assert_eq!((r.code, r.enhanced.as_str()), (421, "4.7.28"));
    let active = wait_for("the suspension in the bucket", WAIT, || async {
        let s = automation::status(&h.js).await.unwrap();
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert_eq!(active.len(), 1);
    let a = &active[0];
    assert_eq!(
        (
            a.pair.as_str(),
            a.target.as_str(),
            a.rule.as_str(),
            a.action.as_str()
        ),
        (
            "default_provider-google",
            "provider-google",
            "gmail-421-test",
            "suspend"
        )
    );
    assert!(a.reply.contains("unusual rate"), "{}", a.reply);

    // 2. The peer would take mail now, but nothing is sent while the
    // suspension holds, by either process.
    std::fs::remove_file(&throttle).unwrap();
    let conns_before = peer.connections().len();
    for i in 1..=4 {
        h.publish(&job(&format!("g{i}"), "gws.test", &["b@gws.test"], BODY))
            .await;
    }
    let ends_at = a.until_ms as f64 / 1000.0;
    wait_for("the suspension to end by itself", WAIT, || async {
        // Checked on every poll: no connection while it is in force.
        if unix_now() < ends_at - 0.2 {
            assert_eq!(
                peer.connections().len(),
                conns_before,
                "a connection to the suspended provider"
            );
        }
        automation::status(&h.js)
            .await
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    wait_for(
        "the held mail delivered after the suspension",
        WAIT,
        || async { (peer.messages().len() >= 4).then_some(()) },
    )
    .await;
    for m in peer.messages() {
        assert!(
            m.at >= ends_at - 0.2,
            "sent at {} while suspended until {ends_at}",
            m.at
        );
    }
    let events = wait_for("started and ended events", WAIT, || async {
        let e = shaping_events(&h).await;
        (e.len() >= 2).then_some(e)
    })
    .await;
    assert!(
        events[0].starts_with("started: suspend for provider-google"),
        "{events:?}"
    );
    assert!(events[1].starts_with("ended: suspend"), "{events:?}");
    // Exactly one end reported, though two processes saw it expire.
    assert_eq!(events.iter().filter(|e| e.starts_with("ended")).count(), 1);

    // 3. Throttled again: a new action, lifted early by `clear`.
    std::fs::write(&throttle, GMAIL_421).unwrap();
    h.publish(&job("g5", "gws.test", &["c@gws.test"], BODY))
        .await;
    wait_for("the second suspension", WAIT, || async {
        (!automation::status(&h.js).await.unwrap().is_empty()).then_some(())
    })
    .await;
    std::fs::remove_file(&throttle).unwrap();
    let cleared = automation::clear(&h.js, Some("provider-google"))
        .await
        .unwrap();
    assert_eq!(cleared.len(), 1);
    assert!(automation::status(&h.js).await.unwrap().is_empty());
    let cleared_at = unix_now();
    h.publish(&job("g6", "gws.test", &["d@gws.test"], BODY))
        .await;
    wait_for("mail flowing again after clear", WAIT, || async {
        (peer.messages().iter().any(|m| m.rcpts == ["d@gws.test"])).then_some(())
    })
    .await;
    let d = peer
        .messages()
        .into_iter()
        .find(|m| m.rcpts == ["d@gws.test"])
        .unwrap();
    // Well before the 4 s the action would have lasted.
    assert!(
        d.at - cleared_at < 3.0,
        "sent {:.1}s after clear",
        d.at - cleared_at
    );
    assert!(
        shaping_events(&h)
            .await
            .iter()
            .any(|e| e.starts_with("cleared: suspend"))
    );
    second.trigger();
    d2.await.unwrap().unwrap();
}

/// KV operations seen on the wire per bucket: writes are publishes to
/// `$KV.<bucket>.<key>`, reads direct gets on
/// `$JS.API.DIRECT.GET.KV_<bucket>` (a core subscriber sees both).
#[derive(Default, Debug)]
struct KvOps {
    by_bucket: std::collections::BTreeMap<String, u64>,
}

async fn count_kv_ops(
    nats_url: &str,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<KvOps> {
    use futures::StreamExt;
    let client = async_nats::connect(nats_url).await.unwrap();
    let mut writes = client.subscribe("$KV.>").await.unwrap();
    let mut reads = client.subscribe("$JS.API.DIRECT.GET.>").await.unwrap();
    client.flush().await.unwrap();
    tokio::spawn(async move {
        let mut ops = KvOps::default();
        let mut stop = stop;
        loop {
            let subject = tokio::select! {
                Some(m) = writes.next() => m.subject.to_string(),
                Some(m) = reads.next() => m.subject.to_string(),
                _ = &mut stop => return ops,
            };
            let bucket = subject
                .strip_prefix("$KV.")
                .or_else(|| subject.strip_prefix("$JS.API.DIRECT.GET.KV_"))
                .and_then(|s| s.split('.').next())
                .unwrap_or("?")
                .to_string();
            *ops.by_bucket.entry(bucket).or_default() += 1;
        }
    })
}

/// The cost of the cluster-wide state per message, measured on the wire:
/// a healthy run to a shaped provider (connection limit and message rate
/// in KV, automation rules loaded), then replies that match a threshold
/// rule. Printed for the README; the automation check itself must cost
/// nothing per message.
#[tokio::test]
async fn kv_operations_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(
        &file,
        r#"
[provider.google]
connection_limit = 4
rate = "1000/s"

[[automation]]
name = "count-only"
provider = "google"
code = 421
match = '4\.7\.28'
action = "suspend"
duration = "1m"
trigger = "1000 in 5m"
"#,
    )
    .unwrap();
    let throttle = dir.path().join("throttle");
    let path = file.to_str().unwrap().to_string();
    let h = Harness::start_extra(&[
        ("shaping_file", path.as_str()),
        ("delivery_concurrency", "4"),
    ])
    .await;
    let peer = PyPeer::start(
        "127.0.0.13",
        &h.base.port,
        false,
        &["--throttle-file", throttle.to_str().unwrap()],
    );
    // Warm-up: buckets created, first connection opened.
    h.publish(&job("w0", "gws.test", &["w@gws.test"], BODY))
        .await;
    wait_for("warm-up delivered", WAIT, || async {
        (!peer.messages().is_empty()).then_some(())
    })
    .await;

    let n = 60u64;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let counter = count_kv_ops(&h.base.nats_url, rx).await;
    for i in 0..n {
        h.publish(&job(&format!("k{i}"), "gws.test", &["k@gws.test"], BODY))
            .await;
    }
    wait_for("healthy run delivered", WAIT * 2, || async {
        (peer.messages().len() as u64 > n).then_some(())
    })
    .await;
    tx.send(()).unwrap();
    let healthy = counter.await.unwrap();

    std::fs::write(&throttle, GMAIL_421).unwrap();
    let m = 20u64;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let counter = count_kv_ops(&h.base.nats_url, rx).await;
    for i in 0..m {
        h.publish(&job(&format!("t{i}"), "gws.test", &["t@gws.test"], BODY))
            .await;
    }
    wait_for("throttled results", WAIT * 2, || async {
        (peer.events_named("throttled") as u64 >= m).then_some(())
    })
    .await;
    h.wait_results("gws.test", (1 + n + m) as usize).await;
    tx.send(()).unwrap();
    let throttled = counter.await.unwrap();

    let per = |ops: &KvOps, bucket: &str, k: u64| {
        *ops.by_bucket.get(bucket).unwrap_or(&0) as f64 / k as f64
    };
    println!("healthy, {n} messages: {:?}", healthy.by_bucket);
    println!(
        "per message: shaping {:.3}, rates {:.3}, limits {:.3}",
        per(&healthy, "tern-shaping", n),
        per(&healthy, "tern-delivery-rates", n),
        per(&healthy, "tern-delivery-limits", n)
    );
    println!("throttled, {m} matching replies: {:?}", throttled.by_bucket);
    println!(
        "per matching reply: shaping {:.3}",
        per(&throttled, "tern-shaping", m)
    );
    // 20 of a "1000 in 5m" threshold: counted, nothing in force.
    assert!(automation::status(&h.js).await.unwrap().is_empty());
    assert_eq!(
        per(&healthy, "tern-shaping", n),
        0.0,
        "checking for actions in force must not cost a KV operation per message"
    );
    // A matching reply costs a read and a write of its threshold count,
    // plus a round for each of the 4 workers it raced with.
    let per_reply = per(&throttled, "tern-shaping", m);
    assert!(
        (2.0..=8.0).contains(&per_reply),
        "{per_reply} KV ops per matching reply"
    );
}

/// A threshold rule (`3 in 5m`) with the bounce action: the first two
/// matching replies only count; the third sets it off, and the next
/// message is bounced without a connection, naming the rule.
#[tokio::test]
async fn a_threshold_rule_bounces_after_the_third_matching_reply() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("shaping.toml");
    std::fs::write(
        &file,
        r#"
[[automation]]
name = "three-strikes"
provider = "google"
code = 421
match = 'unusual rate'
action = "bounce"
duration = "1m"
trigger = "3 in 5m"
"#,
    )
    .unwrap();
    let throttle = dir.path().join("throttle");
    std::fs::write(&throttle, GMAIL_421).unwrap();
    let path = file.to_str().unwrap().to_string();
    let h = Harness::start_extra(&[
        ("shaping_file", path.as_str()),
        ("delivery_concurrency", "1"),
    ])
    .await;
    let peer = PyPeer::start(
        "127.0.0.13",
        &h.base.port,
        false,
        &["--throttle-file", throttle.to_str().unwrap()],
    );
    for i in 0..3 {
        h.publish(&job(&format!("b{i}"), "gws.test", &["x@gws.test"], BODY))
            .await;
        h.wait_results("gws.test", i + 1).await;
        let in_force = automation::status(&h.js).await.unwrap();
        assert_eq!(
            in_force.is_empty(),
            i < 2,
            "after reply {}: {in_force:?}",
            i + 1
        );
    }
    let conns = peer.connections().len();
    h.publish(&job("b3", "gws.test", &["y@gws.test"], BODY))
        .await;
    h.wait_results("gws.test", 4).await;
    let results = h.results("gws.test").await;
    let last = results.iter().find(|r| r.job_id.starts_with("b3")).unwrap();
    let r = &last.results[0];
    assert_eq!(r.outcome, Outcome::Bounced as i32);
    assert_eq!(r.enhanced, "5.7.1");
    assert!(r.reply.contains("three-strikes"), "{}", r.reply);
    assert_eq!(
        peer.connections().len(),
        conns,
        "no connection for a bounced message"
    );
}
