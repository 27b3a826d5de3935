//! SELECT and EXAMINE (RFC 9051 §6.3.2), with CONDSTORE and QRESYNC
//! (RFC 7162 §3.1, §3.2.5).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Session<'_> {
    pub(super) async fn select(
        &mut self,
        tag: &str,
        mailbox: &str,
        readonly: bool,
        qresync: Option<&QResync>,
        io: &mut Conn,
    ) -> io::Result<()> {
        // A failed SELECT leaves no mailbox selected. IMAP4rev2 and QRESYNC
        // say so first (RFC 9051 §7.1, RFC 7162 §3.2.11: CLOSED).
        if self.selected.take().is_some() && (self.rev2 || self.qresync) {
            io.write_all(&imap::untagged("OK [CLOSED] previous mailbox closed"))
                .await?;
        }
        self.state = State::Authenticated;
        let Some(account) = &self.account else {
            return io
                .write_all(&imap::tagged(tag, Status::Bad, "log in first"))
                .await;
        };
        let name = self.name_in(mailbox);
        let store = &self.ctx.store;
        let rev2 = self.rev2;
        let loaded = async {
            let Some(mb) = store.mailbox(account.id, &name).await? else {
                return Ok(None);
            };
            let msgs = store.messages(mb.id, 0).await?;
            // Expunges are read after the messages: one committed in
            // between is still in the view, so it is left out of
            // VANISHED (EARLIER) and announced by the next refresh.
            let vanished = match qresync {
                Some(q) if q.uidvalidity == mb.uidvalidity => {
                    Some(store.vanished_since(mb.id, q.modseq).await?)
                }
                _ => None,
            };
            if !readonly && let Some(last) = msgs.last() {
                store.clear_recent(mb.id, last.uid).await?;
            }
            // IMAP4rev2's SELECT includes the mailbox's LIST response.
            let boxes = if rev2 {
                store.list_mailboxes(account.id).await?
            } else {
                Vec::new()
            };
            Ok::<_, StoreError>(Some((mb, msgs, boxes, vanished)))
        }
        .await;
        let (mb, msgs, boxes, vanished) = match loaded {
            Ok(Some(x)) => x,
            Ok(None) => {
                return io
                    .write_all(&imap::tagged(
                        tag,
                        Status::No,
                        "[NONEXISTENT] no such mailbox",
                    ))
                    .await;
            }
            Err(e) => return io.write_all(&status_err(tag, &e, "SELECT")).await,
        };
        let recent = msgs.iter().filter(|m| m.uid > mb.recent_uid).count();
        let uidnext = msgs
            .last()
            .map_or(mb.uidnext, |m| mb.uidnext.max(m.uid.saturating_add(1)));
        let mut out = Vec::new();
        let defined = view::defined_flags(&msgs);
        out.extend(view::flags_responses(&defined, readonly));
        out.extend(imap::untagged(&format!("{} EXISTS", msgs.len())));
        if rev2 {
            // RFC 9051 §6.3.2: a LIST response with accurate attributes;
            // there is no RECENT (Appendix E).
            if let Some(b) = boxes.iter().find(|b| b.name == name) {
                out.extend(imap::untagged(&format!(
                    "LIST ({}) \"/\" {}",
                    list::list_attributes(&boxes, b).join(" "),
                    imap::quote_mailbox(&self.name_out(&name))
                )));
            }
        } else {
            out.extend(imap::untagged(&format!("{recent} RECENT")));
        }
        if let Some(i) = msgs.iter().position(|m| !has_flag(&m.flags, "\\Seen")) {
            out.extend(imap::untagged(&format!(
                "OK [UNSEEN {}] first unseen message",
                i + 1
            )));
        }
        out.extend(imap::untagged(&format!(
            "OK [UIDVALIDITY {}] UIDs valid",
            mb.uidvalidity
        )));
        out.extend(imap::untagged(&format!(
            "OK [UIDNEXT {uidnext}] predicted next UID"
        )));
        out.extend(imap::untagged(&format!(
            "OK [HIGHESTMODSEQ {}] highest",
            mb.highest_modseq
        )));
        // RFC 7162 §3.2.5.1: with a matching UIDVALIDITY, the expunges and
        // then the flag changes since the client's mod-sequence, limited
        // to its known UIDs.
        if let (Some(q), Some(vanished)) = (qresync, vanished) {
            self.condstore = true;
            let known = q.known_uids.as_ref();
            let last = uidnext.saturating_sub(1);
            let set = earlier_set(vanished, known, last, &msgs);
            if !set.is_empty() {
                out.extend(imap::untagged(&format!("VANISHED (EARLIER) {set}")));
            }
            for (i, m) in msgs.iter().enumerate() {
                if m.modseq > q.modseq && known.is_none_or(|k| k.contains(m.uid, last)) {
                    out.extend(imap::fetch_response(
                        u32::try_from(i + 1).unwrap_or(u32::MAX),
                        &[
                            FetchItem::Uid(m.uid),
                            FetchItem::Flags(&m.flags),
                            FetchItem::ModSeq(m.modseq),
                        ],
                    ));
                }
            }
        }
        let (code, cmd) = if readonly {
            ("READ-ONLY", "EXAMINE")
        } else {
            ("READ-WRITE", "SELECT")
        };
        out.extend(imap::tagged(
            tag,
            Status::Ok,
            &format!("[{code}] {cmd} completed"),
        ));
        self.selected = Some(Selected {
            recent_above: mb.recent_uid,
            modseq: mb.highest_modseq,
            mailbox: mb,
            name,
            readonly,
            msgs,
            pending_expunge: false,
            held_modseq: 0,
            saved: Vec::new(),
            defined,
        });
        self.state = State::Selected;
        io.write_all(&out).await
    }

    /// Announce changes made by others since the view was last synced.
    /// Storage errors are logged and skipped (the next command retries).
    /// A CONDSTORE-enabling command (`on`) turns CONDSTORE on; the first one
    /// with a mailbox selected announces its HIGHESTMODSEQ (RFC 7162 §3.1).
    pub(super) async fn enable_condstore(&mut self, on: bool, io: &mut Conn) -> io::Result<()> {
        if !on || self.condstore {
            return Ok(());
        }
        self.condstore = true;
        if let Some(sel) = &self.selected {
            let line = format!("OK [HIGHESTMODSEQ {}] Highest", sel.modseq);
            io.write_all(&imap::untagged(&line)).await?;
        }
        Ok(())
    }
}
