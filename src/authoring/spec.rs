//! The test file format: `rules/<name>.test.toml`, beside the rule file it tests.
//!
//! ```toml
//! rule_files = ["congestion.tern"]        # default: the sibling <name>.tern
//!
//! [defaults.flow]                         # fields every `flow` event gets unless it sets them
//! camera_id = "cam-7"
//!
//! [[case]]
//! name = "three slow readings"
//! rule = "congestion"                     # or a list; default: every rule of the files
//! start = 2024-03-01T08:00:00Z            # `ts = "+30s"` is then 30 s after it
//! events = [ { ts = "+0s", speed = 12.0 }, { ts = "+30s", speed = 15.0 } ]
//! expect = [ { kind = "match", key = "cam-7", fields = { avg_speed = 13.5 } } ]
//! ```
//!
//! Reading happens in two stages: the TOML with spans ([`read`]), then, once the rule files
//! are loaded, each case against the program ([`cases`]): stream and field names, typed
//! values, expected alert keys. Every mistake is a diagnostic at its place in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use serde_json::{Map, Value as Json};
use toml::Spanned;

use crate::compile::hir::{Program, StreamId, Ty};
use crate::event::{Event, Nanos};
use crate::io::input::{self, BadLine, Record};
use crate::lang::codes::Code;
use crate::lang::diagnostic::{Diagnostic, FileId};
use crate::lang::source::Sources;
use crate::lang::span::Span;
use crate::lang::toml_error::{TomlProblem, classify};

type Table = BTreeMap<Spanned<String>, Spanned<toml::Value>>;
type Defaults = BTreeMap<Spanned<String>, Spanned<Table>>;

/// Keys of a test file's top level.
const FILE_KEYS: &[&str] = &["rule_files", "devices", "defaults", "case"];
/// Keys of a `[[case]]`.
const CASE_KEYS: &[&str] = &[
    "name",
    "rule",
    "start",
    "defaults",
    "events",
    "events_file",
    "flush",
    "others",
    "expect",
    "expect_none",
];
/// Keys an expected alert may give (the alert's own members, product.md section 7).
const EXPECT_KEYS: &[&str] = &[
    "rule",
    "name",
    "kind",
    "key",
    "severity",
    "event_time",
    "fields",
    "events",
    "id",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    rule_files: Option<Spanned<Vec<Spanned<String>>>>,
    devices: Option<Spanned<String>>,
    defaults: Option<Defaults>,
    #[serde(default)]
    case: Vec<Spanned<RawCase>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCase {
    name: Spanned<String>,
    rule: Option<Spanned<toml::Value>>,
    start: Option<Spanned<toml::Value>>,
    defaults: Option<Defaults>,
    events: Option<Vec<Spanned<Table>>>,
    events_file: Option<Spanned<String>>,
    flush: Option<bool>,
    others: Option<Spanned<String>>,
    expect: Option<Vec<Spanned<Table>>>,
    expect_none: Option<Vec<Spanned<Table>>>,
}

/// A test file, read but not yet checked against the rules.
pub struct TestFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its id in the sources.
    pub file: FileId,
    /// The rule files to load, with where they are named (the whole file when defaulted).
    pub rule_files: Vec<(PathBuf, Span)>,
    /// The device profile directory it names, if any.
    pub devices: Option<PathBuf>,
    raw: RawFile,
}

impl TestFile {
    /// How many cases it has.
    pub fn len(&self) -> usize {
        self.raw.case.len()
    }

    /// True when it has no case.
    pub fn is_empty(&self) -> bool {
        self.raw.case.is_empty()
    }
}

/// One input line of a case: an event or a watermark, with where it was written.
#[derive(Debug, Clone)]
pub struct Input {
    /// The event or watermark.
    pub item: Item,
    /// The file it was written in (the test file or its events file).
    pub file: FileId,
    /// Where.
    pub span: Span,
}

/// An event or an explicit watermark.
#[derive(Debug, Clone)]
pub enum Item {
    /// An event for the engine.
    Event(Event),
    /// `{ watermark = ... }`: time advances for every stream.
    Watermark(Nanos),
}

/// An expected (or unwanted) alert: the members it must have, matched as a subset.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The alert members given.
    pub alert: Map<String, Json>,
    /// The test file.
    pub file: FileId,
    /// Where it is written.
    pub span: Span,
}

/// A checked test case.
pub struct Case {
    /// Its name.
    pub name: String,
    /// The test file.
    pub file: FileId,
    /// The `[[case]]` table.
    pub span: Span,
    /// The rules under test.
    pub rules: Vec<String>,
    /// The program with only those rules (and the aggregates they read).
    pub program: Arc<Program>,
    /// Events and watermarks, in the order written.
    pub input: Vec<Input>,
    /// Advance time to the end after the last event (as `tern replay` does).
    pub flush: bool,
    /// Alerts that no expectation names are allowed.
    pub allow_others: bool,
    /// Alerts that must come out, in this order.
    pub expect: Vec<Expect>,
    /// Alerts that must not come out.
    pub expect_none: Vec<Expect>,
}

/// Reads a test file's TOML. Problems are diagnostics (E420); the file is in `sources` either
/// way.
pub fn read(path: &Path, sources: &mut Sources) -> Result<TestFile, Vec<Diagnostic>> {
    let file = match sources.read(path) {
        Ok(f) => f,
        Err(e) => {
            let file = sources.add(path.display().to_string(), "");
            return Err(vec![Diagnostic::error(
                Code::E424,
                format!("cannot read the test file: {e}"),
                file,
                Span::default(),
                "here",
            )]);
        }
    };
    let raw: RawFile =
        toml::from_str(sources.text(file)).map_err(|e| vec![toml_error(file, &e)])?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let rule_files = match &raw.rule_files {
        Some(list) => list
            .get_ref()
            .iter()
            .map(|p| (dir.join(p.get_ref()), span(p.span())))
            .collect(),
        None => {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let stem = name.strip_suffix(".test.toml").unwrap_or(name);
            vec![(dir.join(format!("{stem}.tern")), Span::new(0, 0))]
        }
    };
    let devices = raw.devices.as_ref().map(|d| dir.join(d.get_ref()));
    Ok(TestFile {
        path: path.to_path_buf(),
        file,
        rule_files,
        devices,
        raw,
    })
}

/// Checks every case against the loaded program.
pub fn cases(
    tf: &TestFile,
    program: &Program,
    sources: &mut Sources,
) -> (Vec<Case>, Vec<Diagnostic>) {
    let mut b = Builder {
        file: tf.file,
        dir: tf.path.parent().unwrap_or(Path::new(".")).to_path_buf(),
        program,
        diagnostics: Vec::new(),
    };
    let file_defaults = b.defaults(tf.raw.defaults.as_ref());
    let mut out = Vec::new();
    for c in &tf.raw.case {
        if let Some(case) = b.case(c, &file_defaults, sources) {
            out.push(case);
        }
    }
    (out, b.diagnostics)
}

struct Builder<'p> {
    file: FileId,
    dir: PathBuf,
    program: &'p Program,
    diagnostics: Vec<Diagnostic>,
}

/// Default field values per stream, with where each was written.
type Fields = BTreeMap<String, (Json, Span)>;

impl Builder<'_> {
    fn error(&mut self, code: Code, message: String, at: Span, label: &str) -> &mut Diagnostic {
        self.diagnostics
            .push(Diagnostic::error(code, message, self.file, at, label));
        let n = self.diagnostics.len() - 1;
        &mut self.diagnostics[n]
    }

    fn note(&mut self, note: String) {
        if let Some(d) = self.diagnostics.last_mut() {
            d.notes.push(note);
        }
    }

    fn stream(&mut self, name: &str, at: Span) -> Option<StreamId> {
        let found = self.program.stream_id(name);
        if found.is_none() {
            let names: Vec<&str> = self
                .program
                .streams
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            let d = Diagnostic::error(
                Code::E421,
                format!("unknown stream `{name}`"),
                self.file,
                at,
                "no stream of this name",
            )
            .with_suggestion(name, names.iter().copied())
            .with_note(format!("the streams are: {}", names.join(", ")));
            self.diagnostics.push(d);
        }
        found
    }

    fn defaults(&mut self, raw: Option<&Defaults>) -> BTreeMap<StreamId, Fields> {
        let mut out = BTreeMap::new();
        for (name, table) in raw.into_iter().flatten() {
            let Some(id) = self.stream(name.get_ref(), span(name.span())) else {
                continue;
            };
            let mut fields = Fields::new();
            for (f, v) in table.get_ref() {
                if self.field(id, f.get_ref(), span(f.span())) {
                    fields.insert(
                        f.get_ref().clone(),
                        (toml_to_json(v.get_ref()), span(v.span())),
                    );
                }
            }
            out.insert(id, fields);
        }
        out
    }

    /// True when `stream` has the field; a diagnostic with a suggestion otherwise.
    fn field(&mut self, stream: StreamId, name: &str, at: Span) -> bool {
        let schema = self.program.stream(stream);
        if schema.field_index(name).is_some() {
            return true;
        }
        let names: Vec<&str> = schema.fields.iter().map(|f| f.name.as_str()).collect();
        let d = Diagnostic::error(
            Code::E422,
            format!("stream `{}` has no field `{name}`", schema.name),
            self.file,
            at,
            "unknown field",
        )
        .with_suggestion(name, names.iter().copied())
        .with_note(format!(
            "the fields of `{}` are: {}",
            schema.name,
            names.join(", ")
        ));
        self.diagnostics.push(d);
        false
    }

    fn case(
        &mut self,
        raw: &Spanned<RawCase>,
        file_defaults: &BTreeMap<StreamId, Fields>,
        sources: &mut Sources,
    ) -> Option<Case> {
        let before = self.diagnostics.len();
        let c = raw.get_ref();
        let all: Vec<String> = self.program.rules.iter().map(|r| r.name.clone()).collect();
        let rules = match &c.rule {
            None => all.clone(),
            Some(v) => {
                let at = span(v.span());
                let names: Vec<String> = match v.get_ref() {
                    toml::Value::String(s) => vec![s.clone()],
                    toml::Value::Array(a) => a
                        .iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect(),
                    _ => Vec::new(),
                };
                if names.is_empty() {
                    self.error(
                        Code::E420,
                        "`rule` must be a rule name or a list of them".into(),
                        at,
                        "expected a string or a list of strings",
                    );
                }
                for n in &names {
                    if !all.contains(n) {
                        let d = Diagnostic::error(
                            Code::E421,
                            format!("unknown rule `{n}`"),
                            self.file,
                            at,
                            "no rule of this name in the rule files",
                        )
                        .with_suggestion(n, all.iter().map(String::as_str))
                        .with_note(format!("the rules are: {}", all.join(", ")));
                        self.diagnostics.push(d);
                    }
                }
                names
            }
        };
        let program = Arc::new(super::only_rules(self.program, &rules));
        let start = c.start.as_ref().and_then(|s| {
            let t = time_of(s.get_ref(), None);
            if t.is_none() {
                self.error(
                    Code::E422,
                    "`start` is not a time".into(),
                    span(s.span()),
                    "expected an RFC 3339 time or epoch milliseconds",
                );
                self.note("write it as 2024-03-01T08:00:00Z (quoted or not)".into());
            }
            t
        });
        let mut defaults = file_defaults.clone();
        for (stream, fields) in self.defaults(c.defaults.as_ref()) {
            defaults.entry(stream).or_default().extend(fields);
        }
        let default_stream = program.sole_input();
        let mut input = Vec::new();
        if let Some(f) = &c.events_file {
            self.events_file(f, &program, default_stream, sources, &mut input);
        }
        for ev in c.events.iter().flatten() {
            if let Some(i) = self.event(ev, default_stream, &defaults, start) {
                input.push(i);
            }
        }
        if c.events.is_none() && c.events_file.is_none() {
            self.error(
                Code::E424,
                format!("case `{}` has no events", c.name.get_ref()),
                span(c.name.span()),
                "in this case",
            );
            self.note("add `events = [ {...}, ... ]` or `events_file = \"x.jsonl\"`".into());
        }
        let allow_others = match &c.others {
            None => false,
            Some(o) => match o.get_ref().as_str() {
                "forbid" => false,
                "allow" => true,
                other => {
                    self.error(
                        Code::E420,
                        format!("`others` is `{other}`"),
                        span(o.span()),
                        "expected \"forbid\" or \"allow\"",
                    );
                    false
                }
            },
        };
        let expect = self.expectations(c.expect.as_deref(), &rules, start);
        let expect_none = self.expectations(c.expect_none.as_deref(), &rules, start);
        if self.diagnostics.len() > before {
            return None;
        }
        Some(Case {
            name: c.name.get_ref().clone(),
            file: self.file,
            span: span(raw.span()),
            rules,
            program,
            input,
            flush: c.flush.unwrap_or(true),
            allow_others,
            expect,
            expect_none,
        })
    }

    fn events_file(
        &mut self,
        f: &Spanned<String>,
        program: &Program,
        default_stream: Option<StreamId>,
        sources: &mut Sources,
        input: &mut Vec<Input>,
    ) {
        let path = self.dir.join(f.get_ref());
        let id = match sources.read(&path) {
            Ok(id) => id,
            Err(e) => {
                self.error(
                    Code::E424,
                    format!("cannot read the events file {}: {e}", path.display()),
                    span(f.span()),
                    "named here",
                );
                self.note("the path is relative to the test file".into());
                return;
            }
        };
        let reader = input::JsonReader::new(program, default_stream);
        let text = sources.text(id).to_string();
        let mut offset = 0usize;
        for line in text.split_inclusive('\n') {
            let start = offset;
            offset += line.len();
            let l = line.trim_end_matches(['\n', '\r']);
            if crate::io::input::is_blank(l.as_bytes()) {
                continue;
            }
            let at = Span::new(start, start + l.len());
            match reader.line(l) {
                Ok(Record::Event(ev)) => input.push(Input {
                    item: Item::Event(ev),
                    file: id,
                    span: at,
                }),
                Ok(Record::Watermark(t)) => input.push(Input {
                    item: Item::Watermark(t),
                    file: id,
                    span: at,
                }),
                Err(e) => {
                    let mut d = Diagnostic::error(
                        Code::E422,
                        format!("invalid event: {e}"),
                        id,
                        at,
                        "in this line",
                    )
                    .with_secondary(
                        self.file,
                        span(f.span()),
                        "events file named here",
                    );
                    if matches!(e, BadLine::UnknownStream(_)) {
                        d = d.with_note(
                            "with several input streams each line needs \"$stream\": \"name\"",
                        );
                    }
                    self.diagnostics.push(d);
                }
            }
        }
    }

    fn event(
        &mut self,
        ev: &Spanned<Table>,
        default_stream: Option<StreamId>,
        defaults: &BTreeMap<StreamId, Fields>,
        start: Option<Nanos>,
    ) -> Option<Input> {
        let at = span(ev.span());
        let table = ev.get_ref();
        let get = |k: &str| table.iter().find(|(n, _)| n.get_ref() == k).map(|(_, v)| v);
        if let Some(w) = get("watermark").or_else(|| get("$watermark")) {
            if table.len() > 1 {
                self.error(
                    Code::E422,
                    "a watermark line has only `watermark`".into(),
                    at,
                    "other keys here",
                );
                return None;
            }
            return match time_of(w.get_ref(), start) {
                Some(t) => Some(Input {
                    item: Item::Watermark(t),
                    file: self.file,
                    span: at,
                }),
                None => {
                    self.bad_time(span(w.span()), w.get_ref(), start);
                    None
                }
            };
        }
        let named = get("stream").or_else(|| get("$stream"));
        let stream = match named {
            Some(s) => match s.get_ref().as_str() {
                Some(name) => self.stream(name, span(s.span()))?,
                None => {
                    self.error(
                        Code::E422,
                        "`stream` must be a name".into(),
                        span(s.span()),
                        "not a string",
                    );
                    return None;
                }
            },
            None => match default_stream {
                Some(s) => s,
                None => {
                    self.error(
                        Code::E422,
                        "which stream is this event from?".into(),
                        at,
                        "no `stream` here",
                    );
                    self.note(
                        "the rules under test read several streams: add `stream = \"name\"`".into(),
                    );
                    return None;
                }
            },
        };
        let schema = self.program.stream(stream);
        let mut values: BTreeMap<String, (Json, Span)> =
            defaults.get(&stream).cloned().unwrap_or_default();
        let mut ok = true;
        for (k, v) in table {
            let name = k.get_ref();
            if matches!(name.as_str(), "stream" | "$stream") {
                continue;
            }
            if !self.field(stream, name, span(k.span())) {
                ok = false;
                continue;
            }
            values.insert(name.clone(), (toml_to_json(v.get_ref()), span(v.span())));
        }
        if !ok {
            return None;
        }
        // Times may be written relative to the case's `start`.
        for f in &schema.fields {
            if crate::compile::expr::ty_of(f.ty.base) != Ty::Timestamp {
                continue;
            }
            if let Some((Json::String(s), vat)) = values.get(&f.name).cloned()
                && s.starts_with('+')
            {
                match relative(&s, start) {
                    Some(t) => {
                        let text = crate::engine::alert::rfc3339(t);
                        values.insert(f.name.clone(), (Json::String(text), vat));
                    }
                    None => {
                        self.bad_time(vat, &toml::Value::String(s), start);
                        return None;
                    }
                }
            }
        }
        let json: Map<String, Json> = values
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        match input::event_from_json(schema, stream, &|name| json.get(name)) {
            Ok(event) => Some(Input {
                item: Item::Event(event),
                file: self.file,
                span: at,
            }),
            Err(e) => {
                let (place, label) = match &e {
                    BadLine::WrongType { field, .. } | BadLine::BadTimestamp { field, .. } => {
                        (values.get(field).map_or(at, |(_, s)| *s), "this value")
                    }
                    _ => (at, "in this event"),
                };
                self.error(Code::E422, format!("invalid event: {e}"), place, label);
                if let BadLine::MissingField(f) = &e {
                    self.note(format!(
                        "give `{f}` in the event, or once for all `{}` events under [defaults.{}]",
                        schema.name, schema.name
                    ));
                }
                None
            }
        }
    }

    fn bad_time(&mut self, at: Span, v: &toml::Value, start: Option<Nanos>) {
        let relative = v.as_str().is_some_and(|s| s.starts_with('+'));
        if relative && start.is_none() {
            self.error(
                Code::E422,
                "a relative time needs the case's `start`".into(),
                at,
                "relative to what?",
            );
            self.note("add `start = 2024-03-01T08:00:00Z` to the case".into());
        } else {
            self.error(Code::E422, format!("not a time: {v}"), at, "here");
            self.note(
                "times are RFC 3339 (2024-03-01T08:00:00Z), epoch milliseconds, or `+30s` after `start`"
                    .into(),
            );
        }
    }

    fn expectations(
        &mut self,
        raw: Option<&[Spanned<Table>]>,
        rules: &[String],
        start: Option<Nanos>,
    ) -> Vec<Expect> {
        let mut out = Vec::new();
        for t in raw.into_iter().flatten() {
            let at = span(t.span());
            let mut alert = Map::new();
            for (k, v) in t.get_ref() {
                let name = k.get_ref().as_str();
                let kat = span(k.span());
                if !EXPECT_KEYS.contains(&name) {
                    let d = Diagnostic::error(
                        Code::E423,
                        format!("an alert has no member `{name}`"),
                        self.file,
                        kat,
                        "not an alert member",
                    )
                    .with_suggestion(name, EXPECT_KEYS.iter().copied())
                    .with_note(format!(
                        "expectations match alerts on the members given: {}",
                        EXPECT_KEYS.join(", ")
                    ));
                    self.diagnostics.push(d);
                    continue;
                }
                let mut j = toml_to_json(v.get_ref());
                if !resolve_relative(&mut j, start) {
                    self.error(
                        Code::E423,
                        "a relative time needs the case's `start`".into(),
                        span(v.span()),
                        "relative to what?",
                    );
                    continue;
                }
                match (name, &j) {
                    ("kind", Json::String(s)) if s != "match" && s != "timeout" => {
                        self.error(
                            Code::E423,
                            format!("alert kind `{s}`"),
                            span(v.span()),
                            "expected \"match\" or \"timeout\"",
                        );
                    }
                    ("rule", Json::String(s)) if !rules.contains(s) => {
                        let d = Diagnostic::error(
                            Code::E421,
                            format!("rule `{s}` is not under test in this case"),
                            self.file,
                            span(v.span()),
                            "not among the case's rules",
                        )
                        .with_suggestion(s, rules.iter().map(String::as_str))
                        .with_note(format!("the case runs: {}", rules.join(", ")));
                        self.diagnostics.push(d);
                    }
                    _ => {}
                }
                alert.insert(name.to_string(), j);
            }
            out.push(Expect {
                alert,
                file: self.file,
                span: at,
            });
        }
        out
    }
}

fn span(r: std::ops::Range<usize>) -> Span {
    Span::new(r.start, r.end)
}

/// A time written in a test: RFC 3339 (a TOML date-time or a string), epoch milliseconds, or
/// `+30s` after `start`.
fn time_of(v: &toml::Value, start: Option<Nanos>) -> Option<Nanos> {
    match v {
        toml::Value::String(s) if s.starts_with('+') => relative(s, start),
        toml::Value::String(s) => input::parse_rfc3339(s),
        toml::Value::Datetime(d) => input::parse_rfc3339(&d.to_string()),
        toml::Value::Integer(ms) => ms.checked_mul(1_000_000),
        _ => None,
    }
}

fn relative(s: &str, start: Option<Nanos>) -> Option<Nanos> {
    let d = crate::devices::time::parse_duration(s.strip_prefix('+')?).ok()?;
    start?.checked_add(d)
}

/// Replaces `+30s` strings (times after `start`) by RFC 3339; false when one has no `start`.
fn resolve_relative(j: &mut Json, start: Option<Nanos>) -> bool {
    match j {
        Json::String(s) if s.starts_with('+') => {
            let is_duration = s
                .strip_prefix('+')
                .is_some_and(|d| crate::devices::time::parse_duration(d).is_ok());
            if !is_duration {
                return true;
            }
            match relative(s, start) {
                Some(t) => {
                    *s = crate::engine::alert::rfc3339(t);
                    true
                }
                None => false,
            }
        }
        Json::Array(a) => a.iter_mut().all(|x| resolve_relative(x, start)),
        Json::Object(m) => m.values_mut().all(|x| resolve_relative(x, start)),
        _ => true,
    }
}

/// A TOML value as the JSON an alert or an input line would hold.
pub fn toml_to_json(v: &toml::Value) -> Json {
    match v {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(a) => Json::Array(a.iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Json::Object(
            t.iter()
                .map(|(k, v)| (k.clone(), toml_to_json(v)))
                .collect(),
        ),
    }
}

/// toml's (first) error as a diagnostic; unknown keys get a "did you mean".
fn toml_error(file: FileId, e: &toml::de::Error) -> Diagnostic {
    let (at, problem) = classify(e);
    match problem {
        TomlProblem::UnknownKey { name, expected } => {
            let keys: &[&str] = if expected.contains(&"expect") {
                CASE_KEYS
            } else {
                FILE_KEYS
            };
            Diagnostic::error(
                Code::E420,
                format!("unknown key `{name}`"),
                file,
                at,
                "not a test file key",
            )
            .with_suggestion(name, keys.iter().copied())
            .with_note(format!("the keys here are: {}", keys.join(", ")))
        }
        TomlProblem::MissingKey { name } => Diagnostic::error(
            Code::E420,
            format!("missing key `{name}`"),
            file,
            at,
            "in this table",
        )
        .with_note(if name == "name" {
            "every [[case]] needs `name = \"...\"`".to_string()
        } else {
            format!("add `{name}`")
        }),
        TomlProblem::BadValue { headline } | TomlProblem::Other { headline } => Diagnostic::error(
            Code::E420,
            format!("invalid test file: {headline}"),
            file,
            at,
            "here",
        )
        .with_note("docs/language.md, \"Testing rules\", describes the format"),
    }
}
