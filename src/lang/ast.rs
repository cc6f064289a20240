//! The abstract syntax tree: a faithful, printable picture of a rule file.
//!
//! No semantics live here: names are unresolved strings and types are unchecked. Every node
//! carries the byte span it was parsed from, so later stages can point at it. Shorthands
//! (`->` for `followed by`) are normalised away, which is why printing an AST gives the
//! canonical spelling of the same file (see `print.rs`).

use serde::Serialize;

use super::span::{Span, Spanned};

/// A name as written: an identifier with its span.
pub type Ident = Spanned<String>;

/// A whole rule file.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct File {
    /// Top-level items in source order.
    pub items: Vec<Item>,
    /// Comments and blank lines, for the printer (`tern fmt`). Not part of the file's
    /// meaning: left out of serialisation, so rule fingerprints and AST snapshots ignore them.
    #[serde(skip)]
    pub trivia: Trivia,
}

/// What the parser skips but a formatter keeps: comments and blank lines. The printer
/// attaches each comment to the item, clause, step or field next to it by position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trivia {
    /// Every comment, in source order.
    pub comments: Vec<Comment>,
    /// Byte offset of the start of every blank line outside comments, in order.
    pub blank_lines: Vec<u32>,
}

/// A `//` or `/* */` comment.
#[derive(Clone, Debug, PartialEq)]
pub struct Comment {
    /// The comment as written, delimiters included (a line comment without its line break
    /// or trailing spaces).
    pub text: String,
    /// Where it is.
    pub span: Span,
    /// True when only spaces precede it on its line; otherwise it trails code.
    pub own_line: bool,
}

impl Comment {
    /// True for `//` comments, which end their line.
    pub fn is_line(&self) -> bool {
        self.text.starts_with("//")
    }
}

/// One top-level declaration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Item {
    /// `import "path.rhai" as name`
    Import(Import),
    /// `stream name { ... }`
    Stream(StreamDecl),
    /// `aggregate name from stream { ... }`
    Aggregate(AggregateDecl),
    /// `rule name { ... }`
    Rule(Rule),
}

/// `import "lib/speed.rhai" as speed`: user functions written in rhai.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Import {
    /// The script path, relative to the rule file.
    pub path: Spanned<String>,
    /// The module name calls use (`speed::kmh(x)`); without it, functions are called bare.
    pub alias: Option<Ident>,
    /// The whole item.
    pub span: Span,
}

/// A declared stream of typed events.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamDecl {
    /// Stream name, used by `from` and by steps.
    pub name: Ident,
    /// Fields in declaration order.
    pub fields: Vec<FieldDecl>,
    /// `time ts`: the event-time field.
    pub time: Option<Ident>,
    /// `lateness 5s`: allowed out-of-orderness.
    pub lateness: Option<Spanned<Duration>>,
    /// `idle 1m`: after this long without events, time advances from the wall clock.
    pub idle: Option<Spanned<Duration>>,
    /// The whole item.
    pub span: Span,
}

/// `name: type` inside a stream declaration.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldDecl {
    /// Field name.
    pub name: Ident,
    /// Declared type.
    pub ty: Spanned<TypeName>,
    /// `?` after the type: the field may be null or missing.
    pub nullable: bool,
    /// The whole declaration.
    pub span: Span,
}

/// A type as written in a declaration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum TypeName {
    /// `bool`
    Bool,
    /// `int` (64-bit signed)
    Int,
    /// `float` (64-bit)
    Float,
    /// `string`
    String,
    /// `timestamp` (UTC, nanosecond precision)
    Timestamp,
    /// `duration`
    Duration,
}

impl TypeName {
    /// The keyword that spells this type.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeName::Bool => "bool",
            TypeName::Int => "int",
            TypeName::Float => "float",
            TypeName::String => "string",
            TypeName::Timestamp => "timestamp",
            TypeName::Duration => "duration",
        }
    }

    /// Every type keyword, for "did you mean" hints.
    pub const ALL: [TypeName; 6] = [
        TypeName::Bool,
        TypeName::Int,
        TypeName::Float,
        TypeName::String,
        TypeName::Timestamp,
        TypeName::Duration,
    ];
}

/// A window aggregate per key over another stream; declares a new stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AggregateDecl {
    /// Name of the derived stream.
    pub name: Ident,
    /// The stream aggregated.
    pub source: Ident,
    /// Key fields of the source; one window per key.
    pub key: Vec<Ident>,
    /// Window shape.
    pub window: Option<Spanned<Window>>,
    /// `select { name: expr, ... }`: the derived fields.
    pub select: Vec<EmitField>,
    /// The whole item.
    pub span: Span,
}

/// Window shape of an aggregate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Window {
    /// `tumbling 15m`: back-to-back windows of the given size.
    Tumbling(Spanned<Duration>),
    /// `sliding 15m every 5m`: windows of `size` starting every `every`.
    Sliding {
        /// Window length.
        size: Spanned<Duration>,
        /// Distance between window starts.
        every: Spanned<Duration>,
    },
}

/// A rule: a pattern over keyed streams and what to emit when it matches.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rule {
    /// Rule name; unique across all loaded rule files.
    pub name: Ident,
    /// Every clause, in source order (a checker reports missing and duplicate ones).
    pub clauses: Vec<Clause>,
    /// The whole item.
    pub span: Span,
}

/// One clause of a rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Clause {
    /// What the clause says.
    pub kind: ClauseKind,
    /// The whole clause, keyword included.
    pub span: Span,
}

/// The clauses a rule may hold.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ClauseKind {
    /// `from a, b`
    From(Vec<Ident>),
    /// `key camera_id`
    Key(Vec<Ident>),
    /// `match ...`
    Match(Pattern),
    /// `within 5m`
    Within(Spanned<Duration>),
    /// `skip past last`
    Skip(Spanned<SkipStrategy>),
    /// `emit name severity s { ... }`
    Emit(Emit),
    /// `on timeout emit ...`
    OnTimeout(Emit),
    /// `to ops, mqtt_alerts`
    To(Vec<Ident>),
}

/// What happens to other partial matches after a match (FlinkCEP's after-match skip).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum SkipStrategy {
    /// `skip none`: keep every partial match.
    None,
    /// `skip to next`: drop partial matches that started with the match's first event.
    ToNext,
    /// `skip past last`: drop partial matches that started at or before the match's last event.
    PastLast,
    /// `skip to first step`
    ToFirst(Ident),
    /// `skip to last step`
    ToLast(Ident),
}

/// `emit [name] [severity s] { field: expr, ... }`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Emit {
    /// Alert name; the rule's name when absent.
    pub name: Option<Ident>,
    /// Severity word as written (checked later against the known levels).
    pub severity: Option<Ident>,
    /// The alert's fields.
    pub fields: Vec<EmitField>,
    /// From `emit` (or `on`) to the closing brace.
    pub span: Span,
}

/// `name: expr` in an emit or select block.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EmitField {
    /// Output field name.
    pub name: Ident,
    /// Its value.
    pub value: Expr,
}

/// A sequence of elements joined by links: `a next b followed by c`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pattern {
    /// The first element.
    pub first: Element,
    /// Each later element with the link that joins it to the one before.
    pub rest: Vec<(Link, Element)>,
    /// The whole pattern.
    pub span: Span,
}

/// How an element joins the one before it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    /// Strict, relaxed or non-deterministic relaxed.
    pub contiguity: Contiguity,
    /// True for `not next` / `not followed by`: the following element must be a `Negated`.
    pub negated: bool,
    /// `followed by within 30s`: bound between the previous matched event and this step.
    pub within: Option<Spanned<Duration>>,
    /// The operator's words.
    pub span: Span,
}

/// The three contiguity modes (product.md section 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum Contiguity {
    /// `next` / `consecutive`: the very next event of the key.
    Strict,
    /// `followed by` (default inside loops): skip non-matching events, take the first match.
    Relaxed,
    /// `followed by any` / `any`: branch on every matching event.
    NonDeterministic,
}

/// Alternatives: `a | b | (c next d)`. One alternative is just an atom.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Element {
    /// At least one.
    pub alternatives: Vec<Atom>,
    /// The whole element.
    pub span: Span,
}

/// One alternative of an element.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Atom {
    /// `name: stream{q} where c until u`
    Step(Step),
    /// `( pattern ){q}`
    Group(Group),
    /// The target of `not next` / `not followed by`: `[name:] stream [where c]`.
    Negated(NegatedStep),
}

/// A named step: events of a stream that satisfy a condition.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Step {
    /// The variable bound to the step's events.
    pub name: Ident,
    /// The stream its events come from.
    pub stream: Ident,
    /// `{2}`, `+`, ...; absent for a single event.
    pub quantifier: Option<Quantifier>,
    /// `where expr`
    pub condition: Option<Expr>,
    /// `until expr`: an event satisfying it ends the loop (and is not taken).
    pub until: Option<Expr>,
    /// The whole step.
    pub span: Span,
}

/// A parenthesised sub-pattern with an optional quantifier.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    /// The sub-pattern.
    pub pattern: Box<Pattern>,
    /// Its quantifier.
    pub quantifier: Option<Quantifier>,
    /// Parentheses and quantifier included.
    pub span: Span,
}

/// An event that must not occur.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NegatedStep {
    /// Optional name, for traces and diagnostics only: a negated step binds nothing.
    pub name: Option<Ident>,
    /// The stream.
    pub stream: Ident,
    /// The condition; absent means any event of the stream.
    pub condition: Option<Expr>,
    /// The whole step.
    pub span: Span,
}

/// How often a step or group repeats, and how the repetitions are chosen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Quantifier {
    /// Minimum repetitions.
    pub min: u32,
    /// Maximum repetitions; `None` is unbounded.
    pub max: Option<u32>,
    /// The spelling, kept so that `?` and `{0,1}` print as written.
    pub form: QuantifierForm,
    /// Trailing `?`: prefer fewer repetitions.
    pub reluctant: bool,
    /// `greedy`: prefer more repetitions.
    pub greedy: bool,
    /// `consecutive` / `any` between the takes of the loop; relaxed when absent.
    pub inner: Option<Contiguity>,
    /// The whole quantifier with its modifiers.
    pub span: Span,
}

/// The spelling of a quantifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum QuantifierForm {
    /// `{n}`, `{n,}`, `{n,m}`
    Braces,
    /// `+`
    Plus,
    /// `*`
    Star,
    /// `?`
    Optional,
}

/// A duration in milliseconds, as written (`1h30m` keeps its value, not its spelling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct Duration {
    /// Length in milliseconds.
    pub millis: i64,
}

/// An expression with its span.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Expr {
    /// What it is.
    pub kind: ExprKind,
    /// Where it is.
    pub span: Span,
}

/// Expression forms.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum ExprKind {
    /// A literal value.
    Literal(Literal),
    /// The match's key.
    Key,
    /// A bare name: a field of the candidate event, or a step variable.
    Name(String),
    /// `base.field`
    Field {
        /// The value whose field is read (usually a step name).
        base: Box<Expr>,
        /// The field.
        field: Ident,
    },
    /// `name(args)` or `module::name(args)`
    Call {
        /// Module alias of an imported rhai script.
        module: Option<Ident>,
        /// Function name.
        function: Ident,
        /// Arguments.
        args: Vec<Expr>,
    },
    /// Prefix operator.
    Unary {
        /// The operator.
        op: UnaryOp,
        /// Its operand.
        operand: Box<Expr>,
    },
    /// Infix operator.
    Binary {
        /// The operator.
        op: BinaryOp,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
    },
    /// `if c then a else b`
    If {
        /// Condition.
        cond: Box<Expr>,
        /// Value when true.
        then: Box<Expr>,
        /// Value otherwise (false or null).
        otherwise: Box<Expr>,
    },
    /// `( expr )`: kept so the printer reproduces the author's parentheses.
    Paren(Box<Expr>),
}

/// Literal values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Literal {
    /// `true` / `false`
    Bool(bool),
    /// `42`
    Int(i64),
    /// `4.2`
    Float(f64),
    /// `"text"` (escapes resolved)
    String(String),
    /// `30s`
    Duration(Duration),
    /// `@2024-03-01T08:00:00Z`, as nanoseconds since the Unix epoch (UTC).
    Timestamp(i64),
    /// `null`
    Null,
}

/// Prefix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum UnaryOp {
    /// `not`
    Not,
    /// `-`
    Neg,
}

/// Infix operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BinaryOp {
    /// `or`
    Or,
    /// `and`
    And,
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `??`
    Coalesce,
    /// `+`
    Add,
    /// `-`
    Sub,
    /// `*`
    Mul,
    /// `/`
    Div,
    /// `%`
    Rem,
}

impl BinaryOp {
    /// The operator as written.
    pub fn as_str(self) -> &'static str {
        match self {
            BinaryOp::Or => "or",
            BinaryOp::And => "and",
            BinaryOp::Eq => "==",
            BinaryOp::Ne => "!=",
            BinaryOp::Lt => "<",
            BinaryOp::Le => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::Ge => ">=",
            BinaryOp::Coalesce => "??",
            BinaryOp::Add => "+",
            BinaryOp::Sub => "-",
            BinaryOp::Mul => "*",
            BinaryOp::Div => "/",
            BinaryOp::Rem => "%",
        }
    }

    /// Binding strength (higher binds tighter), as in grammar/tern.ebnf.
    pub fn precedence(self) -> u8 {
        match self {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Eq
            | BinaryOp::Ne
            | BinaryOp::Lt
            | BinaryOp::Le
            | BinaryOp::Gt
            | BinaryOp::Ge => 4,
            BinaryOp::Coalesce => 5,
            BinaryOp::Add | BinaryOp::Sub => 6,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => 7,
        }
    }

    /// True for the comparison operators (which do not chain).
    pub fn is_comparison(self) -> bool {
        self.precedence() == 4
    }
}

/// Words that can never be identifiers (grammar/tern.ebnf, "Reserved words").
pub const RESERVED: &[&str] = &[
    "and",
    "or",
    "not",
    "true",
    "false",
    "null",
    "if",
    "then",
    "else",
    "key",
    "stream",
    "aggregate",
    "rule",
    "import",
    "from",
    "match",
    "where",
    "until",
    "within",
    "skip",
    "emit",
    "to",
    "next",
    "followed",
    "by",
    "any",
    "on",
    "timeout",
    "severity",
];

/// The severities an emit clause may name, lowest first.
pub const SEVERITIES: &[&str] = &["info", "warning", "error", "critical"];
