//! The names behind the `/u/TOKEN` unsubscribe endpoint (crates/bounce)
//! the API serves from the feedback loop.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use tern_runtime::Shutdown;
use tern_tenant::Registry;

/// How often the token-id → name map is reloaded when no change is seen
/// (a lost watch); a change to the registry reloads it at once.
const NAMES_REFRESH: Duration = Duration::from_secs(30);

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
