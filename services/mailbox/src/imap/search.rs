//! SEARCH and UID SEARCH (RFC 9051 §6.4.4), ESEARCH results and SAVE
//! (RFC 4731, RFC 5182).

#[allow(clippy::wildcard_imports)]
use super::*;

impl Session<'_> {
    pub(super) async fn search(
        &mut self,
        tag: &str,
        uid: bool,
        key: &SearchKey,
        ret: Option<&[String]>,
        io: &mut Conn,
    ) -> io::Result<bool> {
        let store = &self.ctx.store;
        let save = ret.is_some_and(|r| r.iter().any(|i| i == "SAVE"));
        let Some(sel) = self.selected.as_ref() else {
            return Ok(false);
        };
        let max_seq = u32::try_from(sel.msgs.len()).unwrap_or(u32::MAX);
        let max_uid = sel.msgs.last().map_or(0, |m| m.uid);
        let check = |i: usize, content: Option<&[u8]>| {
            let m = &sel.msgs[i];
            key.matches(&SearchMsg {
                seq: u32::try_from(i + 1).unwrap_or(u32::MAX),
                uid: m.uid,
                max_seq,
                max_uid,
                flags: &m.flags,
                recent: m.uid > sel.recent_above,
                size: m.size,
                internal_date_ms: m.internal_date_ms,
                modseq: m.modseq,
                content,
                saved: &sel.saved,
            })
        };
        let mut matched = vec![false; sel.msgs.len()];
        if key.needs_content() {
            // Stream the mailbox's rows once: header blocks alone unless a
            // BODY/TEXT key needs whole messages. Rows gone from the
            // database (expunged by another session) match nothing; rows
            // not in this view yet are skipped.
            let pos: HashMap<i64, usize> = sel
                .msgs
                .iter()
                .enumerate()
                .map(|(i, m)| (m.id, i))
                .collect();
            let mut visit = |id: i64, content: &[u8]| {
                if let Some(&i) = pos.get(&id) {
                    matched[i] = check(i, Some(content));
                }
            };
            let streamed = if key.needs_body() {
                store.for_each_content(sel.mailbox.id, &mut visit).await
            } else {
                store.for_each_header(sel.mailbox.id, &mut visit).await
            };
            if let Err(e) = streamed {
                // A failed SEARCH RETURN (SAVE) empties `$` (RFC 5182 §2.1).
                if save && let Some(sel) = self.selected.as_mut() {
                    sel.saved.clear();
                }
                io.write_all(&status_err(tag, &e, "SEARCH")).await?;
                return Ok(false);
            }
        } else {
            for (i, hit) in matched.iter_mut().enumerate() {
                *hit = check(i, None);
            }
        }
        let mut hits = Vec::new();
        let mut hit_uids = Vec::new();
        let mut hit_modseq = Vec::new();
        for (i, m) in sel.msgs.iter().enumerate() {
            if matched[i] {
                hits.push(if uid {
                    m.uid
                } else {
                    u32::try_from(i + 1).unwrap_or(u32::MAX)
                });
                hit_uids.push(m.uid);
                hit_modseq.push(m.modseq);
            }
        }
        // RFC 7162 §3.1.5: a SEARCH with MODSEQ reports the highest
        // mod-sequence of the matches.
        // With MIN and/or MAX but neither ALL nor COUNT, it is that of the
        // messages returned (RFC 7162 §3.2 of ESEARCH's MODSEQ, RFC 4731).
        let asked = |w: &str| ret.is_some_and(|r| r.iter().any(|i| i == w));
        let only_ends = !asked("ALL") && !asked("COUNT") && (asked("MIN") || asked("MAX"));
        let highest = if !has_modseq(key) {
            None
        } else if only_ends {
            let mut ends = Vec::new();
            if asked("MIN") {
                ends.extend(hit_modseq.first());
            }
            if asked("MAX") {
                ends.extend(hit_modseq.last());
            }
            ends.into_iter().copied().max()
        } else {
            hit_modseq.iter().copied().max()
        };
        // IMAP4rev2 always answers with ESEARCH, ALL when nothing else is
        // asked (RFC 9051 §6.4.4).
        let ret = ret.or(self.rev2.then_some(&[][..]));
        let line = match ret {
            None => {
                let mut s = String::from("SEARCH");
                for h in &hits {
                    s.push(' ');
                    s.push_str(&h.to_string());
                }
                if let Some(m) = highest {
                    s.push_str(&format!(" (MODSEQ {m})"));
                }
                Some(s)
            }
            // RFC 5182 §2.1: SAVE alone returns nothing.
            Some([only]) if only == "SAVE" => None,
            Some(items) => {
                // RFC 4731 ESEARCH.
                let items: Vec<&str> = items
                    .iter()
                    .map(String::as_str)
                    .filter(|i| *i != "SAVE")
                    .collect();
                let all = items.is_empty() || items.contains(&"ALL");
                let mut s = format!("ESEARCH (TAG {})", imap::quote(tag));
                if uid {
                    s.push_str(" UID");
                }
                for i in &items {
                    match *i {
                        "MIN" => {
                            if let Some(m) = hits.first() {
                                s.push_str(&format!(" MIN {m}"));
                            }
                        }
                        "MAX" => {
                            if let Some(m) = hits.last() {
                                s.push_str(&format!(" MAX {m}"));
                            }
                        }
                        "COUNT" => s.push_str(&format!(" COUNT {}", hits.len())),
                        _ => {}
                    }
                }
                if all && !hits.is_empty() {
                    s.push_str(&format!(" ALL {}", compact_set(&hits)));
                }
                if let Some(m) = highest {
                    s.push_str(&format!(" MODSEQ {m}"));
                }
                Some(s)
            }
        };
        if save {
            // RFC 5182 §2.1: with MIN and/or MAX but neither ALL nor COUNT,
            // only those are saved.
            let asked = |w: &str| ret.is_some_and(|r| r.iter().any(|i| i == w));
            let saved = if !asked("ALL") && !asked("COUNT") && (asked("MIN") || asked("MAX")) {
                let mut v = Vec::new();
                if asked("MIN") {
                    v.extend(hit_uids.first());
                }
                if asked("MAX") {
                    v.extend(hit_uids.last());
                }
                v.dedup();
                v
            } else {
                hit_uids
            };
            if let Some(sel) = self.selected.as_mut() {
                sel.saved = saved;
            }
        }
        if let Some(line) = line {
            io.write_all(&imap::untagged(&line)).await?;
        }
        Ok(true)
    }
}

/// Does the search use MODSEQ?
pub(super) fn has_modseq(k: &SearchKey) -> bool {
    match k {
        SearchKey::ModSeq(_) => true,
        SearchKey::And(v) => v.iter().any(has_modseq),
        SearchKey::Or(a, b) => has_modseq(a) || has_modseq(b),
        SearchKey::Not(a) => has_modseq(a),
        _ => false,
    }
}
