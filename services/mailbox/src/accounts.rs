//! Accounts: address rules, Argon2id password hashing, authentication
//! shared by IMAP/POP3/gRPC, and the `tern.v1.Accounts` gRPC service.

use std::sync::{Arc, OnceLock};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use tern_proto::accounts_server::Accounts;
use tern_proto::{
    AddUserRequest, AddUserResponse, AuthenticateRequest, AuthenticateResponse,
    CheckRecipientRequest, CheckRecipientResponse, DeleteUserRequest, DeleteUserResponse,
    ListUsersRequest, ListUsersResponse, SetPasswordRequest, SetPasswordResponse,
};
use tern_runtime::config::Domain;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::store::{Account, Store, StoreError};

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

/// Hash a password with Argon2id (default parameters, random salt) into a
/// PHC string. Runs on the blocking pool: hashing is deliberately slow.
pub async fn hash_password(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| Status::internal(format!("hash password: {e}")))
    })
    .await
    .map_err(|e| Status::internal(format!("hash password: {e}")))?
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), hash)
        .is_ok()
}

/// A hash nobody's password matches, verified for unknown users so that
/// "no such user" takes as long as "wrong password".
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"tern-dummy-password-for-timing")
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
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
    let password = password.to_string();
    let verified = tokio::task::spawn_blocking(move || match found {
        Some((account, hash)) => verify_blocking(&password, &hash).then_some(account),
        None => {
            let _ = verify_blocking(&password, dummy_hash());
            None
        }
    })
    .await
    .unwrap_or(None);
    Ok(verified)
}

/// The gRPC Accounts service.
pub struct AccountsService {
    store: Arc<Store>,
    local_domains: Vec<Domain>,
    default_quota: u64,
}

impl AccountsService {
    /// Serve accounts from `store`; new accounts must be in `local_domains`
    /// and get `default_quota` octets (0: unlimited).
    pub fn new(store: Arc<Store>, local_domains: Vec<Domain>, default_quota: u64) -> Self {
        AccountsService {
            store,
            local_domains,
            default_quota,
        }
    }

    fn address(&self, raw: &str) -> Result<String, Status> {
        normalize_address(raw)
            .ok_or_else(|| Status::invalid_argument(format!("invalid address {raw:?}")))
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
                Some(a) => self.store.account(&a).await.map_err(internal)?.is_some(),
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
            let account = authenticate(&self.store, &r.username, &r.password)
                .await
                .map_err(internal)?;
            Ok(Response::new(match account {
                Some(a) => AuthenticateResponse {
                    ok: true,
                    address: a.address,
                },
                None => AuthenticateResponse {
                    ok: false,
                    address: String::new(),
                },
            }))
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
            let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
            if !self.local_domains.iter().any(|d| d.0 == domain) {
                return Err(Status::failed_precondition(format!(
                    "domain {domain} is not a local domain (TERN_LOCAL_DOMAINS)"
                )));
            }
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

    #[test]
    fn password_hashes_are_argon2id() {
        let hash = Argon2::default()
            .hash_password(b"pw")
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_blocking("pw", &hash));
        assert!(!verify_blocking("wrong", &hash));
        assert!(!verify_blocking("pw", "not a hash"));
    }
}
