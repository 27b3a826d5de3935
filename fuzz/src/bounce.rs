//! DSN (RFC 3464) and ARF (RFC 5965) reports that arrive at the bounce
//! domain, and the triage ingress makes of them.

use tern_bounce::Rules;
use tern_bounce::inbound::{self, Triage};
use tern_bounce::report::{self, Action, Report};
use tern_bounce::token::{self, Secret, VerpFields};

/// No panic; `report::parse` agrees with the DSN and ARF parsers it
/// dispatches to; triage never attributes a message to a send whose token
/// it does not carry, and every late bounce names a failed or delayed
/// recipient.
pub fn report(data: &[u8]) {
    match report::parse(data) {
        Ok(Report::Dsn(d)) => assert_eq!(report::parse_dsn(data), Ok(d)),
        Ok(Report::Feedback(f)) => assert_eq!(report::parse_arf(data), Ok(f)),
        Err(_) => {}
    }
    let secret = Secret::from_bytes(&[7; Secret::MIN_LEN]).expect("a long enough secret");
    let send = VerpFields {
        tenant: 3,
        campaign: 5,
        message: 0x0123_4567_89ab_cdef,
        recipient: 9,
    };
    // Trusted by its envelope recipient, and (a fixed feedback-loop
    // address) by the addresses in the report: only a token made with the
    // secret can name a send, so any match is the send below.
    let verp = token::bounce_address(&secret, &send, "bounces.example");
    for rcpt in [verp.as_str(), "fbl@bounces.example"] {
        match inbound::triage(&secret, Rules::builtin(), rcpt, data) {
            Triage::Bounces {
                send: s,
                recipients,
            } => {
                assert_eq!(s, send, "attributed to another send");
                for r in recipients {
                    assert!(
                        matches!(r.action, Action::Failed | Action::Delayed),
                        "{r:?}"
                    );
                }
            }
            Triage::Feedback { send: s, .. } | Triage::Unsubscribe(s) => {
                assert_eq!(s, send, "attributed to another send");
            }
            Triage::Unmatched(_) => {}
        }
    }
}
