//! The read side: what the HTTP API mounts.

use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};

use crate::counts::{BatchCounts, Entry, Stats};
use crate::pause::Totals;
use crate::{BUCKET, Error, key};

/// Hours one [`StatsReader::campaign_stats`] call may span (93 days).
pub const MAX_RANGE_HOURS: u64 = 93 * 24;
/// Counter reads in flight at once.
const READ_CONCURRENCY: usize = 32;

/// Reads counters from the `tern-stats` bucket; cheap to clone.
#[derive(Clone)]
pub struct StatsReader {
    kv: kv::Store,
}

impl StatsReader {
    /// Open the bucket, creating it with `replicas` copies if missing.
    pub async fn open(js: &jetstream::Context, replicas: usize) -> Result<Self, Error> {
        Ok(StatsReader {
            kv: open_bucket(js, replicas).await?,
        })
    }

    /// The statistics of `campaign` of `tenant` for the hours starting in
    /// `[from, to)` (Unix seconds; `from` is rounded down to its hour).
    pub async fn campaign_stats(
        &self,
        tenant: &str,
        campaign: &str,
        from: u64,
        to: u64,
    ) -> Result<Stats, Error> {
        if to <= from {
            return Err(Error::EmptyRange { from, to });
        }
        let first = from / 3600;
        let end = to.div_ceil(3600);
        if end - first > MAX_RANGE_HOURS {
            return Err(Error::RangeTooLong {
                hours: end - first,
                max: MAX_RANGE_HOURS,
            });
        }
        let entries: Vec<Option<Entry>> = futures::stream::iter(first..end)
            .map(|h| self.entry(key::campaign_key(tenant, campaign, h)))
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        let mut stats = Stats {
            campaign: campaign.to_string(),
            from: first * 3600,
            to,
            ..Default::default()
        };
        for e in entries.into_iter().flatten() {
            stats.add(&e.counts);
        }
        Ok(stats)
    }

    /// The recipients of batch `batch_id` of `tenant` by state, `None` if
    /// no event of it has been counted (unknown, or another tenant's).
    pub async fn batch_counts(
        &self,
        tenant: &str,
        batch_id: &str,
    ) -> Result<Option<BatchCounts>, Error> {
        let entry = self.entry(key::batch_key(tenant, batch_id)).await?;
        Ok(entry.map(|e| BatchCounts::from_counts(batch_id, &e.counts)))
    }

    /// The lifetime totals of `campaign` of `tenant` (zero when nothing was counted).
    pub async fn totals(&self, tenant: &str, campaign: &str) -> Result<Totals, Error> {
        let entry = self.entry(key::totals_key(tenant, campaign)).await?;
        Ok(entry.map_or_else(Totals::default, |e| Totals::from_counts(&e.counts)))
    }

    async fn entry(&self, key: String) -> Result<Option<Entry>, Error> {
        Ok(read_entry(&self.kv, &key).await?.map(|(e, _)| e))
    }
}

/// The counter bucket, opened or created (file storage, history 1).
pub(crate) async fn open_bucket(
    js: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, Error> {
    if let Ok(kv) = js.get_key_value(BUCKET).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: BUCKET.into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| Error::Setup(format!("bucket {BUCKET}: {e}")))
}

/// An entry and its revision, `None` when the key has no value.
pub(crate) async fn read_entry(kv: &kv::Store, key: &str) -> Result<Option<(Entry, u64)>, Error> {
    let got = kv.entry(key).await.map_err(|e| Error::Store {
        key: key.to_string(),
        message: e.to_string(),
    })?;
    match got {
        Some(e) if e.operation == kv::Operation::Put => {
            let entry = serde_json::from_slice(&e.value).map_err(|err| Error::Corrupt {
                key: key.to_string(),
                message: err.to_string(),
            })?;
            Ok(Some((entry, e.revision)))
        }
        _ => Ok(None),
    }
}
