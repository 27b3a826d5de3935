//! Text as a reader sees it, for SEARCH: charsets converted to UTF-8,
//! RFC 2047 encoded-words decoded, and case-insensitive substring matching
//! over the result.
//!
//! Everything here is total and bounded by its input: no input panics, and
//! decoding allocates only when the text differs from its raw bytes.

use std::borrow::Cow;

use encoding_rs::Encoding;

/// The encoding a MIME `charset` label names, by the WHATWG Encoding
/// Standard's labels (so `us-ascii`, `iso-8859-1` and `latin1` are
/// windows-1252, its superset). An RFC 2231 language suffix (`utf-8*en`)
/// and surrounding quotes are ignored. `None` when the label is unknown,
/// or names the standard's `replacement` encoding (which would turn the
/// whole text into one U+FFFD).
pub fn encoding(label: &[u8]) -> Option<&'static Encoding> {
    let label = label.split(|&b| b == b'*').next().unwrap_or_default();
    let label = label.trim_ascii();
    let label = label
        .strip_prefix(b"\"")
        .and_then(|l| l.strip_suffix(b"\""))
        .unwrap_or(label);
    Encoding::for_label(label).filter(|e| *e != encoding_rs::REPLACEMENT)
}

/// Can an ASCII search string be looked for in the raw bytes of text in
/// this charset? True when decoding keeps every ASCII octet and turns no
/// other octet into ASCII: UTF-8, the single-byte charsets, and unknown
/// labels (whose bytes are taken as they are, see [`to_utf8`]).
pub fn ascii_transparent(label: &[u8]) -> bool {
    // The usual ones, without a look-up.
    if [&b"utf-8"[..], b"us-ascii", b"iso-8859-1"]
        .iter()
        .any(|l| label.eq_ignore_ascii_case(l))
    {
        return true;
    }
    encoding(label).is_none_or(|e| e == encoding_rs::UTF_8 || e.is_single_byte())
}

/// `bytes` in the charset `label` as UTF-8 (malformed sequences become
/// U+FFFD). An unknown label takes the bytes as they are (UTF-8, or U+FFFD
/// where they are not). Borrowed when the bytes already are that text.
pub fn to_utf8<'a>(label: &[u8], bytes: &'a [u8]) -> Cow<'a, str> {
    match encoding(label) {
        Some(e) => e.decode_without_bom_handling(bytes).0,
        None => String::from_utf8_lossy(bytes),
    }
}

/// Raw header text (outside encoded-words) as UTF-8: the bytes as they are
/// when they are UTF-8 (RFC 6532), else taken as windows-1252, the usual
/// charset of unlabelled 8-bit headers.
fn raw_header_text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => {
            encoding_rs::WINDOWS_1252
                .decode_without_bom_handling(bytes)
                .0
        }
    }
}

/// Longest charset name read in an encoded-word.
const MAX_CHARSET: usize = 64;

/// One encoded-word `=?charset?X?text?=` (RFC 2047 §2) at the start of
/// `s`: its charset label, its decoded octets and its length. `None` when
/// it is not a well-formed encoded-word: no terminator before white space
/// or the end, an encoding other than `B` or `Q`, or malformed base64.
fn encoded_word(s: &[u8]) -> Option<(&[u8], Vec<u8>, usize)> {
    let rest = s.strip_prefix(b"=?")?;
    let q = rest.iter().take(MAX_CHARSET + 1).position(|&b| b == b'?')?;
    let charset = &rest[..q];
    if charset.is_empty() || charset.iter().any(|b| !b.is_ascii_graphic()) {
        return None;
    }
    let rest = &rest[q + 1..];
    let (&enc, rest) = rest.split_first()?;
    let rest = rest.strip_prefix(b"?")?;
    // The encoded text holds no `?` and no white space (§5), and ends at `?=`.
    let end = rest
        .iter()
        .position(|&b| b == b'?' || !b.is_ascii_graphic())?;
    if rest.get(end..end + 2) != Some(b"?=") {
        return None;
    }
    let text = &rest[..end];
    let octets = match enc {
        b'B' | b'b' => crate::base64_decode(text)?,
        b'Q' | b'q' => decode_q(text),
        _ => return None,
    };
    let len = 2 + q + 1 + 2 + end + 2;
    Some((charset, octets, len))
}

/// The `Q` encoding (RFC 2047 §4.2): `_` is a space, `=XX` an octet; a
/// malformed `=` is kept as it is.
fn decode_q(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let octet = match text[i] {
            b'_' => b' ',
            b'=' => match crate::mime::hex_octet(&text[i + 1..]) {
                Some(o) => {
                    i += 2;
                    o
                }
                None => b'=',
            },
            b => b,
        };
        out.push(octet);
        i += 1;
    }
    out
}

/// Where the first `=?` (the start of an encoded-word) is in `s`. A scan
/// for `=`, with nothing to set up: it runs once per header value.
fn word_start(s: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'=', s).find(|&i| s.get(i + 1) == Some(&b'?'))
}

/// Decode the RFC 2047 encoded-words in a header field value, or in a
/// whole header block: B and Q (§4), in any charset [`to_utf8`] knows
/// (an unknown one is taken as raw octets). White space between two
/// adjacent encoded-words is dropped (§6.2), and adjacent words in the
/// same charset are decoded together, so a character split across two
/// words survives. A malformed encoded-word is left as it is, and so is
/// the text around the words (see [`raw_header_text`] for 8-bit text).
/// Encoded-words are recognised anywhere, also inside quoted strings and
/// next to other text, as mail readers do. Borrowed when the value holds
/// no encoded-word and is UTF-8.
pub fn decode_header(value: &[u8]) -> Cow<'_, str> {
    let Some(first) = word_start(value) else {
        return raw_header_text(value);
    };
    let mut out = String::with_capacity(value.len());
    // Octets of adjacent encoded-words in one charset, not yet converted.
    let mut pending: Option<(&[u8], Vec<u8>)> = None;
    let flush = |out: &mut String, pending: &mut Option<(&[u8], Vec<u8>)>| {
        if let Some((charset, octets)) = pending.take() {
            out.push_str(&to_utf8(charset, &octets));
        }
    };
    // `copied`: input consumed so far; `at`: where to look for `=?`.
    let (mut copied, mut at) = (0, first);
    while let Some(i) = word_start(&value[at..]).map(|i| at + i) {
        let Some((charset, octets, len)) = encoded_word(&value[i..]) else {
            at = i + 2;
            continue;
        };
        let gap = &value[copied..i];
        let adjacent = pending.is_some() && gap.iter().all(u8::is_ascii_whitespace);
        match &mut pending {
            Some((cs, buf)) if adjacent && cs.eq_ignore_ascii_case(charset) => {
                buf.extend_from_slice(&octets);
            }
            _ => {
                flush(&mut out, &mut pending);
                if !adjacent {
                    out.push_str(&raw_header_text(gap));
                }
                pending = Some((charset, octets));
            }
        }
        copied = i + len;
        at = copied;
    }
    flush(&mut out, &mut pending);
    out.push_str(&raw_header_text(&value[copied..]));
    Cow::Owned(out)
}

/// Does the header field value `raw` contain `needle` once its
/// encoded-words are decoded ([`decode_header`]), ignoring case as
/// [`contains_folded`] does? Without encoded-words an ASCII needle is
/// looked for in the raw bytes, with no decoding or allocation.
pub fn header_contains(raw: &[u8], needle: &str) -> bool {
    if needle.is_ascii() && word_start(raw).is_none() {
        // Raw 8-bit text never decodes to ASCII, so this is the same answer.
        return crate::mime::contains_ignore_ascii_case(raw, needle.as_bytes());
    }
    contains_folded(&decode_header(raw), needle)
}

/// The Unicode simple lowercase mapping of `c` (for the one character whose
/// full lowercase is two, U+0130, its first: `i`).
fn fold(c: char) -> char {
    if c.is_ascii() {
        c.to_ascii_lowercase()
    } else {
        c.to_lowercase().next().unwrap_or(c)
    }
}

/// Does `hay` contain `needle`, ignoring case? Both sides are compared
/// character by character by their Unicode simple lowercase, so `GRÜẞE`
/// matches `grüße` but `GRÜSSE` does not (one character never stands for
/// two). An ASCII needle is compared by ASCII case alone, with
/// [`crate::mime::contains_ignore_ascii_case`] over the bytes: the two
/// non-ASCII characters whose lowercase is ASCII (U+212A KELVIN SIGN and
/// U+0130) then do not match `k` and `i`.
pub fn contains_folded(hay: &str, needle: &str) -> bool {
    if needle.is_ascii() {
        return crate::mime::contains_ignore_ascii_case(hay.as_bytes(), needle.as_bytes());
    }
    let mut chars = needle.chars().map(fold);
    let Some(first) = chars.next() else {
        return true;
    };
    hay.char_indices().any(|(i, c)| {
        fold(c) == first && {
            let mut rest = hay[i + c.len_utf8()..].chars().map(fold);
            chars.clone().all(|n| rest.next() == Some(n))
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rfc2047_examples() {
        // RFC 2047 §8.
        for (raw, want) in [
            ("(=?ISO-8859-1?Q?a?=)", "(a)"),
            ("(=?ISO-8859-1?Q?a?= b)", "(a b)"),
            ("(=?ISO-8859-1?Q?a?= =?ISO-8859-1?Q?b?=)", "(ab)"),
            ("(=?ISO-8859-1?Q?a?=  =?ISO-8859-1?Q?b?=)", "(ab)"),
            ("(=?ISO-8859-1?Q?a?=\r\n    =?ISO-8859-1?Q?b?=)", "(ab)"),
            ("(=?ISO-8859-1?Q?a_b?=)", "(a b)"),
            ("(=?ISO-8859-1?Q?a?= =?ISO-8859-2?Q?_b?=)", "(a b)"),
            (
                "=?US-ASCII?Q?Keith_Moore?= <moore@cs.utk.edu>",
                "Keith Moore <moore@cs.utk.edu>",
            ),
            (
                "=?ISO-8859-1?Q?Keld_J=F8rn_Simonsen?= <keld@dkuug.dk>",
                "Keld Jørn Simonsen <keld@dkuug.dk>",
            ),
            ("=?ISO-8859-1?Q?Andr=E9?= Pirard", "André Pirard"),
            (
                "=?ISO-8859-1?B?SWYgeW91IGNhbiByZWFkIHRoaXMgeW8=?=\r\n =?ISO-8859-2?B?dSB1bmRlcnN0YW5kIHRoZSBleGFtcGxlLg==?=",
                "If you can read this you understand the example.",
            ),
            // RFC 2231 §5: a language after the charset.
            ("=?US-ASCII*EN?Q?Keith_Moore?=", "Keith Moore"),
        ] {
            assert_eq!(decode_header(raw.as_bytes()), want, "{raw}");
        }
    }

    #[test]
    fn encoded_words_in_practice() {
        for (raw, want) in [
            ("=?UTF-8?B?R3LDvMOfZQ==?= aus Wien", "Grüße aus Wien"),
            // Unpadded base64, lower-case encoding letter.
            ("=?utf-8?b?R3LDvMOfZQ?=", "Grüße"),
            ("=?utf-8?q?Gr=C3=BC=C3=9Fe_=3D_hi?=", "Grüße = hi"),
            // A character split across two words of one charset.
            ("=?UTF-8?Q?Gr=C3?= =?UTF-8?Q?=BC=C3=9Fe?=", "Grüße"),
            (
                "\"=?ISO-8859-1?Q?Jos=E9?=\" <jose@x.test>",
                "\"José\" <jose@x.test>",
            ),
            ("=?windows-1252?Q?=80_5?=", "€ 5"),
            // Not adjacent: the text between stays.
            ("=?utf-8?q?a?= - =?utf-8?q?b?=", "a - b"),
            // An unknown charset: the octets as they are.
            ("=?x-unknown?q?caf=C3=A9?=", "café"),
            ("=?x-unknown?q?caf=E9?=", "caf\u{fffd}"),
            // A malformed `=` in Q is kept.
            ("=?utf-8?q?100=?=", "100="),
            // Raw 8-bit text outside the words.
            ("Gr\u{fc}\u{df}e =?utf-8?q?x?=", "Grüße x"),
        ] {
            assert_eq!(decode_header(raw.as_bytes()), want, "{raw}");
        }
        // Unlabelled 8-bit headers that are not UTF-8 are taken as windows-1252.
        assert_eq!(decode_header(b"Jos\xe9 \x80"), "José €");
        assert!(matches!(decode_header(b"plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn malformed_encoded_words_stay() {
        for raw in [
            "=?utf-8?x?abc?=",
            "=?utf-8?q?abc",
            "=?utf-8?q?a b?=",
            "=??q?abc?=",
            "=?utf 8?q?abc?=",
            "=?utf-8?b?YQ=Q?=",
            "=?utf-8?b?Y?=",
            "=?utf-8?q?abc?",
            "=?",
            "=?=?=?",
            "a =?utf-8?q?",
        ] {
            assert_eq!(decode_header(raw.as_bytes()), raw, "{raw}");
        }
        // A malformed word next to a good one.
        assert_eq!(
            decode_header(b"=?utf-8?x?a?= =?utf-8?q?b?="),
            "=?utf-8?x?a?= b"
        );
    }

    #[test]
    fn charsets() {
        assert_eq!(to_utf8(b"ISO-8859-1", b"caf\xe9"), "café");
        assert_eq!(to_utf8(b"latin1", b"\xc9t\xe9"), "Été");
        assert_eq!(
            to_utf8(b"windows-1252", b"\x93q\x94 \x80"),
            "\u{201c}q\u{201d} €"
        );
        assert_eq!(to_utf8(b"\"UTF-8\"", "grüße".as_bytes()), "grüße");
        assert_eq!(to_utf8(b"us-ascii", b"plain"), "plain");
        assert_eq!(to_utf8(b"koi8-r", b"\xf0\xd2\xc9\xd7\xc5\xd4"), "Привет");
        assert_eq!(to_utf8(b"utf-16le", b"h\0i\0"), "hi");
        assert_eq!(to_utf8(b"shift_jis", b"\x82\xa0"), "あ");
        assert_eq!(to_utf8(b"nonsense", b"a\xffb"), "a\u{fffd}b");
        // The `replacement` encoding's labels are unknown here.
        assert_eq!(to_utf8(b"iso-2022-kr", b"abc"), "abc");
        assert!(ascii_transparent(b"utf-8"));
        assert!(ascii_transparent(b"ISO-8859-15"));
        assert!(ascii_transparent(b"x-nonsense"));
        assert!(!ascii_transparent(b"utf-16"));
        assert!(!ascii_transparent(b"shift_jis"));
        assert!(!ascii_transparent(b"iso-2022-jp"));
    }

    #[test]
    fn folded_matching() {
        for (hay, needle, want) in [
            ("Grüße aus Wien", "GRÜSSE", false),
            ("Grüße aus Wien", "grüße", true),
            ("GRÜẞE", "grüße", true),
            ("JOSÉ", "josé", true),
            ("josé", "JOSÉ", true),
            ("Ελληνικά", "ΕΛΛΗΝΙΚΆ", true),
            ("Привет, мир", "МИР", true),
            ("İstanbul", "istanbul", false),
            ("İstanbul", "İSTANBUL", true),
            ("abc", "", true),
            ("", "é", false),
            ("é", "éé", false),
            ("Quarterly", "QUARTERLY", true),
        ] {
            assert_eq!(contains_folded(hay, needle), want, "{hay:?} {needle:?}");
        }
        assert!(header_contains(b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "GRÜ"));
        assert!(header_contains(b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "grü"));
        assert!(!header_contains(b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=", "utf-8"));
        assert!(header_contains(b"Jos\xe9", "JOSÉ"));
        assert!(header_contains(b"Jose", "JOSE"));
        assert!(header_contains(b"", ""));
    }
}
