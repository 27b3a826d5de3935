//! Delivery status notifications: RFC 3464 `multipart/report` messages with a
//! `message/delivery-status` part, honouring the RFC 3461 parameters the
//! sender gave at ingress (RET, ENVID, NOTIFY, ORCPT).

use tern_proto::{DsnRet, Job, Recipient};
use tern_runtime::date;

/// What the report says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Delivery failed for good (bounce or expiry): RFC 3464 `Action: failed`.
    Failure,
    /// Still retrying after a long time: `Action: delayed`.
    Delay,
}

impl Kind {
    fn action(self) -> &'static str {
        match self {
            Kind::Failure => "failed",
            Kind::Delay => "delayed",
        }
    }

    /// The RFC 3461 §4.1 NOTIFY keyword this kind answers to.
    fn keyword(self) -> &'static str {
        match self {
            Kind::Failure => "FAILURE",
            Kind::Delay => "DELAY",
        }
    }
}

/// Should `rcpt` get a report of `kind`? RFC 3461 §4.1: NOTIFY=NEVER means
/// none; an explicit list means only those; no NOTIFY means failures (and,
/// at the MTA's discretion, delays; Tern sends them).
pub fn wanted(rcpt: &Recipient, kind: Kind) -> bool {
    if rcpt.notify.is_empty() {
        return true;
    }
    rcpt.notify
        .iter()
        .any(|n| n.eq_ignore_ascii_case(kind.keyword()))
}

/// One recipient line of a report.
#[derive(Debug, Clone, PartialEq)]
pub struct Line {
    /// The recipient as the sender gave it.
    pub rcpt: Recipient,
    /// RFC 3463 status, e.g. "5.1.1" or "4.4.7".
    pub status: String,
    /// SMTP reply code from the remote side, 0 if none.
    pub code: u32,
    /// Reply text or failure description.
    pub diagnostic: String,
    /// The host that answered, if any.
    pub remote_mta: String,
    /// The bounce class (`tern_bounce::Class::name`), when classified.
    pub class: Option<&'static str>,
}

/// Render the report for `job`'s sender. `original` is the message as
/// stored; whether all of it or only its header section is returned follows
/// RET (RFC 3461 §4.3; without RET, headers only, to keep bounces small),
/// except that a REQUIRETLS message returns headers only (RFC 8689 §5).
pub fn render(
    hostname: &str,
    job: &Job,
    original: &[u8],
    lines: &[Line],
    kind: Kind,
    now_ms: i64,
    dsn_id: &str,
) -> Vec<u8> {
    let boundary = format!("{dsn_id}/{hostname}");
    let (subject, human) = match kind {
        Kind::Failure => (
            "Undelivered Mail Returned to Sender",
            "Your message could not be delivered to one or more recipients.\r\nThis is a permanent error; it will not be retried.",
        ),
        Kind::Delay => (
            "Delayed Mail (still being retried)",
            "Your message has not been delivered to one or more recipients yet.\r\nDelivery will be retried; you do not need to resend it.",
        ),
    };
    let mut out = String::new();
    out.push_str(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
    ));
    out.push_str(&format!("To: <{}>\r\n", job.mail_from));
    out.push_str(&format!("Subject: {subject}\r\n"));
    out.push_str(&format!("Date: {}\r\n", date::rfc5322(now_ms)));
    out.push_str(&format!("Message-ID: <{dsn_id}@{hostname}>\r\n"));
    // RFC 3834 §5: machine-generated replies say so, so nobody auto-replies to them.
    out.push_str("Auto-Submitted: auto-replied\r\n");
    out.push_str("MIME-Version: 1.0\r\n");
    out.push_str(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\r\n"
    ));
    out.push_str("This is a MIME-encapsulated message.\r\n\r\n");

    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ));
    out.push_str(&format!(
        "This is the mail system at {hostname}.\r\n\r\n{human}\r\n\r\n"
    ));
    for l in lines {
        out.push_str(&format!(
            "<{}>: {}\r\n",
            l.rcpt.address,
            one_line(&l.diagnostic)
        ));
    }
    out.push_str("\r\n");

    // RFC 3464 §2.2: per-message fields, then one block per recipient.
    out.push_str(&format!(
        "--{boundary}\r\nContent-Type: message/delivery-status\r\n\r\n"
    ));
    out.push_str(&format!("Reporting-MTA: dns; {hostname}\r\n"));
    if !job.envid.is_empty() {
        out.push_str(&format!(
            "Original-Envelope-Id: {}\r\n",
            one_line(&job.envid)
        ));
    }
    out.push_str(&format!(
        "Arrival-Date: {}\r\n",
        date::rfc5322(job.received_at_unix_ms)
    ));
    for l in lines {
        out.push_str("\r\n");
        if let Some((kind, addr)) = l.rcpt.orcpt.split_once(';') {
            out.push_str(&format!(
                "Original-Recipient: {kind};{}\r\n",
                one_line(addr)
            ));
        }
        out.push_str(&format!("Final-Recipient: rfc822; {}\r\n", l.rcpt.address));
        out.push_str(&format!("Action: {}\r\n", kind.action()));
        out.push_str(&format!("Status: {}\r\n", l.status));
        if !l.remote_mta.is_empty() {
            out.push_str(&format!("Remote-MTA: dns; {}\r\n", one_line(&l.remote_mta)));
        }
        if l.code != 0 {
            out.push_str(&format!(
                "Diagnostic-Code: smtp; {} {}\r\n",
                l.code,
                one_line(&l.diagnostic)
            ));
        }
        if let Some(class) = l.class {
            // An extension field (RFC 3464 §7: X- prefix), for senders that
            // act on the class without re-parsing the diagnostic.
            out.push_str(&format!("X-Tern-Bounce-Class: {class}\r\n"));
        }
        if kind == Kind::Delay {
            out.push_str(&format!(
                "Will-Retry-Until: {}\r\n",
                date::rfc5322(job.expires_at_unix_ms)
            ));
        }
    }
    out.push_str("\r\n");

    // RFC 8689 §5: a REQUIRETLS message's report returns only the header
    // section, whatever RET asked, so its content is never sent on a path
    // that was not required to be encrypted.
    let full = DsnRet::try_from(job.ret) == Ok(DsnRet::Full) && !job.require_tls;
    let mut bytes = out.into_bytes();
    if full {
        bytes.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: message/rfc822\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(original);
        if !original.ends_with(b"\r\n") {
            bytes.extend_from_slice(b"\r\n");
        }
    } else {
        bytes.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n").as_bytes(),
        );
        bytes.extend_from_slice(header_section(original));
    }
    bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    bytes
}

/// The header section of a message, up to and including the blank line.
fn header_section(msg: &[u8]) -> &[u8] {
    msg.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| &msg[..i + 4])
        .unwrap_or(msg)
}

/// Header-safe text: no CR/LF (a reply text must not start a new header).
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ret: DsnRet) -> Job {
        Job {
            message_id: "01ABC".into(),
            mail_from: "sender@example.org".into(),
            envid: "env-42".into(),
            ret: ret as i32,
            received_at_unix_ms: 0,
            expires_at_unix_ms: 432_000_000,
            ..Default::default()
        }
    }

    fn line(notify: &[&str]) -> Line {
        Line {
            rcpt: Recipient {
                address: "bob@remote.test".into(),
                orcpt: "rfc822;Bob@Remote.Test".into(),
                notify: notify.iter().map(|s| s.to_string()).collect(),
            },
            status: "5.1.1".into(),
            code: 550,
            diagnostic: "5.1.1 No such user\r\nInjected: header".into(),
            remote_mta: "mx.remote.test".into(),
            class: Some("invalid_recipient"),
        }
    }

    const ORIGINAL: &[u8] = b"Subject: hi\r\nFrom: sender@example.org\r\n\r\nsecret body\r\n";

    #[test]
    fn failure_report_has_the_rfc3464_fields() {
        let out = render(
            "tern.test",
            &job(DsnRet::Hdrs),
            ORIGINAL,
            &[line(&[])],
            Kind::Failure,
            1000,
            "dsn1",
        );
        let text = String::from_utf8(out).unwrap();
        for needle in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Content-Type: message/delivery-status",
            "Reporting-MTA: dns; tern.test",
            "Original-Envelope-Id: env-42",
            "Original-Recipient: rfc822;Bob@Remote.Test",
            "Final-Recipient: rfc822; bob@remote.test",
            "Action: failed",
            "Status: 5.1.1",
            "Remote-MTA: dns; mx.remote.test",
            "Diagnostic-Code: smtp; 550 5.1.1 No such user  Injected: header",
            "X-Tern-Bounce-Class: invalid_recipient",
            "Content-Type: text/rfc822-headers",
            "Auto-Submitted: auto-replied",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        }
        // RET=HDRS: the body of the original is not returned.
        assert!(!text.contains("secret body"));
        assert!(text.ends_with("--dsn1/tern.test--\r\n"));
    }

    #[test]
    fn ret_full_returns_the_whole_message() {
        let out = render(
            "tern.test",
            &job(DsnRet::Full),
            ORIGINAL,
            &[line(&[])],
            Kind::Failure,
            0,
            "d",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi"));
        assert!(text.contains("secret body"));
    }

    #[test]
    fn requiretls_report_returns_headers_even_with_ret_full() {
        let mut j = job(DsnRet::Full);
        j.require_tls = true;
        let out = render(
            "tern.test",
            &j,
            ORIGINAL,
            &[line(&[])],
            Kind::Failure,
            0,
            "d",
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi"));
        assert!(!text.contains("secret body"));
    }

    #[test]
    fn notify_decides_who_gets_which_report() {
        assert!(wanted(&line(&[]).rcpt, Kind::Failure));
        assert!(wanted(&line(&[]).rcpt, Kind::Delay));
        assert!(!wanted(&line(&["NEVER"]).rcpt, Kind::Failure));
        assert!(wanted(&line(&["SUCCESS", "FAILURE"]).rcpt, Kind::Failure));
        assert!(!wanted(&line(&["SUCCESS", "FAILURE"]).rcpt, Kind::Delay));
        let text = String::from_utf8(render(
            "h",
            &job(DsnRet::Unspecified),
            ORIGINAL,
            &[line(&["DELAY"])],
            Kind::Delay,
            0,
            "d",
        ))
        .unwrap();
        assert!(text.contains("Action: delayed") && text.contains("Will-Retry-Until: "));
    }
}
