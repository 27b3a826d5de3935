//! FETCH and UID FETCH (RFC 9051 §6.4.5), in batches bounded in count
//! and octets, with VANISHED (EARLIER) (RFC 7162 §3.2.6).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Session<'_> {
    /// FETCH; false when it already completed (with NO/BAD).
    pub(super) async fn fetch(
        &mut self,
        tag: &str,
        set: &SequenceSet,
        attrs: &[FetchAttr],
        uid: bool,
        changed_since: Option<u64>,
        io: &mut Conn,
    ) -> io::Result<bool> {
        let Some(mut idx) = self.resolve(tag, set, uid, io).await? else {
            return Ok(false);
        };
        if let (Some(n), Some(sel)) = (changed_since, self.selected.as_ref()) {
            idx.retain(|&i| sel.msgs[i].modseq > n);
        }
        let ctx = self.ctx;
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let rev2 = self.rev2;
        let Some(sel) = self.selected.as_mut() else {
            return Ok(false);
        };
        let recent_above = if rev2 { u32::MAX } else { sel.recent_above };
        // ENVELOPE, BODY, BODYSTRUCTURE and header sections come from the
        // summary stored at delivery; only other content items read bodies.
        let want_summary = attrs.iter().any(from_summary);
        let parts = Parts {
            header: attrs.iter().any(|a| {
                from_summary(a)
                    && !matches!(a, FetchAttr::Envelope | FetchAttr::BodyStructure { .. })
            }),
            envelope: attrs.contains(&FetchAttr::Envelope),
            structure: attrs
                .iter()
                .any(|a| matches!(a, FetchAttr::BodyStructure { .. })),
        };
        let want_content = attrs.iter().any(|a| a.needs_content() && !from_summary(a));
        let sets_seen = !sel.readonly && attrs.iter().any(FetchAttr::sets_seen);
        // RFC 3516 §4.3: a BINARY that cannot be decoded fails the whole
        // FETCH, so find that out before \Seen is set (this reads the
        // bodies twice, only for a non-PEEK BINARY).
        if sets_seen
            && attrs
                .iter()
                .any(|a| matches!(a, FetchAttr::Binary { peek: false, .. }))
        {
            let mut start = 0;
            while start < idx.len() {
                let end = batch_end(&sel.msgs, &idx, start, true);
                let ids: Vec<i64> = idx[start..end].iter().map(|&i| sel.msgs[i].id).collect();
                start = end;
                let contents = match ctx.store.contents(&ids).await {
                    Ok(c) => c,
                    Err(e) => {
                        io.write_all(&status_err(tag, &e, "FETCH")).await?;
                        return Ok(false);
                    }
                };
                let undecodable = contents.values().find_map(|c| {
                    attrs
                        .iter()
                        .find_map(|a| a.binary_item(c).and_then(Result::err))
                });
                if let Some(e) = undecodable {
                    let text = format!("[UNKNOWN-CTE] {e}");
                    io.write_all(&imap::tagged(tag, Status::No, &text)).await?;
                    return Ok(false);
                }
            }
        }
        // \Seen for every message that lacks it, in one transaction.
        let mut seen_now = std::collections::HashSet::new();
        if sets_seen {
            let changes: Vec<(i64, Vec<String>)> = idx
                .iter()
                .map(|&i| &sel.msgs[i])
                .filter(|m| !has_flag(&m.flags, "\\Seen"))
                .map(|m| {
                    let mut f = m.flags.clone();
                    f.push("\\Seen".to_string());
                    (m.id, f)
                })
                .collect();
            if !changes.is_empty() {
                let modseq = match ctx
                    .store
                    .store_flags(account, sel.mailbox.id, &changes)
                    .await
                {
                    Ok(modseq) => modseq,
                    Err(e) => {
                        io.write_all(&status_err(tag, &e, "FETCH \\Seen")).await?;
                        return Ok(false);
                    }
                };
                if modseq == sel.modseq + 1 {
                    sel.modseq = modseq;
                }
                for &i in &idx {
                    let m = &mut sel.msgs[i];
                    if !has_flag(&m.flags, "\\Seen") {
                        m.flags.push("\\Seen".to_string());
                        m.modseq = modseq;
                        seen_now.insert(i);
                    }
                }
            }
        }
        // Batches bounded in count and, when bodies are loaded, in octets.
        let mut start = 0;
        while start < idx.len() {
            let end = batch_end(&sel.msgs, &idx, start, want_content);
            let batch = &idx[start..end];
            start = end;
            let ids: Vec<i64> = batch.iter().map(|&i| sel.msgs[i].id).collect();
            let loaded = async {
                let summaries = if want_summary {
                    ctx.store.summaries(&ids, parts).await?
                } else {
                    HashMap::new()
                };
                let contents = if want_content {
                    ctx.store.contents(&ids).await?
                } else {
                    HashMap::new()
                };
                Ok::<_, StoreError>((summaries, contents))
            }
            .await;
            let (summaries, contents) = match loaded {
                Ok(x) => x,
                Err(e) => {
                    io.write_all(&status_err(tag, &e, "FETCH")).await?;
                    return Ok(false);
                }
            };
            let mut out = Vec::new();
            for &i in batch {
                let seq = u32::try_from(i + 1).unwrap_or(u32::MAX);
                if attrs.contains(&FetchAttr::Flags) || seen_now.contains(&i) {
                    out.extend(view::announce(
                        &mut sel.defined,
                        sel.readonly,
                        &sel.msgs[i].flags,
                    ));
                }
                let m = &sel.msgs[i];
                // A message missing here was expunged by another session: nothing to show.
                let summary = match summaries.get(&m.id) {
                    None if want_summary => continue,
                    s => s,
                };
                let content = match contents.get(&m.id) {
                    None if want_content => continue,
                    c => c.map(Vec::as_slice),
                };
                // Header sections are cut from the header block alone when
                // the whole message is not loaded.
                let source = content
                    .or(summary.map(|s| s.header.as_slice()))
                    .unwrap_or_default();
                let mut items = Vec::with_capacity(attrs.len() + 1);
                for a in attrs {
                    if let Some(item) = a.binary_item(source) {
                        match item {
                            Ok(item) => items.push(item),
                            Err(e) => {
                                // RFC 3516 §4.3: the whole FETCH fails.
                                io.write_all(&out).await?;
                                let text = format!("[UNKNOWN-CTE] {e}");
                                io.write_all(&imap::tagged(tag, Status::No, &text)).await?;
                                return Ok(false);
                            }
                        }
                        continue;
                    }
                    items.push(match a {
                        FetchAttr::Flags => flags_item(m, recent_above),
                        FetchAttr::Uid => FetchItem::Uid(m.uid),
                        FetchAttr::InternalDate => FetchItem::InternalDate(m.internal_date_ms),
                        FetchAttr::Rfc822Size => FetchItem::Rfc822Size(m.size),
                        FetchAttr::ModSeq => FetchItem::ModSeq(m.modseq),
                        FetchAttr::Envelope => FetchItem::Raw {
                            name: "ENVELOPE",
                            value: summary.map(|s| s.envelope.clone()).unwrap_or_default(),
                        },
                        FetchAttr::BodyStructure { extended } => FetchItem::Raw {
                            name: if *extended { "BODYSTRUCTURE" } else { "BODY" },
                            value: summary
                                .map(|s| {
                                    if *extended {
                                        s.body_structure.clone()
                                    } else {
                                        s.body_basic.clone()
                                    }
                                })
                                .unwrap_or_default(),
                        },
                        other => FetchItem::Data {
                            name: other.response_name(),
                            data: other.extract(source).unwrap_or_default(),
                        },
                    });
                }
                if seen_now.contains(&i) && !attrs.contains(&FetchAttr::Flags) {
                    items.push(flags_item(m, recent_above));
                }
                out.extend(imap::fetch_response(seq, &items));
            }
            // One write per batch: the buffered writer passes it straight on.
            io.write_all(&out).await?;
        }
        Ok(true)
    }

    /// `* VANISHED (EARLIER)` for the UIDs of `set` expunged with a
    /// mod-sequence above `since` (UID FETCH ... (CHANGEDSINCE n VANISHED),
    /// RFC 7162 §3.2.6), sent before the FETCH responses. Storage errors
    /// are logged and nothing is sent (the FETCH goes on).
    pub(super) async fn vanished_earlier(
        &mut self,
        set: &SequenceSet,
        since: u64,
        io: &mut Conn,
    ) -> io::Result<()> {
        let Some(sel) = self.selected.as_ref() else {
            return Ok(());
        };
        if set.is_saved() {
            return Ok(());
        }
        // `*` is the largest UID ever given out here.
        let last = sel
            .mailbox
            .uidnext
            .max(sel.msgs.last().map_or(0, |m| m.uid.saturating_add(1)))
            .saturating_sub(1);
        let text = match self.ctx.store.vanished_since(sel.mailbox.id, since).await {
            Ok(recorded) => earlier_set(recorded, Some(set), last, &sel.msgs),
            Err(e) => {
                tracing::warn!(error = %e, "VANISHED");
                return Ok(());
            }
        };
        if text.is_empty() {
            return Ok(());
        }
        io.write_all(&imap::untagged(&format!("VANISHED (EARLIER) {text}")))
            .await
    }
}

/// Most messages loaded for one FETCH batch.
pub(super) const FETCH_BATCH: usize = 256;

/// Most octets of whole messages loaded for one FETCH batch (a batch holds
/// at least one message, however large).
pub(super) const FETCH_BATCH_OCTETS: u64 = 8 * 1024 * 1024;

/// Where the FETCH batch of `idx` (indexes into `msgs`) that begins at
/// `start` ends: at most [`FETCH_BATCH`] messages and, when whole
/// messages are loaded (`content`), [`FETCH_BATCH_OCTETS`], but at least one.
pub(super) fn batch_end(msgs: &[MessageMeta], idx: &[usize], start: usize, content: bool) -> usize {
    let mut end = start;
    let mut octets = 0u64;
    while end < idx.len() && end - start < FETCH_BATCH {
        octets = octets.saturating_add(msgs[idx[end]].size);
        if content && end > start && octets > FETCH_BATCH_OCTETS {
            break;
        }
        end += 1;
    }
    end
}

/// Is this FETCH item answered from the summary stored at delivery
/// (header block, ENVELOPE, BODY, BODYSTRUCTURE) rather than the body?
pub(super) fn from_summary(a: &FetchAttr) -> bool {
    match a {
        FetchAttr::Envelope | FetchAttr::BodyStructure { .. } | FetchAttr::Rfc822Header => true,
        FetchAttr::Body { section, .. } => {
            matches!(section, Section::Header | Section::HeaderFields { .. })
        }
        _ => false,
    }
}

/// The FLAGS item of `m`, with `\Recent` when its UID is above
/// `recent_above` (`u32::MAX` under IMAP4rev2, which has no `\Recent`:
/// RFC 9051 Appendix E).
pub(super) fn flags_item(m: &MessageMeta, recent_above: u32) -> FetchItem<'_> {
    if m.uid > recent_above {
        FetchItem::RecentFlags(&m.flags)
    } else {
        FetchItem::Flags(&m.flags)
    }
}
