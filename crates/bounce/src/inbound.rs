//! What to do with one message that arrived for the bounce domain: the
//! pure decision ingress makes before anything is published. It never
//! delivers to a person; what matches nothing is kept for inspection.

use tern_smtp::Enhanced;

use crate::class::Class;
use crate::report::{self, Action, Feedback, Report, ReportError};
use crate::rules::{Matched, Rules};
use crate::token::{self, LocalPart, Secret, TokenError, VerpFields};

/// One recipient of a late bounce, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateBounce {
    /// The recipient the DSN is about (`Final-Recipient`).
    pub recipient: String,
    /// `failed` (a `bounced` event) or `delayed` (a `deferred` one).
    pub action: Action,
    /// The class.
    pub class: Class,
    /// What decided it, as `tern bounce classify` prints it.
    pub decided_by: String,
    /// A permanent failure.
    pub permanent: bool,
    /// Put the recipient on the tenant's suppression list.
    pub suppress: bool,
    /// The DSN's `Status`.
    pub status: Enhanced,
    /// The DSN's `Diagnostic-Code`.
    pub diagnostic: Option<String>,
}

/// Why a message for the bounce domain matched no send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unmatched {
    /// Neither the envelope recipient nor any address in the report carries
    /// a token that verifies (forged, another cluster's, or a person
    /// writing to the bounce domain).
    NoToken(TokenError),
    /// A valid VERP address, but the message is not a report (an
    /// auto-reply, a DSN in a format this parser does not read).
    NotAReport(ReportError),
}

/// The decision for one message to the bounce domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// Mail to a `u-` address (the `mailto:` of `List-Unsubscribe`):
    /// unsubscribe that send's recipient.
    Unsubscribe(VerpFields),
    /// A DSN for one of our sends: `failed`/`delayed` recipients, classified
    /// (`delivered`/`relayed`/`expanded` blocks are left out).
    Bounces {
        /// The send the VERP token names.
        send: VerpFields,
        /// Each failed or delayed recipient.
        recipients: Vec<LateBounce>,
    },
    /// A feedback report (ARF) about one of our sends: a `complained` event
    /// when [`crate::report::FeedbackType::is_complaint`].
    Feedback {
        /// The send the VERP token names.
        send: VerpFields,
        /// The report.
        feedback: Box<Feedback>,
    },
    /// Nothing matched: count it and keep it for inspection.
    Unmatched(Unmatched),
}

/// Decide what a message that arrived for `envelope_rcpt` (an address at the
/// bounce domain) is. The envelope recipient is trusted first; a report sent
/// to a fixed address (some feedback loops) is matched by the addresses in it.
pub fn triage(secret: &Secret, rules: &Rules, envelope_rcpt: &str, message: &[u8]) -> Triage {
    let by_rcpt = token::parse_local_part(secret, envelope_rcpt);
    if let Ok(LocalPart::Unsubscribe(send)) = by_rcpt {
        return Triage::Unsubscribe(send);
    }
    let parsed = report::parse(message);
    let send = match (&by_rcpt, &parsed) {
        (Ok(LocalPart::Bounce(send)), _) => *send,
        (Err(e), Ok(r)) => match from_report(secret, r) {
            Some(send) => send,
            None => return Triage::Unmatched(Unmatched::NoToken(e.clone())),
        },
        (Err(e), Err(_)) => return Triage::Unmatched(Unmatched::NoToken(e.clone())),
        (Ok(LocalPart::Unsubscribe(_)), _) => unreachable!("returned above"),
    };
    match parsed {
        Err(e) => Triage::Unmatched(Unmatched::NotAReport(e)),
        Ok(Report::Feedback(f)) => Triage::Feedback {
            send,
            feedback: Box::new(f),
        },
        Ok(Report::Dsn(d)) => Triage::Bounces {
            send,
            recipients: d
                .recipients
                .iter()
                .filter(|r| matches!(r.action, Action::Failed | Action::Delayed))
                .map(|r| {
                    let v = rules.classify(&r.observation());
                    LateBounce {
                        recipient: r.final_recipient.clone(),
                        action: r.action,
                        class: v.class,
                        decided_by: match v.matched {
                            Matched::Rule(name) => format!("rule {name}"),
                            other => other.to_string(),
                        },
                        permanent: v.permanent,
                        suppress: v.suppresses(),
                        status: r.status,
                        diagnostic: r.diagnostic_code.clone(),
                    }
                })
                .collect(),
        },
    }
}

/// The first address in the report that carries a VERP token that verifies.
fn from_report(secret: &Secret, r: &Report) -> Option<VerpFields> {
    let candidates = match r {
        Report::Dsn(d) => d.return_path_candidates(),
        Report::Feedback(f) => f.return_path_candidates(),
    };
    candidates
        .into_iter()
        .find_map(|a| match token::parse_local_part(secret, a) {
            Ok(LocalPart::Bounce(send)) => Some(send),
            _ => None,
        })
}
