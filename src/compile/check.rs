//! Name resolution, type checking and pattern-shape checks: ASTs to a [`Program`].
//!
//! Every problem is a diagnostic; checking goes on after an error so that one run reports
//! as much as it can. A rule with an error is left out of the program.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::lang::ast::{self, ClauseKind, Contiguity, Item};
use crate::lang::codes::Code;
use crate::lang::diagnostic::{Diagnostic, FileId};
use crate::lang::source::Sources;
use crate::lang::span::{Span, Spanned};

use super::expr::{Context, Scope, Typer, ty_of};
use super::hir::*;
use super::schema::{FieldSchema, FieldType, Origin, StreamKind, StreamSchema};
use super::script::Script;

const NANOS_PER_MILLI: i64 = 1_000_000;
/// Quantifiers are unrolled into NFA states; beyond this a rule should use a window instead.
pub const MAX_REPEAT: u32 = 1000;

/// What a rule set is checked against besides its own files.
pub struct Environment<'a> {
    /// Streams of the loaded device profiles.
    pub device_streams: Vec<StreamSchema>,
    /// Sink names a `to` clause may use.
    pub sinks: &'a [String],
}

/// Checks parsed rule files together (they share one namespace of streams and rules).
pub fn check(
    sources: &mut Sources,
    files: &[(FileId, ast::File)],
    env: Environment<'_>,
) -> (Program, Vec<Diagnostic>) {
    let mut c = Checker {
        diags: Vec::new(),
        unknown_streams: Vec::new(),
        streams: Vec::new(),
        imports: Vec::new(),
        sinks: env.sinks,
        rhai: None,
        scripts: HashMap::new(),
    };
    for s in env.device_streams {
        c.add_stream(s);
    }
    let mut file_imports: HashMap<FileId, Vec<u16>> = HashMap::new();
    for (file, ast) in files {
        for item in &ast.items {
            match item {
                Item::Stream(decl) => c.stream_decl(*file, decl),
                Item::Import(imp) => {
                    let idx = c.import(sources, *file, imp);
                    file_imports.entry(*file).or_default().push(idx);
                }
                _ => {}
            }
        }
    }
    let mut aggregates = Vec::new();
    for (file, ast) in files {
        for item in &ast.items {
            if let Item::Aggregate(decl) = item
                && let Some(a) = c.aggregate(*file, decl)
            {
                aggregates.push(a);
            }
        }
    }
    let mut rules: Vec<Arc<Rule>> = Vec::new();
    let mut rule_names: HashMap<String, Origin> = HashMap::new();
    for (file, ast) in files {
        let imports: Vec<(u16, &ImportDef)> = file_imports
            .get(file)
            .map(|v| v.iter().map(|&i| (i, &c.imports[i as usize])).collect())
            .unwrap_or_default();
        let imports: Vec<(u16, ImportDef)> =
            imports.into_iter().map(|(i, d)| (i, d.clone())).collect();
        for item in &ast.items {
            if let Item::Rule(rule) = item {
                let origin = Origin {
                    file: *file,
                    span: rule.name.span,
                };
                if let Some(prev) = rule_names.get(&rule.name.node) {
                    c.diags.push(
                        Diagnostic::error(
                            Code::E210,
                            format!("rule `{}` is defined twice", rule.name.node),
                            *file,
                            rule.name.span,
                            "second definition",
                        )
                        .with_secondary(prev.file, prev.span, "first defined here")
                        .with_note("rule names are unique across all rule files: rename one"),
                    );
                    continue;
                }
                rule_names.insert(rule.name.node.clone(), origin);
                let refs: Vec<(u16, &ImportDef)> = imports.iter().map(|(i, d)| (*i, d)).collect();
                if let Some(r) = c.rule(*file, rule, &refs) {
                    rules.push(Arc::new(r));
                }
            }
        }
    }
    let program = Program {
        streams: c.streams,
        aggregates,
        rules,
        imports: c.imports,
    };
    (program, c.diags)
}

struct Checker<'a> {
    diags: Vec<Diagnostic>,
    /// Unknown stream names already reported in the current rule.
    unknown_streams: Vec<String>,
    streams: Vec<StreamSchema>,
    imports: Vec<ImportDef>,
    sinks: &'a [String],
    /// The one rhai engine every script of the program runs in, made at the first import.
    rhai: Option<Arc<rhai::Engine>>,
    /// Scripts loaded so far by path: a script imported by several files is compiled once.
    scripts: HashMap<std::path::PathBuf, Option<Arc<Script>>>,
}

/// The clauses of one rule, gathered.
#[derive(Default)]
struct Clauses<'r> {
    from: Option<&'r Vec<ast::Ident>>,
    key: Option<&'r Vec<ast::Ident>>,
    pattern: Option<&'r ast::Pattern>,
    within: Option<&'r Spanned<ast::Duration>>,
    skip: Option<&'r Spanned<ast::SkipStrategy>>,
    emit: Option<&'r ast::Emit>,
    on_timeout: Option<&'r ast::Emit>,
    to: Option<&'r Vec<ast::Ident>>,
}

/// Per-step facts gathered before typing conditions.
struct VarFacts {
    vars: Vec<Var>,
    ok: bool,
}

impl Checker<'_> {
    fn stream_id(&self, name: &str) -> Option<StreamId> {
        self.streams
            .iter()
            .position(|s| s.name == name)
            .map(|i| StreamId(i as u32))
    }

    fn add_stream(&mut self, s: StreamSchema) -> Option<StreamId> {
        if let Some(prev) = self.stream_id(&s.name) {
            let p = &self.streams[prev.0 as usize];
            let where_ = match &p.kind {
                StreamKind::Device { profile } => {
                    format!("first declared by device profile `{profile}`")
                }
                _ => "first declared here".to_string(),
            };
            self.diags.push(
                Diagnostic::error(
                    Code::E210,
                    format!("stream `{}` is declared twice", s.name),
                    s.origin.file,
                    s.origin.span,
                    "second declaration",
                )
                .with_secondary(p.origin.file, p.origin.span, where_)
                .with_note(
                    "stream names are shared by every rule file and device profile: rename one",
                ),
            );
            return None;
        }
        // An event stores its stream and its length in 16 bits each.
        let too_many = if s.fields.len() > crate::event::MAX_FIELDS {
            Some(format!(
                "stream `{}` has {} fields, more than {}",
                s.name,
                s.fields.len(),
                crate::event::MAX_FIELDS
            ))
        } else if self.streams.len() >= crate::event::MAX_STREAMS {
            Some(format!(
                "stream `{}` is one more than the {} a program may declare",
                s.name,
                crate::event::MAX_STREAMS
            ))
        } else {
            None
        };
        if let Some(message) = too_many {
            self.diags.push(
                Diagnostic::error(Code::E225, message, s.origin.file, s.origin.span, "here")
                    .with_note("split the stream, or drop fields and streams no rule reads"),
            );
            return None;
        }
        self.streams.push(s);
        Some(StreamId(self.streams.len() as u32 - 1))
    }

    fn import(&mut self, sources: &mut Sources, file: FileId, imp: &ast::Import) -> u16 {
        let base = sources
            .get(file)
            .and_then(|s| s.path.as_deref())
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let path = base.join(&imp.path.node);
        let has_path = sources.get(file).and_then(|s| s.path.as_ref()).is_some();
        let mut script = None;
        if has_path && !path.is_file() {
            self.diags.push(
                Diagnostic::error(
                    Code::E220,
                    format!("cannot find script `{}`", imp.path.node),
                    file,
                    imp.path.span,
                    format!("looked for {}", path.display()),
                )
                .with_note("the path is relative to the rule file"),
            );
        } else if has_path {
            script = self.load_script(sources, file, imp, &path);
        }
        self.imports.push(ImportDef {
            path,
            alias: imp.alias.as_ref().map(|a| a.node.clone()),
            origin: Origin {
                file,
                span: imp.span,
            },
            script,
        });
        (self.imports.len() - 1) as u16
    }

    /// Reads and compiles an imported script once per path; a script that cannot be read or
    /// does not compile is reported (E223) at its own line and column.
    fn load_script(
        &mut self,
        sources: &mut Sources,
        file: FileId,
        imp: &ast::Import,
        path: &Path,
    ) -> Option<Arc<Script>> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(loaded) = self.scripts.get(&key) {
            return loaded.clone();
        }
        let loaded = match sources.read(path) {
            Err(e) => {
                self.diags.push(Diagnostic::error(
                    Code::E223,
                    format!("cannot read script `{}`: {e}", imp.path.node),
                    file,
                    imp.path.span,
                    "imported here",
                ));
                None
            }
            Ok(script_file) => {
                let engine = Arc::clone(
                    self.rhai
                        .get_or_insert_with(|| Arc::new(super::script::sandbox())),
                );
                let text = sources.text(script_file);
                match Script::compile(engine, imp.path.node.clone(), path.to_path_buf(), text) {
                    Ok(s) => Some(Arc::new(s)),
                    Err(e) => {
                        let (line, col) = e.position.unwrap_or((1, 1));
                        let at = super::script::offset_of(text, line, col);
                        let end = text[at..].chars().next().map_or(at, |c| at + c.len_utf8());
                        self.diags.push(
                            Diagnostic::error(
                                Code::E223,
                                format!("script `{}` does not compile: {}", imp.path.node, e.message),
                                script_file,
                                Span::new(at, end),
                                e.message.clone(),
                            )
                            .with_secondary(file, imp.path.span, "imported here")
                            .with_note("user functions are rhai (https://rhai.rs); scripts have no `import`, `eval`, clock or I/O"),
                        );
                        None
                    }
                }
            }
        };
        self.scripts.insert(key, loaded.clone());
        loaded
    }

    fn stream_decl(&mut self, file: FileId, decl: &ast::StreamDecl) {
        let mut fields: Vec<FieldSchema> = Vec::new();
        let mut ok = true;
        for f in &decl.fields {
            if let Some(prev) = fields.iter().find(|p| p.name == f.name.node) {
                self.diags.push(
                    Diagnostic::error(
                        Code::E210,
                        format!(
                            "field `{}` is declared twice in stream `{}`",
                            f.name.node, decl.name.node
                        ),
                        file,
                        f.name.span,
                        "second declaration",
                    )
                    .with_secondary(
                        prev.origin.file,
                        prev.origin.span,
                        "first declared here",
                    ),
                );
                ok = false;
                continue;
            }
            fields.push(FieldSchema {
                name: f.name.node.clone(),
                ty: FieldType {
                    base: f.ty.node,
                    nullable: f.nullable,
                },
                origin: Origin { file, span: f.span },
            });
        }
        let time_field = match &decl.time {
            None => {
                let guess = fields
                    .iter()
                    .find(|f| f.ty.base == ast::TypeName::Timestamp)
                    .map_or("ts".to_string(), |f| f.name.clone());
                self.diags.push(
                    Diagnostic::error(
                        Code::E215,
                        format!("stream `{}` has no time field", decl.name.node),
                        file,
                        decl.name.span,
                        "events need an event time",
                    )
                    .with_note(format!("add `time {guess}` naming a timestamp field")),
                );
                None
            }
            Some(t) => match fields.iter().position(|f| f.name == t.node) {
                None => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::E215,
                            format!(
                                "time field `{}` is not a field of stream `{}`",
                                t.node, decl.name.node
                            ),
                            file,
                            t.span,
                            "no such field",
                        )
                        .with_suggestion(&t.node, fields.iter().map(|f| f.name.as_str())),
                    );
                    None
                }
                Some(i)
                    if fields[i].ty.base != ast::TypeName::Timestamp || fields[i].ty.nullable =>
                {
                    self.diags.push(
                        Diagnostic::error(
                            Code::E215,
                            format!("time field `{}` must be a non-null timestamp", t.node),
                            file,
                            t.span,
                            "not a timestamp",
                        )
                        .with_secondary(
                            file,
                            fields[i].origin.span,
                            format!(
                                "declared as {}{}",
                                fields[i].ty.base.as_str(),
                                if fields[i].ty.nullable { "?" } else { "" }
                            ),
                        )
                        .with_note(format!("declare it as `{}: timestamp`", t.node)),
                    );
                    None
                }
                Some(i) => Some(i),
            },
        };
        let lateness = decl
            .lateness
            .as_ref()
            .map_or(0, |d| d.node.millis.saturating_mul(NANOS_PER_MILLI));
        let idle = decl
            .idle
            .as_ref()
            .map_or(0, |d| d.node.millis.saturating_mul(NANOS_PER_MILLI));
        if let Some(idle_d) = &decl.idle
            && idle_d.node.millis <= 0
        {
            self.diags.push(Diagnostic::error(
                Code::E309,
                "`idle` must be a positive duration",
                file,
                idle_d.span,
                "zero",
            ));
        }
        // Registered even with a bad time field (reported above), so rules that read the
        // stream are still checked instead of failing with "unknown stream".
        if ok {
            self.add_stream(StreamSchema {
                name: decl.name.node.clone(),
                fields,
                time_field: time_field.unwrap_or(0),
                default_key: Vec::new(),
                lateness,
                idle,
                origin: Origin {
                    file,
                    span: decl.name.span,
                },
                kind: StreamKind::Declared,
            });
        }
    }

    fn aggregate(&mut self, file: FileId, decl: &ast::AggregateDecl) -> Option<Aggregate> {
        let source = self.resolve_stream(file, &decl.source)?;
        let src = self.streams[source.0 as usize].clone();
        let mut ok = true;
        let mut key = Vec::new();
        let mut key_names = Vec::new();
        let mut out_fields = Vec::new();
        for k in &decl.key {
            match src.field_index(&k.node) {
                Some(i) => {
                    key.push(i as u16);
                    key_names.push(k.node.clone());
                    out_fields.push(FieldSchema {
                        name: k.node.clone(),
                        ty: src.fields[i].ty,
                        origin: Origin { file, span: k.span },
                    });
                }
                None => {
                    self.diags.push(
                        Diagnostic::error(
                            Code::E214,
                            format!(
                                "key field `{}` is not a field of stream `{}`",
                                k.node, src.name
                            ),
                            file,
                            k.span,
                            "no such field",
                        )
                        .with_suggestion(&k.node, src.field_names()),
                    );
                    ok = false;
                }
            }
        }
        let (size, every) = match &decl.window {
            None => {
                self.diags.push(
                    Diagnostic::error(
                        Code::E221,
                        format!("aggregate `{}` has no window", decl.name.node),
                        file,
                        decl.name.span,
                        "how long is a window?",
                    )
                    .with_note("add `window tumbling 15m` or `window sliding 15m every 5m`"),
                );
                return None;
            }
            Some(w) => match &w.node {
                ast::Window::Tumbling(d) => (d.node.millis, d.node.millis),
                ast::Window::Sliding { size, every } => {
                    if every.node.millis > size.node.millis {
                        self.diags.push(
                            Diagnostic::error(
                                Code::E221,
                                "a sliding window cannot advance by more than its size",
                                file,
                                every.span,
                                "longer than the window",
                            )
                            .with_secondary(file, size.span, "the window's size")
                            .with_note("events between windows would be lost: use `tumbling` or a smaller step"),
                        );
                        ok = false;
                    } else if size.node.millis % every.node.millis.max(1) != 0 {
                        self.diags.push(
                            Diagnostic::error(
                                Code::E221,
                                "a sliding window's size must be a multiple of its step",
                                file,
                                every.span,
                                "does not divide the size",
                            )
                            .with_note("e.g. `sliding 15m every 5m`"),
                        );
                        ok = false;
                    }
                    (size.node.millis, every.node.millis)
                }
            },
        };
        if size <= 0 || every <= 0 {
            let span = decl.window.as_ref().map_or(decl.span, |w| w.span);
            self.diags.push(Diagnostic::error(
                Code::E309,
                "a window must be longer than zero",
                file,
                span,
                "zero-length window",
            ));
            return None;
        }
        if decl.select.is_empty() {
            self.diags.push(
                Diagnostic::error(
                    Code::E221,
                    format!("aggregate `{}` selects nothing", decl.name.node),
                    file,
                    decl.name.span,
                    "no output fields",
                )
                .with_note("add `select { n: count(), mean: avg(x) }`"),
            );
            ok = false;
        }
        let mut typer = Typer {
            diags: &mut self.diags,
            accumulators: Vec::new(),
        };
        let mut select = Vec::new();
        let scope = Scope {
            file,
            context: Context::Select,
            candidate: Some(&src),
            vars: &[],
            streams: &self.streams,
            bound: &[],
            current: None,
            key_ty: None,
            key_fields: &key_names,
            imports: &[],
        };
        let ts_ty = FieldType {
            base: ast::TypeName::Timestamp,
            nullable: false,
        };
        out_fields.push(FieldSchema {
            name: "window_start".into(),
            ty: ts_ty,
            origin: Origin {
                file,
                span: decl.name.span,
            },
        });
        out_fields.push(FieldSchema {
            name: "window_end".into(),
            ty: ts_ty,
            origin: Origin {
                file,
                span: decl.name.span,
            },
        });
        for f in &decl.select {
            let t = typer.expr(&f.value, &scope);
            if out_fields.iter().any(|o| o.name == f.name.node) {
                typer.diags.push(
                    Diagnostic::error(
                        Code::E210,
                        format!("output field `{}` is defined twice", f.name.node),
                        file,
                        f.name.span,
                        "already a field of this aggregate",
                    )
                    .with_note("key fields, window_start and window_end are output fields already"),
                );
                ok = false;
                continue;
            }
            let base = match t.ty {
                Ty::Bool => ast::TypeName::Bool,
                Ty::Int => ast::TypeName::Int,
                Ty::Float | Ty::Any | Ty::Null => ast::TypeName::Float,
                Ty::Str => ast::TypeName::String,
                Ty::Timestamp => ast::TypeName::Timestamp,
                Ty::Duration => ast::TypeName::Duration,
            };
            out_fields.push(FieldSchema {
                name: f.name.node.clone(),
                ty: FieldType {
                    base,
                    nullable: true,
                },
                origin: Origin {
                    file,
                    span: f.name.span,
                },
            });
            select.push((f.name.node.clone(), t));
        }
        let accumulators = std::mem::take(&mut typer.accumulators);
        if !ok {
            return None;
        }
        let time_field = key.len() + 1;
        let default_key = (0..key.len()).collect();
        let output = self.add_stream(StreamSchema {
            name: decl.name.node.clone(),
            fields: out_fields,
            time_field,
            default_key,
            lateness: 0,
            idle: src.idle,
            origin: Origin {
                file,
                span: decl.name.span,
            },
            kind: StreamKind::Aggregate,
        })?;
        Some(Aggregate {
            name: decl.name.node.clone(),
            source,
            output,
            key,
            size: size.saturating_mul(NANOS_PER_MILLI),
            every: every.saturating_mul(NANOS_PER_MILLI),
            accumulators,
            select,
            origin: Origin {
                file,
                span: decl.name.span,
            },
        })
    }

    fn resolve_stream(&mut self, file: FileId, name: &ast::Ident) -> Option<StreamId> {
        let id = self.stream_id(&name.node);
        // One report per unknown name and rule: `from flw` and `a: flw` are one mistake.
        if id.is_none() && !self.unknown_streams.contains(&name.node) {
            self.unknown_streams.push(name.node.clone());
            self.diags.push(
                Diagnostic::error(
                    Code::E200,
                    format!("unknown stream `{}`", name.node),
                    file,
                    name.span,
                    "no stream or device profile has this name",
                )
                .with_suggestion(&name.node, self.streams.iter().map(|s| s.name.as_str()))
                .with_note("declare it with `stream NAME { ... }` or add a profile to devices/"),
            );
        }
        id
    }

    fn clauses<'r>(&mut self, file: FileId, rule: &'r ast::Rule) -> Clauses<'r> {
        let mut c = Clauses::default();
        let mut seen: HashMap<&'static str, Span> = HashMap::new();
        for clause in &rule.clauses {
            let word = match &clause.kind {
                ClauseKind::From(v) => {
                    c.from = Some(v);
                    "from"
                }
                ClauseKind::Key(v) => {
                    c.key = Some(v);
                    "key"
                }
                ClauseKind::Match(p) => {
                    c.pattern = Some(p);
                    "match"
                }
                ClauseKind::Within(d) => {
                    c.within = Some(d);
                    "within"
                }
                ClauseKind::Skip(s) => {
                    c.skip = Some(s);
                    "skip"
                }
                ClauseKind::Emit(e) => {
                    c.emit = Some(e);
                    "emit"
                }
                ClauseKind::OnTimeout(e) => {
                    c.on_timeout = Some(e);
                    "on timeout"
                }
                ClauseKind::To(v) => {
                    c.to = Some(v);
                    "to"
                }
            };
            if let Some(prev) = seen.insert(word, clause.span) {
                self.diags.push(
                    Diagnostic::error(
                        Code::E217,
                        format!("rule `{}` has two `{word}` clauses", rule.name.node),
                        file,
                        clause.span,
                        "second clause",
                    )
                    .with_secondary(file, prev, "first clause")
                    .with_note(match word {
                        "from" | "key" | "to" => {
                            format!("list several names in one clause: `{word} a, b`")
                        }
                        "match" => {
                            "join the patterns into one with `next` or `followed by`".to_string()
                        }
                        _ => "keep one".to_string(),
                    }),
                );
            }
        }
        c
    }

    fn rule(
        &mut self,
        file: FileId,
        rule: &ast::Rule,
        imports: &[(u16, &ImportDef)],
    ) -> Option<Rule> {
        let errors_before = self.error_count();
        self.unknown_streams.clear();
        let c = self.clauses(file, rule);
        let Some(pattern) = c.pattern else {
            self.diags.push(
                Diagnostic::error(
                    Code::E216,
                    format!("rule `{}` has no `match` clause", rule.name.node),
                    file,
                    rule.name.span,
                    "what should this rule look for?",
                )
                .with_note("add a pattern, e.g. `match first: flow where speed < 20`"),
            );
            return None;
        };
        // Input streams: the `from` list, or the streams the steps name.
        let mut from: Vec<StreamId> = Vec::new();
        if let Some(list) = c.from {
            for name in list {
                if let Some(id) = self.resolve_stream(file, name) {
                    if from.contains(&id) {
                        self.diags.push(Diagnostic::error(
                            Code::E210,
                            format!("stream `{}` is listed twice", name.node),
                            file,
                            name.span,
                            "listed already",
                        ));
                    } else {
                        from.push(id);
                    }
                }
            }
        }
        let explicit_from = c.from.is_some();
        let facts = self.collect_vars(file, pattern, &mut from, explicit_from, c.from);
        // Key fields per stream.
        let mut key: Vec<Vec<u16>> = Vec::new();
        let mut key_names: Vec<String> = Vec::new();
        let mut key_ty = None;
        if let Some(list) = c.key {
            for k in list {
                if key_names.contains(&k.node) {
                    self.diags.push(Diagnostic::error(
                        Code::E210,
                        format!("key field `{}` is listed twice", k.node),
                        file,
                        k.span,
                        "listed already",
                    ));
                    continue;
                }
                key_names.push(k.node.clone());
            }
            for &sid in &from {
                let s = &self.streams[sid.0 as usize];
                let mut idx = Vec::new();
                for (i, k) in list.iter().enumerate() {
                    if i >= key_names.len() || key_names[i] != k.node {
                        continue;
                    }
                    match s.field_index(&k.node) {
                        Some(f) => {
                            let ty = ty_of(s.fields[f].ty.base);
                            idx.push(f as u16);
                            if key_names.len() == 1 {
                                if let Some(prev) = key_ty
                                    && prev != ty
                                {
                                    self.diags.push(Diagnostic::error(
                                            Code::E214,
                                            format!("key field `{}` has different types across the rule's streams", k.node),
                                            file,
                                            k.span,
                                            format!("{} in stream `{}`", ty.as_str(), s.name),
                                        ).with_note("the key must have one type in every input stream"));
                                }
                                key_ty = Some(ty);
                            }
                        }
                        None => {
                            self.diags.push(
                                Diagnostic::error(
                                    Code::E214,
                                    format!(
                                        "key field `{}` is not a field of stream `{}`",
                                        k.node, s.name
                                    ),
                                    file,
                                    k.span,
                                    "missing from an input stream",
                                )
                                .with_secondary(
                                    s.origin.file,
                                    s.origin.span,
                                    format!("stream `{}` is declared here", s.name),
                                )
                                .with_suggestion(&k.node, s.field_names()),
                            );
                        }
                    }
                }
                key.push(idx);
            }
            if key_names.len() > 1 {
                key_ty = Some(Ty::Str);
            }
        } else if let Some(&sid) = from.first() {
            let s = &self.streams[sid.0 as usize];
            if !s.default_key.is_empty() {
                let names: Vec<&str> = s
                    .default_key
                    .iter()
                    .filter_map(|&i| s.fields.get(i))
                    .map(|f| f.name.as_str())
                    .collect();
                self.diags.push(
                    Diagnostic::warning(
                        Code::W003,
                        format!(
                            "rule `{}` has no key: all of stream `{}` is one sequence",
                            rule.name.node, s.name
                        ),
                        file,
                        rule.name.span,
                        "one global key",
                    )
                    .with_note(format!(
                        "the stream's profile keys it by `{}`: add `key {}` to match per device",
                        names.join(", "),
                        names.join(", ")
                    )),
                );
            }
            key = from.iter().map(|_| Vec::new()).collect();
        }
        if !facts.ok {
            return None;
        }
        let vars = facts.vars;
        // The pattern, with typed conditions.
        let mut bound = vec![false; vars.len()];
        let node = {
            let mut pc = PatternChecker {
                file,
                vars: &vars,
                streams: &self.streams,
                diags: &mut self.diags,
                key_ty,
                imports,
            };
            pc.pattern(pattern, &mut bound, false)
        };
        // Shape checks.
        let within = c.within.map(|d| {
            if d.node.millis <= 0 {
                self.diags.push(
                    Diagnostic::error(
                        Code::E309,
                        "`within` must be a positive duration",
                        file,
                        d.span,
                        "zero",
                    )
                    .with_note("a match needs time to happen: e.g. `within 5m`"),
                );
            }
            d.node.millis.saturating_mul(NANOS_PER_MILLI)
        });
        self.shape(file, rule, pattern, &node, &vars, within, c.on_timeout);
        let skip = match c.skip {
            None => Skip::None,
            Some(s) => match &s.node {
                ast::SkipStrategy::None => Skip::None,
                ast::SkipStrategy::ToNext => Skip::ToNext,
                ast::SkipStrategy::PastLast => Skip::PastLast,
                ast::SkipStrategy::ToFirst(v) | ast::SkipStrategy::ToLast(v) => {
                    match vars.iter().position(|x| x.name == v.node) {
                        Some(i) => {
                            if matches!(s.node, ast::SkipStrategy::ToFirst(_)) {
                                Skip::ToFirst(VarId(i as u16))
                            } else {
                                Skip::ToLast(VarId(i as u16))
                            }
                        }
                        None => {
                            self.diags.push(
                                Diagnostic::error(
                                    Code::E218,
                                    format!("skip strategy names unknown step `{}`", v.node),
                                    file,
                                    v.span,
                                    "no step has this name",
                                )
                                .with_suggestion(&v.node, vars.iter().map(|x| x.name.as_str())),
                            );
                            Skip::None
                        }
                    }
                }
            },
        };
        let all_bound = vec![true; vars.len()];
        let emit = match c.emit {
            Some(e) => self.emit(file, e, &rule.name.node, &vars, &all_bound, key_ty, imports),
            None => EmitDef {
                name: rule.name.node.clone(),
                severity: Severity::Warning,
                fields: Vec::new(),
            },
        };
        let on_timeout = c
            .on_timeout
            .map(|e| self.emit(file, e, &rule.name.node, &vars, &all_bound, key_ty, imports));
        let mut sinks = Vec::new();
        for s in c.to.into_iter().flatten() {
            if !self.sinks.contains(&s.node) {
                self.diags.push(
                    Diagnostic::error(
                        Code::E211,
                        format!("unknown sink `{}`", s.node),
                        file,
                        s.span,
                        "no sink has this name",
                    )
                    .with_suggestion(&s.node, self.sinks.iter().map(String::as_str))
                    .with_note(format!(
                        "sinks are defined in tern.toml; known here: {}",
                        self.sinks.join(", ")
                    )),
                );
            } else if sinks.contains(&s.node) {
                self.diags.push(Diagnostic::error(
                    Code::E210,
                    format!("sink `{}` is listed twice", s.node),
                    file,
                    s.span,
                    "listed already",
                ));
            } else {
                sinks.push(s.node.clone());
            }
        }
        if self.error_count() > errors_before {
            return None;
        }
        // A rule that calls user functions changes when their script does.
        let mut scripts: Vec<u64> = Vec::new();
        let mut note = |e: &TExpr| {
            if let TExprKind::User { func: Some(f), .. } = &e.kind {
                scripts.push(f.text_hash());
            }
        };
        node.visit_exprs(&mut note);
        for e in std::iter::once(&emit).chain(on_timeout.iter()) {
            e.fields.iter().for_each(|(_, x)| x.visit(&mut note));
        }
        scripts.sort_unstable();
        scripts.dedup();
        let fingerprint = fingerprint(
            rule,
            from.iter().map(|s| &self.streams[s.0 as usize]),
            &scripts,
        );
        Some(Rule {
            name: rule.name.node.clone(),
            streams: from,
            key,
            key_names,
            vars,
            pattern: node,
            within,
            skip,
            emit,
            on_timeout,
            sinks,
            origin: Origin {
                file,
                span: rule.name.span,
            },
            fingerprint,
        })
    }

    fn error_count(&self) -> usize {
        self.diags.iter().filter(|d| d.is_error()).count()
    }

    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        file: FileId,
        e: &ast::Emit,
        rule_name: &str,
        vars: &[Var],
        bound: &[bool],
        key_ty: Option<Ty>,
        imports: &[(u16, &ImportDef)],
    ) -> EmitDef {
        let severity = match &e.severity {
            None => Severity::Warning,
            Some(s) => Severity::from_word(&s.node).unwrap_or_else(|| {
                self.diags.push(
                    Diagnostic::error(
                        Code::E212,
                        format!("unknown severity `{}`", s.node),
                        file,
                        s.span,
                        "not a severity",
                    )
                    .with_suggestion(&s.node, ast::SEVERITIES.iter().copied())
                    .with_note("severities: info, warning, error, critical"),
                );
                Severity::Warning
            }),
        };
        let scope = Scope {
            file,
            context: Context::Emit,
            candidate: None,
            vars,
            streams: &self.streams,
            bound,
            current: None,
            key_ty,
            key_fields: &[],
            imports,
        };
        let mut typer = Typer {
            diags: &mut self.diags,
            accumulators: Vec::new(),
        };
        let mut fields: Vec<(String, TExpr)> = Vec::new();
        let mut spans: Vec<Span> = Vec::new();
        for f in &e.fields {
            let t = typer.expr(&f.value, &scope);
            if let Some(i) = fields.iter().position(|(n, _)| *n == f.name.node) {
                typer.diags.push(
                    Diagnostic::error(
                        Code::E210,
                        format!("alert field `{}` is set twice", f.name.node),
                        file,
                        f.name.span,
                        "second value",
                    )
                    .with_secondary(file, spans[i], "first value"),
                );
                continue;
            }
            spans.push(f.name.span);
            fields.push((f.name.node.clone(), t));
        }
        EmitDef {
            name: e
                .name
                .as_ref()
                .map_or_else(|| rule_name.to_string(), |n| n.node.clone()),
            severity,
            fields,
        }
    }

    /// Collects step variables, resolves their streams and checks step names are unique.
    fn collect_vars(
        &mut self,
        file: FileId,
        pattern: &ast::Pattern,
        from: &mut Vec<StreamId>,
        explicit_from: bool,
        from_list: Option<&Vec<ast::Ident>>,
    ) -> VarFacts {
        let mut facts = VarFacts {
            vars: Vec::new(),
            ok: true,
        };
        let mut walk = VarWalk {
            file,
            facts: &mut facts,
            checker: self,
            from,
            explicit_from,
            from_list,
        };
        walk.pattern(pattern, false, false);
        facts
    }

    #[allow(clippy::too_many_arguments)]
    fn shape(
        &mut self,
        file: FileId,
        rule: &ast::Rule,
        pattern: &ast::Pattern,
        node: &Node,
        vars: &[Var],
        within: Option<i64>,
        on_timeout: Option<&ast::Emit>,
    ) {
        let _ = vars;
        if !can_take_events(node) {
            self.diags.push(
                Diagnostic::error(
                    Code::E306,
                    format!(
                        "the pattern of rule `{}` can match without any event",
                        rule.name.node
                    ),
                    file,
                    pattern.span,
                    "every step here is optional",
                )
                .with_note("make at least one step mandatory, e.g. `+` instead of `*`"),
            );
        }
        // Absence: a trailing `not followed by` fires only when time passes a bound.
        if let Some((link, Some(ast::Atom::Negated(neg)))) = pattern
            .rest
            .last()
            .map(|(l, e)| (l, e.alternatives.first()))
            && link.contiguity != Contiguity::Strict
            && within.is_none()
        {
            self.diags.push(
                    Diagnostic::error(
                        Code::E302,
                        "a pattern ending in `not followed by` needs `within`",
                        file,
                        neg.span,
                        "absence of what, for how long?",
                    )
                    .with_note("add `within 30s` to the rule: the alert fires when 30 s pass without this event"),
                );
        }
        let has_step_bounds = pattern_has_step_bounds(node);
        if on_timeout.is_some()
            && within.is_none()
            && !has_step_bounds
            && let Some(e) = on_timeout
        {
            self.diags.push(
                    Diagnostic::error(
                        Code::E308,
                        "`on timeout` needs a time bound",
                        file,
                        e.span,
                        "a partial match never expires without one",
                    )
                    .with_note("add `within 10m` to the rule, or a bound between steps (`followed by within 1m`)"),
                );
        }
        if within.is_none()
            && let Some(span) = unbounded_state(pattern)
        {
            self.diags.push(
                    Diagnostic::error(
                        Code::E300,
                        format!("rule `{}` can hold partial matches forever", rule.name.node),
                        file,
                        span,
                        "this can wait or repeat without limit",
                    )
                    .with_note("add `within DURATION` to the rule so partial matches expire")
                    .with_note("without it, only strict contiguity (`next`, `consecutive`) with bounded quantifiers keeps state bounded"),
                );
        }
    }
}

fn can_take_events(node: &Node) -> bool {
    match node {
        Node::Step(s) => s.quant.is_none_or(|q| q.min > 0),
        Node::Seq(items) => items.iter().any(|i| match &i.item {
            SeqElem::Node(n) => can_take_events(n),
            SeqElem::Not(_) => false,
        }),
        Node::Alt(alts) => alts.iter().all(can_take_events),
        Node::Group { body, quant } => quant.min > 0 && can_take_events(body),
    }
}

fn pattern_has_step_bounds(node: &Node) -> bool {
    match node {
        Node::Step(_) => false,
        Node::Seq(items) => items.iter().any(|i| {
            i.within.is_some() || matches!(&i.item, SeqElem::Node(n) if pattern_has_step_bounds(n))
        }),
        Node::Alt(alts) => alts.iter().any(pattern_has_step_bounds),
        Node::Group { body, .. } => pattern_has_step_bounds(body),
    }
}

/// The span of something that lets state grow without bound when there is no `within`.
fn unbounded_state(p: &ast::Pattern) -> Option<Span> {
    fn quant(q: &ast::Quantifier) -> Option<Span> {
        let repeats = q.max.is_none_or(|m| m > 1);
        if q.max.is_none() || (repeats && q.inner != Some(Contiguity::Strict)) {
            Some(q.span)
        } else {
            None
        }
    }
    fn element(e: &ast::Element) -> Option<Span> {
        e.alternatives.iter().find_map(|a| match a {
            ast::Atom::Step(s) => s.quantifier.as_ref().and_then(quant),
            ast::Atom::Group(g) => g
                .quantifier
                .as_ref()
                .and_then(quant)
                .or_else(|| pattern(&g.pattern)),
            ast::Atom::Negated(_) => None,
        })
    }
    fn pattern(p: &ast::Pattern) -> Option<Span> {
        element(&p.first).or_else(|| {
            p.rest.iter().find_map(|(link, e)| {
                if link.contiguity != Contiguity::Strict && link.within.is_none() && !link.negated {
                    Some(link.span)
                } else {
                    element(e)
                }
            })
        })
    }
    pattern(p)
}

/// First pass over a pattern: variables and their streams.
struct VarWalk<'c, 'a, 'f> {
    file: FileId,
    facts: &'f mut VarFacts,
    checker: &'c mut Checker<'a>,
    from: &'f mut Vec<StreamId>,
    explicit_from: bool,
    from_list: Option<&'f Vec<ast::Ident>>,
}

impl VarWalk<'_, '_, '_> {
    fn pattern(&mut self, p: &ast::Pattern, in_loop: bool, optional: bool) {
        self.element(&p.first, in_loop, optional);
        for (_, e) in &p.rest {
            self.element(e, in_loop, optional);
        }
    }

    fn element(&mut self, e: &ast::Element, in_loop: bool, optional: bool) {
        let alt = e.alternatives.len() > 1;
        for a in &e.alternatives {
            match a {
                ast::Atom::Step(s) => self.step(s, in_loop, optional || alt),
                ast::Atom::Group(g) => {
                    let loops = g.quantifier.as_ref().is_some_and(|q| q.max != Some(1));
                    let opt = g.quantifier.as_ref().is_some_and(|q| q.min == 0);
                    self.pattern(&g.pattern, in_loop || loops, optional || alt || opt);
                }
                ast::Atom::Negated(n) => {
                    self.stream(&n.stream);
                }
            }
        }
    }

    fn stream(&mut self, name: &ast::Ident) -> Option<StreamId> {
        let id = self.checker.resolve_stream(self.file, name)?;
        if !self.from.contains(&id) {
            if self.explicit_from {
                let mut d = Diagnostic::error(
                    Code::E213,
                    format!("stream `{}` is not an input of this rule", name.node),
                    self.file,
                    name.span,
                    "not listed in `from`",
                )
                .with_note(format!("add it: `from ..., {}`", name.node));
                if let Some(list) = self.from_list
                    && let (Some(first), Some(last)) = (list.first(), list.last())
                {
                    d = d.with_secondary(self.file, first.span.to(last.span), "the rule's inputs");
                }
                self.checker.diags.push(d);
                self.facts.ok = false;
            } else {
                self.from.push(id);
            }
        }
        Some(id)
    }

    fn step(&mut self, s: &ast::Step, in_loop: bool, optional: bool) {
        let stream = self.stream(&s.stream);
        if let Some(prev) = self.facts.vars.iter().find(|v| v.name == s.name.node) {
            self.checker.diags.push(
                Diagnostic::error(
                    Code::E210,
                    format!("step `{}` is declared twice", s.name.node),
                    self.file,
                    s.name.span,
                    "second step with this name",
                )
                .with_secondary(prev.origin.file, prev.origin.span, "first declared here")
                .with_note("give each step its own name; a repeated step is written once with a quantifier like `{3}`"),
            );
            self.facts.ok = false;
            return;
        }
        if ast::RESERVED.contains(&s.name.node.as_str()) {
            self.facts.ok = false;
        }
        let Some(stream) = stream else {
            self.facts.ok = false;
            return;
        };
        let is_loop = in_loop || s.quantifier.as_ref().is_some_and(|q| q.max != Some(1));
        let optional = optional || s.quantifier.as_ref().is_some_and(|q| q.min == 0);
        self.facts.vars.push(Var {
            name: s.name.node.clone(),
            stream,
            is_loop,
            optional,
            origin: Origin {
                file: self.file,
                span: s.name.span,
            },
        });
    }
}

/// Second pass: typed conditions and the HIR pattern.
struct PatternChecker<'a, 'd> {
    file: FileId,
    vars: &'a [Var],
    streams: &'a [StreamSchema],
    diags: &'d mut Vec<Diagnostic>,
    key_ty: Option<Ty>,
    imports: &'a [(u16, &'a ImportDef)],
}

impl PatternChecker<'_, '_> {
    fn var_of(&self, name: &str) -> Option<VarId> {
        self.vars
            .iter()
            .position(|v| v.name == name)
            .map(|i| VarId(i as u16))
    }

    fn stream_of(&self, name: &str) -> Option<StreamId> {
        self.streams
            .iter()
            .position(|s| s.name == name)
            .map(|i| StreamId(i as u32))
    }

    fn pattern(&mut self, p: &ast::Pattern, bound: &mut Vec<bool>, in_group: bool) -> Node {
        let mut items = Vec::new();
        let first = self.element(&p.first, bound);
        items.push(SeqItem {
            contiguity: Contiguity::Relaxed,
            within: None,
            item: first,
        });
        for (i, (link, e)) in p.rest.iter().enumerate() {
            let within = link.within.as_ref().map(|d| {
                if d.node.millis <= 0 {
                    self.diags.push(Diagnostic::error(
                        Code::E309,
                        "a bound between steps must be a positive duration",
                        self.file,
                        d.span,
                        "zero",
                    ));
                }
                d.node.millis.saturating_mul(NANOS_PER_MILLI)
            });
            let elem = self.element(e, bound);
            if let SeqElem::Not(_) = elem
                && in_group
                && i + 1 == p.rest.len()
            {
                self.diags.push(
                        Diagnostic::error(
                            Code::E303,
                            "a group cannot end with a negation",
                            self.file,
                            e.span,
                            "nothing inside the group follows it",
                        )
                        .with_note("move the negation after the group, or put a step after it inside the group"),
                    );
            }
            items.push(SeqItem {
                contiguity: link.contiguity,
                within,
                item: elem,
            });
        }
        if let Some(SeqElem::Not(n)) = items.first().map(|i| &i.item) {
            self.diags.push(
                Diagnostic::error(
                    Code::E301,
                    "a pattern cannot start with a negation",
                    self.file,
                    n.origin.span,
                    "nothing before it to follow",
                )
                .with_note("put a step before it, e.g. `seen: s not followed by s where ...`"),
            );
        }
        if items.len() == 1
            && let Some(SeqItem {
                item: SeqElem::Node(n),
                ..
            }) = items.pop()
        {
            return n;
        }
        Node::Seq(items)
    }

    fn element(&mut self, e: &ast::Element, bound: &mut Vec<bool>) -> SeqElem {
        let before = bound.clone();
        let mut nodes = Vec::new();
        let mut after = bound.clone();
        for a in &e.alternatives {
            let mut b = before.clone();
            match a {
                ast::Atom::Negated(n) => {
                    if e.alternatives.len() > 1 {
                        self.diags.push(
                            Diagnostic::error(
                                Code::E303,
                                "a negation cannot be an alternative",
                                self.file,
                                n.span,
                                "inside `|`",
                            )
                            .with_note("negate each case in its own `not followed by`, or put the alternatives in one condition with `or`"),
                        );
                        continue;
                    }
                    let stream = self.stream_of(&n.stream.node);
                    let cond = match (stream, &n.condition) {
                        (Some(sid), Some(c)) => Some(self.condition(c, sid, &b, None)),
                        _ => None,
                    };
                    return SeqElem::Not(NegNode {
                        name: n.name.as_ref().map(|x| x.node.clone()),
                        stream: stream.unwrap_or(StreamId(0)),
                        cond,
                        origin: Origin {
                            file: self.file,
                            span: n.span,
                        },
                    });
                }
                ast::Atom::Step(s) => {
                    nodes.push(self.step(s, &mut b));
                }
                ast::Atom::Group(g) => {
                    let quant = g.quantifier.as_ref().map(|q| self.quant(q, false));
                    // Inside a repeated group, later iterations may read earlier steps of the
                    // group: they are loop variables, read through aggregates.
                    let body = self.pattern(&g.pattern, &mut b, true);
                    nodes.push(match quant {
                        Some(q) => Node::Group {
                            body: Box::new(body),
                            quant: q,
                        },
                        None => body,
                    });
                }
            }
            for (x, y) in after.iter_mut().zip(b.iter()) {
                *x |= *y;
            }
        }
        *bound = after;
        if nodes.len() == 1
            && let Some(n) = nodes.pop()
        {
            return SeqElem::Node(n);
        }
        SeqElem::Node(Node::Alt(nodes))
    }

    fn quant(&mut self, q: &ast::Quantifier, has_until: bool) -> Quant {
        let _ = has_until;
        if q.greedy && q.reluctant {
            self.diags.push(
                Diagnostic::error(
                    Code::E307,
                    "a quantifier cannot be both greedy and reluctant",
                    self.file,
                    q.span,
                    "`greedy` and a trailing `?`",
                )
                .with_note(
                    "keep `greedy` to take as many events as possible, or `?` to take as few",
                ),
            );
        }
        let big = q.min > MAX_REPEAT || q.max.is_some_and(|m| m > MAX_REPEAT);
        if big {
            self.diags.push(
                Diagnostic::error(
                    Code::E305,
                    format!("quantifier repeats more than {MAX_REPEAT} times"),
                    self.file,
                    q.span,
                    "too large",
                )
                .with_note(
                    "count many events with an aggregate stream (`aggregate ... window`) instead",
                ),
            );
        }
        if q.max == Some(0) {
            self.diags.push(
                Diagnostic::error(
                    Code::E112,
                    "a quantifier must allow at least one event",
                    self.file,
                    q.span,
                    "`{0}` takes nothing",
                )
                .with_note("remove the step instead"),
            );
        }
        Quant {
            min: q.min,
            max: q.max,
            mode: if q.greedy {
                LoopMode::Greedy
            } else if q.reluctant {
                LoopMode::Reluctant
            } else {
                LoopMode::All
            },
            inner: q.inner.unwrap_or(Contiguity::Relaxed),
        }
    }

    fn step(&mut self, s: &ast::Step, bound: &mut [bool]) -> Node {
        let var = self.var_of(&s.name.node).unwrap_or(VarId(0));
        let stream = self
            .vars
            .get(var.0 as usize)
            .map_or(StreamId(0), |v| v.stream);
        let cond = s
            .condition
            .as_ref()
            .map(|c| self.condition(c, stream, bound, Some(var)));
        let is_loop = s.quantifier.as_ref().is_some_and(|q| q.max != Some(1));
        let until = s.until.as_ref().map(|u| {
            if !is_loop {
                self.diags.push(
                    Diagnostic::error(
                        Code::E304,
                        format!("`until` on step `{}`, which is not a loop", s.name.node),
                        self.file,
                        u.span,
                        "only loops have an end condition",
                    )
                    .with_note(
                        "add a quantifier such as `+` or `{1,10}`, or fold this into `where`",
                    ),
                );
            }
            self.condition(u, stream, bound, Some(var))
        });
        let quant = s
            .quantifier
            .as_ref()
            .map(|q| self.quant(q, until.is_some()));
        if let Some(b) = bound.get_mut(var.0 as usize) {
            *b = true;
        }
        Node::Step(StepNode {
            var,
            stream,
            cond,
            until,
            quant,
        })
    }

    fn condition(
        &mut self,
        e: &ast::Expr,
        stream: StreamId,
        bound: &[bool],
        current: Option<VarId>,
    ) -> TExpr {
        let scope = Scope {
            file: self.file,
            context: Context::Condition,
            candidate: self.streams.get(stream.0 as usize),
            vars: self.vars,
            streams: self.streams,
            bound,
            current,
            key_ty: self.key_ty,
            key_fields: &[],
            imports: self.imports,
        };
        let mut typer = Typer {
            diags: self.diags,
            accumulators: Vec::new(),
        };
        typer.condition(e, &scope, "a condition")
    }
}

/// A stable 64-bit hash of a rule's meaning (its AST without spans, the schemas of its
/// streams and the text of the scripts whose functions it calls), to tell whether a reloaded
/// rule changed.
fn fingerprint<'s>(
    rule: &ast::Rule,
    streams: impl Iterator<Item = &'s StreamSchema>,
    scripts: &[u64],
) -> u64 {
    let streams: Vec<_> = streams.collect();
    // Rules without user functions keep the fingerprint they had before scripts counted,
    // so their durable state survives the upgrade.
    if scripts.is_empty() {
        stable_hash(&(rule, streams))
    } else {
        stable_hash(&(rule, streams, scripts))
    }
}

/// FNV-1a over a value's JSON without source positions (`span`, `origin`): the same for the
/// same meaning whichever file, and wherever in it, the value was written.
pub fn stable_hash<T: serde::Serialize>(value: &T) -> u64 {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("span");
                m.remove("origin");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut json = serde_json::to_value(value).unwrap_or_default();
    strip(&mut json);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in json.to_string().bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
