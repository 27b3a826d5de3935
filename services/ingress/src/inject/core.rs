//! What both front ends of the injection API do, without their transport:
//! authentication, `send` (validation, idempotency, the durable batch),
//! batch status, cancellation and statistics. `http.rs` and `grpc.rs` only
//! translate requests into these calls and [`Failure`]s into their statuses.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use axum::Router;
use serde::{Deserialize, Serialize};
use tern_tenant::{Registry, Tenant, TenantError};

use super::ApiConfig;
use super::batch::{self, Record, Spec, State};
use super::idempotency::{self, Claim};
use super::render::{Extras, Renderer};
use super::request::{self, FieldError, parse_rfc3339};

/// Default window of statistics without `from`.
const DEFAULT_WINDOW_S: u64 = 30 * 24 * 3600;

/// Shared by every request of either front end.
#[derive(Clone)]
pub(crate) struct Api {
    pub(crate) config: Arc<ApiConfig>,
    pub(crate) tenants: Registry,
    pub(crate) batches: kv::Store,
    pub(crate) idem: kv::Store,
    pub(crate) js: jetstream::Context,
    /// Suppression lists, checked at injection (issue 17).
    pub(crate) suppressions: tern_bounce::Suppressions,
    /// Campaign and batch counters (crates/stats).
    pub(crate) stats: tern_stats::StatsReader,
    /// The `/u/TOKEN` routes, when the cluster has a secret to check tokens.
    pub(crate) unsubscribe: Option<Router>,
}

/// Why a request was refused; each front end maps it to its own status
/// (the HTTP status is in brackets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A field is malformed (`400`).
    BadField,
    /// The request is over the size limit (`413`).
    TooLarge,
    /// More recipients (or suppression entries) than one call may have (`422`).
    TooManyRecipients,
    /// The `Idempotency-Key` was used with another request (`422`).
    KeyReused,
    /// Missing, unknown or revoked API key (`401`).
    BadKey,
    /// `from` is not one of the tenant's domains (`403`).
    ForeignDomain,
    /// No such batch, or suppression entry, of this tenant (`404`).
    NotFound,
    /// A request with the same key is being processed (`409`).
    InProgress,
    /// The batch is fully spooled and cannot be cancelled (`409`).
    AlreadySpooled,
    /// Storage failed; nothing was accepted (`503`).
    Unavailable,
}

/// A refusal naming the field it is about (empty when none is).
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) kind: Kind,
    pub(crate) field: String,
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(kind: Kind, field: &str, message: impl Into<String>) -> Self {
        Failure {
            kind,
            field: field.to_string(),
            message: message.into(),
        }
    }

    /// A storage failure: logged, and the client told to retry.
    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "injection API: storage failed");
        Failure::new(
            Kind::Unavailable,
            "",
            "temporary failure storing the batch, try again later",
        )
    }

    /// The refusal of a malformed `Idempotency-Key`.
    pub(crate) fn bad_idempotency_key() -> Self {
        Failure::new(
            Kind::BadField,
            "Idempotency-Key",
            "1-255 visible ASCII characters",
        )
    }
}

impl From<FieldError> for Failure {
    fn from(e: FieldError) -> Self {
        let kind = if e.unprocessable {
            Kind::TooManyRecipients
        } else {
            Kind::BadField
        };
        Failure::new(kind, &e.field, e.message)
    }
}

/// The answer to an accepted batch (HTTP's `202` body), also what an
/// idempotent repeat gets back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Answer {
    pub(crate) batch_id: String,
    pub(crate) accepted: u64,
    pub(crate) suppressed: Vec<String>,
    pub(crate) rejected: Vec<Rejected>,
}

/// A recipient refused at accept time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Rejected {
    pub(crate) email: String,
    pub(crate) reason: String,
}

/// The tenant of an `Authorization` value (`Bearer KEY`).
pub(crate) async fn authenticate(
    api: &Api,
    authorization: Option<&str>,
) -> Result<Tenant, Failure> {
    let bad = || {
        Failure::new(
            Kind::BadKey,
            "Authorization",
            "a valid API key is required (Authorization: Bearer KEY)",
        )
    };
    let value = authorization.ok_or_else(bad)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(bad)?;
    match api.tenants.authenticate(token).await {
        Ok(t) => Ok(t),
        Err(TenantError::BadKey) => {
            metrics::counter!("tern_inject_auth_failures_total").increment(1);
            Err(bad())
        }
        Err(e) => Err(Failure::unavailable(e)),
    }
}

/// A checked request, ready to be made durable.
struct Accepted {
    spec: Spec,
    rejected: Vec<(String, String)>,
}

/// `POST /v1/messages` of `tenant`: `body` is the JSON request (what
/// idempotency compares), `idem_key` the `Idempotency-Key`. Nothing is
/// half-accepted: an error leaves no batch and no claimed key.
pub(crate) async fn send(
    api: &Api,
    tenant: &Tenant,
    body: bytes::Bytes,
    idem_key: Option<&str>,
) -> Result<Answer, Failure> {
    if idem_key.is_some_and(|k| !idempotency::valid_key(k)) {
        return Err(Failure::bad_idempotency_key());
    }
    let body_sha = idempotency::sha256_hex(&body);
    // Validation first: a refused request claims no key.
    let checked = {
        let config = api.config.clone();
        let tenant = tenant.clone();
        tokio::task::spawn_blocking(move || check(&config, &tenant, &body))
            .await
            .map_err(Failure::unavailable)??
    };
    let Some(key) = idem_key else {
        let batch_id = ulid::Ulid::new().to_string();
        return make_durable(api, tenant, checked, batch_id, false).await;
    };
    match idempotency::claim(&api.js, &api.idem, tenant.id, key, &body_sha)
        .await
        .map_err(Failure::unavailable)?
    {
        Claim::Replay(answer) => serde_json::from_str(&answer).map_err(Failure::unavailable),
        Claim::Mismatch => Err(Failure::new(
            Kind::KeyReused,
            "Idempotency-Key",
            "this key was used with a different request body",
        )),
        Claim::InProgress => Err(Failure::new(
            Kind::InProgress,
            "Idempotency-Key",
            "a request with this key is being processed; retry shortly",
        )),
        Claim::Proceed {
            key: kv_key,
            revision,
            batch_id,
            resumed,
        } => {
            let result = make_durable(api, tenant, checked, batch_id.clone(), resumed).await;
            match &result {
                Ok(answer) => {
                    let entry = idempotency::Entry {
                        body_sha256: body_sha,
                        batch_id,
                        claimed_unix_ms: tern_runtime::now_unix_ms(),
                        response: Some(serde_json::to_string(answer).unwrap_or_default()),
                    };
                    // The batch is durable either way; a lost answer means
                    // a retry resumes the same batch id after 30 s.
                    if let Err(e) =
                        idempotency::answer(&api.js, &api.idem, &kv_key, revision, &entry).await
                    {
                        tracing::warn!(error = %e, "idempotency answer not stored");
                    }
                }
                Err(_) => idempotency::release(&api.idem, &kv_key).await,
            }
            result
        }
    }
}

/// Parse, check ownership and templates for every recipient (CPU only).
fn check(config: &ApiConfig, tenant: &Tenant, bytes: &[u8]) -> Result<Accepted, Failure> {
    let req = request::parse(bytes)?;
    let renderer = Renderer::new(&req.template)?;
    let unsubscribe = req.unsubscribe.unwrap_or(tenant.unsubscribe);
    if unsubscribe && config.secret.is_none() {
        return Err(Failure::new(
            Kind::BadField,
            "unsubscribe",
            "this cluster has no TERN_SECRET_FILE to sign unsubscribe links",
        ));
    }
    let extras = Extras {
        message_id: "check@check.invalid".into(),
        date: tern_runtime::date::rfc5322(0),
        list_unsubscribe: None,
    };
    // Every recipient is rendered now: a template that fails for one is
    // refused for that one here, not found broken at send time.
    let mut recipients = Vec::with_capacity(req.recipients.len());
    let mut rejected = req.rejected.clone();
    let mut first_error = None;
    for r in req.recipients {
        let rendered = if recipients.is_empty() {
            renderer
                .message(&req.vars, &r, &extras)
                .map(|msg| check_from(tenant, &msg))
        } else {
            renderer.check(&req.vars, &r).map(Ok)
        };
        match rendered {
            Ok(owned) => {
                owned?;
                recipients.push(r);
            }
            Err(e) => {
                rejected.push((r.email.clone(), format!("{}: {}", e.field, e.message)));
                first_error.get_or_insert(e);
            }
        }
    }
    if recipients.is_empty() {
        return Err(match first_error {
            Some(e) => e.into(),
            None => Failure::new(Kind::BadField, "recipients", "no valid recipient"),
        });
    }
    let bounce_domain = tenant
        .bounce_domain
        .clone()
        .unwrap_or_else(|| config.bounce_domain.clone());
    let public_url = tenant
        .public_url
        .clone()
        .or_else(|| config.public_url.clone())
        .unwrap_or_default();
    Ok(Accepted {
        spec: Spec {
            batch_id: String::new(),
            tenant: tenant.name.clone(),
            tenant_id: tenant.id,
            campaign: req.campaign,
            campaign_id: 0,
            send_at_unix_ms: req.send_at_unix_ms,
            template: req.template,
            vars: req.vars,
            recipients,
            unsubscribe,
            bounce_domain,
            public_url,
        },
        rejected,
    })
}

/// The rendered message's From domain must be the tenant's (`403`).
fn check_from(tenant: &Tenant, message: &[u8]) -> Result<(), Failure> {
    let field = "from";
    let domain = tern_dkim::from_domain(message)
        .map_err(|e| Failure::new(Kind::BadField, field, format!("From: {}", e.as_str())))?;
    if tenant.owns(&domain) {
        Ok(())
    } else {
        Err(Failure::new(
            Kind::ForeignDomain,
            field,
            format!("domain {domain} is not a sending domain of this tenant"),
        ))
    }
}

/// Take the suppressed recipients out of `spec`; their addresses.
fn take_suppressed(api: &Api, spec: &mut Spec) -> Vec<String> {
    let emails: Vec<&str> = spec.recipients.iter().map(|r| r.email.as_str()).collect();
    let hits = api
        .suppressions
        .check(&spec.tenant, &spec.campaign, &emails);
    let mut out = Vec::new();
    let mut kept = Vec::with_capacity(spec.recipients.len());
    for (r, hit) in std::mem::take(&mut spec.recipients).into_iter().zip(hits) {
        if hit {
            out.push(r.email);
        } else {
            kept.push(r);
        }
    }
    spec.recipients = kept;
    out
}

/// Record, publish, answer. `resumed`: the batch may exist (an idempotent
/// retry after a replica died mid-request): publishing again is harmless.
async fn make_durable(
    api: &Api,
    tenant: &Tenant,
    checked: Accepted,
    batch_id: String,
    resumed: bool,
) -> Result<Answer, Failure> {
    let Accepted { mut spec, rejected } = checked;
    spec.batch_id = batch_id.clone();
    // Suppressed here and again at fan-out, where an entry added while the
    // batch waits still wins.
    let suppressed = take_suppressed(api, &mut spec);
    spec.campaign_id = api
        .tenants
        .campaign_id(tenant.id, &spec.campaign)
        .await
        .map_err(Failure::unavailable)?;
    let now = tern_runtime::now_unix_ms();
    let record = Record {
        batch_id: batch_id.clone(),
        tenant: tenant.name.clone(),
        campaign: spec.campaign.clone(),
        // Nothing left to send: the batch is done as soon as it exists.
        state: if spec.recipients.is_empty() {
            State::Spooled
        } else {
            State::Scheduled
        },
        total: spec.recipients.len() as u64,
        spooled: 0,
        rejected: rejected.len() as u64,
        failed: 0,
        created_unix_ms: now,
        send_at_unix_ms: spec.send_at_unix_ms,
    };
    let created = batch::write(&api.batches, &record, 0)
        .await
        .map_err(Failure::unavailable)?;
    if created.is_none() && !resumed {
        return Err(Failure::unavailable("batch id collision"));
    }
    if !spec.recipients.is_empty()
        && let Err(e) = batch::publish(&api.js, &spec).await
    {
        if created.is_some() {
            let _ = api.batches.purge(&batch_id).await;
        }
        return Err(Failure::unavailable(e));
    }
    metrics::counter!("tern_inject_batches_total").increment(1);
    metrics::counter!("tern_inject_recipients_accepted_total").increment(record.total);
    tracing::info!(batch_id = %batch_id, tenant = %tenant.name, recipients = record.total, rejected = rejected.len(), "batch accepted");
    Ok(Answer {
        batch_id,
        accepted: record.total,
        suppressed,
        rejected: rejected
            .into_iter()
            .map(|(email, reason)| Rejected { email, reason })
            .collect(),
    })
}

fn not_found() -> Failure {
    Failure::new(Kind::NotFound, "id", "no such batch")
}

/// The tenant's batch `id` with its revision; another tenant's is not found.
async fn own_batch(api: &Api, tenant: &Tenant, id: &str) -> Result<(Record, u64), Failure> {
    match batch::record(&api.batches, id).await {
        Ok(Some((r, rev))) if r.tenant == tenant.name => Ok((r, rev)),
        Ok(_) => Err(not_found()),
        Err(e) => Err(Failure::unavailable(e)),
    }
}

/// `GET /v1/batches/{id}`: the record and what the events say happened to
/// its spooled recipients (`None` before the first event is counted).
pub(crate) async fn batch_status(
    api: &Api,
    tenant: &Tenant,
    id: &str,
) -> Result<(Record, Option<tern_stats::BatchCounts>), Failure> {
    let (record, _) = own_batch(api, tenant, id).await?;
    let counts = api
        .stats
        .batch_counts(&tenant.name, id)
        .await
        .map_err(Failure::unavailable)?;
    Ok((record, counts))
}

/// `DELETE /v1/batches/{id}`: cancel a scheduled or expanding batch.
pub(crate) async fn cancel(api: &Api, tenant: &Tenant, id: &str) -> Result<Record, Failure> {
    // Compare-and-set: a worker saving its cursor meanwhile makes us read
    // again; whoever writes first decides.
    for _ in 0..20 {
        let (r, rev) = own_batch(api, tenant, id).await?;
        match r.state {
            State::Cancelled => return Ok(r),
            State::Spooled => {
                return Err(Failure::new(
                    Kind::AlreadySpooled,
                    "id",
                    "every message of this batch is already on the queue",
                ));
            }
            State::Scheduled | State::Expanding => {}
        }
        let cancelled = Record {
            state: State::Cancelled,
            ..r
        };
        if batch::write(&api.batches, &cancelled, rev)
            .await
            .map_err(Failure::unavailable)?
            .is_some()
        {
            tracing::info!(batch_id = %id, spooled = cancelled.spooled, "batch cancelled");
            return Ok(cancelled);
        }
    }
    Err(Failure::unavailable("batch record contended"))
}

/// RFC 3339 time of a query field, in Unix seconds.
fn when(field: &str, value: Option<&str>) -> Result<Option<u64>, Failure> {
    let Some(v) = value else { return Ok(None) };
    match parse_rfc3339(v) {
        Some(ms) if ms >= 0 => Ok(Some(ms as u64 / 1000)),
        _ => Err(Failure::new(
            Kind::BadField,
            field,
            "an RFC 3339 time like 2026-12-01T00:00:00Z",
        )),
    }
}

/// `GET /v1/stats`: the tenant's counters for one campaign (empty: mail
/// without a campaign) over `[from, to)` (RFC 3339; default the last 30
/// days).
pub(crate) async fn stats(
    api: &Api,
    tenant: &Tenant,
    campaign: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<tern_stats::Stats, Failure> {
    let to = when("to", to)?.unwrap_or_else(|| (tern_runtime::now_unix_ms() as u64 / 1000) + 1);
    let from = when("from", from)?.unwrap_or_else(|| to.saturating_sub(DEFAULT_WINDOW_S));
    match api
        .stats
        .campaign_stats(&tenant.name, campaign, from, to)
        .await
    {
        Ok(s) => Ok(s),
        Err(
            e @ (tern_stats::Error::EmptyRange { .. } | tern_stats::Error::RangeTooLong { .. }),
        ) => Err(Failure::new(Kind::BadField, "from", e.to_string())),
        Err(e) => Err(Failure::unavailable(e)),
    }
}
