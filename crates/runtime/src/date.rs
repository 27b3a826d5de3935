//! Calendar formatting for mail headers and NATS schedules, without a
//! date-time dependency.

/// An RFC 5322 §3.3 date-time in UTC: `Tue, 3 Jun 2025 12:34:56 +0000`.
pub fn rfc5322(unix_ms: i64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (days, year, month, day, sod) = split(unix_ms);
    format!(
        "{}, {day} {} {year} {:02}:{:02}:{:02} +0000",
        DAYS[days.rem_euclid(7) as usize],
        MONTHS[(month - 1) as usize],
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
    )
}

/// An RFC 3339 UTC timestamp with whole seconds: `2025-06-03T12:34:56Z`.
pub fn rfc3339(unix_ms: i64) -> String {
    let (_, year, month, day, sod) = split(unix_ms);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// An RFC 3339 UTC timestamp with milliseconds: `2025-06-03T12:34:56.789Z`.
pub fn rfc3339_millis(unix_ms: i64) -> String {
    let whole = rfc3339(unix_ms);
    format!(
        "{}.{:03}Z",
        whole.trim_end_matches('Z'),
        unix_ms.rem_euclid(1000)
    )
}

fn split(unix_ms: i64) -> (i64, i64, i64, i64, i64) {
    let secs = unix_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    (days, year, month, day, secs.rem_euclid(86_400))
}

/// Days since 1970-01-01 to (year, month 1-12, day 1-31), proleptic
/// Gregorian (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc5322_dates() {
        assert_eq!(rfc5322(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(rfc5322(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc5322(1_748_954_096_789), "Tue, 3 Jun 2025 12:34:56 +0000");
        assert_eq!(rfc5322(-1000), "Wed, 31 Dec 1969 23:59:59 +0000");
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_748_954_096_789), "2025-06-03T12:34:56Z");
        assert_eq!(
            rfc3339_millis(1_748_954_096_789),
            "2025-06-03T12:34:56.789Z"
        );
    }
}
