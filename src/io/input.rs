//! Recorded input for `tern replay` (product.md section 6): JSON Lines of events, MQTT
//! captures or watermarks, or CSV with a header row.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::compile::expr::ty_of;
use crate::compile::hir::{Program, StreamId, Ty};
use crate::compile::schema::StreamSchema;
use crate::devices::Profile;
use crate::event::{Event, Nanos, Value};

/// One parsed input line.
#[derive(Debug)]
pub enum Record {
    /// An event for the engine.
    Event(Event),
    /// `{"$watermark": T}`
    Watermark(Nanos),
}

/// Why a line was rejected (the reason is stable: it goes to the dead-letter output).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BadLine {
    /// Not JSON, or not an object.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// A `$stream` the rules do not know, or no way to tell the stream.
    #[error("unknown stream: {0}")]
    UnknownStream(String),
    /// A required field is absent or null.
    #[error("missing field `{0}`")]
    MissingField(String),
    /// A field of the wrong type.
    #[error("field `{field}`: expected {expected}, found {found}")]
    WrongType {
        /// Field name.
        field: String,
        /// Declared type.
        expected: &'static str,
        /// What the line had.
        found: String,
    },
    /// A timestamp that does not parse.
    #[error("field `{field}`: bad timestamp {value}")]
    BadTimestamp {
        /// Field name.
        field: String,
        /// The text.
        value: String,
    },
    /// A capture no device profile decodes.
    #[error("{0}")]
    Decode(String),
}

impl BadLine {
    /// Stable machine-readable reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BadLine::InvalidJson(_) => "invalid_json",
            BadLine::UnknownStream(_) => "unknown_stream",
            BadLine::MissingField(_) => "missing_field",
            BadLine::WrongType { .. } => "wrong_type",
            BadLine::BadTimestamp { .. } => "bad_timestamp",
            BadLine::Decode(_) => "decode_error",
        }
    }
}

/// Converts JSON lines into records for one program.
pub struct JsonReader<'p> {
    program: &'p Program,
    default_stream: Option<StreamId>,
}

impl<'p> JsonReader<'p> {
    /// A reader; `default_stream` is used for events without `$stream`.
    pub fn new(program: &'p Program, default_stream: Option<StreamId>) -> JsonReader<'p> {
        JsonReader {
            program,
            default_stream,
        }
    }

    /// Parses one line (already known not to be blank).
    pub fn line(&self, line: &str) -> Result<Record, BadLine> {
        // The common case, an event of the default stream, is decoded straight into the
        // schema's slots without building a JSON tree; anything else takes the general path.
        if let Some(stream) = self.default_stream
            && !line.contains("\"$")
        {
            let schema = self.program.stream(stream);
            if let Some(ev) = fast::decode(schema, stream, line) {
                return Ok(Record::Event(ev));
            }
            // Fall through: the general path reports the precise error.
        }
        let json: Json =
            serde_json::from_str(line).map_err(|e| BadLine::InvalidJson(e.to_string()))?;
        let Json::Object(obj) = json else {
            return Err(BadLine::InvalidJson("not an object".into()));
        };
        if let Some(w) = obj.get("$watermark") {
            return parse_time("$watermark", w).map(Record::Watermark);
        }
        let stream = match obj.get("$stream") {
            Some(Json::String(name)) => self
                .program
                .stream_id(name)
                .ok_or_else(|| BadLine::UnknownStream(name.clone()))?,
            Some(other) => return Err(BadLine::UnknownStream(other.to_string())),
            None => self.default_stream.ok_or_else(|| {
                BadLine::UnknownStream(
                    "the rules read several streams: add \"$stream\" or pass --stream".into(),
                )
            })?,
        };
        let schema = self.program.stream(stream);
        event_from_json(schema, stream, &|name| obj.get(name)).map(Record::Event)
    }
}

/// Builds an event of `schema` from a field lookup.
pub fn event_from_json<'j>(
    schema: &StreamSchema,
    stream: StreamId,
    get: &dyn Fn(&str) -> Option<&'j Json>,
) -> Result<Event, BadLine> {
    let mut fields = Vec::with_capacity(schema.fields.len());
    for f in &schema.fields {
        let v = match get(&f.name) {
            None | Some(Json::Null) => {
                if f.ty.nullable {
                    Value::Null
                } else {
                    return Err(BadLine::MissingField(f.name.clone()));
                }
            }
            Some(j) => convert(&f.name, ty_of(f.ty.base), j)?,
        };
        fields.push(v);
    }
    let time = match fields.get(schema.time_field) {
        Some(Value::Timestamp(t)) => *t,
        _ => {
            let name = schema
                .fields
                .get(schema.time_field)
                .map_or("time", |f| f.name.as_str());
            return Err(BadLine::MissingField(name.to_string()));
        }
    };
    Ok(Event {
        stream: stream.0,
        time,
        fields: fields.into_boxed_slice(),
    })
}

fn kind(j: &Json) -> String {
    match j {
        Json::Null => "null".into(),
        Json::Bool(_) => "a bool".into(),
        Json::Number(n) if n.is_i64() || n.is_u64() => "an integer".into(),
        Json::Number(_) => "a number".into(),
        Json::String(s) => format!("the string {s:?}"),
        Json::Array(_) => "an array".into(),
        Json::Object(_) => "an object".into(),
    }
}

fn convert(field: &str, ty: Ty, j: &Json) -> Result<Value, BadLine> {
    let wrong = |expected| BadLine::WrongType {
        field: field.to_string(),
        expected,
        found: kind(j),
    };
    Ok(match ty {
        Ty::Bool => Value::Bool(j.as_bool().ok_or_else(|| wrong("a bool"))?),
        Ty::Int => Value::Int(j.as_i64().ok_or_else(|| wrong("an integer"))?),
        Ty::Float => Value::Float(j.as_f64().ok_or_else(|| wrong("a number"))?),
        Ty::Str => match j {
            Json::String(s) => Value::Str(Arc::from(s.as_str())),
            _ => return Err(wrong("a string")),
        },
        Ty::Timestamp => Value::Timestamp(parse_time(field, j)?),
        Ty::Duration => match j {
            Json::Number(n) => Value::Duration(
                n.as_i64()
                    .ok_or_else(|| wrong("milliseconds"))?
                    .saturating_mul(1_000_000),
            ),
            Json::String(s) => Value::Duration(
                crate::devices::time::parse_duration(s)
                    .map_err(|_| wrong("a duration like \"30s\""))?,
            ),
            _ => return Err(wrong("a duration")),
        },
        Ty::Null | Ty::Any => Value::Null,
    })
}

/// A timestamp: an RFC 3339 string, or an integer of epoch milliseconds.
pub fn parse_time(field: &str, j: &Json) -> Result<Nanos, BadLine> {
    let bad = || BadLine::BadTimestamp {
        field: field.to_string(),
        value: j.to_string(),
    };
    match j {
        Json::String(s) => parse_rfc3339(s).ok_or_else(bad),
        Json::Number(n) => n
            .as_i64()
            .and_then(|ms| ms.checked_mul(1_000_000))
            .ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Parses RFC 3339 into nanoseconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<Nanos> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
}

/// Decodes a capture line (`{"topic": ..., "payload": ...}`) through the device profiles,
/// exactly as a live message would be.
pub fn capture(program: &Program, profiles: &[Profile], line: &str) -> Result<Record, BadLine> {
    let json: Json = serde_json::from_str(line).map_err(|e| BadLine::InvalidJson(e.to_string()))?;
    let Json::Object(obj) = json else {
        return Err(BadLine::InvalidJson("not an object".into()));
    };
    if let Some(w) = obj.get("$watermark") {
        return parse_time("$watermark", w).map(Record::Watermark);
    }
    let topic = obj
        .get("topic")
        .and_then(Json::as_str)
        .ok_or_else(|| BadLine::MissingField("topic".into()))?;
    let payload = match obj.get("payload") {
        Some(Json::String(s)) => s.clone().into_bytes(),
        Some(other) => other.to_string().into_bytes(),
        None => return Err(BadLine::MissingField("payload".into())),
    };
    let retained = obj.get("retain").and_then(Json::as_bool).unwrap_or(false);
    let Some((idx, _)) = crate::devices::route(profiles, topic) else {
        return Err(BadLine::Decode(format!(
            "no device profile claims topic {topic:?}"
        )));
    };
    let profile = &profiles[idx];
    let mut event = profile
        .decode(topic, &payload, retained)
        .map_err(|e| BadLine::Decode(format!("{}: {e}", e.reason())))?;
    let stream = program
        .stream_id(&profile.stream_name)
        .ok_or_else(|| BadLine::UnknownStream(profile.stream_name.clone()))?;
    event.stream = stream.0;
    Ok(Record::Event(event))
}

/// Reads CSV with a header row naming the stream's fields; empty cells are null.
pub fn csv_records<'p, R: std::io::Read + 'p>(
    program: &'p Program,
    stream: StreamId,
    reader: R,
) -> impl Iterator<Item = (u64, Result<Record, BadLine>)> + 'p {
    let schema = program.stream(stream);
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(reader);
    let headers: Vec<String> = rdr
        .headers()
        .map(|h| h.iter().map(str::to_string).collect())
        .unwrap_or_default();
    let columns: Vec<Option<usize>> = schema
        .fields
        .iter()
        .map(|f| headers.iter().position(|h| *h == f.name))
        .collect();
    rdr.into_records().enumerate().map(move |(i, rec)| {
        let line = i as u64 + 2;
        let rec = match rec {
            Ok(r) => r,
            Err(e) => return (line, Err(BadLine::InvalidJson(e.to_string()))),
        };
        let mut values: Vec<Option<Json>> = Vec::with_capacity(columns.len());
        for (f, col) in schema.fields.iter().zip(&columns) {
            let cell = col.and_then(|c| rec.get(c)).unwrap_or("");
            values.push(if cell.is_empty() {
                None
            } else {
                Some(csv_cell(ty_of(f.ty.base), cell))
            });
        }
        let result = event_from_json(schema, stream, &|name| {
            schema
                .field_index(name)
                .and_then(|i| values.get(i))
                .and_then(|v| v.as_ref())
        })
        .map(Record::Event);
        (line, result)
    })
}

fn csv_cell(ty: Ty, cell: &str) -> Json {
    let t = cell.trim();
    match ty {
        Ty::Int => t
            .parse::<i64>()
            .map_or_else(|_| Json::String(cell.into()), Json::from),
        Ty::Float => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Json::String(cell.into()), Json::Number),
        Ty::Bool => match t {
            "true" | "1" => Json::Bool(true),
            "false" | "0" => Json::Bool(false),
            _ => Json::String(cell.into()),
        },
        Ty::Timestamp => t
            .parse::<i64>()
            .map_or_else(|_| Json::String(cell.into()), Json::from),
        _ => Json::String(cell.into()),
    }
}

/// Schema-driven decoding of one flat JSON object into an event, without a JSON tree.
mod fast {
    use std::borrow::Cow;
    use std::fmt;
    use std::sync::Arc;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

    use crate::compile::expr::ty_of;
    use crate::compile::hir::{StreamId, Ty};
    use crate::compile::schema::StreamSchema;
    use crate::event::{Event, Value};

    /// A JSON scalar, borrowing strings from the line where it can.
    enum Scalar<'a> {
        Null,
        Bool(bool),
        Int(i64),
        Float(f64),
        Str(Cow<'a, str>),
        Other,
    }

    impl<'de> de::Deserialize<'de> for Scalar<'de> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Scalar<'de>;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a JSON scalar")
                }
                fn visit_unit<E>(self) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Null)
                }
                fn visit_none<E>(self) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Null)
                }
                fn visit_bool<E>(self, b: bool) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Bool(b))
                }
                fn visit_i64<E>(self, i: i64) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Int(i))
                }
                fn visit_u64<E>(self, u: u64) -> Result<Scalar<'de>, E> {
                    Ok(i64::try_from(u).map_or(Scalar::Float(u as f64), Scalar::Int))
                }
                fn visit_f64<E>(self, f: f64) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Float(f))
                }
                fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Str(Cow::Borrowed(s)))
                }
                fn visit_str<E>(self, s: &str) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Str(Cow::Owned(s.to_string())))
                }
                fn visit_string<E>(self, s: String) -> Result<Scalar<'de>, E> {
                    Ok(Scalar::Str(Cow::Owned(s)))
                }
                fn visit_seq<A: de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Scalar<'de>, A::Error> {
                    while a.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(Scalar::Other)
                }
                fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Scalar<'de>, A::Error> {
                    while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(Scalar::Other)
                }
            }
            d.deserialize_any(V)
        }
    }

    struct Row<'s> {
        schema: &'s StreamSchema,
    }

    /// Marks a value the fast path cannot convert; the general path then explains why.
    struct Unfit;

    impl<'de> DeserializeSeed<'de> for Row<'_> {
        type Value = Result<Vec<Value>, Unfit>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Row<'_> {
        type Value = Result<Vec<Value>, Unfit>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
            let n = self.schema.fields.len();
            let mut values: Vec<Option<Value>> = vec![None; n];
            let mut fit = true;
            while let Some(key) = a.next_key::<Cow<'de, str>>()? {
                let Some(i) = self.schema.fields.iter().position(|f| f.name == *key) else {
                    a.next_value::<IgnoredAny>()?;
                    continue;
                };
                let scalar: Scalar<'de> = a.next_value()?;
                let ty = ty_of(self.schema.fields[i].ty.base);
                match convert(ty, scalar) {
                    Some(v) => values[i] = Some(v),
                    None => fit = false,
                }
            }
            if !fit {
                return Ok(Err(Unfit));
            }
            let mut out = Vec::with_capacity(n);
            for (f, v) in self.schema.fields.iter().zip(values) {
                match v {
                    Some(Value::Null) | None if !f.ty.nullable => return Ok(Err(Unfit)),
                    Some(v) => out.push(v),
                    None => out.push(Value::Null),
                }
            }
            Ok(Ok(out))
        }
    }

    fn convert(ty: Ty, s: Scalar<'_>) -> Option<Value> {
        Some(match (ty, s) {
            (_, Scalar::Null) => Value::Null,
            (Ty::Bool, Scalar::Bool(b)) => Value::Bool(b),
            (Ty::Int, Scalar::Int(i)) => Value::Int(i),
            (Ty::Float, Scalar::Int(i)) => Value::Float(i as f64),
            (Ty::Float, Scalar::Float(f)) => Value::Float(f),
            (Ty::Str, Scalar::Str(s)) => Value::Str(Arc::from(&*s)),
            (Ty::Timestamp, Scalar::Int(ms)) => Value::Timestamp(ms.checked_mul(1_000_000)?),
            (Ty::Timestamp, Scalar::Str(s)) => Value::Timestamp(super::parse_rfc3339(&s)?),
            _ => return None,
        })
    }

    /// The event, or `None` when the line needs the general path (which explains errors).
    pub fn decode(schema: &StreamSchema, stream: StreamId, line: &str) -> Option<Event> {
        let mut de = serde_json::Deserializer::from_str(line);
        let row = Row { schema };
        let values = match row.deserialize(&mut de) {
            Ok(Ok(v)) => v,
            _ => return None,
        };
        de.end().ok()?;
        let time = match values.get(schema.time_field) {
            Some(Value::Timestamp(t)) => *t,
            _ => return None,
        };
        Some(Event {
            stream: stream.0,
            time,
            fields: values.into_boxed_slice(),
        })
    }
}
