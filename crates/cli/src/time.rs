//! Record timestamps (milliseconds since the Unix epoch) to and from one exact RFC 3339
//! profile, by hand rather than with a date crate:
//!
//! `YYYY-MM-DDTHH:MM:SS[.F](Z|+HH:MM|-HH:MM)`
//!
//! - `T` and `Z` may be lowercase; years are 0000..=9999;
//! - `.F` is 1 to 9 fraction digits, truncated to milliseconds;
//! - seconds are 00..=59 (a leap second `60` is refused);
//! - the offset is required, and at most ±23:59.
//!
//! Formatting always gives UTC with milliseconds: `2024-05-01T12:00:00.000Z`.

/// Days from 1970-01-01 to the given proleptic Gregorian date (negative before it).
/// Shifts the year to start in March so the leap day is the last day of the year, then
/// counts 400-year eras of 146 097 days.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y.rem_euclid(400);
    let month_from_march = (month + 9) % 12; // March = 0 .. February = 11
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month 1..=12, day 1..=31).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// A cursor over the ASCII input.
struct Scan<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn digits(&mut self, n: usize, what: &str) -> Result<i64, String> {
        let mut value = 0i64;
        for _ in 0..n {
            match self.bytes.get(self.at) {
                Some(b) if b.is_ascii_digit() => {
                    value = value * 10 + i64::from(b - b'0');
                    self.at += 1;
                }
                _ => return Err(format!("expected {n} digits of {what} at byte {}", self.at)),
            }
        }
        Ok(value)
    }

    fn expect(&mut self, accepted: &[u8], what: &str) -> Result<u8, String> {
        match self.bytes.get(self.at) {
            Some(b) if accepted.contains(b) => {
                self.at += 1;
                Ok(*b)
            }
            _ => Err(format!("expected {what} at byte {}", self.at)),
        }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }
}

fn in_range(value: i64, low: i64, high: i64, what: &str) -> Result<i64, String> {
    if (low..=high).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{what} {value} is not in {low}..={high}"))
    }
}

/// Parses the profile in the module doc into milliseconds since the Unix epoch.
pub fn parse_rfc3339_ms(text: &str) -> Result<i64, String> {
    let mut s = Scan {
        bytes: text.as_bytes(),
        at: 0,
    };
    let year = s.digits(4, "year")?;
    s.expect(b"-", "'-'")?;
    let month = in_range(s.digits(2, "month")?, 1, 12, "month")?;
    s.expect(b"-", "'-'")?;
    let day = in_range(
        s.digits(2, "day")?,
        1,
        days_in_month(year, month),
        "day of month",
    )?;
    s.expect(b"Tt", "'T'")?;
    let hour = in_range(s.digits(2, "hour")?, 0, 23, "hour")?;
    s.expect(b":", "':'")?;
    let minute = in_range(s.digits(2, "minute")?, 0, 59, "minute")?;
    s.expect(b":", "':'")?;
    let second = in_range(s.digits(2, "second")?, 0, 59, "second")?;
    let mut millis = 0i64;
    if s.peek() == Some(b'.') {
        s.at += 1;
        let mut digits = 0;
        while let Some(b) = s.peek().filter(u8::is_ascii_digit) {
            if digits < 3 {
                millis = millis * 10 + i64::from(b - b'0');
            }
            digits += 1;
            s.at += 1;
        }
        if !(1..=9).contains(&digits) {
            return Err("expected 1 to 9 fraction digits after '.'".to_owned());
        }
        for _ in digits..3 {
            millis *= 10;
        }
    }
    let offset_minutes = match s.expect(b"Zz+-", "'Z' or a +HH:MM / -HH:MM offset")? {
        b'Z' | b'z' => 0,
        sign => {
            let hours = in_range(s.digits(2, "offset hours")?, 0, 23, "offset hours")?;
            s.expect(b":", "':' in the offset")?;
            let minutes = in_range(s.digits(2, "offset minutes")?, 0, 59, "offset minutes")?;
            let total = hours * 60 + minutes;
            if sign == b'-' {
                -total
            } else {
                total
            }
        }
    };
    if s.at != s.bytes.len() {
        return Err(format!("unexpected text after the time at byte {}", s.at));
    }
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// `ms` since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`. Outside years 0..=9999 (which the
/// parser cannot produce but a record may carry) it falls back to `ts:MILLIS`.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    if !(0..=9999).contains(&year) {
        return format!("ts:{ms}");
    }
    let (hour, minute) = (in_day / 3_600_000, in_day / 60_000 % 60);
    let (second, milli) = (in_day / 1000 % 60, in_day % 1000);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_instants() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T22:13:20Z"),
            Ok(1_700_000_000_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2023-11-14T23:13:20.123456+01:00"),
            Ok(1_700_000_000_123)
        );
        assert_eq!(parse_rfc3339_ms("1969-12-31t23:59:59.9z"), Ok(-100));
        assert_eq!(
            parse_rfc3339_ms("2000-02-29T00:00:00Z"),
            Ok(951_782_400_000)
        );
        assert_eq!(
            parse_rfc3339_ms("2000-02-28T19:30:00-04:30"),
            Ok(951_782_400_000)
        );
    }

    #[test]
    fn refuses_what_the_profile_excludes() {
        for bad in [
            "",
            "2023-11-14",
            "2023-11-14T22:13:20",
            "2023-11-14 22:13:20Z",
            "2023-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2023-13-01T00:00:00Z",
            "2023-11-14T24:00:00Z",
            "2023-11-14T22:13:60Z",
            "2023-11-14T22:13:20.Z",
            "2023-11-14T22:13:20.1234567890Z",
            "2023-11-14T22:13:20+0100",
            "2023-11-14T22:13:20Zjunk",
            "+2023-11-14T22:13:20Z",
        ] {
            assert!(parse_rfc3339_ms(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn format_and_parse_round_trip() {
        let mut ms: i64 = -62_167_219_200_000; // 0000-01-01T00:00:00Z
        let last: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
                                             // A stride that is prime in ms, so hours, days and leap years all get visited.
        while ms <= last {
            let text = format_rfc3339_ms(ms);
            assert_eq!(parse_rfc3339_ms(&text), Ok(ms), "{text}");
            ms += 9_876_543_210_011;
        }
        assert_eq!(format_rfc3339_ms(last), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339_ms(last + 1), format!("ts:{}", last + 1));
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn civil_days_agree_with_a_day_by_day_walk() {
        let mut days = days_from_civil(1896, 1, 1);
        for year in 1896..2105 {
            for month in 1..=12 {
                for day in 1..=days_in_month(year, month) {
                    assert_eq!(days_from_civil(year, month, day), days);
                    assert_eq!(civil_from_days(days), (year, month, day));
                    days += 1;
                }
            }
        }
    }
}
