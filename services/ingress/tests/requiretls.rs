//! REQUIRETLS (RFC 8689) on the way in, with Python's smtplib as the
//! client: not offered in clear and refused there (§2: the option "MUST
//! only be specified" on a TLS session), offered after STARTTLS, and the
//! message tagged in the spooled envelope (§4.1), as is `TLS-Required: No`
//! (§4.1, ignored when REQUIRETLS is given).

mod common;

use common::{Ingress, inline_body, queued_id, split_received, spooled, start_accounts};
use tern_testkit::NatsServer;

const SCRIPT: &str = r#"
import smtplib, ssl, sys
port = int(sys.argv[1])
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", port, local_hostname="py.test", timeout=20)
s.ehlo()
assert s.has_extn("starttls")
assert not s.has_extn("requiretls"), s.esmtp_features
code, text = s.docmd("MAIL", "FROM:<alice@remote.test> REQUIRETLS")
print("clear", code, text.decode())
s.rset()
s.starttls(context=ctx)
s.ehlo()
assert s.has_extn("requiretls"), s.esmtp_features

def send(options, header):
    code, text = s.mail("alice@remote.test", options)
    assert code == 250, (code, text)
    code, text = s.rcpt("bob@example.com")
    assert code == 250, (code, text)
    code, text = s.data((header + "Subject: rt\r\n\r\nsecret body\r\n").encode())
    assert code == 250, (code, text)
    print("queued", text.decode())

send(["REQUIRETLS"], "")
send([], "TLS-Required: No\r\n")
send(["REQUIRETLS"], "TLS-Required: No\r\n")
s.quit()
"#;

/// Python's smtplib over STARTTLS: EHLO keywords, then MAIL with REQUIRETLS.
const SWITCHED_OFF: &str = r#"
import smtplib, ssl, sys
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="py.test", timeout=20)
s.starttls(context=ctx)
s.ehlo()
print("offered", s.has_extn("requiretls"))
code, text = s.docmd("MAIL", "FROM:<alice@remote.test> REQUIRETLS")
print("mail", code, text.decode())
s.quit()
"#;

/// `TERN_SMTP_REQUIRETLS=false` (for an operator whose onward path cannot
/// promise verified TLS): REQUIRETLS is not offered even over TLS, and a
/// client that asks anyway gets RFC 5321 §4.1.1.11's 555 for an unknown
/// MAIL parameter instead of a promise Tern could not keep.
#[tokio::test]
async fn requiretls_switched_off_is_neither_offered_nor_accepted() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[("smtp_requiretls", "false")]).await;
    let port = ingress.addr("smtp").port().to_string();
    let out = tokio::process::Command::new("python3")
        .args(["-c", SWITCHED_OFF, &port])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "offered False", "{stdout}");
    assert!(lines[1].starts_with("mail 555 5.5.4 "), "{stdout}");
    ingress.stop().await;
}

#[tokio::test]
async fn requiretls_only_over_tls_and_tagged_in_the_envelope() {
    let nats = NatsServer::start().await;
    let mailbox = start_accounts(&["bob@example.com"]).await;
    let ingress = Ingress::start(&nats.url(), &mailbox, &[]).await;
    let port = ingress.addr("smtp").port().to_string();
    let out = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &port])
        .output()
        .await
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    // In clear: 530 with 5.7.10 ("Encryption needed", RFC 5248), as for
    // STARTTLS-first refusals (RFC 3207 §4).
    assert!(lines[0].starts_with("clear 530 5.7.10 "), "{stdout}");

    let ids: Vec<String> = lines[1..]
        .iter()
        .map(|l| queued_id(&format!("250 {}", l.trim_start_matches("queued "))))
        .collect();
    let (env, _) = spooled(&nats.url(), &ids[0]).await;
    assert!(env.require_tls && !env.tls_optional, "{env:?}");
    let (received, _) = split_received(&inline_body(&env));
    assert!(received.contains("ESMTPS"), "received over TLS: {received}");
    let (env, _) = spooled(&nats.url(), &ids[1]).await;
    assert!(!env.require_tls && env.tls_optional, "{env:?}");
    // §4.1: with REQUIRETLS the header field is ignored.
    let (env, _) = spooled(&nats.url(), &ids[2]).await;
    assert!(env.require_tls && !env.tls_optional, "{env:?}");
    ingress.stop().await;
}
