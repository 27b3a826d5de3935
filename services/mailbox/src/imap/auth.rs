//! LOGIN and AUTHENTICATE (RFC 9051 §6.2; SASL PLAIN, RFC 4616).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Session<'_> {
    pub(super) async fn login(
        &mut self,
        tag: &str,
        user: &str,
        password: &str,
        io: &mut Conn,
    ) -> io::Result<()> {
        if !self.login_ok() {
            let text =
                "[PRIVACYREQUIRED] plaintext authentication is disabled; use STARTTLS or IMAPS";
            return io.write_all(&imap::tagged(tag, Status::No, text)).await;
        }
        let reply = self.authenticate(user, password, "LOGIN").await;
        io.write_all(&imap::tagged(tag, reply.0, &reply.1)).await
    }

    /// Check credentials; on success the session is authenticated.
    pub(super) async fn authenticate(
        &mut self,
        user: &str,
        password: &str,
        how: &str,
    ) -> (Status, String) {
        let ctx = self.ctx;
        let result =
            accounts::login(&ctx.store, &ctx.throttle, user, password, Some(self.peer)).await;
        accounts::count_login("imap", &result);
        if matches!(
            result,
            Ok(accounts::Login::Failed | accounts::Login::Throttled)
        ) {
            // Slows guessing down within one connection; the throttle
            // bounds it across connections.
            tokio::time::sleep(ctx.throttle.delay()).await;
        }
        match result {
            Ok(accounts::Login::Ok(account)) => {
                tracing::info!(account = %account.address, "IMAP {how}");
                self.account = Some(account);
                self.state = State::Authenticated;
                self.changes = Some(self.ctx.hub.subscribe());
                let caps = imap::capabilities(true, false, true);
                (Status::Ok, format!("[CAPABILITY {caps}] {how} completed"))
            }
            Ok(accounts::Login::Failed) => {
                tracing::info!("IMAP {how} failed");
                (
                    Status::No,
                    "[AUTHENTICATIONFAILED] invalid credentials".into(),
                )
            }
            Ok(accounts::Login::Throttled) => {
                tracing::info!(user, "IMAP {how} refused: too many failed logins");
                // RFC 5530 §3: UNAVAILABLE is a temporary failure, so
                // clients retry later instead of asking for a new password.
                (
                    Status::No,
                    "[UNAVAILABLE] too many failed logins, try again later".into(),
                )
            }
            Err(e) => {
                tracing::warn!(error = %e, "IMAP {how}: storage error");
                (Status::No, UNAVAILABLE.into())
            }
        }
    }

    /// The SASL PLAIN response (RFC 4616): `authzid NUL authcid NUL passwd`.
    pub(super) async fn sasl_response(
        &mut self,
        tag: &str,
        line: &[u8],
        io: &mut Conn,
    ) -> io::Result<()> {
        let line = trim_crlf(line);
        if line == b"*" {
            return io
                .write_all(&imap::tagged(tag, Status::Bad, "authentication cancelled"))
                .await;
        }
        let decoded = if line == b"=" {
            Some(Vec::new())
        } else {
            tern_mailproto::base64_decode(line)
        };
        let parts: Option<Vec<String>> = decoded.and_then(|d| {
            let p: Vec<&[u8]> = d.split(|&b| b == 0).collect();
            (p.len() == 3)
                .then(|| {
                    p.iter()
                        .map(|x| String::from_utf8(x.to_vec()).ok())
                        .collect::<Option<Vec<_>>>()
                })
                .flatten()
        });
        let Some(parts) = parts else {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::Bad,
                    "malformed SASL PLAIN response",
                ))
                .await;
        };
        let (authz, user, pass) = (&parts[0], &parts[1], &parts[2]);
        if !authz.is_empty() && !authz.eq_ignore_ascii_case(user) {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::No,
                    "[AUTHORIZATIONFAILED] cannot act as another user",
                ))
                .await;
        }
        let (st, text) = self.authenticate(user, pass, "AUTHENTICATE").await;
        io.write_all(&imap::tagged(tag, st, &text)).await
    }
}
