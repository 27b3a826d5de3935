//! Lifecycle events on `tern.events.<kind>`: the log a bulk sender feeds into
//! analytics and suppression lists (schema: docs/EVENTS.md).

use async_nats::jetstream::{
    self,
    context::{PublishAckFuture, PublishError},
};
use prost::Message as _;
use tern_proto::{Event, Job, RecipientResult};
use tern_runtime::{bus, now_unix_ms};

/// The event kinds, one subject each.
pub mod kind {
    /// Accepted and routed.
    pub const RECEIVED: &str = "received";
    /// Accepted by the remote MX or stored in the mailbox.
    pub const DELIVERED: &str = "delivered";
    /// Temporary failure; another attempt is scheduled.
    pub const DEFERRED: &str = "deferred";
    /// Permanent failure.
    pub const BOUNCED: &str = "bounced";
    /// Still undelivered when the message's lifetime ended.
    pub const EXPIRED: &str = "expired";
    /// A job was set aside because its destination is on hold.
    pub const HELD: &str = "held";
    /// Removed from the queue by an operator (`tern queue delete`).
    pub const DELETED: &str = "deleted";
    /// Not delivered: the recipient is on a suppression list.
    pub const SUPPRESSED: &str = "suppressed";
}

/// An event for one recipient of `job`.
pub fn event(kind: &str, job: &Job, address: &str, result: Option<&RecipientResult>) -> Event {
    let r = result.cloned().unwrap_or_default();
    Event {
        kind: kind.to_string(),
        message_id: job.message_id.clone(),
        recipient: address.to_string(),
        destination: job.destination.clone(),
        attempt: job.attempt,
        code: r.code,
        enhanced: r.enhanced,
        reply: r.reply,
        remote_host: r.remote_host,
        mail_from: job.mail_from.clone(),
        at_unix_ms: now_unix_ms(),
        received_at_unix_ms: job.received_at_unix_ms,
        next_attempt_unix_ms: 0,
        // Set by the caller from the bounce rules for bounced and deferred events.
        bounce_class: String::new(),
        tenant: job.tenant.clone(),
        campaign: job.campaign.clone(),
        batch_id: job.batch_id.clone(),
    }
}

/// Publish an event; the caller awaits the returned ack before acking its
/// own input, so no state change goes unlogged.
pub async fn publish(js: &jetstream::Context, e: &Event) -> Result<PublishAckFuture, PublishError> {
    // The id makes a re-published event (after a crash) a duplicate, not a second event.
    let id = format!(
        "{}/{}/{}/{}/{}",
        e.kind, e.message_id, e.destination, e.recipient, e.attempt
    );
    bus::Publish::new(bus::event_subject(&e.kind), e.encode_to_vec().into(), id)
        .send(js)
        .await
}
