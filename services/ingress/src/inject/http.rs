//! The HTTP/JSON side: routes, authentication, status codes and bodies.

use std::sync::Arc;

use async_nats::jetstream::{self, kv};
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use tern_runtime::Shutdown;
use tern_tenant::{Registry, Tenant, TenantError};
use tokio::net::TcpListener;

use super::ApiConfig;
use super::batch::{self, Record, Spec, State};
use super::idempotency::{self, Claim};
use super::render::{Extras, Renderer};
use super::request::{self, FieldError};

/// Shared by every request.
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

/// An error answer: `{"error": {"field", "message"}}`.
#[derive(Debug)]
pub(crate) struct ApiFailure {
    status: StatusCode,
    field: String,
    message: String,
}

impl ApiFailure {
    pub(crate) fn new(status: StatusCode, field: &str, message: impl Into<String>) -> Self {
        ApiFailure {
            status,
            field: field.to_string(),
            message: message.into(),
        }
    }

    pub(crate) fn unavailable(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "injection API: storage failed");
        ApiFailure::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "",
            "temporary failure storing the batch, try again later",
        )
    }
}

impl From<FieldError> for ApiFailure {
    fn from(e: FieldError) -> Self {
        let status = if e.unprocessable {
            StatusCode::UNPROCESSABLE_ENTITY
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiFailure::new(status, &e.field, e.message)
    }
}

impl IntoResponse for ApiFailure {
    fn into_response(self) -> Response {
        let body = json!({"error": {"field": self.field, "message": self.message}});
        json_response(self.status, body.to_string())
    }
}

pub(crate) fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Serve until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, api: Api, shutdown: Shutdown) {
    let unsubscribe = api.unsubscribe.clone();
    let mut app = Router::new()
        .route("/v1/messages", post(post_messages))
        .route("/v1/batches/{id}", get(get_batch).delete(delete_batch))
        .route("/v1/stats", get(super::feedback::get_stats))
        .with_state(api);
    if let Some(u) = unsubscribe {
        app = app.merge(u);
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "injection API listening");
    }
    let stop = shutdown.clone();
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.wait().await })
        .await
    {
        tracing::error!(error = %e, "injection API server failed");
    }
}

pub(crate) async fn authenticate(api: &Api, headers: &HeaderMap) -> Result<Tenant, ApiFailure> {
    let bad = || {
        ApiFailure::new(
            StatusCode::UNAUTHORIZED,
            "Authorization",
            "a valid API key is required (Authorization: Bearer KEY)",
        )
    };
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(bad)?;
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
        Err(e) => Err(ApiFailure::unavailable(e)),
    }
}

async fn post_messages(AxState(api): AxState<Api>, headers: HeaderMap, body: Body) -> Response {
    match accept(&api, &headers, body).await {
        Ok(answer) => json_response(StatusCode::ACCEPTED, answer),
        Err(f) => f.into_response(),
    }
}

/// A checked request, ready to be made durable.
struct Accepted {
    spec: Spec,
    rejected: Vec<(String, String)>,
}

async fn accept(api: &Api, headers: &HeaderMap, body: Body) -> Result<String, ApiFailure> {
    let tenant = authenticate(api, headers).await?;
    let bytes = axum::body::to_bytes(body, api.config.max_body)
        .await
        .map_err(|_| {
            ApiFailure::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body",
                format!("larger than {} octets", api.config.max_body),
            )
        })?;
    let idem_key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => match v.to_str() {
            Ok(k) if idempotency::valid_key(k) => Some(k.to_string()),
            _ => {
                return Err(ApiFailure::new(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key",
                    "1-255 visible ASCII characters",
                ));
            }
        },
    };
    let body_sha = idempotency::sha256_hex(&bytes);
    // Validation first: a refused request claims no key.
    let checked = {
        let config = api.config.clone();
        let tenant = tenant.clone();
        tokio::task::spawn_blocking(move || check(&config, &tenant, &bytes))
            .await
            .map_err(ApiFailure::unavailable)??
    };
    let Some(key) = idem_key else {
        let batch_id = ulid::Ulid::new().to_string();
        return make_durable(api, &tenant, checked, batch_id, false).await;
    };
    match idempotency::claim(&api.js, &api.idem, tenant.id, &key, &body_sha)
        .await
        .map_err(ApiFailure::unavailable)?
    {
        Claim::Replay(answer) => Ok(answer),
        Claim::Mismatch => Err(ApiFailure::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Idempotency-Key",
            "this key was used with a different request body",
        )),
        Claim::InProgress => Err(ApiFailure::new(
            StatusCode::CONFLICT,
            "Idempotency-Key",
            "a request with this key is being processed; retry shortly",
        )),
        Claim::Proceed {
            key: kv_key,
            revision,
            batch_id,
            resumed,
        } => {
            let result = make_durable(api, &tenant, checked, batch_id.clone(), resumed).await;
            match &result {
                Ok(answer) => {
                    let entry = idempotency::Entry {
                        body_sha256: body_sha,
                        batch_id,
                        claimed_unix_ms: tern_runtime::now_unix_ms(),
                        response: Some(answer.clone()),
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
fn check(config: &ApiConfig, tenant: &Tenant, bytes: &[u8]) -> Result<Accepted, ApiFailure> {
    let req = request::parse(bytes)?;
    let renderer = Renderer::new(&req.template)?;
    let unsubscribe = req.unsubscribe.unwrap_or(tenant.unsubscribe);
    if unsubscribe && config.secret.is_none() {
        return Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
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
            None => ApiFailure::new(StatusCode::BAD_REQUEST, "recipients", "no valid recipient"),
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
fn check_from(tenant: &Tenant, message: &[u8]) -> Result<(), ApiFailure> {
    let field = "from";
    let domain = tern_dkim::from_domain(message).map_err(|e| {
        ApiFailure::new(
            StatusCode::BAD_REQUEST,
            field,
            format!("From: {}", e.as_str()),
        )
    })?;
    if tenant.owns(&domain) {
        Ok(())
    } else {
        Err(ApiFailure::new(
            StatusCode::FORBIDDEN,
            field,
            format!("domain {domain} is not a sending domain of this tenant"),
        ))
    }
}

/// Record, publish, answer. `resumed`: the batch may exist (an idempotent
/// retry after a replica died mid-request): publishing again is harmless.
async fn make_durable(
    api: &Api,
    tenant: &Tenant,
    checked: Accepted,
    batch_id: String,
    resumed: bool,
) -> Result<String, ApiFailure> {
    let Accepted { mut spec, rejected } = checked;
    spec.batch_id = batch_id.clone();
    // Suppressed here and again at fan-out, where an entry added while the
    // batch waits still wins.
    let suppressed: Vec<String> = {
        let emails: Vec<&str> = spec.recipients.iter().map(|r| r.email.as_str()).collect();
        let hits = api
            .suppressions
            .check(&tenant.name, &spec.campaign, &emails);
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
    };
    spec.campaign_id = api
        .tenants
        .campaign_id(tenant.id, &spec.campaign)
        .await
        .map_err(ApiFailure::unavailable)?;
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
        .map_err(ApiFailure::unavailable)?;
    if created.is_none() && !resumed {
        return Err(ApiFailure::unavailable("batch id collision"));
    }
    if !spec.recipients.is_empty()
        && let Err(e) = batch::publish(&api.js, &spec).await
    {
        if created.is_some() {
            let _ = api.batches.purge(&batch_id).await;
        }
        return Err(ApiFailure::unavailable(e));
    }
    metrics::counter!("tern_inject_batches_total").increment(1);
    metrics::counter!("tern_inject_recipients_accepted_total").increment(record.total);
    tracing::info!(batch_id = %batch_id, tenant = %tenant.name, recipients = record.total, rejected = rejected.len(), "batch accepted");
    let rejected: Vec<_> = rejected
        .into_iter()
        .map(|(email, reason)| json!({"email": email, "reason": reason}))
        .collect();
    Ok(json!({
        "batch_id": batch_id,
        "accepted": record.total,
        "suppressed": suppressed,
        "rejected": rejected,
    })
    .to_string())
}

fn not_found() -> ApiFailure {
    ApiFailure::new(StatusCode::NOT_FOUND, "id", "no such batch")
}

/// The tenant's batch `id` with its revision; another tenant's is 404.
async fn own_batch(api: &Api, tenant: &Tenant, id: &str) -> Result<(Record, u64), ApiFailure> {
    match batch::record(&api.batches, id).await {
        Ok(Some((r, rev))) if r.tenant == tenant.name => Ok((r, rev)),
        Ok(_) => Err(not_found()),
        Err(e) => Err(ApiFailure::unavailable(e)),
    }
}

fn record_json(r: &Record) -> String {
    serde_json::to_string(r).unwrap_or_default()
}

async fn get_batch(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        Ok::<_, ApiFailure>((own_batch(&api, &tenant, &id).await?, tenant.name))
    }
    .await;
    let (r, tenant) = match result {
        Ok(((r, _), tenant)) => (r, tenant),
        Err(f) => return f.into_response(),
    };
    // What happened to the spooled recipients, from the events.
    let counts = match api.stats.batch_counts(&tenant, &id).await {
        Ok(c) => c,
        Err(e) => return ApiFailure::unavailable(e).into_response(),
    };
    let mut body = serde_json::to_value(&r).unwrap_or_default();
    if let Some(obj) = body.as_object_mut() {
        obj.insert(
            "recipients".into(),
            serde_json::to_value(counts).unwrap_or_default(),
        );
    }
    json_response(StatusCode::OK, body.to_string())
}

async fn delete_batch(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        // Compare-and-set: a worker saving its cursor meanwhile makes us
        // read again; whoever writes first decides.
        for _ in 0..20 {
            let (r, rev) = own_batch(&api, &tenant, &id).await?;
            match r.state {
                State::Cancelled => return Ok(r),
                State::Spooled => {
                    return Err(ApiFailure::new(
                        StatusCode::CONFLICT,
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
                .map_err(ApiFailure::unavailable)?
                .is_some()
            {
                tracing::info!(batch_id = %id, spooled = cancelled.spooled, "batch cancelled");
                return Ok(cancelled);
            }
        }
        Err(ApiFailure::unavailable("batch record contended"))
    }
    .await;
    match result {
        Ok(r) => json_response(StatusCode::OK, record_json(&r)),
        Err(f) => f.into_response(),
    }
}
