//! Suppression lists (issue 17): addresses a tenant must not mail again,
//! shared by every replica through the `tern-suppressions` JetStream
//! key-value bucket, with an in-process index kept current by a watch so a
//! check costs a hash per recipient, not a query.
//!
//! - **Scope.** Each entry belongs to a tenant (its name, a string) and
//!   either the whole tenant or one campaign/list (unsubscribes from one
//!   list). Mail with an empty tenant is plain SMTP mail: it is checked
//!   against the *system list* (tenant `""`), which holds the operator's
//!   manual entries and applies to all mail, tenant mail included. Hard
//!   bounces of plain mail add nothing: plain mail is person-to-person and
//!   its sender already gets the DSN.
//! - **Keys.** KV keys allow only `[-/_=.A-Za-z0-9]`, so a key is made of
//!   hashes: `<tenant>.<scope>.<address>`, hex SHA-256 prefixes of the
//!   tenant name (8 bytes), the campaign (8 bytes, or `all`) and the
//!   lower-cased address (16 bytes). The value is the [`Entry`] as JSON.
//! - **Matching.** Addresses compare case-insensitively (whole address
//!   lower-cased): RFC 5321 §2.4 lets a local part be case-sensitive, but no
//!   real mailbox provider treats it so, and a suppression that missed
//!   `Bob@` after `bob@` unsubscribed would be the worse error.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, kv};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tern_runtime::Shutdown;

/// KV puts in flight at once in [`Suppressions::add_all`].
pub const ADD_CONCURRENCY: usize = 64;

/// The bucket that holds every suppression entry.
pub const BUCKET: &str = "tern-suppressions";

/// Why an address is suppressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The receiver said the mailbox or domain does not exist (permanently).
    HardBounce,
    /// The recipient reported the mail as spam (an ARF `abuse` report).
    Complaint,
    /// The recipient unsubscribed (one-click, `mailto:` or the page).
    Unsubscribe,
    /// Added by an operator (`tern suppress add`, import, the API).
    Manual,
}

impl Reason {
    /// Every reason.
    pub const ALL: [Reason; 4] = [
        Reason::HardBounce,
        Reason::Complaint,
        Reason::Unsubscribe,
        Reason::Manual,
    ];

    /// The stable snake_case name (CSV, events, metrics).
    pub const fn name(self) -> &'static str {
        match self {
            Reason::HardBounce => "hard_bounce",
            Reason::Complaint => "complaint",
            Reason::Unsubscribe => "unsubscribe",
            Reason::Manual => "manual",
        }
    }

    /// The reason named `s` (as [`Reason::name`] writes it).
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.into_iter().find(|r| r.name() == s.trim())
    }
}

/// One suppressed address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The tenant's name; empty: the system list.
    pub tenant: String,
    /// The campaign or list it applies to; empty: all of the tenant's mail.
    pub campaign: String,
    /// The address as first recorded (matched lower-cased).
    pub address: String,
    /// Why.
    pub reason: Reason,
    /// When it was added (Unix ms).
    pub at_unix_ms: i64,
    /// What added it: an event id (`bounced/<message>/<recipient>`), a
    /// report's Message-ID, or `manual` / `import`.
    pub source: String,
}

/// A suppression store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SuppressError {
    /// NATS refused or timed out; `what` names the operation.
    #[error("suppression list: {what}: {message}")]
    Nats {
        /// The operation (`open bucket`, `put`, `delete`, `list`, `watch`).
        what: &'static str,
        /// The client's message.
        message: String,
    },
    /// A stored value is not an entry (written by something else).
    #[error("suppression list: entry {key} does not decode: {message}")]
    Corrupt {
        /// The KV key.
        key: String,
        /// The decoder's message.
        message: String,
    },
}

fn nats(what: &'static str) -> impl FnOnce(String) -> SuppressError {
    move |message| SuppressError::Nats { what, message }
}

/// The index key of one entry: tenant, scope (0 = whole tenant), address.
type IndexKey = (u64, u64, u128);

fn digest(label: &str, s: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label.as_bytes());
    h.update([0]);
    h.update(s.as_bytes());
    h.finalize().into()
}

fn h64(label: &str, s: &str) -> u64 {
    let d = digest(label, s);
    u64::from_be_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

fn tenant_hash(tenant: &str) -> u64 {
    h64("tenant", tenant)
}

/// 0 stands for "the whole tenant"; a campaign hashing to 0 is a 2^-64 chance.
fn scope_hash(campaign: &str) -> u64 {
    if campaign.is_empty() {
        0
    } else {
        h64("campaign", campaign).max(1)
    }
}

fn address_hash(address: &str) -> u128 {
    let d = digest("address", &address.trim().to_lowercase());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d[..16]);
    u128::from_be_bytes(b)
}

/// The KV key of `(tenant, campaign, address)`.
pub fn key(tenant: &str, campaign: &str, address: &str) -> String {
    format_key((
        tenant_hash(tenant),
        scope_hash(campaign),
        address_hash(address),
    ))
}

fn format_key((t, s, a): IndexKey) -> String {
    let scope = if s == 0 {
        "all".to_string()
    } else {
        format!("{s:016x}")
    };
    format!("{t:016x}.{scope}.{a:032x}")
}

fn parse_key(k: &str) -> Option<IndexKey> {
    let mut parts = k.split('.');
    let t = u64::from_str_radix(parts.next()?, 16).ok()?;
    let s = match parts.next()? {
        "all" => 0,
        s => u64::from_str_radix(s, 16).ok()?,
    };
    let a = u128::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some((t, s, a))
}

/// The in-memory index of every entry: hashes only (40 bytes an entry),
/// so a million entries fit in tens of megabytes.
#[derive(Debug, Default, Clone)]
pub struct Index(HashSet<IndexKey>);

impl Index {
    /// Record `(tenant, campaign, address)` as suppressed.
    pub fn insert(&mut self, tenant: &str, campaign: &str, address: &str) {
        self.0.insert((
            tenant_hash(tenant),
            scope_hash(campaign),
            address_hash(address),
        ));
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Is it empty?
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// For each of `addresses`, whether mail for `tenant`'s `campaign`
    /// (empty: none) must not go to it: an entry for the whole tenant, for
    /// that campaign, or on the system list. Aligned with the input.
    pub fn check<S: AsRef<str>>(&self, tenant: &str, campaign: &str, addresses: &[S]) -> Vec<bool> {
        let t = tenant_hash(tenant);
        let system = tenant_hash("");
        let scope = scope_hash(campaign);
        let ix = &self.0;
        addresses
            .iter()
            .map(|a| {
                let a = address_hash(a.as_ref());
                ix.contains(&(t, 0, a))
                    || (scope != 0 && ix.contains(&(t, scope, a)))
                    || (t != system && ix.contains(&(system, 0, a)))
            })
            .collect()
    }
}

/// The suppression lists: writes go to the bucket, checks to the index.
#[derive(Clone)]
pub struct Suppressions {
    kv: kv::Store,
    js: jetstream::Context,
    index: Arc<RwLock<Index>>,
}

impl std::fmt::Debug for Suppressions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Suppressions")
            .field("entries", &self.len())
            .finish()
    }
}

/// Open (creating if needed) the bucket with `replicas` copies.
pub async fn bucket(js: &jetstream::Context, replicas: usize) -> Result<kv::Store, SuppressError> {
    if let Ok(kv) = js.get_key_value(BUCKET).await {
        return Ok(kv);
    }
    js.create_key_value(kv::Config {
        bucket: BUCKET.into(),
        description: "suppression lists (tern-bounce)".into(),
        history: 1,
        num_replicas: replicas.max(1),
        ..Default::default()
    })
    .await
    .map_err(|e| nats("open bucket")(e.to_string()))
}

impl Suppressions {
    /// Open the bucket, load every entry into the index, and keep the
    /// index current with a watch until `shutdown`.
    pub async fn open(
        js: &jetstream::Context,
        replicas: usize,
        shutdown: Shutdown,
    ) -> Result<Suppressions, SuppressError> {
        let kv = bucket(js, replicas).await?;
        let me = Suppressions {
            kv,
            js: js.clone(),
            index: Arc::default(),
        };
        let mut last = 0;
        for (k, op, seq) in me.scan("").await? {
            me.apply(&k, op);
            last = last.max(seq);
        }
        if last == 0 {
            last = me.last_sequence().await?;
        }
        let mut watch = me
            .kv
            .watch_all_from_revision(last + 1)
            .await
            .map_err(|e| nats("watch")(e.to_string()))?;
        let live = me.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    e = watch.next() => match e {
                        Some(Ok(e)) => {
                            live.apply(&e.key, e.operation);
                            last = e.revision;
                        }
                        Some(Err(e)) => tracing::warn!(error = %e, "suppression watch"),
                        None => {
                            // The watch ended (server restart): resume after the last seen.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            match live.kv.watch_all_from_revision(last + 1).await {
                                Ok(w) => watch = w,
                                Err(e) => tracing::warn!(error = %e, "re-watching suppressions"),
                            }
                        }
                    }
                }
            }
        });
        Ok(me)
    }

    fn apply(&self, key: &str, op: kv::Operation) {
        let Some(k) = parse_key(key) else { return };
        if let Ok(mut ix) = self.index.write() {
            if op == kv::Operation::Put {
                ix.0.insert(k);
            } else {
                ix.0.remove(&k);
            }
        }
    }

    async fn last_sequence(&self) -> Result<u64, SuppressError> {
        let mut s = self
            .js
            .get_stream(format!("KV_{BUCKET}"))
            .await
            .map_err(|e| nats("list")(e.to_string()))?;
        let info = s.info().await.map_err(|e| nats("list")(e.to_string()))?;
        Ok(info.state.last_sequence)
    }

    /// The latest operation of every key under `prefix` (`""`: all): key,
    /// put or delete, stream sequence.
    async fn scan(&self, prefix: &str) -> Result<Vec<(String, kv::Operation, u64)>, SuppressError> {
        Ok(self
            .scan_messages(prefix)
            .await?
            .into_iter()
            .map(|(k, op, seq, _)| (k, op, seq))
            .collect())
    }

    async fn scan_messages(
        &self,
        prefix: &str,
    ) -> Result<Vec<(String, kv::Operation, u64, bytes::Bytes)>, SuppressError> {
        let stream = self
            .js
            .get_stream(format!("KV_{BUCKET}"))
            .await
            .map_err(|e| nats("list")(e.to_string()))?;
        let subject_prefix = format!("$KV.{BUCKET}.");
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{subject_prefix}{prefix}>"),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| nats("list")(e.to_string()))?;
        let pending = consumer.cached_info().num_pending as usize;
        let mut out = Vec::with_capacity(pending);
        if pending == 0 {
            return Ok(out);
        }
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|e| nats("list")(e.to_string()))?
            .take(pending);
        while let Some(m) = msgs.next().await {
            let m = m.map_err(|e| nats("list")(e.to_string()))?;
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            let op = m
                .headers
                .as_ref()
                .and_then(|h| h.get("KV-Operation"))
                .map(|v| match v.as_str() {
                    "DEL" => kv::Operation::Delete,
                    "PURGE" => kv::Operation::Purge,
                    _ => kv::Operation::Put,
                })
                .unwrap_or(kv::Operation::Put);
            let key = m
                .subject
                .strip_prefix(&subject_prefix)
                .unwrap_or("")
                .to_string();
            out.push((key, op, seq, m.payload.clone()));
        }
        Ok(out)
    }

    /// Entries in the index (every tenant, every scope).
    pub fn len(&self) -> usize {
        self.index.read().map(|ix| ix.len()).unwrap_or(0)
    }

    /// Is the index empty?
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// For each of `addresses`, whether mail for `tenant`'s `campaign`
    /// (empty: none) must not go to it ([`Index::check`]). Aligned with the input.
    pub fn check<S: AsRef<str>>(&self, tenant: &str, campaign: &str, addresses: &[S]) -> Vec<bool> {
        match self.index.read() {
            Ok(ix) => ix.check(tenant, campaign, addresses),
            Err(_) => vec![false; addresses.len()],
        }
    }

    /// Add (or replace) an entry; other replicas see it through their watch.
    pub async fn add(&self, entry: &Entry) -> Result<(), SuppressError> {
        let k = key(&entry.tenant, &entry.campaign, &entry.address);
        let value = serde_json::to_vec(entry).map_err(|e| SuppressError::Corrupt {
            key: k.clone(),
            message: e.to_string(),
        })?;
        self.kv
            .put(&k, value.into())
            .await
            .map_err(|e| nats("put")(e.to_string()))?;
        self.apply(&k, kv::Operation::Put);
        Ok(())
    }

    /// Add many entries, [`ADD_CONCURRENCY`] puts in flight at a time (one
    /// round trip each, so 10,000 entries do not cost 10,000 in a row).
    /// Stops at the first failure; what was put before it stays (adding is
    /// idempotent, so the same call can be repeated).
    pub async fn add_all(&self, entries: &[Entry]) -> Result<(), SuppressError> {
        // The futures are made first, so no closure lives in the stream: one
        // there makes an axum handler calling this fail rustc's check that
        // its future is general over lifetimes ("FnOnce is not general enough").
        let puts: Vec<_> = entries.iter().map(|e| self.add(e)).collect();
        let mut puts = futures::stream::iter(puts).buffer_unordered(ADD_CONCURRENCY);
        while let Some(r) = puts.next().await {
            r?;
        }
        Ok(())
    }

    /// Remove the entry of `(tenant, campaign, address)`; whether it existed.
    pub async fn remove(
        &self,
        tenant: &str,
        campaign: &str,
        address: &str,
    ) -> Result<bool, SuppressError> {
        let k = key(tenant, campaign, address);
        let existed = self
            .kv
            .get(&k)
            .await
            .map_err(|e| nats("delete")(e.to_string()))?
            .is_some();
        if existed {
            self.kv
                .delete(&k)
                .await
                .map_err(|e| nats("delete")(e.to_string()))?;
        }
        self.apply(&k, kv::Operation::Delete);
        Ok(existed)
    }

    /// Every entry of `tenant` (all scopes), sorted by address then campaign.
    pub async fn list(&self, tenant: &str) -> Result<Vec<Entry>, SuppressError> {
        let prefix = format!("{:016x}.", tenant_hash(tenant));
        let mut out = Vec::new();
        for (k, op, _, value) in self.scan_messages(&prefix).await? {
            if op != kv::Operation::Put {
                continue;
            }
            let e: Entry = serde_json::from_slice(&value).map_err(|e| SuppressError::Corrupt {
                key: k,
                message: e.to_string(),
            })?;
            out.push(e);
        }
        out.sort_by(|a, b| (&a.address, &a.campaign).cmp(&(&b.address, &b.campaign)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_kv_tokens_and_parse_back() {
        let k = key("acme", "spring-sale", "Bob@Example.COM");
        assert!(
            k.chars().all(|c| c.is_ascii_alphanumeric() || c == '.'),
            "{k}"
        );
        assert_eq!(
            k,
            key("acme", "spring-sale", "bob@example.com"),
            "case-insensitive"
        );
        assert_ne!(k, key("acme", "", "bob@example.com"));
        assert!(key("acme", "", "bob@example.com").contains(".all."));
        let parsed = parse_key(&k).expect("parses");
        assert_eq!(format_key(parsed), k);
        assert_eq!(parse_key("nope"), None);
        assert_eq!(parse_key("a.b.c.d"), None);
    }

    #[test]
    fn reasons_round_trip_by_name() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.name()), Some(r));
        }
        assert_eq!(Reason::parse("bounced"), None);
    }
}
