//! Time helpers: the coordinator reports times as unix seconds with fractions (and in log
//! lines as UTC RFC 3339), and pauses that double with each failure in a row.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds since the unix epoch, with fractions.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The pause after `strikes` failures in a row (at least one): `first`, doubled with each
/// failure after the first, up to `most`.
pub fn doubling_pause(first: Duration, strikes: u32, most: Duration) -> Duration {
    first
        .saturating_mul(1u32 << strikes.saturating_sub(1).min(31))
        .min(most)
}

/// `at` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC).
pub fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    format!(
        "{}.{:03}Z",
        civil_time(since.as_secs()),
        since.subsec_millis()
    )
}

/// Unix seconds `secs` as `YYYY-MM-DDTHH:MM:SSZ` (UTC), as [`parse_utc`] reads it.
pub fn utc_text(secs: u64) -> String {
    format!("{}Z", civil_time(secs))
}

/// Unix seconds `secs` as `YYYY-MM-DDTHH:MM:SS` (UTC, no zone).
fn civil_time(secs: u64) -> String {
    let (days, of_day) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date of `days` after 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days after 1970-01-01 of the proleptic Gregorian date (the inverse of [`civil_from_days`]).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = year - u64::from(month <= 2);
    let era = year / 400;
    let yoe = year % 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds of a UTC date (`2027-01-31`, its midnight) or time (`2027-01-31T12:00:00Z`),
/// from 1970 to 9999; `None` for anything else (another zone, a date that does not exist).
pub fn parse_utc(text: &str) -> Option<u64> {
    let (date, time) = match text.split_once('T') {
        Some((date, time)) => (date, Some(time.strip_suffix('Z')?)),
        None => (text, None),
    };
    let number = |part: &str, digits: usize| -> Option<u64> {
        (part.len() == digits && part.bytes().all(|b| b.is_ascii_digit()))
            .then(|| part.parse().ok())
            .flatten()
    };
    let mut fields = date.split('-');
    let year = number(fields.next()?, 4)?;
    let month = number(fields.next()?, 2)?;
    let day = number(fields.next()?, 2)?;
    if fields.next().is_some() || year < 1970 || !(1..=12).contains(&month) || day < 1 {
        return None;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day > month_days[usize::try_from(month - 1).ok()?] {
        return None;
    }
    let of_day = match time {
        None => 0,
        Some(time) => {
            let mut fields = time.split(':');
            let hour = number(fields.next()?, 2)?;
            let minute = number(fields.next()?, 2)?;
            let second = number(fields.next()?, 2)?;
            if fields.next().is_some() || hour > 23 || minute > 59 || second > 59 {
                return None;
            }
            hour * 3600 + minute * 60 + second
        }
    };
    Some(days_from_civil(year, month, day) * 86_400 + of_day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates_and_times_are_read_back_as_they_are_written() {
        for secs in [
            0,
            951_782_400,
            1_796_476_445,
            4_107_542_399,
            253_402_300_799,
        ] {
            let text = rfc3339(UNIX_EPOCH + Duration::from_secs(secs));
            let whole = text.replace(".000Z", "Z");
            assert_eq!(whole, utc_text(secs));
            assert_eq!(parse_utc(&whole), Some(secs), "{whole}");
        }
        assert_eq!(parse_utc("2027-01-31"), parse_utc("2027-01-31T00:00:00Z"));
        assert_eq!(parse_utc("2024-02-29"), Some(1_709_164_800));
        for bad in [
            "",
            "2027-1-31",
            "2027-01-32",
            "2023-02-29",
            "1969-12-31",
            "2027-13-01",
            "2027-01-31T24:00:00Z",
            "2027-01-31T12:00:00",
            "2027-01-31T12:00:00+01:00",
            "2027-01-31T12:00Z",
            "2027-01-31 12:00:00Z",
            "+027-01-31",
            "2027-01-31T12:00:00.5Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn times_are_utc_rfc3339_with_milliseconds() {
        let at = |secs: u64, millis: u64| {
            rfc3339(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis))
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z");
        assert_eq!(at(1_796_476_445, 123), "2026-12-05T13:14:05.123Z");
        assert_eq!(at(4_107_542_399, 999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn a_pause_doubles_with_each_strike_up_to_the_most() {
        let pauses: Vec<u64> = (0..8)
            .map(|n| doubling_pause(Duration::from_secs(1), n, Duration::from_secs(30)).as_secs())
            .collect();
        assert_eq!(pauses, [1, 1, 2, 4, 8, 16, 30, 30]);
        let far = doubling_pause(Duration::from_secs(60), u32::MAX, Duration::from_secs(900));
        assert_eq!(far, Duration::from_secs(900));
    }
}
