//! The TOML schema of a profile file, as written: every key, with its byte span.
//!
//! Values whose spelling is checked by tern (types, formats, durations, names) are kept as
//! strings here so that [`super::load`] can report all of them at once with a "did you mean";
//! serde only rejects unknown keys and values of the wrong TOML type.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// A whole profile file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProfile {
    pub name: Option<Spanned<String>>,
    pub stream: Option<Spanned<String>>,
    pub description: Option<String>,
    pub topic: Option<Spanned<String>>,
    pub format: Option<Spanned<String>>,
    pub script: Option<Spanned<String>>,
    pub script_source: Option<Spanned<String>>,
    pub time: Option<Spanned<String>>,
    pub key: Option<Spanned<KeyList>>,
    pub lateness: Option<Spanned<String>>,
    pub idle: Option<Spanned<String>>,
    pub retained: Option<Spanned<String>>,
    pub fields: Option<Spanned<BTreeMap<Spanned<String>, Spanned<RawField>>>>,
}

/// Every top-level key, for "did you mean".
pub(crate) const PROFILE_KEYS: &[&str] = &[
    "name",
    "stream",
    "description",
    "topic",
    "format",
    "script",
    "script_source",
    "time",
    "key",
    "lateness",
    "idle",
    "retained",
    "fields",
];

/// Every key of a field table, for "did you mean".
pub(crate) const FIELD_KEYS: &[&str] = &[
    "type", "path", "capture", "optional", "unit", "format", "timezone",
];

/// One field: either a table, or just its type (`speed = "float"`).
#[derive(Debug, Default)]
pub(crate) struct RawField {
    /// `None` in the short form, whose type is the whole value (its span is the entry's).
    pub ty: Option<Spanned<String>>,
    /// The short form's type.
    pub short: Option<String>,
    pub path: Option<Spanned<String>>,
    pub capture: Option<Spanned<String>>,
    pub optional: Option<Spanned<bool>>,
    pub unit: Option<String>,
    pub format: Option<Spanned<String>>,
    pub timezone: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FieldTable {
    #[serde(rename = "type")]
    ty: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    capture: Option<Spanned<String>>,
    optional: Option<Spanned<bool>>,
    unit: Option<String>,
    format: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
}

impl<'de> Deserialize<'de> for RawField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawField;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a type name such as \"float\" or a table such as { type = \"float\", path = \"a.b\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawField, E> {
                Ok(RawField {
                    short: Some(v.to_owned()),
                    ..RawField::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawField, A::Error> {
                let t = FieldTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(RawField {
                    ty: t.ty,
                    short: None,
                    path: t.path,
                    capture: t.capture,
                    optional: t.optional,
                    unit: t.unit,
                    format: t.format,
                    timezone: t.timezone,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `key = "camera_id"` or `key = ["line", "station"]`; each name with its span when toml
/// gives one (array elements), otherwise the span of the whole value applies.
#[derive(Debug)]
pub(crate) struct KeyList(pub Vec<(String, Option<std::ops::Range<usize>>)>);

impl<'de> Deserialize<'de> for KeyList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name or an array of field names")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<KeyList, E> {
                Ok(KeyList(vec![(v.to_owned(), None)]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<KeyList, A::Error> {
                let mut out = Vec::new();
                while let Some(name) = seq.next_element::<Spanned<String>>()? {
                    let span = name.span();
                    out.push((name.into_inner(), Some(span)));
                }
                Ok(KeyList(out))
            }
        }
        d.deserialize_any(V)
    }
}
