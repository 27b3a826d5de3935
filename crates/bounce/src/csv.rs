//! CSV for suppression entries (`tern suppress import|export`), RFC 4180:
//! a header line `tenant,campaign,address,reason,at_unix_ms,source`, one
//! entry a line, fields with a comma, quote or line break quoted with `"`
//! (quotes doubled). On import only `address` is required; a missing
//! column takes the command's defaults.

use crate::suppress::{Entry, Reason};

/// The header line export writes.
pub const HEADER: &str = "tenant,campaign,address,reason,at_unix_ms,source";

/// A CSV line that cannot be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CsvError {
    /// The header has no `address` column, or names an unknown column.
    #[error("header: {0}")]
    Header(String),
    /// A field is malformed (unknown reason, bad time, stray quote).
    #[error("line {line}: {message}")]
    Field {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

fn quote(f: &str) -> String {
    if f.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", f.replace('"', "\"\""))
    } else {
        f.to_string()
    }
}

/// One entry as a CSV line (without the line break).
pub fn line(e: &Entry) -> String {
    [
        quote(&e.tenant),
        quote(&e.campaign),
        quote(&e.address),
        e.reason.name().to_string(),
        e.at_unix_ms.to_string(),
        quote(&e.source),
    ]
    .join(",")
}

/// Split one line into fields; `None` on an unterminated or stray quote.
fn fields(line: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_start => quoted = true,
            (false, '"') => return None,
            (true, '"') if chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return None;
                }
            }
            (false, ',') => {
                out.push(std::mem::take(&mut cur));
                at_start = true;
                continue;
            }
            (_, c) => cur.push(c),
        }
        at_start = false;
    }
    if quoted {
        return None;
    }
    out.push(cur);
    Some(out)
}

/// Defaults for columns an import file lacks.
#[derive(Debug, Clone)]
pub struct Defaults {
    /// Tenant when there is no `tenant` column.
    pub tenant: String,
    /// Reason when there is no `reason` column (or it is empty).
    pub reason: Reason,
    /// Time when there is no `at_unix_ms` column.
    pub at_unix_ms: i64,
}

/// Read a CSV file (header first, blank lines skipped) into entries.
pub fn parse(text: &str, d: &Defaults) -> Result<Vec<Entry>, CsvError> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let cols = fields(header).ok_or_else(|| CsvError::Header("stray quote".into()))?;
    let known = [
        "tenant",
        "campaign",
        "address",
        "reason",
        "at_unix_ms",
        "source",
    ];
    if let Some(bad) = cols.iter().find(|c| !known.contains(&c.trim())) {
        return Err(CsvError::Header(format!("unknown column {bad:?}")));
    }
    let at = |name: &str| cols.iter().position(|c| c.trim() == name);
    let addr_col = at("address").ok_or_else(|| CsvError::Header("no address column".into()))?;
    let mut out = Vec::new();
    for (i, l) in lines {
        let err = |message: String| CsvError::Field {
            line: i + 1,
            message,
        };
        let f = fields(l).ok_or_else(|| err("stray or unterminated quote".into()))?;
        let get = |name: &str| {
            at(name)
                .and_then(|c| f.get(c))
                .map(|s| s.trim().to_string())
        };
        let address = f
            .get(addr_col)
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        if !address.contains('@') {
            return Err(err(format!("address {address:?} is not an address")));
        }
        let reason = match get("reason").filter(|r| !r.is_empty()) {
            Some(r) => Reason::parse(&r).ok_or_else(|| err(format!("unknown reason {r:?}")))?,
            None => d.reason,
        };
        let at_unix_ms = match get("at_unix_ms").filter(|t| !t.is_empty()) {
            Some(t) => t
                .parse()
                .map_err(|_| err(format!("at_unix_ms {t:?} is not a number")))?,
            None => d.at_unix_ms,
        };
        out.push(Entry {
            tenant: get("tenant").unwrap_or_else(|| d.tenant.clone()),
            campaign: get("campaign").unwrap_or_default(),
            address,
            reason,
            at_unix_ms,
            source: get("source")
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "import".into()),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            tenant: "acme".into(),
            reason: Reason::Manual,
            at_unix_ms: 7,
        }
    }

    #[test]
    fn export_then_import_is_the_same_entries() {
        let e = Entry {
            tenant: "acme, inc".into(),
            campaign: "say \"hi\"".into(),
            address: "bob@example.com".into(),
            reason: Reason::Complaint,
            at_unix_ms: 1_700_000_000_000,
            source: "arf/<id@x>".into(),
        };
        let text = format!("{HEADER}\n{}\n", line(&e));
        assert_eq!(parse(&text, &defaults()).unwrap(), [e]);
    }

    #[test]
    fn an_address_column_alone_takes_the_defaults() {
        let got = parse(
            "address\nbob@example.com\n\ncarol@example.com\n",
            &defaults(),
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[1].tenant.as_str(), got[1].reason, got[1].at_unix_ms),
            ("acme", Reason::Manual, 7)
        );
        assert_eq!(got[0].source, "import");
    }

    #[test]
    fn bad_lines_name_their_line() {
        assert_eq!(
            parse("address,reason\nbob@example.com,bounced\n", &defaults()),
            Err(CsvError::Field {
                line: 2,
                message: "unknown reason \"bounced\"".into()
            })
        );
        assert!(matches!(
            parse("email\nx@y\n", &defaults()),
            Err(CsvError::Header(_))
        ));
        assert!(matches!(
            parse("address\n\"x@y\n", &defaults()),
            Err(CsvError::Field { line: 2, .. })
        ));
        assert!(matches!(
            parse("address\nnot-an-address\n", &defaults()),
            Err(CsvError::Field { .. })
        ));
    }
}
