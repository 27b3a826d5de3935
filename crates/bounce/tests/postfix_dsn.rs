//! Late bounces from a real Postfix: a message sent with a VERP return path
//! is accepted by a throw-away Postfix on loopback (the remote MX), whose
//! onward delivery is refused by a peer speaking Gmail's and Microsoft's
//! reply texts; Postfix then writes its RFC 3464 DSN to the return path, the
//! peer captures it as Tern's bounce domain would, and the parser,
//! classifier and token code must find the send and the class of every
//! recipient. Needs root and Debian's `postfix` (scripts/deps.sh --test).

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern_bounce::report::{self, Action, Report};
use tern_bounce::token::{self, LocalPart, Secret, VerpFields};
use tern_bounce::{Class, Matched, Rules};

const BOUNCE_DOMAIN: &str = "bounces.test";

/// The refusal the peer gives each remote recipient, by local part.
fn refusal(local: &str) -> Option<&'static str> {
    Some(match local {
        "gone" => {
            "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n\
                   550-5.1.1 double-checking the recipient's email address for typos or\r\n\
                   550 5.1.1 unnecessary spaces. - gsmtp\r\n"
        }
        "blocked" => {
            "550 5.7.1 Unfortunately, messages from [127.0.0.1] weren't sent. Please contact your \
                      Internet service provider since part of their network is on our block list (S3150).\r\n"
        }
        "noauth" => {
            "550-5.7.26 This mail has been blocked because the sender is unauthenticated.\r\n\
                     550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.\r\n\
                     550 5.7.26 - gsmtp\r\n"
        }
        _ => return None,
    })
}

/// Messages the peer accepted: (recipients, body).
type Kept = Arc<Mutex<Vec<(Vec<String>, Vec<u8>)>>>;

/// One SMTP session of the peer; messages for the bounce domain are kept.
fn session(stream: TcpStream, kept: Kept) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut lines = BufReader::new(stream);
    out.write_all(b"220 peer.test ESMTP\r\n")?;
    let mut rcpts = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let upper = line.to_ascii_uppercase();
        if upper.starts_with("EHLO") || upper.starts_with("HELO") {
            out.write_all(b"250 peer.test\r\n")?;
        } else if upper.starts_with("MAIL FROM:") {
            rcpts.clear();
            out.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            let addr = line[8..]
                .trim()
                .trim_matches(|c| c == '<' || c == '>')
                .to_string();
            let (local, domain) = addr.rsplit_once('@').unwrap_or((&addr, ""));
            match refusal(local) {
                Some(r) if domain == "remote.test" => out.write_all(r.as_bytes())?,
                _ => {
                    rcpts.push(addr.clone());
                    out.write_all(b"250 2.1.5 ok\r\n")?;
                }
            }
        } else if upper.starts_with("DATA") {
            out.write_all(b"354 go ahead\r\n")?;
            let mut body = Vec::new();
            loop {
                let mut l = Vec::new();
                if lines.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" || l == b".\n" {
                    break;
                }
                // RFC 5321 §4.5.2 dot-stuffing.
                body.extend_from_slice(
                    l.strip_prefix(b".")
                        .filter(|_| l.starts_with(b".."))
                        .unwrap_or(&l),
                );
            }
            kept.lock().expect("lock").push((rcpts.clone(), body));
            out.write_all(b"250 2.0.0 kept\r\n")?;
        } else if upper.starts_with("QUIT") {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"250 ok\r\n")?;
        }
    }
}

/// Send one message to Postfix over SMTP; returns each reply.
fn submit(port: u16, from: &str, rcpts: &[&str], data: &str) -> Vec<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect to postfix");
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let mut out = s.try_clone().expect("clone");
    let mut r = BufReader::new(s);
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut l = String::new();
            r.read_line(&mut l).expect("reply");
            all.push_str(&l);
            if l.len() < 4 || l.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    let mut replies = vec![reply()];
    let mut cmd = |c: String, replies: &mut Vec<String>| {
        out.write_all(c.as_bytes()).expect("write");
        replies.push(reply());
    };
    cmd("EHLO app.test\r\n".into(), &mut replies);
    cmd(format!("MAIL FROM:<{from}>\r\n"), &mut replies);
    for r in rcpts {
        cmd(format!("RCPT TO:<{r}>\r\n"), &mut replies);
    }
    cmd("DATA\r\n".into(), &mut replies);
    cmd(format!("{data}\r\n.\r\n"), &mut replies);
    cmd("QUIT\r\n".into(), &mut replies);
    replies
}

struct Stop(&'static str, String);
impl Drop for Stop {
    fn drop(&mut self) {
        let _ = std::process::Command::new(self.0)
            .args(["stop", &self.1])
            .status();
    }
}

#[test]
fn postfix_dsn_is_parsed_matched_and_classified() {
    assert!(
        std::path::Path::new("/usr/sbin/postfix").exists(),
        "postfix is required (scripts/deps.sh --test installs it)"
    );
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/bench/ingress/postfix-instance.sh"
    );
    let kept: Kept = Arc::new(Mutex::new(Vec::new()));
    let peer = TcpListener::bind("127.0.0.1:0").expect("peer");
    let peer_port = peer.local_addr().expect("addr").port();
    {
        let kept = kept.clone();
        std::thread::spawn(move || {
            for s in peer.incoming().flatten() {
                let kept = kept.clone();
                std::thread::spawn(move || session(s, kept));
            }
        });
    }
    let dir = tempfile::tempdir().expect("dir");
    let pf_dir = dir
        .path()
        .join("postfix")
        .to_str()
        .expect("utf-8")
        .to_string();
    let pf_port = TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let ok = std::process::Command::new(script)
        .args([
            "start",
            &pf_dir,
            &pf_port.to_string(),
            &peer_port.to_string(),
        ])
        .status()
        .expect("start postfix");
    assert!(ok.success(), "postfix did not start");
    let _stop = Stop(script, pf_dir.clone());

    let secret = Secret::from_bytes(b"a cluster secret of at least 32 bytes!").expect("secret");
    let fields = VerpFields {
        tenant: 7,
        campaign: 42,
        message: 0x0190_0000_0000_0000_0000_0000_0000_0abc,
        recipient: 3,
    };
    let verp = token::bounce_address(&secret, &fields, BOUNCE_DOMAIN);
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", pf_port)).is_err() {
        assert!(Instant::now() < deadline, "postfix smtpd never listened");
        std::thread::sleep(Duration::from_millis(100));
    }
    let replies = submit(
        pf_port,
        &verp,
        &[
            "gone@remote.test",
            "blocked@remote.test",
            "noauth@remote.test",
        ],
        "From: news@sender.test\r\nTo: list@remote.test\r\nSubject: campaign 42\r\nMessage-ID: <m-abc@sender.test>\r\n\r\nHello.",
    );
    assert!(
        replies.iter().filter(|r| r.starts_with("250")).count() >= 6,
        "{replies:?}"
    );

    // Postfix tries the peer, is refused, and bounces to the VERP address.
    let deadline = Instant::now() + Duration::from_secs(60);
    let dsn = loop {
        if let Some((_, body)) = kept
            .lock()
            .expect("lock")
            .iter()
            .find(|(r, _)| r.contains(&verp))
        {
            break body.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no DSN reached the bounce domain; maillog:\n{}",
            std::fs::read_to_string(format!("{pf_dir}/maillog")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    std::fs::write(
        concat!(env!("CARGO_TARGET_TMPDIR"), "/postfix-dsn.eml"),
        &dsn,
    )
    .expect("artifact");

    let Report::Dsn(d) = report::parse(&dsn).expect("a DSN") else {
        panic!("not a DSN")
    };
    assert_eq!(d.reporting_mta.as_deref(), Some("relay.test"));
    // The VERP address finds the send.
    let found = d
        .return_path_candidates()
        .into_iter()
        .find_map(|a| token::parse_local_part(&secret, a).ok());
    assert_eq!(found, Some(LocalPart::Bounce(fields)));
    assert_eq!(
        d.original.as_ref().and_then(|o| o.message_id()),
        Some("m-abc@sender.test")
    );

    let rules = Rules::builtin();
    let mut got: Vec<(String, Class, String, bool)> = d
        .recipients
        .iter()
        .map(|r| {
            assert_eq!(r.action, Action::Failed, "{r:?}");
            let v = rules.classify(&r.observation());
            let rule = match v.matched {
                Matched::Rule(n) => n.to_string(),
                other => other.to_string(),
            };
            (r.final_recipient.clone(), v.class, rule, v.suppresses())
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "blocked@remote.test".into(),
                Class::SpamBlock,
                "microsoft-ip-block-list".into(),
                false
            ),
            (
                "gone@remote.test".into(),
                Class::InvalidRecipient,
                "gmail-no-such-account".into(),
                true
            ),
            (
                "noauth@remote.test".into(),
                Class::PolicyBlock,
                "gmail-unauthenticated".into(),
                false
            ),
        ]
    );
}
