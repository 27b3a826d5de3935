//! LIST and LSUB (RFC 9051 §6.3.9, RFC 5258 LIST-EXTENDED, RFC 5819
//! LIST-STATUS): which mailboxes a LIST names, with which attributes, as a
//! pure plan over the account's mailboxes; the command runs it.

use std::io;

use tern_mailproto::imap::{self, Status, StatusItem};
use tokio::io::AsyncWriteExt;

use super::{Conn, Session, status_err, utf7};
use crate::store::{DELIMITER, MailboxInfo, StoreError};

/// The selection and return options of one LIST (RFC 5258 §3, §4).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Selection {
    /// SUBSCRIBED (or LSUB): only subscribed mailboxes.
    pub(super) subscribed: bool,
    /// SPECIAL-USE: only mailboxes with a special use.
    pub(super) special: bool,
    /// RECURSIVEMATCH: parents of unmatched selected mailboxes too.
    pub(super) recursive: bool,
    /// RETURN (SUBSCRIBED).
    pub(super) return_subscribed: bool,
    /// LSUB rather than LIST.
    pub(super) lsub: bool,
}

/// One mailbox a LIST names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Listed<'b> {
    /// The stored name.
    pub(super) name: &'b str,
    /// Its attributes, in order.
    pub(super) attrs: Vec<&'b str>,
    /// `("CHILDINFO" ("SUBSCRIBED"))`: a descendant the patterns do not
    /// match is subscribed (RFC 5258 §3.5).
    pub(super) childinfo: bool,
    /// It exists (STATUS can be asked of it).
    pub(super) exists: bool,
}

/// A mailbox's LIST attributes: children (RFC 3348) and special use (RFC 6154).
pub(super) fn list_attributes<'b>(boxes: &[MailboxInfo], b: &'b MailboxInfo) -> Vec<&'b str> {
    let prefix = format!("{}{DELIMITER}", b.name);
    let children = boxes.iter().any(|o| o.name.starts_with(&prefix));
    let mut attrs = vec![if children {
        "\\HasChildren"
    } else {
        "\\HasNoChildren"
    }];
    if !b.special_use.is_empty() {
        attrs.push(b.special_use.as_str());
    }
    attrs
}

/// The mailboxes `LIST` names for `patterns` (reference prefixed, in
/// the stored encoding), in name order. Names that do not exist are
/// named `\NonExistent`: `lost` subscriptions (their mailbox deleted)
/// under SUBSCRIBED (RFC 5258 §3.1), parents for RECURSIVEMATCH's CHILDINFO.
pub(super) fn plan<'b>(
    boxes: &'b [MailboxInfo],
    lost: &'b [String],
    patterns: &[String],
    sel: Selection,
) -> Vec<Listed<'b>> {
    let matches = |n: &str| patterns.iter().any(|p| imap::list_matches(p, n));
    let meets = |b: &MailboxInfo| {
        (!sel.subscribed || b.subscribed) && (!sel.special || !b.special_use.is_empty())
    };
    // CHILDINFO is defined for SUBSCRIBED only (RFC 5258 §3.5).
    let childinfo_of = |name: &str| {
        let prefix = format!("{name}{DELIMITER}");
        sel.recursive
            && sel.subscribed
            && !sel.lsub
            && boxes
                .iter()
                .any(|d| d.name.starts_with(&prefix) && meets(d) && !matches(&d.name))
    };
    let mut out = Vec::new();
    let show_lost = sel.subscribed && !sel.lsub;
    for name in candidates(boxes, lost, sel) {
        if !matches(name) {
            continue;
        }
        let b = boxes.iter().find(|b| b.name == name);
        if b.is_none() && show_lost && lost.iter().any(|l| l == name) {
            out.push(Listed {
                name,
                attrs: vec!["\\NonExistent", "\\Subscribed"],
                childinfo: false,
                exists: false,
            });
            continue;
        }
        let childinfo = childinfo_of(name);
        let selected = b.is_some_and(&meets);
        if !selected && !childinfo {
            continue;
        }
        let mut attrs = match b {
            Some(b) => list_attributes(boxes, b),
            None => vec!["\\NonExistent", "\\HasChildren"],
        };
        let subscribed = b.is_some_and(|b| b.subscribed);
        if subscribed && !sel.lsub && (sel.subscribed || sel.return_subscribed) {
            attrs.push("\\Subscribed");
        }
        out.push(Listed {
            name,
            attrs,
            childinfo,
            exists: b.is_some(),
        });
    }
    out
}

/// Every name LIST may report, sorted: the mailboxes, with SUBSCRIBED the
/// lost subscriptions, and with RECURSIVEMATCH the missing parents of
/// selected ones.
fn candidates<'b>(boxes: &'b [MailboxInfo], lost: &'b [String], sel: Selection) -> Vec<&'b str> {
    let mut names: Vec<&str> = boxes.iter().map(|b| b.name.as_str()).collect();
    if sel.subscribed && !sel.lsub {
        names.extend(lost.iter().map(String::as_str));
    }
    if sel.recursive && sel.subscribed && !sel.lsub {
        for b in boxes.iter().filter(|b| b.subscribed) {
            for (i, _) in b.name.match_indices(DELIMITER) {
                names.push(&b.name[..i]);
            }
        }
    }
    names.sort_unstable();
    names.dedup();
    names
}

/// RFC 3501 §6.3.9: when `%` stops LSUB above a subscribed mailbox, the
/// level it stops at is listed with `\Noselect` (if not itself
/// subscribed), so `LSUB "" foo/%` shows `foo/bar` for a subscribed
/// `foo/bar/baz`. Each name once, in order.
/// level it stops at is listed with `\Noselect` (if not itself
/// subscribed), so `LSUB "" foo/%` shows `foo/bar` for a subscribed
/// `foo/bar/baz`. Each name once, in order.
fn lsub_parents(boxes: &[MailboxInfo], patterns: &[String]) -> Vec<String> {
    let subscribed = |n: &str| boxes.iter().any(|b| b.subscribed && b.name == n);
    let mut out: Vec<String> = Vec::new();
    for b in boxes.iter().filter(|b| b.subscribed) {
        let mut end = 0;
        while let Some(i) = b.name[end..].find(DELIMITER) {
            end += i;
            let parent = &b.name[..end];
            if !subscribed(parent)
                && patterns.iter().any(|p| imap::list_matches(p, parent))
                && !out.iter().any(|o| o == parent)
            {
                out.push(parent.to_string());
            }
            end += DELIMITER.len_utf8();
        }
    }
    out.sort();
    out
}

impl Session<'_> {
    pub(super) async fn status_line(
        &self,
        name: &str,
        items: &[StatusItem],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let Some(mb) = self.ctx.store.mailbox(account, name).await? else {
            return Ok(None);
        };
        let c = self.ctx.store.counts(&mb).await?;
        let vals: Vec<String> = items
            .iter()
            .map(|it| {
                let v = match it {
                    StatusItem::Messages => u64::from(c.messages),
                    StatusItem::Recent => u64::from(c.recent),
                    StatusItem::UidNext => u64::from(mb.uidnext),
                    StatusItem::UidValidity => u64::from(mb.uidvalidity),
                    StatusItem::Unseen => u64::from(c.unseen),
                    StatusItem::Size => c.size,
                    StatusItem::HighestModSeq => mb.highest_modseq,
                    StatusItem::Deleted => u64::from(c.deleted),
                };
                format!("{} {v}", it.name())
            })
            .collect();
        Ok(Some(imap::untagged(&format!(
            "STATUS {} ({})",
            imap::quote_mailbox(&self.name_out(name)),
            vals.join(" ")
        ))))
    }

    /// LIST / LSUB: the plan's lines, each followed by its STATUS when
    /// `RETURN (STATUS ...)` asks (RFC 5819), then LSUB's parents.
    pub(super) async fn list(
        &self,
        tag: &str,
        reference: &str,
        patterns: &[String],
        sel: Selection,
        status: &[StatusItem],
        io: &mut Conn,
    ) -> io::Result<()> {
        let word = if sel.lsub { "LSUB" } else { "LIST" };
        // An empty pattern asks for the delimiter (RFC 9051 §6.3.9).
        if patterns.iter().all(String::is_empty) {
            io.write_all(&imap::untagged(&format!("{word} (\\Noselect) \"/\" \"\"")))
                .await?;
            return io
                .write_all(&imap::tagged(tag, Status::Ok, &format!("{word} completed")))
                .await;
        }
        let account = self.account.as_ref().map(|a| a.id).unwrap_or_default();
        let boxes = match self.ctx.store.list_mailboxes(account).await {
            Ok(b) => b,
            Err(e) => return io.write_all(&status_err(tag, &e, word)).await,
        };
        let lost = if sel.subscribed && !sel.lsub {
            match self.ctx.store.lost_subscriptions(account).await {
                Ok(l) => l,
                Err(e) => return io.write_all(&status_err(tag, &e, word)).await,
            }
        } else {
            Vec::new()
        };
        // The wildcards are ASCII, so a UTF-8 pattern is matched in its
        // modified UTF-7 form.
        let full: Vec<String> = patterns
            .iter()
            .map(|p| {
                let p = format!("{reference}{p}");
                if self.rev2 { utf7::encode(&p) } else { p }
            })
            .collect();
        let mut out = Vec::new();
        for l in plan(&boxes, &lost, &full, sel) {
            let extended = if l.childinfo {
                " (\"CHILDINFO\" (\"SUBSCRIBED\"))"
            } else {
                ""
            };
            out.extend(imap::untagged(&format!(
                "{word} ({}) \"/\" {}{extended}",
                l.attrs.join(" "),
                imap::quote_mailbox(&self.name_out(l.name))
            )));
            if !status.is_empty() && l.exists {
                match self.status_line(l.name, status).await {
                    Ok(Some(line)) => out.extend(line),
                    Ok(None) => {}
                    Err(e) => return io.write_all(&status_err(tag, &e, word)).await,
                }
            }
        }
        if sel.lsub {
            for parent in lsub_parents(&boxes, &full) {
                out.extend(imap::untagged(&format!(
                    "LSUB (\\Noselect) \"/\" {}",
                    imap::quote_mailbox(&self.name_out(&parent))
                )));
            }
        }
        io.write_all(&out).await?;
        io.write_all(&imap::tagged(tag, Status::Ok, &format!("{word} completed")))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxes(spec: &[(&str, bool)]) -> Vec<MailboxInfo> {
        spec.iter()
            .zip(1..)
            .map(|(&(name, subscribed), id)| MailboxInfo {
                id,
                name: name.into(),
                special_use: String::new(),
                subscribed,
            })
            .collect()
    }

    fn lines(b: &[MailboxInfo], patterns: &[&str], sel: Selection) -> Vec<String> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        plan(b, &["m/test6".to_string()], &patterns, sel)
            .into_iter()
            .map(|l| {
                let info = if l.childinfo { " CHILDINFO" } else { "" };
                format!("{} ({}){info}", l.name, l.attrs.join(" "))
            })
            .collect()
    }

    /// The mailboxes of imaptest's `listext` group, less the deleted one.
    fn suite() -> Vec<MailboxInfo> {
        boxes(&[
            ("m", false),
            ("m/test1", true),
            ("m/test2", false),
            ("m/test2/test1", true),
            ("m/test3", false),
            ("m/test7/test7", true),
            ("m/test8/test8", true),
            ("m/test8/test9", true),
        ])
    }

    const SUBSCRIBED_RECURSIVE: Selection = Selection {
        subscribed: true,
        special: false,
        recursive: true,
        return_subscribed: false,
        lsub: false,
    };

    #[test]
    fn return_subscribed_marks_subscribed_mailboxes() {
        let sel = Selection {
            return_subscribed: true,
            ..Selection::default()
        };
        assert_eq!(
            lines(&suite(), &["m/%"], sel),
            [
                "m/test1 (\\HasNoChildren \\Subscribed)",
                "m/test2 (\\HasChildren)",
                "m/test3 (\\HasNoChildren)",
            ]
        );
        // Without it, LIST says nothing of subscriptions.
        assert_eq!(
            lines(&suite(), &["m/test1"], Selection::default()),
            ["m/test1 (\\HasNoChildren)"]
        );
    }

    #[test]
    fn recursivematch_gives_parents_childinfo() {
        // m/test2 is not subscribed, its unmatched child is.
        assert_eq!(
            lines(&suite(), &["m/test2%"], SUBSCRIBED_RECURSIVE),
            ["m/test2 (\\HasChildren) CHILDINFO"]
        );
        // A child the patterns match is listed itself; no CHILDINFO.
        assert_eq!(
            lines(
                &suite(),
                &["m/test2", "m/test2/test1"],
                SUBSCRIBED_RECURSIVE
            ),
            ["m/test2/test1 (\\HasNoChildren \\Subscribed)"]
        );
        assert_eq!(
            lines(&suite(), &["m*test7"], SUBSCRIBED_RECURSIVE),
            ["m/test7/test7 (\\HasNoChildren \\Subscribed)"]
        );
        // A parent that does not exist is named, \NonExistent.
        assert_eq!(
            lines(&suite(), &["m*test8"], SUBSCRIBED_RECURSIVE),
            [
                "m/test8 (\\NonExistent \\HasChildren) CHILDINFO",
                "m/test8/test8 (\\HasNoChildren \\Subscribed)",
            ]
        );
        // A subscription whose mailbox was deleted: SUBSCRIBED lists it.
        assert_eq!(
            lines(&suite(), &["m/test6"], SUBSCRIBED_RECURSIVE),
            ["m/test6 (\\NonExistent \\Subscribed)"]
        );
        assert!(lines(&suite(), &["m/test6"], Selection::default()).is_empty());
        // Without RECURSIVEMATCH only the subscribed are listed.
        let sel = Selection {
            recursive: false,
            ..SUBSCRIBED_RECURSIVE
        };
        assert_eq!(lines(&suite(), &["m/test2%"], sel), Vec::<String>::new());
    }
}
