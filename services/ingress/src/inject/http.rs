//! The HTTP/JSON front end: routes, status codes and bodies around the
//! shared core (`core.rs`).

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::json;
use tern_runtime::Shutdown;
use tern_tenant::Tenant;
use tokio::net::TcpListener;

use super::core::{self, Api, Failure, Kind};
use super::suppressions;

/// The HTTP status of a refusal.
fn status(kind: Kind) -> StatusCode {
    match kind {
        Kind::BadField => StatusCode::BAD_REQUEST,
        Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Kind::TooManyRecipients | Kind::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
        Kind::BadKey => StatusCode::UNAUTHORIZED,
        Kind::ForeignDomain => StatusCode::FORBIDDEN,
        Kind::NotFound => StatusCode::NOT_FOUND,
        Kind::InProgress | Kind::AlreadySpooled => StatusCode::CONFLICT,
        Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// An error answer: `{"error": {"field", "message"}}`.
impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"error": {"field": self.field, "message": self.message}});
        json_response(status(self.kind), body.to_string())
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn answer<T: serde::Serialize>(status: StatusCode, result: Result<T, Failure>) -> Response {
    match result {
        Ok(v) => json_response(status, serde_json::to_string(&v).unwrap_or_default()),
        Err(f) => f.into_response(),
    }
}

/// Serve until `shutdown`.
pub(crate) async fn serve(listener: TcpListener, api: Api, shutdown: Shutdown) {
    let unsubscribe = api.unsubscribe.clone();
    let mut app = Router::new()
        .route("/v1/messages", post(post_messages))
        .route("/v1/batches/{id}", get(get_batch).delete(delete_batch))
        .route("/v1/stats", get(get_stats))
        .route(
            "/v1/suppressions",
            get(get_suppressions).post(post_suppressions),
        )
        .route("/v1/suppressions/{email}", delete(delete_suppression))
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

async fn authenticate(api: &Api, headers: &HeaderMap) -> Result<Tenant, Failure> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    core::authenticate(api, value).await
}

/// The request body, at most `TERN_API_MAX_BODY` octets (more: `413`).
async fn read_body(api: &Api, body: Body) -> Result<axum::body::Bytes, Failure> {
    axum::body::to_bytes(body, api.config.max_body)
        .await
        .map_err(|_| {
            Failure::new(
                Kind::TooLarge,
                "body",
                format!("larger than {} octets", api.config.max_body),
            )
        })
}

async fn post_messages(AxState(api): AxState<Api>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        let bytes = read_body(&api, body).await?;
        let idem_key = match headers.get("idempotency-key") {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| Failure::bad_idempotency_key())?),
        };
        core::send(&api, &tenant, bytes, idem_key).await
    }
    .await;
    answer(StatusCode::ACCEPTED, result)
}

async fn get_batch(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        let (record, counts) = core::batch_status(&api, &tenant, &id).await?;
        let mut body = serde_json::to_value(&record).unwrap_or_default();
        if let Some(obj) = body.as_object_mut() {
            obj.insert(
                "recipients".into(),
                serde_json::to_value(counts).unwrap_or_default(),
            );
        }
        Ok(body)
    }
    .await;
    answer(StatusCode::OK, result)
}

async fn delete_batch(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        core::cancel(&api, &tenant, &id).await
    }
    .await;
    answer(StatusCode::OK, result)
}

/// The query of `GET /v1/stats`.
#[derive(Debug, Deserialize)]
struct StatsQuery {
    campaign: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// `GET /v1/stats?campaign=C&from=&to=`.
async fn get_stats(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Query(q): Query<StatsQuery>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        let campaign = q.campaign.unwrap_or_default();
        core::stats(&api, &tenant, &campaign, q.from.as_deref(), q.to.as_deref()).await
    }
    .await;
    answer(StatusCode::OK, result)
}

/// The query of the `/v1/suppressions` routes.
#[derive(Debug, Deserialize)]
struct CampaignQuery {
    campaign: Option<String>,
}

/// `GET /v1/suppressions[?campaign=C]`: the tenant's entries.
async fn get_suppressions(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Query(q): Query<CampaignQuery>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        suppressions::list(&api, &tenant, q.campaign.as_deref()).await
    }
    .await;
    answer(StatusCode::OK, result)
}

/// `POST /v1/suppressions`: add entries to the tenant's list.
async fn post_suppressions(AxState(api): AxState<Api>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        let bytes = read_body(&api, body).await?;
        suppressions::add(&api, &tenant, &bytes).await
    }
    .await;
    answer(StatusCode::OK, result)
}

/// `DELETE /v1/suppressions/{email}[?campaign=C]`.
async fn delete_suppression(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Path(email): Path<String>,
    Query(q): Query<CampaignQuery>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        let campaign = q.campaign.unwrap_or_default();
        suppressions::remove(&api, &tenant, &email, &campaign).await
    }
    .await;
    answer(StatusCode::OK, result)
}
