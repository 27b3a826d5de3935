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
        let holds = Holds::default();
        let me = holds.clone();
        follow_bucket(js, bus::HOLDS_BUCKET, shutdown, move |e| me.apply(e)).await?;
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

/// Follow every key of KV bucket `bucket` until `shutdown`: `apply` sees
/// each key's latest entry first (so a replica started after a hold or a
/// pause knows it is in force), then every change. A watch that ends (a
/// server restart) is started again and replays the latest entries, so
/// nothing changed in the gap is missed.
pub async fn follow_bucket<F>(
    js: &jetstream::Context,
    bucket: &str,
    shutdown: crate::Shutdown,
    apply: F,
) -> Result<(), BusError>
where
    F: Fn(&kv::Entry) + Send + 'static,
{
    let setup = |what: String| {
        move |e: &dyn std::fmt::Display| BusError::Setup {
            what,
            message: e.to_string(),
        }
    };
    let store = js
        .get_key_value(bucket)
        .await
        .map_err(|e| setup(bucket.to_string())(&e))?;
    let mut watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| setup(format!("watch {bucket}"))(&e))?;
    let bucket = bucket.to_string();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.wait() => return,
                entry = watch.next() => match entry {
                    Some(Ok(e)) => apply(&e),
                    Some(Err(e)) => tracing::warn!(error = %e, %bucket, "bucket watch error"),
                    None => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        match store.watch_with_history(">").await {
                            Ok(w) => watch = w,
                            Err(e) => tracing::warn!(error = %e, %bucket, "re-watching failed"),
                        }
                    }
                }
            }
        }
    });
    Ok(())
}
