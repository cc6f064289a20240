//! Payload to typed event: each field is read from its source, checked against its type and
//! converted, in schema order. Anything that does not fit is a [`DecodeError`], never a
//! half-filled event.

use arcstr::ArcStr;

use serde_json::Value as Json;

use super::path::FieldPath;
use super::time::{EpochUnit, TimeFormat, parse_duration};
use crate::event::{Nanos, Value};
use crate::lang::ast::TypeName;

/// Why a message was not turned into an event. The live pipeline dead-letters the message
/// with [`DecodeError::reason`] (stable, for counting and filtering) and the message text.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not JSON.
    #[error("payload is not valid JSON: {detail}")]
    InvalidJson {
        /// serde_json's description, with line and column.
        detail: String,
    },
    /// A required field is absent or null.
    #[error("field `{field}` is missing: nothing at `{path}`{}", if *.from_script { " in the decoder's result" } else { "" })]
    MissingField {
        /// The field.
        field: String,
        /// Where it was looked for.
        path: String,
        /// True when the value was looked for in a decoder script's result.
        from_script: bool,
    },
    /// The value has the wrong JSON type, or does not fit the field's type.
    #[error("field `{field}`: expected {expected}, found {found}")]
    WrongType {
        /// The field.
        field: String,
        /// The type the profile declares, with any detail ("int (a whole number)").
        expected: String,
        /// What the payload has, with a short excerpt of the value.
        found: String,
    },
    /// A timestamp that does not parse in the field's format or is out of range.
    #[error("field `{field}`: {found} is not {expected}")]
    BadTimestamp {
        /// The field.
        field: String,
        /// The format, described.
        expected: String,
        /// Excerpt of the value.
        found: String,
    },
    /// The decoder script failed, hit a limit, or returned something that is not a map.
    #[error("decoder script failed: {detail}")]
    ScriptError {
        /// Rhai's message, with the script position when there is one.
        detail: String,
    },
    /// A retained message, and the profile says `retained = "ignore"`.
    #[error("retained message ignored (the profile sets retained = \"ignore\")")]
    RetainedIgnored,
    /// The topic does not match the profile's template.
    #[error("topic `{topic}` does not match `{template}`")]
    TopicMismatch {
        /// The message's topic.
        topic: String,
        /// The profile's template.
        template: String,
    },
}

impl DecodeError {
    /// A stable, machine-readable reason, one per variant.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::InvalidJson { .. } => "invalid_json",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::BadTimestamp { .. } => "bad_timestamp",
            DecodeError::ScriptError { .. } => "script_error",
            DecodeError::RetainedIgnored => "retained_ignored",
            DecodeError::TopicMismatch { .. } => "topic_mismatch",
        }
    }

    /// Every reason, for docs and metrics labels.
    pub const REASONS: &'static [&'static str] = &[
        "invalid_json",
        "missing_field",
        "wrong_type",
        "bad_timestamp",
        "script_error",
        "retained_ignored",
        "topic_mismatch",
    ];
}

/// Where a field's value comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldSource {
    /// A topic capture, by index in the template.
    Capture(usize),
    /// A path into the payload (or into a decoder script's result).
    Path(FieldPath),
}

/// How a field's value is converted, beyond its base type.
#[derive(Clone, Debug)]
pub enum Conversion {
    /// bool, int, float, string: the JSON type decides.
    Plain,
    /// A timestamp in this format.
    Time(TimeFormat),
    /// A duration: a string such as `"1h30m"`, or a number of these units.
    Duration(Option<EpochUnit>),
}

/// One field of a profile, compiled.
#[derive(Clone, Debug)]
pub struct ProfileField {
    /// Name, as rules write it.
    pub name: String,
    /// Base type.
    pub ty: TypeName,
    /// Missing or null becomes `Value::Null` instead of an error.
    pub optional: bool,
    /// Free text for docs and alerts ("km/h").
    pub unit: Option<String>,
    /// Where the value comes from.
    pub source: FieldSource,
    /// How it is converted.
    pub conversion: Conversion,
}

/// What `found` says about a JSON value: its type and a short excerpt.
fn describe(v: &Json) -> String {
    let excerpt = |s: String| {
        if s.chars().count() > 40 {
            let cut: String = s.chars().take(37).collect();
            format!("{cut}...")
        } else {
            s
        }
    };
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => format!("bool {b}"),
        Json::Number(n) if n.is_f64() => format!("float {}", excerpt(n.to_string())),
        Json::Number(n) => format!("int {}", excerpt(n.to_string())),
        Json::String(s) => format!("string {}", excerpt(format!("{s:?}"))),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

impl ProfileField {
    fn wrong(&self, expected: impl Into<String>, found: String) -> DecodeError {
        DecodeError::WrongType {
            field: self.name.clone(),
            expected: expected.into(),
            found,
        }
    }

    /// Converts a JSON value (not null) to this field's type.
    pub(crate) fn convert_json(&self, v: &Json) -> Result<Value, DecodeError> {
        match (self.ty, v) {
            (TypeName::Bool, Json::Bool(b)) => Ok(Value::Bool(*b)),
            (TypeName::Int, Json::Number(n)) => match n.as_i64() {
                Some(i) => Ok(Value::Int(i)),
                None if n.is_f64() => Err(self.wrong(
                    "int (a whole number written without a decimal point or exponent)",
                    describe(v),
                )),
                None => Err(self.wrong("int (64-bit signed)", format!("{n}, which does not fit"))),
            },
            (TypeName::Float, Json::Number(n)) => match n.as_f64() {
                Some(f) => Ok(Value::Float(f)),
                None => Err(self.wrong("float", describe(v))),
            },
            (TypeName::String, Json::String(s)) => Ok(Value::Str(ArcStr::from(s.as_str()))),
            (TypeName::Timestamp, _) => self.convert_time(v).map(Value::Timestamp),
            (TypeName::Duration, _) => self.convert_duration(v).map(Value::Duration),
            (ty, _) => Err(self.wrong(ty.as_str(), describe(v))),
        }
    }

    fn convert_time(&self, v: &Json) -> Result<Nanos, DecodeError> {
        let Conversion::Time(format) = &self.conversion else {
            return Err(self.wrong("timestamp", describe(v)));
        };
        let bad = || DecodeError::BadTimestamp {
            field: self.name.clone(),
            expected: format.describe(),
            found: describe(v),
        };
        match (format, v) {
            (TimeFormat::Epoch(unit), Json::Number(n)) => match n.as_i64() {
                Some(i) => unit.from_int(i),
                None => unit.from_decimal(&n.to_string()),
            }
            .ok_or_else(bad),
            (TimeFormat::Epoch(unit), _) => Err(self.wrong(
                format!("timestamp as a number ({})", unit.as_str()),
                describe(v),
            )),
            (_, Json::String(s)) => format.parse_str(s).ok_or_else(bad),
            (_, _) => Err(self.wrong(
                format!("timestamp as a string ({})", format.describe()),
                describe(v),
            )),
        }
    }

    fn convert_duration(&self, v: &Json) -> Result<Nanos, DecodeError> {
        let unit = match &self.conversion {
            Conversion::Duration(unit) => *unit,
            _ => None,
        };
        match (unit, v) {
            (None, Json::String(s)) => {
                parse_duration(s).map_err(|_| self.wrong("duration such as \"1h30m\"", describe(v)))
            }
            (Some(unit), Json::Number(n)) => match n.as_i64() {
                Some(i) => unit.from_int(i),
                None => unit.from_decimal(&n.to_string()),
            }
            .ok_or_else(|| self.wrong("duration within ±292 years", describe(v))),
            (None, _) => Err(self.wrong("duration as a string such as \"1h30m\"", describe(v))),
            (Some(unit), _) => Err(self.wrong(
                format!("duration as a number ({})", duration_unit_name(unit)),
                describe(v),
            )),
        }
    }

    /// Converts a topic level to this field's type.
    pub(crate) fn convert_level(&self, level: &str) -> Result<Value, DecodeError> {
        let found = || format!("topic level {level:?}");
        match self.ty {
            TypeName::String => Ok(Value::Str(ArcStr::from(level))),
            TypeName::Int => level
                .parse()
                .map(Value::Int)
                .map_err(|_| self.wrong("int", found())),
            TypeName::Float => level
                .parse()
                .map(Value::Float)
                .map_err(|_| self.wrong("float", found())),
            TypeName::Bool => match level {
                "true" => Ok(Value::Bool(true)),
                "false" => Ok(Value::Bool(false)),
                _ => Err(self.wrong("bool (true or false)", found())),
            },
            // A numeric level is a number (epoch or duration units), anything else a string.
            TypeName::Timestamp | TypeName::Duration => {
                let value = match serde_json::from_str::<Json>(level) {
                    Ok(n @ Json::Number(_)) => n,
                    _ => Json::String(level.to_owned()),
                };
                self.convert_json(&value)
            }
        }
    }
}

/// The name of a duration's numeric unit in a profile (`format = "ms"`).
pub(crate) fn duration_unit_name(unit: EpochUnit) -> &'static str {
    match unit {
        EpochUnit::Seconds => "s",
        EpochUnit::Millis => "ms",
        EpochUnit::Micros => "us",
        EpochUnit::Nanos => "ns",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn field(ty: TypeName, conversion: Conversion) -> ProfileField {
        ProfileField {
            name: "f".into(),
            ty,
            optional: false,
            unit: None,
            source: FieldSource::Path(FieldPath::key("f")),
            conversion,
        }
    }

    fn conv(f: &ProfileField, json: &str) -> Result<Value, DecodeError> {
        f.convert_json(&serde_json::from_str(json).unwrap())
    }

    #[test]
    fn ints_are_whole_and_fit() {
        let f = field(TypeName::Int, Conversion::Plain);
        assert_eq!(conv(&f, "-3"), Ok(Value::Int(-3)));
        let e = conv(&f, "3.0").unwrap_err();
        assert_eq!(e.reason(), "wrong_type");
        assert_eq!(
            e.to_string(),
            "field `f`: expected int (a whole number written without a decimal point or exponent), found float 3.0"
        );
        let e = conv(&f, "18446744073709551615").unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        assert_eq!(conv(&f, "\"3\"").unwrap_err().reason(), "wrong_type");
    }

    #[test]
    fn floats_take_ints() {
        let f = field(TypeName::Float, Conversion::Plain);
        assert_eq!(conv(&f, "12"), Ok(Value::Float(12.0)));
        assert_eq!(conv(&f, "1.5e3"), Ok(Value::Float(1500.0)));
        assert_eq!(conv(&f, "true").unwrap_err().reason(), "wrong_type");
    }

    #[test]
    fn durations_as_text_or_numbers() {
        let text = field(TypeName::Duration, Conversion::Duration(None));
        assert_eq!(conv(&text, "\"1m\""), Ok(Value::Duration(60_000_000_000)));
        assert_eq!(conv(&text, "60").unwrap_err().reason(), "wrong_type");
        let ms = field(
            TypeName::Duration,
            Conversion::Duration(Some(EpochUnit::Millis)),
        );
        assert_eq!(conv(&ms, "1500"), Ok(Value::Duration(1_500_000_000)));
        assert_eq!(conv(&ms, "0.5"), Ok(Value::Duration(500_000)));
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let f = field(TypeName::Bool, Conversion::Plain);
        let long = format!("\"{}\"", "x".repeat(100));
        let msg = conv(&f, &long).unwrap_err().to_string();
        assert!(msg.ends_with("...") && msg.len() < 100, "{msg}");
    }

    #[test]
    fn levels_convert_by_type() {
        let f = field(TypeName::Int, Conversion::Plain);
        assert_eq!(f.convert_level("42"), Ok(Value::Int(42)));
        let e = f.convert_level("x").unwrap_err();
        assert_eq!(
            e.to_string(),
            "field `f`: expected int, found topic level \"x\""
        );
        let ms = field(
            TypeName::Timestamp,
            Conversion::Time(TimeFormat::Epoch(EpochUnit::Millis)),
        );
        assert_eq!(
            ms.convert_level("1500"),
            Ok(Value::Timestamp(1_500_000_000))
        );
        let text = field(TypeName::Timestamp, Conversion::Time(TimeFormat::Rfc3339));
        assert_eq!(
            text.convert_level("1970-01-01T00:00:02Z"),
            Ok(Value::Timestamp(2_000_000_000))
        );
    }
}
