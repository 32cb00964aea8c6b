//! Datetimes and timespans as KQL sees them, in microseconds.
//!
//! Events carry RFC 3339 UTC timestamps with microseconds; the store keeps them in exactly that form
//! ([`format_datetime`]) so that comparing the text compares the times. KQL's datetimes have 100 ns ticks;
//! microseconds are all an event carries, so both types are kept as `i64` microseconds.

use std::time::{SystemTime, UNIX_EPOCH};

use jiff::Timestamp;
use jiff::civil::{Date, Time};
use jiff::fmt::temporal::DateTimePrinter;
use jiff::tz::TimeZone;

pub const MICROS_PER_SECOND: i64 = 1_000_000;
pub const MICROS_PER_MINUTE: i64 = 60 * MICROS_PER_SECOND;
pub const MICROS_PER_HOUR: i64 = 60 * MICROS_PER_MINUTE;
pub const MICROS_PER_DAY: i64 = 24 * MICROS_PER_HOUR;

/// Now, in microseconds since the UNIX epoch.
pub fn now_micros() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_micros()).unwrap_or(i64::MAX),
    }
}

/// Prints timestamps in the store's form: UTC, always six fraction digits.
const PRINTER: DateTimePrinter = DateTimePrinter::new().precision(Some(6));

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`, the form events and the store use. Times past jiff's range (about years
/// -9999 to 9999) print as its first or last instant.
pub fn format_datetime(micros: i64) -> String {
    let ts = Timestamp::from_microsecond(micros).unwrap_or(if micros < 0 {
        Timestamp::MIN
    } else {
        Timestamp::MAX
    });
    let mut out = String::with_capacity(27);
    // Printing into a String cannot fail.
    let _ = PRINTER.print_timestamp(&ts, &mut out);
    out
}

/// Parses `YYYY-MM-DD`, optionally followed by `T` or a space, `HH:MM`, `:SS`, a fraction of up to nine
/// digits, and `Z` or an offset (`+02:00`, `-0530`). No offset means UTC, as in KQL.
pub fn parse_datetime(text: &str) -> Option<i64> {
    let s = text.trim().as_bytes();
    let mut pos = 0;
    let year = digits(s, &mut pos, 4)?;
    expect(s, &mut pos, b'-')?;
    let month = digits(s, &mut pos, 2)?;
    expect(s, &mut pos, b'-')?;
    let day = digits(s, &mut pos, 2)?;
    // Checks the day exists (29 February only in leap years).
    let date =
        Date::new(i16::try_from(year).ok()?, i8::try_from(month).ok()?, i8::try_from(day).ok()?).ok()?;
    let mut micros = TimeZone::UTC.to_timestamp(date.to_datetime(Time::midnight())).ok()?.as_microsecond();
    if pos < s.len() && matches!(s[pos], b'T' | b't' | b' ') {
        pos += 1;
        let hour = digits(s, &mut pos, 2)?;
        expect(s, &mut pos, b':')?;
        let minute = digits(s, &mut pos, 2)?;
        let mut second = 0;
        if pos < s.len() && s[pos] == b':' {
            pos += 1;
            second = digits(s, &mut pos, 2)?;
        }
        if hour > 23 || minute > 59 || second > 59 {
            return None;
        }
        micros += hour * MICROS_PER_HOUR + minute * MICROS_PER_MINUTE + second * MICROS_PER_SECOND;
        if pos < s.len() && s[pos] == b'.' {
            pos += 1;
            let start = pos;
            let mut frac: i64 = 0;
            while pos < s.len() && s[pos].is_ascii_digit() {
                // Digits past the microsecond are read and dropped.
                if pos - start < 6 {
                    frac = frac * 10 + i64::from(s[pos] - b'0');
                }
                pos += 1;
            }
            let n = pos - start;
            if n == 0 || n > 9 {
                return None;
            }
            for _ in n..6 {
                frac *= 10;
            }
            micros += frac;
        }
        if pos < s.len() {
            match s[pos] {
                b'Z' | b'z' => pos += 1,
                sign @ (b'+' | b'-') => {
                    pos += 1;
                    let oh = digits(s, &mut pos, 2)?;
                    if pos < s.len() && s[pos] == b':' {
                        pos += 1;
                    }
                    let om = digits(s, &mut pos, 2)?;
                    if oh > 23 || om > 59 {
                        return None;
                    }
                    let offset = oh * MICROS_PER_HOUR + om * MICROS_PER_MINUTE;
                    // Local time minus its offset is UTC.
                    micros = if sign == b'+' { micros - offset } else { micros + offset };
                }
                _ => return None,
            }
        }
    }
    (pos == s.len()).then_some(micros)
}

fn digits(s: &[u8], pos: &mut usize, n: usize) -> Option<i64> {
    let end = pos.checked_add(n)?;
    let part = s.get(*pos..end)?;
    if !part.iter().all(u8::is_ascii_digit) {
        return None;
    }
    *pos = end;
    Some(part.iter().fold(0, |acc, d| acc * 10 + i64::from(d - b'0')))
}

fn expect(s: &[u8], pos: &mut usize, byte: u8) -> Option<()> {
    (s.get(*pos) == Some(&byte)).then(|| *pos += 1)
}

/// Microseconds in one of KQL's timespan units (`d`, `h`, `m`, `s`, `ms`, `microsecond`, `tick`, and
/// their long names).
pub fn timespan_unit(unit: &str) -> Option<f64> {
    Some(match unit {
        "d" | "day" | "days" => MICROS_PER_DAY as f64,
        "h" | "hr" | "hrs" | "hour" | "hours" => MICROS_PER_HOUR as f64,
        "m" | "min" | "minute" | "minutes" => MICROS_PER_MINUTE as f64,
        "s" | "sec" | "second" | "seconds" => MICROS_PER_SECOND as f64,
        "ms" | "milli" | "millis" | "millisecond" | "milliseconds" => 1_000.0,
        "microsecond" | "microseconds" => 1.0,
        "tick" | "ticks" => 0.1,
        _ => return None,
    })
}

/// Why a text is no timespan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimespanError {
    #[error("not a number and a unit")]
    NotATimespan,
    #[error("unknown unit {0:?} (d, h, m, s, ms, ...)")]
    UnknownUnit(String),
    #[error("too long")]
    TooLong,
}

/// Parses a timespan literal such as `1d`, `2h`, `5m`, `30s`, `100ms` or `1.5h` into microseconds: the one
/// parser of durations, for KQL, the CLI's flags and the configuration alike.
pub fn parse_timespan_checked(text: &str) -> Result<i64, TimespanError> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or(TimespanError::NotATimespan)?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| TimespanError::NotATimespan)?;
    let unit = timespan_unit(unit).ok_or_else(|| TimespanError::UnknownUnit(unit.to_string()))?;
    let micros = (value * unit).round();
    if micros.is_finite() && micros.abs() < i64::MAX as f64 {
        Ok(micros as i64)
    } else {
        Err(TimespanError::TooLong)
    }
}

/// [`parse_timespan_checked`], without the reason.
pub fn parse_timespan(text: &str) -> Option<i64> {
    parse_timespan_checked(text).ok()
}

/// KQL's timespan text: `[-][d.]hh:mm:ss[.ffffff]`.
pub fn format_timespan(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let total = micros.unsigned_abs();
    let per_day = MICROS_PER_DAY.unsigned_abs();
    let days = total / per_day;
    let rem = total % per_day;
    let secs = rem / 1_000_000;
    let frac = rem % 1_000_000;
    let mut out = String::from(sign);
    if days > 0 {
        out.push_str(&format!("{days}."));
    }
    out.push_str(&format!("{:02}:{:02}:{:02}", secs / 3600, (secs % 3600) / 60, secs % 60));
    if frac > 0 {
        out.push_str(&format!(".{frac:06}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_round_trip() {
        let t = parse_datetime("2026-11-29T05:33:12.123456Z").expect("full timestamp parses");
        assert_eq!(format_datetime(t), "2026-11-29T05:33:12.123456Z");
        assert_eq!(format_datetime(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(parse_datetime("1970-01-01"), Some(0));
        assert_eq!(parse_datetime("1970-01-01 00:01"), Some(60 * MICROS_PER_SECOND));
        assert_eq!(parse_datetime("1970-01-01T02:00:00+02:00"), Some(0));
        assert_eq!(parse_datetime("1970-01-01T00:00:00.5"), Some(500_000));
        assert_eq!(parse_datetime("1970-01-01T00:00:00.123456789Z"), Some(123_456));
        assert_eq!(format_datetime(-1), "1969-12-31T23:59:59.999999Z");
        assert_eq!(format_datetime(i64::MAX), "9999-12-30T22:00:00.999999Z", "past the range: its end");
        assert_eq!(
            parse_datetime("0001-01-01").map(format_datetime).as_deref(),
            Some("0001-01-01T00:00:00.000000Z")
        );
        assert_eq!(
            parse_datetime("2024-02-29T12:34:56.789012Z").map(format_datetime).as_deref(),
            Some("2024-02-29T12:34:56.789012Z")
        );
    }

    #[test]
    fn bad_datetimes_are_refused() {
        for bad in
            ["", "2026", "2026-13-01", "2023-02-29", "2026-01-01T24:00", "2026-01-01Tx", "2026-01-01Zq"]
        {
            assert_eq!(parse_datetime(bad), None, "{bad:?} must not parse");
        }
    }

    #[test]
    fn timespans_parse_and_print() {
        assert_eq!(parse_timespan("1d"), Some(MICROS_PER_DAY));
        assert_eq!(parse_timespan("1.5h"), Some(90 * MICROS_PER_MINUTE));
        assert_eq!(parse_timespan("100ms"), Some(100_000));
        assert_eq!(parse_timespan("5x"), None);
        assert_eq!(format_timespan(MICROS_PER_HOUR), "01:00:00");
        assert_eq!(format_timespan(MICROS_PER_DAY + 1), "1.00:00:00.000001");
        assert_eq!(format_timespan(-30 * MICROS_PER_SECOND), "-00:00:30");
    }
}
