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

fn msg_key(message_id: &str) -> String {
    format!("msg.{}", bus::kv_token(message_id))
}

/// Access to the bucket.
#[derive(Clone)]
pub struct State {
    kv: kv::Store,
}

impl State {
    /// Open the bucket (created by `bus::ensure_streams`).
    pub async fn open(js: &jetstream::Context) -> Result<State, StateError> {
        Ok(State {
            kv: js.get_key_value(bus::QUEUE_BUCKET).await.map_err(kv_err)?,
        })
    }

    /// Record a new message with `jobs` jobs. Returns false if it was already
    /// recorded (a redelivered spool message), which must not reset the count.
    pub async fn create_message(&self, id: &str, m: &MessageState) -> Result<bool, StateError> {
        match self
            .kv
            .create(msg_key(id), Bytes::from(m.encode_to_vec()))
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(kv_err(e)),
        }
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
        use futures::StreamExt;
        let prefix = format!("job.{}.", bus::kv_token(message_id));
        let mut keys = self.kv.keys().await.map_err(kv_err)?;
        let mut out = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(kv_err)?;
            if k.starts_with(&prefix)
                && let Some(b) = self.kv.get(&k).await.map_err(kv_err)?
            {
                out.push(JobState::decode(b).map_err(|_| StateError::Corrupt { key: k.clone() })?);
            }
        }
        Ok(out)
    }

    /// A job became final: forget it, and if it was the message's last job,
    /// forget the message and return its state so the caller can delete the body.
    pub async fn finish_job(
        &self,
        message_id: &str,
        destination: &str,
    ) -> Result<Option<MessageState>, StateError> {
        self.kv
            .delete(job_key(message_id, destination))
            .await
            .map_err(kv_err)?;
        let key = msg_key(message_id);
        // Compare-and-set so two replicas finishing jobs of one message at
        // once cannot lose a decrement.
        loop {
            let Some(entry) = self.kv.entry(&key).await.map_err(kv_err)? else {
                return Ok(None);
            };
            if entry.operation != kv::Operation::Put {
                return Ok(None);
            }
            let mut m = MessageState::decode(entry.value)
                .map_err(|_| StateError::Corrupt { key: key.clone() })?;
            m.remaining_jobs = m.remaining_jobs.saturating_sub(1);
            if m.remaining_jobs == 0 {
                return match self
                    .kv
                    .delete_expect_revision(&key, Some(entry.revision))
                    .await
                {
                    Ok(()) => Ok(Some(m)),
                    Err(_) => continue,
                };
            }
            match self
                .kv
                .update(&key, Bytes::from(m.encode_to_vec()), entry.revision)
                .await
            {
                Ok(_) => return Ok(None),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(kv_err(e)),
            }
        }
    }
}
