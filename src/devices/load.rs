//! Profile files to [`Profile`]s. Every problem becomes a [`Diagnostic`] at its exact place in
//! the TOML file (or the decoder script), and all problems of a file are reported together
//! once its TOML has the right shape.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use toml::Spanned;

use super::decode::{Conversion, FieldSource, ProfileField};
use super::path::FieldPath;
use super::profile::{FIELD_KEYS, KeyList, PROFILE_KEYS, RawField, RawProfile};
use super::script::ScriptDecoder;
use super::time::{EpochUnit, FormatError, TimeFormat, parse_duration};
use super::topic::{TopicTemplate, is_ident};
use super::{Decoder, Profile, Retained};
use crate::compile::schema::{FieldSchema, FieldType, Origin, StreamKind, StreamSchema};
use crate::lang::ast::{RESERVED, TypeName};
use crate::lang::codes::Code;
use crate::lang::diagnostic::{Diagnostic, FileId, Label};
use crate::lang::source::Sources;
use crate::lang::span::Span;
use crate::lang::toml_error::{TomlProblem, classify};

/// Loads every `*.toml` file of `dir` in file-name order. A missing directory holds no
/// profiles. Two profiles declaring the same stream are an error (E403) on the second.
pub fn load_dir(dir: &Path, sources: &mut Sources) -> (Vec<Profile>, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (Vec::new(), diagnostics),
        Err(e) => {
            let file = sources.add(dir.display().to_string(), "");
            diagnostics.push(Diagnostic::error(
                Code::E400,
                format!("cannot read the profile directory: {e}"),
                file,
                Span::default(),
                "here",
            ));
            return (Vec::new(), diagnostics);
        }
    };
    let mut paths: Vec<_> = entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            // Editors leave hidden lock and backup files (`.#x.toml`) beside the real ones.
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            !hidden && p.extension().is_some_and(|ext| ext == "toml") && p.is_file()
        })
        .collect();
    paths.sort();
    let mut profiles: Vec<Profile> = Vec::new();
    for path in paths {
        let (profile, diags) = load_file(&path, sources);
        diagnostics.extend(diags);
        let Some(mut profile) = profile else { continue };
        if let Some(first) = profiles
            .iter()
            .find(|p| p.stream_name == profile.stream_name)
        {
            let origin = profile.schema.origin;
            diagnostics.push(
                Diagnostic::error(
                    Code::E403,
                    format!(
                        "stream `{}` is declared by two profiles",
                        profile.stream_name
                    ),
                    origin.file,
                    origin.span,
                    "declared again here",
                )
                .with_secondary(
                    first.schema.origin.file,
                    first.schema.origin.span,
                    format!("first declared by profile `{}`", first.name),
                )
                .with_note("rules name streams, so each stream needs exactly one profile: rename one of them"),
            );
            continue;
        }
        if let Some(first) = profiles.iter().find(|p| p.name == profile.name) {
            diagnostics.push(
                Diagnostic::error(
                    Code::E400,
                    format!("two profiles are named `{}`", profile.name),
                    profile.file,
                    profile.name_span,
                    "named again here",
                )
                .with_secondary(first.file, first.name_span, "first named here")
                .with_note("profile names appear in dead letters and metrics; make them unique"),
            );
            continue;
        }
        profile.stream_index = u32::try_from(profiles.len()).unwrap_or(u32::MAX);
        profiles.push(profile);
    }
    (profiles, diagnostics)
}

/// Loads one profile file, registering it (and its decoder script) in `sources`.
pub fn load_file(path: &Path, sources: &mut Sources) -> (Option<Profile>, Vec<Diagnostic>) {
    let file = match sources.read(path) {
        Ok(file) => file,
        Err(e) => {
            let file = sources.add(path.display().to_string(), "");
            let d = Diagnostic::error(
                Code::E400,
                format!("cannot read profile: {e}"),
                file,
                Span::default(),
                "here",
            );
            return (None, vec![d]);
        }
    };
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    load_source(file, sources, &stem, path.parent())
}

/// Loads a profile already in `sources` (tests, stdin). `default_name` names it when the file
/// does not; a `script` file is looked for in `dir`.
pub fn load_source(
    file: FileId,
    sources: &mut Sources,
    default_name: &str,
    dir: Option<&Path>,
) -> (Option<Profile>, Vec<Diagnostic>) {
    let text = sources.text(file).to_owned();
    let raw: RawProfile = match toml::from_str(&text) {
        Ok(raw) => raw,
        Err(e) => return (None, vec![toml_error(file, &e)]),
    };
    let mut b = Builder {
        file,
        text: &text,
        diagnostics: Vec::new(),
        broken: Vec::new(),
    };
    let profile = b.build(raw, default_name, dir, sources);
    let profile = if b.diagnostics.iter().any(Diagnostic::is_error) {
        None
    } else {
        profile
    };
    (profile, b.diagnostics)
}

/// Turns toml's (first) error into a diagnostic; unknown keys get a "did you mean".
fn toml_error(file: FileId, e: &toml::de::Error) -> Diagnostic {
    let (at, problem) = classify(e);
    if let TomlProblem::UnknownKey { name, expected } = &problem {
        let (what, keys) = if expected.first() == Some(&"type") {
            ("field key", FIELD_KEYS)
        } else {
            ("profile key", PROFILE_KEYS)
        };
        return Diagnostic::error(
            Code::E400,
            format!("unknown {what} `{name}`"),
            file,
            at,
            format!("not a {what}"),
        )
        .with_suggestion(name, keys.iter().copied())
        .with_note(format!("the {what}s are: {}", keys.join(", ")));
    }
    let headline = match problem {
        TomlProblem::MissingKey { name } => format!("missing key `{name}`"),
        TomlProblem::BadValue { headline } | TomlProblem::Other { headline } => {
            headline.to_string()
        }
        TomlProblem::UnknownKey { .. } => String::new(),
    };
    Diagnostic::error(
        Code::E400,
        format!("invalid profile: {headline}"),
        file,
        at,
        "here",
    )
    .with_note("docs/devices.md describes the profile format")
}

struct Builder<'t> {
    file: FileId,
    text: &'t str,
    diagnostics: Vec<Diagnostic>,
    /// Declared fields that were rejected: `time` and `key` do not report them again.
    broken: Vec<String>,
}

/// The parts of a field needed before its conversion is known.
struct Declared {
    name: String,
    /// Key start to value end.
    definition: Span,
    field: ProfileField,
}

impl Builder<'_> {
    fn error(&mut self, code: Code, message: impl Into<String>, at: Span, label: &str) {
        self.diagnostics
            .push(Diagnostic::error(code, message, self.file, at, label));
    }

    fn secondary(&mut self, at: Span, message: &str) {
        let file = self.file;
        if let Some(d) = self.diagnostics.last_mut() {
            d.labels.push(Label {
                file,
                span: at,
                message: message.to_owned(),
                primary: false,
            });
        }
    }

    fn note(&mut self, note: impl Into<String>) {
        if let Some(d) = self.diagnostics.last_mut() {
            d.notes.push(note.into());
        }
    }

    fn suggest<'a>(&mut self, wrong: &str, candidates: impl IntoIterator<Item = &'a str>) {
        if let Some(best) = crate::lang::suggest::closest(wrong, candidates) {
            self.note(format!("did you mean `{best}`?"));
        }
    }

    /// The span of bytes `inner` of a string value, when the value is written without
    /// escapes so that its text appears verbatim in the file; otherwise the whole value.
    fn inner(&self, value: &Spanned<String>, inner: Range<usize>) -> Span {
        let whole = value.span();
        let Some(raw) = self.text.get(whole.clone()) else {
            return Span::from(whole);
        };
        for delim in ["'''", "\"\"\"", "'", "\""] {
            if raw.len() >= 2 * delim.len() && raw.starts_with(delim) && raw.ends_with(delim) {
                let mut start = whole.start + delim.len();
                let mut body = &raw[delim.len()..raw.len() - delim.len()];
                if delim.len() == 3 {
                    // A newline right after the opening delimiter is not part of the value.
                    for nl in ["\r\n", "\n"] {
                        if let Some(rest) = body.strip_prefix(nl) {
                            body = rest;
                            start += nl.len();
                            break;
                        }
                    }
                }
                if body == value.get_ref() {
                    return Span::new(start + inner.start, start + inner.end);
                }
                break;
            }
        }
        Span::from(whole)
    }

    fn ident(&mut self, what: &str, name: &Spanned<String>) -> bool {
        let at = Span::from(name.span());
        if !is_ident(name.get_ref()) {
            self.error(
                Code::E400,
                format!("`{}` is not a valid {what} name", name.get_ref()),
                at,
                "not a name",
            );
            self.note(
                "rules use this name: start with a letter or `_`, then letters, digits or `_`",
            );
            return false;
        }
        if RESERVED.contains(&name.get_ref().as_str()) {
            self.error(
                Code::E400,
                format!(
                    "`{}` is a reserved word of the rule language",
                    name.get_ref()
                ),
                at,
                "reserved",
            );
            self.note(format!(
                "rules could not name this {what}; choose another name"
            ));
            return false;
        }
        true
    }

    fn duration(&mut self, key: &str, value: &Option<Spanned<String>>) -> i64 {
        let Some(value) = value else { return 0 };
        match parse_duration(value.get_ref()) {
            Ok(ns) => ns,
            Err(message) => {
                self.error(
                    Code::E400,
                    format!("invalid `{key}`: {message}"),
                    Span::from(value.span()),
                    "not a duration",
                );
                self.note("write a duration such as \"500ms\", \"30s\", \"5m\", \"2h\", \"1d\" or \"1h30m\"");
                0
            }
        }
    }

    fn build(
        &mut self,
        raw: RawProfile,
        default_name: &str,
        dir: Option<&Path>,
        sources: &mut Sources,
    ) -> Option<Profile> {
        let top = Span::new(0, 0);
        let (name, name_span) = match &raw.name {
            Some(n) if n.get_ref().trim().is_empty() => {
                self.error(
                    Code::E400,
                    "empty profile name",
                    Span::from(n.span()),
                    "empty",
                );
                (String::new(), Span::from(n.span()))
            }
            Some(n) => (n.get_ref().clone(), Span::from(n.span())),
            None => (default_name.to_owned(), top),
        };

        let stream = match &raw.stream {
            Some(s) => {
                self.ident("stream", s);
                Some(s)
            }
            None => {
                self.error(
                    Code::E400,
                    "the profile has no `stream`",
                    top,
                    "expected `stream = \"name\"`",
                );
                self.note("`stream` is the name rules use for this profile's events, e.g. stream = \"flow\"");
                None
            }
        };

        let topic = match &raw.topic {
            Some(t) => self.topic(t),
            None => {
                self.error(
                    Code::E400,
                    "the profile has no `topic`",
                    top,
                    "expected `topic = \"...\"`",
                );
                self.note("`topic` is the MQTT topic with a `{name}` for each varying level, e.g. topic = \"city/{district}/camera/{camera_id}/flow\"");
                None
            }
        };

        let decoder = self.decoder(&raw, dir, sources);

        // Fields: declared ones in document order (toml's map is sorted by name).
        let mut entries: Vec<_> = raw
            .fields
            .as_ref()
            .map(|f| f.get_ref().iter().collect())
            .unwrap_or_default();
        entries.sort_by_key(|(k, _)| k.span().start);
        let mut declared = Vec::new();
        for (key, value) in entries {
            match self.field(key, value, topic.as_ref()) {
                Some(d) => declared.push(d),
                None => self.broken.push(key.get_ref().clone()),
            }
        }

        // Captures that no declared field reads become string fields, ahead of the rest.
        let mut fields: Vec<(ProfileField, Span)> = Vec::new();
        if let (Some(tpl), Some(topic_value)) = (&topic, &raw.topic) {
            for (index, capture) in tpl.captures().iter().enumerate() {
                let used = declared.iter().any(|d| {
                    d.name == capture.name || d.field.source == FieldSource::Capture(index)
                });
                if !used {
                    fields.push((
                        ProfileField {
                            name: capture.name.clone(),
                            ty: TypeName::String,
                            optional: false,
                            unit: None,
                            source: FieldSource::Capture(index),
                            conversion: Conversion::Plain,
                        },
                        self.inner(topic_value, capture.range.clone()),
                    ));
                }
            }
        }
        fields.extend(declared.into_iter().map(|d| (d.field, d.definition)));

        let time_field = self.time_field(&raw.time, &fields);
        let default_key = self.key(&raw.key, &fields);
        let lateness = self.duration("lateness", &raw.lateness);
        let idle = self.duration("idle", &raw.idle);
        let retained = self.retained(&raw.retained);

        let (stream, topic, decoder, time_field) = (stream?, topic?, decoder?, time_field?);
        let schema = StreamSchema {
            name: stream.get_ref().clone(),
            fields: fields
                .iter()
                .map(|(f, at)| FieldSchema {
                    name: f.name.clone(),
                    ty: FieldType {
                        base: f.ty,
                        nullable: f.optional,
                    },
                    origin: Origin {
                        file: self.file,
                        span: *at,
                    },
                })
                .collect(),
            time_field,
            default_key,
            lateness,
            idle,
            origin: Origin {
                file: self.file,
                span: Span::from(stream.span()),
            },
            kind: StreamKind::Device {
                profile: name.clone(),
            },
        };
        Some(Profile {
            name,
            stream_name: stream.get_ref().clone(),
            description: raw.description.clone(),
            topic,
            fields: fields.into_iter().map(|(f, _)| f).collect(),
            retained,
            file: self.file,
            name_span,
            schema,
            decoder,
            stream_index: 0,
        })
    }

    fn topic(&mut self, t: &Spanned<String>) -> Option<TopicTemplate> {
        match TopicTemplate::parse(t.get_ref()) {
            Ok(tpl) => Some(tpl),
            Err(errors) => {
                for e in errors {
                    let at = self.inner(t, e.range.clone());
                    let related = e.related.clone().map(|r| self.inner(t, r));
                    self.error(
                        Code::E401,
                        format!("invalid topic template: {}", e.message),
                        at,
                        "here",
                    );
                    if let Some(r) = related {
                        self.secondary(r, "first captured here");
                    }
                    if let Some(hint) = e.hint {
                        self.note(hint);
                    }
                }
                None
            }
        }
    }

    fn decoder(
        &mut self,
        raw: &RawProfile,
        dir: Option<&Path>,
        sources: &mut Sources,
    ) -> Option<Decoder> {
        let script_given = raw.script.is_some() || raw.script_source.is_some();
        let format = match &raw.format {
            None if script_given => "script",
            None => "json",
            Some(f) => match f.get_ref().as_str() {
                "json" | "script" => f.get_ref().as_str(),
                other => {
                    self.error(
                        Code::E400,
                        format!("unknown payload format `{other}`"),
                        Span::from(f.span()),
                        "expected \"json\" or \"script\"",
                    );
                    self.suggest(other, ["json", "script"]);
                    return None;
                }
            },
        };
        match (format, &raw.script, &raw.script_source) {
            ("json", None, None) => Some(Decoder::Json),
            ("json", Some(s), _) | ("json", None, Some(s)) => {
                self.error(
                    Code::E400,
                    "a decoder script is given but `format` is \"json\"",
                    Span::from(s.span()),
                    "this script would never run",
                );
                self.note("set format = \"script\", or remove the script");
                None
            }
            (_, Some(a), Some(b)) => {
                self.error(
                    Code::E400,
                    "both `script` and `script_source` are given",
                    Span::from(b.span()),
                    "second decoder",
                );
                self.secondary(Span::from(a.span()), "first decoder");
                self.note("keep one: `script` names a .rhai file beside the profile, `script_source` holds the script itself");
                None
            }
            (_, None, None) => {
                let at = raw
                    .format
                    .as_ref()
                    .map(|f| Span::from(f.span()))
                    .unwrap_or_default();
                self.error(
                    Code::E400,
                    "format \"script\" needs a decoder script",
                    at,
                    "no script given",
                );
                self.note("add script = \"NAME.rhai\" (a file beside the profile) or script_source = '''...'''");
                None
            }
            (_, Some(file_name), None) => self.script_file(file_name, dir, sources),
            (_, None, Some(source)) => match ScriptDecoder::compile(source.get_ref()) {
                Ok(d) => Some(Decoder::Script(Arc::new(d))),
                Err(e) => {
                    let offset = e
                        .position
                        .and_then(|(l, c)| offset_of(source.get_ref(), l, c))
                        .unwrap_or(0);
                    let at = self.inner(source, token_at(source.get_ref(), offset));
                    self.error(
                        Code::E404,
                        format!("invalid decoder script: {}", e.message),
                        at,
                        "here",
                    );
                    None
                }
            },
        }
    }

    fn script_file(
        &mut self,
        name: &Spanned<String>,
        dir: Option<&Path>,
        sources: &mut Sources,
    ) -> Option<Decoder> {
        let path = dir.unwrap_or(Path::new(".")).join(name.get_ref());
        let script_file = match sources.read(&path) {
            Ok(f) => f,
            Err(e) => {
                self.error(
                    Code::E404,
                    format!("cannot read decoder script `{}`: {e}", path.display()),
                    Span::from(name.span()),
                    "named here",
                );
                self.note("the path is relative to the profile's directory");
                return None;
            }
        };
        let source = sources.text(script_file);
        match ScriptDecoder::compile(source) {
            Ok(d) => Some(Decoder::Script(Arc::new(d))),
            Err(e) => {
                let offset = e
                    .position
                    .and_then(|(l, c)| offset_of(source, l, c))
                    .unwrap_or(0);
                let token = token_at(source, offset);
                self.diagnostics.push(
                    Diagnostic::error(
                        Code::E404,
                        format!("invalid decoder script: {}", e.message),
                        script_file,
                        Span::from(token),
                        "here",
                    )
                    .with_secondary(
                        self.file,
                        Span::from(name.span()),
                        "script of this profile",
                    ),
                );
                None
            }
        }
    }

    fn field(
        &mut self,
        key: &Spanned<String>,
        value: &Spanned<RawField>,
        topic: Option<&TopicTemplate>,
    ) -> Option<Declared> {
        let name = key.get_ref().clone();
        let definition = Span::new(key.span().start, value.span().end);
        let mut ok = self.ident("field", key);
        let raw = value.get_ref();

        // The type: `ty` in a table, or the whole value in the short form.
        let (ty_text, ty_span) = match (&raw.ty, &raw.short) {
            (Some(t), _) => (t.get_ref().clone(), Span::from(t.span())),
            (None, Some(s)) => (s.clone(), Span::from(value.span())),
            (None, None) => {
                self.error(
                    Code::E400,
                    format!("field `{name}` has no type"),
                    Span::from(key.span()),
                    "add `type = \"...\"`",
                );
                self.note("the types are bool, int, float, string, timestamp, duration");
                return None;
            }
        };
        let (base, question) = match ty_text.strip_suffix('?') {
            Some(base) => (base, true),
            None => (ty_text.as_str(), false),
        };
        let Some(ty) = TypeName::ALL.into_iter().find(|t| t.as_str() == base) else {
            self.error(
                Code::E400,
                format!("unknown type `{base}` for field `{name}`"),
                ty_span,
                "not a type",
            );
            self.suggest(base, TypeName::ALL.iter().map(|t| t.as_str()));
            self.note("the types are bool, int, float, string, timestamp, duration (add `?` or optional = true for a field that may be missing)");
            return None;
        };
        let optional = match (&raw.optional, question) {
            (Some(o), true) if !*o.get_ref() => {
                self.error(
                    Code::E400,
                    format!("field `{name}` is both optional (`?`) and `optional = false`"),
                    Span::from(o.span()),
                    "conflicts with the `?`",
                );
                ok = false;
                true
            }
            (Some(o), q) => *o.get_ref() || q,
            (None, q) => q,
        };

        let source = match (&raw.path, &raw.capture) {
            (Some(p), Some(c)) => {
                self.error(
                    Code::E400,
                    format!("field `{name}` has both `path` and `capture`"),
                    Span::from(c.span()),
                    "second source",
                );
                self.secondary(Span::from(p.span()), "first source");
                self.note("a field comes either from the payload (`path`) or from a topic level (`capture`)");
                return None;
            }
            (Some(p), None) => match FieldPath::parse(p.get_ref()) {
                Ok(path) => FieldSource::Path(path),
                Err((at, message)) => {
                    let at = self.inner(p, at..at + 1);
                    self.error(
                        Code::E400,
                        format!("invalid path for field `{name}`: {message}"),
                        at,
                        "here",
                    );
                    self.note("a path is dotted keys with indexes: `result.pass`, `detections[0].speed`, `meta[\"a.b\"]`");
                    return None;
                }
            },
            (None, Some(c)) => {
                let index = topic.and_then(|t| t.capture_index(c.get_ref()));
                match (index, topic) {
                    (Some(i), _) => FieldSource::Capture(i),
                    // The template is broken and already reported.
                    (None, None) => return None,
                    (None, Some(t)) => {
                        self.error(
                            Code::E400,
                            format!("the topic has no capture `{}`", c.get_ref()),
                            Span::from(c.span()),
                            "unknown capture",
                        );
                        self.suggest(c.get_ref(), t.captures().iter().map(|c| c.name.as_str()));
                        let names: Vec<_> = t
                            .captures()
                            .iter()
                            .map(|c| format!("`{}`", c.name))
                            .collect();
                        self.note(if names.is_empty() {
                            format!("the topic `{}` captures nothing", t.as_str())
                        } else {
                            format!("the topic captures {}", names.join(", "))
                        });
                        return None;
                    }
                }
            }
            (None, None) => match topic.and_then(|t| t.capture_index(&name)) {
                Some(i) => FieldSource::Capture(i),
                None => FieldSource::Path(FieldPath::key(&name)),
            },
        };

        let conversion = self.conversion(&name, ty, raw)?;
        let field = ProfileField {
            name: name.clone(),
            ty,
            optional,
            unit: raw.unit.clone(),
            source,
            conversion,
        };
        ok.then_some(Declared {
            name,
            definition,
            field,
        })
    }

    fn conversion(&mut self, name: &str, ty: TypeName, raw: &RawField) -> Option<Conversion> {
        match ty {
            TypeName::Timestamp => {
                let format = raw
                    .format
                    .as_ref()
                    .map_or("rfc3339", |f| f.get_ref().as_str());
                let timezone = raw.timezone.as_ref().map(|t| t.get_ref().as_str());
                match TimeFormat::parse(format, timezone) {
                    Ok(f) => Some(Conversion::Time(f)),
                    Err(FormatError {
                        message,
                        hint,
                        on_timezone,
                        range,
                    }) => {
                        let at = match (&raw.timezone, &raw.format) {
                            (Some(tz), _) if on_timezone => Span::from(tz.span()),
                            (_, Some(f)) => match range {
                                Some(r) => self.inner(f, r),
                                None => Span::from(f.span()),
                            },
                            (Some(tz), None) => Span::from(tz.span()),
                            (None, None) => Span::default(),
                        };
                        self.error(
                            Code::E402,
                            format!("invalid timestamp format for field `{name}`: {message}"),
                            at,
                            "here",
                        );
                        self.note(hint);
                        None
                    }
                }
            }
            TypeName::Duration => {
                if let Some(tz) = &raw.timezone {
                    self.error(
                        Code::E400,
                        "`timezone` only applies to timestamp fields",
                        Span::from(tz.span()),
                        "remove this",
                    );
                    return None;
                }
                let Some(format) = &raw.format else {
                    return Some(Conversion::Duration(None));
                };
                let unit = match format.get_ref().as_str() {
                    "text" => None,
                    "s" => Some(EpochUnit::Seconds),
                    "ms" => Some(EpochUnit::Millis),
                    "us" => Some(EpochUnit::Micros),
                    "ns" => Some(EpochUnit::Nanos),
                    other => {
                        self.error(
                            Code::E400,
                            format!("unknown duration format `{other}` for field `{name}`"),
                            Span::from(format.span()),
                            "expected text, s, ms, us or ns",
                        );
                        self.suggest(other, ["text", "s", "ms", "us", "ns"]);
                        self.note("\"text\" (the default) reads strings such as \"1h30m\"; s, ms, us, ns read numbers in that unit");
                        return None;
                    }
                };
                Some(Conversion::Duration(unit))
            }
            _ => {
                for (key, value) in [("format", &raw.format), ("timezone", &raw.timezone)] {
                    if let Some(v) = value {
                        self.error(
                            Code::E400,
                            format!("`{key}` does not apply to a {} field", ty.as_str()),
                            Span::from(v.span()),
                            "remove this",
                        );
                        self.note("`format` applies to timestamp and duration fields, `timezone` to timestamps");
                        return None;
                    }
                }
                Some(Conversion::Plain)
            }
        }
    }

    fn time_field(
        &mut self,
        time: &Option<Spanned<String>>,
        fields: &[(ProfileField, Span)],
    ) -> Option<usize> {
        let timestamps: Vec<&str> = fields
            .iter()
            .filter(|(f, _)| f.ty == TypeName::Timestamp)
            .map(|(f, _)| f.name.as_str())
            .collect();
        let Some(time) = time else {
            self.error(
                Code::E400,
                "the profile has no `time`",
                Span::default(),
                "expected `time = \"FIELD\"`",
            );
            self.note(match timestamps.as_slice() {
                [] => "every stream needs an event-time field: declare a timestamp field and name it, e.g. time = \"ts\" with ts = { type = \"timestamp\", format = \"rfc3339\" }".to_owned(),
                names => format!("name the event-time field; timestamp fields here: {}", names.join(", ")),
            });
            return None;
        };
        let at = Span::from(time.span());
        let Some(index) = fields.iter().position(|(f, _)| &f.name == time.get_ref()) else {
            if self.broken.contains(time.get_ref()) {
                return None;
            }
            self.error(
                Code::E400,
                format!("`time` names no field: `{}`", time.get_ref()),
                at,
                "unknown field",
            );
            self.suggest(time.get_ref(), fields.iter().map(|(f, _)| f.name.as_str()));
            return None;
        };
        let (field, definition) = &fields[index];
        let definition = *definition;
        if field.ty != TypeName::Timestamp {
            self.error(
                Code::E400,
                format!(
                    "the time field `{}` is a {}, not a timestamp",
                    field.name,
                    field.ty.as_str()
                ),
                at,
                "not a timestamp",
            );
            self.secondary(definition, "declared here");
            self.note("declare it with type = \"timestamp\" and its format (rfc3339, epoch_s, epoch_ms, ...)");
            return None;
        }
        if field.optional {
            self.error(
                Code::E400,
                format!("the time field `{}` is optional", field.name),
                at,
                "every event needs a time",
            );
            self.secondary(definition, "declared optional here");
            return None;
        }
        Some(index)
    }

    fn key(
        &mut self,
        key: &Option<Spanned<KeyList>>,
        fields: &[(ProfileField, Span)],
    ) -> Vec<usize> {
        let Some(key) = key else { return Vec::new() };
        let whole = Span::from(key.span());
        let mut out = Vec::new();
        for (name, at) in &key.get_ref().0 {
            let at = at.clone().map_or(whole, Span::from);
            let Some(index) = fields.iter().position(|(f, _)| &f.name == name) else {
                if self.broken.contains(name) {
                    continue;
                }
                self.error(
                    Code::E400,
                    format!("key field `{name}` is not a field"),
                    at,
                    "unknown field",
                );
                self.suggest(name, fields.iter().map(|(f, _)| f.name.as_str()));
                continue;
            };
            let field = &fields[index].0;
            if out.contains(&index) {
                self.error(
                    Code::E400,
                    format!("key field `{name}` is listed twice"),
                    at,
                    "again",
                );
            } else if field.optional {
                self.error(
                    Code::E400,
                    format!("key field `{name}` is optional"),
                    at,
                    "may be missing",
                );
                self.note("a key must be present in every event: make the field required");
            } else if !matches!(field.ty, TypeName::String | TypeName::Int | TypeName::Bool) {
                self.error(
                    Code::E400,
                    format!("key field `{name}` is a {}", field.ty.as_str()),
                    at,
                    "not a key type",
                );
                self.note(
                    "key fields are strings, ints or bools: they name a device, not a measurement",
                );
            } else {
                out.push(index);
            }
        }
        out
    }

    fn retained(&mut self, retained: &Option<Spanned<String>>) -> Retained {
        match retained.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("ignore", _)) => Retained::Ignore,
            Some(("accept", _)) => Retained::Accept,
            Some((other, at)) => {
                self.error(
                    Code::E400,
                    format!("unknown `retained` policy `{other}`"),
                    Span::from(at),
                    "expected \"ignore\" or \"accept\"",
                );
                self.suggest(other, ["ignore", "accept"]);
                Retained::Ignore
            }
        }
    }
}

/// Byte offset of a 1-based line and character column.
fn offset_of(text: &str, line: usize, column: usize) -> Option<usize> {
    let mut start = 0;
    for _ in 1..line {
        start += text[start..].find('\n')? + 1;
    }
    let rest = &text[start..];
    let line_text = &rest[..rest.find('\n').unwrap_or(rest.len())];
    let within = line_text
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line_text.len(), |(i, _)| i);
    Some(start + within)
}

/// The word (identifier or number) starting at `offset`, or its one character: what a script
/// error's label underlines.
fn token_at(text: &str, offset: usize) -> Range<usize> {
    let rest = text.get(offset..).unwrap_or("");
    let word = rest
        .char_indices()
        .find(|(_, c)| !(c.is_alphanumeric() || *c == '_'))
        .map_or(rest.len(), |(i, _)| i);
    let len = if word > 0 {
        word
    } else {
        rest.chars().next().map_or(0, char::len_utf8)
    };
    offset..offset + len
}
