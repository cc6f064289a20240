//! Time in profiles: durations such as `"1h30m"` and the timestamp formats a payload may use.
//!
//! Formats are compiled once at load time; decoding a timestamp allocates nothing.

use std::sync::Arc;

use chrono::format::{Item, Parsed, StrftimeItems};
use chrono::{DateTime, FixedOffset, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};

use crate::event::Nanos;

/// Nanoseconds per unit of a duration literal.
const DURATION_UNITS: &[(&str, i64)] = &[
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Parses a duration as the rule language writes it (`500ms`, `30s`, `1h30m`, `1d`) into
/// nanoseconds. Units are `ms`, `s`, `m` (minutes), `h` and `d`; parts add up.
pub fn parse_duration(text: &str) -> Result<Nanos, String> {
    if text.is_empty() {
        return Err("empty duration".into());
    }
    let bytes = text.as_bytes();
    let mut total: i64 = 0;
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        let mut n: i64 = 0;
        while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'_') {
            if bytes[i] != b'_' {
                n = n
                    .checked_mul(10)
                    .and_then(|n| n.checked_add(i64::from(bytes[i] - b'0')))
                    .ok_or_else(|| format!("`{text}` is too long a duration"))?;
            }
            i += 1;
        }
        if i == start || !bytes[start].is_ascii_digit() {
            return Err(format!(
                "`{text}` is not a duration: expected a number at `{}`",
                &text[start..]
            ));
        }
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit = &text[unit_start..i];
        let Some(&(_, scale)) = DURATION_UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(if unit.is_empty() {
                format!(
                    "`{text}` needs a unit after `{}`: ms, s, m, h or d",
                    &text[start..i]
                )
            } else {
                format!("`{unit}` is not a duration unit: use ms, s, m, h or d")
            });
        };
        total = n
            .checked_mul(scale)
            .and_then(|part| total.checked_add(part))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
    }
    Ok(total)
}

/// The unit of a number of seconds (or smaller) since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpochUnit {
    /// Seconds, may be fractional.
    Seconds,
    /// Milliseconds.
    Millis,
    /// Microseconds.
    Micros,
    /// Nanoseconds.
    Nanos,
}

impl EpochUnit {
    fn nanos(self) -> i64 {
        match self {
            EpochUnit::Seconds => 1_000_000_000,
            EpochUnit::Millis => 1_000_000,
            EpochUnit::Micros => 1_000,
            EpochUnit::Nanos => 1,
        }
    }

    /// The format's name in a profile.
    pub fn as_str(self) -> &'static str {
        match self {
            EpochUnit::Seconds => "epoch_s",
            EpochUnit::Millis => "epoch_ms",
            EpochUnit::Micros => "epoch_us",
            EpochUnit::Nanos => "epoch_ns",
        }
    }

    /// The unit in words.
    pub fn plural(self) -> &'static str {
        match self {
            EpochUnit::Seconds => "seconds",
            EpochUnit::Millis => "milliseconds",
            EpochUnit::Micros => "microseconds",
            EpochUnit::Nanos => "nanoseconds",
        }
    }

    /// Converts a whole number of units, failing outside the range of i64 nanoseconds
    /// (years 1677 to 2262).
    pub fn from_int(self, n: i64) -> Option<Nanos> {
        n.checked_mul(self.nanos())
    }

    /// Converts a number written in decimal (`1709280000.25`, `1.5e3`), exactly, rounding
    /// half away from zero to the nanosecond. Going through `f64` would not do: at today's
    /// epoch seconds an f64 is only precise to about 256 ns.
    pub fn from_decimal(self, text: &str) -> Option<Nanos> {
        let (negative, rest) = match text.as_bytes().first()? {
            b'-' => (true, &text[1..]),
            b'+' => (false, &text[1..]),
            _ => (false, text),
        };
        let (mantissa_text, exponent) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i32>().ok()?),
            None => (rest, 0),
        };
        let (int_part, frac_part) = mantissa_text.split_once('.').unwrap_or((mantissa_text, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        // Digits beyond what i128 holds cannot change a result that must fit i64 nanoseconds
        // by more than rounding; keep the first 30 significant ones.
        let mut mantissa: i128 = 0;
        let mut scale: i32 = exponent + self.nanos().ilog10() as i32;
        let mut kept = 0;
        for (i, b) in int_part.bytes().chain(frac_part.bytes()).enumerate() {
            if !b.is_ascii_digit() {
                return None;
            }
            let in_fraction = i >= int_part.len();
            if kept < 30 {
                mantissa = mantissa * 10 + i128::from(b - b'0');
                if mantissa != 0 {
                    kept += 1;
                }
                if in_fraction {
                    scale -= 1;
                }
            } else if !in_fraction {
                scale += 1;
            }
        }
        let value = if scale >= 0 {
            mantissa.checked_mul(10i128.checked_pow(u32::try_from(scale).ok()?)?)?
        } else {
            let divisor = 10i128.checked_pow(scale.unsigned_abs())?;
            (mantissa + divisor / 2) / divisor
        };
        let value = if negative { -value } else { value };
        i64::try_from(value).ok()
    }
}

/// The zone of a local time written without an offset.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Zone {
    /// A fixed offset such as `+01:00` (`UTC` is `+00:00`).
    Fixed(FixedOffset),
    /// An IANA zone such as `Europe/Berlin`, with its daylight saving rules.
    Named(chrono_tz::Tz),
}

impl Zone {
    /// Parses `UTC`, `Z`, a fixed offset (`+01:00`, `-0530`) or an IANA zone name.
    pub fn parse(text: &str) -> Result<Zone, String> {
        if text.eq_ignore_ascii_case("utc") || text == "Z" {
            return Ok(Zone::Fixed(utc_offset()));
        }
        if text.starts_with(['+', '-']) {
            return parse_offset(text).map(Zone::Fixed).ok_or_else(|| {
                format!("`{text}` is not an offset: write `+01:00`, `-05:30` or `+0100`")
            });
        }
        text.parse::<chrono_tz::Tz>().map(Zone::Named).map_err(|_| {
            format!(
                "`{text}` is neither an IANA time zone (`Europe/Berlin`) nor an offset (`+01:00`)"
            )
        })
    }

    /// The UTC instant of a local time. In a daylight saving fold the earlier instant wins;
    /// a time in a gap (skipped by the clocks) does not exist and is an error.
    fn resolve(&self, local: &NaiveDateTime) -> Option<DateTime<Utc>> {
        match self {
            Zone::Fixed(off) => earliest(off.from_local_datetime(local)),
            Zone::Named(tz) => earliest(tz.from_local_datetime(local)),
        }
    }
}

fn earliest<T: TimeZone>(r: LocalResult<DateTime<T>>) -> Option<DateTime<Utc>> {
    r.earliest().map(|t| t.with_timezone(&Utc))
}

fn utc_offset() -> FixedOffset {
    Utc.fix()
}

fn parse_offset(text: &str) -> Option<FixedOffset> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let digits: String = rest.chars().filter(|c| *c != ':').collect();
    let colons = rest.matches(':').count();
    let ok_shape = match digits.len() {
        2 => colons == 0,
        4 => colons == 0 || (colons == 1 && rest.as_bytes().get(2) == Some(&b':')),
        _ => false,
    };
    if !ok_shape || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let hours: i32 = digits.get(..2)?.parse().ok()?;
    let minutes: i32 = digits
        .get(2..)
        .filter(|m| !m.is_empty())
        .map_or(Some(0), |m| m.parse().ok())?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (hours * 3600 + minutes * 60))
}

/// How a timestamp is written in a payload.
#[derive(Clone, Debug)]
pub enum TimeFormat {
    /// An RFC 3339 string with an offset: `2024-03-01T08:00:00.5+01:00`.
    Rfc3339,
    /// A number since the Unix epoch.
    Epoch(EpochUnit),
    /// A chrono (strftime-like) format string, with the zone for times written without offset.
    Pattern(Pattern),
}

/// A compiled chrono format string.
#[derive(Clone, Debug)]
pub struct Pattern {
    text: Box<str>,
    items: Arc<[Item<'static>]>,
    /// `Some` when the format has no offset of its own.
    zone: Option<Zone>,
}

/// Why a timestamp format in a profile is not usable.
#[derive(Debug, PartialEq)]
pub struct FormatError {
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: String,
    /// True when the `timezone` is at fault rather than the format.
    pub on_timezone: bool,
    /// The bytes of the format at fault, when it is one specifier.
    pub range: Option<std::ops::Range<usize>>,
}

/// The format names a profile may use besides a chrono format string.
pub const FORMAT_NAMES: &[&str] = &["rfc3339", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns"];

impl TimeFormat {
    /// Compiles a format as written in a profile. `timezone` only applies to a chrono format
    /// string without an offset of its own, where it defaults to UTC.
    pub fn parse(format: &str, timezone: Option<&str>) -> Result<TimeFormat, FormatError> {
        let named = match format {
            "rfc3339" => Some(TimeFormat::Rfc3339),
            "epoch_s" => Some(TimeFormat::Epoch(EpochUnit::Seconds)),
            "epoch_ms" => Some(TimeFormat::Epoch(EpochUnit::Millis)),
            "epoch_us" => Some(TimeFormat::Epoch(EpochUnit::Micros)),
            "epoch_ns" => Some(TimeFormat::Epoch(EpochUnit::Nanos)),
            _ => None,
        };
        if let Some(named) = named {
            if timezone.is_some() {
                return Err(FormatError {
                    message: format!("`timezone` does not apply to `{format}`"),
                    hint: "a timezone is only read with a chrono format string whose times carry no offset; remove it".into(),
                    on_timezone: true,
                    range: None,
                });
            }
            return Ok(named);
        }
        if !format.contains('%') {
            let hint = match crate::lang::suggest::closest(format, FORMAT_NAMES.iter().copied()) {
                Some(best) => format!("did you mean `{best}`?"),
                None => "use rfc3339, epoch_s, epoch_ms, epoch_us, epoch_ns, or a chrono format string such as \"%Y-%m-%d %H:%M:%S%.f\"".into(),
            };
            return Err(FormatError {
                message: format!("`{format}` is not a timestamp format"),
                hint,
                on_timezone: false,
                range: None,
            });
        }
        let items = StrftimeItems::new(format)
            .parse_to_owned()
            .map_err(|_| {
                let range = bad_specifier(format);
                let what = range
                    .clone()
                    .and_then(|r| format.get(r))
                    .map_or_else(|| format!("`{format}` has"), |spec| format!("`{spec}` is"));
                FormatError {
                    message: format!("{what} an unknown or incomplete `%` specifier"),
                    hint: "see chrono's strftime table (docs/devices.md links it); write `%%` for a literal `%`".into(),
                    on_timezone: false,
                    range,
                }
            })?;
        let items: Arc<[Item<'static>]> = items.into();
        let has_offset = round_trip(&items)?;
        let zone = match (has_offset, timezone) {
            (true, Some(_)) => {
                return Err(FormatError {
                    message: "the format reads an offset (`%z`), so `timezone` would be ignored".into(),
                    hint: "remove `timezone`, or remove the offset from the format".into(),
                    on_timezone: true,
                    range: None,
                });
            }
            (true, None) => None,
            (false, Some(tz)) => Some(Zone::parse(tz).map_err(|message| FormatError {
                message,
                hint: "write an IANA name such as \"Europe/Berlin\", an offset such as \"+01:00\", or \"UTC\"".into(),
                on_timezone: true,
                    range: None,
            })?),
            (false, None) => Some(Zone::Fixed(utc_offset())),
        };
        Ok(TimeFormat::Pattern(Pattern {
            text: format.into(),
            items,
            zone,
        }))
    }

    /// A short description for error messages.
    pub fn describe(&self) -> String {
        match self {
            TimeFormat::Rfc3339 => "an RFC 3339 timestamp".into(),
            TimeFormat::Epoch(unit) => format!(
                "a valid {} timestamp ({} since 1970, years 1677 to 2262)",
                unit.as_str(),
                unit.plural()
            ),
            TimeFormat::Pattern(p) => format!("a time in the format `{}`", p.text),
        }
    }

    /// Parses a timestamp written as a string.
    pub fn parse_str(&self, s: &str) -> Option<Nanos> {
        match self {
            TimeFormat::Rfc3339 => DateTime::parse_from_rfc3339(s)
                .ok()
                .and_then(|t| t.timestamp_nanos_opt()),
            TimeFormat::Epoch(_) => None,
            TimeFormat::Pattern(p) => {
                let mut parsed = Parsed::new();
                chrono::format::parse(&mut parsed, s, p.items.iter()).ok()?;
                let utc = match &p.zone {
                    None => parsed.to_datetime().ok()?.with_timezone(&Utc),
                    Some(zone) => zone.resolve(&parsed.to_naive_datetime_with_offset(0).ok()?)?,
                };
                utc.timestamp_nanos_opt()
            }
        }
    }

    /// True when the format reads numbers rather than strings.
    pub fn is_numeric(&self) -> bool {
        matches!(self, TimeFormat::Epoch(_))
    }
}

/// The first `%` specifier chrono does not know, as a byte range: the shortest valid
/// specifier is taken at each `%` (chrono's are prefix-free), and a `%` with none is at fault
/// up to its first letter.
fn bad_specifier(format: &str) -> Option<std::ops::Range<usize>> {
    let valid = |piece: &str| StrftimeItems::new(piece).all(|item| !matches!(item, Item::Error));
    let mut i = 0;
    while let Some(found) = format[i..].find('%') {
        let start = i + found;
        let ends =
            (start + 2..=(start + 5).min(format.len())).filter(|&j| format.is_char_boundary(j));
        match ends.clone().find(|&j| valid(&format[start..j])) {
            Some(end) => i = end,
            None => {
                let end = format[start + 1..]
                    .char_indices()
                    .find(|(_, c)| c.is_ascii_alphabetic())
                    .map_or(format.len(), |(k, c)| start + 1 + k + c.len_utf8());
                return Some(start..end.min(start + 5).max(start + 1));
            }
        }
    }
    None
}

/// Formats a sample instant with the items and parses it back, so that a format that cannot
/// describe a full date and time (`%H:%M` alone) is rejected at load rather than on every
/// message. Returns whether the format carries an offset.
fn round_trip(items: &[Item<'static>]) -> Result<bool, FormatError> {
    let incomplete = || {
        FormatError {
        message: "the format does not describe a full date and time".into(),
        hint: "a timestamp needs a date (`%Y-%m-%d`, `%d.%m.%Y`, ...) and a time of day (`%H:%M:%S`), or `%s`".into(),
        on_timezone: false,
                range: None,
    }
    };
    let sample = FixedOffset::east_opt(3600)
        .and_then(|off| off.with_ymd_and_hms(2024, 3, 1, 8, 9, 10).single())
        .ok_or_else(incomplete)?;
    let text = sample.format_with_items(items.iter()).to_string();
    let mut parsed = Parsed::new();
    chrono::format::parse(&mut parsed, &text, items.iter()).map_err(|_| incomplete())?;
    if parsed.offset().is_some() {
        parsed.to_datetime().map_err(|_| incomplete())?;
        Ok(true)
    } else {
        parsed
            .to_naive_datetime_with_offset(0)
            .map_err(|_| incomplete())?;
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn durations_follow_the_rule_language() {
        assert_eq!(parse_duration("500ms"), Ok(500_000_000));
        assert_eq!(parse_duration("30s"), Ok(30 * S));
        assert_eq!(parse_duration("5m"), Ok(300 * S));
        assert_eq!(parse_duration("2h"), Ok(7200 * S));
        assert_eq!(parse_duration("1d"), Ok(86_400 * S));
        assert_eq!(parse_duration("1h30m"), Ok(5400 * S));
        assert_eq!(parse_duration("1_000ms"), Ok(S));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5 s").is_err());
        assert!(
            parse_duration("5w")
                .unwrap_err()
                .contains("`w` is not a duration unit")
        );
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(
            parse_duration("99999999999999d")
                .unwrap_err()
                .contains("too long")
        );
    }

    #[test]
    fn rfc3339_keeps_nanoseconds_and_offsets() {
        let f = TimeFormat::parse("rfc3339", None).unwrap();
        assert_eq!(f.parse_str("1970-01-01T00:00:01.000000002Z"), Some(S + 2));
        assert_eq!(f.parse_str("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(f.parse_str("1970-01-01 00:00:00"), None);
    }

    #[test]
    fn epoch_units_and_range() {
        let sec = EpochUnit::Seconds;
        assert_eq!(sec.from_decimal("1.5"), Some(1_500_000_000));
        assert_eq!(
            sec.from_decimal("1709280000.25"),
            Some(1_709_280_000_250_000_000)
        );
        assert_eq!(sec.from_decimal("-0.5"), Some(-500_000_000));
        assert_eq!(sec.from_decimal("1.5e3"), Some(1_500 * S));
        assert_eq!(sec.from_decimal("15E-1"), Some(1_500_000_000));
        assert_eq!(sec.from_decimal("0.0000000015"), Some(2));
        assert_eq!(sec.from_decimal("1e30"), None);
        assert_eq!(sec.from_decimal("1e-400"), None);
        assert_eq!(sec.from_decimal("."), None);
        assert_eq!(sec.from_decimal("1x"), None);
        assert_eq!(EpochUnit::Nanos.from_decimal("7.5"), Some(8));
        assert_eq!(EpochUnit::Millis.from_int(1), Some(1_000_000));
        assert_eq!(EpochUnit::Seconds.from_int(i64::MAX / 10), None);
    }

    #[test]
    fn patterns_use_their_zone() {
        let berlin = TimeFormat::parse("%Y-%m-%d %H:%M:%S%.f", Some("Europe/Berlin")).unwrap();
        // 08:00 in Berlin in March (winter time) is 07:00 UTC.
        let expected = DateTime::parse_from_rfc3339("2024-03-01T07:00:00.123Z")
            .unwrap()
            .timestamp_nanos_opt();
        assert_eq!(berlin.parse_str("2024-03-01 08:00:00.123"), expected);
        // In July, daylight saving time: UTC+2.
        let summer = DateTime::parse_from_rfc3339("2024-07-01T06:00:00Z")
            .unwrap()
            .timestamp_nanos_opt();
        assert_eq!(berlin.parse_str("2024-07-01 08:00:00"), summer);
        // 02:30 on 2024-03-31 does not exist in Berlin.
        assert_eq!(berlin.parse_str("2024-03-31 02:30:00"), None);

        let fixed = TimeFormat::parse("%d.%m.%Y %H:%M", Some("+01:00")).unwrap();
        assert_eq!(
            fixed.parse_str("01.03.2024 08:00"),
            DateTime::parse_from_rfc3339("2024-03-01T07:00:00Z")
                .unwrap()
                .timestamp_nanos_opt()
        );
        let utc = TimeFormat::parse("%Y-%m-%d %H:%M:%S", None).unwrap();
        assert_eq!(utc.parse_str("1970-01-01 00:00:10"), Some(10 * S));
        let own = TimeFormat::parse("%Y-%m-%d %H:%M:%S %z", None).unwrap();
        assert_eq!(own.parse_str("1970-01-01 01:00:10 +0100"), Some(10 * S));
    }

    #[test]
    fn bad_formats_are_explained() {
        let e = TimeFormat::parse("epoch_sec", None).unwrap_err();
        assert_eq!(e.hint, "did you mean `epoch_s`?");
        let e = TimeFormat::parse("%Y-%m-%d %Q", None).unwrap_err();
        assert!(e.message.contains("specifier"), "{e:?}");
        assert_eq!(e.range, Some(9..11));
        assert_eq!(bad_specifier("%Y%.3f%:z%%%.q"), Some(11..14));
        assert_eq!(bad_specifier("%Y-%"), Some(3..4));
        assert_eq!(bad_specifier("%Y"), None);
        let e = TimeFormat::parse("%H:%M", None).unwrap_err();
        assert!(e.message.contains("full date and time"), "{e:?}");
        let e = TimeFormat::parse("rfc3339", Some("UTC")).unwrap_err();
        assert!(e.message.contains("does not apply"), "{e:?}");
        let e = TimeFormat::parse("%Y-%m-%d %H:%M:%S%z", Some("UTC")).unwrap_err();
        assert!(e.message.contains("offset"), "{e:?}");
        let e = TimeFormat::parse("%Y-%m-%d %H:%M", Some("Europe/Berlni")).unwrap_err();
        assert!(e.message.contains("IANA"), "{e:?}");
    }

    #[test]
    fn zones() {
        assert_eq!(
            Zone::parse("+01:00"),
            Ok(Zone::Fixed(FixedOffset::east_opt(3600).unwrap()))
        );
        assert_eq!(
            Zone::parse("-0530"),
            Ok(Zone::Fixed(FixedOffset::west_opt(5 * 3600 + 1800).unwrap()))
        );
        assert_eq!(Zone::parse("UTC"), Ok(Zone::Fixed(utc_offset())));
        assert!(Zone::parse("+1:00").is_err());
        assert!(Zone::parse("+25:00").is_err());
        assert!(matches!(
            Zone::parse("America/New_York"),
            Ok(Zone::Named(_))
        ));
    }
}
