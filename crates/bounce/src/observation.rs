//! What the classifier looks at: one recipient's result as a reply code, an
//! RFC 3463 enhanced status code and the text, whether it came in-band (the
//! peer's reply at RCPT/DATA) or out of band (a DSN's `Status` and
//! `Diagnostic-Code`).

use tern_smtp::Enhanced;
use tern_smtp::client::ReplyParser;

/// One recipient's result, normalised for classification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observation {
    /// The SMTP reply code, when there was a reply (`None` for a local
    /// failure such as a DNS error, or a DSN without an SMTP diagnostic).
    pub code: Option<u16>,
    /// The enhanced status code, from the reply or the DSN's `Status`.
    pub enhanced: Option<Enhanced>,
    /// The reply text, lines joined with spaces, without the codes that
    /// multi-line replies repeat on every line.
    pub text: String,
}

impl Observation {
    /// From the fields of an in-band result (`tern.v1.RecipientResult`:
    /// `code` 0 when no reply was received, `enhanced` empty when none).
    pub fn from_parts(code: u32, enhanced: &str, reply: &str) -> Self {
        let code = u16::try_from(code).ok().filter(|c| (200..600).contains(c));
        let enhanced = Enhanced::parse(enhanced.trim());
        let mut obs = Observation {
            code,
            enhanced,
            text: String::new(),
        };
        obs.text = obs.strip_repeats(reply);
        obs
    }

    /// From a delivery result as published on `tern.results.*`.
    pub fn from_result(r: &tern_proto::RecipientResult) -> Self {
        Self::from_parts(r.code, &r.enhanced, &r.reply)
    }

    /// From a reply the SMTP client parsed.
    pub fn from_reply(reply: &tern_smtp::client::Reply) -> Self {
        let enhanced = reply.enhanced.as_deref().unwrap_or("");
        Self::from_parts(u32::from(reply.code), enhanced, &reply.text())
    }

    /// Parse a reply as an operator pastes it: `550 5.1.1 text`, a
    /// multi-line reply (`550-5.1.1 …` lines), or bare text (`5.1.1 text`,
    /// `user unknown`), which is kept whole with whatever codes it starts with.
    pub fn parse(input: &str) -> Self {
        let input = input.trim();
        let mut parser = ReplyParser::default();
        for line in input.lines().map(|l| l.trim_end_matches('\r')) {
            match parser.push(line) {
                Ok(Some(reply)) => return Self::from_reply(&reply),
                Ok(None) => {}
                Err(_) => break,
            }
        }
        // Not a well-formed reply (e.g. one pasted line of several): read a
        // leading code and enhanced code if they are there.
        let (code, rest) = match input.get(..3).map(str::parse::<u16>) {
            Some(Ok(c))
                if (200..600).contains(&c)
                    && matches!(input.as_bytes().get(3), None | Some(b' ' | b'-')) =>
            {
                (Some(c), input.get(4..).unwrap_or(""))
            }
            _ => (None, input),
        };
        let (first, after) = rest.split_once(' ').unwrap_or((rest, ""));
        match Enhanced::parse(first) {
            Some(e) => Self::from_parts(code.map_or(0, u32::from), &e.to_string(), after),
            None => Self::from_parts(code.map_or(0, u32::from), "", rest),
        }
    }

    /// From a DSN recipient block (RFC 3464 §2.3): the `Status` and the
    /// `Diagnostic-Code` if present. An `smtp;` diagnostic is parsed as a
    /// reply; its enhanced code wins over `Status` when both are there,
    /// since it is the receiver's own word.
    pub fn from_dsn(status: Option<Enhanced>, diagnostic: Option<&str>) -> Self {
        let Some(diag) = diagnostic else {
            return Observation {
                code: None,
                enhanced: status,
                text: String::new(),
            };
        };
        let (kind, rest) = diag.split_once(';').unwrap_or(("", diag));
        let rest = rest.trim();
        let mut obs = if kind.trim().eq_ignore_ascii_case("smtp") {
            Self::parse(rest)
        } else {
            Observation {
                code: None,
                enhanced: None,
                text: rest.to_string(),
            }
        };
        if obs.enhanced.is_none() {
            obs.enhanced = status;
        }
        obs
    }

    /// Is this a permanent failure (5xx reply or `5.x.x`)? An enhanced code
    /// decides when there is one; otherwise the reply code; otherwise not.
    pub fn is_permanent(&self) -> bool {
        match (self.enhanced, self.code) {
            (Some(e), _) => e.class == 5,
            (None, Some(c)) => c >= 500,
            (None, None) => false,
        }
    }

    /// Remove the `550-5.1.1 ` prefixes that multi-line replies repeat and
    /// that MTAs keep when they fold a reply into one line (Postfix writes
    /// Gmail's three-line reply as one `Diagnostic-Code`).
    fn strip_repeats(&self, text: &str) -> String {
        let mut words: Vec<&str> = Vec::new();
        let code = self.code.map(|c| c.to_string());
        let enh = self.enhanced.map(|e| e.to_string());
        let mut tokens = text.split_whitespace().peekable();
        while let Some(w) = tokens.next() {
            if enh.is_some() && enh.as_deref() == Some(w) {
                continue;
            }
            // `550-5.1.1` as one word.
            if let (Some(c), Some(e)) = (code.as_deref(), enh.as_deref())
                && w.strip_prefix(c).and_then(|r| r.strip_prefix('-')) == Some(e)
            {
                continue;
            }
            let is_code = code
                .as_deref()
                .is_some_and(|c| w.strip_suffix('-').unwrap_or(w) == c);
            if is_code && enh.is_some() && tokens.peek().copied() == enh.as_deref() {
                tokens.next();
                continue;
            }
            words.push(w);
        }
        words.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_gmail_reply_reads_as_one_sentence() {
        let obs = Observation::parse(
            "550-5.1.1 The email account that you tried to reach does not exist. Please try\r\n\
             550-5.1.1 double-checking the recipient's email address for typos or\r\n\
             550 5.1.1 unnecessary spaces. - gsmtp",
        );
        assert_eq!(obs.code, Some(550));
        assert_eq!(obs.enhanced, Some(Enhanced::new(5, 1, 1)));
        assert_eq!(
            obs.text,
            "The email account that you tried to reach does not exist. Please try \
             double-checking the recipient's email address for typos or unnecessary spaces. - gsmtp"
        );
        assert!(obs.is_permanent());
    }

    #[test]
    fn folded_dsn_diagnostic_and_status_fallback() {
        let obs = Observation::from_dsn(
            Enhanced::parse("5.1.1"),
            Some(
                "smtp; 550-5.1.1 The email account that you tried to reach does not 550-5.1.1 exist. 550 5.1.1 - gsmtp",
            ),
        );
        assert_eq!(obs.code, Some(550));
        assert_eq!(
            obs.text,
            "The email account that you tried to reach does not exist. - gsmtp"
        );
        let obs = Observation::from_dsn(
            Enhanced::parse("5.4.4"),
            Some("X-Postfix; Host or domain name not found"),
        );
        assert_eq!((obs.code, obs.enhanced), (None, Enhanced::parse("5.4.4")));
        assert_eq!(obs.text, "Host or domain name not found");
        let obs = Observation::from_dsn(Enhanced::parse("5.0.0"), Some("smtp; 550 no such user"));
        assert_eq!(obs.enhanced, Enhanced::parse("5.0.0"));
    }

    #[test]
    fn bare_text_and_parts() {
        let obs = Observation::parse("5.7.1 blocked");
        assert_eq!(
            (obs.code, obs.enhanced.map(|e| e.to_string())),
            (None, Some("5.7.1".into()))
        );
        assert_eq!(obs.text, "blocked");
        let obs = Observation::parse("user unknown");
        assert_eq!(
            (obs.code, obs.enhanced, obs.text.as_str()),
            (None, None, "user unknown")
        );
        assert!(!obs.is_permanent());
        let obs = Observation::from_parts(0, "4.4.1", "connection refused");
        assert_eq!(obs.code, None);
        assert!(!obs.is_permanent());
    }
}
