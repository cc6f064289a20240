//! Recorded input for `tern replay` (product.md section 6): JSON Lines of events, MQTT
//! captures or watermarks, or CSV with a header row.

use arcstr::ArcStr;

use serde_json::Value as Json;

use crate::compile::expr::ty_of;
use crate::compile::hir::{Program, StreamId, Ty};
use crate::compile::schema::StreamSchema;
use crate::devices::Profile;
use crate::event::{Event, Nanos, Value, ValueRef};

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

/// Reads lines a block at a time: one read per megabyte, each line a slice of the block, so
/// nothing is copied or allocated per line (a line longer than the block grows it).
pub struct Lines<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    line_no: u64,
}

impl<R: std::io::Read> Lines<R> {
    /// Lines of `inner`.
    pub fn new(inner: R) -> Lines<R> {
        Lines {
            inner,
            buf: vec![0; 1 << 20],
            start: 0,
            end: 0,
            eof: false,
            line_no: 0,
        }
    }

    /// The next line and its number (from 1), without its `\n` and trailing `\r`s.
    pub fn next_line(&mut self) -> std::io::Result<Option<(u64, &[u8])>> {
        let line = loop {
            let pending = &self.buf[self.start..self.end];
            if let Some(i) = memchr::memchr(b'\n', pending) {
                let line = self.start..self.start + i;
                self.start += i + 1;
                break line;
            }
            if self.eof {
                if pending.is_empty() {
                    return Ok(None);
                }
                let line = self.start..self.end;
                self.start = self.end;
                break line;
            }
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.line_no += 1;
        let mut bytes = &self.buf[line];
        while let [rest @ .., b'\r'] = bytes {
            bytes = rest;
        }
        Ok(Some((self.line_no, bytes)))
    }
}

/// True for a line of nothing but whitespace, which input files may hold between records.
/// JSON's whitespace is ASCII: a line of other spaces is a bad line, not nothing.
pub fn is_blank(line: &[u8]) -> bool {
    line.iter().all(u8::is_ascii_whitespace)
}

/// A line's text; one that is not UTF-8 is a bad line (it is not JSON), not the end of the
/// input.
pub fn line_text(bytes: &[u8]) -> Result<&str, BadLine> {
    std::str::from_utf8(bytes)
        .map_err(|e| BadLine::InvalidJson(format!("not UTF-8 (byte {})", e.valid_up_to() + 1)))
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
        self.bytes(line.as_bytes())
    }

    /// Parses one line as read (already known not to be blank): not UTF-8 is an error of
    /// that line.
    pub fn bytes(&self, line: &[u8]) -> Result<Record, BadLine> {
        // The common case, an event of the default stream, is decoded straight into the
        // schema's slots without building a JSON tree; anything else takes the general path.
        if let Some(stream) = self.default_stream {
            let schema = self.program.stream(stream);
            if let Some(ev) = fast::decode(schema, stream, line) {
                return Ok(Record::Event(ev));
            }
            // Fall through: the general path reports the precise error.
        }
        self.general(line_text(line)?)
    }

    fn general(&self, line: &str) -> Result<Record, BadLine> {
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
    Event::build(stream.0, schema.fields.len(), |fields| {
        for (i, f) in schema.fields.iter().enumerate() {
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
            fields.set(i, v);
        }
        match fields.get(schema.time_field) {
            Some(ValueRef::Timestamp(t)) => Ok(t),
            _ => {
                let name = schema
                    .fields
                    .get(schema.time_field)
                    .map_or("time", |f| f.name.as_str());
                Err(BadLine::MissingField(name.to_string()))
            }
        }
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
            Json::String(s) => Value::Str(ArcStr::from(s.as_str())),
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
    event.set_stream(stream.0);
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
///
/// A byte scanner that reads `{"name": scalar, ...}` and converts each scalar straight into
/// the schema's slot. It accepts only what it can decode exactly as the general path would;
/// anything else (escapes, nesting, `$` keys, a wrong type, a number it does not parse the
/// same way) gives `None`, and the general path decodes the line or explains the error.
pub(crate) mod fast {
    use crate::compile::expr::ty_of;
    use crate::compile::hir::{StreamId, Ty};
    use crate::compile::schema::StreamSchema;
    use crate::event::{Event, Fields, Nanos, ValueRef};

    /// A line's bytes: the grammar allows bytes past ASCII only inside strings, so only a
    /// string's text is checked for UTF-8, not the whole line.
    struct Scan<'a> {
        b: &'a [u8],
        i: usize,
    }

    impl<'a> Scan<'a> {
        fn ws(&mut self) {
            while let Some(&c) = self.b.get(self.i) {
                if !matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                self.i += 1;
            }
        }

        fn peek(&self) -> Option<u8> {
            self.b.get(self.i).copied()
        }

        fn eat(&mut self, c: u8) -> Option<()> {
            (self.peek()? == c).then(|| self.i += 1)
        }

        /// The body of a string without escapes (the opening quote already taken).
        #[inline(always)]
        fn plain_str(&mut self) -> Option<&'a str> {
            let start = self.i;
            loop {
                let c = *self.b.get(self.i)?;
                self.i += 1;
                match c {
                    b'"' => return crate::event::utf8(self.b.get(start..self.i - 1)?),
                    // Escapes need decoding and raw control characters are invalid JSON.
                    b'\\' | 0..=0x1f => return None,
                    _ => {}
                }
            }
        }

        /// A JSON number, checked against the JSON grammar, with its digits read on the way.
        #[inline(always)]
        fn number(&mut self) -> Option<Number<'a>> {
            let start = self.i;
            let negative = self.eat(b'-').is_some();
            let mut n = Number {
                text: &[],
                integer: true,
                negative,
                mantissa: 0,
                digits: 0,
                scale: 0,
                exponent: false,
            };
            match self.peek()? {
                b'0' => {
                    self.i += 1;
                    n.digits = 1;
                }
                b'1'..=b'9' => self.digits(&mut n),
                _ => return None,
            }
            if self.eat(b'.').is_some() {
                n.integer = false;
                if !self.peek()?.is_ascii_digit() {
                    return None;
                }
                let before = n.digits;
                self.digits(&mut n);
                n.scale = n.digits - before;
            }
            if matches!(self.peek(), Some(b'e' | b'E')) {
                n.integer = false;
                n.exponent = true;
                self.i += 1;
                if matches!(self.peek(), Some(b'+' | b'-')) {
                    self.i += 1;
                }
                if !self.peek()?.is_ascii_digit() {
                    return None;
                }
                while self.peek().is_some_and(|c| c.is_ascii_digit()) {
                    self.i += 1;
                }
            }
            n.text = self.b.get(start..self.i)?;
            // serde_json reads `-0` as a float.
            n.integer &= !(negative && n.digits == 1 && n.mantissa == 0);
            Some(n)
        }

        /// Digits, accumulated into the mantissa (which wraps past 19 digits; `digits` then
        /// says it cannot be used).
        #[inline(always)]
        fn digits(&mut self, n: &mut Number<'_>) {
            let start = self.i;
            let mut m = n.mantissa;
            for &c in &self.b[start.min(self.b.len())..] {
                let d = c.wrapping_sub(b'0');
                if d > 9 {
                    break;
                }
                m = m.wrapping_mul(10).wrapping_add(u64::from(d));
                self.i += 1;
            }
            n.mantissa = m;
            n.digits += (self.i - start) as u32;
        }

        /// Takes `"name"` (the opening quote already taken) when the text here is exactly
        /// that name: the usual case, fields in schema order, without a search.
        fn name_is(&mut self, name: &str) -> bool {
            let end = self.i + name.len();
            let hit =
                self.b.get(self.i..end) == Some(name.as_bytes()) && self.b.get(end) == Some(&b'"');
            if hit {
                self.i = end + 1;
            }
            hit
        }

        fn literal(&mut self, word: &[u8]) -> Option<()> {
            let end = self.i + word.len();
            (self.b.get(self.i..end)? == word).then(|| self.i = end)
        }
    }

    /// A number as the scanner read it: its text, and its digits as an integer mantissa.
    struct Number<'a> {
        /// ASCII, as the grammar checked it.
        text: &'a [u8],
        /// No fraction, no exponent, and not `-0`.
        integer: bool,
        negative: bool,
        /// The digits (before and after the point) as one integer, if `digits` <= 19.
        mantissa: u64,
        /// Digits before and after the point, leading zeros included.
        digits: u32,
        /// Digits after the point.
        scale: u32,
        exponent: bool,
    }

    impl Number<'_> {
        /// The integer, when it has at most 18 digits (so that it fits an i64); longer ones are
        /// parsed from the text.
        #[inline(always)]
        fn int(&self) -> Option<i64> {
            if !self.integer {
                return None;
            }
            if self.digits <= 18 {
                let m = self.mantissa as i64;
                return Some(if self.negative { -m } else { m });
            }
            std::str::from_utf8(self.text).ok()?.parse().ok()
        }

        /// The number as serde_json reads it into an f64. Short decimals (at most 15 digits,
        /// no exponent) are digits over a power of ten: both are exact in an f64 and one
        /// division rounds correctly, so this is the value every correct parser gives, without
        /// their general machinery. Longer ones go through serde_json itself, whose rounding
        /// may differ from the standard parser's in the last bit.
        #[inline(always)]
        fn float(&self) -> Option<f64> {
            const POW10: [f64; 16] = [
                1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                1e15,
            ];
            if self.integer {
                // serde_json reads an integer as i64 (or u64) and converts.
                return match self.int() {
                    Some(i) => Some(i as f64),
                    None => std::str::from_utf8(self.text)
                        .ok()?
                        .parse::<u64>()
                        .ok()
                        .map(|u| u as f64),
                };
            }
            let f = if !self.exponent && self.digits <= 15 {
                let f = self.mantissa as f64 / POW10[self.scale as usize];
                if self.negative { -f } else { f }
            } else {
                serde_json::from_slice::<f64>(self.text).ok()?
            };
            f.is_finite().then_some(f)
        }
    }

    /// The event, or `None` when the line needs the general path (which explains errors).
    pub fn decode(schema: &StreamSchema, stream: StreamId, line: &[u8]) -> Option<Event> {
        Event::build(stream.0, schema.fields.len(), |values| {
            scan(schema, line, |i, v| values.set(i, v.to_value())).ok_or(())?;
            time_of(schema, values)
        })
        .ok()
    }

    /// The event time among `values`: the schema's time field, which a scan has made a
    /// timestamp unless the line had none.
    fn time_of(schema: &StreamSchema, values: &Fields<'_>) -> Result<Nanos, ()> {
        match values.get(schema.time_field) {
            Some(ValueRef::Timestamp(t)) => Ok(t),
            _ => Err(()),
        }
    }

    /// A value as [`read`] read it, for [`build`] to make into an event later (on
    /// another thread): scalars converted, a string as where its text lies in the line.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub enum Raw {
        /// Null, or absent.
        Null,
        /// `bool`
        Bool(bool),
        /// `int`
        Int(i64),
        /// `float`
        Float(f64),
        /// `timestamp`, converted.
        Timestamp(Nanos),
        /// `duration`
        Duration(Nanos),
        /// A string's text (UTF-8, no escapes): its start and end in the line.
        Text(u32, u32),
    }

    impl Raw {
        /// The value `v`, read from `line` (of which a string is a slice).
        #[inline(always)]
        fn of(v: ValueRef<'_>, line: &[u8]) -> Raw {
            match v {
                ValueRef::Null => Raw::Null,
                ValueRef::Bool(b) => Raw::Bool(b),
                ValueRef::Int(x) => Raw::Int(x),
                ValueRef::Float(x) => Raw::Float(x),
                ValueRef::Timestamp(t) => Raw::Timestamp(t),
                ValueRef::Duration(d) => Raw::Duration(d),
                // Both offsets fit in a u32, as the line's length does (`read` checks it).
                ValueRef::Str(t) => {
                    let at = (t.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize);
                    Raw::Text(at as u32, (at + t.len()) as u32)
                }
            }
        }

        /// The value it stands for in `line`; `None` for text that does not fit the line.
        #[inline(always)]
        fn value(self, line: &[u8]) -> Option<ValueRef<'_>> {
            Some(match self {
                Raw::Null => ValueRef::Null,
                Raw::Bool(b) => ValueRef::Bool(b),
                Raw::Int(x) => ValueRef::Int(x),
                Raw::Float(x) => ValueRef::Float(x),
                Raw::Timestamp(t) => ValueRef::Timestamp(t),
                Raw::Duration(d) => ValueRef::Duration(d),
                Raw::Text(a, b) => {
                    ValueRef::Str(crate::event::utf8(line.get(a as usize..b as usize)?)?)
                }
            })
        }

        /// Feeds the value to `h` as [`ValueRef::hash_into`] feeds the value it stands for
        /// (`line`: the line it was read from); text by its bytes, without checking them
        /// again.
        pub fn hash_into<H: std::hash::Hasher>(self, line: &[u8], h: &mut H) {
            match self {
                Raw::Text(a, b) => {
                    crate::event::hash_text(line.get(a as usize..b as usize).unwrap_or_default(), h)
                }
                other => other.value(line).unwrap_or(ValueRef::Null).hash_into(h),
            }
        }
    }

    /// Reads a line as [`decode`] would, without building the event: appends every value
    /// (one per field of the schema, null when absent) to `raws`, so that [`build`] can make
    /// the event later without reading the line again, and gives the event time. `None`
    /// exactly when `decode` gives `None`, and then `raws` is as it was.
    pub fn read(schema: &StreamSchema, line: &[u8], raws: &mut Vec<Raw>) -> Option<Nanos> {
        // Text is located by u32 offsets: a longer line takes the general path.
        if u32::try_from(line.len()).is_err() {
            return None;
        }
        let first = raws.len();
        raws.resize(first + schema.fields.len(), Raw::Null);
        let values = raws.get_mut(first..).unwrap_or_default();
        let scanned = scan(schema, line, |i, v| {
            if let Some(r) = values.get_mut(i) {
                *r = Raw::of(v, line);
            }
        });
        let time = match (scanned, raws.get(first + schema.time_field)) {
            (Some(()), Some(Raw::Timestamp(t))) => Some(*t),
            _ => None,
        };
        if time.is_none() {
            raws.truncate(first);
        }
        time
    }

    /// The event [`decode`] gives for a line [`read`] accepted, made from the values
    /// it read (`raws`, one per field) without reading the line again. `None` if they do not
    /// fit the line (the caller then decodes it in full).
    pub fn build(
        schema: &StreamSchema,
        stream: StreamId,
        line: &[u8],
        raws: &[Raw],
    ) -> Option<Event> {
        Event::build(stream.0, schema.fields.len(), |values| {
            if raws.len() != values.len() {
                return Err(());
            }
            for (i, raw) in raws.iter().enumerate() {
                // Every value is null until set.
                if !matches!(raw, Raw::Null) {
                    values.set(i, raw.value(line).ok_or(())?.to_value());
                }
            }
            time_of(schema, values)
        })
        .ok()
    }

    /// Reads one flat JSON object of `schema`'s fields, handing the value of each field to
    /// `field`. `None` when the line needs the general path.
    #[inline(always)]
    fn scan<'a>(
        schema: &StreamSchema,
        line: &'a [u8],
        mut field: impl FnMut(usize, ValueRef<'a>),
    ) -> Option<()> {
        let n = schema.fields.len();
        // Bit i of `seen`: field i was present, of `nulls`: it was null (wider schemas take
        // the general path).
        if n > 64 {
            return None;
        }
        let (mut seen, mut nulls) = (0u64, 0u64);
        let mut s = Scan { b: line, i: 0 };
        s.ws();
        s.eat(b'{')?;
        s.ws();
        // Fields usually come in schema order: try the next one first.
        let mut guess = 0usize;
        if s.eat(b'}').is_none() {
            loop {
                s.ws();
                s.eat(b'"')?;
                let idx = if schema.fields.get(guess).is_some_and(|f| s.name_is(&f.name)) {
                    Some(guess)
                } else {
                    let name = s.plain_str()?;
                    if name.starts_with('$') {
                        return None;
                    }
                    schema.fields.iter().position(|f| f.name == name)
                };
                s.ws();
                s.eat(b':')?;
                s.ws();
                match idx {
                    Some(i) => {
                        let ty = ty_of(schema.fields[i].ty.base);
                        let v = value(&mut s, ty)?;
                        field(i, v);
                        let null = v == ValueRef::Null;
                        // A repeated name: the last value wins, as in serde_json's map.
                        if null {
                            nulls |= 1 << i;
                        } else {
                            nulls &= !(1 << i);
                        }
                        seen |= 1 << i;
                        guess = i + 1;
                    }
                    None => skip_scalar(&mut s)?,
                }
                s.ws();
                match s.peek()? {
                    b',' => s.i += 1,
                    b'}' => {
                        s.i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        s.ws();
        if s.i != s.b.len() {
            return None;
        }
        for (i, f) in schema.fields.iter().enumerate() {
            if !f.ty.nullable && (seen & (1 << i) == 0 || nulls & (1 << i) != 0) {
                return None;
            }
        }
        Some(())
    }

    /// One scalar converted to `ty`.
    #[inline(always)]
    fn value<'a>(s: &mut Scan<'a>, ty: Ty) -> Option<ValueRef<'a>> {
        let c = s.peek()?;
        Some(match c {
            b'n' => {
                s.literal(b"null")?;
                ValueRef::Null
            }
            b't' | b'f' => {
                let b = c == b't';
                s.literal(if b { b"true" } else { b"false" })?;
                match ty {
                    Ty::Bool => ValueRef::Bool(b),
                    _ => return None,
                }
            }
            b'"' => {
                s.i += 1;
                let text = s.plain_str()?;
                match ty {
                    Ty::Str => ValueRef::Str(text),
                    Ty::Timestamp => ValueRef::Timestamp(super::parse_rfc3339(text)?),
                    _ => return None,
                }
            }
            b'-' | b'0'..=b'9' => {
                let n = s.number()?;
                match ty {
                    Ty::Int => ValueRef::Int(n.int()?),
                    Ty::Float => ValueRef::Float(n.float()?),
                    Ty::Timestamp => ValueRef::Timestamp(n.int()?.checked_mul(1_000_000)?),
                    _ => return None,
                }
            }
            _ => return None,
        })
    }

    /// Skips the scalar value of a field the schema does not have.
    fn skip_scalar(s: &mut Scan<'_>) -> Option<()> {
        match s.peek()? {
            b'n' => s.literal(b"null"),
            b't' => s.literal(b"true"),
            b'f' => s.literal(b"false"),
            b'"' => {
                s.i += 1;
                s.plain_str().map(|_| ())
            }
            b'-' | b'0'..=b'9' => s.number().map(|_| ()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::lang::source::Sources;

    /// Hands out at most `step` bytes per read, and an interruption now and then.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        reads: usize,
    }

    impl std::io::Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.reads += 1;
            if self.reads.is_multiple_of(7) {
                return Err(std::io::ErrorKind::Interrupted.into());
            }
            let n = self.step.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    fn all_lines(data: &[u8], step: usize) -> Vec<(u64, Vec<u8>)> {
        let mut lines = Lines::new(Trickle {
            data: data.to_vec(),
            at: 0,
            step,
            reads: 0,
        });
        let mut out = Vec::new();
        while let Some((n, line)) = lines.next_line().unwrap() {
            out.push((n, line.to_vec()));
        }
        out
    }

    #[test]
    fn block_lines_match_line_by_line_reading_across_block_edges() {
        // Lines longer than the 1 MiB block, CRLF, blank lines, no final newline.
        let long = "x".repeat(3 << 20);
        let text = format!("a\r\n\n{long}\nbc\r\r\n{long}y\n\nlast");
        let expected: Vec<(u64, Vec<u8>)> = text
            .split('\n')
            .enumerate()
            .map(|(i, l)| (i as u64 + 1, l.trim_end_matches('\r').as_bytes().to_vec()))
            .collect();
        for step in [1 << 20, 4096, 999_983] {
            assert_eq!(
                all_lines(text.as_bytes(), step),
                expected,
                "reads of {step} bytes"
            );
        }
        // A final newline ends the last line; it does not start an empty one.
        assert_eq!(
            all_lines(b"a\nb\n", 3),
            vec![(1, b"a".to_vec()), (2, b"b".to_vec())]
        );
        assert!(all_lines(b"", 3).is_empty());
    }

    #[test]
    fn only_ascii_whitespace_makes_a_line_blank() {
        for blank in [&b""[..], b" ", b"\t \x0c", b"\r\r"] {
            assert!(is_blank(blank), "{blank:?}");
        }
        // A no-break space or an ideographic space is not JSON whitespace: a bad line.
        for not in ["\u{a0}", " \u{3000} ", "{}"] {
            assert!(!is_blank(not.as_bytes()), "{not:?}");
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_is_rejected_alone() {
        let got = all_lines(b"{\"a\": 1}\n{\"a\": \"\xff\"}\n{\"a\": 2}\n", 5);
        assert_eq!(got.len(), 3);
        assert_eq!(line_text(&got[0].1), Ok("{\"a\": 1}"));
        let err = line_text(&got[1].1).unwrap_err();
        assert_eq!(err.reason(), "invalid_json");
        assert_eq!(err.to_string(), "invalid JSON: not UTF-8 (byte 8)");
        assert_eq!(line_text(&got[2].1), Ok("{\"a\": 2}"));
    }

    const STREAM: &str = "stream s { id: string, ts: timestamp, x: float, n: int?, ok: bool?, \
                          label: string?, time ts }";

    fn program() -> Program {
        let mut sources = Sources::new();
        let (program, diags) = crate::compile::check_text(
            &mut sources,
            &[("s.tern", STREAM)],
            Vec::new(),
            &["stdout".to_string()],
        );
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        program
    }

    /// What the general path (a JSON tree) makes of a line.
    fn general(program: &Program, line: &str) -> Result<Event, BadLine> {
        let stream = program.stream_id("s").unwrap();
        let json: Json =
            serde_json::from_str(line).map_err(|e| BadLine::InvalidJson(e.to_string()))?;
        let Json::Object(obj) = json else {
            return Err(BadLine::InvalidJson("not an object".into()));
        };
        event_from_json(program.stream(stream), stream, &|name| obj.get(name))
    }

    /// Lines that exercise every way the scanner may accept, convert or defer.
    const TRICKY: &[&str] = &[
        r#"{"id":"a","ts":1709251200000,"x":55.7}"#,
        r#" { "x" : -0.0 , "ts" : 5 , "id" : "b" , "n" : -3 , "ok" : true } "#,
        r#"{"id":"a","ts":1,"x":-0}"#,
        r#"{"id":"a","ts":1,"x":1,"n":-0}"#,
        r#"{"id":"a","ts":1,"x":12345678901234567890}"#,
        r#"{"id":"a","ts":1,"x":123456789012345678901234567890}"#,
        r#"{"id":"a","ts":1,"x":0.1000000000000000055511151231257827}"#,
        r#"{"id":"a","ts":1,"x":2.5e-3}"#,
        r#"{"id":"a","ts":1,"x":1e400}"#,
        r#"{"id":"a","ts":1,"x":01}"#,
        r#"{"id":"a","ts":1,"x":1.}"#,
        r#"{"id":"a","ts":1,"x":.5}"#,
        r#"{"id":"a","ts":1,"x":+1}"#,
        r#"{"id":"a","ts":1,"x":"1"}"#,
        r#"{"id":"a","ts":1,"x":1,"n":1.5}"#,
        r#"{"id":"a","ts":1,"x":1,"n":9223372036854775808}"#,
        r#"{"id":"a","ts":9223372036854775807,"x":1}"#,
        r#"{"id":"a","ts":"2024-03-01T00:00:00.5Z","x":1}"#,
        r#"{"id":"a","ts":"yesterday","x":1}"#,
        r#"{"id":"a","ts":1.5,"x":1}"#,
        r#"{"id":"a\"b","ts":1,"x":1}"#,
        r#"{"id":"a\u00e9","ts":1,"x":1}"#,
        r#"{"id":"åß","ts":1,"x":1}"#,
        r#"{"id":null,"ts":1,"x":1}"#,
        r#"{"ts":1,"x":1}"#,
        r#"{"id":"a","ts":1,"x":1,"label":null}"#,
        r#"{"id":"a","ts":1,"x":1,"extra":{"deep":[1,2]}}"#,
        r#"{"id":"a","ts":1,"x":1,"extra":"tab	inside"}"#,
        r#"{"id":"a","ts":1,"x":1,"extra":nul}"#,
        r#"{"id":"a","ts":1,"x":1,"x":2}"#,
        r#"{"id":"a","ts":1,"x":1,"x":null}"#,
        r#"{"id":"a","ts":1,"x":1,}"#,
        r#"{"id":"a","ts":1,"x":1} x"#,
        r#"{"id":"a","ts":1,"x":1"#,
        r#"{"id":"a","ts":1 "x":1}"#,
        r#"{"$stream":"s","id":"a","ts":1,"x":1}"#,
        r#"{"id":"a","ts":1,"x":1,"ok":"yes"}"#,
        r#"{"id":7,"ts":1,"x":1}"#,
        r#"[1,2]"#,
        r#"{}"#,
        r#"{"id":"a","ts":1,"x":1,"n":999999999999999999}"#,
        r#"{"id":"a","ts":1,"x":1,"n":-999999999999999999}"#,
        r#"{"id":"a","ts":1,"x":1234567890123456.5,"n":1e3}"#,
        r#"{"id":"a","ts":1,"x":1,"n":null,"n":2}"#,
    ];

    #[test]
    fn the_scanner_decodes_exactly_as_the_general_path_or_defers_to_it() {
        let program = program();
        let stream = program.stream_id("s").unwrap();
        let schema = program.stream(stream);
        for line in TRICKY {
            let want = general(&program, line);
            match fast::decode(schema, stream, line.as_bytes()) {
                Some(ev) => assert_eq!(Ok(ev), want, "{line}"),
                None => {
                    // Deferring is always allowed; it must be for every line the general
                    // path rejects.
                }
            }
            if want.is_err() {
                assert!(
                    fast::decode(schema, stream, line.as_bytes()).is_none(),
                    "{line}"
                );
            }
        }
        // The common shapes take the fast path.
        for line in &TRICKY[..3] {
            assert!(
                fast::decode(schema, stream, line.as_bytes()).is_some(),
                "{line}"
            );
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_defer_to_the_general_path_wherever_they_are() {
        let program = program();
        let stream = program.stream_id("s").unwrap();
        let schema = program.stream(stream);
        let reader = JsonReader::new(&program, Some(stream));
        let good = b"{\"id\":\"a\xc3\xa9\",\"ts\":1,\"x\":1}";
        assert!(fast::decode(schema, stream, good).is_some());
        // In a key value, in a field the schema does not have, in a name, outside strings,
        // and a character cut short at the end of a string.
        for line in [
            &b"{\"id\":\"a\xff\",\"ts\":1,\"x\":1}"[..],
            b"{\"id\":\"a\",\"ts\":1,\"x\":1,\"extra\":\"\xfe\"}",
            b"{\"id\":\"a\",\"ts\":1,\"x\":1,\"\xff\":1}",
            b"{\"id\":\"a\",\"ts\":1,\"x\":1}\xff",
            b"{\"id\":\"a\xc3\",\"ts\":1,\"x\":1}",
        ] {
            assert!(fast::decode(schema, stream, line).is_none(), "{line:?}");
            let mut raws = Vec::new();
            assert_eq!(fast::read(schema, line, &mut raws), None, "{line:?}");
            assert!(raws.is_empty(), "{line:?}");
            let err = reader.bytes(line).unwrap_err();
            assert!(
                err.to_string().starts_with("invalid JSON: not UTF-8"),
                "{err}"
            );
        }
    }

    #[test]
    fn reading_values_accepts_exactly_what_decoding_accepts() {
        use std::hash::{BuildHasher, Hasher};
        let program = program();
        let stream = program.stream_id("s").unwrap();
        let schema = program.stream(stream);
        let hasher = std::collections::hash_map::RandomState::new();
        // Values of several lines in one buffer, as an epoch's part holds them.
        let mut raws = vec![fast::Raw::Int(7)];
        for line in TRICKY {
            let before = raws.len();
            let time = fast::read(schema, line.as_bytes(), &mut raws);
            match fast::decode(schema, stream, line.as_bytes()) {
                Some(ev) => {
                    assert_eq!(time, Some(ev.time()), "{line}");
                    assert_eq!(raws.len(), before + schema.fields.len(), "{line}");
                    let read = &raws[before..];
                    // The event built from the values read, without a second scan, is the
                    // same.
                    let built = fast::build(schema, stream, line.as_bytes(), read);
                    assert_eq!(built.as_ref(), Some(&ev), "{line}");
                    // Each value read hashes as the decoded one: a line is routed alike
                    // whichever way it was decoded.
                    for (i, raw) in read.iter().enumerate() {
                        let mut a = hasher.build_hasher();
                        raw.hash_into(line.as_bytes(), &mut a);
                        let mut b = hasher.build_hasher();
                        ev.get(i).unwrap().hash_into(&mut b);
                        assert_eq!(a.finish(), b.finish(), "{line}: field {i}");
                    }
                }
                None => {
                    assert_eq!(time, None, "{line}");
                    assert_eq!(raws.len(), before, "{line}: values of a refused line");
                }
            }
        }
        // Values that do not fit the line are refused, not trusted.
        let line = TRICKY[0].as_bytes();
        let mut raws = Vec::new();
        fast::read(schema, line, &mut raws).unwrap();
        let Some(&fast::Raw::Text(start, _)) =
            raws.iter().find(|r| matches!(r, fast::Raw::Text(..)))
        else {
            panic!("no string among {raws:?}");
        };
        assert!(fast::build(schema, stream, &line[..start as usize], &raws).is_none());
        assert!(fast::build(schema, stream, line, &raws[..2]).is_none());
    }

    #[test]
    fn random_floats_decode_to_the_same_bits() {
        let program = program();
        let stream = program.stream_id("s").unwrap();
        let schema = program.stream(stream);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let x = f64::from_bits(seed);
            if !x.is_finite() {
                continue;
            }
            let digits = (seed % 17) as usize;
            for text in [format!("{x}"), format!("{x:.digits$}"), format!("{x:e}")] {
                let line = format!(r#"{{"id":"a","ts":1,"x":{text}}}"#);
                if let Some(ev) = fast::decode(schema, stream, line.as_bytes()) {
                    let want = general(&program, &line).unwrap();
                    match (&ev.value(2), &want.value(2)) {
                        (Value::Float(a), Value::Float(b)) => {
                            assert_eq!(a.to_bits(), b.to_bits(), "{line}")
                        }
                        other => panic!("{line}: {other:?}"),
                    }
                }
            }
            // Integers of every width, as ints, timestamps (epoch ms) and floats; the ones
            // that overflow (or `-0`) go to the general path, which must then refuse them too.
            let int = (seed as i64) >> (seed % 64);
            for (n, ts, x) in [
                (
                    int.to_string(),
                    (int / 1_000_000).to_string(),
                    int.to_string(),
                ),
                ("-0".into(), "-0".into(), "-0".into()),
                (format!("{}", seed), "0".into(), format!("{}", seed)),
            ] {
                let line = format!(r#"{{"id":"a","ts":{ts},"x":{x},"n":{n}}}"#);
                let want = general(&program, &line);
                match fast::decode(schema, stream, line.as_bytes()) {
                    Some(got) => {
                        let want = want.unwrap();
                        assert_eq!(got.time(), want.time(), "{line}");
                        assert_eq!(got.value(3), want.value(3), "{line}");
                        match (&got.value(2), &want.value(2)) {
                            (Value::Float(a), Value::Float(b)) => {
                                assert_eq!(a.to_bits(), b.to_bits(), "{line}")
                            }
                            other => panic!("{line}: {other:?}"),
                        }
                    }
                    None => assert!(want.is_err() || n.len() > 18, "{line}"),
                }
            }
            // Short plain decimals, the sensor readings the scanner converts itself.
            let width = 1 + (seed % 15) as usize;
            let digits = format!("{:0width$}", seed % 10u64.pow(width as u32));
            let point = (seed >> 20) as usize % (width + 1);
            let sign = if seed & 1 == 1 { "-" } else { "" };
            let (int, frac) = digits.split_at(point);
            let int = match int.trim_start_matches('0') {
                "" => "0",
                int => int,
            };
            let frac = if frac.is_empty() { "0" } else { frac };
            let text = format!("{sign}{int}.{frac}");
            let line = format!(r#"{{"id":"a","ts":1,"x":{text}}}"#);
            let want = general(&program, &line).unwrap();
            let got = fast::decode(schema, stream, line.as_bytes()).map(|e| e.value(2));
            match (&got, &want.value(2)) {
                (Some(Value::Float(a)), Value::Float(b)) => {
                    assert_eq!(a.to_bits(), b.to_bits(), "{line}")
                }
                other => panic!("{line}: {other:?}"),
            }
        }
    }
}
