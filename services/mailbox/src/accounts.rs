//! Accounts: address rules, Argon2id password hashing, authentication
//! shared by IMAP/POP3/gRPC, and the `tern.v1.Accounts` gRPC service.

use std::net::IpAddr;
use std::sync::Arc;

use tern_proto::accounts_server::Accounts;
use tern_proto::{
    AddAliasRequest, AddAliasResponse, AddUserRequest, AddUserResponse, Alias, AuthenticateRequest,
    AuthenticateResponse, CheckRecipientRequest, CheckRecipientResponse, DeleteAliasRequest,
    DeleteAliasResponse, DeleteUserRequest, DeleteUserResponse, ListAliasesRequest,
    ListAliasesResponse, ListUsersRequest, ListUsersResponse, QuotaRequest, QuotaResponse,
    SetPasswordRequest, SetPasswordResponse,
};
use tern_runtime::config::Domain;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::password;
use crate::store::{Account, AliasAdded, Store, StoreError};
use crate::throttle::LoginThrottle;

/// Longest password accepted (Argon2 handles more; this bounds the work).
const MAX_PASSWORD: usize = 1024;

/// Canonical form of an address: trimmed, lower-cased, `local@domain`.
/// `None` when it is not a plausible mailbox address.
pub fn normalize_address(address: &str) -> Option<String> {
    let a = address
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_lowercase();
    let (local, domain) = a.rsplit_once('@')?;
    let domain = domain.trim_end_matches('.');
    let ok = !local.is_empty()
        && local.len() <= 64
        && !domain.is_empty()
        && domain.len() <= 253
        && a.len() <= 254
        && !a
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || matches!(c, '<' | '>' | ',' | ';'))
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'));
    ok.then(|| format!("{local}@{domain}"))
}

/// Canonical form of an alias: an address as [`normalize_address`], or
/// `@domain` (the domain's catch-all).
pub fn normalize_alias(alias: &str) -> Option<String> {
    let a = alias.trim();
    match a.strip_prefix('@') {
        Some(domain) if domain.contains('@') => None,
        Some(domain) => {
            let full = normalize_address(&format!("catch-all@{domain}"))?;
            full.rsplit_once('@').map(|(_, d)| format!("@{d}"))
        }
        None => normalize_address(a),
    }
}

/// Hash a password for storage, as a gRPC status on failure.
async fn hash_password(password: String) -> Result<String, Status> {
    password::hash(password)
        .await
        .map_err(|e| Status::internal(format!("hash password: {e}")))
}

/// Check a user name (the account address) and password. `Ok(None)` for
/// unknown users and wrong passwords alike.
pub async fn authenticate(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<Option<Account>, StoreError> {
    let found = match normalize_address(username) {
        Some(a) if password.len() <= MAX_PASSWORD => store.account(&a).await?,
        _ => None,
    };
    let (account, hash) = found.unzip();
    let verified = password::verify(password.to_string(), hash).await;
    Ok(account.filter(|_| verified))
}

/// The outcome of a login attempt.
#[derive(Debug)]
pub enum Login {
    /// The credentials are good.
    Ok(Account),
    /// Unknown user or wrong password.
    Failed,
    /// Too many recent failures for this account or client address: refused
    /// without checking the password.
    Throttled,
}

/// A login as `username` from `client`: refused unchecked while throttled,
/// else [`authenticate`], with the outcome counted by `throttle`.
pub async fn login(
    store: &Store,
    throttle: &LoginThrottle,
    username: &str,
    password: &str,
    client: Option<IpAddr>,
) -> Result<Login, StoreError> {
    let check = throttle.check(username, client).await;
    if check.locked {
        return Ok(Login::Throttled);
    }
    Ok(match authenticate(store, username, password).await? {
        Some(account) => {
            throttle.succeeded(username, &check).await;
            Login::Ok(account)
        }
        None => {
            throttle.failed(username, client).await;
            Login::Failed
        }
    })
}

/// Count a login by protocol (`imap`, `pop3`, `grpc`) and result.
pub fn count_login(protocol: &'static str, result: &Result<Login, StoreError>) {
    let label = match result {
        Ok(Login::Ok(_)) => "ok",
        Ok(Login::Failed) => "failed",
        Ok(Login::Throttled) => "throttled",
        Err(_) => "error",
    };
    metrics::counter!("tern_mailbox_logins_total", "protocol" => protocol, "result" => label)
        .increment(1);
}

/// The gRPC Accounts service.
pub struct AccountsService {
    store: Arc<Store>,
    local_domains: Vec<Domain>,
    default_quota: u64,
    throttle: Arc<LoginThrottle>,
    recipient_delimiter: String,
}

impl AccountsService {
    /// Serve accounts from `store`; new accounts must be in `local_domains`
    /// and get `default_quota` octets (0: unlimited). Authenticate counts
    /// failures in `throttle`, shared with IMAP and POP3. CheckRecipient
    /// strips extensions that start with a `recipient_delimiter` character.
    pub fn new(
        store: Arc<Store>,
        local_domains: Vec<Domain>,
        default_quota: u64,
        throttle: Arc<LoginThrottle>,
        recipient_delimiter: String,
    ) -> Self {
        AccountsService {
            store,
            local_domains,
            default_quota,
            throttle,
            recipient_delimiter,
        }
    }

    fn address(&self, raw: &str) -> Result<String, Status> {
        normalize_address(raw)
            .ok_or_else(|| Status::invalid_argument(format!("invalid address {raw:?}")))
    }

    /// Refuse addresses (or `@domain`s) outside `TERN_LOCAL_DOMAINS`.
    fn require_local(&self, address: &str) -> Result<(), Status> {
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        if self.local_domains.iter().any(|d| d.0 == domain) {
            Ok(())
        } else {
            Err(Status::failed_precondition(format!(
                "domain {domain} is not a local domain (TERN_LOCAL_DOMAINS)"
            )))
        }
    }
}

fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, "accounts: storage error");
    Status::unavailable(format!("storage: {e}"))
}

fn check_password(p: &str) -> Result<(), Status> {
    if p.is_empty() {
        return Err(Status::invalid_argument("password must not be empty"));
    }
    if p.len() > MAX_PASSWORD {
        return Err(Status::invalid_argument(format!(
            "password longer than {MAX_PASSWORD} bytes"
        )));
    }
    Ok(())
}

fn span<T>(name: &'static str, req: &Request<T>) -> tracing::Span {
    let span = tracing::info_span!("mailbox.accounts", rpc = name);
    tern_runtime::telemetry::link_grpc_parent(&span, req.metadata());
    span
}

#[tonic::async_trait]
impl Accounts for AccountsService {
    async fn check_recipient(
        &self,
        req: Request<CheckRecipientRequest>,
    ) -> Result<Response<CheckRecipientResponse>, Status> {
        let span = span("CheckRecipient", &req);
        async move {
            let exists = match normalize_address(&req.get_ref().address) {
                Some(a) => self
                    .store
                    .resolve_recipient(&a, &self.recipient_delimiter)
                    .await
                    .map_err(internal)?
                    .is_some(),
                None => false,
            };
            Ok(Response::new(CheckRecipientResponse { exists }))
        }
        .instrument(span)
        .await
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let span = span("Authenticate", &req);
        async move {
            let r = req.get_ref();
            // The caller (ingress) names the client; a garbled address just
            // means no per-client throttling for this attempt.
            let client = r.client_address.parse::<IpAddr>().ok();
            let result = login(&self.store, &self.throttle, &r.username, &r.password, client).await;
            count_login("grpc", &result);
            let mut resp = AuthenticateResponse::default();
            match result.map_err(internal)? {
                Login::Ok(a) => {
                    resp.ok = true;
                    resp.address = a.address;
                }
                Login::Failed => {}
                Login::Throttled => {
                    tracing::info!(user = %r.username, client = %r.client_address, "Authenticate refused: too many failed logins");
                    resp.throttled = true;
                }
            }
            Ok(Response::new(resp))
        }
        .instrument(span)
        .await
    }

    async fn add_user(
        &self,
        req: Request<AddUserRequest>,
    ) -> Result<Response<AddUserResponse>, Status> {
        let span = span("AddUser", &req);
        async move {
            let r = req.into_inner();
            let address = self.address(&r.address)?;
            self.require_local(&address)?;
            check_password(&r.password)?;
            let hash = hash_password(r.password).await?;
            if !self
                .store
                .create_account(&address, &hash)
                .await
                .map_err(internal)?
            {
                return Err(Status::already_exists(format!("{address} already exists")));
            }
            if self.default_quota > 0 {
                self.store
                    .set_quota(&address, self.default_quota)
                    .await
                    .map_err(internal)?;
            }
            tracing::info!(%address, "account added");
            Ok(Response::new(AddUserResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn delete_user(
        &self,
        req: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        let span = span("DeleteUser", &req);
        async move {
            let address = self.address(&req.get_ref().address)?;
            if !self
                .store
                .delete_account(&address)
                .await
                .map_err(internal)?
            {
                return Err(Status::not_found(format!("{address} does not exist")));
            }
            tracing::info!(%address, "account deleted");
            Ok(Response::new(DeleteUserResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn list_users(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let span = span("ListUsers", &req);
        async move {
            let addresses = self.store.list_accounts().await.map_err(internal)?;
            Ok(Response::new(ListUsersResponse { addresses }))
        }
        .instrument(span)
        .await
    }

    async fn set_password(
        &self,
        req: Request<SetPasswordRequest>,
    ) -> Result<Response<SetPasswordResponse>, Status> {
        let span = span("SetPassword", &req);
        async move {
            let r = req.into_inner();
            let address = self.address(&r.address)?;
            check_password(&r.password)?;
            let hash = hash_password(r.password).await?;
            if !self
                .store
                .set_password_hash(&address, &hash)
                .await
                .map_err(internal)?
            {
                return Err(Status::not_found(format!("{address} does not exist")));
            }
            tracing::info!(%address, "password changed");
            Ok(Response::new(SetPasswordResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn add_alias(
        &self,
        req: Request<AddAliasRequest>,
    ) -> Result<Response<AddAliasResponse>, Status> {
        let span = span("AddAlias", &req);
        async move {
            let r = req.get_ref();
            let alias = normalize_alias(&r.alias)
                .ok_or_else(|| Status::invalid_argument(format!("invalid alias {:?}", r.alias)))?;
            self.require_local(&alias)?;
            let target = self.address(&r.target)?;
            match self
                .store
                .add_alias(&alias, &target)
                .await
                .map_err(internal)?
            {
                AliasAdded::Added => {
                    tracing::info!(%alias, %target, "alias added");
                    Ok(Response::new(AddAliasResponse {}))
                }
                AliasAdded::Exists => Err(Status::already_exists(format!(
                    "alias {alias} already exists"
                ))),
                AliasAdded::IsAccount => {
                    Err(Status::already_exists(format!("{alias} is an account")))
                }
                AliasAdded::NoSuchAccount => Err(Status::not_found(format!(
                    "account {target} does not exist"
                ))),
            }
        }
        .instrument(span)
        .await
    }

    async fn delete_alias(
        &self,
        req: Request<DeleteAliasRequest>,
    ) -> Result<Response<DeleteAliasResponse>, Status> {
        let span = span("DeleteAlias", &req);
        async move {
            let raw = &req.get_ref().alias;
            let alias = normalize_alias(raw)
                .ok_or_else(|| Status::invalid_argument(format!("invalid alias {raw:?}")))?;
            if !self.store.delete_alias(&alias).await.map_err(internal)? {
                return Err(Status::not_found(format!("alias {alias} does not exist")));
            }
            tracing::info!(%alias, "alias deleted");
            Ok(Response::new(DeleteAliasResponse {}))
        }
        .instrument(span)
        .await
    }

    async fn list_aliases(
        &self,
        req: Request<ListAliasesRequest>,
    ) -> Result<Response<ListAliasesResponse>, Status> {
        let span = span("ListAliases", &req);
        async move {
            let raw = &req.get_ref().target;
            let target = if raw.trim().is_empty() {
                None
            } else {
                Some(self.address(raw)?)
            };
            let aliases = self
                .store
                .list_aliases(target.as_deref())
                .await
                .map_err(internal)?
                .into_iter()
                .map(|(alias, target)| Alias { alias, target })
                .collect();
            Ok(Response::new(ListAliasesResponse { aliases }))
        }
        .instrument(span)
        .await
    }

    async fn quota(&self, req: Request<QuotaRequest>) -> Result<Response<QuotaResponse>, Status> {
        let span = span("Quota", &req);
        async move {
            let r = req.get_ref();
            let address = self.address(&r.address)?;
            let not_found = || Status::not_found(format!("{address} does not exist"));
            if r.set {
                if !self
                    .store
                    .set_quota(&address, r.quota_bytes)
                    .await
                    .map_err(internal)?
                {
                    return Err(not_found());
                }
                tracing::info!(%address, quota_bytes = r.quota_bytes, "quota set");
            }
            let Some((account, _)) = self.store.account(&address).await.map_err(internal)? else {
                return Err(not_found());
            };
            let (used_bytes, quota_bytes) = self.store.usage(account.id).await.map_err(internal)?;
            Ok(Response::new(QuotaResponse {
                address,
                quota_bytes,
                used_bytes,
            }))
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized() {
        assert_eq!(
            normalize_address(" Alice@Example.COM ").as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(
            normalize_address("<bob@example.com>").as_deref(),
            Some("bob@example.com")
        );
        assert_eq!(
            normalize_address("bob@example.com.").as_deref(),
            Some("bob@example.com")
        );
        assert_eq!(
            normalize_alias(" @Example.COM. ").as_deref(),
            Some("@example.com")
        );
        assert_eq!(
            normalize_alias("Sales@Example.com").as_deref(),
            Some("sales@example.com")
        );
        assert_eq!(normalize_alias("@"), None);
        assert_eq!(normalize_alias("@a@b.c"), None);
        for bad in [
            "",
            "bob",
            "@example.com",
            "bob@",
            "bo b@example.com",
            "bob@exa_mple.com",
            "a@b..c",
            "a\r\n@b.c",
        ] {
            assert_eq!(normalize_address(bad), None, "{bad:?}");
        }
    }
}
