//! Expression resolution and typing: AST expressions to [`TExpr`]s.
//!
//! A bad expression yields a diagnostic and a `Ty::Any` placeholder, so one mistake does not
//! cascade into a dozen follow-on errors.

use crate::event::Value;
use crate::lang::ast::{BinaryOp, Expr, ExprKind, Literal, UnaryOp};
use crate::lang::codes::Code;
use crate::lang::diagnostic::{Diagnostic, FileId};
use crate::lang::span::Span;

use super::hir::{Accumulator, AggFunc, Builtin, ImportDef, TExpr, TExprKind, Ty, Var, VarId};
use super::schema::StreamSchema;

const NANOS_PER_MILLI: i64 = 1_000_000;

/// Where an expression is written, which decides what its names mean.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Context {
    /// A step's `where`/`until`: bare names are fields of the candidate event.
    Condition,
    /// An `emit` block: only steps and `key`.
    Emit,
    /// An aggregate's `select`, outside an aggregate call: key fields only.
    Select,
    /// An aggregate call's argument inside `select`: fields of the source event.
    WindowArg,
}

/// Names visible to an expression.
pub struct Scope<'a> {
    /// The file, for diagnostics.
    pub file: FileId,
    /// What kind of expression this is.
    pub context: Context,
    /// The stream whose fields bare names read (candidate event or window source).
    pub candidate: Option<&'a StreamSchema>,
    /// Every step variable of the rule.
    pub vars: &'a [Var],
    /// Streams by id, to find a variable's fields.
    pub streams: &'a [StreamSchema],
    /// `bound[v]`: variable v has matched events when this expression runs.
    pub bound: &'a [bool],
    /// The step whose condition this is: its own name is usable in aggregates only.
    pub current: Option<VarId>,
    /// Type of `key`, when a key exists.
    pub key_ty: Option<Ty>,
    /// Key field names (for `Select`), in key order.
    pub key_fields: &'a [String],
    /// Imported rhai scripts of this file with their aliases.
    pub imports: &'a [(u16, &'a ImportDef)],
}

/// Types expressions, collecting diagnostics and (in `select`) accumulators.
pub struct Typer<'d> {
    /// Diagnostics found.
    pub diags: &'d mut Vec<Diagnostic>,
    /// Accumulators an aggregate's select needs (filled in `Select` context).
    pub accumulators: Vec<Accumulator>,
}

const BUILTINS: &[(&str, Builtin, usize)] = &[
    ("len", Builtin::Len, 1),
    ("lower", Builtin::Lower, 1),
    ("upper", Builtin::Upper, 1),
    ("contains", Builtin::Contains, 2),
    ("starts_with", Builtin::StartsWith, 2),
    ("ends_with", Builtin::EndsWith, 2),
    ("abs", Builtin::Abs, 1),
    ("round", Builtin::Round, 1),
    ("floor", Builtin::Floor, 1),
    ("ceil", Builtin::Ceil, 1),
    ("sqrt", Builtin::Sqrt, 1),
    ("float", Builtin::ToFloat, 1),
    ("int", Builtin::ToInt, 1),
    ("string", Builtin::ToString, 1),
    ("hour", Builtin::Hour, 1),
    ("minute", Builtin::Minute, 1),
    ("weekday", Builtin::Weekday, 1),
    ("seconds", Builtin::Seconds, 1),
];

const AGGREGATES: &[&str] = &["count", "sum", "avg", "min", "max", "first", "last", "prev"];

/// Every function name a rule may call without an import.
pub fn function_names() -> impl Iterator<Item = &'static str> {
    BUILTINS
        .iter()
        .map(|(n, _, _)| *n)
        .chain(AGGREGATES.iter().copied())
}

fn any() -> TExpr {
    TExpr {
        kind: TExprKind::Const(Value::Null),
        ty: Ty::Any,
    }
}

fn texpr(kind: TExprKind, ty: Ty) -> TExpr {
    TExpr { kind, ty }
}

impl Typer<'_> {
    fn error(&mut self, d: Diagnostic) -> TExpr {
        self.diags.push(d);
        any()
    }

    /// Types an expression that must be a bool (a condition).
    pub fn condition(&mut self, e: &Expr, scope: &Scope<'_>, what: &str) -> TExpr {
        let t = self.expr(e, scope);
        if !matches!(t.ty, Ty::Bool | Ty::Any) {
            self.diags.push(
                Diagnostic::error(
                    Code::E205,
                    format!("{what} must be a bool, found {}", t.ty.as_str()),
                    scope.file,
                    e.span,
                    format!("this is {}", a(t.ty)),
                )
                .with_note("compare it with something, e.g. `speed < 20`"),
            );
        }
        t
    }

    /// Types any expression.
    pub fn expr(&mut self, e: &Expr, scope: &Scope<'_>) -> TExpr {
        match &e.kind {
            ExprKind::Literal(lit) => literal(lit),
            ExprKind::Paren(inner) => self.expr(inner, scope),
            ExprKind::Key => self.key(e.span, scope),
            ExprKind::Name(name) => self.name(name, e.span, scope),
            ExprKind::Field { base, field } => self.field(base, field, e.span, scope),
            ExprKind::Call {
                module,
                function,
                args,
            } => self.call(module.as_ref(), function, args, e.span, scope),
            ExprKind::Unary { op, operand } => {
                let t = self.expr(operand, scope);
                match op {
                    UnaryOp::Not => {
                        if !matches!(t.ty, Ty::Bool | Ty::Any | Ty::Null) {
                            return self.error(Diagnostic::error(
                                Code::E204,
                                format!("`not` needs a bool, found {}", t.ty.as_str()),
                                scope.file,
                                operand.span,
                                format!("this is {}", a(t.ty)),
                            ));
                        }
                        texpr(TExprKind::Not(Box::new(t)), Ty::Bool)
                    }
                    UnaryOp::Neg => {
                        if !matches!(
                            t.ty,
                            Ty::Int | Ty::Float | Ty::Duration | Ty::Any | Ty::Null
                        ) {
                            return self.error(Diagnostic::error(
                                Code::E204,
                                format!("cannot negate a {}", t.ty.as_str()),
                                scope.file,
                                operand.span,
                                format!("this is {}", a(t.ty)),
                            ));
                        }
                        let ty = t.ty;
                        texpr(TExprKind::Neg(Box::new(t)), ty)
                    }
                }
            }
            ExprKind::Binary { op, lhs, rhs } => self.binary(*op, lhs, rhs, e.span, scope),
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                let c = self.condition(cond, scope, "the condition of `if`");
                let t = self.expr(then, scope);
                let o = self.expr(otherwise, scope);
                let Some(ty) = unify(t.ty, o.ty) else {
                    return self.error(
                        Diagnostic::error(
                            Code::E204,
                            format!(
                                "the branches of `if` differ: {} and {}",
                                t.ty.as_str(),
                                o.ty.as_str()
                            ),
                            scope.file,
                            otherwise.span,
                            format!("this is {}", a(o.ty)),
                        )
                        .with_secondary(scope.file, then.span, format!("this is {}", a(t.ty)))
                        .with_note("both branches must have the same type"),
                    );
                };
                texpr(
                    TExprKind::If {
                        cond: Box::new(c),
                        then: Box::new(t),
                        otherwise: Box::new(o),
                    },
                    ty,
                )
            }
        }
    }

    fn key(&mut self, span: Span, scope: &Scope<'_>) -> TExpr {
        match scope.context {
            Context::Select | Context::WindowArg => self.error(
                Diagnostic::error(
                    Code::E219,
                    "`key` is not available in an aggregate's select",
                    scope.file,
                    span,
                    "no match key here",
                )
                .with_note("the key fields are output fields already; name one directly"),
            ),
            _ => match scope.key_ty {
                Some(ty) => texpr(TExprKind::Key, ty),
                // A rule without a key has one global key, the empty string.
                None => texpr(TExprKind::Key, Ty::Str),
            },
        }
    }

    fn name(&mut self, name: &str, span: Span, scope: &Scope<'_>) -> TExpr {
        if scope.context == Context::Select {
            if let Some(i) = scope.key_fields.iter().position(|k| k == name) {
                let ty = scope
                    .candidate
                    .and_then(|s| s.field_index(name).map(|f| s.fields[f].ty.base))
                    .map_or(Ty::Any, ty_of);
                return texpr(TExprKind::KeyField(i as u16), ty);
            }
            let is_field = scope
                .candidate
                .is_some_and(|s| s.field_index(name).is_some());
            let mut d = Diagnostic::error(
                Code::E221,
                format!("`{name}` is read outside an aggregate function"),
                scope.file,
                span,
                "a window holds many events: which one's value?",
            );
            d = if is_field {
                d.with_note(format!(
                    "wrap it in an aggregate, e.g. `last({name})` or `avg({name})`, or add it to `key`"
                ))
            } else {
                d.with_suggestion(name, scope.key_fields.iter().map(String::as_str))
            };
            return self.error(d);
        }
        if let Some(stream) = scope.candidate
            && let Some(i) = stream.field_index(name)
        {
            return texpr(TExprKind::Field(i as u16), ty_of(stream.fields[i].ty.base));
        }
        if let Some(v) = find_var(scope.vars, name) {
            let var = &scope.vars[v.0 as usize];
            let example = scope.streams[var.stream.0 as usize]
                .fields
                .first()
                .map_or("field", |f| f.name.as_str())
                .to_string();
            let hint = if var.is_loop {
                format!(
                    "`{name}` is a loop: use an aggregate such as `last({name}.{example})` or `count({name})`"
                )
            } else {
                format!("read one of its fields, e.g. `{name}.{example}`")
            };
            return self.error(
                Diagnostic::error(
                    Code::E204,
                    format!("step `{name}` used as a value"),
                    scope.file,
                    span,
                    "this names a step, not a value",
                )
                .with_secondary(
                    var.origin.file,
                    var.origin.span,
                    "the step is declared here",
                )
                .with_note(hint),
            );
        }
        match scope.candidate {
            Some(stream) if scope.context != Context::Emit => {
                let candidates = stream
                    .field_names()
                    .chain(scope.vars.iter().map(|v| v.name.as_str()));
                self.error(
                    Diagnostic::error(
                        Code::E201,
                        format!("unknown field `{name}` in stream `{}`", stream.name),
                        scope.file,
                        span,
                        "no such field",
                    )
                    .with_secondary(
                        stream.origin.file,
                        stream.origin.span,
                        format!("stream `{}` is declared here", stream.name),
                    )
                    .with_suggestion(name, candidates),
                )
            }
            _ => {
                let first = scope.vars.first().map_or("first", |v| v.name.as_str());
                self.error(
                    Diagnostic::error(
                        Code::E219,
                        format!("`{name}` is read outside a condition"),
                        scope.file,
                        span,
                        "there is no current event here",
                    )
                    .with_note(format!(
                        "name the step whose event you mean, e.g. `{first}.{name}`"
                    )),
                )
            }
        }
    }

    fn var_ref(&mut self, base: &Expr, scope: &Scope<'_>) -> Option<VarId> {
        let ExprKind::Name(name) = &base.kind else {
            self.diags.push(
                Diagnostic::error(
                    Code::E204,
                    "only steps have fields",
                    scope.file,
                    base.span,
                    "this is not a step name",
                )
                .with_note("write `step.field`, e.g. `first.speed`"),
            );
            return None;
        };
        let Some(v) = find_var(scope.vars, name) else {
            let mut d = Diagnostic::error(
                Code::E202,
                format!("unknown step `{name}`"),
                scope.file,
                base.span,
                "no step has this name",
            )
            .with_suggestion(name, scope.vars.iter().map(|v| v.name.as_str()));
            if scope
                .candidate
                .is_some_and(|s| s.field_index(name).is_some())
            {
                d = d.with_note(format!(
                    "`{name}` is a field of the current event: write it without a step name"
                ));
            }
            self.diags.push(d);
            return None;
        };
        let var = &scope.vars[v.0 as usize];
        let bound = scope.bound.get(v.0 as usize).copied().unwrap_or(false);
        if !bound && scope.current != Some(v) {
            self.diags.push(
                Diagnostic::error(
                    Code::E206,
                    format!("step `{name}` is read before it has matched"),
                    scope.file,
                    base.span,
                    "not bound yet at this point of the pattern",
                )
                .with_secondary(var.origin.file, var.origin.span, "it matches later, here")
                .with_note("a condition can read only the steps before it in the pattern"),
            );
            return None;
        }
        Some(v)
    }

    fn field(
        &mut self,
        base: &Expr,
        field: &crate::lang::ast::Ident,
        span: Span,
        scope: &Scope<'_>,
    ) -> TExpr {
        if matches!(scope.context, Context::Select | Context::WindowArg) {
            return self.error(
                Diagnostic::error(
                    Code::E221,
                    "an aggregate's select reads fields by name",
                    scope.file,
                    span,
                    "there are no steps here",
                )
                .with_note(format!("write `{}` alone", field.node)),
            );
        }
        let Some(v) = self.var_ref(base, scope) else {
            return any();
        };
        let var = &scope.vars[v.0 as usize];
        let stream = &scope.streams[var.stream.0 as usize];
        let Some(f) = stream.field_index(&field.node) else {
            return self.error(
                Diagnostic::error(
                    Code::E201,
                    format!("unknown field `{}` in stream `{}`", field.node, stream.name),
                    scope.file,
                    field.span,
                    "no such field",
                )
                .with_secondary(
                    var.origin.file,
                    var.origin.span,
                    format!("`{}` reads stream `{}`", var.name, stream.name),
                )
                .with_suggestion(&field.node, stream.field_names()),
            );
        };
        if scope.current == Some(v) {
            return self.error(
                Diagnostic::error(
                    Code::E206,
                    format!("step `{}` reads its own event through its name", var.name),
                    scope.file,
                    span,
                    "the candidate event is not part of the match yet",
                )
                .with_note(format!(
                    "write `{}` alone for the current event's field{}",
                    field.node,
                    if var.is_loop {
                        format!(
                            ", or `last({}.{})` for the last event taken",
                            var.name, field.node
                        )
                    } else {
                        String::new()
                    }
                )),
            );
        }
        if var.is_loop {
            return self.error(
                Diagnostic::error(
                    Code::E208,
                    format!("`{}` is a loop and holds several events", var.name),
                    scope.file,
                    span,
                    "which event's field?",
                )
                .with_secondary(var.origin.file, var.origin.span, "the loop is declared here")
                .with_note(format!(
                    "use an aggregate: `last({0}.{1})`, `first({0}.{1})`, `avg({0}.{1})`, `min`, `max`, `sum`, `count({0})`",
                    var.name, field.node
                )),
            );
        }
        texpr(
            TExprKind::VarField {
                var: v,
                field: f as u16,
            },
            ty_of(stream.fields[f].ty.base),
        )
    }

    fn call(
        &mut self,
        module: Option<&crate::lang::ast::Ident>,
        function: &crate::lang::ast::Ident,
        args: &[Expr],
        span: Span,
        scope: &Scope<'_>,
    ) -> TExpr {
        let name = function.node.as_str();
        if let Some(module) = module {
            let Some((idx, imp)) = scope
                .imports
                .iter()
                .find(|(_, imp)| imp.alias.as_deref() == Some(module.node.as_str()))
            else {
                return self.error(
                    Diagnostic::error(
                        Code::E220,
                        format!("unknown module `{}`", module.node),
                        scope.file,
                        module.span,
                        "no import has this name",
                    )
                    .with_suggestion(
                        &module.node,
                        scope.imports.iter().filter_map(|(_, i)| i.alias.as_deref()),
                    )
                    .with_note(format!(
                        "import a rhai script first: `import \"{}.rhai\" as {}`",
                        module.node, module.node
                    )),
                );
            };
            let shown = format!("{}::{name}", module.node);
            return self.user_call(*idx, imp, &shown, function, args, span, scope);
        }
        let is_aggregate = AggFunc::from_name(name).is_some()
            && !(matches!(name, "min" | "max") && args.len() == 2);
        if is_aggregate {
            return self.aggregate(name, args, span, scope);
        }
        if let Some((_, builtin, arity)) = BUILTINS.iter().find(|(n, _, _)| *n == name) {
            if args.len() != *arity {
                return self.error(arity_error(name, *arity, args.len(), scope.file, span));
            }
            let targs: Vec<TExpr> = args.iter().map(|a| self.expr(a, scope)).collect();
            return self.builtin(*builtin, name, targs, args, scope);
        }
        if matches!(name, "min" | "max") {
            // Reached only with two arguments: the scalar forms.
            let targs: Vec<TExpr> = args.iter().map(|a| self.expr(a, scope)).collect();
            let b = if name == "min" {
                Builtin::Min2
            } else {
                Builtin::Max2
            };
            return self.builtin(b, name, targs, args, scope);
        }
        // Unaliased imports put their functions in the file's namespace (after the built-ins).
        let unaliased = || scope.imports.iter().filter(|(_, i)| i.alias.is_none());
        let defining = unaliased().find(|(_, i)| {
            i.script
                .as_ref()
                .is_some_and(|s| !s.arities(name).is_empty() || s.is_private(name))
        });
        if let Some((idx, imp)) = defining {
            return self.user_call(*idx, imp, name, function, args, span, scope);
        }
        // A script that could not be loaded is reported already; its calls stay unchecked.
        if let Some((idx, imp)) = unaliased().find(|(_, i)| i.script.is_none()) {
            return self.user_call(*idx, imp, name, function, args, span, scope);
        }
        let mut candidates: Vec<&str> = function_names().collect();
        for (_, imp) in unaliased() {
            if let Some(s) = &imp.script {
                candidates.extend(s.public_names());
            }
        }
        let in_module = scope.imports.iter().find_map(|(_, i)| {
            let alias = i.alias.as_deref()?;
            let script = i.script.as_ref()?;
            (!script.arities(name).is_empty()).then_some(alias)
        });
        let (label, note) = match in_module {
            Some(m) => (
                "no built-in function has this name",
                Some(format!("`{m}` defines `{name}`: call it `{m}::{name}(...)`")),
            ),
            None if unaliased().next().is_some() => {
                ("neither a built-in nor in an imported script", None)
            }
            None => (
                "no built-in function has this name",
                Some("user functions come from rhai scripts: `import \"lib.rhai\" as lib`, then `lib::name(...)`".to_string()),
            ),
        };
        let d = Diagnostic::error(
            Code::E203,
            format!("unknown function `{name}`"),
            scope.file,
            function.span,
            label,
        )
        .with_suggestion(name, candidates);
        self.error(match note {
            Some(n) => d.with_note(n),
            None => d,
        })
    }

    /// A call of a rhai function of the import `idx`: the name and arity are checked against
    /// the script (when it is loaded), and the arguments must have a rhai type.
    #[allow(clippy::too_many_arguments)]
    fn user_call(
        &mut self,
        idx: u16,
        imp: &ImportDef,
        shown: &str,
        function: &crate::lang::ast::Ident,
        args: &[Expr],
        span: Span,
        scope: &Scope<'_>,
    ) -> TExpr {
        let name = function.node.as_str();
        let mut ok = true;
        let mut targs = Vec::with_capacity(args.len());
        for arg in args {
            let t = self.expr(arg, scope);
            if matches!(t.ty, Ty::Timestamp | Ty::Duration) {
                ok = false;
                self.diags.push(
                    Diagnostic::error(
                        Code::E204,
                        format!("`{shown}` cannot take a {}", t.ty.as_str()),
                        scope.file,
                        arg.span,
                        format!("this is {}", a(t.ty)),
                    )
                    .with_note("user functions take bool, int, float and string values: pass `seconds(d)`, `hour(t)` or `string(t)`"),
                );
            }
            targs.push(t);
        }
        let mut func = None;
        if let Some(script) = &imp.script {
            let arities = script.arities(name);
            if arities.is_empty() {
                let d = if script.is_private(name) {
                    Diagnostic::error(
                        Code::E224,
                        format!("`{shown}` is private to its script"),
                        scope.file,
                        function.span,
                        format!("`{name}` is a `private fn` in {}", script.name),
                    )
                    .with_note("remove `private` to call it from rules")
                } else {
                    let defined = script.public_names();
                    let d = Diagnostic::error(
                        Code::E224,
                        format!("unknown function `{shown}`"),
                        scope.file,
                        function.span,
                        format!("{} defines no function `{name}`", script.name),
                    )
                    .with_suggestion(name, defined.iter().copied());
                    if defined.is_empty() {
                        d.with_note(format!("{} defines no functions", script.name))
                    } else {
                        d.with_note(format!("{} defines: {}", script.name, defined.join(", ")))
                    }
                };
                return self.error(d);
            }
            if !arities.contains(&args.len()) {
                let d = match arities.as_slice() {
                    [one] => arity_error(shown, *one, args.len(), scope.file, span),
                    many => {
                        let list: Vec<String> = many.iter().map(ToString::to_string).collect();
                        Diagnostic::error(
                            Code::E209,
                            format!(
                                "`{shown}` takes {} arguments, found {}",
                                list.join(" or "),
                                args.len()
                            ),
                            scope.file,
                            span,
                            format!(
                                "{} argument{} here",
                                args.len(),
                                if args.len() == 1 { "" } else { "s" }
                            ),
                        )
                    }
                };
                return self.error(d.with_note(format!("`{name}` is defined in {}", script.name)));
            }
            func = Some(script.handle(name, args.len()));
        }
        if !ok {
            return any();
        }
        texpr(
            TExprKind::User {
                import: idx,
                name: name.to_string(),
                args: targs,
                func,
            },
            Ty::Any,
        )
    }

    fn builtin(
        &mut self,
        b: Builtin,
        name: &str,
        targs: Vec<TExpr>,
        args: &[Expr],
        scope: &Scope<'_>,
    ) -> TExpr {
        use Builtin::*;
        let want = |ok: &dyn Fn(Ty) -> bool, i: usize, expected: &str, this: &mut Self| -> bool {
            let t = targs[i].ty;
            if ok(t) || matches!(t, Ty::Any | Ty::Null) {
                return true;
            }
            this.diags.push(Diagnostic::error(
                Code::E204,
                format!("`{name}` expects {expected}, found {}", t.as_str()),
                scope.file,
                args[i].span,
                format!("this is {}", a(t)),
            ));
            false
        };
        let numeric = |t: Ty| t.is_numeric();
        let string = |t: Ty| t == Ty::Str;
        let ts = |t: Ty| t == Ty::Timestamp;
        let ok = match b {
            Len | Lower | Upper => want(&string, 0, "a string", self),
            Contains | StartsWith | EndsWith => {
                want(&string, 0, "a string", self) & want(&string, 1, "a string", self)
            }
            Abs | Round | Floor | Ceil | Sqrt => want(&numeric, 0, "a number", self),
            Min2 | Max2 => {
                let a = targs[0].ty;
                let b2 = targs[1].ty;
                if unify(a, b2).is_none()
                    || !matches!(
                        unify(a, b2),
                        Some(
                            Ty::Int | Ty::Float | Ty::Duration | Ty::Timestamp | Ty::Any | Ty::Null
                        )
                    )
                {
                    self.diags.push(Diagnostic::error(
                        Code::E204,
                        format!("`{name}` needs two numbers (or two durations or timestamps), found {} and {}", a.as_str(), b2.as_str()),
                        scope.file,
                        args[0].span.to(args[1].span),
                        "these arguments",
                    ));
                    false
                } else {
                    true
                }
            }
            ToFloat | ToInt => want(
                &|t: Ty| matches!(t, Ty::Int | Ty::Float | Ty::Bool | Ty::Str),
                0,
                "a number, bool or string",
                self,
            ),
            ToString => true,
            Hour | Minute | Weekday => want(&ts, 0, "a timestamp", self),
            Seconds => want(&|t: Ty| t == Ty::Duration, 0, "a duration", self),
        };
        if !ok {
            return any();
        }
        let ty = match b {
            Len | Hour | Minute | Weekday | ToInt => Ty::Int,
            Lower | Upper | ToString => Ty::Str,
            Contains | StartsWith | EndsWith => Ty::Bool,
            Abs => match targs[0].ty {
                Ty::Int => Ty::Int,
                _ => Ty::Float,
            },
            Round | Floor | Ceil => Ty::Int,
            Sqrt | ToFloat | Seconds => Ty::Float,
            Min2 | Max2 => unify(targs[0].ty, targs[1].ty).unwrap_or(Ty::Any),
        };
        texpr(
            TExprKind::Call {
                func: b,
                args: targs,
            },
            ty,
        )
    }

    fn aggregate(&mut self, name: &str, args: &[Expr], span: Span, scope: &Scope<'_>) -> TExpr {
        let Some(func) = AggFunc::from_name(name) else {
            return any();
        };
        match scope.context {
            Context::Select => return self.window_aggregate(func, name, args, span, scope),
            Context::WindowArg => {
                return self.error(Diagnostic::error(
                    Code::E221,
                    "aggregates cannot be nested",
                    scope.file,
                    span,
                    "an aggregate inside another one",
                ));
            }
            _ => {}
        }
        let (min_args, max_args) = match func {
            AggFunc::Prev => (1, 2),
            _ => (1, 1),
        };
        if args.len() < min_args || args.len() > max_args {
            return self.error(arity_error(name, min_args, args.len(), scope.file, span));
        }
        // count(v) counts events; the other aggregates read one field: f(v.field).
        let (var_expr, field) = match (&args[0].kind, func) {
            (ExprKind::Name(_), AggFunc::Count) => (&args[0], None),
            (ExprKind::Field { base, field }, _) => (base.as_ref(), Some(field)),
            _ => {
                let example = scope
                    .vars
                    .iter()
                    .find(|v| v.is_loop)
                    .map_or("slow", |v| v.name.as_str());
                return self.error(
                    Diagnostic::error(
                        Code::E222,
                        format!("`{name}` aggregates a loop step's field"),
                        scope.file,
                        args[0].span,
                        "expected `step.field`",
                    )
                    .with_note(format!(
                        "e.g. `{name}({example}.speed)`{}",
                        if func == AggFunc::Count {
                            format!(" or `count({example})`")
                        } else {
                            String::new()
                        }
                    )),
                );
            }
        };
        let Some(v) = self.var_ref(var_expr, scope) else {
            return any();
        };
        let var = &scope.vars[v.0 as usize];
        if !var.is_loop {
            return self.error(
                Diagnostic::error(
                    Code::E207,
                    format!("`{name}` over step `{}`, which takes one event", var.name),
                    scope.file,
                    span,
                    "not a loop",
                )
                .with_secondary(
                    var.origin.file,
                    var.origin.span,
                    "this step has no quantifier",
                )
                .with_note(match field {
                    Some(f) => format!("read the field directly: `{}.{}`", var.name, f.node),
                    None => format!(
                        "give `{}` a quantifier such as `{{3}}` or `+` to aggregate over it",
                        var.name
                    ),
                }),
            );
        }
        let stream = &scope.streams[var.stream.0 as usize];
        let (field_idx, field_ty) = match field {
            None => (None, Ty::Int),
            Some(f) => match stream.field_index(&f.node) {
                Some(i) => (Some(i as u16), ty_of(stream.fields[i].ty.base)),
                None => {
                    return self.error(
                        Diagnostic::error(
                            Code::E201,
                            format!("unknown field `{}` in stream `{}`", f.node, stream.name),
                            scope.file,
                            f.span,
                            "no such field",
                        )
                        .with_suggestion(&f.node, stream.field_names()),
                    );
                }
            },
        };
        let ty = match func {
            AggFunc::Count => Ty::Int,
            AggFunc::Avg => {
                if !field_ty.is_numeric() && field_ty != Ty::Duration {
                    return self.error(Diagnostic::error(
                        Code::E204,
                        format!(
                            "`avg` needs numbers, but this field is a {}",
                            field_ty.as_str()
                        ),
                        scope.file,
                        args[0].span,
                        a(field_ty),
                    ));
                }
                if field_ty == Ty::Duration {
                    Ty::Duration
                } else {
                    Ty::Float
                }
            }
            AggFunc::Sum => {
                if !field_ty.is_numeric() && field_ty != Ty::Duration {
                    return self.error(Diagnostic::error(
                        Code::E204,
                        format!(
                            "`sum` needs numbers, but this field is a {}",
                            field_ty.as_str()
                        ),
                        scope.file,
                        args[0].span,
                        a(field_ty),
                    ));
                }
                field_ty
            }
            AggFunc::Min | AggFunc::Max => {
                if field_ty == Ty::Bool {
                    return self.error(Diagnostic::error(
                        Code::E204,
                        format!("`{name}` cannot order bools"),
                        scope.file,
                        args[0].span,
                        "a bool",
                    ));
                }
                field_ty
            }
            AggFunc::First | AggFunc::Last | AggFunc::Prev => field_ty,
        };
        let nth = if func == AggFunc::Prev && args.len() == 2 {
            match &args[1].kind {
                ExprKind::Literal(Literal::Int(n)) if *n >= 1 && *n <= u32::MAX as i64 => *n as u32,
                _ => {
                    return self.error(
                        Diagnostic::error(
                            Code::E222,
                            "`prev` takes a positive whole number as its second argument",
                            scope.file,
                            args[1].span,
                            "expected 1, 2, 3...",
                        )
                        .with_note(
                            "`prev(v.f, 1)` is the last event taken, `prev(v.f, 2)` the one before",
                        ),
                    );
                }
            }
        } else {
            1
        };
        texpr(
            TExprKind::VarAgg {
                func,
                var: v,
                field: field_idx,
                nth,
            },
            ty,
        )
    }

    fn window_aggregate(
        &mut self,
        func: AggFunc,
        name: &str,
        args: &[Expr],
        span: Span,
        scope: &Scope<'_>,
    ) -> TExpr {
        if func == AggFunc::Prev {
            return self.error(
                Diagnostic::error(
                    Code::E221,
                    "`prev` is not a window aggregate",
                    scope.file,
                    span,
                    "not available in select",
                )
                .with_note("window aggregates: count sum avg min max first last"),
            );
        }
        let arg = match (func, args.len()) {
            (AggFunc::Count, 0) => None,
            (_, 1) => {
                let inner = Scope {
                    context: Context::WindowArg,
                    ..*scope
                };
                Some(self.expr(&args[0], &inner))
            }
            (AggFunc::Count, n) => return self.error(arity_error(name, 1, n, scope.file, span)),
            (_, n) => return self.error(arity_error(name, 1, n, scope.file, span)),
        };
        let arg_ty = arg.as_ref().map_or(Ty::Int, |a| a.ty);
        let ty = match func {
            AggFunc::Count => Ty::Int,
            AggFunc::Avg if arg_ty == Ty::Duration => Ty::Duration,
            AggFunc::Avg => {
                if !arg_ty.is_numeric() && arg_ty != Ty::Any {
                    return self.error(
                        Diagnostic::error(
                            Code::E204,
                            format!("`avg` needs numbers, found {}", arg_ty.as_str()),
                            scope.file,
                            span,
                            "not a number",
                        )
                        .with_note("to average a bool, convert it: `avg(float(pass))`"),
                    );
                }
                Ty::Float
            }
            AggFunc::Sum => {
                if !arg_ty.is_numeric() && !matches!(arg_ty, Ty::Duration | Ty::Any) {
                    return self.error(Diagnostic::error(
                        Code::E204,
                        format!("`sum` needs numbers, found {}", arg_ty.as_str()),
                        scope.file,
                        span,
                        "not a number",
                    ));
                }
                arg_ty
            }
            _ => arg_ty,
        };
        let slot = self.accumulators.len() as u16;
        self.accumulators.push(Accumulator { func, arg });
        texpr(TExprKind::Accumulated(slot), ty)
    }

    fn binary(
        &mut self,
        op: BinaryOp,
        lhs: &Expr,
        rhs: &Expr,
        span: Span,
        scope: &Scope<'_>,
    ) -> TExpr {
        let l = self.expr(lhs, scope);
        let r = self.expr(rhs, scope);
        // `x == null` and `x != null` test for null; every other comparison with null is false.
        if matches!(op, BinaryOp::Eq | BinaryOp::Ne) && (l.ty == Ty::Null || r.ty == Ty::Null) {
            let operand = if l.ty == Ty::Null { r } else { l };
            return texpr(
                TExprKind::IsNull {
                    negated: op == BinaryOp::Ne,
                    operand: Box::new(operand),
                },
                Ty::Bool,
            );
        }
        let ty = match binary_type(op, l.ty, r.ty) {
            Some(ty) => ty,
            None => {
                let what = match op {
                    BinaryOp::And | BinaryOp::Or => format!(
                        "`{}` needs bools, found {} and {}",
                        op.as_str(),
                        l.ty.as_str(),
                        r.ty.as_str()
                    ),
                    _ if op.is_comparison() => {
                        format!("cannot compare {} with {}", l.ty.as_str(), r.ty.as_str())
                    }
                    BinaryOp::Coalesce => format!(
                        "`??` needs the same type on both sides, found {} and {}",
                        l.ty.as_str(),
                        r.ty.as_str()
                    ),
                    _ => format!(
                        "cannot apply `{}` to {} and {}",
                        op.as_str(),
                        l.ty.as_str(),
                        r.ty.as_str()
                    ),
                };
                let mut d = Diagnostic::error(
                    Code::E204,
                    what,
                    scope.file,
                    rhs.span,
                    format!("this is {}", a(r.ty)),
                )
                .with_secondary(
                    scope.file,
                    lhs.span,
                    format!("this is {}", a(l.ty)),
                );
                if (l.ty == Ty::Str) != (r.ty == Ty::Str)
                    && (l.ty.is_numeric() || r.ty.is_numeric())
                {
                    d = d.with_note("convert one side: `float(x)` turns a string into a number, `string(x)` the other way");
                } else if (l.ty == Ty::Timestamp && r.ty.is_numeric())
                    || (r.ty == Ty::Timestamp && l.ty.is_numeric())
                {
                    d = d.with_note("add or subtract a duration such as `5m` to a timestamp");
                } else if (l.ty == Ty::Duration && r.ty.is_numeric())
                    || (r.ty == Ty::Duration && l.ty.is_numeric()) && op.is_comparison()
                {
                    d = d.with_note(
                        "write the number as a duration, e.g. `30s`, or convert with `seconds(d)`",
                    );
                }
                let _ = span;
                return self.error(d);
            }
        };
        texpr(
            TExprKind::Binary {
                op,
                lhs: Box::new(l),
                rhs: Box::new(r),
            },
            ty,
        )
    }
}

/// A type with its article, for labels: "a string", "an int".
fn a(t: Ty) -> String {
    match t {
        Ty::Int | Ty::Any => format!("an {}", t.as_str()),
        Ty::Null => "null".to_string(),
        _ => format!("a {}", t.as_str()),
    }
}

fn arity_error(name: &str, want: usize, got: usize, file: FileId, span: Span) -> Diagnostic {
    Diagnostic::error(
        Code::E209,
        format!(
            "`{name}` takes {want} argument{}, found {got}",
            if want == 1 { "" } else { "s" }
        ),
        file,
        span,
        format!("{got} argument{} here", if got == 1 { "" } else { "s" }),
    )
}

fn find_var(vars: &[Var], name: &str) -> Option<VarId> {
    vars.iter()
        .position(|v| v.name == name)
        .map(|i| VarId(i as u16))
}

/// The expression type of a declared field type.
pub fn ty_of(t: crate::lang::ast::TypeName) -> Ty {
    use crate::lang::ast::TypeName;
    match t {
        TypeName::Bool => Ty::Bool,
        TypeName::Int => Ty::Int,
        TypeName::Float => Ty::Float,
        TypeName::String => Ty::Str,
        TypeName::Timestamp => Ty::Timestamp,
        TypeName::Duration => Ty::Duration,
    }
}

fn literal(lit: &Literal) -> TExpr {
    let (v, ty) = match lit {
        Literal::Bool(b) => (Value::Bool(*b), Ty::Bool),
        Literal::Int(i) => (Value::Int(*i), Ty::Int),
        Literal::Float(f) => (Value::Float(*f), Ty::Float),
        Literal::String(s) => (Value::Str(s.as_str().into()), Ty::Str),
        Literal::Duration(d) => (
            Value::Duration(d.millis.saturating_mul(NANOS_PER_MILLI)),
            Ty::Duration,
        ),
        Literal::Timestamp(ns) => (Value::Timestamp(*ns), Ty::Timestamp),
        Literal::Null => (Value::Null, Ty::Null),
    };
    texpr(TExprKind::Const(v), ty)
}

/// The common type of two branches or operands, if any.
pub fn unify(a: Ty, b: Ty) -> Option<Ty> {
    match (a, b) {
        _ if a == b => Some(a),
        (Ty::Any, _) | (_, Ty::Any) => Some(Ty::Any),
        (Ty::Null, t) | (t, Ty::Null) => Some(t),
        (Ty::Int, Ty::Float) | (Ty::Float, Ty::Int) => Some(Ty::Float),
        _ => None,
    }
}

/// The result type of a binary operator, or `None` when the operands do not fit it.
pub fn binary_type(op: BinaryOp, l: Ty, r: Ty) -> Option<Ty> {
    use BinaryOp::*;
    use Ty::*;
    if l == Any || r == Any {
        return Some(match op {
            Or | And | Eq | Ne | Lt | Le | Gt | Ge => Bool,
            _ => Any,
        });
    }
    match op {
        Or | And => matches!((l, r), (Bool | Null, Bool | Null)).then_some(Bool),
        Eq | Ne => unify(l, r).map(|_| Bool),
        Lt | Le | Gt | Ge => match unify(l, r) {
            Some(Int | Float | Str | Timestamp | Duration | Null) => Some(Bool),
            _ => None,
        },
        Coalesce => unify(l, r),
        Add => match (l, r) {
            (Int, Int) => Some(Int),
            (Int | Float, Int | Float) => Some(Float),
            (Timestamp, Duration) | (Duration, Timestamp) => Some(Timestamp),
            (Duration, Duration) => Some(Duration),
            (Str, Str) => Some(Str),
            (Null, t) | (t, Null) => Some(t),
            _ => None,
        },
        Sub => match (l, r) {
            (Int, Int) => Some(Int),
            (Int | Float, Int | Float) => Some(Float),
            (Timestamp, Duration) => Some(Timestamp),
            (Timestamp, Timestamp) => Some(Duration),
            (Duration, Duration) => Some(Duration),
            (Null, t) | (t, Null) => Some(t),
            _ => None,
        },
        Mul => match (l, r) {
            (Int, Int) => Some(Int),
            (Int | Float, Int | Float) => Some(Float),
            (Duration, Int | Float) | (Int | Float, Duration) => Some(Duration),
            (Null, t) | (t, Null) => Some(t),
            _ => None,
        },
        // Division is always exact: 7 / 2 is 3.5, as a rule author expects.
        Div => match (l, r) {
            (Int | Float, Int | Float) => Some(Float),
            (Duration, Int | Float) => Some(Duration),
            (Duration, Duration) => Some(Float),
            (Null, t) | (t, Null) => Some(t),
            _ => None,
        },
        Rem => match (l, r) {
            (Int, Int) => Some(Int),
            (Int | Float, Int | Float) => Some(Float),
            (Null, t) | (t, Null) => Some(t),
            _ => None,
        },
    }
}
