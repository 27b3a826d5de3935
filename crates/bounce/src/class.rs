//! The classes a recipient result falls into, with stable names for events
//! and metrics.

use std::fmt;
use std::str::FromStr;

/// Why a recipient was not (yet) delivered. The snake_case name
/// ([`Class::name`]) is stable: it appears in `bounced`/`deferred` events, in
/// metrics labels and in the rules file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// The mailbox does not exist (`5.1.1`, "user unknown"). Hard: suppresses.
    InvalidRecipient,
    /// The recipient's domain does not exist or accepts no mail (`5.1.2`,
    /// null MX `5.1.10`). Hard: suppresses.
    BadDomain,
    /// The mailbox exists but is disabled or inactive (`5.2.1`). Not hard:
    /// accounts are re-enabled, and the provider may mean the sender.
    MailboxDisabled,
    /// The mailbox is over quota (`4.2.2`, `5.2.2`).
    MailboxFull,
    /// The message is larger than the receiver takes (`5.2.3`, `5.3.4`).
    MessageTooLarge,
    /// Refused as spam, or for the sending IP's/domain's reputation (block
    /// lists, Microsoft's `S3150`, Yahoo's `TS03`). The sender's problem:
    /// never suppresses the recipient.
    SpamBlock,
    /// Refused by policy or for failed authentication (SPF/DKIM/DMARC:
    /// Gmail `5.7.26`, Microsoft `5.7.515`, Yahoo `5.7.9`). Never suppresses.
    PolicyBlock,
    /// The receiver throttles the sender (Gmail `4.7.28`, Yahoo `TS01`/`TS02`,
    /// `4.2.1` receiving too fast).
    RateLimited,
    /// A temporary DNS, network or receiving-system failure (`4.4.x`,
    /// `4.3.x`, timeouts, connection refused).
    NetworkFailure,
    /// Nothing above fits.
    Other,
}

impl Class {
    /// Every class, in documentation order.
    pub const ALL: [Class; 10] = [
        Class::InvalidRecipient,
        Class::BadDomain,
        Class::MailboxDisabled,
        Class::MailboxFull,
        Class::MessageTooLarge,
        Class::SpamBlock,
        Class::PolicyBlock,
        Class::RateLimited,
        Class::NetworkFailure,
        Class::Other,
    ];

    /// The stable snake_case name used in events, metrics and the rules file.
    pub const fn name(self) -> &'static str {
        match self {
            Class::InvalidRecipient => "invalid_recipient",
            Class::BadDomain => "bad_domain",
            Class::MailboxDisabled => "mailbox_disabled",
            Class::MailboxFull => "mailbox_full",
            Class::MessageTooLarge => "message_too_large",
            Class::SpamBlock => "spam_block",
            Class::PolicyBlock => "policy_block",
            Class::RateLimited => "rate_limited",
            Class::NetworkFailure => "network_failure",
            Class::Other => "other",
        }
    }

    /// True only for the classes that say the address itself is dead
    /// (invalid recipient, bad domain): a permanent failure of these
    /// suppresses the recipient. Reputation and policy blocks never do.
    pub const fn is_hard(self) -> bool {
        matches!(self, Class::InvalidRecipient | Class::BadDomain)
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A class name that is not one of [`Class::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown bounce class {0:?}; expected one of {list}", list = class_list())]
pub struct UnknownClass(pub String);

fn class_list() -> String {
    Class::ALL.map(Class::name).join(", ")
}

impl FromStr for Class {
    type Err = UnknownClass;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Class::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownClass(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip_and_only_two_are_hard() {
        for c in Class::ALL {
            assert_eq!(c.name().parse::<Class>(), Ok(c));
        }
        let hard: Vec<_> = Class::ALL.into_iter().filter(|c| c.is_hard()).collect();
        assert_eq!(hard, [Class::InvalidRecipient, Class::BadDomain]);
        let err = "spam".parse::<Class>().unwrap_err().to_string();
        assert!(err.contains("spam_block"), "{err}");
    }
}
