//! Property tests of the VERP and unsubscribe tokens: they roundtrip, any
//! altered character is rejected, and local parts are RFC 5321 dot-atoms of
//! at most 64 octets.

use proptest::prelude::*;
use tern_bounce::token::{self, LocalPart, Secret, TokenError, UnsubscribeFields, VerpFields};

fn secret(seed: u8) -> Secret {
    Secret::from_bytes(&[seed.max(1); 40]).expect("40-byte secret")
}

fn fields() -> impl Strategy<Value = VerpFields> {
    (any::<u32>(), any::<u32>(), any::<u128>(), any::<u32>()).prop_map(
        |(tenant, campaign, message, recipient)| VerpFields {
            tenant,
            campaign,
            message,
            recipient,
        },
    )
}

/// RFC 5321 §4.1.2 Dot-string of atext (RFC 5322 §3.2.3).
fn is_dot_atom(s: &str) -> bool {
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    !s.is_empty() && s.split('.').all(|a| !a.is_empty() && a.bytes().all(atext))
}

/// Flip one byte of `s` to another printable ASCII byte.
fn flipped(s: &str, at: usize, to: u8) -> Option<String> {
    let mut b = s.as_bytes().to_vec();
    let i = at % b.len();
    let new = 0x21 + (to % 94);
    if b[i].eq_ignore_ascii_case(&new) {
        return None; // same token up to case, which is accepted by design
    }
    b[i] = new;
    String::from_utf8(b).ok()
}

proptest! {
    #[test]
    fn bounce_tokens_roundtrip_and_are_local_parts(f in fields()) {
        let s = secret(7);
        let lp = token::bounce_local_part(&s, &f);
        prop_assert!(lp.len() <= 64, "{} octets: {lp}", lp.len());
        prop_assert!(is_dot_atom(&lp), "{lp}");
        prop_assert_eq!(token::parse_local_part(&s, &lp), Ok(LocalPart::Bounce(f)));
        let addr = token::bounce_address(&s, &f, "bounces.example.com");
        prop_assert_eq!(token::parse_local_part(&s, &addr), Ok(LocalPart::Bounce(f)));
        // MTAs that upper-case local parts do not break it.
        prop_assert_eq!(token::parse_local_part(&s, &lp.to_uppercase()), Ok(LocalPart::Bounce(f)));
        let u = token::unsubscribe_local_part(&s, &f);
        prop_assert!(u.len() <= 64 && is_dot_atom(&u));
        prop_assert_eq!(token::parse_local_part(&s, &u), Ok(LocalPart::Unsubscribe(f)));
    }

    #[test]
    fn any_altered_byte_is_rejected(f in fields(), at in any::<usize>(), to in any::<u8>()) {
        let s = secret(7);
        let lp = token::bounce_local_part(&s, &f);
        if let Some(bad) = flipped(&lp, at, to) {
            prop_assert!(token::parse_local_part(&s, &bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn another_secret_or_kind_does_not_verify(f in fields()) {
        let lp = token::bounce_local_part(&secret(7), &f);
        prop_assert_eq!(token::parse_local_part(&secret(8), &lp), Err(TokenError::BadSignature));
        // A bounce token relabelled as an unsubscribe one is not one.
        let relabelled = format!("u-{}", &lp[2..]);
        prop_assert_eq!(token::parse_local_part(&secret(7), &relabelled), Err(TokenError::BadSignature));
    }

    #[test]
    fn unsubscribe_url_tokens_roundtrip_and_reject_changes(
        tenant in any::<u32>(), list in any::<u32>(),
        user in "[a-z0-9._+-]{1,40}", domain in "[a-z0-9-]{1,20}\\.[a-z]{2,6}",
        at in any::<usize>(), to in any::<u8>(),
    ) {
        let s = secret(3);
        let f = UnsubscribeFields { tenant, list, recipient: format!("{user}@{domain}") };
        let t = token::unsubscribe_token(&s, &f).expect("short address");
        prop_assert!(t.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()), "URL-safe: {t}");
        prop_assert_eq!(token::parse_unsubscribe_token(&s, &t), Ok(f));
        if let Some(bad) = flipped(&t, at, to) {
            prop_assert!(token::parse_unsubscribe_token(&s, &bad).is_err(), "{bad} accepted");
        }
        prop_assert_eq!(token::parse_unsubscribe_token(&secret(4), &t), Err(TokenError::BadSignature));
    }
}

#[test]
fn foreign_and_truncated_local_parts() {
    let s = secret(1);
    assert_eq!(
        token::parse_local_part(&s, "alice@example.com"),
        Err(TokenError::NotOurs)
    );
    assert_eq!(
        token::parse_local_part(&s, "b-"),
        Err(TokenError::Malformed)
    );
    let lp = token::bounce_local_part(
        &s,
        &VerpFields {
            tenant: 1,
            campaign: 2,
            message: 3,
            recipient: 4,
        },
    );
    assert!(token::parse_local_part(&s, &lp[..lp.len() - 1]).is_err());
    assert!(
        token::unsubscribe_token(
            &s,
            &UnsubscribeFields {
                tenant: 1,
                list: 0,
                recipient: "x".repeat(300)
            }
        )
        .is_none()
    );
}
