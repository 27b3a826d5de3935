//! Storage: accounts, mailboxes, messages and content-addressed bodies in
//! SQLite (default) or PostgreSQL, through sqlx with one set of migrations.
//!
//! Every query is plain SQL both databases accept (`$n` placeholders,
//! `ON CONFLICT`, `RETURNING`); `with_pool!` and `write_tx!` compile each
//! method once per backend.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
pub use tern_mailproto::mime::Summary;

/// The embedded migrations (`services/mailbox/migrations`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The name of the one mailbox every account has.
pub const INBOX: &str = "INBOX";

/// The folders every account gets besides INBOX, with their RFC 6154
/// special-use attribute.
pub const DEFAULT_FOLDERS: [(&str, &str); 5] = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Trash", "\\Trash"),
    ("Junk", "\\Junk"),
    ("Archive", "\\Archive"),
];

/// The hierarchy delimiter of mailbox names.
pub const DELIMITER: char = '/';

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

/// Would `$extra` more octets exceed the account's quota? Evaluated inside
/// the write transaction, so concurrent deliveries cannot both slip past.
macro_rules! over_quota {
    ($tx:ident, $account:expr, $extra:expr) => {{
        // The quota first (a primary-key lookup); the usage sum only when
        // there is a quota to check.
        let quota: Option<i64> = sqlx::query_scalar("SELECT quota_bytes FROM accounts WHERE id = $1")
            .bind($account)
            .fetch_optional(&mut *$tx)
            .await?;
        match quota {
            Some(quota) if quota > 0 => {
                let used: i64 = sqlx::query_scalar(
                    "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM messages WHERE account_id = $1",
                )
                .bind($account)
                .fetch_one(&mut *$tx)
                .await?;
                used.saturating_add($extra) > quota
            }
            _ => false,
        }
    }};
}

/// How many expunged UIDs a mailbox remembers (migration `0005`); a few
/// in unit tests, so compaction is exercised.
const EXPUNGED_KEPT: i64 = if cfg!(test) { 3 } else { 10_000 };

/// Forget a mailbox's oldest expunged UIDs beyond [`EXPUNGED_KEPT`], raising
/// its `expunged_floor` to the highest mod-sequence forgotten (whole
/// mod-sequences at a time, so every expunge above the floor is known).
macro_rules! compact_expunged {
    ($tx:ident, $mailbox:expr) => {{
        let cut: Option<i64> = sqlx::query_scalar(
            "SELECT modseq FROM expunged WHERE mailbox_id = $1 ORDER BY modseq DESC LIMIT 1 OFFSET $2",
        )
        .bind($mailbox)
        .bind(EXPUNGED_KEPT)
        .fetch_optional(&mut *$tx)
        .await?;
        if let Some(cut) = cut {
            sqlx::query("DELETE FROM expunged WHERE mailbox_id = $1 AND modseq <= $2")
                .bind($mailbox)
                .bind(cut)
                .execute(&mut *$tx)
                .await?;
            sqlx::query("UPDATE mailboxes SET expunged_floor = $2 WHERE id = $1 AND expunged_floor < $2")
                .bind($mailbox)
                .bind(cut)
                .execute(&mut *$tx)
                .await?;
        }
    }};
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
    /// HIGHESTMODSEQ: bumped by every change to the mailbox.
    pub highest_modseq: u64,
}

/// A mailbox as LIST shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Row id.
    pub id: i64,
    /// Full name (`/`-separated).
    pub name: String,
    /// RFC 6154 attribute or empty.
    pub special_use: String,
    /// Subscribed.
    pub subscribed: bool,
}

/// Message counts for STATUS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    /// Messages.
    pub messages: u32,
    /// Messages without `\Seen`.
    pub unseen: u32,
    /// Messages above the recent mark.
    pub recent: u32,
    /// Messages with `\Deleted` (STATUS DELETED, RFC 9051 §6.3.11).
    pub deleted: u32,
    /// Sum of their sizes.
    pub size: u64,
}

/// Why a mailbox operation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MailboxOp {
    /// Done.
    Done,
    /// The mailbox (or the source) does not exist.
    NotFound,
    /// The target name is taken.
    Exists,
    /// Refused: INBOX cannot be deleted, nor another mailbox renamed to it.
    Refused,
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
    /// Mod-sequence of the last change (RFC 7162).
    pub modseq: u64,
}

/// The outcome of [`Store::deliver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivered {
    /// A new message with this UID.
    Stored(u32),
    /// This message id was already delivered to this account.
    Duplicate,
    /// Storing it would exceed the account's quota.
    OverQuota,
}

/// The outcome of [`Store::append`] and [`Store::copy`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// Stored: the target's UIDVALIDITY and the new UIDs, in order.
    Stored {
        /// Target UIDVALIDITY.
        uidvalidity: u32,
        /// New UIDs.
        uids: Vec<u32>,
    },
    /// The target mailbox does not exist.
    NoMailbox,
    /// The account's quota would be exceeded.
    OverQuota,
}

/// The database.
pub struct Store {
    pool: Pool,
    /// Account ids whose mail changed through this store (see [`Store::changes`]).
    events: tokio::sync::broadcast::Sender<i64>,
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

fn to_u64(v: i64, what: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(what))
}

type MetaRow = (i64, i64, String, i64, i64, i64);

fn meta(row: MetaRow) -> Result<MessageMeta, StoreError> {
    let (id, uid, flags, size, date, modseq) = row;
    Ok(MessageMeta {
        id,
        uid: to_u32(uid, "uid")?,
        flags: tern_mailproto::imap::parse_flags(&flags),
        size: to_u64(size, "size")?,
        internal_date_ms: date,
        modseq: to_u64(modseq, "modseq")?,
    })
}

type MailboxRow = (i64, i64, i64, i64, i64);

fn mailbox_row(row: MailboxRow) -> Result<Mailbox, StoreError> {
    Ok(Mailbox {
        id: row.0,
        uidvalidity: to_u32(row.1, "uidvalidity")?,
        uidnext: to_u32(row.2, "uidnext")?,
        recent_uid: to_u32(row.3, "recent_uid")?,
        highest_modseq: to_u64(row.4, "modseq")?,
    })
}

/// A fresh UIDVALIDITY: seconds now, and above every one this process gave
/// before, so a name deleted and re-created within the same second still
/// gets a new one (RFC 3501 §2.3.1.1, RFC 9051 §2.3.1.1: a UID must never
/// name two messages under one UIDVALIDITY).
fn new_uidvalidity() -> i64 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static LAST: AtomicU32 = AtomicU32::new(0);
    let now = u32::try_from(tern_runtime::now_unix_ms() / 1000)
        .unwrap_or(1)
        .max(1);
    let prev = LAST
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |last| {
            Some(now.max(last.saturating_add(1)))
        })
        .unwrap_or(now);
    i64::from(now.max(prev.saturating_add(1)))
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

/// Most ids bound in one `IN (...)` list (both backends allow far more).
const IN_CHUNK: usize = 512;

/// `($first, $first+1, ...)` with room for `n` ids, rounded up to a power
/// of two so a handful of statement texts serve every batch size (each
/// distinct text is prepared and cached per connection). Only these
/// placeholders are ever spliced into SQL (hence `AssertSqlSafe`).
fn in_list(first: usize, n: usize) -> (String, usize) {
    let slots = n.clamp(1, IN_CHUNK).next_power_of_two();
    let list: Vec<String> = (first..first + slots).map(|i| format!("${i}")).collect();
    (format!("({})", list.join(", ")), slots)
}

/// Bind `ids` into an `IN` list of `slots` places, repeating the last id.
macro_rules! bind_ids {
    ($q:expr, $ids:expr, $slots:expr) => {{
        let mut q = $q;
        let ids: &[i64] = $ids;
        let last = ids.last().copied().unwrap_or_default();
        for i in 0..$slots {
            q = q.bind(ids.get(i).copied().unwrap_or(last));
        }
        q
    }};
}

type SummaryRow = (
    i64,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
);

fn text(v: Vec<u8>) -> String {
    String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Which parts of a [`Summary`] to load (the others are left empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parts {
    /// The header block.
    pub header: bool,
    /// ENVELOPE.
    pub envelope: bool,
    /// BODYSTRUCTURE and BODY.
    pub structure: bool,
}

/// A stored summary with the `parts` asked for, or `None` where one of
/// those columns is still NULL (a row stored before migration 0003).
fn summary_row(row: SummaryRow, parts: Parts) -> (i64, Option<Summary>) {
    let (id, header, envelope, structure, basic) = row;
    let complete = (!parts.header || header.is_some())
        && (!parts.envelope || envelope.is_some())
        && (!parts.structure || (structure.is_some() && basic.is_some()));
    let s = complete.then(|| Summary {
        header: header.unwrap_or_default(),
        envelope: text(envelope.unwrap_or_default()),
        body_structure: text(structure.unwrap_or_default()),
        body_basic: text(basic.unwrap_or_default()),
    });
    (id, s)
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
                .busy_timeout(Duration::from_secs(10))
                // Sorts and temporary b-trees stay in memory. The page cache
                // keeps SQLite's default (2 MiB a connection): the kernel's
                // page cache holds the file anyway, and a bigger one only
                // adds resident memory per connection.
                .pragma("temp_store", "memory");
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
        let (events, _) = tokio::sync::broadcast::channel(1024);
        let store = Store { pool, events };
        with_pool!(store, p => MIGRATOR.run(p).await)?;
        Ok(store)
    }

    /// Account ids whose messages changed (delivery, APPEND, COPY, flags,
    /// expunge) through this store, as they commit.
    pub fn changes(&self) -> tokio::sync::broadcast::Receiver<i64> {
        self.events.subscribe()
    }

    fn changed(&self, account_id: i64) {
        let _ = self.events.send(account_id);
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
                let all = std::iter::once((INBOX, "")).chain(DEFAULT_FOLDERS);
                for (name, special) in all {
                    sqlx::query(
                        "INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext, recent_uid, special_use) \
                         VALUES ($1, $2, $3, $4, 1, 0, $5)",
                    )
                    .bind(new_id())
                    .bind(id)
                    .bind(name)
                    .bind(i64::from(uidvalidity))
                    .bind(special)
                    .execute(&mut *tx)
                    .await?;
                }
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
                    sqlx::query("DELETE FROM lost_subscriptions WHERE account_id = $1").bind(id).execute(&mut *tx).await?;
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
        self.mailbox(account_id, INBOX)
            .await?
            .ok_or(StoreError::Corrupt("account without INBOX"))
    }

    /// A mailbox of the account by exact name.
    pub async fn mailbox(
        &self,
        account_id: i64,
        name: &str,
    ) -> Result<Option<Mailbox>, StoreError> {
        let row: Option<MailboxRow> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, uidvalidity, uidnext, recent_uid, highest_modseq FROM mailboxes \
                 WHERE account_id = $1 AND name = $2",
            )
            .bind(account_id)
            .bind(name)
            .fetch_optional(p)
            .await?
        });
        row.map(mailbox_row).transpose()
    }

    /// A mailbox by id (fresh UIDNEXT and HIGHESTMODSEQ); `None` once deleted.
    pub async fn mailbox_by_id(&self, mailbox_id: i64) -> Result<Option<Mailbox>, StoreError> {
        let row: Option<MailboxRow> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, uidvalidity, uidnext, recent_uid, highest_modseq FROM mailboxes WHERE id = $1",
            )
            .bind(mailbox_id)
            .fetch_optional(p)
            .await?
        });
        row.map(mailbox_row).transpose()
    }

    /// Every mailbox of the account, by name.
    pub async fn list_mailboxes(&self, account_id: i64) -> Result<Vec<MailboxInfo>, StoreError> {
        let rows: Vec<(i64, String, String, i64)> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, name, special_use, subscribed FROM mailboxes WHERE account_id = $1 ORDER BY name",
            )
            .bind(account_id)
            .fetch_all(p)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, name, special_use, sub)| MailboxInfo {
                id,
                name,
                special_use,
                subscribed: sub != 0,
            })
            .collect())
    }

    /// Create a mailbox, not subscribed (RFC 3501 §6.3.3 / RFC 9051 §6.3.4:
    /// CREATE does not subscribe; the column's default of 1 is for rows
    /// that predate subscriptions). `Exists` if the name is taken.
    pub async fn create_mailbox(
        &self,
        account_id: i64,
        name: &str,
    ) -> Result<MailboxOp, StoreError> {
        let r = with_pool!(self, p => {
            sqlx::query(
                "INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext, recent_uid, subscribed) \
                 VALUES ($1, $2, $3, $4, 1, 0, 0) ON CONFLICT (account_id, name) DO NOTHING",
            )
            .bind(new_id())
            .bind(account_id)
            .bind(name)
            .bind(new_uidvalidity())
            .execute(p)
            .await?
            .rows_affected()
        });
        if r != 1 {
            return Ok(MailboxOp::Exists);
        }
        // A name subscribed before its mailbox was deleted is subscribed again.
        let lost = with_pool!(self, p => {
            sqlx::query("DELETE FROM lost_subscriptions WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(name)
                .execute(p)
                .await?
                .rows_affected()
        });
        if lost == 1 {
            self.set_subscribed(account_id, name, true).await?;
        }
        Ok(MailboxOp::Done)
    }

    /// Subscribed names whose mailbox no longer exists (migration 0006), by name.
    pub async fn lost_subscriptions(&self, account_id: i64) -> Result<Vec<String>, StoreError> {
        Ok(with_pool!(self, p => {
            sqlx::query_scalar("SELECT name FROM lost_subscriptions WHERE account_id = $1 ORDER BY name")
                .bind(account_id)
                .fetch_all(p)
                .await?
        }))
    }

    /// Delete a mailbox and its messages (not INBOX).
    pub async fn delete_mailbox(
        &self,
        account_id: i64,
        name: &str,
    ) -> Result<MailboxOp, StoreError> {
        if name == INBOX {
            return Ok(MailboxOp::Refused);
        }
        let hashes: Option<Vec<String>> = write_tx!(self, tx => {
            let id: Option<i64> = sqlx::query_scalar("SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(name)
                .fetch_optional(&mut *tx)
                .await?;
            match id {
                None => None,
                Some(id) => {
                    let hashes: Vec<String> = sqlx::query_scalar("DELETE FROM messages WHERE mailbox_id = $1 RETURNING body_hash")
                        .bind(id)
                        .fetch_all(&mut *tx)
                        .await?;
                    sqlx::query("DELETE FROM expunged WHERE mailbox_id = $1").bind(id).execute(&mut *tx).await?;
                    // The subscription outlives the mailbox (migration 0006).
                    sqlx::query(
                        "INSERT INTO lost_subscriptions (account_id, name) \
                         SELECT account_id, name FROM mailboxes WHERE id = $1 AND subscribed = 1 \
                         ON CONFLICT (account_id, name) DO NOTHING",
                    )
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM mailboxes WHERE id = $1").bind(id).execute(&mut *tx).await?;
                    Some(hashes)
                }
            }
        });
        match hashes {
            None => Ok(MailboxOp::NotFound),
            Some(mut h) => {
                h.sort();
                h.dedup();
                self.changed(account_id);
                self.collect_bodies(&h).await?;
                Ok(MailboxOp::Done)
            }
        }
    }

    /// Rename a mailbox and its children (`from/...`). Renaming INBOX
    /// moves its messages instead (see [`Store::rename_inbox`]); renaming
    /// to INBOX is refused.
    pub async fn rename_mailbox(
        &self,
        account_id: i64,
        from: &str,
        to: &str,
    ) -> Result<MailboxOp, StoreError> {
        if to == INBOX {
            return Ok(MailboxOp::Refused);
        }
        if from == INBOX {
            return self.rename_inbox(account_id, to).await;
        }
        let prefix = format!("{from}{DELIMITER}");
        let op = write_tx!(self, tx => {
            let names: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM mailboxes WHERE account_id = $1")
                .bind(account_id)
                .fetch_all(&mut *tx)
                .await?;
            if !names.iter().any(|(_, n)| n == from) {
                MailboxOp::NotFound
            } else if names.iter().any(|(_, n)| n == to) {
                MailboxOp::Exists
            } else {
                for (id, n) in &names {
                    let new = if n == from {
                        to.to_string()
                    } else if let Some(rest) = n.strip_prefix(&prefix) {
                        format!("{to}{DELIMITER}{rest}")
                    } else {
                        continue;
                    };
                    sqlx::query("UPDATE mailboxes SET name = $1 WHERE id = $2")
                        .bind(new)
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                }
                MailboxOp::Done
            }
        });
        Ok(op)
    }

    /// RENAME INBOX (RFC 3501 §6.3.5, RFC 9051 §6.3.6): a new mailbox `to`
    /// (a new UIDVALIDITY, as any new mailbox) takes every INBOX message,
    /// with its UID, flags and mod-sequence; INBOX stays, empty, with its
    /// UIDVALIDITY and UIDNEXT, so its UIDs are never reused. INBOX's
    /// HIGHESTMODSEQ moves, so sessions with it selected see the messages
    /// go. Mailboxes under INBOX (`INBOX/x`) are not renamed. One
    /// transaction: another session's delivery lands either before (and
    /// moves) or after (and stays in INBOX).
    async fn rename_inbox(&self, account_id: i64, to: &str) -> Result<MailboxOp, StoreError> {
        let op = write_tx!(self, tx => {
            let taken: Option<i64> = sqlx::query_scalar("SELECT id FROM mailboxes WHERE account_id = $1 AND name = $2")
                .bind(account_id)
                .bind(to)
                .fetch_optional(&mut *tx)
                .await?;
            let inbox: Option<(i64, i64, i64, i64)> = if taken.is_some() {
                None
            } else {
                sqlx::query_as(
                    "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 \
                     WHERE account_id = $1 AND name = $2 \
                     RETURNING id, uidnext, recent_uid, highest_modseq",
                )
                .bind(account_id)
                .bind(INBOX)
                .fetch_optional(&mut *tx)
                .await?
            };
            match (taken, inbox) {
                (Some(_), _) => MailboxOp::Exists,
                (None, None) => MailboxOp::NotFound,
                (None, Some((inbox_id, uidnext, recent_uid, modseq))) => {
                    let id = new_id();
                    sqlx::query(
                        "INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext, recent_uid, highest_modseq) \
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    )
                    .bind(id)
                    .bind(account_id)
                    .bind(to)
                    .bind(new_uidvalidity())
                    .bind(uidnext)
                    .bind(recent_uid)
                    .bind(modseq)
                    .execute(&mut *tx)
                    .await?;
                    // For INBOX the messages are expunged (RFC 7162 §3.2).
                    sqlx::query(
                        "INSERT INTO expunged (mailbox_id, uid, modseq) \
                         SELECT mailbox_id, uid, $2 FROM messages WHERE mailbox_id = $1",
                    )
                    .bind(inbox_id)
                    .bind(modseq)
                    .execute(&mut *tx)
                    .await?;
                    compact_expunged!(tx, inbox_id);
                    sqlx::query("UPDATE messages SET mailbox_id = $1 WHERE mailbox_id = $2")
                        .bind(id)
                        .bind(inbox_id)
                        .execute(&mut *tx)
                        .await?;
                    MailboxOp::Done
                }
            }
        });
        if op == MailboxOp::Done {
            self.changed(account_id);
        }
        Ok(op)
    }

    /// SUBSCRIBE / UNSUBSCRIBE.
    pub async fn set_subscribed(
        &self,
        account_id: i64,
        name: &str,
        on: bool,
    ) -> Result<MailboxOp, StoreError> {
        let r = with_pool!(self, p => {
            sqlx::query("UPDATE mailboxes SET subscribed = $1 WHERE account_id = $2 AND name = $3")
                .bind(i64::from(on))
                .bind(account_id)
                .bind(name)
                .execute(p)
                .await?
                .rows_affected()
        });
        if r == 1 {
            return Ok(MailboxOp::Done);
        }
        // UNSUBSCRIBE of a name whose mailbox is gone.
        let lost = if on {
            0
        } else {
            with_pool!(self, p => {
                sqlx::query("DELETE FROM lost_subscriptions WHERE account_id = $1 AND name = $2")
                    .bind(account_id)
                    .bind(name)
                    .execute(p)
                    .await?
                    .rows_affected()
            })
        };
        Ok(if lost == 1 {
            MailboxOp::Done
        } else {
            MailboxOp::NotFound
        })
    }

    /// Message counts of a mailbox.
    pub async fn counts(&self, mb: &Mailbox) -> Result<Counts, StoreError> {
        let rows: Vec<(i64, String, i64)> = with_pool!(self, p => {
            sqlx::query_as("SELECT uid, flags, size FROM messages WHERE mailbox_id = $1")
                .bind(mb.id)
                .fetch_all(p)
                .await?
        });
        let mut c = Counts::default();
        for (uid, flags, size) in rows {
            c.messages += 1;
            let has = |flag: &str| {
                flags
                    .split_ascii_whitespace()
                    .any(|f| f.eq_ignore_ascii_case(flag))
            };
            if !has("\\Seen") {
                c.unseen += 1;
            }
            if has("\\Deleted") {
                c.deleted += 1;
            }
            if uid > i64::from(mb.recent_uid) {
                c.recent += 1;
            }
            c.size += to_u64(size, "size")?;
        }
        Ok(c)
    }

    /// Octets stored for the account, and its quota (0 = none).
    pub async fn usage(&self, account_id: i64) -> Result<(u64, u64), StoreError> {
        let (used, quota): (i64, i64) = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT CAST(COALESCE((SELECT SUM(size) FROM messages WHERE account_id = $1), 0) AS BIGINT), \
                 (SELECT quota_bytes FROM accounts WHERE id = $1)",
            )
            .bind(account_id)
            .fetch_one(p)
            .await?
        });
        Ok((to_u64(used, "size")?, to_u64(quota, "quota")?))
    }

    /// Set the account's quota in octets (0 = none). False if unknown.
    pub async fn set_quota(&self, address: &str, bytes: u64) -> Result<bool, StoreError> {
        let bytes = i64::try_from(bytes).map_err(|_| StoreError::Corrupt("quota"))?;
        let r = with_pool!(self, p => {
            sqlx::query("UPDATE accounts SET quota_bytes = $1 WHERE address = $2")
                .bind(bytes)
                .bind(address)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(r == 1)
    }

    /// Store a message in a mailbox (IMAP APPEND).
    pub async fn append(
        &self,
        account_id: i64,
        mailbox: &str,
        flags: &[String],
        internal_date_ms: i64,
        content: &[u8],
    ) -> Result<Added, StoreError> {
        let hash = sha256_hex(content);
        let size = i64::try_from(content.len()).map_err(|_| StoreError::Corrupt("size"))?;
        let message_id = format!("append/{:016x}", new_id());
        let flags = flags_text(flags);
        let summary = tern_mailproto::mime::summarize(content);
        let added = write_tx!(self, tx => {
            if over_quota!(tx, account_id, size) {
                Added::OverQuota
            } else {
                let mb: Option<(i64, i64, i64)> = sqlx::query_as(
                    "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1 \
                     WHERE account_id = $1 AND name = $2 RETURNING id, uidnext, highest_modseq",
                )
                .bind(account_id)
                .bind(mailbox)
                .fetch_optional(&mut *tx)
                .await?;
                match mb {
                    None => Added::NoMailbox,
                    Some((mailbox_id, uidnext, modseq)) => {
                        sqlx::query("INSERT INTO bodies (hash, size, data) VALUES ($1, $2, $3) ON CONFLICT (hash) DO NOTHING")
                            .bind(&hash)
                            .bind(size)
                            .bind(content)
                            .execute(&mut *tx)
                            .await?;
                        let uid = uidnext - 1;
                        sqlx::query(
                            "INSERT INTO messages (id, account_id, mailbox_id, uid, message_id, flags, \
                             internal_date_unix_ms, size, prefix, body_hash, modseq, \
                             header, envelope, body_structure, body_basic) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
                        )
                        .bind(new_id())
                        .bind(account_id)
                        .bind(mailbox_id)
                        .bind(uid)
                        .bind(&message_id)
                        .bind(&flags)
                        .bind(internal_date_ms)
                        .bind(size)
                        .bind(&b""[..])
                        .bind(&hash)
                        .bind(modseq)
                        .bind(&summary.header)
                        .bind(summary.envelope.as_bytes())
                        .bind(summary.body_structure.as_bytes())
                        .bind(summary.body_basic.as_bytes())
                        .execute(&mut *tx)
                        .await?;
                        let uidvalidity: i64 = sqlx::query_scalar("SELECT uidvalidity FROM mailboxes WHERE id = $1")
                            .bind(mailbox_id)
                            .fetch_one(&mut *tx)
                            .await?;
                        Added::Stored { uidvalidity: to_u32(uidvalidity, "uidvalidity")?, uids: vec![to_u32(uid, "uid")?] }
                    }
                }
            }
        });
        if let Added::Stored { .. } = added {
            self.changed(account_id);
        }
        Ok(added)
    }

    /// Copy messages (row ids, in order) of the account into another of
    /// its mailboxes; bodies are shared, not duplicated.
    pub async fn copy(
        &self,
        account_id: i64,
        ids: &[i64],
        target: &str,
    ) -> Result<Added, StoreError> {
        let n = i64::try_from(ids.len()).map_err(|_| StoreError::Corrupt("count"))?;
        let added = write_tx!(self, tx => {
            let mut extra = 0i64;
            for id in ids {
                let s: Option<i64> = sqlx::query_scalar("SELECT size FROM messages WHERE id = $1 AND account_id = $2")
                    .bind(*id)
                    .bind(account_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                extra = extra.saturating_add(s.unwrap_or(0));
            }
            if over_quota!(tx, account_id, extra) {
                Added::OverQuota
            } else {
                let mb: Option<(i64, i64, i64, i64)> = sqlx::query_as(
                    "UPDATE mailboxes SET uidnext = uidnext + $3, highest_modseq = highest_modseq + 1 \
                     WHERE account_id = $1 AND name = $2 RETURNING id, uidnext, highest_modseq, uidvalidity",
                )
                .bind(account_id)
                .bind(target)
                .bind(n)
                .fetch_optional(&mut *tx)
                .await?;
                match mb {
                    None => Added::NoMailbox,
                    Some((mailbox_id, uidnext, modseq, uidvalidity)) => {
                        let mut uids = Vec::with_capacity(ids.len());
                        for (uid, id) in (uidnext - n..).zip(ids) {
                            let r = sqlx::query(
                                "INSERT INTO messages (id, account_id, mailbox_id, uid, message_id, flags, \
                                 internal_date_unix_ms, size, prefix, body_hash, modseq, \
                                 header, envelope, body_structure, body_basic) \
                                 SELECT $1, account_id, $2, $3, $4, flags, internal_date_unix_ms, size, prefix, body_hash, $5, \
                                 header, envelope, body_structure, body_basic \
                                 FROM messages WHERE id = $6 AND account_id = $7",
                            )
                            .bind(new_id())
                            .bind(mailbox_id)
                            .bind(uid)
                            .bind(format!("copy/{:016x}", new_id()))
                            .bind(modseq)
                            .bind(*id)
                            .bind(account_id)
                            .execute(&mut *tx)
                            .await?;
                            if r.rows_affected() == 1 {
                                uids.push(to_u32(uid, "uid")?);
                            }
                        }
                        Added::Stored { uidvalidity: to_u32(uidvalidity, "uidvalidity")?, uids }
                    }
                }
            }
        });
        if let Added::Stored { .. } = added {
            self.changed(account_id);
        }
        Ok(added)
    }

    /// Set new flags on messages of one mailbox (row id, flags) in one
    /// transaction with one new mod-sequence, which is returned.
    pub async fn store_flags(
        &self,
        account_id: i64,
        mailbox_id: i64,
        changes: &[(i64, Vec<String>)],
    ) -> Result<u64, StoreError> {
        let modseq: i64 = write_tx!(self, tx => {
            let modseq: i64 = sqlx::query_scalar(
                "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 RETURNING highest_modseq",
            )
            .bind(mailbox_id)
            .fetch_one(&mut *tx)
            .await?;
            // One UPDATE per distinct flag set and chunk of ids: a STORE
            // +FLAGS on 1,000 messages usually gives them all the same flags.
            let mut groups: HashMap<String, Vec<i64>> = HashMap::new();
            for (id, flags) in changes {
                groups.entry(flags_text(flags)).or_default().push(*id);
            }
            for (flags, ids) in &groups {
                for chunk in ids.chunks(IN_CHUNK) {
                    let (list, slots) = in_list(4, chunk.len());
                    let sql = format!(
                        "UPDATE messages SET flags = $1, modseq = $2 WHERE mailbox_id = $3 AND id IN {list}"
                    );
                    let q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(flags).bind(modseq).bind(mailbox_id);
                    bind_ids!(q, chunk, slots).execute(&mut *tx).await?;
                }
            }
            modseq
        });
        self.changed(account_id);
        to_u64(modseq, "modseq")
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
        self.deliver_into(
            account_id,
            INBOX,
            message_id,
            prefix,
            body,
            internal_date_ms,
        )
        .await
    }

    /// Like [`Store::deliver`], into the account's `\Junk` mailbox (RFC 6154)
    /// instead: the first one by name, created as `Junk` if the user has
    /// none (the inbound checks' DMARC `p=quarantine` verdict).
    pub async fn deliver_junk(
        &self,
        account_id: i64,
        message_id: &str,
        prefix: &[u8],
        body: &[u8],
        internal_date_ms: i64,
    ) -> Result<Delivered, StoreError> {
        let name = self.junk_mailbox(account_id).await?;
        self.deliver_into(
            account_id,
            &name,
            message_id,
            prefix,
            body,
            internal_date_ms,
        )
        .await
    }

    /// The name of the account's `\Junk` mailbox, creating `Junk` (or
    /// marking an existing plain `Junk` as `\Junk`) when there is none.
    async fn junk_mailbox(&self, account_id: i64) -> Result<String, StoreError> {
        const JUNK: (&str, &str) = DEFAULT_FOLDERS[3];
        let found: Option<String> = with_pool!(self, p => {
            sqlx::query_scalar(
                "SELECT name FROM mailboxes WHERE account_id = $1 AND special_use = $2 ORDER BY name LIMIT 1",
            )
            .bind(account_id)
            .bind(JUNK.1)
            .fetch_optional(p)
            .await?
        });
        if let Some(name) = found {
            return Ok(name);
        }
        let uidvalidity = u32::try_from(tern_runtime::now_unix_ms() / 1000)
            .unwrap_or(1)
            .max(1);
        write_tx!(self, tx => {
            sqlx::query(
                "INSERT INTO mailboxes (id, account_id, name, uidvalidity, uidnext, recent_uid, special_use) \
                 VALUES ($1, $2, $3, $4, 1, 0, $5) \
                 ON CONFLICT (account_id, name) DO UPDATE SET special_use = $5",
            )
            .bind(new_id())
            .bind(account_id)
            .bind(JUNK.0)
            .bind(i64::from(uidvalidity))
            .bind(JUNK.1)
            .execute(&mut *tx)
            .await?;
        });
        self.changed(account_id);
        Ok(JUNK.0.to_string())
    }

    async fn deliver_into(
        &self,
        account_id: i64,
        mailbox: &str,
        message_id: &str,
        prefix: &[u8],
        body: &[u8],
        internal_date_ms: i64,
    ) -> Result<Delivered, StoreError> {
        let hash = sha256_hex(body);
        let size =
            i64::try_from(prefix.len() + body.len()).map_err(|_| StoreError::Corrupt("size"))?;
        let body_len = i64::try_from(body.len()).map_err(|_| StoreError::Corrupt("size"))?;
        // Parsed once here so FETCH ENVELOPE and SEARCH by header never read the body.
        let summary = tern_mailproto::mime::summarize(&[prefix, body].concat());
        let outcome = write_tx!(self, tx => {
            let existing: Option<i64> =
                sqlx::query_scalar("SELECT uid FROM messages WHERE message_id = $1 AND account_id = $2")
                    .bind(message_id)
                    .bind(account_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            if existing.is_some() {
                Delivered::Duplicate
            } else if over_quota!(tx, account_id, size) {
                Delivered::OverQuota
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
                let (mailbox_id, uidnext, modseq): (i64, i64, i64) = sqlx::query_as(
                    "UPDATE mailboxes SET uidnext = uidnext + 1, highest_modseq = highest_modseq + 1 \
                     WHERE account_id = $1 AND name = $2 RETURNING id, uidnext, highest_modseq",
                )
                .bind(account_id)
                .bind(mailbox)
                .fetch_one(&mut *tx)
                .await?;
                let uid = uidnext - 1;
                let r = sqlx::query(
                    "INSERT INTO messages (id, account_id, mailbox_id, uid, message_id, flags, \
                     internal_date_unix_ms, size, prefix, body_hash, modseq, \
                     header, envelope, body_structure, body_basic) \
                     VALUES ($1, $2, $3, $4, $5, '', $6, $7, $8, $9, $10, $11, $12, $13, $14) \
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
                .bind(modseq)
                .bind(&summary.header)
                .bind(summary.envelope.as_bytes())
                .bind(summary.body_structure.as_bytes())
                .bind(summary.body_basic.as_bytes())
                .execute(&mut *tx)
                .await?;
                if r.rows_affected() == 1 {
                    Delivered::Stored(to_u32(uid, "uid")?)
                } else {
                    Delivered::Duplicate
                }
            }
        });
        if let Delivered::Stored(_) = outcome {
            self.changed(account_id);
        }
        Ok(outcome)
    }

    /// Messages of a mailbox with a UID above `after_uid`, in UID order.
    pub async fn messages(
        &self,
        mailbox_id: i64,
        after_uid: u32,
    ) -> Result<Vec<MessageMeta>, StoreError> {
        let rows: Vec<MetaRow> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, uid, flags, size, internal_date_unix_ms, modseq FROM messages \
                 WHERE mailbox_id = $1 AND uid > $2 ORDER BY uid",
            )
            .bind(mailbox_id)
            .bind(i64::from(after_uid))
            .fetch_all(p)
            .await?
        });
        rows.into_iter().map(meta).collect()
    }

    /// What a session whose view of a mailbox reflects `modseq` must catch
    /// up with. When none of the `view_len` messages up to `last_uid` is
    /// gone, only the rows whose mod-sequence moved past `modseq` (flag
    /// changes, new mail) are read, and `false` says the list is partial.
    /// Otherwise every row is returned, with `true`, so expunges show.
    pub async fn changed_messages(
        &self,
        mailbox_id: i64,
        modseq: u64,
        last_uid: u32,
        view_len: usize,
    ) -> Result<(Vec<MessageMeta>, bool), StoreError> {
        let present: i64 = with_pool!(self, p => {
            sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE mailbox_id = $1 AND uid <= $2")
                .bind(mailbox_id)
                .bind(i64::from(last_uid))
                .fetch_one(p)
                .await?
        });
        // Rows up to last_uid are exactly the view's messages that still
        // exist: later arrivals get higher UIDs.
        if usize::try_from(present).ok() != Some(view_len) {
            return Ok((self.messages(mailbox_id, 0).await?, true));
        }
        let since = i64::try_from(modseq).map_err(|_| StoreError::Corrupt("modseq"))?;
        let rows: Vec<MetaRow> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, uid, flags, size, internal_date_unix_ms, modseq FROM messages \
                 WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
            )
            .bind(mailbox_id)
            .bind(since)
            .fetch_all(p)
            .await?
        });
        Ok((rows.into_iter().map(meta).collect::<Result<_, _>>()?, false))
    }

    /// UIDs (ascending) expunged from a mailbox with a mod-sequence above
    /// `modseq` (RFC 7162 §3.2.5 / §3.2.6), or `None` when some expunges
    /// after `modseq` may have been forgotten (it is below the mailbox's
    /// `expunged_floor`, see migration `0005`): then the caller reports
    /// every UID the client may know that is gone instead.
    pub async fn vanished_since(
        &self,
        mailbox_id: i64,
        modseq: u64,
    ) -> Result<Option<Vec<u32>>, StoreError> {
        let since = i64::try_from(modseq).unwrap_or(i64::MAX);
        // Rows first, then the floor: a compaction in between raises the
        // floor read afterwards, so nothing forgotten goes unnoticed.
        let (uids, floor): (Vec<i64>, Option<i64>) = with_pool!(self, p => {
            let uids = sqlx::query_scalar(
                "SELECT uid FROM expunged WHERE mailbox_id = $1 AND modseq > $2 ORDER BY uid",
            )
            .bind(mailbox_id)
            .bind(since)
            .fetch_all(p)
            .await?;
            let floor = sqlx::query_scalar("SELECT expunged_floor FROM mailboxes WHERE id = $1")
                .bind(mailbox_id)
                .fetch_optional(p)
                .await?;
            (uids, floor)
        });
        if floor.is_none_or(|f| since < f) {
            return Ok(None);
        }
        uids.into_iter()
            .map(|u| to_u32(u, "uid"))
            .collect::<Result<_, _>>()
            .map(Some)
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

    /// Full messages (prefix + body) by row id, loaded in batches; ids
    /// that are gone (expunged) are missing from the map.
    pub async fn contents(&self, ids: &[i64]) -> Result<HashMap<i64, Vec<u8>>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(IN_CHUNK) {
            let (list, slots) = in_list(1, chunk.len());
            let sql = format!(
                "SELECT m.id, m.prefix, b.data FROM messages m JOIN bodies b ON b.hash = m.body_hash \
                 WHERE m.id IN {list}"
            );
            let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = with_pool!(self, p => {
                bind_ids!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), chunk, slots).fetch_all(p).await?
            });
            for (id, mut prefix, body) in rows {
                // Most messages (APPENDed ones) have no prefix: no copy then.
                let whole = if prefix.is_empty() {
                    body
                } else {
                    prefix.extend_from_slice(&body);
                    prefix
                };
                out.insert(id, whole);
            }
        }
        Ok(out)
    }

    /// The stored [`Summary`] of messages by row id, in batches, with the
    /// `parts` asked for (only those columns are read). Rows stored before
    /// migration 0003 have none yet: theirs is computed from the message
    /// now and written back, so each is parsed once. Ids that are gone are
    /// missing from the map.
    pub async fn summaries(
        &self,
        ids: &[i64],
        parts: Parts,
    ) -> Result<HashMap<i64, Summary>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        let col = |on: bool, name: &str| {
            if on {
                name.to_string()
            } else {
                "CAST(NULL AS BYTEA)".to_string()
            }
        };
        let columns = [
            col(parts.header, "header"),
            col(parts.envelope, "envelope"),
            col(parts.structure, "body_structure"),
            col(parts.structure, "body_basic"),
        ]
        .join(", ");
        for chunk in ids.chunks(IN_CHUNK) {
            let (list, slots) = in_list(1, chunk.len());
            let sql = format!("SELECT id, {columns} FROM messages WHERE id IN {list}");
            let rows: Vec<SummaryRow> = with_pool!(self, p => {
                bind_ids!(sqlx::query_as(sqlx::AssertSqlSafe(sql)), chunk, slots).fetch_all(p).await?
            });
            for row in rows {
                match summary_row(row, parts) {
                    (id, Some(s)) => {
                        out.insert(id, s);
                    }
                    (id, None) => missing.push(id),
                }
            }
        }
        if !missing.is_empty() {
            out.extend(self.fill_summaries(&missing).await?);
        }
        Ok(out)
    }

    /// Compute and store the summaries of rows that have none (lazy
    /// backfill of rows older than migration 0003).
    async fn fill_summaries(&self, ids: &[i64]) -> Result<HashMap<i64, Summary>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(64) {
            let contents = self.contents(chunk).await?;
            let computed: Vec<(i64, Summary)> = contents
                .iter()
                .map(|(id, c)| (*id, tern_mailproto::mime::summarize(c)))
                .collect();
            write_tx!(self, tx => {
                for (id, s) in &computed {
                    // Content never changes, so a concurrent fill writes the same.
                    sqlx::query(
                        "UPDATE messages SET header = $1, envelope = $2, body_structure = $3, body_basic = $4 \
                         WHERE id = $5",
                    )
                    .bind(&s.header)
                    .bind(s.envelope.as_bytes())
                    .bind(s.body_structure.as_bytes())
                    .bind(s.body_basic.as_bytes())
                    .bind(*id)
                    .execute(&mut *tx)
                    .await?;
                }
            });
            out.extend(computed);
        }
        Ok(out)
    }

    /// Call `f(id, header block)` for every message of a mailbox, streaming
    /// (SEARCH by header). Rows without a stored header get theirs filled.
    pub async fn for_each_header(
        &self,
        mailbox_id: i64,
        mut f: impl FnMut(i64, &[u8]),
    ) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        with_pool!(self, p => {
            let mut rows = sqlx::query("SELECT id, header FROM messages WHERE mailbox_id = $1")
                .bind(mailbox_id)
                .fetch(p);
            while let Some(row) = rows.try_next().await? {
                let id: i64 = row.try_get(0)?;
                match row.try_get::<Option<&[u8]>, _>(1)? {
                    Some(h) => f(id, h),
                    None => missing.push(id),
                }
            }
        });
        if !missing.is_empty() {
            for (id, s) in self.fill_summaries(&missing).await? {
                f(id, &s.header);
            }
        }
        Ok(())
    }

    /// Call `f(id, whole message)` for every message of a mailbox, streaming
    /// one row at a time (SEARCH BODY / TEXT): the body is borrowed from the
    /// row, and copied only to put a delivery prefix in front of it.
    pub async fn for_each_content(
        &self,
        mailbox_id: i64,
        mut f: impl FnMut(i64, &[u8]),
    ) -> Result<(), StoreError> {
        let mut buf = Vec::new();
        with_pool!(self, p => {
            let mut rows = sqlx::query(
                "SELECT m.id, m.prefix, b.data FROM messages m JOIN bodies b ON b.hash = m.body_hash \
                 WHERE m.mailbox_id = $1",
            )
            .bind(mailbox_id)
            .fetch(p);
            while let Some(row) = rows.try_next().await? {
                let id: i64 = row.try_get(0)?;
                let prefix: &[u8] = row.try_get(1)?;
                let body: &[u8] = row.try_get(2)?;
                if prefix.is_empty() {
                    f(id, body);
                } else {
                    buf.clear();
                    buf.extend_from_slice(prefix);
                    buf.extend_from_slice(body);
                    f(id, &buf);
                }
            }
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
            // Expunged UIDs per mailbox.
            let mut gone: Vec<(i64, Vec<i64>)> = Vec::new();
            for id in ids {
                let h: Option<(String, i64, i64)> = sqlx::query_as(
                    "DELETE FROM messages WHERE id = $1 AND account_id = $2 RETURNING body_hash, mailbox_id, uid",
                )
                .bind(*id)
                .bind(account_id)
                .fetch_optional(&mut *tx)
                .await?;
                if let Some((h, mb, uid)) = h {
                    hashes.push(h);
                    match gone.iter_mut().find(|(m, _)| *m == mb) {
                        Some((_, uids)) => uids.push(uid),
                        None => gone.push((mb, vec![uid])),
                    }
                }
            }
            // RFC 7162 §3.2: the expunge gets a mod-sequence of its own,
            // associated with the expunged UIDs.
            for (mb, uids) in gone {
                let modseq: i64 = sqlx::query_scalar(
                    "UPDATE mailboxes SET highest_modseq = highest_modseq + 1 WHERE id = $1 RETURNING highest_modseq",
                )
                .bind(mb)
                .fetch_one(&mut *tx)
                .await?;
                for uid in uids {
                    sqlx::query(
                        "INSERT INTO expunged (mailbox_id, uid, modseq) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    )
                    .bind(mb)
                    .bind(uid)
                    .bind(modseq)
                    .execute(&mut *tx)
                    .await?;
                }
                compact_expunged!(tx, mb);
            }
            hashes.sort();
            hashes.dedup();
            hashes
        });
        self.changed(account_id);
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

    const ALL_PARTS: Parts = Parts {
        header: true,
        envelope: true,
        structure: true,
    };

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
            .store_flags(a.id, inbox.id, &[(msgs[0].id, vec!["\\Seen".to_string()])])
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

    /// Account `a@example.com` with `n` messages (`Subject: m<i>`,
    /// `body <i>`) appended to INBOX; its INBOX as it is then, and them.
    async fn account_with_messages(
        store: &Store,
        n: usize,
    ) -> (Account, Mailbox, Vec<MessageMeta>) {
        assert!(store.create_account("a@example.com", "h").await.unwrap());
        let (a, _) = store.account("a@example.com").await.unwrap().unwrap();
        for i in 0..n {
            let body = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
            store
                .append(a.id, INBOX, &[], 1, body.as_bytes())
                .await
                .unwrap();
        }
        let inbox = store.inbox(a.id).await.unwrap();
        let msgs = store.messages(inbox.id, 0).await.unwrap();
        (a, inbox, msgs)
    }

    #[tokio::test]
    async fn expunges_get_mod_sequences_and_old_ones_are_compacted() {
        let (_dir, store) = sqlite().await;
        let (a, inbox, msgs) = account_with_messages(&store, 6).await;
        assert_eq!(
            store.vanished_since(inbox.id, 1).await.unwrap(),
            Some(vec![])
        );
        // One expunge of two: one new mod-sequence for both.
        store
            .expunge(a.id, &[msgs[1].id, msgs[2].id])
            .await
            .unwrap();
        let after = store.inbox(a.id).await.unwrap().highest_modseq;
        assert_eq!(after, inbox.highest_modseq + 1);
        let since = inbox.highest_modseq;
        assert_eq!(
            store.vanished_since(inbox.id, since).await.unwrap(),
            Some(vec![2, 3])
        );
        assert_eq!(
            store.vanished_since(inbox.id, after).await.unwrap(),
            Some(vec![])
        );
        // Two more expunges: 4 rows > EXPUNGED_KEPT (3), so the oldest
        // mod-sequence (UIDs 2 and 3) is forgotten and the floor rises.
        store.expunge(a.id, &[msgs[3].id]).await.unwrap();
        store.expunge(a.id, &[msgs[4].id]).await.unwrap();
        assert_eq!(store.vanished_since(inbox.id, since).await.unwrap(), None);
        assert_eq!(
            store.vanished_since(inbox.id, after).await.unwrap(),
            Some(vec![4, 5])
        );
        // RENAME INBOX expunges what it moves from INBOX.
        let top = store.inbox(a.id).await.unwrap().highest_modseq;
        assert_eq!(
            store.rename_mailbox(a.id, INBOX, "Old").await.unwrap(),
            MailboxOp::Done
        );
        assert_eq!(
            store.vanished_since(inbox.id, top).await.unwrap(),
            Some(vec![1, 6])
        );
        // DELETE drops a mailbox's rows.
        let old = store.mailbox(a.id, "Old").await.unwrap().unwrap();
        let moved = store.messages(old.id, 0).await.unwrap();
        store.expunge(a.id, &[moved[0].id]).await.unwrap();
        assert_eq!(
            store.vanished_since(old.id, 1).await.unwrap(),
            Some(vec![1])
        );
        assert_eq!(
            store.delete_mailbox(a.id, "Old").await.unwrap(),
            MailboxOp::Done
        );
        assert_eq!(store.vanished_since(old.id, 1).await.unwrap(), None);
    }

    #[tokio::test]
    async fn batched_flags_contents_and_summaries_over_many_rows() {
        let (_dir, store) = sqlite().await;
        // More than one IN-list chunk.
        let n = IN_CHUNK + 88;
        let (a, inbox, msgs) = account_with_messages(&store, n).await;
        assert_eq!(msgs.len(), n);
        let changes: Vec<(i64, Vec<String>)> = msgs
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let f = if i % 3 == 0 { "\\Seen" } else { "\\Flagged" };
                (m.id, vec![f.to_string()])
            })
            .collect();
        let before = inbox.highest_modseq;
        let modseq = store.store_flags(a.id, inbox.id, &changes).await.unwrap();
        assert_eq!(modseq, before + 1, "one mod-sequence for the whole STORE");
        for (i, m) in store
            .messages(inbox.id, 0)
            .await
            .unwrap()
            .iter()
            .enumerate()
        {
            assert_eq!(m.flags, changes[i].1, "message {i}");
            assert_eq!(m.modseq, modseq);
        }
        let ids: Vec<i64> = msgs.iter().map(|m| m.id).collect();
        let contents = store.contents(&ids).await.unwrap();
        let summaries = store.summaries(&ids, ALL_PARTS).await.unwrap();
        assert_eq!((contents.len(), summaries.len()), (n, n));
        for (i, m) in msgs.iter().enumerate() {
            let want = format!("Subject: m{i}\r\n\r\nbody {i}\r\n");
            assert_eq!(contents[&m.id], want.as_bytes());
            assert_eq!(
                summaries[&m.id],
                tern_mailproto::mime::summarize(want.as_bytes())
            );
        }
        // Gone ids are simply missing.
        assert!(store.summaries(&[-1], ALL_PARTS).await.unwrap().is_empty());
        assert!(store.contents(&[-1]).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn rows_without_summaries_are_filled_on_first_access() {
        let (_dir, store) = sqlite().await;
        store.create_account("a@example.com", "h").await.unwrap();
        let (a, _) = store.account("a@example.com").await.unwrap().unwrap();
        let body = b"From: Bob <bob@x.test>\r\nSubject: old\r\n\r\nold body\r\n";
        store
            .deliver(a.id, "m1", b"Delivered-To: a@example.com\r\n", body, 5)
            .await
            .unwrap();
        let inbox = store.inbox(a.id).await.unwrap();
        let id = store.messages(inbox.id, 0).await.unwrap()[0].id;
        let want = tern_mailproto::mime::summarize(&store.content(id).await.unwrap().unwrap());
        assert!(want.envelope.contains("\"old\""), "{}", want.envelope);
        assert_eq!(store.summaries(&[id], ALL_PARTS).await.unwrap()[&id], want);
        // Only the parts asked for are read.
        let envelope_only = Parts {
            envelope: true,
            ..Parts::default()
        };
        let got = &store.summaries(&[id], envelope_only).await.unwrap()[&id];
        assert_eq!(got.envelope, want.envelope);
        assert!(got.header.is_empty() && got.body_structure.is_empty());
        // As a row stored before migration 0003 looks.
        let null = "UPDATE messages SET header = NULL, envelope = NULL, body_structure = NULL, body_basic = NULL";
        with_pool!(store, p => sqlx::query(null).execute(p).await.unwrap().rows_affected());
        let mut headers = Vec::new();
        store
            .for_each_header(inbox.id, |i, h| headers.push((i, h.to_vec())))
            .await
            .unwrap();
        assert_eq!(headers, vec![(id, want.header.clone())]);
        with_pool!(store, p => sqlx::query(null).execute(p).await.unwrap().rows_affected());
        assert_eq!(store.summaries(&[id], ALL_PARTS).await.unwrap()[&id], want);
        let nulls: i64 = with_pool!(store, p => sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE envelope IS NULL").fetch_one(p).await.unwrap());
        assert_eq!(nulls, 0, "filled in the database too");
        let mut whole = Vec::new();
        store
            .for_each_content(inbox.id, |_, c| whole = c.to_vec())
            .await
            .unwrap();
        assert_eq!(whole, store.content(id).await.unwrap().unwrap());
    }

    #[test]
    fn sha256_is_hex() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

// Aliases and catch-alls live in their own file (store/aliases.rs).
mod aliases;
pub use aliases::AliasAdded;
