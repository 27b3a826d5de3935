//! Webhook payloads and their signature (the pure part of issue 16's
//! webhooks; the dispatcher that POSTs them is not built yet).
//!
//! A delivery is a JSON array of events. Its header is
//! `Tern-Signature: t=<unix seconds>, v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`:
//! the timestamp is inside the MAC, so a receiver that refuses old `t`
//! values cannot be fed a captured delivery again.

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;
use tern_proto::Event;

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Tern-Signature";

/// One event as a webhook receiver sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WebhookEvent {
    /// Event kind (docs/EVENTS.md).
    pub kind: String,
    /// The message id from the `250` reply.
    pub message_id: String,
    /// The recipient.
    pub recipient: String,
    /// Campaign tag, empty for none.
    pub campaign: String,
    /// Batch id, empty for none.
    pub batch_id: String,
    /// Bounce class for bounced and deferred events.
    pub bounce_class: String,
    /// SMTP reply code of the remote, 0 for none.
    pub code: u32,
    /// The remote's reply text.
    pub reply: String,
    /// When it happened, Unix ms.
    pub at_unix_ms: i64,
}

impl From<&Event> for WebhookEvent {
    fn from(e: &Event) -> Self {
        WebhookEvent {
            kind: e.kind.clone(),
            message_id: e.message_id.clone(),
            recipient: e.recipient.clone(),
            campaign: e.campaign.clone(),
            batch_id: e.batch_id.clone(),
            bounce_class: e.bounce_class.clone(),
            code: e.code,
            reply: e.reply.clone(),
            at_unix_ms: e.at_unix_ms,
        }
    }
}

/// The body of one delivery: the events as a JSON array.
pub fn body(events: &[Event]) -> Vec<u8> {
    let v: Vec<WebhookEvent> = events.iter().map(WebhookEvent::from).collect();
    // Serialising plain strings and numbers cannot fail.
    serde_json::to_vec(&v).unwrap_or_else(|_| b"[]".to_vec())
}

/// The `Tern-Signature` value of `body` signed with `secret` at `t` (Unix seconds).
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t}, v1={hex}")
}

/// Whether `header` is a valid signature of `body` under `secret` made at
/// most `tolerance` seconds away from `now` (what a Rust receiver checks).
pub fn verify(secret: &[u8], header: &str, body: &[u8], now: u64, tolerance: u64) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',').map(str::trim) {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<u64>().ok(),
            Some(("v1", v)) => v1 = Some(v),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    if t.abs_diff(now) > tolerance {
        return false;
    }
    let Some(given) = unhex(v1) else {
        return false;
    };
    let mut mac = mac(secret);
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    // Constant-time comparison.
    mac.verify_slice(&given).is_ok()
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length (RFC 2104 §2), so this cannot fail.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC accepts every key length"),
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_signature_verifies_and_tampering_does_not() {
        let body = body(&[Event {
            kind: "delivered".into(),
            recipient: "a@example.net".into(),
            ..Default::default()
        }]);
        let h = signature(b"s3cret", 1_700_000_000, &body);
        assert!(h.starts_with("t=1700000000, v1="));
        assert!(verify(b"s3cret", &h, &body, 1_700_000_100, 300));
        assert!(!verify(b"other", &h, &body, 1_700_000_100, 300));
        assert!(!verify(b"s3cret", &h, b"[]", 1_700_000_100, 300));
        // Too old: a replayed delivery.
        assert!(!verify(b"s3cret", &h, &body, 1_700_001_000, 300));
    }
}
