//! Tern's feedback loop, as pure code over bytes:
//!
//! - [`Rules::classify`]: every recipient result (an in-band reply at
//!   RCPT/DATA, or a late DSN's status and diagnostic) into a [`Class`], by
//!   an ordered TOML rules file ([`DEFAULT_RULES`], replaceable with
//!   `TERN_BOUNCE_RULES_FILE`) with the RFC 3463 meaning of the enhanced
//!   code as the fallback;
//! - [`token`]: VERP return paths (`b-<token>@<bounce domain>`) and
//!   unsubscribe tokens, HMAC-SHA256 with the cluster secret
//!   (`TERN_SECRET_FILE`), so neither can be forged;
//! - [`report`]: RFC 3464 delivery status notifications and RFC 5965 ARF
//!   feedback reports parsed into typed results.
//!
//! The services do the I/O: the queue classifies each result it records,
//! ingress hands mail for the bounce domain to [`report::parse`].

pub mod class;
pub mod config;
pub mod csv;
pub mod feedback;
pub mod inbound;
pub mod observation;
pub mod report;
pub mod rules;
pub mod suppress;
pub mod token;
pub mod unsubscribe;

pub use class::Class;
pub use config::BounceConfig;
pub use observation::Observation;
pub use rules::{DEFAULT_RULES, Matched, Rules, RulesError, Verdict};
pub use suppress::{Entry, Reason, SuppressError, Suppressions};
