//! Job and message state in the `tern-queue` key-value bucket, kept apart
//! from the body: attempts, next attempt, last replies, and how many jobs of
//! a message remain (so the body can be deleted when the last one is final).

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use prost::Message as _;
use tern_proto::{JobState, MessageState};
use tern_runtime::bus;

/// Errors reading or writing queue state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The bucket could not be reached.
    #[error("queue state: {0}")]
    Kv(String),
    /// A stored value did not decode.
    #[error("queue state {key}: corrupt value")]
    Corrupt {
        /// The key.
        key: String,
    },
}

fn kv_err(e: impl std::fmt::Display) -> StateError {
    StateError::Kv(e.to_string())
}

/// The key of a job's state.
pub fn job_key(message_id: &str, destination: &str) -> String {
    format!(
        "job.{}.{}",
        bus::kv_token(message_id),
        bus::kv_token(destination)
    )
}

/// How often [`State::create_or_read`] tries a key that exists but cannot
/// be read back before giving up.
const CREATE_TRIES: usize = 3;

fn msg_key(message_id: &str) -> String {
    format!("msg.{}", bus::kv_token(message_id))
}

/// Access to the bucket.
#[derive(Clone)]
pub struct State {
    kv: kv::Store,
    client: async_nats::Client,
}

impl State {
    /// Open the bucket (created by `bus::ensure_streams`).
    pub async fn open(
        js: &jetstream::Context,
        client: async_nats::Client,
    ) -> Result<State, StateError> {
        Ok(State {
            kv: js.get_key_value(bus::QUEUE_BUCKET).await.map_err(kv_err)?,
            client,
        })
    }

    /// Record a new message with its jobs, unless it was seen before (a
    /// redelivered spool message): then say how far it got, so routing
    /// neither resets its progress nor brings back jobs already final.
    pub async fn create_message(&self, id: &str, m: &MessageState) -> Result<Seen, StateError> {
        match self
            .create_or_read(&msg_key(id), Bytes::from(m.encode_to_vec()))
            .await?
        {
            None => Ok(Seen::New),
            Some(e) if e.operation == kv::Operation::Put => Ok(Seen::Routed),
            // A marker: every job of the message is final.
            Some(_) => Ok(Seen::Finished),
        }
    }

    /// Record a job routed from a message, unless its state exists already
    /// or it is final. Returns whether it must be published: when new, or
    /// when routed before but never attempted (the publish may not have
    /// happened; a repeat within the de-duplication window is dropped).
    /// A job already retried or final is left alone.
    pub async fn create_job(&self, s: &JobState) -> Result<bool, StateError> {
        let job = s
            .job
            .as_ref()
            .ok_or_else(|| StateError::Corrupt { key: "job".into() })?;
        let key = job_key(&job.message_id, &job.destination);
        match self
            .create_or_read(&key, Bytes::from(s.encode_to_vec()))
            .await?
        {
            None => Ok(true),
            Some(e) if e.operation == kv::Operation::Put => {
                let stored = JobState::decode(e.value).map_err(|_| StateError::Corrupt { key })?;
                Ok(stored.job.is_some_and(|j| j.attempt == 0))
            }
            // A marker: the job is final.
            Some(_) => Ok(false),
        }
    }

    /// Write `value` to `key` if the key holds nothing at all, not even the
    /// marker a purge leaves: one round trip for a new key, and `None`. If
    /// the key exists, nothing is written and its last entry (a value or a
    /// marker) is returned.
    ///
    /// Not `kv::Store::create`: that writes over a delete or purge marker,
    /// and a marker here means "final, do not route again".
    async fn create_or_read(
        &self,
        key: &str,
        value: Bytes,
    ) -> Result<Option<kv::Entry>, StateError> {
        // A conflict whose entry cannot be read back: the marker expired in
        // between, or a direct get answered from a replica behind the
        // leader. Try again a few times, then leave it to a redelivery.
        for _ in 0..CREATE_TRIES {
            // Revision 0: only if the key's subject has no message at all.
            match self.kv.update(key, value.clone(), 0).await {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(kv_err(e)),
            }
            if let Some(entry) = self.kv.entry(key).await.map_err(kv_err)? {
                return Ok(Some(entry));
            }
        }
        Err(StateError::Kv(format!(
            "{key}: exists but could not be read back"
        )))
    }

    /// Store a job's state.
    pub async fn put_job(&self, s: &JobState) -> Result<(), StateError> {
        let job = s
            .job
            .as_ref()
            .ok_or_else(|| StateError::Corrupt { key: "job".into() })?;
        self.kv
            .put(
                job_key(&job.message_id, &job.destination),
                Bytes::from(s.encode_to_vec()),
            )
            .await
            .map(|_| ())
            .map_err(kv_err)
    }

    /// A job's state, if the job is still pending.
    pub async fn job(
        &self,
        message_id: &str,
        destination: &str,
    ) -> Result<Option<JobState>, StateError> {
        let key = job_key(message_id, destination);
        match self.kv.get(&key).await.map_err(kv_err)? {
            Some(b) => JobState::decode(b)
                .map(Some)
                .map_err(|_| StateError::Corrupt { key }),
            None => Ok(None),
        }
    }

    /// Every pending job of a message.
    pub async fn jobs_of(&self, message_id: &str) -> Result<Vec<JobState>, StateError> {
        // `>`: a destination token is a domain, dots and all.
        let filter = format!("job.{}.>", bus::kv_token(message_id));
        Ok(self.scan(&filter, |_| true, usize::MAX).await?.0)
    }

    /// Pending jobs of one destination (every destination if `None`) that
    /// `keep` accepts, at most `limit`; the flag says more matched.
    ///
    /// The server filters by key (`job.*.<destination>`) and sends only the
    /// latest value of each key, so listing one destination does not read
    /// the state of the others.
    pub async fn list(
        &self,
        destination: Option<&str>,
        keep: impl FnMut(&JobState) -> bool,
        limit: usize,
    ) -> Result<(Vec<JobState>, bool), StateError> {
        let filter = match destination {
            Some(d) => format!("job.*.{}", bus::kv_token(d)),
            None => "job.>".to_string(),
        };
        self.scan(&filter, keep, limit).await
    }

    async fn scan(
        &self,
        key_filter: &str,
        mut keep: impl FnMut(&JobState) -> bool,
        limit: usize,
    ) -> Result<(Vec<JobState>, bool), StateError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, push};
        use futures::StreamExt;
        let consumer = self
            .kv
            .stream
            .create_consumer(push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("$KV.{}.{key_filter}", bus::QUEUE_BUCKET),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(kv_err)?;
        let mut out = Vec::new();
        let mut truncated = false;
        if consumer.cached_info().num_pending == 0 {
            return Ok((out, truncated));
        }
        let mut messages = consumer.messages().await.map_err(kv_err)?;
        while let Some(m) = messages.next().await {
            let m = m.map_err(kv_err)?;
            let pending = m.info().map_err(kv_err)?.pending;
            // Deleted and purged keys leave a marker with an empty payload
            // (`KV-Operation`, or `Nats-Marker-Reason` from the server).
            let removed = m.payload.is_empty()
                || m.headers.as_ref().is_some_and(|h| {
                    h.get("KV-Operation").is_some() || h.get("Nats-Marker-Reason").is_some()
                });
            if !removed {
                let st = JobState::decode(m.payload.clone()).map_err(|_| StateError::Corrupt {
                    key: m.subject.to_string(),
                })?;
                if keep(&st) {
                    if out.len() == limit {
                        truncated = true;
                        break;
                    }
                    out.push(st);
                }
            }
            if pending == 0 {
                break;
            }
        }
        Ok((out, truncated))
    }

    /// A job became final: count it on its message, and if it was the
    /// message's last, forget the message and return its state so the
    /// caller can delete the body; then forget the job.
    ///
    /// A message with one job has no message key ([`State::create_message`]
    /// is skipped for it): its job is its last, and `st` says where the body
    /// is.
    ///
    /// Safe to repeat after a failure part-way: the message records *which*
    /// destinations are final (a set), and the job's key goes last, so a
    /// retried result finds the job still pending and finishes it again
    /// without counting it twice or deleting a body another job needs.
    pub async fn finish_job(&self, st: &JobState) -> Result<Option<MessageState>, StateError> {
        let job = st
            .job
            .as_ref()
            .ok_or_else(|| StateError::Corrupt { key: "job".into() })?;
        let (message_id, destination) = (job.message_id.as_str(), job.destination.as_str());
        let key = msg_key(message_id);
        let mut last = None;
        let mut first = true;
        // Compare-and-set so two replicas finishing jobs of one message at
        // once cannot lose an update.
        loop {
            let Some(entry) = self.kv.entry(&key).await.map_err(kv_err)? else {
                // No key at all (not even a marker) on the first look: the
                // message's only job, routed without a message key.
                if first {
                    last = Some(sole_job_message(st));
                }
                break;
            };
            first = false;
            if entry.operation != kv::Operation::Put {
                break;
            }
            let mut m = MessageState::decode(entry.value)
                .map_err(|_| StateError::Corrupt { key: key.clone() })?;
            if !m.finished.iter().any(|d| d == destination) {
                m.finished.push(destination.to_string());
            }
            if m.finished.len() >= m.remaining_jobs as usize {
                match self
                    .kv
                    .purge_expect_revision_with_ttl(&key, entry.revision, bus::QUEUE_MARKER_TTL)
                    .await
                {
                    Ok(()) => {
                        last = Some(m);
                        break;
                    }
                    Err(e) if e.kind() == kv::PurgeErrorKind::WrongLastRevision => continue,
                    Err(e) => return Err(kv_err(e)),
                }
            }
            match self
                .kv
                .update(&key, Bytes::from(m.encode_to_vec()), entry.revision)
                .await
            {
                Ok(_) => break,
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(kv_err(e)),
            }
        }
        self.kv
            .purge_with_ttl(job_key(message_id, destination), bus::QUEUE_MARKER_TTL)
            .await
            .map_err(kv_err)?;
        Ok(last)
    }
}

/// The state a one-job message would have had in its message key: where
/// its body is, so the caller can delete it.
fn sole_job_message(st: &JobState) -> MessageState {
    use tern_proto::body_ref::Location;
    let job = st.job.as_ref();
    let object = match job
        .and_then(|j| j.body.as_ref())
        .and_then(|b| b.location.as_ref())
    {
        Some(Location::Object(name)) => name.clone(),
        _ => String::new(),
    };
    MessageState {
        remaining_jobs: 1,
        spool_seq: st.spool_seq,
        object,
        finished: job.map(|j| j.destination.clone()).into_iter().collect(),
    }
}

/// What [`State::create_message`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First time: route it.
    New,
    /// Routed before and not finished: route again (publishes are
    /// de-duplicated, job states are kept).
    Routed,
    /// Every job is final already: nothing to do.
    Finished,
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tern_proto::Job;
    use tern_testkit::NatsServer;

    async fn state() -> (NatsServer, State) {
        let nats = NatsServer::start().await;
        let client = async_nats::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client.clone());
        bus::ensure_streams(&js, 1).await.unwrap();
        let state = State::open(&js, client).await.unwrap();
        (nats, state)
    }

    fn job_state(attempt: u32) -> JobState {
        JobState {
            job: Some(Job {
                job_id: "m1/example.org".into(),
                message_id: "m1".into(),
                destination: "example.org".into(),
                attempt,
                ..Default::default()
            }),
            state: "ready".into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn routing_again_keeps_progress_and_never_revives_what_is_final() {
        let (_nats, state) = state().await;
        let m = MessageState {
            remaining_jobs: 1,
            ..Default::default()
        };
        assert_eq!(state.create_message("m1", &m).await.unwrap(), Seen::New);
        assert_eq!(state.create_message("m1", &m).await.unwrap(), Seen::Routed);

        // New, then again while never attempted: publish (de-duplicated).
        assert!(state.create_job(&job_state(0)).await.unwrap());
        assert!(state.create_job(&job_state(0)).await.unwrap());
        // Attempted and rescheduled: the stored state stays.
        state.put_job(&job_state(1)).await.unwrap();
        assert!(!state.create_job(&job_state(0)).await.unwrap());
        let stored = state.job("m1", "example.org").await.unwrap().unwrap();
        assert_eq!(stored.job.unwrap().attempt, 1);

        // Final: both keys are purged, their markers block a second routing.
        assert!(state.finish_job(&job_state(1)).await.unwrap().is_some());
        assert_eq!(
            state.create_message("m1", &m).await.unwrap(),
            Seen::Finished
        );
        assert!(!state.create_job(&job_state(0)).await.unwrap());
        assert!(state.job("m1", "example.org").await.unwrap().is_none());
        let marker = state.kv.entry(msg_key("m1")).await.unwrap().unwrap();
        assert_eq!(marker.operation, kv::Operation::Purge);
    }

    /// A one-job message is routed without a message key: finishing its job
    /// still says where the body is (so it gets deleted), and leaves the
    /// job's marker, which keeps a redelivered envelope from routing it
    /// again. (A redelivered result stops at the missing job, `apply`.)
    #[tokio::test]
    async fn a_one_job_message_needs_no_message_key() {
        use tern_proto::{BodyRef, body_ref::Location};
        let (_nats, state) = state().await;
        let mut js = job_state(0);
        js.spool_seq = 42;
        js.job.as_mut().unwrap().body = Some(BodyRef {
            location: Some(Location::Object("m1".into())),
            size: 10,
        });
        assert!(state.create_job(&js).await.unwrap());
        let m = state.finish_job(&js).await.unwrap().expect("its last job");
        assert_eq!((m.spool_seq, m.object.as_str()), (42, "m1"));
        assert!(state.kv.entry(msg_key("m1")).await.unwrap().is_none());
        assert!(!state.create_job(&js).await.unwrap());
        assert!(state.job("m1", "example.org").await.unwrap().is_none());
    }

    /// Why `create_or_read` does not use the client's `create`: over a
    /// purge marker it writes, which would bring a final job back.
    #[tokio::test]
    async fn the_client_create_writes_over_a_purge_marker() {
        let (_nats, state) = state().await;
        state
            .kv
            .put("probe", Bytes::from_static(b"1"))
            .await
            .unwrap();
        state
            .kv
            .purge_with_ttl("probe", bus::QUEUE_MARKER_TTL)
            .await
            .unwrap();
        assert!(
            state
                .create_or_read("probe", Bytes::from_static(b"2"))
                .await
                .unwrap()
                .is_some_and(|e| e.operation == kv::Operation::Purge)
        );
        assert!(
            state
                .kv
                .create("probe", Bytes::from_static(b"2"))
                .await
                .is_ok()
        );
    }
}
