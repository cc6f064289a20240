//! The checked program: every name resolved to an index, every expression typed.
//!
//! This is what the NFA compiler and the engine read. Nothing here refers back to source text
//! except through `Origin`s kept for traces and diagnostics.

use std::sync::Arc;

use serde::Serialize;

use super::schema::{Origin, StreamSchema};
use crate::event::Value;
use crate::lang::ast::Contiguity;

/// Index of a stream in [`Program::streams`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct StreamId(pub u32);

/// Index of a step variable in [`Rule::vars`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub struct VarId(pub u16);

/// Every stream, aggregate and rule of a loaded rule set.
#[derive(Clone, Debug, Serialize)]
pub struct Program {
    /// Streams from device profiles, then `stream` declarations, then aggregates.
    pub streams: Vec<StreamSchema>,
    /// Aggregate streams, each producing the stream `output`.
    pub aggregates: Vec<Aggregate>,
    /// Rules, in file order then source order.
    pub rules: Vec<Arc<Rule>>,
    /// rhai scripts imported by rule files.
    pub imports: Vec<ImportDef>,
}

impl Program {
    /// Streams whose events come from outside (device profiles, `stream` declarations) and
    /// that some rule or aggregate reads; aggregate outputs are derived, never input.
    pub fn input_streams(&self) -> Vec<StreamId> {
        let mut used: Vec<StreamId> = self
            .rules
            .iter()
            .flat_map(|r| r.streams.iter().copied())
            .chain(self.aggregates.iter().map(|a| a.source))
            .filter(|s| !self.aggregates.iter().any(|a| a.output == *s))
            .collect();
        used.sort();
        used.dedup();
        used
    }

    /// The input stream of events that do not name theirs: the only one, if there is one.
    pub fn sole_input(&self) -> Option<StreamId> {
        match self.input_streams().as_slice() {
            [one] => Some(*one),
            _ => None,
        }
    }

    /// The stream with this id.
    pub fn stream(&self, id: StreamId) -> &StreamSchema {
        &self.streams[id.0 as usize]
    }

    /// A stream's id by name.
    pub fn stream_id(&self, name: &str) -> Option<StreamId> {
        self.streams
            .iter()
            .position(|s| s.name == name)
            .map(|i| StreamId(i as u32))
    }

    /// A rule by name.
    pub fn rule(&self, name: &str) -> Option<&Arc<Rule>> {
        self.rules.iter().find(|r| r.name == name)
    }

    /// Every user function some rule calls, with how often it failed so far.
    pub fn script_errors(&self) -> Vec<super::script::ScriptErrors> {
        let mut seen: Vec<&Arc<super::script::Script>> = Vec::new();
        let mut out = Vec::new();
        for s in self.imports.iter().filter_map(|i| i.script.as_ref()) {
            if !seen.iter().any(|x| Arc::ptr_eq(x, s)) {
                seen.push(s);
                out.extend(s.error_counts());
            }
        }
        out
    }
}

/// An imported rhai script.
#[derive(Clone, Debug, Serialize)]
pub struct ImportDef {
    /// Path as resolved against the importing file.
    pub path: std::path::PathBuf,
    /// Module alias; `None` puts its functions in the global namespace of that file.
    pub alias: Option<String>,
    /// Where the import was written.
    pub origin: Origin,
    /// The compiled script; `None` when it could not be read or compiled (reported), or
    /// when the rule file has no path to resolve it against.
    #[serde(skip)]
    pub script: Option<Arc<super::script::Script>>,
}

/// A window aggregate per key.
#[derive(Clone, Debug, Serialize)]
pub struct Aggregate {
    /// Name of the derived stream.
    pub name: String,
    /// The stream aggregated.
    pub source: StreamId,
    /// The stream produced (its schema: key fields, window_start, window_end, selected).
    pub output: StreamId,
    /// Key fields, as indices into the source schema.
    pub key: Vec<u16>,
    /// Window length, nanoseconds.
    pub size: i64,
    /// Distance between window starts, nanoseconds (= size for tumbling windows).
    pub every: i64,
    /// Accumulators each window keeps.
    pub accumulators: Vec<Accumulator>,
    /// Output fields after the key and window bounds, computed from the accumulators.
    pub select: Vec<(String, TExpr)>,
    /// Where it was declared.
    pub origin: Origin,
}

/// One running aggregate of a window.
#[derive(Clone, Debug, Serialize)]
pub struct Accumulator {
    /// The function.
    pub func: AggFunc,
    /// Its argument over the source event; `None` for `count()`.
    pub arg: Option<TExpr>,
}

/// A checked rule.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// Rule name.
    pub name: String,
    /// Input streams.
    pub streams: Vec<StreamId>,
    /// Key fields per input stream (same order as `streams`), as field indices; empty = global.
    pub key: Vec<Vec<u16>>,
    /// Names of the key fields.
    pub key_names: Vec<String>,
    /// Step variables, in pattern order.
    pub vars: Vec<Var>,
    /// The pattern.
    pub pattern: Node,
    /// Whole-match bound, nanoseconds.
    pub within: Option<i64>,
    /// After-match skip strategy.
    pub skip: Skip,
    /// What a completed match emits.
    pub emit: EmitDef,
    /// What an expired partial match emits, if anything.
    pub on_timeout: Option<EmitDef>,
    /// Sinks the alerts go to; empty = every sink.
    pub sinks: Vec<String>,
    /// Where the rule was written.
    pub origin: Origin,
    /// Hash of the rule's source text (without comments and spacing), to tell a changed rule.
    pub fingerprint: u64,
}

/// A step variable.
#[derive(Clone, Debug, Serialize)]
pub struct Var {
    /// Name as written.
    pub name: String,
    /// The stream of its events.
    pub stream: StreamId,
    /// True when the variable can bind several events (a quantified step, or any step inside
    /// a quantified group).
    pub is_loop: bool,
    /// True for steps that may take no event (optional, `*`, inside an alternative).
    pub optional: bool,
    /// Where it was declared.
    pub origin: Origin,
}

/// A pattern node.
#[derive(Clone, Debug, Serialize)]
pub enum Node {
    /// A step.
    Step(StepNode),
    /// A sequence; the first item's link is ignored.
    Seq(Vec<SeqItem>),
    /// Alternatives.
    Alt(Vec<Node>),
    /// A quantified group.
    Group {
        /// The repeated sub-pattern.
        body: Box<Node>,
        /// How often.
        quant: Quant,
    },
}

/// One element of a sequence with the link that joins it to the previous one.
#[derive(Clone, Debug, Serialize)]
pub struct SeqItem {
    /// Contiguity with the previous element.
    pub contiguity: Contiguity,
    /// Bound between the previous matched event and this element's first event, nanoseconds.
    pub within: Option<i64>,
    /// The element.
    pub item: SeqElem,
}

/// A positive element or a negation.
#[derive(Clone, Debug, Serialize)]
pub enum SeqElem {
    /// Something that takes events.
    Node(Node),
    /// `not next` (contiguity strict) or `not followed by` (relaxed).
    Not(NegNode),
}

/// An event that must not occur.
#[derive(Clone, Debug, Serialize)]
pub struct NegNode {
    /// Name for traces, if written.
    pub name: Option<String>,
    /// The stream.
    pub stream: StreamId,
    /// The condition; `None` = any event of the stream.
    pub cond: Option<TExpr>,
    /// Where it was written.
    pub origin: Origin,
}

/// A step: takes events of one stream that satisfy a condition.
#[derive(Clone, Debug, Serialize)]
pub struct StepNode {
    /// The variable its events bind to.
    pub var: VarId,
    /// The stream.
    pub stream: StreamId,
    /// Condition; `None` = every event.
    pub cond: Option<TExpr>,
    /// Loop end condition.
    pub until: Option<TExpr>,
    /// Quantifier; `None` = exactly one event.
    pub quant: Option<Quant>,
}

/// A checked quantifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Quant {
    /// Minimum repetitions.
    pub min: u32,
    /// Maximum; `None` = unbounded.
    pub max: Option<u32>,
    /// Which repetitions win when several are possible.
    pub mode: LoopMode,
    /// Contiguity between the loop's takes.
    pub inner: Contiguity,
}

/// How a loop chooses between taking more and moving on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LoopMode {
    /// FlinkCEP's default: every alternative is kept; every prefix is its own match.
    All,
    /// Prefer taking: when the loop can take the event, the following step does not.
    Greedy,
    /// Prefer leaving: when the following step can take the event, the loop does not.
    Reluctant,
}

/// After-match skip strategy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Skip {
    /// Keep every partial match.
    None,
    /// Drop partial matches that started with the match's first event.
    ToNext,
    /// Drop partial matches that started at or before the match's last event.
    PastLast,
    /// Keep partial matches starting at the first event of this variable in the match.
    ToFirst(VarId),
    /// Keep partial matches starting at the last event of this variable in the match.
    ToLast(VarId),
}

/// Alert severity.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// For information.
    Info,
    /// Look at it.
    Warning,
    /// Something failed.
    Error,
    /// Act now.
    Critical,
}

impl Severity {
    /// Parses a severity word.
    pub fn from_word(word: &str) -> Option<Severity> {
        match word {
            "info" => Some(Severity::Info),
            "warning" => Some(Severity::Warning),
            "error" => Some(Severity::Error),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    /// The word.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }
}

/// A checked emit clause.
#[derive(Clone, Debug, Serialize)]
pub struct EmitDef {
    /// Alert name.
    pub name: String,
    /// Severity.
    pub severity: Severity,
    /// Output fields in order.
    pub fields: Vec<(String, TExpr)>,
}

/// Value types of expressions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Ty {
    /// `bool`
    Bool,
    /// `int`
    Int,
    /// `float`
    Float,
    /// `string`
    Str,
    /// `timestamp`
    Timestamp,
    /// `duration`
    Duration,
    /// The `null` literal: fits every type.
    Null,
    /// Result of a user (rhai) function: checked at run time.
    Any,
}

impl Ty {
    /// The type's name in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Ty::Bool => "bool",
            Ty::Int => "int",
            Ty::Float => "float",
            Ty::Str => "string",
            Ty::Timestamp => "timestamp",
            Ty::Duration => "duration",
            Ty::Null => "null",
            Ty::Any => "any",
        }
    }

    /// True for int and float.
    pub fn is_numeric(self) -> bool {
        matches!(self, Ty::Int | Ty::Float)
    }
}

/// A typed expression.
#[derive(Clone, Debug, Serialize)]
pub struct TExpr {
    /// What it computes.
    pub kind: TExprKind,
    /// Its type.
    pub ty: Ty,
}

impl TExpr {
    /// Calls `f` on this expression and on every expression inside it, outermost first.
    pub fn visit<'a>(&'a self, f: &mut dyn FnMut(&'a TExpr)) {
        f(self);
        match &self.kind {
            TExprKind::Not(x) | TExprKind::Neg(x) => x.visit(f),
            TExprKind::IsNull { operand, .. } => operand.visit(f),
            TExprKind::Binary { lhs, rhs, .. } => {
                lhs.visit(f);
                rhs.visit(f);
            }
            TExprKind::Call { args, .. } | TExprKind::User { args, .. } => {
                args.iter().for_each(|a| a.visit(f));
            }
            TExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                cond.visit(f);
                then.visit(f);
                otherwise.visit(f);
            }
            _ => {}
        }
    }
}

impl Node {
    /// Calls `f` on every expression of the pattern (conditions, `until`s, negations) and
    /// every expression inside them.
    pub fn visit_exprs<'a>(&'a self, f: &mut dyn FnMut(&'a TExpr)) {
        match self {
            Node::Step(s) => {
                for e in s.cond.iter().chain(s.until.iter()) {
                    e.visit(f);
                }
            }
            Node::Seq(items) => {
                for it in items {
                    match &it.item {
                        SeqElem::Node(n) => n.visit_exprs(f),
                        SeqElem::Not(n) => n.cond.iter().for_each(|e| e.visit(f)),
                    }
                }
            }
            Node::Alt(nodes) => nodes.iter().for_each(|n| n.visit_exprs(f)),
            Node::Group { body, .. } => body.visit_exprs(f),
        }
    }
}

/// Typed expression forms; every name is an index.
#[derive(Clone, Debug, Serialize)]
pub enum TExprKind {
    /// A constant.
    Const(Value),
    /// A field of the candidate event (in a condition) or of the window's event (in an
    /// aggregate's argument).
    Field(u16),
    /// A field of the single event bound to a step variable.
    VarField {
        /// The variable.
        var: VarId,
        /// Field index in the variable's stream.
        field: u16,
    },
    /// An aggregate over a loop variable's events so far.
    VarAgg {
        /// The function.
        func: AggFunc,
        /// The loop variable.
        var: VarId,
        /// Field; `None` for `count(v)`.
        field: Option<u16>,
        /// For `prev(v.f, n)`: n (1 = the last event taken).
        nth: u32,
    },
    /// An accumulator of an aggregate stream's window (in `select`).
    Accumulated(u16),
    /// The match's key.
    Key,
    /// A key field of the aggregate's window (in `select`), by position in the key.
    KeyField(u16),
    /// `not`
    Not(Box<TExpr>),
    /// Unary minus.
    Neg(Box<TExpr>),
    /// Infix operator.
    Binary {
        /// The operator.
        op: crate::lang::ast::BinaryOp,
        /// Left.
        lhs: Box<TExpr>,
        /// Right.
        rhs: Box<TExpr>,
    },
    /// `x == null` / `x != null`.
    IsNull {
        /// True for `!=`.
        negated: bool,
        /// The value tested.
        operand: Box<TExpr>,
    },
    /// A built-in function.
    Call {
        /// Which one.
        func: Builtin,
        /// Arguments.
        args: Vec<TExpr>,
    },
    /// A rhai function.
    User {
        /// Index into [`Program::imports`].
        import: u16,
        /// Function name.
        name: String,
        /// Arguments.
        args: Vec<TExpr>,
        /// The function to call; `None` when its script is not loaded (the call gives null).
        #[serde(skip)]
        func: Option<Arc<super::script::UserFn>>,
    },
    /// `if c then a else b`
    If {
        /// Condition.
        cond: Box<TExpr>,
        /// When true.
        then: Box<TExpr>,
        /// Otherwise.
        otherwise: Box<TExpr>,
    },
}

/// Aggregate functions (over a loop's events, or over a window).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum AggFunc {
    /// Number of events (or of non-null values).
    Count,
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// Value of the first event.
    First,
    /// Value of the last event.
    Last,
    /// Value of the n-th event from the last.
    Prev,
}

impl AggFunc {
    /// Parses an aggregate function name.
    pub fn from_name(name: &str) -> Option<AggFunc> {
        Some(match name {
            "count" => AggFunc::Count,
            "sum" => AggFunc::Sum,
            "avg" => AggFunc::Avg,
            "min" => AggFunc::Min,
            "max" => AggFunc::Max,
            "first" => AggFunc::First,
            "last" => AggFunc::Last,
            "prev" => AggFunc::Prev,
            _ => return None,
        })
    }
}

/// Built-in scalar functions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Builtin {
    /// `len(s)`: characters in a string.
    Len,
    /// `lower(s)`
    Lower,
    /// `upper(s)`
    Upper,
    /// `contains(s, part)`
    Contains,
    /// `starts_with(s, prefix)`
    StartsWith,
    /// `ends_with(s, suffix)`
    EndsWith,
    /// `abs(x)`
    Abs,
    /// `round(x)`
    Round,
    /// `floor(x)`
    Floor,
    /// `ceil(x)`
    Ceil,
    /// `sqrt(x)`
    Sqrt,
    /// `min(a, b)`
    Min2,
    /// `max(a, b)`
    Max2,
    /// `float(x)`
    ToFloat,
    /// `int(x)`
    ToInt,
    /// `string(x)`
    ToString,
    /// `hour(ts)`: 0-23, UTC.
    Hour,
    /// `minute(ts)`: 0-59.
    Minute,
    /// `weekday(ts)`: 1 = Monday .. 7 = Sunday.
    Weekday,
    /// `seconds(d)`: a duration in seconds, as a float.
    Seconds,
}
