//! STORE (RFC 9051 §6.4.6, UNCHANGEDSINCE of RFC 7162 §3.1.3) and
//! EXPUNGE / UID EXPUNGE (RFC 9051 §6.4.3, RFC 4315).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Session<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn store(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        uid: bool,
        op: StoreOp<'_>,
        io: &mut Conn,
    ) -> io::Result<bool> {
        let StoreOp {
            mode,
            silent,
            flags,
            unchanged_since,
        } = op;
        let condstore = self.condstore;
        let Some(idx) = self.resolve(tag, set, uid, io).await? else {
            return Ok(false);
        };
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let store = &self.ctx.store;
        let rev2 = self.rev2;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(false);
        };
        let recent_above = if rev2 { u32::MAX } else { sel.recent_above };
        if sel.readonly {
            io.write_all(&imap::tagged(
                tag,
                Status::No,
                "[READ-ONLY] mailbox is read-only",
            ))
            .await?;
            return Ok(false);
        }
        let mut changes = Vec::new();
        let mut touched = Vec::new();
        let mut modified = Vec::new();
        for &i in &idx {
            let m = &sel.msgs[i];
            // RFC 7162 §3.1.3: a message changed since UNCHANGEDSINCE is
            // left alone and reported in [MODIFIED].
            if unchanged_since.is_some_and(|n| m.modseq > n) {
                modified.push(if uid {
                    m.uid
                } else {
                    u32::try_from(i + 1).unwrap_or(u32::MAX)
                });
                continue;
            }
            let mut new: Vec<String> = match mode {
                StoreMode::Replace => Vec::new(),
                _ => m.flags.clone(),
            };
            match mode {
                StoreMode::Replace | StoreMode::Add => {
                    for f in flags {
                        if !has_flag(&new, f) && new.len() < imap::MAX_FLAGS {
                            new.push(f.clone());
                        }
                    }
                }
                StoreMode::Remove => {
                    new.retain(|x| !flags.iter().any(|f| f.eq_ignore_ascii_case(x)))
                }
            }
            if new != m.flags {
                changes.push((m.id, new.clone()));
                touched.push((i, new));
            } else {
                touched.push((i, new));
            }
        }
        let mut new_modseq = None;
        if !changes.is_empty() {
            match store.store_flags(account, sel.mailbox.id, &changes).await {
                Ok(modseq) => {
                    if modseq == sel.modseq + 1 {
                        sel.modseq = modseq;
                    }
                    new_modseq = Some(modseq);
                }
                Err(e) => {
                    io.write_all(&status_err(tag, &e, "STORE")).await?;
                    return Ok(false);
                }
            }
        }
        let mut out = Vec::new();
        for (i, new) in touched {
            let changed = new != sel.msgs[i].flags;
            sel.msgs[i].flags = new;
            if changed && let Some(ms) = new_modseq {
                sel.msgs[i].modseq = ms;
            }
            if !silent {
                out.extend(view::announce(
                    &mut sel.defined,
                    sel.readonly,
                    &sel.msgs[i].flags,
                ));
                let m = &sel.msgs[i];
                let mut items = vec![flags_item(m, recent_above)];
                if uid {
                    items.insert(0, FetchItem::Uid(m.uid));
                }
                if condstore {
                    items.push(FetchItem::ModSeq(m.modseq));
                }
                out.extend(imap::fetch_response(
                    u32::try_from(i + 1).unwrap_or(u32::MAX),
                    &items,
                ));
            }
        }
        io.write_all(&out).await?;
        if !modified.is_empty() {
            self.refresh(io, false).await?;
            let text = format!(
                "[MODIFIED {}] conditional STORE failed for some messages",
                compact_set(&modified)
            );
            io.write_all(&imap::tagged(tag, Status::Ok, &text)).await?;
            return Ok(false);
        }
        Ok(true)
    }

    pub(super) async fn expunge(
        &mut self,
        tag: &str,
        uids: Option<&SequenceSet>,
        io: &mut Conn,
    ) -> io::Result<()> {
        if self.selected.as_ref().is_some_and(|s| s.readonly) {
            return io
                .write_all(&imap::tagged(
                    tag,
                    Status::No,
                    "[READ-ONLY] mailbox is read-only",
                ))
                .await;
        }
        // See other sessions' flags first, so their \Deleted counts too.
        self.refresh(io, true).await?;
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let store = &self.ctx.store;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
        let doomed: Vec<usize> = (0..sel.msgs.len())
            .filter(|&i| {
                let m = &sel.msgs[i];
                has_flag(&m.flags, "\\Deleted")
                    && uids.is_none_or(|s| {
                        s.contains(m.uid, max_uid)
                            || (s.is_saved() && sel.saved.binary_search(&m.uid).is_ok())
                    })
            })
            .collect();
        let ids: Vec<i64> = doomed.iter().map(|&i| sel.msgs[i].id).collect();
        if let Err(e) = store.expunge(account, &ids).await {
            return io.write_all(&status_err(tag, &e, "EXPUNGE")).await;
        }
        let out = remove_expunged(&mut sel.msgs, &doomed, self.qresync);
        io.write_all(&out).await?;
        self.refresh(io, true).await?;
        // RFC 7162 §3.2.7: with QRESYNC the tagged OK carries the new
        // HIGHESTMODSEQ (the view has caught up with everything below it).
        let text = match self.selected.as_ref() {
            Some(sel) if self.qresync => {
                format!("[HIGHESTMODSEQ {}] EXPUNGE completed", sel.modseq)
            }
            _ => "EXPUNGE completed".to_string(),
        };
        io.write_all(&imap::tagged(tag, Status::Ok, &text)).await
    }
}

/// The parts of a STORE command.
pub(super) struct StoreOp<'a> {
    pub(super) mode: StoreMode,
    pub(super) silent: bool,
    pub(super) flags: &'a [String],
    pub(super) unchanged_since: Option<u64>,
}
