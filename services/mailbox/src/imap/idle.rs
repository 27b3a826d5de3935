//! Bringing the view up to date: what other sessions changed, announced
//! before a command completes, and while IDLE (RFC 2177).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Session<'_> {
    pub(super) async fn refresh(&mut self, io: &mut Conn, expunge_ok: bool) -> io::Result<()> {
        let store = &self.ctx.store;
        let rev2 = self.rev2;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(());
        };
        let recent_above = if rev2 { u32::MAX } else { sel.recent_above };
        let mb = match store.mailbox_by_id(sel.mailbox.id).await {
            Ok(Some(mb)) => mb,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "refresh mailbox");
                return Ok(());
            }
        };
        if mb.highest_modseq == sel.modseq && !(sel.pending_expunge && expunge_ok) {
            return Ok(());
        }
        let held = if sel.pending_expunge {
            sel.held_modseq
        } else {
            sel.modseq
        };
        // Usually only flags changed or mail arrived: then just the rows
        // whose mod-sequence moved are read; all of them only when some
        // are gone or an expunge waits to be announced.
        let last = sel.msgs.last().map_or(0, |m| m.uid);
        let since = if sel.pending_expunge { 0 } else { sel.modseq };
        let len = if sel.pending_expunge {
            usize::MAX
        } else {
            sel.msgs.len()
        };
        let (all, complete) = match store
            .changed_messages(sel.mailbox.id, since, last, len)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "refresh mailbox");
                return Ok(());
            }
        };
        let mut out = Vec::new();
        let now: HashMap<u32, &MessageMeta> = all.iter().map(|m| (m.uid, m)).collect();
        // Expunged by others.
        let gone = complete && sel.msgs.iter().any(|m| !now.contains_key(&m.uid));
        sel.pending_expunge = gone && !expunge_ok;
        sel.held_modseq = held;
        if gone && expunge_ok {
            let removed: Vec<usize> = (0..sel.msgs.len())
                .filter(|&i| !now.contains_key(&sel.msgs[i].uid))
                .collect();
            out.extend(remove_expunged(&mut sel.msgs, &removed, self.qresync));
        }
        // Flag changes.
        for (i, m) in sel.msgs.iter_mut().enumerate() {
            if let Some(n) = now.get(&m.uid)
                && n.flags != m.flags
            {
                m.flags = n.flags.clone();
                m.modseq = n.modseq;
                out.extend(view::announce(&mut sel.defined, sel.readonly, &m.flags));
                let mut items = vec![FetchItem::Uid(m.uid), flags_item(m, recent_above)];
                if self.condstore {
                    items.push(FetchItem::ModSeq(m.modseq));
                }
                out.extend(imap::fetch_response(
                    u32::try_from(i + 1).unwrap_or(u32::MAX),
                    &items,
                ));
            }
        }
        // New messages.
        let last = sel.msgs.last().map_or(0, |m| m.uid);
        let new: Vec<MessageMeta> = all.into_iter().filter(|m| m.uid > last).collect();
        if !new.is_empty() {
            if !sel.readonly
                && let Some(l) = new.last()
                && let Err(e) = store.clear_recent(sel.mailbox.id, l.uid).await
            {
                tracing::warn!(error = %e, "clear recent");
            }
            sel.msgs.extend(new);
            let recent = sel.msgs.iter().filter(|m| m.uid > sel.recent_above).count();
            out.extend(imap::untagged(&format!("{} EXISTS", sel.msgs.len())));
            // IMAP4rev2 has no RECENT (RFC 9051 Appendix E).
            if !rev2 {
                out.extend(imap::untagged(&format!("{recent} RECENT")));
            }
        }
        // RFC 7162 §3.2: while expunges are held back, MODSEQ data must
        // come with a HIGHESTMODSEQ below theirs, so a client that loses
        // the connection now resynchronizes from before them.
        if self.qresync && sel.pending_expunge {
            out.extend(imap::untagged(&format!(
                "OK [HIGHESTMODSEQ {}] expunges pending",
                sel.held_modseq
            )));
        }
        sel.modseq = mb.highest_modseq;
        sel.mailbox.uidnext = mb.uidnext;
        io.write_all(&out).await
    }
}
