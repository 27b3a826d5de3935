//! Change notification between sessions and replicas.
//!
//! Every change committed through this replica's [`Store`] (delivery,
//! APPEND, COPY/MOVE, flags, expunge) is published on core NATS as an empty
//! message on `tern.mailbox.changed.<account id>` with a `Tern-Replica`
//! header, and handed to this replica's sessions at once. Changes published
//! by other replicas reach the sessions through a subscription to
//! `tern.mailbox.changed.*`. A session that hears about its account
//! re-reads its mailbox (cheaply: one HIGHESTMODSEQ lookup when nothing
//! changed), so IDLE shows mail delivered by another replica within the
//! NATS round trip.
//!
//! Core NATS is at-most-once: a notification lost while NATS is down is
//! covered by IDLE's periodic re-check ([`crate::imap`]).

use std::sync::Arc;

use futures::StreamExt;
use tern_runtime::Shutdown;
use tokio::sync::broadcast;

use crate::store::Store;

/// Subject prefix; the account id follows.
pub const SUBJECT_PREFIX: &str = "tern.mailbox.changed.";
/// Header naming the publishing replica, so it ignores its own echo.
const REPLICA_HEADER: &str = "Tern-Replica";

/// Fan-out of "account N changed" to this replica's sessions.
pub struct Hub {
    tx: broadcast::Sender<i64>,
}

impl Hub {
    /// A hub with no listeners yet.
    pub fn new() -> Hub {
        let (tx, _) = broadcast::channel(4096);
        Hub { tx }
    }

    /// Listen for changes (all accounts; filter by id). A lagging receiver
    /// gets `Lagged`, which sessions treat as "something changed".
    pub fn subscribe(&self) -> broadcast::Receiver<i64> {
        self.tx.subscribe()
    }

    fn send(&self, account: i64) {
        let _ = self.tx.send(account);
    }
}

/// Forward local store changes to the hub and NATS, and remote ones from
/// NATS to the hub, until shutdown.
/// `replica` is this replica's id (in the `Tern-Replica` header).
pub async fn run(
    store: Arc<Store>,
    hub: Arc<Hub>,
    client: async_nats::Client,
    replica: String,
    shutdown: Shutdown,
) {
    let mut local = store.changes();
    let mut remote = match client.subscribe(format!("{SUBJECT_PREFIX}*")).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "subscribe to mailbox changes; other replicas' changes are seen by polling only");
            None
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            r = local.recv() => match r {
                Ok(account) => {
                    hub.send(account);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(REPLICA_HEADER, replica.as_str());
                    let subject = format!("{SUBJECT_PREFIX}{account}");
                    if let Err(e) = client.publish_with_headers(subject, headers, bytes::Bytes::new()).await {
                        tracing::debug!(error = %e, "publish mailbox change");
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            },
            m = async {
                match remote.as_mut() {
                    Some(s) => s.next().await,
                    None => std::future::pending().await,
                }
            } => match m {
                Some(msg) => {
                    let own = msg
                        .headers
                        .as_ref()
                        .and_then(|h| h.get(REPLICA_HEADER))
                        .is_some_and(|v| v.as_str() == replica);
                    if own {
                        continue;
                    }
                    if let Some(account) = msg
                        .subject
                        .as_str()
                        .strip_prefix(SUBJECT_PREFIX)
                        .and_then(|a| a.parse().ok())
                    {
                        hub.send(account);
                    }
                }
                None => remote = None,
            },
        }
    }
}
