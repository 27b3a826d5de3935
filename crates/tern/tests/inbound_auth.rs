//! Inbound SPF/DKIM/DMARC checks on the MX listener, end to end: messages
//! signed by PyPI's `dkimpy`, SPF and DMARC records served by the in-process
//! hickory DNS server, Tern's resolver service in between, mail read back
//! over IMAP with Python's imaplib. PyPI's `authheaders` (with `dkimpy` and
//! `pyspf`) computes the results for the same message and DNS, and Tern's
//! `Authentication-Results` must agree, case by case.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::{Stack, python};
use tern_testkit::NatsServer;

/// The project's virtualenv python, with dkimpy and authheaders (scripts/deps.sh).
fn venv_python() -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(p.exists(), "{} missing: run scripts/deps.sh", p.display());
    p
}

/// Run a script with the venv's python; stdout.
fn venv(script: &str, args: &[String]) -> Vec<u8> {
    let out = Command::new(venv_python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("run venv python");
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    out.stdout
}

/// A fresh 2048-bit RSA key: (PEM private key, base64 DER public key).
fn rsa_key(dir: &std::path::Path) -> (PathBuf, String) {
    let key = dir.join("dkim.pem");
    let ok = Command::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&key)
        .arg("2048")
        .output()
        .expect("openssl genrsa");
    assert!(ok.status.success());
    let out = Command::new("openssl")
        .args(["rsa", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl rsa");
    assert!(out.status.success());
    let der = dir.join("pub.der");
    std::fs::write(&der, &out.stdout).expect("write der");
    let b64 = venv(
        "import base64,sys; print(base64.b64encode(open(sys.argv[1],'rb').read()).decode())",
        &[der.display().to_string()],
    );
    (key, String::from_utf8_lossy(&b64).trim().to_string())
}

/// A TXT value in zone-file form: quoted 255-octet strings.
fn txt(value: &str) -> String {
    value
        .as_bytes()
        .chunks(200)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn zone(origin: &str, records: &str) -> String {
    format!(
        "$ORIGIN {origin}\n$TTL 60\n@ IN SOA ns.{origin} admin.{origin} 1 3600 600 86400 60\n@ IN NS ns.{origin}\nns IN A 127.0.0.1\n{records}"
    )
}

/// Sign (or mis-sign) a message with dkimpy. `how`: good, body, header,
/// expired, nokey. Prints the message as it is sent.
const SIGN: &str = r#"
import sys, time, dkim
from dkim import CanonicalizationPolicy, HASH_ALGORITHMS
how, keyfile, subject = sys.argv[1], sys.argv[2], sys.argv[3]
key = open(keyfile, 'rb').read()
msg = (b"From: Sender <sender@good.test>\r\nTo: alice@localhost\r\n"
       b"Subject: " + subject.encode() + b"\r\nMessage-ID: <" + subject.encode() + b"@good.test>\r\n"
       b"Date: Wed, 02 Dec 2026 22:00:00 +0000\r\n\r\nHello Alice.\r\n")
selector = b'gone' if how == 'nokey' else b'sel'
if how == 'expired':
    # dkimpy's sign() has no x= tag: build the signature from its parts,
    # with t= and x= two days in the past.
    d = dkim.DKIM(msg)
    pk = dkim.crypto.parse_pem_private_key(key)
    canon = CanonicalizationPolicy.from_c_value(b'relaxed/relaxed')
    inc = tuple(x.lower() for x in d.default_sign_headers())
    d.include_headers = inc
    d.hasher = HASH_ALGORITHMS[b'rsa-sha256']
    h = d.hasher(); h.update(canon.canonicalize_body(d.body))
    import base64
    past = int(time.time()) - 2 * 86400
    fields = [(b'v', b'1'), (b'a', b'rsa-sha256'), (b'c', b'relaxed/relaxed'), (b'd', b'good.test'),
              (b'i', b'@good.test'), (b'q', b'dns/txt'), (b's', b'sel'), (b't', str(past).encode()),
              (b'x', str(past + 3600).encode()), (b'h', b' : '.join(inc)),
              (b'bh', base64.b64encode(h.digest())), (b'b', b'0' * 60)]
    sig = b'DKIM-Signature: ' + d.gen_header(fields, inc, canon, b'DKIM-Signature', pk)
else:
    sig = dkim.sign(msg, selector, b'good.test', key, canonicalize=(b'relaxed', b'relaxed'))
out = sig + msg
if how == 'body':
    out = out.replace(b'Hello Alice.', b'Hello Alice!')
if how == 'header':
    out = out.replace(b'Subject: ' + subject.encode(), b'Subject: changed ' + subject.encode())
sys.stdout.buffer.write(out)
"#;

/// What authheaders says (spf, dkim, dmarc words) for a message file.
const ORACLE: &str = r#"
import sys, re, dns.resolver, authheaders
dnsport, path, ip, mail_from, helo = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
r = dns.resolver.Resolver(configure=False)
r.nameservers = ['127.0.0.1']; r.port = int(dnsport)
dns.resolver.default_resolver = r
msg = open(path, 'rb').read()
res = authheaders.authenticate_message(msg, 'tern.test', spf=True, dkim=True, dmarc=True,
                                       ip=ip, mail_from=mail_from, helo=helo)
words = {}
for m in re.finditer(r'\b(spf|dkim|dmarc)=([a-z]+)', res):
    words.setdefault(m.group(1), m.group(2))
print(words.get('spf', 'none'), words.get('dkim', 'none'), words.get('dmarc', 'none'))
"#;

/// Send over SMTP from 127.0.0.1 with HELO client.test; prints the DATA reply code.
const SEND: &str = r#"
import smtplib, sys
host, port, sender, rcpt, path = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
s = smtplib.SMTP(host, port, local_hostname='client.test', timeout=30)
s.ehlo()
assert s.docmd('MAIL', 'FROM:<%s>' % sender)[0] == 250
assert s.docmd('RCPT', 'TO:<%s>' % rcpt)[0] == 250
code, resp = s.docmd('DATA')
assert code == 354, (code, resp)
data = open(path, 'rb').read()
s.send(data.replace(b'\r\n.', b'\r\n..') + b'\r\n.\r\n')
code, resp = s.getreply()
print(code, resp.decode())
s.quit()
"#;

/// Every message of `folder` whose Subject contains `subject`, over IMAP.
const FETCH: &str = r#"
import imaplib, sys
m = imaplib.IMAP4(sys.argv[1], int(sys.argv[2]))
m.login('alice@localhost', 'wonderland')
typ, data = m.select(sys.argv[3])
assert typ == 'OK', data
typ, data = m.search(None, 'SUBJECT', sys.argv[4])
for n in data[0].split():
    typ, d = m.fetch(n, '(BODY.PEEK[])')
    sys.stdout.buffer.write(d[0][1] + b'\n=====\n')
m.logout()
"#;

/// The spf (smtp.mailfrom), dkim and dmarc words of Tern's own header.
fn tern_words(message: &str) -> (String, String, String) {
    let header = own_results(message);
    // The forged one (no spf= in it) must be gone, ours alone left.
    assert_eq!(header.len(), 1, "exactly one header of ours: {message}");
    let h = &header[0];
    assert!(h.contains("spf="), "not the header Tern wrote: {h}");
    let word = |method: &str, must: Option<&str>| -> String {
        for part in h.split(';') {
            let part = part.trim();
            if let Some(rest) = part.strip_prefix(&format!("{method}="))
                && must.is_none_or(|m| part.contains(m))
            {
                return rest.split_whitespace().next().unwrap_or("").to_string();
            }
        }
        "none".to_string()
    };
    (
        word("spf", Some("smtp.mailfrom")),
        word("dkim", None),
        word("dmarc", None),
    )
}

/// The unfolded `Authentication-Results` fields with authserv-id tern.test.
fn own_results(message: &str) -> Vec<String> {
    let head = message.split("\r\n\r\n").next().unwrap_or("");
    let unfolded = head.replace("\r\n\t", " ").replace("\r\n ", " ");
    unfolded
        .split("\r\n")
        .filter(|l| {
            l.to_ascii_lowercase()
                .starts_with("authentication-results:")
        })
        .filter(|l| {
            l.split_once(':')
                .map(|(_, v)| v.trim_start().to_ascii_lowercase())
                .is_some_and(|v| v.starts_with("tern.test;") || v.starts_with("tern.test "))
        })
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_checks_agree_with_authheaders_and_apply_dmarc_policy() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (key, public) = rsa_key(dir.path());
    let good = zone(
        "good.test.",
        &format!(
            "@ IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\nsel._domainkey IN TXT {}\n_dmarc IN TXT \"v=DMARC1; p=none\"\nnospf IN A 127.0.0.1\n",
            txt(&format!("v=DKIM1; k=rsa; p={public}"))
        ),
    );
    let reject = zone(
        "reject.test.",
        "@ IN TXT \"v=spf1 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"\n",
    );
    let quarantine = zone(
        "quarantine.test.",
        "@ IN TXT \"v=spf1 -all\"\n_dmarc IN TXT \"v=DMARC1; p=quarantine\"\n",
    );
    // An SPF record too long for one UDP answer (> 4096 octets): Tern must
    // ask again over TCP (RFC 7766 §5) to see the pass at its end.
    let long_spf: Vec<String> = (0..330)
        .map(|i| format!("ip4:10.{}.{}.1", i / 250, i % 250))
        .collect();
    let big = zone(
        "big.test.",
        &format!(
            "@ IN TXT {}\n",
            txt(&format!("v=spf1 {} ip4:127.0.0.1 -all", long_spf.join(" ")))
        ),
    );
    let client = zone("client.test.", "@ IN A 127.0.0.1\n");
    // The parent, so that the DMARC tree walk's `_dmarc.test` is NXDOMAIN
    // (as `_dmarc.com` is), not REFUSED.
    let tld = zone("test.", "");
    let stack = Stack::start_zones(
        NatsServer::start().await,
        &[],
        false,
        &[
            ("good.test.", &good),
            ("reject.test.", &reject),
            ("quarantine.test.", &quarantine),
            ("client.test.", &client),
            ("big.test.", &big),
            ("test.", &tld),
        ],
    )
    .await;
    stack.add_user("alice@localhost", "wonderland").await;
    let smtp = stack.addr("smtp");
    let imap = stack.addr("imap");
    let dns_port = stack.dns.addr().port().to_string();
    let send = |from: String, path: PathBuf| {
        let args = vec![
            smtp.ip().to_string(),
            smtp.port().to_string(),
            from,
            "alice@localhost".to_string(),
            path.display().to_string(),
        ];
        async move {
            String::from_utf8_lossy(&python(SEND, &args).await)
                .trim()
                .to_string()
        }
    };
    let fetch = |folder: &str, subject: &str| {
        let args = vec![
            imap.ip().to_string(),
            imap.port().to_string(),
            folder.to_string(),
            subject.to_string(),
        ];
        async move { String::from_utf8_lossy(&python(FETCH, &args).await).to_string() }
    };

    // dkimpy-signed cases, MAIL FROM a domain without SPF so DKIM decides
    // DMARC; SPF pass case with MAIL FROM good.test.
    let cases = [
        ("good", "bounce@nospf.good.test"),
        ("body", "bounce@nospf.good.test"),
        ("header", "bounce@nospf.good.test"),
        ("expired", "bounce@nospf.good.test"),
        ("nokey", "bounce@nospf.good.test"),
        ("good", "bounce@good.test"),
        ("good", "bounce@big.test"),
    ];
    for (i, (how, mail_from)) in cases.iter().enumerate() {
        let subject = format!("case{i}{how}");
        let mut raw = venv(
            SIGN,
            &[how.to_string(), key.display().to_string(), subject.clone()],
        );
        // A forged result with our authserv-id rides along in every message.
        let mut forged =
            b"Authentication-Results: tern.test; dkim=pass header.d=good.test; dmarc=pass\r\n"
                .to_vec();
        forged.append(&mut raw);
        let path = dir.path().join(format!("{subject}.eml"));
        std::fs::write(&path, &forged).expect("write message");
        let reply = send(mail_from.to_string(), path.clone()).await;
        assert!(reply.starts_with("250"), "{subject}: {reply}");
        let oracle = venv(
            ORACLE,
            &[
                dns_port.clone(),
                path.display().to_string(),
                "127.0.0.1".into(),
                mail_from.to_string(),
                "client.test".into(),
            ],
        );
        let mut oracle = String::from_utf8_lossy(&oracle).trim().to_string();
        if *how == "nokey" {
            // The one known difference: dkimpy folds every PERMFAIL into
            // `fail`; for a key missing from DNS (RFC 6376 §6.1.2) Tern,
            // with mail-auth, says `permerror` (RFC 8601 §2.7.1: an
            // unrecoverable error), as OpenDKIM does. DMARC agrees.
            let words: Vec<&str> = oracle.split(' ').collect();
            assert_eq!(
                words.get(1),
                Some(&"fail"),
                "{subject}: authheaders {oracle}"
            );
            oracle = format!("{} permerror {}", words[0], words[2]);
        }
        let got = tern_testkit::wait_for(
            "message in INBOX",
            std::time::Duration::from_secs(30),
            || {
                let f = fetch("INBOX", &subject);
                async move { Some(f.await).filter(|s| s.contains("=====")) }
            },
        )
        .await;
        let (spf, dkim, dmarc) = tern_words(&got);
        assert_eq!(
            format!("{spf} {dkim} {dmarc}"),
            oracle,
            "{subject}: Tern vs authheaders\n{got}"
        );
    }

    // DMARC p=reject failure: 550 5.7.1 and nothing stored.
    let rej = dir.path().join("reject.eml");
    std::fs::write(
        &rej,
        b"From: ceo@reject.test\r\nTo: alice@localhost\r\nSubject: rejectcase\r\n\r\nwire money\r\n",
    )
    .expect("write");
    let reply = send("ceo@reject.test".into(), rej).await;
    assert!(reply.starts_with("550 5.7.1"), "{reply}");

    // DMARC p=quarantine failure: delivered into Junk, not INBOX.
    let q = dir.path().join("quarantine.eml");
    std::fs::write(
        &q,
        b"From: ceo@quarantine.test\r\nTo: alice@localhost\r\nSubject: quarantinecase\r\n\r\nmaybe spam\r\n",
    )
    .expect("write");
    let reply = send("ceo@quarantine.test".into(), q).await;
    assert!(reply.starts_with("250"), "{reply}");
    let junk = tern_testkit::wait_for(
        "message in Junk",
        std::time::Duration::from_secs(30),
        || {
            let f = fetch("Junk", "quarantinecase");
            async move { Some(f.await).filter(|s| s.contains("=====")) }
        },
    )
    .await;
    let (spf, _, dmarc) = tern_words(&junk);
    assert_eq!((spf.as_str(), dmarc.as_str()), ("fail", "fail"), "{junk}");
    assert!(fetch("INBOX", "quarantinecase").await.is_empty());
    // The rejected one was stored nowhere.
    assert!(fetch("INBOX", "rejectcase").await.is_empty());
    assert!(fetch("Junk", "rejectcase").await.is_empty());
    stack.stop().await;
}
