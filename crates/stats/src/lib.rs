//! Campaign statistics for the injection API (issue 16).
//!
//! A durable JetStream consumer (`stats`) of every lifecycle event
//! (`tern.events.>`, docs/EVENTS.md) keeps counters per tenant, campaign,
//! hour, kind and bounce class, and per batch, in the `tern-stats` KV bucket,
//! which every replica reads. [`StatsReader`] answers `GET /v1/stats` and
//! the counts of `GET /v1/batches/{id}`; every read takes the tenant, so one
//! tenant's key never names another's counters.
//!
//! Why a crate and not a queue module: the writer runs beside the queue
//! (it consumes the queue's events), but the reader is mounted by the HTTP
//! API in ingress, and a service crate may not depend on another.
//!
//! # What is guaranteed
//!
//! Writes are batched: up to [`BATCH`] events are pulled, grouped by key,
//! and each key is written once per batch with a compare-and-set on its
//! revision, then the events are acked. Each entry keeps the consumer's
//! ack floor as of its last write (every event at or below it was acked,
//! and acks follow the writes, so it is counted everywhere) and the stream
//! sequences above that floor counted into it; an event in either is
//! skipped. So a batch redelivered after a crash between its writes and its
//! acks, in any order and to any replica, counts only into the keys it had
//! not reached, and a consumer reset (the stream replayed) counts nothing
//! twice: **exactly once per event** into the KV counters, as long as the
//! event is still in `TERN_EVENTS` (7 days). Events re-published by the
//! queue are dropped by their `Nats-Msg-Id` within the dedup window
//! (2 min); a re-publish later than that counts again. The Prometheus
//! counters ([`metrics`]) count what this process applied: per process,
//! summed by Prometheus.

#![forbid(unsafe_code)]

mod aggregate;
pub mod counts;
pub mod dispatch;
pub mod hooks;
pub mod key;
pub mod metrics;
pub mod pause;
pub mod post;
mod read;
pub mod webhook;

pub use aggregate::{Aggregator, BATCH};
pub use counts::{BatchCounts, Bounced, Stats};
pub use dispatch::Dispatcher;
pub use read::StatsReader;

use std::path::PathBuf;
use std::time::Duration;

use tern_runtime::config::{ConfigError, Key, Source};

/// The KV bucket of the counters.
pub const BUCKET: &str = "tern-stats";
/// The durable consumer of the aggregator.
pub const CONSUMER: &str = "stats";

/// `TERN_STATS_MAX_CAMPAIGNS`.
pub const MAX_CAMPAIGNS: Key<usize> = Key::new(
    "stats_max_campaigns",
    "100",
    "campaigns with their own Prometheus label per process; later ones are counted as `other`",
);

/// `TERN_WEBHOOK_RETRY_MIN`.
pub const WEBHOOK_RETRY_MIN: Key<Duration> = Key::new(
    "webhook_retry_min",
    "10s",
    "delay before a failed webhook delivery is retried; doubles per attempt up to 1h",
);
/// `TERN_WEBHOOK_MAX_AGE`.
pub const WEBHOOK_MAX_AGE: Key<Duration> = Key::new(
    "webhook_max_age",
    "24h",
    "how long an event is retried for a failing webhook before it is dropped and counted",
);

/// `TERN_WEBHOOK_CA_FILE`.
pub const WEBHOOK_CA_FILE: Key<Option<PathBuf>> = Key::new(
    "webhook_ca_file",
    "",
    "PEM CA bundle that https webhook receivers' certificates must chain to (default: the system's CA store)",
);

/// The settings of the aggregator and the webhook dispatcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Distinct (tenant, campaign) label pairs before new ones roll into `other`.
    pub max_campaigns: usize,
    /// First retry delay of a failed webhook delivery.
    pub webhook_retry_min: Duration,
    /// How long a failing webhook's events are retried before they are dropped.
    pub webhook_max_age: Duration,
    /// The complaint circuit breaker ([`pause`]).
    pub breaker: pause::Breaker,
    /// The roots https webhooks are verified against; `None`: the system's.
    pub webhook_ca_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_campaigns: 100,
            webhook_retry_min: Duration::from_secs(10),
            webhook_max_age: Duration::from_secs(86_400),
            breaker: pause::Breaker::default(),
            webhook_ca_file: None,
        }
    }
}

impl Config {
    /// Read the keys; a CA bundle that cannot be used is an error naming
    /// `TERN_WEBHOOK_CA_FILE`.
    pub fn from_source(src: &Source) -> Result<Self, ConfigError> {
        let webhook_ca_file = src.get(&WEBHOOK_CA_FILE)?;
        if let Some(path) = &webhook_ca_file {
            tern_runtime::tls::roots(Some(path)).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: format!("TERN_WEBHOOK_CA_FILE: {e}"),
            })?;
        }
        Ok(Config {
            max_campaigns: src.get(&MAX_CAMPAIGNS)?,
            webhook_retry_min: src.get(&WEBHOOK_RETRY_MIN)?,
            webhook_max_age: src.get(&WEBHOOK_MAX_AGE)?,
            breaker: pause::Breaker {
                rate: src.get(&pause::PAUSE_RATE)?,
                min_delivered: src.get(&pause::PAUSE_MIN_DELIVERED)?,
            },
            webhook_ca_file,
        })
    }
}

/// Errors of the statistics store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bucket, stream or consumer could not be opened or created.
    #[error("stats setup: {0}")]
    Setup(String),
    /// Reading or writing a counter failed.
    #[error("stats store {key}: {message}")]
    Store {
        /// The counter key.
        key: String,
        /// Cause.
        message: String,
    },
    /// A counter entry could not be decoded (written by something else).
    #[error("stats entry {key} is not a counter: {message}")]
    Corrupt {
        /// The counter key.
        key: String,
        /// Cause.
        message: String,
    },
    /// The read range is empty or reversed.
    #[error("range: `to` ({to}) must be after `from` ({from})")]
    EmptyRange {
        /// Start, Unix seconds.
        from: u64,
        /// End, Unix seconds.
        to: u64,
    },
    /// The read range spans more hours than one read may.
    #[error("range of {hours} hours is longer than the {max} allowed")]
    RangeTooLong {
        /// Hours asked for.
        hours: u64,
        /// The limit ([`read::MAX_RANGE_HOURS`]).
        max: u64,
    },
}
