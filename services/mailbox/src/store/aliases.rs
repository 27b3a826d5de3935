//! Aliases and per-domain catch-alls (migration `0004_aliases.sql`), and
//! recipient resolution: account, then alias, then the same without the
//! address extension (`user+tag@` → `user@`), then the domain's catch-all.

use super::{Account, Pool, Store, StoreError};

/// The result of [`Store::add_alias`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasAdded {
    /// The alias now delivers to the target.
    Added,
    /// The alias exists already (with any target).
    Exists,
    /// The alias address is an account's address.
    IsAccount,
    /// The target account does not exist.
    NoSuchAccount,
}

/// The catch-all key of an address's domain: `@domain`.
fn catch_all_of(address: &str) -> Option<&str> {
    address.rfind('@').map(|i| &address[i..])
}

/// `address` without its extension: `user+tag@example.com` →
/// `user@example.com` when `delimiters` holds `+`. The first of the
/// `delimiters` characters in the local part starts the extension (as
/// Postfix's `recipient_delimiter`). `None` without one, or when it would
/// leave the local part empty (`+tag@example.com`).
pub fn strip_extension(address: &str, delimiters: &str) -> Option<String> {
    let (local, domain) = address.rsplit_once('@')?;
    let cut = local.find(|c| delimiters.contains(c))?;
    (cut > 0).then(|| format!("{}@{domain}", &local[..cut]))
}

impl Store {
    /// The account mail for `address` (normalized) goes to: the account
    /// with that address, else the alias's target, else the account or
    /// alias of the address without its extension ([`strip_extension`]),
    /// else the target of the domain's catch-all (the order of Postfix's
    /// virtual lookups). One query, so they cannot disagree.
    pub async fn resolve_recipient(
        &self,
        address: &str,
        delimiters: &str,
    ) -> Result<Option<Account>, StoreError> {
        let catch_all = catch_all_of(address).unwrap_or(address);
        let base = strip_extension(address, delimiters);
        let base = base.as_deref().unwrap_or(address);
        let row: Option<(i64, String, i64)> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT id, address, CAST(0 AS BIGINT) AS prio FROM accounts WHERE address = $1 \
                 UNION ALL \
                 SELECT a.id, a.address, CAST(1 AS BIGINT) AS prio FROM aliases l JOIN accounts a ON a.id = l.account_id \
                 WHERE l.address = $1 \
                 UNION ALL \
                 SELECT id, address, CAST(2 AS BIGINT) AS prio FROM accounts WHERE address = $2 \
                 UNION ALL \
                 SELECT a.id, a.address, CAST(3 AS BIGINT) AS prio FROM aliases l JOIN accounts a ON a.id = l.account_id \
                 WHERE l.address = $2 \
                 UNION ALL \
                 SELECT a.id, a.address, CAST(4 AS BIGINT) AS prio FROM aliases l JOIN accounts a ON a.id = l.account_id \
                 WHERE l.address = $3 \
                 ORDER BY prio LIMIT 1",
            )
            .bind(address)
            .bind(base)
            .bind(catch_all)
            .fetch_optional(p)
            .await?
        });
        Ok(row.map(|(id, address, _)| Account { id, address }))
    }

    /// Make `alias` (normalized; `@domain` for a catch-all) deliver to the
    /// account `target`.
    pub async fn add_alias(&self, alias: &str, target: &str) -> Result<AliasAdded, StoreError> {
        let now = tern_runtime::now_unix_ms();
        let added = write_tx!(self, tx => {
            let is_account: Option<i64> = sqlx::query_scalar("SELECT id FROM accounts WHERE address = $1")
                .bind(alias)
                .fetch_optional(&mut *tx)
                .await?;
            let target_id: Option<i64> = sqlx::query_scalar("SELECT id FROM accounts WHERE address = $1")
                .bind(target)
                .fetch_optional(&mut *tx)
                .await?;
            match (is_account, target_id) {
                (Some(_), _) => AliasAdded::IsAccount,
                (None, None) => AliasAdded::NoSuchAccount,
                (None, Some(id)) => {
                    let r = sqlx::query(
                        "INSERT INTO aliases (address, account_id, created_at_unix_ms) VALUES ($1, $2, $3) \
                         ON CONFLICT (address) DO NOTHING",
                    )
                    .bind(alias)
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    if r.rows_affected() == 1 { AliasAdded::Added } else { AliasAdded::Exists }
                }
            }
        });
        Ok(added)
    }

    /// Remove an alias or catch-all. False if there was none.
    pub async fn delete_alias(&self, alias: &str) -> Result<bool, StoreError> {
        let n = with_pool!(self, p => {
            sqlx::query("DELETE FROM aliases WHERE address = $1")
                .bind(alias)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    /// `(alias, target account address)` pairs sorted by alias; only those
    /// of `target` when given.
    pub async fn list_aliases(
        &self,
        target: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let rows: Vec<(String, String)> = with_pool!(self, p => {
            sqlx::query_as(
                "SELECT l.address, a.address FROM aliases l JOIN accounts a ON a.id = l.account_id \
                 WHERE $1 = '' OR a.address = $1 ORDER BY l.address",
            )
            .bind(target.unwrap_or(""))
            .fetch_all(p)
            .await?
        });
        Ok(rows)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn aliases_and_catch_all_resolve_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/m.db", dir.path().display()))
            .await
            .unwrap();
        store.create_account("a@example.com", "h").await.unwrap();
        store.create_account("b@example.com", "h").await.unwrap();
        let who = |s: Option<Account>| s.map(|a| a.address);
        assert_eq!(
            store.resolve_recipient("x@example.com", "+").await.unwrap(),
            None
        );
        assert_eq!(
            store
                .add_alias("x@example.com", "a@example.com")
                .await
                .unwrap(),
            AliasAdded::Added
        );
        assert_eq!(
            store
                .add_alias("x@example.com", "b@example.com")
                .await
                .unwrap(),
            AliasAdded::Exists
        );
        assert_eq!(
            store
                .add_alias("b@example.com", "a@example.com")
                .await
                .unwrap(),
            AliasAdded::IsAccount
        );
        assert_eq!(
            store
                .add_alias("y@example.com", "nobody@example.com")
                .await
                .unwrap(),
            AliasAdded::NoSuchAccount
        );
        assert_eq!(
            store
                .add_alias("@example.com", "b@example.com")
                .await
                .unwrap(),
            AliasAdded::Added
        );
        let r = |a: &'static str| {
            let store = &store;
            async move { who(store.resolve_recipient(a, "+-").await.unwrap()) }
        };
        assert_eq!(r("a@example.com").await.as_deref(), Some("a@example.com"));
        assert_eq!(r("x@example.com").await.as_deref(), Some("a@example.com"));
        assert_eq!(
            r("anything@example.com").await.as_deref(),
            Some("b@example.com")
        );
        assert_eq!(r("anything@example.org").await, None);
        // Extensions: the full address first, then the address without
        // its extension (account or alias), then the catch-all.
        assert_eq!(
            r("a+news@example.com").await.as_deref(),
            Some("a@example.com")
        );
        assert_eq!(
            r("x-list+y@example.com").await.as_deref(),
            Some("a@example.com")
        );
        assert_eq!(r("+a@example.com").await.as_deref(), Some("b@example.com"));
        assert_eq!(
            r("nobody+a@example.com").await.as_deref(),
            Some("b@example.com")
        );
        store
            .add_alias("a+vip@example.com", "b@example.com")
            .await
            .unwrap();
        assert_eq!(
            r("a+vip@example.com").await.as_deref(),
            Some("b@example.com")
        );
        assert_eq!(
            store.list_aliases(None).await.unwrap(),
            vec![
                ("@example.com".to_string(), "b@example.com".to_string()),
                ("a+vip@example.com".to_string(), "b@example.com".to_string()),
                ("x@example.com".to_string(), "a@example.com".to_string()),
            ]
        );
        assert_eq!(
            store
                .list_aliases(Some("a@example.com"))
                .await
                .unwrap()
                .len(),
            1
        );
        // Deleting an account deletes its aliases.
        assert!(store.delete_account("b@example.com").await.unwrap());
        assert_eq!(r("anything@example.com").await, None);
        assert_eq!(store.list_aliases(None).await.unwrap().len(), 1);
        assert_eq!(
            r("a+vip@example.com").await.as_deref(),
            Some("a@example.com")
        );
        assert!(store.delete_alias("x@example.com").await.unwrap());
        assert!(!store.delete_alias("x@example.com").await.unwrap());
        assert_eq!(r("x@example.com").await, None);
    }

    #[test]
    fn extensions_are_cut_at_the_first_delimiter() {
        let cut = |a, d| strip_extension(a, d);
        assert_eq!(cut("a+b@x.test", "+").as_deref(), Some("a@x.test"));
        assert_eq!(cut("a+b+c@x.test", "+").as_deref(), Some("a@x.test"));
        assert_eq!(cut("a-b+c@x.test", "+-").as_deref(), Some("a@x.test"));
        assert_eq!(cut("a-b@x.test", "+"), None);
        assert_eq!(cut("+b@x.test", "+"), None);
        assert_eq!(cut("a+b@x.test", ""), None);
        assert_eq!(cut("no-at-sign", "+"), None);
    }
}
