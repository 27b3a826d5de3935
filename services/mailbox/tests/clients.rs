//! The mailbox with real mail clients (fetchmail over POP3 and IMAP, mutt
//! driven through tmux), across restarts (UIDVALIDITY and UIDs kept, on
//! SQLite and PostgreSQL), and the account features: aliases and
//! catch-alls, quotas, failed-login throttling and POP3 maildrop locking.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{DEADLINE, Mailbox, Raw, run, tool};
use tern_proto::accounts_client::AccountsClient;
use tern_proto::{
    AddAliasRequest, AuthenticateRequest, CheckRecipientRequest, DeleteAliasRequest,
    DeleteUserRequest, ListAliasesRequest, Outcome, QuotaRequest,
};
use tern_testkit::{NatsServer, wait_for};

fn body(subject: &str) -> Vec<u8> {
    format!(
        "From: Sender <sender@remote.test>\r\nTo: someone@example.com\r\nSubject: {subject}\r\n\
         Message-ID: <{subject}@remote.test>\r\n\r\nHello, this is {subject}.\r\n.leading dot\r\n"
    )
    .into_bytes()
}

/// Start the mailbox on SQLite in `dir`.
async fn sqlite(dir: &Path, nats: &NatsServer, extra: &[(&str, &str)]) -> Mailbox {
    Mailbox::start(dir, &nats.url(), extra).await
}

/// Start NATS and the mailbox (with `extra` config) and run `scenario`
/// on it; the scenario stops the mailbox.
async fn with_mailbox<F>(extra: &[(&str, &str)], scenario: impl FnOnce(Mailbox) -> F)
where
    F: std::future::Future<Output = ()>,
{
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    scenario(sqlite(dir.path(), &nats, extra).await).await;
}

// ---------------------------------------------------------------- aliases

#[tokio::test]
async fn aliases_and_catch_all_route_mail_to_accounts() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(dir.path(), &nats, &[]).await;
    m.add_user("alice@example.com", "pw").await;
    m.add_user("bob@example.com", "pw").await;
    let mut a = m.accounts().await;
    let add = |alias: &str, target: &str| AddAliasRequest {
        alias: alias.into(),
        target: target.into(),
    };
    a.add_alias(add("Sales@Example.com", "alice@example.com"))
        .await
        .unwrap();
    a.add_alias(add("@example.org", "bob@example.com"))
        .await
        .unwrap();
    // Refusals: taken, an account's address, a foreign domain, no target.
    let code = |r: Result<tonic::Response<_>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(
            a.add_alias(add("sales@example.com", "bob@example.com"))
                .await
        ),
        tonic::Code::AlreadyExists
    );
    assert_eq!(
        code(
            a.add_alias(add("bob@example.com", "alice@example.com"))
                .await
        ),
        tonic::Code::AlreadyExists
    );
    assert_eq!(
        code(
            a.add_alias(add("x@elsewhere.test", "alice@example.com"))
                .await
        ),
        tonic::Code::FailedPrecondition
    );
    assert_eq!(
        code(
            a.add_alias(add("x@example.com", "nobody@example.com"))
                .await
        ),
        tonic::Code::NotFound
    );
    assert_eq!(
        code(a.add_alias(add("@", "alice@example.com")).await),
        tonic::Code::InvalidArgument
    );
    let list = a
        .list_aliases(ListAliasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .aliases;
    let pairs: Vec<(String, String)> = list.into_iter().map(|x| (x.alias, x.target)).collect();
    assert_eq!(
        pairs,
        vec![
            ("@example.org".into(), "bob@example.com".into()),
            ("sales@example.com".into(), "alice@example.com".into()),
        ]
    );

    // Ingress's RCPT check sees aliases, the catch-all and extensions.
    let exists = |address: &str| CheckRecipientRequest {
        address: address.into(),
    };
    for (address, want) in [
        ("sales@example.com", true),
        ("SALES@example.com", true),
        ("anyone@example.org", true),
        ("anyone@example.com", false),
        // Address extensions (TERN_RECIPIENT_DELIMITER, default "+").
        ("alice+lists@example.com", true),
        ("sales+q4@example.com", true),
        ("anyone+x@example.com", false),
    ] {
        let got = a
            .check_recipient(exists(address))
            .await
            .unwrap()
            .into_inner()
            .exists;
        assert_eq!(got, want, "{address}");
    }

    // Delivery: to the account, Delivered-To the original recipient.
    let r = m
        .deliver(
            "01ALIAS1",
            &["sales@example.com", "whoever@example.org"],
            &body("alias"),
        )
        .await;
    assert!(
        r.results.iter().all(|x| x.outcome() == Outcome::Delivered),
        "{r:?}"
    );
    let mut pop = Raw::connect(m.addr("pop3")).await;
    assert!(pop.line().await.starts_with("+OK"));
    pop.cmd("USER alice@example.com\r\n").await;
    assert!(
        pop.cmd("PASS pw\r\n")
            .await
            .starts_with("+OK maildrop has 1")
    );
    let msg = pop.cmd_until("RETR 1\r\n", ".\r").await.concat();
    assert!(msg.contains("Delivered-To: sales@example.com\r\n"), "{msg}");
    pop.cmd("QUIT\r\n").await;
    let mut pop = Raw::connect(m.addr("pop3")).await;
    pop.line().await;
    pop.cmd("USER bob@example.com\r\n").await;
    assert!(
        pop.cmd("PASS pw\r\n")
            .await
            .starts_with("+OK maildrop has 1")
    );
    let msg = pop.cmd_until("RETR 1\r\n", ".\r").await.concat();
    assert!(
        msg.contains("Delivered-To: whoever@example.org\r\n"),
        "{msg}"
    );
    pop.cmd("QUIT\r\n").await;

    // Deleting the alias, then the catch-all's account, stops both.
    a.delete_alias(DeleteAliasRequest {
        alias: "sales@example.com".into(),
    })
    .await
    .unwrap();
    a.delete_user(DeleteUserRequest {
        address: "bob@example.com".into(),
    })
    .await
    .unwrap();
    for address in ["sales@example.com", "anyone@example.org"] {
        let got = a
            .check_recipient(exists(address))
            .await
            .unwrap()
            .into_inner()
            .exists;
        assert!(!got, "{address}");
    }
    let r = m
        .deliver("01ALIAS2", &["sales@example.com"], &body("gone"))
        .await;
    assert_eq!(
        (r.results[0].outcome(), r.results[0].code),
        (Outcome::Bounced, 550)
    );
    assert!(
        a.list_aliases(ListAliasesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .aliases
            .is_empty()
    );
    m.stop().await;
}

// ------------------------------------------------------------------ quota

#[tokio::test]
async fn quota_call_shows_and_sets_the_quota() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(dir.path(), &nats, &[]).await;
    m.add_user("alice@example.com", "pw").await;
    let mut a = m.accounts().await;
    let quota = |set: Option<u64>| QuotaRequest {
        address: "Alice@example.com".into(),
        set: set.is_some(),
        quota_bytes: set.unwrap_or(0),
    };
    let q = a.quota(quota(None)).await.unwrap().into_inner();
    assert_eq!(
        (q.address.as_str(), q.quota_bytes, q.used_bytes),
        ("alice@example.com", 0, 0)
    );
    let r = m
        .deliver("01QUOTA1", &["alice@example.com"], &body("one"))
        .await;
    assert_eq!(r.results[0].outcome(), Outcome::Delivered);
    let used = a.quota(quota(None)).await.unwrap().into_inner().used_bytes;
    assert!(used > 0);
    // A quota below the usage: the next delivery is deferred.
    let q = a.quota(quota(Some(used))).await.unwrap().into_inner();
    assert_eq!((q.quota_bytes, q.used_bytes), (used, used));
    let r = m
        .deliver("01QUOTA2", &["alice@example.com"], &body("two"))
        .await;
    assert_eq!(
        (r.results[0].outcome(), r.results[0].code),
        (Outcome::Deferred, 452)
    );
    // Unlimited again.
    let q = a.quota(quota(Some(0))).await.unwrap().into_inner();
    assert_eq!(q.quota_bytes, 0);
    let missing = a
        .quota(QuotaRequest {
            address: "nobody@example.com".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    m.stop().await;
}

// ------------------------------------------------------------- throttling

/// Three failures in the window lock an account or a client for 10 minutes.
const THROTTLE: [(&str, &str); 3] = [
    ("login_max_failures", "3"),
    ("login_failure_window", "10m"),
    ("login_failure_delay", "0s"),
];

/// Ingress's Authenticate call for `user` from `client`: (ok, throttled).
async fn authenticate(
    grpc: &AccountsClient<tonic::transport::Channel>,
    user: &str,
    pw: &str,
    client: &str,
) -> (bool, bool) {
    let g = grpc
        .clone()
        .authenticate(AuthenticateRequest {
            username: user.into(),
            password: pw.into(),
            client_address: client.into(),
        })
        .await
        .unwrap()
        .into_inner();
    (g.ok, g.throttled)
}

/// An IMAP connection to `addr` after three LOGINs as `user` with a wrong
/// password (tags a1 to a3), each answered as a failure.
async fn three_wrong_imap_logins(addr: SocketAddr, user: &str) -> Raw {
    let mut imap = Raw::connect(addr).await;
    imap.line().await;
    for i in 1..=3 {
        let r = imap.cmd(&format!("a{i} LOGIN {user} wrong\r\n")).await;
        assert!(
            r.starts_with(&format!("a{i} NO [AUTHENTICATIONFAILED]")),
            "{r}"
        );
    }
    imap
}

#[tokio::test]
async fn failed_logins_are_throttled_per_account_and_per_client() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(dir.path(), &nats, &THROTTLE).await;
    for u in ["alice", "bob", "carol"] {
        m.add_user(&format!("{u}@example.com"), "right").await;
    }
    let a = m.accounts().await;

    // Per account: three wrong IMAP passwords for alice (from loopback)...
    let mut imap = three_wrong_imap_logins(m.addr("imap"), "alice@example.com").await;
    // ...and now even the right one is refused, unchecked, on every path.
    let r = imap.cmd("a4 LOGIN alice@example.com right\r\n").await;
    assert!(r.starts_with("a4 NO [UNAVAILABLE]"), "{r}");
    let r = imap
        .cmd("a5 AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUuY29tAHJpZ2h0\r\n")
        .await;
    assert!(r.starts_with("a5 NO [UNAVAILABLE]"), "{r}");
    let mut pop = Raw::connect(m.addr("pop3")).await;
    pop.line().await;
    pop.cmd("USER alice@example.com\r\n").await;
    let r = pop.cmd("PASS right\r\n").await;
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    assert_eq!(
        authenticate(&a, "alice@example.com", "right", "192.0.2.50").await,
        (false, true)
    );

    // Per client: loopback has three failures too, so bob is refused from
    // there over IMAP and POP3, but not from another address over gRPC.
    let r = imap.cmd("a6 LOGIN bob@example.com right\r\n").await;
    assert!(r.starts_with("a6 NO [UNAVAILABLE]"), "{r}");
    assert_eq!(
        authenticate(&a, "bob@example.com", "right", "192.0.2.50").await,
        (true, false)
    );

    // gRPC counts per client address (ingress passes the SMTP client's).
    for user in ["x@example.com", "y@example.com", "z@example.com"] {
        assert_eq!(
            authenticate(&a, user, "guess", "2001:db8::1").await,
            (false, false)
        );
    }
    // The same /64 is the same client.
    assert_eq!(
        authenticate(&a, "carol@example.com", "right", "2001:db8::2").await,
        (false, true)
    );
    assert_eq!(
        authenticate(&a, "carol@example.com", "right", "2001:db8:0:1::2").await,
        (true, false)
    );
    m.stop().await;
}

// ---------------------------------------------------------- POP3 locking

#[tokio::test]
async fn pop3_maildrop_is_locked_by_one_session_at_a_time() {
    let nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(dir.path(), &nats, &[]).await;
    m.add_user("alice@example.com", "pw").await;
    m.deliver("01LOCK1", &["alice@example.com"], &body("lock"))
        .await;
    pop3_lock_scenario(m.addr("pop3"), m.addr("pop3")).await;
    m.stop().await;
}

/// Sessions through `a` and `b` (one replica twice, or two replicas) for
/// alice, whose maildrop holds one message.
async fn pop3_lock_scenario(a: SocketAddr, b: SocketAddr) {
    let login = |addr| pop3_login(addr, "alice@example.com");
    let (mut first, r) = login(a).await;
    assert!(r.starts_with("+OK maildrop has 1"), "{r}");
    // RFC 1939 §8: a second session cannot open the locked maildrop...
    let (mut second, r) = login(b).await;
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    // ...but stays in AUTHORIZATION and may try again once it is free.
    assert!(first.cmd("DELE 1\r\n").await.starts_with("+OK"));
    assert!(first.cmd("QUIT\r\n").await.starts_with("+OK"));
    second.cmd("USER alice@example.com\r\n").await;
    let r = second.cmd("PASS pw\r\n").await;
    assert!(r.starts_with("+OK maildrop has 0"), "{r}");
    // A dropped connection releases the lock too; a login right after it
    // waits for the old session to end instead of failing.
    drop(second);
    let (mut c, r) = login(a).await;
    assert!(r.starts_with("+OK maildrop has 0"), "{r}");
    assert!(c.cmd("QUIT\r\n").await.starts_with("+OK"));
}

/// A POP3 connection to `addr` after USER `user` and PASS `pw`, and the
/// answer to PASS.
async fn pop3_login(addr: SocketAddr, user: &str) -> (Raw, String) {
    let mut c = Raw::connect(addr).await;
    c.line().await;
    c.cmd(&format!("USER {user}\r\n")).await;
    let r = c.cmd("PASS pw\r\n").await;
    (c, r)
}

// -------------------------------------------------------- across replicas

/// `extra` plus the database of the mailbox in `dir`: the config of
/// another replica of it.
fn replica_of<'a>(dir: &Path, extra: &[(&'a str, &'a str)]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = extra
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    pairs.push((
        "database_url".into(),
        format!("sqlite://{}/mailbox.db", dir.display()),
    ));
    pairs
}

fn pairs(owned: &[(String, String)]) -> Vec<(&str, &str)> {
    owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// Failures made through one replica make the other refuse the account and
/// the client; a success through one clears the account for both; the
/// counts survive restarting every replica.
#[tokio::test]
async fn failed_logins_are_counted_across_replicas_and_restarts() {
    let nats = NatsServer::start().await;
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let one = sqlite(dir1.path(), &nats, &THROTTLE).await;
    let two_config = replica_of(dir1.path(), &THROTTLE);
    let two = sqlite(dir2.path(), &nats, &pairs(&two_config)).await;
    for u in ["alice", "bob", "carol"] {
        one.add_user(&format!("{u}@example.com"), "pw").await;
    }

    // Three wrong passwords for alice through replica one...
    three_wrong_imap_logins(one.addr("imap"), "alice@example.com").await;
    // ...and replica two refuses her over IMAP, POP3 and gRPC (from any
    // client), and refuses bob from the same client.
    let mut imap2 = Raw::connect(two.addr("imap")).await;
    imap2.line().await;
    let r = imap2.cmd("b1 LOGIN alice@example.com pw\r\n").await;
    assert!(r.starts_with("b1 NO [UNAVAILABLE]"), "{r}");
    let (_, r) = pop3_login(two.addr("pop3"), "alice@example.com").await;
    assert!(r.starts_with("-ERR [SYS/TEMP]"), "{r}");
    let grpc2 = two.accounts().await;
    assert_eq!(
        authenticate(&grpc2, "alice@example.com", "pw", "192.0.2.50").await,
        (false, true)
    );
    let r = imap2.cmd("b2 LOGIN bob@example.com pw\r\n").await;
    assert!(r.starts_with("b2 NO [UNAVAILABLE]"), "{r}");

    // A success through replica two clears carol's count for replica one:
    // two failures, a success, two failures is not three in a row.
    let grpc1 = one.accounts().await;
    for (replica, pw, client, ok) in [
        (&grpc1, "wrong", "192.0.2.1", false),
        (&grpc1, "wrong", "192.0.2.2", false),
        (&grpc2, "pw", "192.0.2.3", true),
        (&grpc1, "wrong", "192.0.2.4", false),
        (&grpc1, "wrong", "192.0.2.5", false),
        (&grpc2, "pw", "192.0.2.6", true),
    ] {
        let got = authenticate(replica, "carol@example.com", pw, client).await;
        assert_eq!(got, (ok, false), "{pw} from {client}");
    }

    // Both replicas restart (one after the other is gone): alice is still
    // refused, from a client that never failed.
    two.stop().await;
    one.stop().await;
    let one = sqlite(dir1.path(), &nats, &THROTTLE).await;
    let grpc = one.accounts().await;
    let alice = authenticate(&grpc, "alice@example.com", "pw", "198.51.100.7").await;
    assert_eq!(alice, (false, true));
    let bob = authenticate(&grpc, "bob@example.com", "pw", "198.51.100.7").await;
    assert_eq!(bob, (true, false));
    one.stop().await;
}

/// A replica on its own runtime and thread, so that it can crash: dropping
/// the runtime ends all of its tasks at once (sessions, lock refreshes, its
/// NATS connection), with none of the shutdown path.
struct Crashable {
    pop3: SocketAddr,
    crash: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Crashable {
    async fn start(dir: &Path, nats: &NatsServer, config: Vec<(String, String)>) -> Crashable {
        let (dir, url) = (dir.to_path_buf(), nats.url());
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (crash, crashed) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let m = rt.block_on(Mailbox::start(&dir, &url, &pairs(&config)));
            addr_tx.send(m.addr("pop3")).unwrap();
            let _ = crashed.recv();
            rt.shutdown_background();
            // Its handles belong to the runtime that is gone.
            std::mem::forget(m);
        });
        Crashable {
            pop3: addr_rx.await.unwrap(),
            crash,
            thread,
        }
    }

    fn crash(self) {
        self.crash.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

/// A POP3 session on one replica keeps sessions on the others out until it
/// ends (QUIT or a dropped connection); the lock of a replica that crashed
/// expires.
#[tokio::test]
async fn pop3_maildrop_lock_holds_across_replicas() {
    let nats = NatsServer::start().await;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let one = sqlite(dirs[0].path(), &nats, &[("pop3_lock_ttl", "3s")]).await;
    one.add_user("alice@example.com", "pw").await;
    // Delivered before replica two shares the test's results consumer.
    one.deliver("01LOCK2", &["alice@example.com"], &body("lock"))
        .await;
    let two_config = replica_of(dirs[0].path(), &[]);
    let two = sqlite(dirs[1].path(), &nats, &pairs(&two_config)).await;
    // QUIT or a dropped connection on replica one frees it for replica two.
    pop3_lock_scenario(one.addr("pop3"), two.addr("pop3")).await;
    let alice = |addr| pop3_login(addr, "alice@example.com");

    // A session outlives its lock's TTL (3 s on replica one; two refused
    // logins take over 4 s): the lock is refreshed.
    let (mut held, r) = alice(one.addr("pop3")).await;
    assert!(r.starts_with("+OK"), "{r}");
    for _ in 0..2 {
        let (_, r) = alice(two.addr("pop3")).await;
        assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    }
    assert!(held.cmd("QUIT\r\n").await.starts_with("+OK"));

    // A replica that crashes holding the lock never releases it; it expires
    // within that replica's pop3_lock_ttl (refreshed every third of it, so
    // it outlives the 2 s a login waits by at least 4 s).
    let three = Crashable::start(
        dirs[2].path(),
        &nats,
        replica_of(dirs[0].path(), &[("pop3_lock_ttl", "10s")]),
    )
    .await;
    let (_held, r) = alice(three.pop3).await;
    assert!(r.starts_with("+OK"), "{r}");
    three.crash();
    let (_, r) = alice(one.addr("pop3")).await;
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    let mut c = wait_for("the crashed replica's lock to expire", DEADLINE, || async {
        let (c, r) = alice(two.addr("pop3")).await;
        r.starts_with("+OK").then_some(c)
    })
    .await;
    assert!(c.cmd("QUIT\r\n").await.starts_with("+OK"));
    two.stop().await;
    one.stop().await;
}

/// With NATS stopped, logins still work, the throttle and the POP3 lock
/// still hold within the replica, and each fallback is counted; once NATS
/// is back the bucket is used again, and what was counted during the
/// outage still applies.
#[tokio::test]
async fn nats_outage_falls_back_to_the_replicas_own_state() {
    let mut nats = NatsServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(dir.path(), &nats, &THROTTLE).await;
    for u in ["alice", "bob", "carol"] {
        m.add_user(&format!("{u}@example.com"), "pw").await;
    }
    nats.stop();

    let mut imap = Raw::connect(m.addr("imap")).await;
    imap.line().await;
    let r = imap.cmd("a0 LOGIN bob@example.com pw\r\n").await;
    assert!(r.starts_with("a0 OK"), "{r}");
    let carol = |addr| pop3_login(addr, "carol@example.com");
    let (mut first, r) = carol(m.addr("pop3")).await;
    assert!(r.starts_with("+OK"), "{r}");
    let (_, r) = carol(m.addr("pop3")).await;
    assert!(r.starts_with("-ERR [IN-USE]"), "{r}");
    assert!(first.cmd("QUIT\r\n").await.starts_with("+OK"));
    let mut imap = three_wrong_imap_logins(m.addr("imap"), "alice@example.com").await;
    let r = imap.cmd("a4 LOGIN alice@example.com pw\r\n").await;
    assert!(r.starts_with("a4 NO [UNAVAILABLE]"), "{r}");
    let metrics = common::http_get(m.addr("mailbox admin"), "/metrics")
        .await
        .unwrap();
    for what in ["login_throttle", "pop3_lock"] {
        let line = format!("tern_mailbox_kv_fallbacks_total{{what=\"{what}\"}}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    nats.restart().await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let bucket = js
        .get_key_value(tern_runtime::bus::LOGIN_FAILURES_BUCKET)
        .await
        .unwrap();
    let grpc = m.accounts().await;
    let mut n = 0;
    wait_for("failures to reach the bucket again", DEADLINE, || {
        // A new name and client each time, so no local count gets in the way.
        n += 1;
        let (grpc, bucket) = (grpc.clone(), bucket.clone());
        async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let user = format!("guess{n}@example.com");
            let client = format!("198.51.{}.{}", n / 256, n % 256);
            authenticate(&grpc, &user, "guess", &client).await;
            let keys = bucket.keys().await.ok()?;
            futures::StreamExt::next(&mut Box::pin(keys))
                .await
                .map(|_| ())
        }
    })
    .await;
    let r = imap.cmd("a5 LOGIN alice@example.com pw\r\n").await;
    assert!(r.starts_with("a5 NO [UNAVAILABLE]"), "{r}");
    m.stop().await;
}

// --------------------------------------------------------------- restart

async fn restart_keeps_uids(nats: &NatsServer, extra: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let m = sqlite(dir.path(), nats, extra).await;
    m.add_user("alice@example.com", "pw").await;
    for id in ["01RST1", "01RST2"] {
        m.deliver(id, &["alice@example.com"], &body(id)).await;
    }
    let before = imap_uid_state(&m).await;
    let uidl_before = pop3_uidl(&m).await;
    assert_eq!(before.1, vec![1, 2]);
    assert_eq!(before.2, 3);
    m.stop().await;

    // A new process on the same database.
    let m = sqlite(dir.path(), nats, extra).await;
    assert_eq!(imap_uid_state(&m).await, before);
    assert_eq!(pop3_uidl(&m).await, uidl_before);
    m.deliver("01RST3", &["alice@example.com"], &body("third"))
        .await;
    let after = imap_uid_state(&m).await;
    assert_eq!(after.0, before.0, "UIDVALIDITY unchanged");
    assert_eq!(after.1, vec![1, 2, 3], "UIDs continue from UIDNEXT");
    m.stop().await;
}

/// (UIDVALIDITY, UIDs, UIDNEXT) of alice's INBOX over IMAP.
async fn imap_uid_state(m: &Mailbox) -> (u32, Vec<u32>, u32) {
    let mut c = Raw::connect(m.addr("imap")).await;
    c.line().await;
    assert!(
        c.cmd("a LOGIN alice@example.com pw\r\n")
            .await
            .starts_with("a OK")
    );
    let lines = c.cmd_until("b SELECT INBOX\r\n", "b ").await;
    let num = |key: &str| -> u32 {
        let l = lines.iter().find(|l| l.contains(key)).unwrap();
        let rest = &l[l.find(key).unwrap() + key.len()..];
        rest.trim_start()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (validity, next) = (num("[UIDVALIDITY"), num("[UIDNEXT"));
    let search = c.cmd_until("c UID SEARCH ALL\r\n", "c ").await;
    let uids = search
        .iter()
        .find(|l| l.starts_with("* SEARCH"))
        .unwrap()
        .split_whitespace()
        .skip(2)
        .map(|u| u.parse().unwrap())
        .collect();
    c.cmd_until("d LOGOUT\r\n", "d ").await;
    (validity, uids, next)
}

/// POP3 UIDL lines of alice's maildrop.
async fn pop3_uidl(m: &Mailbox) -> Vec<String> {
    let mut c = Raw::connect(m.addr("pop3")).await;
    c.line().await;
    c.cmd("USER alice@example.com\r\n").await;
    assert!(c.cmd("PASS pw\r\n").await.starts_with("+OK"));
    let lines = c.cmd_until("UIDL\r\n", ".\r").await;
    c.cmd("QUIT\r\n").await;
    lines
}

common::backend_tests!(
    restart_keeps_uidvalidity_and_uids,
    restart_keeps_uidvalidity_and_uids_on_postgres,
    |db| {
        restart_keeps_uids(&NatsServer::start().await, db).await;
    }
);

// ------------------------------------------------------------- fetchmail

/// Write a fetchmail rc file (it insists on mode 0600) polling `port`.
fn fetchmail_rc(dir: &Path, name: &str, proto: &str, port: u16, keep: bool, out: &Path) -> String {
    let rc = dir.join(name);
    let keep = if keep { "keep" } else { "nokeep" };
    // STARTTLS/STLS with the service's self-signed certificate.
    let text = format!(
        "set no syslog\n\
         poll 127.0.0.1 service {port} protocol {proto} timeout 20\n\
         \x20 user \"alice@example.com\" there with password \"secret\" is \"alice\" here\n\
         \x20 options fetchall {keep} sslproto TLS1.2+ no sslcertck\n\
         \x20 mda \"cat >> {out}\"\n",
        out = out.display()
    );
    std::fs::write(&rc, text).unwrap();
    std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    rc.display().to_string()
}

async fn fetchmail(bin: &Path, home: &Path, rc: &str) -> String {
    let mut cmd = Command::new(bin);
    cmd.args(["--nodetach", "--nosyslog", "-v", "-f", rc])
        .env("HOME", home)
        .env("FETCHMAILHOME", home);
    let out = run(cmd).await;
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Exit 0: mail retrieved; 1: no mail. Anything else is an error.
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "fetchmail failed ({}):\n{log}",
        out.status
    );
    log
}

async fn fetchmail_scenario(m: Mailbox) {
    let Some(bin) = tool("fetchmail", "fetchmail", "FETCHMAIL") else {
        m.stop().await;
        return;
    };
    m.add_user("alice@example.com", "secret").await;
    for id in ["01FM1", "01FM2"] {
        let r = m.deliver(id, &["alice@example.com"], &body(id)).await;
        assert_eq!(r.results[0].outcome(), Outcome::Delivered);
    }
    let home = tempfile::tempdir().unwrap();
    let count = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .matches("Subject: 01FM")
            .count()
    };

    // POP3 with `keep`: both retrieved, nothing deleted.
    let out = home.path().join("pop3.mbox");
    let rc = fetchmail_rc(
        home.path(),
        "pop3rc",
        "POP3",
        m.addr("pop3").port(),
        true,
        &out,
    );
    let log = fetchmail(&bin, home.path(), &rc).await;
    assert_eq!(count(&out), 2, "{log}");
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("Delivered-To: alice@example.com"), "{text}");
    assert!(text.contains("\n.leading dot"), "dot-unstuffed: {text}");
    assert!(log.contains("STLS"), "used STLS: {log}");

    // IMAP without `keep`: both retrieved again, then deleted.
    let out = home.path().join("imap.mbox");
    let rc = fetchmail_rc(
        home.path(),
        "imaprc",
        "IMAP",
        m.addr("imap").port(),
        false,
        &out,
    );
    let log = fetchmail(&bin, home.path(), &rc).await;
    assert_eq!(count(&out), 2, "{log}");
    assert!(log.contains("STARTTLS"), "used STARTTLS: {log}");

    // Gone for every protocol.
    let mut c = Raw::connect(m.addr("pop3")).await;
    c.line().await;
    c.cmd("USER alice@example.com\r\n").await;
    let r = c.cmd("PASS secret\r\n").await;
    assert!(r.starts_with("+OK maildrop has 0"), "{r}");
    c.cmd("QUIT\r\n").await;
    // A second POP3 run finds nothing (exit 1).
    let out = home.path().join("again.mbox");
    let rc = fetchmail_rc(
        home.path(),
        "againrc",
        "POP3",
        m.addr("pop3").port(),
        true,
        &out,
    );
    fetchmail(&bin, home.path(), &rc).await;
    assert_eq!(count(&out), 0);
    m.stop().await;
}

common::backend_tests!(
    fetchmail_retrieves_over_pop3_and_imap,
    fetchmail_retrieves_over_pop3_and_imap_on_postgres,
    |db| {
        with_mailbox(db, fetchmail_scenario).await;
    }
);

// ------------------------------------------------------------ mutt + tmux

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    bin: std::path::PathBuf,
    socket: std::path::PathBuf,
}

impl Tmux {
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("-S").arg(&self.socket);
        c
    }

    async fn keys(&self, keys: &[&str]) {
        let mut c = self.cmd();
        c.args(["send-keys", "-t", "mutt"]).args(keys);
        assert!(run(c).await.status.success());
    }

    async fn screen(&self) -> String {
        let mut c = self.cmd();
        c.args(["capture-pane", "-p", "-t", "mutt"]);
        String::from_utf8_lossy(&run(c).await.stdout).into_owned()
    }

    /// Poll the screen until it contains `text` (bounded by DEADLINE).
    async fn wait_for(&self, text: &str) -> String {
        let start = std::time::Instant::now();
        loop {
            let s = self.screen().await;
            if s.contains(text) {
                return s;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "screen never showed {text:?}:\n{s}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

async fn mutt_scenario(m: Mailbox) {
    let (Some(mutt), Some(tmux)) = (tool("mutt", "mutt", "MUTT"), tool("tmux", "tmux", "TMUX"))
    else {
        m.stop().await;
        return;
    };
    m.add_user("alice@example.com", "secret").await;
    m.deliver("01MUTT1", &["alice@example.com"], &body("mutt-one"))
        .await;
    m.deliver("01MUTT2", &["alice@example.com"], &body("mutt-two"))
        .await;
    let home = tempfile::tempdir().unwrap();
    let imap = m.addr("imap");
    // Cleartext IMAP (allow_plaintext_auth allows loopback clients by default); mutt would
    // otherwise stop to ask about the self-signed certificate.
    let muttrc = home.path().join("muttrc");
    std::fs::write(
        &muttrc,
        format!(
            "set folder=\"imap://alice%40example.com@127.0.0.1:{port}/\"\n\
             set spoolfile=\"+INBOX\"\n\
             set imap_pass=\"secret\"\n\
             set ssl_starttls=no\n\
             set ssl_force_tls=no\n\
             set imap_passive=no\n\
             set header_cache=\"\"\n\
             set move=no\n\
             set confirmappend=no\n\
             set delete=yes\n\
             set quit=yes\n\
             set wait_key=no\n\
             set sort=date\n",
            port = imap.port()
        ),
    )
    .unwrap();
    let t = Tmux {
        bin: tmux,
        socket: home.path().join("tmux.sock"),
    };
    let mut c = t.cmd();
    c.args(["new-session", "-d", "-s", "mutt", "-x", "160", "-y", "40"])
        .arg(format!(
            "env HOME={} TERM=xterm {} -n -F {}",
            home.path().display(),
            mutt.display(),
            muttrc.display()
        ));
    let out = run(c).await;
    assert!(out.status.success(), "tmux: {out:?}");

    // The index lists both messages.
    let screen = t.wait_for("mutt-two").await;
    assert!(screen.contains("mutt-one"), "{screen}");
    // Open the first (sorted by date: mutt-one), read it in the pager.
    t.keys(&["Enter"]).await;
    let screen = t.wait_for("Hello, this is mutt-").await;
    assert!(screen.contains(".leading dot"), "{screen}");
    t.keys(&["q"]).await;
    // Delete the first message and sync (`$`): mutt expunges over IMAP.
    t.wait_for("mutt-two").await;
    t.keys(&["d"]).await;
    t.keys(&["$"]).await;
    // The server sees it: one message left, and it is \Seen-free mutt-two.
    let start = std::time::Instant::now();
    loop {
        let (_, uids, _) = {
            let mut c = Raw::connect(imap).await;
            c.line().await;
            c.cmd("a LOGIN alice@example.com secret\r\n").await;
            let lines = c.cmd_until("b EXAMINE INBOX\r\n", "b ").await;
            let n = lines
                .iter()
                .find(|l| l.ends_with("EXISTS\r\n"))
                .map(|l| l.split_whitespace().nth(1).unwrap().to_string())
                .unwrap();
            c.cmd_until("c LOGOUT\r\n", "c ").await;
            (0, n, 0)
        };
        if uids == "1" {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "mutt's expunge never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.keys(&["q"]).await;
    m.stop().await;
}

common::backend_tests!(
    mutt_reads_and_deletes_over_imap,
    mutt_reads_and_deletes_over_imap_on_postgres,
    |db| {
        with_mailbox(db, mutt_scenario).await;
    }
);
