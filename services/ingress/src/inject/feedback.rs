//! What the API serves from the feedback loop and the statistics: the
//! `/u/TOKEN` unsubscribe endpoint (crates/bounce), `GET /v1/stats` and the
//! per-batch counts (crates/stats).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tern_runtime::Shutdown;
use tern_tenant::Registry;

use super::http::{Api, ApiFailure, authenticate, json_response};
use super::request::parse_rfc3339;

/// How often the token-id → name map is reloaded when no change is seen
/// (a lost watch); a change to the registry reloads it at once.
const NAMES_REFRESH: Duration = Duration::from_secs(30);

/// Default window of `GET /v1/stats` without `from`.
const DEFAULT_WINDOW_S: u64 = 30 * 24 * 3600;

/// Token ids to names, for `tern_bounce::unsubscribe::Names` (a sync trait
/// asked inside a request): a snapshot of the registry, reloaded in the
/// background.
#[derive(Clone, Default)]
pub(crate) struct TokenNames {
    map: Arc<RwLock<tern_tenant::Names>>,
}

impl TokenNames {
    /// Load once, then reload on every change of the registry (a new
    /// campaign gets its id just before its mail is sent, and its link may
    /// be clicked at once) and every [`NAMES_REFRESH`], until `shutdown`.
    pub(crate) async fn follow(registry: Registry, shutdown: Shutdown) -> Self {
        let names = TokenNames::default();
        let mut changes = registry.changes().await.ok();
        names.reload(&registry).await;
        let live = names.clone();
        tokio::spawn(async move {
            loop {
                let changed = async {
                    match changes.as_mut() {
                        Some(w) => w.next().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    _ = shutdown.wait() => return,
                    open = changed => if !open {
                        changes = registry.changes().await.ok();
                    },
                    _ = tokio::time::sleep(NAMES_REFRESH) => {}
                }
                live.reload(&registry).await;
            }
        });
        names
    }

    async fn reload(&self, registry: &Registry) {
        match registry.names().await {
            Ok(n) => *self.map.write().unwrap_or_else(|p| p.into_inner()) = n,
            Err(e) => tracing::warn!(error = %e, "tenant names not reloaded"),
        }
    }
}

impl tern_bounce::unsubscribe::Names for TokenNames {
    fn tenant(&self, id: u32) -> Option<String> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.tenants.get(&id).cloned()
    }

    fn list(&self, tenant: u32, id: u32) -> Option<String> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.campaigns.get(&(tenant, id)).cloned()
    }
}

/// The query of `GET /v1/stats`.
#[derive(Debug, Deserialize)]
pub(crate) struct StatsQuery {
    campaign: Option<String>,
    from: Option<String>,
    to: Option<String>,
}

/// RFC 3339 time of a query field, in Unix seconds.
fn when(field: &str, value: Option<&str>) -> Result<Option<u64>, ApiFailure> {
    let Some(v) = value else { return Ok(None) };
    match parse_rfc3339(v) {
        Some(ms) if ms >= 0 => Ok(Some(ms as u64 / 1000)),
        _ => Err(ApiFailure::new(
            StatusCode::BAD_REQUEST,
            field,
            "an RFC 3339 time like 2026-12-01T00:00:00Z",
        )),
    }
}

/// `GET /v1/stats?campaign=C&from=&to=`: the tenant's counters for one
/// campaign (empty: mail without a campaign) over `[from, to)`.
pub(crate) async fn get_stats(
    AxState(api): AxState<Api>,
    headers: HeaderMap,
    Query(q): Query<StatsQuery>,
) -> Response {
    let result = async {
        let tenant = authenticate(&api, &headers).await?;
        let to = when("to", q.to.as_deref())?
            .unwrap_or_else(|| (tern_runtime::now_unix_ms() as u64 / 1000) + 1);
        let from =
            when("from", q.from.as_deref())?.unwrap_or_else(|| to.saturating_sub(DEFAULT_WINDOW_S));
        let campaign = q.campaign.unwrap_or_default();
        match api
            .stats
            .campaign_stats(&tenant.name, &campaign, from, to)
            .await
        {
            Ok(s) => Ok(serde_json::to_string(&s).unwrap_or_default()),
            Err(
                e @ (tern_stats::Error::EmptyRange { .. } | tern_stats::Error::RangeTooLong { .. }),
            ) => Err(ApiFailure::new(
                StatusCode::BAD_REQUEST,
                "from",
                e.to_string(),
            )),
            Err(e) => Err(ApiFailure::unavailable(e)),
        }
    }
    .await;
    match result {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(f) => f.into_response(),
    }
}
