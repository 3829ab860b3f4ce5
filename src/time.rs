//! Time as the contract writes it: unix milliseconds inside, RFC 3339 UTC
//! outside, RFC 5322 in message headers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// RFC 3339 UTC with milliseconds: `2026-11-22T06:04:39.123Z`.
pub fn rfc3339(ms: i64) -> String {
    // RFC 3339 has four-digit years (humantime panics past 9999): a time
    // out of that range (a corrupt row, a far-future retry) is clamped
    // rather than allowed to take down the thread that formats it.
    const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX_MS) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// RFC 3339 (`2026-11-22T06:00:00Z`, fractional seconds allowed), a bare
/// date (`2026-11-22`), or a duration back from now (`24h`, `7d`).
pub fn parse_time(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(d) = humantime::parse_duration(s) {
        // Durations come from API query strings: absurd ones must not overflow.
        let back = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        return Some(now_ms().saturating_sub(back));
    }
    let t = humantime::parse_rfc3339_weak(s)
        .ok()
        .or_else(|| humantime::parse_rfc3339_weak(&format!("{s} 00:00:00")).ok())?;
    t.duration_since(UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// `Sun, 22 Nov 2026 06:04:39 +0000`, for Received: headers.
pub fn rfc5322(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d:02} {} {y} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar (the well-known era-based conversion).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc5322(0), "Thu, 01 Jan 1970 00:00:00 +0000");
        // 2026-11-22T06:04:39Z
        assert_eq!(
            rfc5322(1_795_327_479_000),
            "Sun, 22 Nov 2026 06:04:39 +0000"
        );
        assert_eq!(rfc5322(951_782_400_000), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn parses() {
        assert_eq!(parse_time("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time("1970-01-02"), Some(86_400_000));
        let ago = parse_time("1h").unwrap();
        assert!((now_ms() - ago - 3_600_000).abs() < 5_000);
        assert_eq!(parse_time("yesterday-ish"), None);
    }

    #[test]
    fn out_of_range_times_neither_panic_nor_overflow() {
        assert_eq!(rfc3339(i64::MAX / 4), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(rfc3339(-5), "1970-01-01T00:00:00.000Z");
        // A duration far larger than the epoch is a time long before it.
        let t = parse_time("100000000000y").unwrap();
        assert!(t < 0);
    }
}
