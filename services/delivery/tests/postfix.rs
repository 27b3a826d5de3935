//! Delivery into Postfix's `smtp-sink` (Debian package `postfix`, see
//! scripts/deps.sh): a real, independent SMTP server that offers
//! PIPELINING and dumps every transaction it accepts to a file.

#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::path::Path;
use std::process::{Child, Command};

use common::{BODY, Harness, WAIT, job};
use tern_proto::Outcome;
use tern_testkit::wait_for;

const SMTP_SINK: &str = "/usr/sbin/smtp-sink";

struct Sink {
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sink {
    /// `smtp-sink -d dir` on `addr`: one file per accepted transaction.
    /// Returns once it accepts connections.
    async fn start(addr: &str) -> Sink {
        assert!(
            Path::new(SMTP_SINK).exists(),
            "{SMTP_SINK} is required (Debian package postfix; scripts/deps.sh --test installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        // smtp-sink drops privileges to -u before writing its dumps.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let mut d = dir.path().to_str().unwrap().to_string();
        d.push('/');
        let mut cmd = Command::new(SMTP_SINK);
        // Running as root it must be told whom to become.
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .map(|o| o.stdout.starts_with(b"0"))
            .unwrap_or(false);
        if root {
            cmd.args(["-u", "nobody"]);
        }
        let child = cmd.args(["-d", &d, addr, "64"]).spawn().unwrap();
        wait_for("smtp-sink listening", WAIT, || async {
            tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Sink { child, dir }
    }

    fn dumps(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path())
            .map(|rd| {
                rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[tokio::test]
async fn into_postfix_smtp_sink() {
    let h = Harness::start().await;
    let sink = Sink::start(&format!("127.0.0.8:{}", h.base.port)).await;
    let n = 20;
    for i in 0..n {
        h.publish(&job(
            &format!("s{i}"),
            "sink.test",
            &[&format!("a{i}@sink.test"), &format!("b{i}@sink.test")],
            BODY,
        ))
        .await;
    }
    h.wait_jobs_left(0).await;
    wait_for("every message dumped by smtp-sink", WAIT, || async {
        (sink.dumps().len() == n).then_some(())
    })
    .await;
    let results = h.results("sink.test").await;
    assert_eq!(results.len(), n);
    for r in &results {
        assert!(
            r.results
                .iter()
                .all(|x| x.outcome == Outcome::Delivered as i32 && x.code == 250),
            "{r:?}"
        );
    }
    let dumps = sink.dumps();
    for i in 0..n {
        let d = dumps
            .iter()
            .find(|d| d.contains(&format!("X-Rcpt-Args: <a{i}@sink.test>")))
            .unwrap_or_else(|| panic!("message {i} missing"));
        assert!(d.contains(&format!("X-Rcpt-Args: <b{i}@sink.test>")));
        assert!(d.contains("X-Helo-Args: delivery.test"));
        // Dot-unstuffed by the sink, the body is what was queued.
        assert!(
            d.replace("\r\n", "\n")
                .contains(&String::from_utf8_lossy(BODY).replace("\r\n", "\n")),
            "{d}"
        );
    }
}

const POSTFIX: &str = "/usr/sbin/postfix";

/// A private Postfix instance as the MX for `pfmx.test` on
/// 127.0.0.10:`port`, offering STARTTLS with a self-signed certificate and
/// delivering into a Maildir the test reads. Never touches /etc/postfix.
struct PostfixMx {
    dir: tempfile::TempDir,
}

impl Drop for PostfixMx {
    fn drop(&mut self) {
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(self.dir.path())
            .arg("stop")
            .output();
    }
}

impl PostfixMx {
    fn start(port: &str) -> PostfixMx {
        assert!(
            Path::new(POSTFIX).exists(),
            "{POSTFIX} is required (Debian package postfix; scripts/deps.sh --test installs it)"
        );
        let uid = Command::new("id").arg("-u").output().unwrap().stdout;
        assert_eq!(
            String::from_utf8_lossy(&uid).trim(),
            "0",
            "the Postfix MX test runs Postfix's master, which needs root"
        );
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::set_permissions(d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let (cert, key) = common::self_signed(d, "mx.pfmx.test");
        for sub in ["queue", "data", "mail"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let chown = |p: &Path, who: &str| {
            assert!(
                Command::new("chown")
                    .arg(who)
                    .arg(p)
                    .status()
                    .unwrap()
                    .success()
            );
        };
        chown(&d.join("data"), "postfix");
        chown(&d.join("mail"), "nobody:nogroup");
        let main_cf = format!(
            "compatibility_level = 3.6
queue_directory = {q}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.pfmx.test
mydomain = pfmx.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.10/32
virtual_mailbox_domains = pfmx.test
virtual_mailbox_base = {mail}
virtual_mailbox_maps = static:box/
virtual_uid_maps = static:65534
virtual_gid_maps = static:65534
smtpd_tls_security_level = may
smtpd_tls_cert_file = {cert}
smtpd_tls_key_file = {key}
smtpd_tls_received_header = yes
maillog_file = {dir}/maillog
maillog_file_prefixes = {dir}
biff = no
",
            q = d.join("queue").display(),
            data = d.join("data").display(),
            mail = d.join("mail").display(),
            cert = cert.display(),
            key = key.display(),
            dir = d.display(),
        );
        std::fs::write(d.join("main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "127.0.0.10:{port} inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"
        );
        std::fs::write(d.join("master.cf"), master_cf).unwrap();
        let _ = Command::new(POSTFIX)
            .arg("-c")
            .arg(d)
            .arg("set-permissions")
            .output();
        let out = Command::new(POSTFIX)
            .arg("-c")
            .arg(d)
            .arg("start")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "postfix start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(d.join("maillog")).unwrap_or_default()
        );
        PostfixMx { dir }
    }

    /// Messages delivered to the Maildir.
    fn delivered(&self) -> Vec<String> {
        let new = self.dir.path().join("mail/box/new");
        std::fs::read_dir(new)
            .map(|rd| {
                rd.filter_map(|e| std::fs::read(e.ok()?.path()).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }
}

#[tokio::test]
async fn into_a_real_postfix_mx_over_starttls() {
    let h = Harness::start().await;
    let mx = PostfixMx::start(&h.base.port);
    wait_for("Postfix listening", WAIT, || async {
        tokio::net::TcpStream::connect(format!("127.0.0.10:{}", h.base.port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    h.publish(&job(
        "pf1",
        "pfmx.test",
        &["alice@pfmx.test", "bob@pfmx.test"],
        BODY,
    ))
    .await;
    let r = h.result_of("pfmx.test", "pf1").await;
    assert!(
        r.results
            .iter()
            .all(|x| x.outcome == Outcome::Delivered as i32 && x.code == 250),
        "{r:?}\n{}",
        mx.log()
    );
    assert_eq!(r.results[0].remote_host, "mx.pfmx.test");
    // Postfix's virtual agent writes one Maildir file per recipient.
    wait_for("both recipients in the Maildir", WAIT, || async {
        (mx.delivered().len() == 2).then_some(())
    })
    .await;
    for m in mx.delivered() {
        // Postfix records the TLS session in its Received header (ESMTPS).
        assert!(m.contains("from delivery.test"), "{m}");
        assert!(m.contains("with ESMTPS"), "{m}");
        assert!(m.contains("Subject: dots"));
        // Dot-stuffing undone by Postfix: the body is what was queued.
        assert!(
            m.replace("\r\n", "\n")
                .contains("\n.leading dot\n..two dots\n.\nend of body\n"),
            "{m}"
        );
    }
}

/// RFC 8689 §4.2.1: a REQUIRETLS message to a host without STARTTLS
/// (smtp-sink offers none) is bounced with 5.7.10 ("Unable to establish
/// TLS-protected SMTP session"; 5.7.30 is for a TLS host that does not
/// offer REQUIRETLS, tests/requiretls.rs) and never sent in plaintext. The
/// zone is DNSSEC-signed so that the MX answer is trusted and the refusal
/// is the host's (see tests/requiretls.rs).
#[tokio::test]
async fn requiretls_is_never_sent_to_smtp_sink_in_plaintext() {
    let h = Harness::start_signed(&[]).await;
    let sink = Sink::start(&format!("127.0.0.8:{}", h.base.port)).await;
    let mut j = job("rt1", "sink.test", &["a@sink.test"], BODY);
    j.require_tls = true;
    h.publish(&j).await;
    let r = h.result_of("sink.test", "rt1").await;
    assert_eq!(r.results[0].outcome, Outcome::Bounced as i32, "{r:?}");
    assert_eq!(r.results[0].enhanced, "5.7.10", "{:?}", r.results[0]);
    assert!(
        r.results[0].reply.contains("TLS is required"),
        "{:?}",
        r.results[0]
    );
    // The same message without REQUIRETLS is delivered, so smtp-sink was
    // up and reachable; only then is its dump directory checked.
    h.publish(&job("rt2", "sink.test", &["b@sink.test"], BODY))
        .await;
    let r = h.result_of("sink.test", "rt2").await;
    assert_eq!(r.results[0].outcome, Outcome::Delivered as i32, "{r:?}");
    wait_for("smtp-sink dumped the plain message", WAIT, || async {
        (!sink.dumps().is_empty()).then_some(())
    })
    .await;
    let dumps = sink.dumps();
    assert_eq!(dumps.len(), 1, "only the plain message arrived: {dumps:?}");
    assert!(dumps[0].contains("X-Rcpt-Args: <b@sink.test>"));
    assert!(!dumps.iter().any(|d| d.contains("a@sink.test")));
}
