//! The rules file: an ordered list of rules, each a set of conditions on the
//! enhanced code, the reply code and the text; the first rule whose
//! conditions all hold gives the class. When none does, the RFC 3463
//! class/subject/detail decides ([`rfc3463`]), then the bare reply code.
//!
//! ```toml
//! [[rule]]
//! name = "gmail-unsolicited-rate"   # shown by `tern bounce classify`
//! class = "rate_limited"            # a Class name
//! enhanced = "4.7.28"               # prefix by component: "5", "5.7", "5.7.26"
//! code = [421]                      # one code or a list
//! text = "unusual rate"             # a regex, case-insensitive
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use regex::{Regex, RegexBuilder};
use serde::Deserialize;
use tern_smtp::Enhanced;

use crate::class::{Class, UnknownClass};
use crate::observation::Observation;

/// The rules shipped with Tern (`crates/bounce/rules/default.toml`).
pub const DEFAULT_RULES: &str = include_str!("../rules/default.toml");

/// What is wrong with one rule.
#[derive(Debug, thiserror::Error)]
pub enum RuleProblem {
    /// `class` is not a known class name.
    #[error(transparent)]
    UnknownClass(#[from] UnknownClass),
    /// `enhanced` is not a prefix of an RFC 3463 code.
    #[error("enhanced {0:?} is not an RFC 3463 code or prefix like \"5\", \"5.7\" or \"5.7.26\"")]
    BadEnhanced(String),
    /// A `code` outside 200-599.
    #[error("code {0} is not an SMTP reply code (200-599)")]
    BadCode(u16),
    /// `text` is not a valid regular expression.
    #[error("text is not a valid regular expression: {0}")]
    BadRegex(#[from] regex::Error),
    /// The rule has none of `enhanced`, `code`, `text`, so it would match everything.
    #[error("a rule needs at least one of enhanced, code or text")]
    NoCondition,
    /// Two rules have the same name.
    #[error("a rule with this name comes earlier in the file")]
    DuplicateName,
}

/// A rules file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("bounce rules file {path} (TERN_BOUNCE_RULES_FILE): {source}")]
    Read {
        /// The path given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not TOML, not the expected shape, or a key that rules do not have
    /// (the message names it).
    #[error("{origin}:{line}: {message}")]
    Syntax {
        /// The file's path, or "built-in rules".
        origin: String,
        /// 1-based line of the problem.
        line: usize,
        /// What the TOML reader said.
        message: String,
    },
    /// One rule is invalid.
    #[error("{origin}:{line}: rule {name:?}: {problem}")]
    Rule {
        /// The file's path, or "built-in rules".
        origin: String,
        /// 1-based line where the rule starts.
        line: usize,
        /// The rule's name.
        name: String,
        /// What is wrong.
        problem: RuleProblem,
    },
}

impl RulesError {
    /// The error without the file's name, for callers that name it already.
    pub fn detail(&self) -> String {
        match self {
            RulesError::Read { source, .. } => source.to_string(),
            RulesError::Syntax { line, message, .. } => format!("line {line}: {message}"),
            RulesError::Rule {
                line,
                name,
                problem,
                ..
            } => format!("line {line}: rule {name:?}: {problem}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    rule: Vec<toml::Spanned<RuleDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDef {
    name: String,
    class: String,
    enhanced: Option<String>,
    code: Option<Codes>,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Codes {
    One(u16),
    Many(Vec<u16>),
}

/// An enhanced-code condition: the class, and optionally subject and detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedPrefix {
    class: u8,
    subject: Option<u16>,
    detail: Option<u16>,
}

impl EnhancedPrefix {
    /// Parse `"5"`, `"5.7"` or `"5.7.26"`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('.');
        let num = |p: Option<&str>| -> Option<Option<u16>> {
            match p {
                None => Some(None),
                Some(p)
                    if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    p.parse().ok().map(Some)
                }
                Some(_) => None,
            }
        };
        let class = match parts.next()? {
            "2" => 2,
            "4" => 4,
            "5" => 5,
            _ => return None,
        };
        let subject = num(parts.next())?;
        let detail = num(parts.next())?;
        if parts.next().is_some() || (subject.is_none() && detail.is_some()) {
            return None;
        }
        Some(EnhancedPrefix {
            class,
            subject,
            detail,
        })
    }

    /// Does `e` start with this prefix, component by component (so `5.7.1`
    /// matches `5.7.1` but not `5.7.15`)?
    pub fn matches(&self, e: Enhanced) -> bool {
        self.class == e.class
            && self.subject.is_none_or(|s| s == e.subject)
            && self.detail.is_none_or(|d| d == e.detail)
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// The rule's name, unique in its file.
    pub name: String,
    /// The class it gives.
    pub class: Class,
    enhanced: Option<EnhancedPrefix>,
    codes: Vec<u16>,
    text: Option<Regex>,
}

impl Rule {
    /// Do all of this rule's conditions hold for `obs`?
    pub fn matches(&self, obs: &Observation) -> bool {
        self.enhanced
            .is_none_or(|p| obs.enhanced.is_some_and(|e| p.matches(e)))
            && (self.codes.is_empty() || obs.code.is_some_and(|c| self.codes.contains(&c)))
            && self.text.as_ref().is_none_or(|r| r.is_match(&obs.text))
    }

    fn compile(def: RuleDef) -> Result<Rule, (String, RuleProblem)> {
        let fail = |p: RuleProblem| (def.name.clone(), p);
        let class = def.class.parse::<Class>().map_err(|e| fail(e.into()))?;
        let enhanced = match &def.enhanced {
            Some(s) => Some(
                EnhancedPrefix::parse(s)
                    .ok_or_else(|| fail(RuleProblem::BadEnhanced(s.clone())))?,
            ),
            None => None,
        };
        let codes = match def.code {
            None => Vec::new(),
            Some(Codes::One(c)) => vec![c],
            Some(Codes::Many(cs)) => cs,
        };
        if let Some(&c) = codes.iter().find(|c| !(200..600).contains(*c)) {
            return Err(fail(RuleProblem::BadCode(c)));
        }
        let text = match &def.text {
            Some(t) => Some(
                RegexBuilder::new(t)
                    .case_insensitive(true)
                    .build()
                    .map_err(|e| fail(e.into()))?,
            ),
            None => None,
        };
        if enhanced.is_none() && codes.is_empty() && text.is_none() {
            return Err(fail(RuleProblem::NoCondition));
        }
        Ok(Rule {
            name: def.name,
            class,
            enhanced,
            codes,
            text,
        })
    }
}

/// What decided a [`Verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Matched<'r> {
    /// The named rule of the rules file.
    Rule(&'r str),
    /// No rule: the RFC 3463 meaning of this enhanced code.
    Rfc3463(Enhanced),
    /// No rule and no enhanced code: the reply code's meaning (RFC 5321 §4.2.3).
    ReplyCode(u16),
    /// Nothing to go on.
    Nothing,
}

impl fmt::Display for Matched<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Matched::Rule(name) => write!(f, "rule {name}"),
            Matched::Rfc3463(e) => write!(f, "RFC 3463 meaning of {e}"),
            Matched::ReplyCode(c) => write!(f, "reply code {c}"),
            Matched::Nothing => f.write_str("no rule, no code"),
        }
    }
}

/// The classification of one recipient result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'r> {
    /// The class.
    pub class: Class,
    /// What decided it.
    pub matched: Matched<'r>,
    /// Whether the failure was permanent (5xx / `5.x.x`).
    pub permanent: bool,
}

impl Verdict<'_> {
    /// Should the recipient be put on the suppression list? Only for a
    /// permanent failure of a hard class ([`Class::is_hard`]): a `4.1.1`
    /// (a receiver's soft bounce) or any reputation/policy block never does.
    pub fn suppresses(&self) -> bool {
        self.permanent && self.class.is_hard()
    }
}

/// An ordered, compiled rules file.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Rule>,
}

static BUILTIN: LazyLock<Rules> = LazyLock::new(|| {
    Rules::parse(DEFAULT_RULES, "built-in rules").expect("the built-in rules parse (tested)")
});

impl Rules {
    /// The shipped default rules.
    pub fn builtin() -> &'static Rules {
        &BUILTIN
    }

    /// The rules file at `path`, or the built-in rules when `None`.
    pub fn load(path: Option<&Path>) -> Result<Rules, RulesError> {
        let Some(path) = path else {
            return Ok(Self::builtin().clone());
        };
        let text = std::fs::read_to_string(path).map_err(|source| RulesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and compile rules text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Rules, RulesError> {
        let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
        let file: FileDef = toml::from_str(text).map_err(|e| RulesError::Syntax {
            origin: origin.to_string(),
            line: e.span().map_or(1, |s| line_of(s.start)),
            message: e.message().trim().to_string(),
        })?;
        let mut rules: Vec<Rule> = Vec::with_capacity(file.rule.len());
        for spanned in file.rule {
            let line = line_of(spanned.span().start);
            let err = |name: String, problem| RulesError::Rule {
                origin: origin.to_string(),
                line,
                name,
                problem,
            };
            let rule = Rule::compile(spanned.into_inner()).map_err(|(n, p)| err(n, p))?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(err(rule.name, RuleProblem::DuplicateName));
            }
            rules.push(rule);
        }
        Ok(Rules { rules })
    }

    /// The rules in order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Classify one result: the first matching rule, else the RFC 3463
    /// meaning of the enhanced code, else the reply code's.
    pub fn classify(&self, obs: &Observation) -> Verdict<'_> {
        let permanent = obs.is_permanent();
        let (class, matched) = match self.rules.iter().find(|r| r.matches(obs)) {
            Some(rule) => (rule.class, Matched::Rule(rule.name.as_str())),
            None => match (obs.enhanced, obs.code) {
                (Some(e), _) => (rfc3463(e), Matched::Rfc3463(e)),
                (None, Some(c)) => (reply_code(c), Matched::ReplyCode(c)),
                (None, None) => (Class::Other, Matched::Nothing),
            },
        };
        Verdict {
            class,
            matched,
            permanent,
        }
    }
}

/// The class an enhanced code means by itself (RFC 3463 §3, RFC 7505 §4.2
/// for `X.1.10`, RFC 7372 for `X.7.20`-`X.7.29`). Temporary codes of
/// subjects 3 and 4 (mail system, network) are network failures.
pub fn rfc3463(e: Enhanced) -> Class {
    let temporary = e.class == 4;
    match (e.subject, e.detail) {
        // Bad destination mailbox, bad syntax, moved with no forwarding address.
        (1, 1 | 3 | 6) => Class::InvalidRecipient,
        // Bad destination system; the destination publishes a null MX.
        (1, 2 | 10) => Class::BadDomain,
        // Bad sender address: the sender's problem.
        (1, 7 | 8) => Class::PolicyBlock,
        (2, 1) => Class::MailboxDisabled,
        (2, 2) => Class::MailboxFull,
        (2, 3) | (3, 4) => Class::MessageTooLarge,
        (3 | 4, _) if temporary => Class::NetworkFailure,
        // Unable to route (no MX/A for the domain), permanent.
        (4, 4) => Class::BadDomain,
        (4, 5) => Class::NetworkFailure,
        (5, 3) => Class::RateLimited,
        (7, _) => Class::PolicyBlock,
        _ => Class::Other,
    }
}

/// The class a bare reply code means (RFC 5321 §4.2.3): only 421 (service
/// not available) and 451 (local error) say anything beyond "failed".
pub fn reply_code(code: u16) -> Class {
    match code {
        421 | 451 => Class::NetworkFailure,
        _ => Class::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_rules_parse() {
        assert!(Rules::builtin().rules().len() > 10);
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[[rule]]\nname = \"a\"\nclass = \"other\"\ncode = 550\ntexts = \"x\"\n";
        let err = Rules::parse(text, "my.toml").unwrap_err().to_string();
        assert!(err.starts_with("my.toml:5:"), "{err}");
        assert!(err.contains("texts"), "{err}");
        let err = Rules::parse("rules = []\n", "my.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("my.toml:1:") && err.contains("rules"), "{err}");
    }

    #[test]
    fn bad_rules_are_named() {
        let cases = [
            ("class = \"spam\"\ncode = 550", "unknown bounce class"),
            ("class = \"other\"\nenhanced = \"5.x\"", "not an RFC 3463"),
            ("class = \"other\"\ncode = 600", "not an SMTP reply code"),
            ("class = \"other\"\ntext = \"(\"", "regular expression"),
            ("class = \"other\"", "at least one of"),
        ];
        for (body, want) in cases {
            let text = format!("# a comment\n[[rule]]\nname = \"r\"\n{body}\n");
            let err = Rules::parse(&text, "f").unwrap_err().to_string();
            assert!(err.starts_with("f:2: rule \"r\""), "{err}");
            assert!(err.contains(want), "{body}: {err}");
        }
        let dup = "[[rule]]\nname = \"r\"\nclass = \"other\"\ncode = 550\n\n[[rule]]\nname = \"r\"\nclass = \"other\"\ncode = 551\n";
        let err = Rules::parse(dup, "f").unwrap_err().to_string();
        assert!(err.starts_with("f:6:") && err.contains("earlier"), "{err}");
    }

    #[test]
    fn prefixes_match_by_component() {
        let p = EnhancedPrefix::parse("5.7.1").unwrap();
        assert!(p.matches(Enhanced::new(5, 7, 1)));
        assert!(!p.matches(Enhanced::new(5, 7, 15)));
        let p = EnhancedPrefix::parse("5.7").unwrap();
        assert!(p.matches(Enhanced::new(5, 7, 515)));
        assert!(!p.matches(Enhanced::new(4, 7, 1)));
        assert!(EnhancedPrefix::parse("5.").is_none());
        assert!(EnhancedPrefix::parse("3.1.1").is_none());
    }

    #[test]
    fn fallback_is_rfc3463_then_reply_code() {
        let rules = Rules::parse("", "empty").unwrap();
        let v = rules.classify(&Observation::parse("550 5.1.1 whatever"));
        assert_eq!(
            (v.class, v.matched),
            (
                Class::InvalidRecipient,
                Matched::Rfc3463(Enhanced::new(5, 1, 1))
            )
        );
        assert!(v.suppresses());
        let v = rules.classify(&Observation::parse("450 4.1.1 whatever"));
        assert_eq!(v.class, Class::InvalidRecipient);
        assert!(!v.suppresses(), "a temporary 4.1.1 never suppresses");
        assert_eq!(
            rules.classify(&Observation::parse("421 go away")).class,
            Class::NetworkFailure
        );
        assert_eq!(
            rules.classify(&Observation::parse("4.4.1 refused")).class,
            Class::NetworkFailure
        );
        assert_eq!(
            rules.classify(&Observation::parse("554 no")).matched,
            Matched::ReplyCode(554)
        );
        assert_eq!(
            rules.classify(&Observation::parse("huh")).matched,
            Matched::Nothing
        );
    }
}
