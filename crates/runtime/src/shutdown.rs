//! Graceful shutdown: one token cancelled on SIGTERM/SIGINT, a tracker for
//! in-flight work, and a deadline for draining it.

use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Cancelled when the process should stop accepting new work.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A fresh, uncancelled shutdown signal.
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask everything holding this signal (or a child of it) to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Has shutdown begun?
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once shutdown begins.
    pub async fn wait(&self) {
        self.token.cancelled().await
    }

    /// A signal cancelled with this one that can also be cancelled alone.
    pub fn child(&self) -> Shutdown {
        Shutdown {
            token: self.token.child_token(),
        }
    }

    /// Trigger on the first SIGTERM or SIGINT.
    pub fn trigger_on_signals(&self) {
        let me = self.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown signal received; draining");
            me.trigger();
        });
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers we can only wait forever; ctrl_c is the fallback.
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Wait for tracked in-flight work, at most `grace`. Returns false on timeout.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    let done = tokio::time::timeout(grace, tracker.wait()).await.is_ok();
    if !done {
        tracing::warn!(
            in_flight = tracker.len(),
            "drain deadline passed; abandoning in-flight work"
        );
    }
    done
}
