//! The selected-mailbox view, as pure code: sequence numbers are positions
//! in `msgs`; which expunges are announced how (EXPUNGE, or VANISHED once
//! QRESYNC is enabled, RFC 9051 §7.5.1 and RFC 7162 §3.2.10); and which
//! flags the client has been told exist (RFC 9051 §7.3.5).

use tern_mailproto::imap::{self, SeqNum, SequenceSet};

use crate::store::{Mailbox, MessageMeta};

/// The most flags a FLAGS response names.
const MAX_DEFINED: usize = 1000;

/// The view of the selected mailbox.
pub(super) struct Selected {
    pub(super) mailbox: Mailbox,
    pub(super) name: String,
    pub(super) readonly: bool,
    pub(super) msgs: Vec<MessageMeta>,
    /// Messages with a UID above this are `\Recent` in this session.
    pub(super) recent_above: u32,
    /// HIGHESTMODSEQ this view reflects.
    pub(super) modseq: u64,
    /// Expunges seen but not yet announced (not allowed at the time).
    pub(super) pending_expunge: bool,
    /// While expunges are held back, the HIGHESTMODSEQ from before them,
    /// sent to QRESYNC clients after MODSEQ data (RFC 7162 §3.2).
    pub(super) held_modseq: u64,
    /// UIDs (ascending) of the result `SEARCH RETURN (SAVE)` saved, which
    /// `$` names (RFC 5182); empty until one is saved.
    pub(super) saved: Vec<u32>,
    /// The flags the last FLAGS response named: a FETCH may show only
    /// these (RFC 9051 §7.3.5), so a new keyword is announced first.
    pub(super) defined: Vec<String>,
}

/// The FLAGS and PERMANENTFLAGS responses to send before a FETCH of
/// `flags`, when one of them is not in `defined` (empty otherwise; it is
/// added). Without it a client has FLAGS data naming a keyword it was not
/// told of (Dovecot's imaptest: "Keyword used without being in FLAGS").
/// Takes the fields of [`Selected`], not the view, for callers that hold
/// a borrow of its `msgs`.
pub(super) fn announce(defined: &mut Vec<String>, readonly: bool, flags: &[String]) -> Vec<u8> {
    if learn_flags(defined, flags) {
        flags_responses(defined, readonly)
    } else {
        Vec::new()
    }
}

/// The flags to name in FLAGS at SELECT: the system flags, then every
/// keyword in use in the mailbox, in order of first use.
pub(super) fn defined_flags(msgs: &[MessageMeta]) -> Vec<String> {
    let mut out: Vec<String> = imap::SYSTEM_FLAGS.iter().map(|s| s.to_string()).collect();
    for m in msgs {
        learn_flags(&mut out, &m.flags);
    }
    out
}

/// Add to `defined` the flags of `flags` it lacks (exact spelling: a
/// client may compare case-sensitively); true if any was added.
pub(super) fn learn_flags(defined: &mut Vec<String>, flags: &[String]) -> bool {
    let mut added = false;
    for f in flags {
        if defined.len() < MAX_DEFINED && !defined.contains(f) {
            defined.push(f.clone());
            added = true;
        }
    }
    added
}

/// `* FLAGS (...)` and `* OK [PERMANENTFLAGS (...)]` (RFC 9051 §7.3.5,
/// §7.1): any keyword may be created unless the mailbox is read-only.
pub(super) fn flags_responses(defined: &[String], readonly: bool) -> Vec<u8> {
    let mut out = imap::untagged(&format!("FLAGS {}", imap::flag_list(defined)));
    let permanent = if readonly {
        "()".to_string()
    } else {
        let mut p: Vec<&str> = imap::SYSTEM_FLAGS.to_vec();
        p.push("\\*");
        imap::flag_list(&p)
    };
    out.extend(imap::untagged(&format!(
        "OK [PERMANENTFLAGS {permanent}] flags permitted"
    )));
    out
}

/// A compact sequence set (`1:3,7`) for COPYUID / ESEARCH / VANISHED.
pub(super) fn compact_set(nums: &[u32]) -> String {
    let mut ranges: Vec<(u32, u32)> = Vec::new();
    for &n in nums {
        match ranges.last_mut() {
            Some((_, end)) if n == end.wrapping_add(1) => *end = n,
            _ => ranges.push((n, n)),
        }
    }
    format_ranges(&ranges)
}

/// `1:3,7` from `[(1, 3), (7, 7)]`.
pub(super) fn format_ranges(ranges: &[(u32, u32)]) -> String {
    let mut out = String::new();
    for &(start, end) in ranges {
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
    }
    out
}

/// The UIDs of `known` (all when `None`) from 1 to `last` that are not
/// in `present` (ascending), as a compact set: what is reported as
/// `VANISHED (EARLIER)` when the mailbox no longer remembers every expunge
/// since the client's mod-sequence. RFC 7162 §3.2.5.2 allows UIDs the
/// client never saw (it ignores them), so this over-approximates safely.
/// Works on ranges, so `1:4294967295` costs no more than `1:5`.
pub(super) fn missing_uids(known: Option<&SequenceSet>, last: u32, present: &[u32]) -> String {
    let value = |s: SeqNum| match s {
        SeqNum::Value(v) => v,
        SeqNum::Star => last,
    };
    let mut wanted: Vec<(u32, u32)> = match known {
        Some(k) => k
            .ranges()
            .iter()
            .map(|&(a, b)| (value(a).min(value(b)), value(a).max(value(b)).min(last)))
            .filter(|(a, b)| a <= b)
            .collect(),
        None if last > 0 => vec![(1, last)],
        None => Vec::new(),
    };
    wanted.sort_unstable();
    let mut merged: Vec<(u32, u32)> = Vec::new();
    for (a, b) in wanted {
        match merged.last_mut() {
            Some((_, end)) if a <= end.saturating_add(1) => *end = (*end).max(b),
            _ => merged.push((a, b)),
        }
    }
    let mut out = Vec::new();
    for (a, b) in merged {
        // u64, so the UID after u32::MAX does not wrap.
        let mut from = u64::from(a);
        let start = present.partition_point(|&u| u < a);
        for &u in present[start..].iter().take_while(|&&u| u <= b) {
            if u64::from(u) > from {
                out.push((u32::try_from(from).unwrap_or(u), u - 1));
            }
            from = u64::from(u) + 1;
        }
        if let Ok(from) = u32::try_from(from)
            && from <= b
        {
            out.push((from, b));
        }
    }
    format_ranges(&out)
}

/// The `VANISHED (EARLIER)` set (RFC 7162 §3.2.5.1, §3.2.6): the UIDs
/// `recorded` as expunged since the client's mod-sequence (`None` when not
/// all are remembered: then every UID that is gone, see [`missing_uids`]),
/// limited to `within` (`*` is `last`) and to UIDs no longer in `view`.
/// One still in the view (its expunge not announced yet) is left for the
/// plain VANISHED that announces it, so the client's count stays right.
pub(super) fn earlier_set(
    recorded: Option<Vec<u32>>,
    within: Option<&SequenceSet>,
    last: u32,
    view: &[MessageMeta],
) -> String {
    let present: Vec<u32> = view.iter().map(|m| m.uid).collect();
    match recorded {
        Some(uids) => {
            let uids: Vec<u32> = uids
                .into_iter()
                .filter(|&u| {
                    within.is_none_or(|k| k.contains(u, last)) && present.binary_search(&u).is_err()
                })
                .collect();
            compact_set(&uids)
        }
        None => missing_uids(within, last, &present),
    }
}

/// Remove the messages at `idx` (ascending) from the view and announce
/// them: `* n EXPUNGE` each, highest first, or one `* VANISHED uids` once
/// QRESYNC is enabled (RFC 7162 §3.2.10).
pub(super) fn remove_expunged(
    msgs: &mut Vec<MessageMeta>,
    idx: &[usize],
    qresync: bool,
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut uids = Vec::with_capacity(idx.len());
    for &i in idx.iter().rev() {
        uids.push(msgs.remove(i).uid);
        if !qresync {
            out.extend(imap::untagged(&format!("{} EXPUNGE", i + 1)));
        }
    }
    if qresync && !uids.is_empty() {
        uids.reverse();
        out.extend(imap::untagged(&format!("VANISHED {}", compact_set(&uids))));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn set(s: &str) -> Option<SequenceSet> {
        SequenceSet::parse(s.as_bytes())
    }

    #[test]
    fn missing_uids_are_computed_on_ranges() {
        assert_eq!(missing_uids(None, 0, &[]), "");
        assert_eq!(missing_uids(None, 9, &[2, 3, 7]), "1,4:6,8:9");
        assert_eq!(missing_uids(None, 3, &[1, 2, 3]), "");
        // Known UIDs limit the report, `*` is the last UID, ranges merge
        // and may be given backwards.
        assert_eq!(
            missing_uids(set("5:3,8:*,1").as_ref(), 10, &[4, 9]),
            "1,3,5,8,10"
        );
        assert_eq!(missing_uids(set("1:3,2:6").as_ref(), 9, &[6]), "1:5");
        // Huge ranges cost nothing, and the top UID does not wrap.
        assert_eq!(
            missing_uids(set("1:4294967295").as_ref(), u32::MAX, &[1, u32::MAX]),
            "2:4294967294"
        );
        assert_eq!(missing_uids(set("7:9").as_ref(), 5, &[]), "");
    }

    fn meta(uid: u32) -> MessageMeta {
        MessageMeta {
            id: i64::from(uid),
            uid,
            flags: Vec::new(),
            size: 0,
            internal_date_ms: 0,
            modseq: 1,
        }
    }

    #[test]
    fn earlier_set_leaves_out_what_the_view_still_has() {
        let view: Vec<MessageMeta> = [2, 6].into_iter().map(meta).collect();
        // Recorded expunges, limited to the set; 6 is still in the view
        // (its expunge not announced yet).
        assert_eq!(
            earlier_set(Some(vec![1, 3, 4, 6, 9]), set("3:*").as_ref(), 9, &view),
            "3:4,9"
        );
        assert_eq!(earlier_set(Some(vec![1, 3]), None, 9, &view), "1,3");
        // Forgotten: everything up to `last` the view does not have.
        assert_eq!(earlier_set(None, None, 7, &view), "1,3:5,7");
    }

    #[test]
    fn new_keywords_are_announced_once_before_use() {
        let mut m = meta(1);
        m.flags = vec!["\\Seen".into(), "$Old".into()];
        let mut defined = defined_flags(&[m]);
        let readonly = false;
        assert_eq!(
            defined,
            [
                "\\Answered",
                "\\Flagged",
                "\\Deleted",
                "\\Seen",
                "\\Draft",
                "$Old"
            ]
        );
        // Known flags: nothing to say.
        assert!(announce(&mut defined, readonly, &["$Old".into(), "\\Seen".into()]).is_empty());
        // A new keyword: FLAGS names it, then PERMANENTFLAGS; only once.
        let out = announce(&mut defined, readonly, &["$New".into(), "$Old".into()]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Old $New)\r\n\
             * OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] flags permitted\r\n"
        );
        assert!(announce(&mut defined, readonly, &["$New".into()]).is_empty());
        // Read-only: no flag may be stored.
        let readonly = true;
        let out = String::from_utf8(announce(&mut defined, readonly, &["$Third".into()])).unwrap();
        assert!(
            out.ends_with("* OK [PERMANENTFLAGS ()] flags permitted\r\n"),
            "{out}"
        );
    }

    #[test]
    fn expunges_are_announced_as_expunge_or_vanished() {
        let mut msgs: Vec<MessageMeta> = [1, 2, 3, 5, 8].into_iter().map(meta).collect();
        let out = remove_expunged(&mut msgs, &[1, 2, 4], false);
        assert_eq!(out, b"* 5 EXPUNGE\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n");
        assert_eq!(msgs.iter().map(|m| m.uid).collect::<Vec<_>>(), [1, 5]);
        let out = remove_expunged(&mut msgs, &[0, 1], true);
        assert_eq!(out, b"* VANISHED 1,5\r\n");
        assert!(msgs.is_empty());
        assert!(remove_expunged(&mut msgs, &[], true).is_empty());
    }
}
