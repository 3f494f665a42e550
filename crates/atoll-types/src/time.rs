//! Timestamps as Daytona writes them: RFC 3339 in UTC for the API, and Go's
//! `time.Time.String()` form for the toolbox's `FileInfo.modTime`; and
//! parsing of the timestamps clients send (RFC 3339, and the `+0000`
//! offsets Python's `strftime("%z")` writes).

use std::time::{SystemTime, UNIX_EPOCH};

/// Civil date from days since 1970-01-01 (proleptic Gregorian).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Milliseconds since the epoch of an RFC 3339 / ISO 8601 timestamp as
/// clients send them: `YYYY-MM-DD`, optionally `THH:MM[:SS[.fraction]]`,
/// optionally `Z` or `±HH:MM` (none: UTC). `None` if malformed.
pub fn parse_rfc3339_millis(s: &str) -> Option<i64> {
    let b = s.trim().as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') || !(1..=12).contains(&mo) {
        return None;
    }
    let days_in_month = match mo {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    if !(1..=days_in_month).contains(&d) {
        return None;
    }
    let mut ms = days_from_civil(y, mo as u32, d as u32) * 86_400_000;
    let mut i = 10;
    if matches!(b.get(i), Some(b'T' | b't' | b' ')) {
        let (h, mi) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
        if b.get(i + 3) != Some(&b':') || h > 23 || mi > 59 {
            return None;
        }
        ms += (h * 3600 + mi * 60) * 1000;
        i += 6;
        if b.get(i) == Some(&b':') {
            let sec = num(i + 1..i + 3)?;
            if sec > 60 {
                return None;
            }
            ms += sec * 1000;
            i += 3;
            if b.get(i) == Some(&b'.') {
                let start = i + 1;
                i = start;
                while b.get(i).is_some_and(u8::is_ascii_digit) {
                    i += 1;
                }
                if i == start {
                    return None;
                }
                let digits = &b[start..i.min(start + 3)];
                let mut frac = 0i64;
                for (k, c) in digits.iter().enumerate() {
                    frac += i64::from(c - b'0') * [100, 10, 1][k];
                }
                ms += frac;
            }
        }
    }
    match b.get(i) {
        None => Some(ms),
        Some(b'Z' | b'z') if i + 1 == b.len() => Some(ms),
        Some(sign @ (b'+' | b'-')) => {
            // `+01:00`, or `+0100` as Python's `%z` writes it.
            let colon = usize::from(b.get(i + 3) == Some(&b':'));
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 3 + colon..i + 5 + colon)?);
            if i + 5 + colon != b.len() || oh > 23 || om > 59 {
                return None;
            }
            let offset = (oh * 60 + om) * 60_000;
            Some(if *sign == b'+' {
                ms - offset
            } else {
                ms + offset
            })
        }
        _ => None,
    }
}

struct Parts {
    y: i64,
    mo: u32,
    d: u32,
    h: i64,
    mi: i64,
    s: i64,
    millis: u32,
}

fn parts(secs: i64, nanos: u32) -> Parts {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    Parts {
        y,
        mo,
        d,
        h: rem / 3600,
        mi: (rem % 3600) / 60,
        s: rem % 60,
        millis: nanos / 1_000_000,
    }
}

fn split(t: SystemTime) -> (i64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
        Err(e) => {
            let d = e.duration();
            let secs = -(d.as_secs() as i64);
            if d.subsec_nanos() == 0 {
                (secs, 0)
            } else {
                (secs - 1, 1_000_000_000 - d.subsec_nanos())
            }
        }
    }
}

/// `2026-01-02T03:04:05.678Z`
pub fn rfc3339(t: SystemTime) -> String {
    let (secs, nanos) = split(t);
    let p = parts(secs, nanos);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.y, p.mo, p.d, p.h, p.mi, p.s, p.millis
    )
}

pub fn rfc3339_now() -> String {
    rfc3339(SystemTime::now())
}

/// Milliseconds since the Unix epoch, the form timestamps are stored in.
pub fn unix_millis(t: SystemTime) -> i64 {
    let (secs, nanos) = split(t);
    secs * 1000 + i64::from(nanos / 1_000_000)
}

pub fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

/// RFC 3339 from stored milliseconds.
pub fn rfc3339_millis(ms: i64) -> String {
    let p = parts(
        ms.div_euclid(1000),
        (ms.rem_euclid(1000) as u32) * 1_000_000,
    );
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        p.y, p.mo, p.d, p.h, p.mi, p.s, p.millis
    )
}

/// Go's `time.Time.String()` in UTC: `2026-01-02 03:04:05.678 +0000 UTC`.
pub fn go_time_string(t: SystemTime) -> String {
    let (secs, nanos) = split(t);
    let p = parts(secs, nanos);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03} +0000 UTC",
        p.y, p.mo, p.d, p.h, p.mi, p.s, p.millis
    )
}

/// Days since 1970-01-01 of a civil date (the inverse of `civil_from_days`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch of `2026-01-02T03:04:05[.678…](Z|±hh:mm|±hhmm)`
/// (a space may stand for the `T`); `None` if it is not such a timestamp.
/// Stricter than [`parse_rfc3339_millis`]: a time and an offset are required.
pub fn parse_timestamp_millis(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) && !part.is_empty() {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &s[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match &s[i..] {
        "Z" | "z" => 0,
        rest if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (num(i + 1..i + 3)? * 60 + num(i + 4..i + 6)?)
        }
        rest if rest.len() == 5 => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            sign * (num(i + 1..i + 3)? * 60 + num(i + 3..i + 5)?)
        }
        _ => return None,
    };
    let days = days_from_civil(y, mo as u32, d as u32);
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        let t = UNIX_EPOCH + Duration::from_millis(1_767_323_045_678);
        assert_eq!(rfc3339(t), "2026-01-02T03:04:05.678Z");
        assert_eq!(go_time_string(t), "2026-01-02 03:04:05.678 +0000 UTC");
        assert_eq!(
            rfc3339_millis(1_767_323_045_678),
            "2026-01-02T03:04:05.678Z"
        );
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // leap day
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn parses_what_clients_send() {
        let ms = 1_767_323_045_678;
        for s in [
            "2026-01-02T03:04:05.678Z",
            "2026-01-02T03:04:05.678123Z",
            "2026-01-02T03:04:05.678123+0000",
            "2026-01-02T05:04:05.678+02:00",
            "2026-01-01T22:04:05.678-0500",
            "2026-01-02 03:04:05.678+00:00",
        ] {
            assert_eq!(parse_timestamp_millis(s), Some(ms), "{s}");
        }
        assert_eq!(parse_timestamp_millis("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_timestamp_millis("2000-02-29T00:00:00.5Z"),
            Some(951_782_400_500)
        );
        for day in [0i64, 59, 60, 365, 10_957, 20_000, -1, -719_468] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        for bad in [
            "",
            "yesterday",
            "2026-01-02",
            "2026-01-02T03:04:05",
            "2026-13-02T03:04:05Z",
            "2026-01-02T03:04:05.Z",
            "2026-01-02T03:04:05+1",
            "2026-01-02T03:04:05ZZ",
            "2026-01-02T03:04:05 +0000",
            "２026-01-02T03:04:05Z",
        ] {
            assert_eq!(parse_timestamp_millis(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn parses_what_rfc3339_millis_writes_and_what_clients_send() {
        for ms in [0, 1_700_000_000_123, 951_782_400_000, -86_400_000] {
            assert_eq!(parse_rfc3339_millis(&rfc3339_millis(ms)), Some(ms));
        }
        let base = parse_rfc3339_millis("2026-12-06T04:00:00Z").unwrap();
        assert_eq!(parse_rfc3339_millis("2026-12-06T04:00:00"), Some(base));
        assert_eq!(
            parse_rfc3339_millis("2026-12-06T05:00:00+01:00"),
            Some(base)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-12-06T03:30:00-00:30"),
            Some(base)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-12-06T04:00:00.000000+0000"),
            Some(base)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-12-06T04:00:00.250123Z"),
            Some(base + 250)
        );
        assert_eq!(
            parse_rfc3339_millis("2026-12-06"),
            Some(base - 4 * 3_600_000)
        );
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-12-06T25:00",
            "2026-12-06Tx",
            "2026-12-06T04:00:00Zjunk",
            "2026-12-06T04:00:00.",
        ] {
            assert_eq!(parse_rfc3339_millis(bad), None, "{bad}");
        }
    }
}
