//! Recipient policy and handing accepted messages to the spool.

use std::net::IpAddr;
use std::time::{Duration, Instant};
use tracing::Instrument;

use bytes::{Bytes, BytesMut};
use prost::Message as _;
use tern_proto::{DsnRet, Envelope, Recipient};
use tern_runtime::{body, bus, telemetry};
use tern_smtp::{ForwardPath, Message, MessageOutcome, RcptDecision, RcptTo, Reply, Ret, codes};
use tracing::Span;

use crate::conn::Ctx;

/// How long a recipient check may take before the client gets 451.
const CHECK_DEADLINE: Duration = Duration::from_secs(5);
/// How long storing a large body in the object store may take.
const STORE_DEADLINE: Duration = Duration::from_secs(30);
/// How long we wait for JetStream to acknowledge the envelope.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(5);

/// Why a message could not be spooled (the client gets 451 4.3.0).
#[derive(Debug, thiserror::Error)]
enum SpoolError {
    /// The body could not be stored.
    #[error("store body: {0}")]
    Body(#[from] body::BodyError),
    /// The envelope could not be published or was not acknowledged.
    #[error("publish envelope: {0}")]
    Publish(String),
    /// A step did not finish within its deadline.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

fn temp_failure(text: &str) -> Reply {
    Reply::new(451, codes::TEMP_SYSTEM, text)
}

impl Ctx {
    pub(crate) fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|net| net.contains(ip))
    }

    /// The address a recipient is recorded under in the envelope: as the
    /// client wrote it, except that a bare `<Postmaster>` becomes postmaster
    /// at our first local domain (RFC 5321 §4.5.1).
    pub(crate) fn rcpt_address(&self, rcpt: &RcptTo) -> String {
        match &rcpt.forward_path {
            ForwardPath::Postmaster => {
                let domain = self
                    .common
                    .local_domains
                    .first()
                    .map(|d| d.0.clone())
                    .unwrap_or_else(|| self.common.hostname.to_ascii_lowercase());
                format!("postmaster@{domain}")
            }
            ForwardPath::Mailbox(m) => m.to_string(),
        }
    }

    /// The address asked of the mailbox: the envelope address with the domain
    /// lower-cased (domains are case-insensitive, RFC 5321 §2.4; the local
    /// part is the mailbox's to interpret).
    fn lookup_address(&self, rcpt: &RcptTo) -> String {
        match &rcpt.forward_path {
            ForwardPath::Mailbox(m) => format!("{}@{}", m.local_part, m.domain.to_lowercase()),
            ForwardPath::Postmaster => self.rcpt_address(rcpt),
        }
    }

    /// Local domains: ask the mailbox. Elsewhere: relay for trusted clients only.
    /// `authenticated`: the session did AUTH, which allows relaying.
    pub(crate) async fn check_recipient(
        &self,
        client: IpAddr,
        authenticated: bool,
        rcpt: &RcptTo,
    ) -> RcptDecision {
        // A VERP return path or the unsubscribe address: ours, whatever the
        // mailbox says, and never relayed (issue 17).
        if let Some(inbox) = self.bounces.as_ref().filter(|b| b.takes(rcpt)) {
            if inbox.ready() {
                return RcptDecision::Accept;
            }
            return RcptDecision::Reject(temp_failure(
                "Bounce processing not ready, try again later",
            ));
        }
        let local = match &rcpt.forward_path {
            ForwardPath::Postmaster => true,
            ForwardPath::Mailbox(m) => {
                !m.is_address_literal() && self.common.is_local_domain(&m.domain)
            }
        };
        let address = self.lookup_address(rcpt);
        if !local {
            if authenticated || self.trusted(client) {
                return RcptDecision::Accept;
            }
            tracing::info!(rcpt = %address, client = %client, "relay denied");
            return RcptDecision::Reject(Reply::new(
                554,
                codes::NOT_AUTHORIZED,
                "Relay access denied",
            ));
        }
        let mut accounts = self.accounts.clone();
        let request = tern_proto::CheckRecipientRequest {
            address: address.clone(),
        };
        match tokio::time::timeout(CHECK_DEADLINE, accounts.check_recipient(request)).await {
            Ok(Ok(resp)) if resp.get_ref().exists => RcptDecision::Accept,
            Ok(Ok(_)) => {
                tracing::info!(rcpt = %address, "unknown local recipient");
                RcptDecision::Reject(Reply::new(
                    550,
                    codes::NO_SUCH_USER,
                    format!("<{address}>: no such user here"),
                ))
            }
            Ok(Err(status)) => {
                tracing::warn!(rcpt = %address, error = %status, "mailbox recipient check failed");
                RcptDecision::Reject(temp_failure("Recipient lookup failed, try again later"))
            }
            Err(_) => {
                tracing::warn!(rcpt = %address, "mailbox recipient check timed out");
                RcptDecision::Reject(temp_failure("Recipient lookup timed out, try again later"))
            }
        }
    }

    /// Give the message an id, check its authentication (MX listener only,
    /// `mx`), prepend `Received:` (and `Authentication-Results:`), store the
    /// body and publish the envelope; `Queued` only once JetStream
    /// acknowledged it.
    pub(crate) async fn accept_message(
        &self,
        mut message: Message,
        client: IpAddr,
        tls: Option<&str>,
        mx: bool,
    ) -> MessageOutcome {
        let id = ulid::Ulid::new().to_string();
        let span = Span::current();
        span.record("message_id", id.as_str());
        span.record("rcpt_count", message.rcpts.len());
        // Bounce-domain recipients first: recorded (durably) here, the
        // others spooled the normal way; a failure of either is a 451 for
        // the whole transaction, and a retry records the same events again
        // under the same de-duplication ids.
        if let Some(inbox) = &self.bounces {
            let (ours, others): (Vec<RcptTo>, Vec<RcptTo>) =
                message.rcpts.drain(..).partition(|r| inbox.takes(r));
            message.rcpts = others;
            if !ours.is_empty() {
                let addresses: Vec<String> = ours.iter().map(|r| self.rcpt_address(r)).collect();
                let sender = message.mail_from.sender();
                let client_ip = client.to_canonical().to_string();
                if let Err(e) = inbox
                    .record(&id, &sender, &client_ip, &addresses, &message.body)
                    .await
                {
                    tracing::warn!(message_id = %id, error = %e, "could not record bounce-domain mail");
                    return MessageOutcome::Failed(temp_failure(
                        "Temporary failure recording the report, try again later",
                    ));
                }
                tracing::info!(message_id = %id, rcpts = addresses.len(), "bounce-domain mail recorded");
                if message.rcpts.is_empty() {
                    return MessageOutcome::Queued { id };
                }
            }
        }
        let verdict = match &self.inbound {
            Some(checker)
                if crate::authcheck::applies(
                    mx,
                    message.auth_user.is_some(),
                    self.trusted(client),
                ) =>
            {
                let sender = message.mail_from.sender();
                let v = checker
                    .check(&message.body, client, &message.helo, &sender)
                    .instrument(tracing::info_span!("inbound.check", message_id = %id))
                    .await;
                if v.action == crate::Action::Reject {
                    tracing::info!(message_id = %id, mail_from = %sender, "rejected by authentication policy");
                    return MessageOutcome::Failed(v.reject_reply(
                        "Message rejected: the sender's domain does not authenticate it (DMARC/SPF policy)",
                    ));
                }
                Some(v)
            }
            _ => None,
        };
        // Signed after the checks: a rejected message costs no signature.
        let dkim = match self.dkim_sign(&id, &message, client).await {
            Ok(fields) => fields,
            Err(reply) => return MessageOutcome::Failed(reply),
        };
        match self
            .spool(
                &id,
                &message,
                client,
                tls,
                verdict.as_ref(),
                dkim.as_deref(),
            )
            .await
        {
            Ok(()) => {
                tracing::info!(
                    message_id = %id,
                    mail_from = %message.mail_from.sender(),
                    rcpts = message.rcpts.len(),
                    size = message.body.len(),
                    "message queued"
                );
                MessageOutcome::Queued { id }
            }
            Err(e) => {
                tracing::warn!(message_id = %id, error = %e, "could not spool message");
                MessageOutcome::Failed(temp_failure(
                    "Temporary failure storing the message, try again later",
                ))
            }
        }
    }

    async fn spool(
        &self,
        id: &str,
        message: &Message,
        client: IpAddr,
        tls: Option<&str>,
        verdict: Option<&crate::authcheck::Verdict>,
        dkim: Option<&str>,
    ) -> Result<(), SpoolError> {
        let received_at = tern_runtime::now_unix_ms();
        let header =
            crate::received_header(message, client, &self.common.hostname, id, received_at, tls);
        // RFC 8601 §5: results claiming to be ours never come from outside.
        let body = crate::authres::strip_own_results(&message.body, &self.common.hostname);
        let results = verdict.map_or("", |v| v.header.as_str());
        let dkim = dkim.unwrap_or_default();
        let mut full =
            BytesMut::with_capacity(header.len() + results.len() + dkim.len() + body.len());
        full.extend_from_slice(header.as_bytes());
        full.extend_from_slice(results.as_bytes());
        full.extend_from_slice(dkim.as_bytes());
        full.extend_from_slice(&body);
        let size = full.len();
        let body_ref =
            tokio::time::timeout(STORE_DEADLINE, body::store(&self.js, id, full.freeze()))
                .instrument(tracing::info_span!("spool.store", message_id = %id, size))
                .await
                .map_err(|_| SpoolError::Timeout("body store"))??;
        let envelope = Envelope {
            id: id.to_string(),
            mail_from: message.mail_from.sender(),
            rcpts: message
                .rcpts
                .iter()
                .map(|r| Recipient {
                    address: self.rcpt_address(r),
                    orcpt: r.orcpt.as_ref().map(|o| o.to_string()).unwrap_or_default(),
                    notify: r.notify.iter().map(|n| n.as_str().to_string()).collect(),
                })
                .collect(),
            body: Some(body_ref),
            received_at_unix_ms: received_at,
            client_ip: client.to_canonical().to_string(),
            helo: message.helo.clone(),
            auth_user: message.auth_user.clone().unwrap_or_default(),
            envid: message.mail_from.envid.clone().unwrap_or_default(),
            ret: match message.mail_from.ret {
                None => DsnRet::Unspecified,
                Some(Ret::Full) => DsnRet::Full,
                Some(Ret::Hdrs) => DsnRet::Hdrs,
            } as i32,
            smtputf8: message.mail_from.smtputf8,
            eight_bit: message.eight_bit(),
            junk: verdict.is_some_and(|v| v.action == crate::Action::Junk),
            require_tls: message.mail_from.require_tls,
            // RFC 8689 §4.1: with REQUIRETLS the header field is ignored.
            tls_optional: !message.mail_from.require_tls && tls_required_no(&message.body),
            // tenant, campaign, batch_id (injection API) are not set by a
            // plain SMTP transaction.
            ..Default::default()
        };
        self.publish(id, Bytes::from(envelope.encode_to_vec()))
            .await
    }

    /// Publish on `tern.spool` with the message id for de-duplication and the
    /// current trace context, and wait for the JetStream ack.
    async fn publish(&self, id: &str, payload: Bytes) -> Result<(), SpoolError> {
        let mut headers = async_nats::HeaderMap::new();
        telemetry::inject_nats(&mut headers);
        let publish = async_nats::jetstream::message::PublishMessage::build()
            .headers(headers)
            .message_id(id)
            .expected_stream(bus::SPOOL_STREAM)
            .payload(payload);
        let start = Instant::now();
        // The headers carry the transaction's context (taken above), so the
        // queue's span is the transaction's child; this span times the
        // publish and its ack. Attribute names: OpenTelemetry messaging
        // semantic conventions.
        let span = tracing::info_span!(
            "spool.publish",
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "publish",
            messaging.destination.name = bus::SPOOL_SUBJECT,
            messaging.message.id = %id,
        );
        let result = tokio::time::timeout(PUBLISH_DEADLINE, async {
            let ack = self
                .js
                .send_publish(bus::SPOOL_SUBJECT, publish)
                .await
                .map_err(|e| SpoolError::Publish(e.to_string()))?;
            ack.await.map_err(|e| SpoolError::Publish(e.to_string()))
        })
        .instrument(span)
        .await;
        metrics::histogram!("tern_spool_publish_seconds").record(start.elapsed().as_secs_f64());
        let ack = result.map_err(|_| SpoolError::Timeout("spool publish ack"))??;
        tracing::debug!(stream = %ack.stream, seq = ack.sequence, duplicate = ack.duplicate, "spool ack");
        Ok(())
    }
}

/// Does the header section carry `TLS-Required: No` (RFC 8689 §3), the
/// sender's request that the recipient's TLS policies be ignored?
pub(crate) fn tls_required_no(message: &[u8]) -> bool {
    let (header, _) = tern_mailproto::mime::split_header(message);
    tern_mailproto::mime::any_field(header, "TLS-Required", |v| {
        v.trim_ascii().eq_ignore_ascii_case(b"no")
    })
}

#[cfg(test)]
mod tls_required_tests {
    use super::tls_required_no;

    #[test]
    fn tls_required_no_is_found_in_the_header_only() {
        assert!(tls_required_no(
            b"Subject: x\r\nTLS-Required:  no \r\n\r\nbody\r\n"
        ));
        assert!(tls_required_no(b"tls-required: No\r\n\r\n"));
        assert!(!tls_required_no(b"TLS-Required: Yes\r\n\r\n"));
        assert!(!tls_required_no(b"Subject: x\r\n\r\nTLS-Required: No\r\n"));
    }
}
