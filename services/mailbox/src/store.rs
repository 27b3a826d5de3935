//! Storage: accounts, mailboxes, messages and content-addressed bodies in
//! SQLite (default) or PostgreSQL, through sqlx with one set of migrations.
//!
//! Every query is plain SQL both databases accept (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING`); `with_pool!` and `write_tx!` compile each
//! method once per backend.

use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The embedded migrations (`services/mailbox/migrations`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The name of the one mailbox every account has.
pub const INBOX: &str = "INBOX";

/// Errors from the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is neither `sqlite:` nor `postgres://`.
    #[error("unsupported database URL {0:?}: expected sqlite://PATH or postgres://...")]
    Url(String),
    /// Creating the directory for the SQLite file failed.
    #[error("create database directory {path}: {source}")]
    Dir {
        /// The directory.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// A query or connection failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row held a value out of range (a corrupt or foreign database).
    #[error("database holds an invalid {0}")]
    Corrupt(&'static str),
}

enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Run `$body` with `$p` bound to the concrete pool.
macro_rules! with_pool {
    ($self:expr, $p:ident => $body:expr) => {
        match &$self.pool {
            Pool::Sqlite($p) => $body,
            Pool::Postgres($p) => $body,
        }
    };
}

/// Run `$body` in a write transaction `$tx`, committing when it finishes
/// without `?`-returning. SQLite takes the write lock up front
/// (`BEGIN IMMEDIATE`) so concurrent writers wait instead of failing.
macro_rules! write_tx {
    ($self:expr, $tx:ident => $body:block) => {
        match &$self.pool {
            Pool::Sqlite(p) => {
                let mut $tx = p.begin_with("BEGIN IMMEDIATE").await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
            Pool::Postgres(p) => {
                let mut $tx = p.begin().await?;
                let r = $body;
                $tx.commit().await?;
                r
            }
        }
    };
}

/// An account row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Row id.
    pub id: i64,
    /// Lower-cased address.
    pub address: String,
}

/// A mailbox's IMAP identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mailbox {
    /// Row id.
    pub id: i64,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// UIDNEXT.
    pub uidnext: u32,
    /// Highest UID any read-write SELECT has seen (for `\Recent`).
    pub recent_uid: u32,
}

/// A message's metadata (no content).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageMeta {
    /// Row id.
    pub id: i64,
    /// IMAP UID.
    pub uid: u32,
    /// System flags.
    pub flags: Vec<String>,
    /// Octets of the whole message.
    pub size: u64,
    /// Internal date, Unix milliseconds.
    pub internal_date_ms: i64,
}

/// The outcome of [`Store::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// A new message with this UID.
    Stored(u32),
    /// This message id was already delivered to this account.
    Duplicate,
}

/// The database.
pub struct Store {
    pool: Pool,
}

fn new_id() -> i64 {
    rand::random::<i64>() & i64::MAX
}

fn to_u32(v: i64, what: &'static str) -> Result<u32, StoreError> {
    u32::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

fn flags_text(flags: &[String]) -> String {
    flags.join(" ")
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl Store {
    /// Open (creating a SQLite file and its directory when missing) and
    /// apply the migrations.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let pool = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            if let Some(dir) = opts
                .get_filename()
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
            {
                std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
                    path: dir.display().to_string(),
                    source,
                })?;
            }
            let pool = SqlitePoolOptions::new()
                .max_connections(8)
                .acquire_timeout(Duration::from_secs(15))
                .connect_with(opts)
                .await?;
            Pool::Sqlite(pool)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pool = PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(15))
                .connect(url)
                .await?;
            Pool::Postgres(pool)
        } else {
            return Err(StoreError::Url(url.to_string()));
        };
        let store = Store { pool };
        with_pool!(store, p => MIGRATOR.run(p).await)?;
        Ok(store)
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Close every connection.
    pub async fn close(&self) {
        with_pool!(self, p => p.close().await)
    }

    /// Create an account with its INBOX. Returns false if the address exists.
    pub async fn create_account(
        &self,
        address: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let id = new_id();
        let now = tern_runtime::now_unix_ms();
        let uidvalidity = u32::try_from(now / 1000).unwrap_or(1).max(1);
        let created = write_tx!(self, tx => {
            let r = sqlx::query(
                "INSERT INTO accounts (id, address, password_hash, created_at_unix_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (address) DO NOTHING",
            )
            .bind(id)
            .bind(address)
            .bind(password_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                sqlx::query(
                    "INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext, recent_uid) \
                     VALUES ($1, $2, $3, $4, 1, 0)",
                )
                .bind(new_id())
                .bind(id)
                .bind(INBOX)
                .bind(i64::from(uidvalidity))
                .execute(&mut *tx)
                .await?;
            }
            r.rows_affected() == 1
        });
        Ok(created)
    }

    /// Delete an account and everything in it. Returns false if unknown.
    pub async fn delete_account(&self, address: &str) -> Result<bool, StoreError> {
        let hashes: Option<Vec<String>> = write_tx!(self, tx => {
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM accounts WHERE address = $1")
                .bind(address)
                .fetch_optional(&mut *tx)
                .await?;
            match id {
                None => None,
                Some(id) => {
                    let hashes: Vec<String> =
                        sqlx::query_scalar("SELECT DISTINCT body_hash FROM messages WHERE account_id = $1")
                            .bind(id)
                            .fetch_all(&mut *tx)
                            .await?;
                    sqlx::query("DELETE FROM messages WHERE account_id = $1").bind(id).execute(&mut *tx).await?;
                    sqlx::query("DELETE FROM mailboxes WHERE account_id = $1").bind(id).execute(&mut *tx).await?;
                    sqlx::query("DELETE FROM accounts WHERE id = $1").bind(id).execute(&mut *tx).await?;
                    Some(hashes)
                }
            }
        });
        match hashes {
            None => Ok(false),
            Some(h) => {
                self.collect_bodies(&h).await?;
                Ok(true)
            }
        }
    }

    /// Every account address, sorted.
    pub async fn list_accounts(&self) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, p => {
            sqlx::query_scalar("SELECT address FROM accounts ORDER BY address").fetch_all(p).await?
        }))
    }

    /// Replace an account's password hash. Returns false if unknown.
    pub async fn set_password_hash(
        &self,
        address: &str,
        password_hash: &str,
    ) -> Result<bool, StoreError> {
        let r = with_pool!(self, p => {
            sqlx::query("UPDATE accounts SET password_hash = $1 WHERE address = $2")
                .bind(password_hash)
                .bind(address)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(r == 1)
    }

    /// An account and its password hash.
    pub async fn account(&self, address: &str) -> Result<Option<(Account, String)>, StoreError> {
        let row: Option<(i64, String, String)> = with_pool!(self, p => {
            sqlx::query_as("SELECT id, address, password_hash FROM accounts WHERE address = $1")
                .bind(address)
                .fetch_optional(p)
                .await?
        });
        Ok(row.map(|(id, address, hash)| (Account { id, address }, hash)))
    }

    /// An account's INBOX.
    pub async fn inbox(&self, account_id: i64) -> Result<Mailbox, StoreError> {
        let row: (i64, i64, i64, i64) = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, uidvalidity, uidnext, recent_uid FROM mailboxes WHERE account_id = $1 AND name = $2",
            )
            .bind(account_id)
            .bind(INBOX)
            .fetch_one(p)
            .await?
        });
        Ok(Mailbox {
            id: row.0,
            uidvalidity: to_u32(row.1, "uidvalidity")?,
            uidnext: to_u32(row.2, "uidnext")?,
            recent_uid: to_u32(row.3, "recent_uid")?,
        })
    }

    /// Mark every message up to `uid` as no longer recent (a read-write
    /// SELECT saw them).
    pub async fn clear_recent(&self, mailbox_id: i64, uid: u32) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE mailboxes SET recent_uid = $1 WHERE id = $2 AND recent_uid < $1")
                .bind(i64::from(uid))
                .bind(mailbox_id)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Store one copy of a message in the account's INBOX: `prefix` (this
    /// copy's header lines) followed by `body` (stored once per distinct
    /// content). A second delivery of `message_id` is a no-op.
    pub async fn deliver(
        &self,
        account_id: i64,
        message_id: &str,
        prefix: &[u8],
        body: &[u8],
        internal_date_ms: i64,
    ) -> Result<Delivered, StoreError> {
        let hash = sha256_hex(body);
        let size =
            i64::try_from(prefix.len() + body.len()).map_err(|_| StoreError::Corrupt("size"))?;
        let body_len = i64::try_from(body.len()).map_err(|_| StoreError::Corrupt("size"))?;
        let outcome = write_tx!(self, tx => {
            let existing: Option<i64> =
                sqlx::query_scalar("SELECT uid FROM messages WHERE message_id = $1 AND account_id = $2")
                    .bind(message_id)
                    .bind(account_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if existing.is_some() {
                Delivered::Duplicate
            } else {
                let have_body: Option<i64> = sqlx::query_scalar("SELECT size FROM bodies WHERE hash = $1")
                    .bind(&hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                if have_body.is_none() {
                    sqlx::query("INSERT INTO bodies (hash, size, data) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING")
                        .bind(&hash)
                        .bind(body_len)
                        .bind(body)
                        .execute(&mut *tx)
                        .await?;
                }
                let (mailbox_id, uidnext): (i64, i64) = sqlx::query_as(
                    "UPDATE mailboxes SET uidnext = uidnext + 1 WHERE account_id = $1 AND name = $2 \
                     RETURNING id, uidnext",
                )
                .bind(account_id)
                .bind(INBOX)
                .fetch_one(&mut *tx)
                .await?;
                let uid = uidnext - 1;
                let r = sqlx::query(
                    "INSERT INTO messages (id, account_id, mailbox_id, uid, message_id, flags, \
                     internal_date_unix_ms, size, prefix, body_hash) \
                     VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8, $9) \
                     ON CONFLICT (message_id, account_id) DO NOTHING",
                )
                .bind(new_id())
                .bind(account_id)
                .bind(mailbox_id)
                .bind(uid)
                .bind(message_id)
                .bind(internal_date_ms)
                .bind(size)
                .bind(prefix)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 1 {
                    Delivered::Stored(to_u32(uid, "uid")?)
                } else {
                    Delivered::Duplicate
                }
            }
        });
        Ok(outcome)
    }

    /// Messages of a mailbox with a UID above `after_uid`, in UID order.
    pub async fn messages(
        &self,
        mailbox_id: i64,
        after_uid: u32,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let rows: Vec<(i64, i64, String, i64, i64)> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, uid, flags, size, internal_date_unix_ms FROM messages \
                 WHERE mailbox_id = $1 AND uid > $2 ORDER BY uid",
            )
            .bind(mailbox_id)
            .bind(i64::from(after_uid))
            .fetch_all(p)
            .await?
        });
        rows.into_iter()
            .map(|(id, uid, flags, size, date)| {
                Ok(MessageMeta {
                    id,
                    uid: to_u32(uid, "uid")?,
                    flags: tern_mailproto::imap::parse_flags(&flags),
                    size: u64::try_from(size).map_err(|_| StoreError::Corrupt("size"))?,
                    internal_date_ms: date,
                })
            })
            .collect()
    }

    /// The full message (prefix + body), or `None` if it is gone.
    pub async fn content(&self, message_id: i64) -> Result<Option<Vec<u8>>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT m.prefix, b.data FROM messages m JOIN bodies b ON b.hash = m.body_hash WHERE m.id = $1",
            )
            .bind(message_id)
            .fetch_optional(p)
            .await?
        });
        Ok(row.map(|(mut prefix, body)| {
            prefix.extend_from_slice(&body);
            prefix
        }))
    }

    /// Replace a message's flags.
    pub async fn set_flags(&self, message_id: i64, flags: &[String]) -> Result<(), StoreError> {
        with_pool!(self, p => {
            sqlx::query("UPDATE messages SET flags = $1 WHERE id = $2")
                .bind(flags_text(flags))
                .bind(message_id)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(())
    }

    /// Remove messages of `account_id` for good, and bodies nobody refers to any more.
    pub async fn expunge(&self, account_id: i64, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let hashes: Vec<String> = write_tx!(self, tx => {
            let mut hashes = Vec::with_capacity(ids.len());
            for id in ids {
                let h: Option<String> = sqlx::query_scalar(
                    "DELETE FROM messages WHERE id = $1 AND account_id = $2 RETURNING body_hash",
                )
                .bind(*id)
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await?;
                hashes.extend(h);
            }
            hashes
        });
        self.collect_bodies(&hashes).await
    }

    /// Delete these bodies if no message refers to them.
    async fn collect_bodies(&self, hashes: &[String]) -> Result<(), StoreError> {
        for h in hashes {
            with_pool!(self, p => {
                sqlx::query(
                    "DELETE FROM bodies WHERE hash = $1 AND NOT EXISTS (SELECT 1 FROM messages WHERE body_hash = $1)",
                )
                .bind(h)
                .execute(p)
                .await?
                .rows_affected()
            });
        }
        Ok(())
    }

    /// How many bodies are stored.
    #[cfg(test)]
    pub async fn body_count(&self) -> Result<i64, StoreError> {
        Ok(with_pool!(self, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM bodies").fetch_one(p).await?
        }))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    async fn sqlite() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/sub/dir/mailbox.db", dir.path().display());
        let store = Store::open(&url).await.unwrap();
        (dir, store)
    }

    #[tokio::test]
    async fn creates_file_in_wal_mode_and_migrates_idempotently() {
        let (dir, store) = sqlite().await;
        let mode: String = with_pool!(store, p => sqlx::query_scalar("PRAGMA journal_mode").fetch_one(p).await.unwrap());
        assert_eq!(mode, "wal");
        store.close().await;
        let url = format!("sqlite://{}/sub/dir/mailbox.db", dir.path().display());
        let again = Store::open(&url).await.unwrap();
        assert_eq!(again.list_accounts().await.unwrap(), Vec::<String>::new());
        assert!(matches!(
            Store::open("mysql://x").await,
            Err(StoreError::Url(_))
        ));
    }

    #[tokio::test]
    async fn accounts_lifecycle() {
        let (_dir, store) = sqlite().await;
        assert!(store.create_account("a@example.com", "h1").await.unwrap());
        assert!(!store.create_account("a@example.com", "h2").await.unwrap());
        assert!(store.create_account("b@example.com", "h").await.unwrap());
        assert_eq!(
            store.list_accounts().await.unwrap(),
            vec!["a@example.com", "b@example.com"]
        );
        let (a, hash) = store.account("a@example.com").await.unwrap().unwrap();
        assert_eq!(hash, "h1");
        assert!(
            store
                .set_password_hash("a@example.com", "h3")
                .await
                .unwrap()
        );
        assert!(
            !store
                .set_password_hash("zz@example.com", "h3")
                .await
                .unwrap()
        );
        let inbox = store.inbox(a.id).await.unwrap();
        assert_eq!(inbox.uidnext, 1);
        assert!(inbox.uidvalidity > 0);
        store
            .deliver(a.id, "m1", b"P: 1\r\n", b"body", 1)
            .await
            .unwrap();
        assert!(store.delete_account("a@example.com").await.unwrap());
        assert!(!store.delete_account("a@example.com").await.unwrap());
        assert_eq!(store.body_count().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn bodies_are_stored_once_and_delivery_is_idempotent() {
        let (_dir, store) = sqlite().await;
        store.create_account("a@example.com", "h").await.unwrap();
        store.create_account("b@example.com", "h").await.unwrap();
        let (a, _) = store.account("a@example.com").await.unwrap().unwrap();
        let (b, _) = store.account("b@example.com").await.unwrap().unwrap();
        let body = b"Subject: hi\r\n\r\nhello\r\n";
        assert_eq!(
            store
                .deliver(a.id, "m1", b"A: 1\r\n", body, 5)
                .await
                .unwrap(),
            Delivered::Stored(1)
        );
        assert_eq!(
            store
                .deliver(a.id, "m1", b"A: 1\r\n", body, 5)
                .await
                .unwrap(),
            Delivered::Duplicate
        );
        assert_eq!(
            store
                .deliver(b.id, "m1", b"B: 1\r\n", body, 5)
                .await
                .unwrap(),
            Delivered::Stored(1)
        );
        assert_eq!(
            store
                .deliver(a.id, "m2", b"A: 2\r\n", body, 6)
                .await
                .unwrap(),
            Delivered::Stored(2)
        );
        assert_eq!(store.body_count().await.unwrap(), 1);

        let inbox = store.inbox(a.id).await.unwrap();
        assert_eq!(inbox.uidnext, 3);
        let msgs = store.messages(inbox.id, 0).await.unwrap();
        assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(msgs[0].size, (6 + body.len()) as u64);
        assert_eq!(msgs[0].internal_date_ms, 5);
        let mut expected = b"A: 1\r\n".to_vec();
        expected.extend_from_slice(body);
        assert_eq!(store.content(msgs[0].id).await.unwrap().unwrap(), expected);
        assert_eq!(store.messages(inbox.id, 1).await.unwrap().len(), 1);

        store
            .set_flags(msgs[0].id, &["\\Seen".to_string()])
            .await
            .unwrap();
        assert_eq!(
            store.messages(inbox.id, 0).await.unwrap()[0].flags,
            vec!["\\Seen"]
        );

        // Expunging one copy keeps the body others still use.
        store
            .expunge(a.id, &[msgs[0].id, msgs[1].id])
            .await
            .unwrap();
        assert!(store.content(msgs[0].id).await.unwrap().is_none());
        assert_eq!(store.body_count().await.unwrap(), 1);
        // Another account cannot expunge b's message.
        let bmsgs = store
            .messages(store.inbox(b.id).await.unwrap().id, 0)
            .await
            .unwrap();
        store.expunge(a.id, &[bmsgs[0].id]).await.unwrap();
        assert!(store.content(bmsgs[0].id).await.unwrap().is_some());
        store.expunge(b.id, &[bmsgs[0].id]).await.unwrap();
        assert_eq!(store.body_count().await.unwrap(), 0);
        // UIDs are never reused.
        assert_eq!(
            store.deliver(a.id, "m3", b"", body, 7).await.unwrap(),
            Delivered::Stored(3)
        );
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
