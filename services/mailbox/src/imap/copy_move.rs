//! COPY and MOVE (RFC 9051 §6.4.7, §6.4.8; COPYUID of RFC 4315).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Session<'_> {
    pub(super) async fn copy(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        uid: bool,
        target: &str,
        remove: bool,
        io: &mut Conn,
    ) -> io::Result<()> {
        let Some(idx) = self.resolve(tag, set, uid, io).await? else {
            return Ok(());
        };
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let store = &self.ctx.store;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        if remove && sel.readonly {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::No,
                    "[READ-ONLY] mailbox is read-only",
                ))
                .await;
        }
        let ids: Vec<i64> = idx.iter().map(|&i| sel.msgs[i].id).collect();
        let src: Vec<u32> = idx.iter().map(|&i| sel.msgs[i].uid).collect();
        let name = if remove { "MOVE" } else { "COPY" };
        if ids.is_empty() {
            self.refresh(io, remove).await?;
            return io
                .write_all(&imap::tagged(tag, Status::Ok, &format!("{name} completed")))
                .await;
        }
        let (uidvalidity, uids) = match store.copy(account, &ids, target).await {
            Ok(Added::Stored { uidvalidity, uids }) => (uidvalidity, uids),
            Ok(Added::NoMailbox) => {
                return io
                    .write_all(&imap::tagged(
                        tag,
                        Status::No,
                        "[TRYCREATE] no such mailbox",
                    ))
                    .await;
            }
            Ok(Added::OverQuota) => {
                return io
                    .write_all(&imap::tagged(tag, Status::No, "[OVERQUOTA] quota exceeded"))
                    .await;
            }
            Err(e) => return io.write_all(&status_err(tag, &e, name)).await,
        };
        let code = format!(
            "COPYUID {uidvalidity} {} {}",
            compact_set(&src),
            compact_set(&uids)
        );
        if !remove {
            self.refresh(io, false).await?;
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::Ok,
                    &format!("[{code}] COPY completed"),
                ))
                .await;
        }
        // MOVE: COPYUID in an untagged OK, then the expunges (RFC 6851 §4.3).
        if let Err(e) = store.expunge(account, &ids).await {
            return io.write_all(&status_err(tag, &e, "MOVE")).await;
        }
        let mut out = imap::untagged(&format!("OK [{code}] moved"));
        let mut sorted = idx;
        sorted.sort_unstable();
        sorted.dedup();
        out.extend(remove_expunged(&mut sel.msgs, &sorted, self.qresync));
        io.write_all(&out).await?;
        self.refresh(io, true).await?;
        io.write_all(&imap::tagged(tag, Status::Ok, "MOVE completed"))
            .await
    }
}
