//! DSN and ARF parsing against independent producers: a DSN Postfix wrote
//! (tests/fixtures/postfix-dsn.eml, captured by tests/postfix_dsn.rs from
//! Postfix 3.x on Debian) and ARF reports built by Python's standard
//! `email` package after RFC 5965 Appendix B's example.

use std::process::Command;

use tern_bounce::report::{self, Action, FeedbackType, Report, ReportError};
use tern_bounce::token::{self, LocalPart, Secret, VerpFields};
use tern_bounce::{Class, Rules};

const POSTFIX_DSN: &[u8] = include_bytes!("fixtures/postfix-dsn.eml");

#[test]
fn postfix_dsn_fixture() {
    let d = report::parse_dsn(POSTFIX_DSN).expect("dsn");
    assert_eq!(d.reporting_mta.as_deref(), Some("relay.test"));
    assert_eq!(d.recipients.len(), 3);
    let gone = d
        .recipients
        .iter()
        .find(|r| r.final_recipient == "gone@remote.test")
        .expect("gone");
    assert_eq!(
        (gone.action, gone.status.to_string()),
        (Action::Failed, "5.1.1".to_string())
    );
    assert_eq!(gone.original_recipient.as_deref(), Some("gone@remote.test"));
    assert_eq!(gone.remote_mta.as_deref(), Some("127.0.0.1"));
    let obs = gone.observation();
    assert_eq!(obs.code, Some(550));
    assert!(
        obs.text.starts_with(
            "The email account that you tried to reach does not exist. Please try double-checking"
        ),
        "{}",
        obs.text
    );
    assert_eq!(
        Rules::builtin().classify(&obs).class,
        Class::InvalidRecipient
    );
    assert!(
        d.to[0].starts_with("b-") && d.to[0].ends_with("@bounces.test"),
        "{:?}",
        d.to
    );
    assert_eq!(
        d.original.as_ref().and_then(|o| o.header("Subject")),
        Some("campaign 42")
    );
    // The same bytes are no feedback report.
    assert!(matches!(
        report::parse_arf(POSTFIX_DSN),
        Err(ReportError::NotAReport(_))
    ));
}

#[test]
fn malformed_reports_are_named() {
    let plain = b"From: a@b\r\nSubject: hi\r\n\r\nhello\r\n";
    assert!(matches!(report::parse(plain), Err(ReportError::NotAReport(t)) if t == "text/plain"));
    let no_status = String::from_utf8_lossy(POSTFIX_DSN)
        .replace("Status: 5.1.1\r\n", "")
        .replace("Status: 5.1.1\n", "");
    assert_eq!(
        report::parse(no_status.as_bytes()),
        Err(ReportError::MissingField("Status"))
    );
    let bad_action =
        String::from_utf8_lossy(POSTFIX_DSN).replacen("Action: failed", "Action: exploded", 1);
    assert!(matches!(
        report::parse(bad_action.as_bytes()),
        Err(ReportError::BadField {
            field: "Action",
            ..
        })
    ));
    let no_part =
        String::from_utf8_lossy(POSTFIX_DSN).replace("message/delivery-status", "text/plain");
    assert_eq!(
        report::parse(no_part.as_bytes()),
        Err(ReportError::MissingPart("message/delivery-status"))
    );
}

/// RFC 5965 Appendix B's report, built by Python's `email` package with the
/// reported message sent from `verp` to `rcpt`.
const ARF_SCRIPT: &str = r#"
import sys
from email.message import Message
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email import message_from_string
verp, rcpt, ftype = sys.argv[1], sys.argv[2], sys.argv[3]
report = MIMEMultipart("report", report_type="feedback-report")
report["From"] = "<abusedesk@example.com>"
report["To"] = "<" + verp + ">"
report["Subject"] = "FW: Earn money"
report["Date"] = "Thu, 8 Mar 2005 17:40:36 EDT"
report.attach(MIMEText("This is an email abuse report for an email message received from IP\n"
                       "192.0.2.1 on Thu, 8 Mar 2005 14:00:00 EDT.\n"))
fields = Message()
fields["Content-Type"] = "message/feedback-report"
fields.set_payload("Feedback-Type: " + ftype + "\n"
    "User-Agent: SomeGenerator/1.0\n"
    "Version: 1\n"
    "Original-Mail-From: <" + verp + ">\n"
    "Original-Rcpt-To: <" + rcpt + ">\n"
    "Arrival-Date: Thu, 8 Mar 2005 14:00:00 EDT\n"
    "Reporting-MTA: dns; mail.example.com\n"
    "Source-IP: 192.0.2.1\n"
    "Authentication-Results: mail.example.com;\n"
    "               spf=fail smtp.mail=somespammer@example.com\n"
    "Reported-Domain: example.net\n"
    "Incidents: 2\n")
report.attach(fields)
original = message_from_string(
    "Return-Path: <" + verp + ">\n"
    "From: <somespammer@example.net>\n"
    "To: <" + rcpt + ">\n"
    "Subject: Earn money\n"
    "MIME-Version: 1.0\n"
    "Content-type: text/plain\n"
    "Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.net>\n"
    "Date: Thu, 02 Sep 2004 12:31:03 -0500\n\n"
    "Spam Spam Spam\n")
report.attach(MIMEMessage(original))
sys.stdout.write(report.as_string())
"#;

fn python_arf(verp: &str, rcpt: &str, ftype: &str) -> Vec<u8> {
    let out = Command::new("python3")
        .args(["-c", ARF_SCRIPT, verp, rcpt, ftype])
        .output()
        .expect("python3 (Debian's python3 is required)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[test]
fn arf_from_python_email_is_matched_to_its_send() {
    let secret = Secret::from_bytes(&[9u8; 32]).expect("secret");
    let fields = VerpFields {
        tenant: 2,
        campaign: 5,
        message: 77,
        recipient: 0,
    };
    let verp = token::bounce_address(&secret, &fields, "bounces.example.com");
    let bytes = python_arf(&verp, "user@example.com", "abuse");
    let Report::Feedback(f) = report::parse(&bytes).expect("feedback report") else {
        panic!("not ARF")
    };
    assert_eq!(f.feedback_type, FeedbackType::Abuse);
    assert!(f.feedback_type.is_complaint());
    assert_eq!(f.user_agent.as_deref(), Some("SomeGenerator/1.0"));
    assert_eq!(f.version.as_deref(), Some("1"));
    assert_eq!(f.original_rcpt_to, ["user@example.com"]);
    assert_eq!(f.source_ip, Some("192.0.2.1".parse().expect("ip")));
    assert_eq!(f.incidents, Some(2));
    assert_eq!(f.reporting_mta.as_deref(), Some("mail.example.com"));
    assert_eq!(
        f.original.as_ref().and_then(|o| o.message_id()),
        Some("8787KJKJ3K4J3K4J3K4J3.mail@example.net")
    );
    let candidates = f.return_path_candidates();
    assert_eq!(candidates[0], verp);
    assert_eq!(
        token::parse_local_part(&secret, candidates[0]),
        Ok(LocalPart::Bounce(fields))
    );

    // "not-spam" is a report, not a complaint; a forged return path matches nothing.
    let f = report::parse_arf(&python_arf(
        "b-aaaa@bounces.example.com",
        "u@example.com",
        "not-spam",
    ))
    .expect("arf");
    assert!(!f.feedback_type.is_complaint());
    assert!(
        f.return_path_candidates()
            .iter()
            .all(|a| token::parse_local_part(&secret, a).is_err())
    );
    assert!(matches!(
        report::parse_dsn(&bytes),
        Err(ReportError::NotAReport(_))
    ));
}

/// The secret and send tests/postfix_dsn.rs used when Postfix wrote the fixture.
fn fixture_send() -> (Secret, VerpFields) {
    let secret = Secret::from_bytes(b"a cluster secret of at least 32 bytes!").expect("secret");
    let send = VerpFields {
        tenant: 7,
        campaign: 42,
        message: 0x0190_0000_0000_0000_0000_0000_0000_0abc,
        recipient: 3,
    };
    (secret, send)
}

#[test]
fn triage_of_mail_to_the_bounce_domain() {
    use tern_bounce::inbound::{Triage, Unmatched, triage};
    let (secret, send) = fixture_send();
    let rules = Rules::builtin();
    let verp = token::bounce_address(&secret, &send, "bounces.test");
    let Triage::Bounces {
        send: got,
        recipients,
    } = triage(&secret, rules, &verp, POSTFIX_DSN)
    else {
        panic!("not bounces")
    };
    assert_eq!(got, send);
    let gone = recipients
        .iter()
        .find(|r| r.recipient == "gone@remote.test")
        .expect("gone");
    assert!(
        gone.suppress && gone.class == Class::InvalidRecipient,
        "{gone:?}"
    );
    assert_eq!(gone.decided_by, "rule gmail-no-such-account");
    assert!(
        recipients.iter().filter(|r| r.suppress).count() == 1,
        "{recipients:?}"
    );
    // Sent to a fixed address: matched through the report's own addresses.
    assert!(matches!(
        triage(&secret, rules, "fbl@bounces.test", POSTFIX_DSN),
        Triage::Bounces { .. }
    ));
    // Another cluster's secret: nothing matches, nothing is acted on.
    let other = Secret::from_bytes(&[1u8; 32]).expect("secret");
    assert!(matches!(
        triage(&other, rules, &verp, POSTFIX_DSN),
        Triage::Unmatched(Unmatched::NoToken(_))
    ));
    // A valid return path, but an out-of-office reply: kept, not a bounce.
    let ooo = b"From: bob@remote.test\r\nSubject: Out of office\r\n\r\nBack Monday.\r\n";
    assert!(matches!(
        triage(&secret, rules, &verp, ooo),
        Triage::Unmatched(Unmatched::NotAReport(_))
    ));
    // The mailto: unsubscribe address.
    let u = format!(
        "{}@bounces.test",
        token::unsubscribe_local_part(&secret, &send)
    );
    assert_eq!(triage(&secret, rules, &u, ooo), Triage::Unsubscribe(send));
    // An ARF complaint.
    let arf = python_arf(&verp, "gone@remote.test", "abuse");
    let Triage::Feedback {
        send: got,
        feedback,
    } = triage(&secret, rules, "fbl@bounces.test", &arf)
    else {
        panic!("not feedback")
    };
    assert_eq!(got, send);
    assert!(feedback.feedback_type.is_complaint());
}
