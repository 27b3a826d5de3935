//! Destinations on hold, shared through the `tern-holds` key-value bucket:
//! the queue's admin API writes them, queue and delivery watch them.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use crate::bus::{self, BusError};

/// A live view of the held destinations.
#[derive(Clone, Debug, Default)]
pub struct Holds {
    set: Arc<RwLock<HashSet<String>>>,
}

impl Holds {
    /// Start watching the bucket; the view updates until `shutdown`.
    pub async fn watch(
        js: &jetstream::Context,
        shutdown: crate::Shutdown,
    ) -> Result<Holds, BusError> {
        let store = js
            .get_key_value(bus::HOLDS_BUCKET)
            .await
            .map_err(|e| BusError::Setup {
                what: bus::HOLDS_BUCKET.into(),
                message: e.to_string(),
            })?;
        let holds = Holds::default();
        let mut watch = store.watch_all().await.map_err(|e| BusError::Setup {
            what: format!("watch {}", bus::HOLDS_BUCKET),
            message: e.to_string(),
        })?;
        let me = holds.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    entry = watch.next() => match entry {
                        Some(Ok(e)) => me.apply(&e),
                        Some(Err(e)) => tracing::warn!(error = %e, "holds watch error"),
                        None => {
                            // The watch ended (server restart): start a new one.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            match store.watch_all().await {
                                Ok(w) => watch = w,
                                Err(e) => tracing::warn!(error = %e, "re-watching holds failed"),
                            }
                        }
                    }
                }
            }
        });
        Ok(holds)
    }

    fn apply(&self, e: &kv::Entry) {
        let dest = String::from_utf8_lossy(&e.value).to_string();
        if let Ok(mut set) = self.set.write() {
            match e.operation {
                kv::Operation::Put if !dest.is_empty() => {
                    set.insert(dest);
                }
                _ => {
                    // Deletes carry no value: find the destination by its key.
                    set.retain(|d| bus::kv_token(d) != e.key);
                }
            }
        }
    }

    /// Is `destination` on hold?
    pub fn is_held(&self, destination: &str) -> bool {
        self.set
            .read()
            .map(|s| s.contains(destination))
            .unwrap_or(false)
    }

    /// Every held destination.
    pub fn all(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .set
            .read()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// Put `destination` on hold (idempotent).
pub async fn hold(js: &jetstream::Context, destination: &str) -> Result<(), BusError> {
    let store = bucket(js).await?;
    store
        .put(bus::kv_token(destination), destination.to_string().into())
        .await
        .map(|_| ())
        .map_err(|e| BusError::Setup {
            what: format!("hold {destination}"),
            message: e.to_string(),
        })
}

/// Take `destination` off hold (idempotent).
pub async fn release(js: &jetstream::Context, destination: &str) -> Result<(), BusError> {
    let store = bucket(js).await?;
    store
        .delete(bus::kv_token(destination))
        .await
        .map_err(|e| BusError::Setup {
            what: format!("release {destination}"),
            message: e.to_string(),
        })
}

async fn bucket(js: &jetstream::Context) -> Result<kv::Store, BusError> {
    js.get_key_value(bus::HOLDS_BUCKET)
        .await
        .map_err(|e| BusError::Setup {
            what: bus::HOLDS_BUCKET.into(),
            message: e.to_string(),
        })
}
