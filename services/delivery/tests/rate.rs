//! The per-destination message rate limit, held by two delivery instances
//! together (they share only NATS, as separate processes do).

mod common;

use common::*;
use tern_proto::Outcome;
use tern_runtime::Shutdown;
use tern_testkit::wait_for;

#[tokio::test]
async fn message_rate_holds_across_two_delivery_instances() {
    let rate = 4u64;
    let config = [
        ("delivery_rate_limits", "plain.test=4/s"),
        ("delivery_concurrency", "8"),
    ];
    let h = Harness::start_extra(&config).await;
    let second = Shutdown::new();
    let d2 = h.base.spawn(&config, second.clone()).await;
    let peer = PyPeer::start("127.0.0.7", &h.base.port, false, &[]);
    let n = 20;
    for i in 0..n {
        h.publish(&job(
            &format!("r{i}"),
            "plain.test",
            &["q@plain.test"],
            BODY,
        ))
        .await;
    }
    wait_for("every job delivered", WAIT * 2, || async {
        (peer.messages().len() >= n).then_some(())
    })
    .await;
    h.wait_jobs_left(0).await;
    let msgs = peer.messages();
    assert_eq!(msgs.len(), n, "each message exactly once");

    // Windows are whole Unix seconds. A message takes its token a moment
    // before it reaches the peer, so one taken at the very end of a second
    // may be counted in the next: allow one such straggler per second.
    let mut per_second = std::collections::BTreeMap::<u64, u64>::new();
    for m in &msgs {
        *per_second.entry(m.at.floor() as u64).or_default() += 1;
    }
    for (second, count) in &per_second {
        assert!(
            *count <= rate + 1,
            "{count} messages arrived in second {second}, limit {rate}/s: {per_second:?}"
        );
    }
    // 20 messages at 4/s fill at least 5 windows; the first may begin at
    // the very end of its second, so the span is at least 3 whole seconds.
    assert!(
        per_second.len() as u64 >= n as u64 / rate,
        "20 messages at 4/s arrived within {} seconds: {per_second:?}",
        per_second.len()
    );
    let (first, last) = msgs
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), m| (a.min(m.at), b.max(m.at)));
    assert!(
        last - first >= (n as u64 / rate - 2) as f64,
        "20 messages at 4/s took only {:.2} s",
        last - first
    );

    // Held-back jobs were not attempts: one delivered result per job, all
    // on the job's first attempt.
    let results = h.results("plain.test").await;
    assert_eq!(results.len(), n);
    assert!(results.iter().all(|r| r.attempt == 0
        && r.results.len() == 1
        && r.results[0].outcome == Outcome::Delivered as i32));
    second.trigger();
    d2.await.unwrap().unwrap();
}
