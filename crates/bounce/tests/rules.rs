//! Table tests of the built-in rules: each shipped rule against the reply
//! text its provider publishes (or a widely reported bounce), and every rule
//! in the file is exercised by at least one row.

use std::collections::BTreeSet;

use tern_bounce::{Class, Matched, Observation, Rules};

/// (reply as received, expected class, rule that must decide it).
const TABLE: &[(&str, Class, &str)] = &[
    // Gmail (Google Workspace "Gmail SMTP errors and codes").
    (
        "421-4.7.28 [192.0.2.1] Our system has detected an unusual rate of\r\n421-4.7.28 unsolicited mail originating from your IP address. To protect our\r\n421 4.7.28 users from spam, mail sent from your IP address has been temporarily rate limited. - gsmtp",
        Class::RateLimited,
        "gmail-unsolicited-rate-limited",
    ),
    (
        "550-5.7.26 This mail has been blocked because the sender is unauthenticated.\r\n550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.\r\n550 5.7.26 - gsmtp",
        Class::PolicyBlock,
        "gmail-unauthenticated",
    ),
    (
        "450-4.2.1 The user you are trying to contact is receiving mail too quickly. Please\r\n450 4.2.1 resend your message at a later time. - gsmtp",
        Class::RateLimited,
        "gmail-receiving-too-fast",
    ),
    (
        "450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered.",
        Class::RateLimited,
        "gmail-receiving-too-fast",
    ),
    (
        "452-4.2.2 The email account that you tried to reach is over quota. Please direct\r\n452 4.2.2 the recipient to https://support.google.com/mail/?p=OverQuotaTemp - gsmtp",
        Class::MailboxFull,
        "gmail-over-quota",
    ),
    (
        "550 5.1.1 The email account that you tried to reach does not exist",
        Class::InvalidRecipient,
        "gmail-no-such-account",
    ),
    (
        "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n550-5.1.1 double-checking the recipient's email address for typos or\r\n550 5.1.1 unnecessary spaces. - gsmtp",
        Class::InvalidRecipient,
        "gmail-no-such-account",
    ),
    (
        "550 5.2.1 The email account that you tried to reach is disabled. - gsmtp",
        Class::MailboxDisabled,
        "gmail-account-disabled",
    ),
    (
        "421 4.7.0 [192.0.2.1] Our system has detected that this message is suspicious due to the very low reputation of the sending domain. - gsmtp",
        Class::SpamBlock,
        "gmail-reputation",
    ),
    (
        "550-5.7.1 [192.0.2.1] Our system has detected an unusual rate\r\n550-5.7.1 of unsolicited mail originating from your IP address. To protect our\r\n550 5.7.1 users from spam, mail sent from your IP address has been blocked.",
        Class::SpamBlock,
        "gmail-reputation",
    ),
    (
        "550-5.7.1 Our system has detected that this message is\r\n550-5.7.1 likely unsolicited mail. To reduce the amount of spam sent to Gmail,\r\n550 5.7.1 this message has been blocked.",
        Class::SpamBlock,
        "gmail-reputation",
    ),
    (
        "421-4.7.0 This message does not have authentication information or fails to\r\n421 4.7.0 pass authentication checks. To best protect our users from spam, the message has been blocked.",
        Class::PolicyBlock,
        "gmail-authentication",
    ),
    (
        "550 5.7.1 Unauthenticated email from example.org is not accepted due to domain's DMARC policy. - gsmtp",
        Class::PolicyBlock,
        "gmail-authentication",
    ),
    // Microsoft (Outlook.com NDR articles; widely reported bounces).
    (
        "550 5.7.515 Access denied, sending domain example.org does not meet the required authentication level.",
        Class::PolicyBlock,
        "microsoft-authentication-level",
    ),
    (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors.",
        Class::SpamBlock,
        "microsoft-ip-block-list",
    ),
    (
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. (S3140)",
        Class::SpamBlock,
        "microsoft-ip-block-list",
    ),
    (
        "451 4.7.650 The mail server [192.0.2.1] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://aka.ms/postmaster (S775)",
        Class::RateLimited,
        "microsoft-reputation-rate-limited",
    ),
    (
        "550 5.4.1 Recipient address rejected: Access denied. AS(201806281) [BN1NAM02FT022.eop-nam02.prod.protection.outlook.com]",
        Class::InvalidRecipient,
        "microsoft-edge-blocking",
    ),
    (
        "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup",
        Class::InvalidRecipient,
        "microsoft-recipient-not-found",
    ),
    (
        "550 5.7.0 (COL0-MC6-F31) Unfortunately, messages from (192.0.2.1) on behalf of (example.org) could not be delivered due to domain owner policy restrictions.",
        Class::PolicyBlock,
        "microsoft-domain-owner-policy",
    ),
    // Yahoo / AOL (Yahoo Sender Hub error codes; Yahoo help articles).
    (
        "421 4.7.0 [TS01] Messages from 192.0.2.1 temporarily deferred due to user complaints - 4.16.55.1",
        Class::RateLimited,
        "yahoo-temporarily-deferred",
    ),
    (
        "421 4.7.0 [TS02] Messages from 192.0.2.1 temporarily deferred due to user complaints",
        Class::RateLimited,
        "yahoo-temporarily-deferred",
    ),
    (
        "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints - 4.16.55.1",
        Class::RateLimited,
        "yahoo-temporarily-deferred",
    ),
    (
        "421 4.7.1 [TS03] All messages from 192.0.2.1 permanently deferred; Retrying will NOT succeed.",
        Class::SpamBlock,
        "yahoo-permanently-deferred",
    ),
    (
        "553 5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed.",
        Class::SpamBlock,
        "yahoo-permanently-deferred",
    ),
    (
        "554 5.7.9 Message not accepted for policy reasons.  See https://senders.yahooinc.com/error-codes",
        Class::PolicyBlock,
        "yahoo-policy",
    ),
    (
        "554 delivery error: dd This user doesn't have a yahoo.com account (bob@yahoo.com) [0] - mta1.mail.example",
        Class::InvalidRecipient,
        "yahoo-no-such-account",
    ),
    (
        "554 delivery error: dd Sorry, your message to bob@yahoo.com cannot be delivered. This account is over quota.",
        Class::MailboxFull,
        "yahoo-over-quota",
    ),
    (
        "451 VS1-IP Excessive unknown recipients - possible Open Relay (#4.1.8)",
        Class::SpamBlock,
        "yahoo-excessive-unknown-recipients",
    ),
    // Generic MTA texts (Postfix's own, as its DSNs write them).
    (
        "450 4.4.3 Host or domain name not found. Name service error for name=example.test type=MX: Host not found, try again",
        Class::NetworkFailure,
        "dns-temporary",
    ),
    (
        "550 5.4.4 Host or domain name not found. Name service error for name=nx.example type=A: Host not found",
        Class::BadDomain,
        "domain-not-found",
    ),
    (
        "552 5.2.2 <bob@example.org>: Recipient address rejected: Mailbox full",
        Class::MailboxFull,
        "mailbox-full",
    ),
    (
        "552 5.3.4 Message size exceeds fixed limit",
        Class::MessageTooLarge,
        "message-too-large",
    ),
    (
        "550 5.1.1 <bob@example.org>: Recipient address rejected: User unknown in virtual mailbox table",
        Class::InvalidRecipient,
        "user-unknown",
    ),
    (
        "550 No such user here",
        Class::InvalidRecipient,
        "user-unknown",
    ),
    (
        "550 5.7.1 SPF check failed for example.org",
        Class::PolicyBlock,
        "authentication",
    ),
    (
        "421 Too many concurrent SMTP connections from this IP address; please try again later",
        Class::RateLimited,
        "rate",
    ),
    (
        "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        Class::SpamBlock,
        "spam-or-reputation",
    ),
    (
        "451 Resources temporarily unavailable. Please try again later [#4.16.1].",
        Class::NetworkFailure,
        "network",
    ),
];

#[test]
fn every_shipped_rule_classifies_its_provider_text() {
    let rules = Rules::builtin();
    let mut used = BTreeSet::new();
    for (reply, want, rule) in TABLE {
        let obs = Observation::parse(reply);
        let v = rules.classify(&obs);
        assert_eq!(
            (v.class, v.matched),
            (*want, Matched::Rule(rule)),
            "{reply:?} read as {obs:?}"
        );
        used.insert(*rule);
    }
    let shipped: BTreeSet<&str> = rules.rules().iter().map(|r| r.name.as_str()).collect();
    let untested: Vec<_> = shipped.difference(&used).collect();
    assert!(
        untested.is_empty(),
        "rules without a table row: {untested:?}"
    );
}

#[test]
fn only_dead_addresses_suppress() {
    let rules = Rules::builtin();
    let suppresses = |r: &str| rules.classify(&Observation::parse(r)).suppresses();
    assert!(suppresses(
        "550 5.1.1 The email account that you tried to reach does not exist"
    ));
    assert!(suppresses(
        "550 5.4.4 Host or domain name not found. Name service error for name=nx.example type=A: Host not found"
    ));
    // Reputation and policy blocks, throttles and full mailboxes never do,
    // however permanent the reply.
    for r in [
        "550 5.7.1 Unfortunately, messages from [192.0.2.1] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150).",
        "550 5.7.26 This mail has been blocked because the sender is unauthenticated.",
        "550 5.7.515 Access denied, sending domain example.org does not meet the required authentication level.",
        "554 5.7.9 Message not accepted for policy reasons.",
        "552 5.2.2 Mailbox full",
        "421 4.7.28 unusual rate of unsolicited mail",
        // A temporary "unknown user" (Postfix soft_bounce) is not final.
        "450 4.1.1 <bob@example.org>: Recipient address rejected: User unknown in local recipient table",
    ] {
        assert!(!suppresses(r), "{r}");
    }
}

#[test]
fn in_band_results_and_operator_rules_file() {
    // What delivery publishes: code, enhanced, reply as separate fields.
    let r = tern_proto::RecipientResult {
        address: "bob@example.org".into(),
        code: 550,
        enhanced: "5.7.515".into(),
        reply: "Access denied, sending domain example.org does not meet the required authentication level.".into(),
        ..Default::default()
    };
    let v = Rules::builtin().classify(&Observation::from_result(&r));
    assert_eq!((v.class, v.permanent), (Class::PolicyBlock, true));
    // A connection failure before any reply (code 0).
    let r = tern_proto::RecipientResult {
        code: 0,
        enhanced: "4.4.1".into(),
        reply: "connect to 192.0.2.1:25: connection refused".into(),
        ..Default::default()
    };
    assert_eq!(
        Rules::builtin()
            .classify(&Observation::from_result(&r))
            .class,
        Class::NetworkFailure
    );

    // An operator's file replaces the built-in rules entirely.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, "[[rule]]\nname = \"acme-full\"\nclass = \"mailbox_full\"\ncode = [550, 551]\ntext = \"box is stuffed\"\n").expect("write");
    let rules = Rules::load(Some(&path)).expect("load");
    let v = rules.classify(&Observation::parse("550 sorry, box is STUFFED"));
    assert_eq!(
        (v.class, v.matched),
        (Class::MailboxFull, Matched::Rule("acme-full"))
    );
    // No built-in provider rule any more: 5.7.26 falls back to RFC 3463.
    let v = rules.classify(&Observation::parse("550 5.7.26 unauthenticated"));
    assert_eq!(v.class, Class::PolicyBlock);
    assert!(matches!(v.matched, Matched::Rfc3463(_)));
}
