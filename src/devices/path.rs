//! Field paths: where a field's value is in a JSON payload.
//!
//! A path is dotted keys with optional array indexes: `avg_speed`, `result.pass`,
//! `detections[0].speed_kmh`, `[2]` (third element of a top-level array). A key that contains
//! `.`, `[` or `]` is written quoted in brackets: `meta["x.y"]`. Paths are parsed once at load.

use serde_json::Value as Json;

/// One step of a path.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// An object member.
    Key(Box<str>),
    /// An array element.
    Index(usize),
}

/// A compiled path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath {
    text: Box<str>,
    segments: Box<[Segment]>,
}

impl FieldPath {
    /// Parses a path; the error says what is wrong at which byte.
    pub fn parse(text: &str) -> Result<FieldPath, (usize, String)> {
        let bytes = text.as_bytes();
        let mut segments = Vec::new();
        let mut i = 0;
        if text.is_empty() {
            return Err((0, "empty path".into()));
        }
        loop {
            // A key, unless the segment starts with `[`.
            if bytes.get(i) != Some(&b'[') {
                let start = i;
                while i < bytes.len() && !matches!(bytes[i], b'.' | b'[' | b']') {
                    i += 1;
                }
                if i == start {
                    return Err((start, "expected a key".into()));
                }
                segments.push(Segment::Key(text[start..i].into()));
            }
            // Any number of `[n]` or `["key"]`.
            while bytes.get(i) == Some(&b'[') {
                let open = i;
                i += 1;
                if bytes.get(i) == Some(&b'"') {
                    let start = i + 1;
                    let Some(len) = text[start..].find('"') else {
                        return Err((open, "unclosed `[\"`".into()));
                    };
                    i = start + len + 1;
                    if bytes.get(i) != Some(&b']') {
                        return Err((i, "expected `]` after the quoted key".into()));
                    }
                    segments.push(Segment::Key(text[start..start + len].into()));
                } else {
                    let start = i;
                    while i < bytes.len() && bytes[i].is_ascii_digit() {
                        i += 1;
                    }
                    if i == start || bytes.get(i) != Some(&b']') {
                        return Err((
                            open,
                            "expected an index `[0]` or a quoted key `[\"name\"]`".into(),
                        ));
                    }
                    let index = text[start..i]
                        .parse()
                        .map_err(|_| (start, "index too large".to_owned()))?;
                    segments.push(Segment::Index(index));
                }
                i += 1;
            }
            match bytes.get(i) {
                None => break,
                Some(b'.') => {
                    i += 1;
                    if i == bytes.len() {
                        return Err((i - 1, "a path cannot end with `.`".into()));
                    }
                }
                Some(_) => return Err((i, format!("unexpected `{}`", &text[i..=i]))),
            }
        }
        Ok(FieldPath {
            text: text.into(),
            segments: segments.into(),
        })
    }

    /// The path of a top-level member.
    pub fn key(name: &str) -> FieldPath {
        FieldPath {
            text: name.into(),
            segments: Box::new([Segment::Key(name.into())]),
        }
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value at this path, if every step exists.
    pub fn lookup<'j>(&self, root: &'j Json) -> Option<&'j Json> {
        let mut at = root;
        for segment in self.segments.iter() {
            at = match (segment, at) {
                (Segment::Key(k), Json::Object(map)) => map.get(&**k)?,
                (Segment::Index(i), Json::Array(items)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(at)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn get(path: &str, json: &str) -> Option<Json> {
        let json: Json = serde_json::from_str(json).unwrap();
        FieldPath::parse(path).unwrap().lookup(&json).cloned()
    }

    #[test]
    fn dotted_keys_and_indexes() {
        let doc = r#"{"a": {"b": [{"c": 1}, {"c": 2}]}, "x.y": 3, "top": true}"#;
        assert_eq!(get("top", doc), Some(Json::Bool(true)));
        assert_eq!(get("a.b[1].c", doc), Some(2.into()));
        assert_eq!(get(r#"["x.y"]"#, doc), Some(3.into()));
        assert_eq!(get("a.b[2].c", doc), None);
        assert_eq!(get("a.c", doc), None);
        assert_eq!(get("top.x", doc), None);
        assert_eq!(get("[1]", "[5, 6]"), Some(6.into()));
        assert_eq!(get("a[0][1]", r#"{"a": [[1, 2]]}"#), Some(2.into()));
    }

    #[test]
    fn bad_paths() {
        assert_eq!(FieldPath::parse("").unwrap_err().0, 0);
        assert_eq!(FieldPath::parse("a..b").unwrap_err().0, 2);
        assert_eq!(FieldPath::parse("a.").unwrap_err().0, 1);
        assert_eq!(FieldPath::parse("a[x]").unwrap_err().0, 1);
        assert_eq!(FieldPath::parse("a[1").unwrap_err().0, 1);
        assert_eq!(FieldPath::parse("a]").unwrap_err().0, 1);
        assert_eq!(FieldPath::parse(r#"a["b"#).unwrap_err().0, 1);
        assert!(FieldPath::parse("a[0]b").is_err());
    }
}
