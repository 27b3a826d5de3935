//! Inbound SPF (RFC 7208), DKIM (RFC 6376), ARC (RFC 8617) and DMARC
//! (RFC 7489) checks for mail arriving on the MX listener: crates.io's
//! `mail-auth` verifies, [`crate::authdns`] gives it DNS through the
//! resolver service.
//!
//! The result is one `Authentication-Results:` field (RFC 8601) and a
//! disposition from the configured policy: deliver, deliver into Junk, or
//! reject with `550 5.7.1`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimError;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult, Error,
    MessageAuthenticator, SpfResult,
};
use tern_runtime::config::ConfigValue;
use tern_smtp::{Reply, codes};

use crate::authdns::{self, ResolverClient};

/// What a verdict does to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Action {
    /// Deliver as usual (the header records the result).
    None,
    /// Deliver into the recipient's `\Junk` mailbox.
    Junk,
    /// Refuse at the end of DATA/BDAT with `550 5.7.1`; nothing is stored.
    Reject,
}

impl ConfigValue for Action {
    const EXPECTED: &'static str = "none, junk or reject";
    fn parse_value(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Some(Action::None),
            "junk" => Some(Action::Junk),
            "reject" => Some(Action::Reject),
            _ => None,
        }
    }
}

/// The inbound policy (config keys `inbound_*`, see the README).
#[derive(Debug, Clone)]
pub struct InboundPolicy {
    /// Run the checks at all (`inbound_checks`).
    pub enabled: bool,
    /// DMARC failure under `p=reject` (`inbound_dmarc_reject`).
    pub dmarc_reject: Action,
    /// DMARC failure under `p=quarantine` (`inbound_dmarc_quarantine`).
    pub dmarc_quarantine: Action,
    /// SPF `fail` of the MAIL FROM identity alone (`inbound_spf_fail`).
    pub spf_fail: Action,
}

/// The outcome of the checks on one message.
#[derive(Debug, Clone)]
pub(crate) struct Verdict {
    /// The `Authentication-Results:` field, CRLF-terminated.
    pub(crate) header: String,
    /// What to do with the message.
    pub(crate) action: Action,
}

impl Verdict {
    /// The reply for [`Action::Reject`] (RFC 7372 §3.2: 5.7.1 for policy).
    pub(crate) fn reject_reply(&self, why: &str) -> Reply {
        Reply::new(550, codes::NOT_AUTHORIZED, why)
    }
}

/// Errors setting the checker up.
#[derive(Debug, thiserror::Error)]
pub enum CheckerError {
    /// The loopback DNS responder could not be bound.
    #[error("bind the inbound-check DNS responder: {0}")]
    Bind(std::io::Error),
    /// mail-auth's resolver could not be built.
    #[error("inbound-check resolver: {0}")]
    Resolver(String),
}

/// Runs the checks; one per ingress, shared by every session.
pub(crate) struct Checker {
    auth: MessageAuthenticator,
    /// Our authserv-id (`TERN_HOSTNAME`).
    hostname: String,
    policy: InboundPolicy,
}

/// How long all lookups for one message may take; past it the results are
/// `temperror` (header only: a DNS hiccup never loses mail).
const CHECK_DEADLINE: Duration = Duration::from_secs(20);

impl Checker {
    /// Start the DNS responder and build mail-auth's resolver on it.
    pub(crate) async fn start(
        resolver: ResolverClient,
        hostname: String,
        policy: InboundPolicy,
    ) -> Result<Checker, CheckerError> {
        let (addr, _task) = authdns::start(resolver).await.map_err(CheckerError::Bind)?;
        let auth = authenticator(addr)?;
        Ok(Checker {
            auth,
            hostname,
            policy,
        })
    }

    /// Check one message as received (`raw`: header and body), for a client
    /// at `ip` that said `helo` and gave `mail_from` (empty for `<>`).
    pub(crate) async fn check(
        &self,
        raw: &[u8],
        ip: IpAddr,
        helo: &str,
        mail_from: &str,
    ) -> Verdict {
        let ip = ip.to_canonical();
        match tokio::time::timeout(CHECK_DEADLINE, self.evaluate(raw, ip, helo, mail_from)).await {
            Ok(v) => v,
            Err(_) => {
                metrics::counter!("tern_inbound_checks_total", "result" => "timeout").increment(1);
                Verdict {
                    header: format!(
                        "Authentication-Results: {}; none (checks timed out)\r\n",
                        self.hostname
                    ),
                    action: Action::None,
                }
            }
        }
    }

    async fn evaluate(&self, raw: &[u8], ip: IpAddr, helo: &str, mail_from: &str) -> Verdict {
        let host = self.hostname.as_str();
        let auth = &self.auth;
        // SPF on HELO and on MAIL FROM (RFC 7208 §2.3, §2.4); for `<>` the
        // MAIL FROM identity is postmaster@HELO, i.e. the HELO check.
        let spf_helo = auth
            .verify_spf(SpfParameters::verify_ehlo(ip, helo, host))
            .await;
        let spf_from = if mail_from.is_empty() {
            spf_helo.clone()
        } else {
            auth.verify_spf(SpfParameters::verify_mail_from(ip, helo, host, mail_from))
                .await
        };
        let Some(msg) = AuthenticatedMessage::parse(raw) else {
            // Not a parsable RFC 5322 message: SPF is all there is.
            let header = AuthenticationResults::new(host)
                .with_spf_ehlo_result(&spf_helo, ip, helo)
                .with_spf_mailfrom_result(&spf_from, ip, mail_from, helo)
                .to_header();
            return Verdict {
                header,
                action: self.spf_action(&spf_from),
            };
        };
        let dkim_raw = auth.verify_dkim(&msg).await;
        let dkim: Vec<DkimOutput<'_>> = dkim_raw.iter().map(permfail_is_fail).collect();
        let arc = auth.verify_arc(&msg).await;
        let from_domain = mail_from.rsplit_once('@').map_or(helo, |(_, d)| d);
        let dmarc = auth
            .verify_dmarc(DmarcParameters::new(&msg, &dkim, from_domain, &spf_from))
            .await;
        let header = AuthenticationResults::new(host)
            .with_dkim_results(&dkim, msg.from())
            .with_arc_result(&arc, ip)
            .with_spf_ehlo_result(&spf_helo, ip, helo)
            .with_spf_mailfrom_result(&spf_from, ip, mail_from, helo)
            .with_dmarc_result(&dmarc)
            .to_header();
        let mut action = self.spf_action(&spf_from);
        if matches!(dmarc.result(), DmarcResult::Fail(_)) {
            let policy = self.sampled(dmarc.policy(), dmarc.domain()).await;
            action = action.max(match policy {
                Policy::Reject => self.policy.dmarc_reject,
                Policy::Quarantine => self.policy.dmarc_quarantine,
                Policy::None | Policy::Unspecified => Action::None,
            });
        }
        metrics::counter!("tern_inbound_checks_total", "result" => match action {
            Action::None => "deliver",
            Action::Junk => "junk",
            Action::Reject => "reject",
        })
        .increment(1);
        Verdict { header, action }
    }

    fn spf_action(&self, spf: &mail_auth::SpfOutput) -> Action {
        if spf.result() == SpfResult::Fail {
            self.policy.spf_fail
        } else {
            Action::None
        }
    }

    /// RFC 7489 §6.6.4: with `pct=` below 100, a message outside the sample
    /// gets the next policy down (reject → quarantine → none).
    async fn sampled(&self, policy: Policy, domain: &str) -> Policy {
        if !matches!(policy, Policy::Reject | Policy::Quarantine) {
            return policy;
        }
        let pct = self.pct(domain).await;
        if pct >= 100 || rand::random_range(0..100u8) < pct {
            return policy;
        }
        match policy {
            Policy::Reject => Policy::Quarantine,
            _ => Policy::None,
        }
    }

    /// The `pct=` of the DMARC record that applies to `domain`: its own, or
    /// the nearest parent's (at most the organisational domain's).
    async fn pct(&self, domain: &str) -> u8 {
        let mut name = domain.trim_end_matches('.');
        loop {
            if let Some(record) = self.dmarc_record(name).await {
                return crate::authres::dmarc_pct(&record);
            }
            match name.split_once('.') {
                Some((_, parent)) if parent.contains('.') => name = parent,
                _ => return 100,
            }
        }
    }

    async fn dmarc_record(&self, domain: &str) -> Option<String> {
        let lookup = self
            .auth
            .resolver()
            .txt_lookup(format!("_dmarc.{domain}."))
            .await
            .ok()?;
        lookup.answers().iter().find_map(|r| match &r.data {
            RData::TXT(txt) => {
                let text: Vec<u8> = txt
                    .txt_data
                    .iter()
                    .flat_map(|s| s.iter().copied())
                    .collect();
                let text = String::from_utf8_lossy(&text).into_owned();
                text.trim_start()
                    .to_ascii_lowercase()
                    .starts_with("v=dmarc1")
                    .then_some(text)
            }
            _ => None,
        })
    }
}

/// mail-auth 0.13.3 reports a body hash mismatch and an expired signature
/// as `neutral`; both are a failed verification (RFC 6376 §6.1.1, §6.1.3:
/// PERMFAIL), which RFC 8601 §2.7.1 calls `fail` (as dkimpy and authheaders
/// do). DMARC is unaffected: neither passes.
fn permfail_is_fail<'a>(o: &'a DkimOutput<'_>) -> DkimOutput<'a> {
    match (o.result(), o.signature()) {
        (DkimResult::Neutral(e @ Error::Dkim(DkimError::FailedBodyHashMatch)), Some(sig))
        | (DkimResult::Neutral(e @ Error::Dkim(DkimError::SignatureExpired)), Some(sig)) => {
            DkimOutput::fail(e.clone()).with_signature(sig)
        }
        _ => o.clone(),
    }
}

/// mail-auth's hickory resolver, asking only the loopback responder.
fn authenticator(addr: SocketAddr) -> Result<MessageAuthenticator, CheckerError> {
    // UDP, and TCP for an answer too long for UDP (authdns serves both).
    let mut server = NameServerConfig::udp_and_tcp(addr.ip());
    for c in &mut server.connections {
        c.port = addr.port();
    }
    let config = ResolverConfig::from_name_servers(vec![server]);
    let mut opts = ResolverOpts::default();
    // The resolver service retries upstream; one try here, and a negative
    // answer is final (one server only).
    opts.attempts = 1;
    opts.timeout = Duration::from_secs(6);
    opts.ndots = 0;
    opts.cache_size = 8192;
    opts.use_hosts_file = mail_auth::hickory_resolver::config::ResolveHosts::Never;
    opts.try_tcp_on_error = false;
    MessageAuthenticator::new(config, opts).map_err(|e| CheckerError::Resolver(e.to_string()))
}

/// Whether this message is checked: MX listener, not authenticated, not
/// from a trusted network (those are ours and get signed instead).
pub(crate) fn applies(mx: bool, authenticated: bool, trusted: bool) -> bool {
    mx && !authenticated && !trusted
}

/// Shared handle.
pub(crate) type SharedChecker = Arc<Checker>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_parse_and_order() {
        assert_eq!(Action::parse_value("Reject"), Some(Action::Reject));
        assert_eq!(Action::parse_value("junk"), Some(Action::Junk));
        assert_eq!(Action::parse_value("none"), Some(Action::None));
        assert_eq!(Action::parse_value("drop"), None);
        assert!(Action::Reject > Action::Junk && Action::Junk > Action::None);
    }

    #[test]
    fn only_unauthenticated_untrusted_mx_mail_is_checked() {
        assert!(applies(true, false, false));
        assert!(!applies(false, false, false));
        assert!(!applies(true, true, false));
        assert!(!applies(true, false, true));
    }
}
