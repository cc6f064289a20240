//! Printer and parser agree, and the parser survives anything.
//!
//! - Every ok fixture prints canonically (snapshotted), and the printed text parses back to
//!   the same AST.
//! - Random ASTs print to text that parses back to the same AST (spans aside).
//! - Random bytes, and the ok fixtures with random edits, never make the parser panic, and
//!   what it returns is still printable and renderable.
//!
//! Case counts are modest by default; set `PROPTEST_CASES` to run more.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use proptest::prelude::*;
use serde_json::Value;
use tern::lang::ast::*;
use tern::lang::diagnostic::FileId;
use tern::lang::print::{print, print_expr};
use tern::lang::source::Sources;
use tern::lang::span::{Span, Spanned};
use tern::lang::{parse, render};

// ------------------------------------------------------------------------------- helpers

/// The AST as JSON with every `span` removed, so that trees can be compared by shape.
fn shape<T: serde::Serialize>(ast: &T) -> Value {
    fn strip(v: &mut Value) {
        match v {
            Value::Object(map) => {
                map.remove("span");
                map.values_mut().for_each(strip);
            }
            Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(ast).unwrap();
    strip(&mut v);
    v
}

fn parse_clean(text: &str) -> File {
    let (ast, diags) = parse(FileId(0), text);
    if !diags.is_empty() {
        let mut sources = Sources::new();
        sources.add("printed.tern", text);
        panic!(
            "printed text does not parse:\n{text}\n{}",
            render::to_text(&sources, &diags)
        );
    }
    ast
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn ok_fixtures() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parse/ok");
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "tern"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

// ------------------------------------------------------------------------------ fixtures

#[test]
fn fixtures_print_canonically_and_parse_back() {
    insta::glob!("fixtures/parse/ok/*.tern", |path| {
        let text = std::fs::read_to_string(path).unwrap();
        let (ast, diags) = parse(FileId(0), &text);
        assert!(diags.is_empty(), "{}: {diags:?}", path.display());
        let printed = print(&ast);
        let again = parse_clean(&printed);
        assert_eq!(shape(&ast), shape(&again), "printed:\n{printed}");
        assert_eq!(print(&again), printed, "printing is idempotent");
        insta::assert_snapshot!(printed);
    });
}

// ---------------------------------------------------------------------------- strategies

fn sp<T>(node: T) -> Spanned<T> {
    Spanned::new(Span::default(), node)
}

fn ex(kind: ExprKind) -> Expr {
    Expr {
        kind,
        span: Span::default(),
    }
}

/// A name: any identifier that is not a reserved word (contextual keywords included).
fn arb_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-z_][a-z0-9_]{0,6}",
        1 => prop::sample::select(vec![
            "time", "lateness", "idle", "window", "tumbling", "sliding", "every", "select",
            "consecutive", "greedy", "none", "past", "last", "first", "as", "bool", "int",
            "info", "warning", "notable", "android", "key_", "_",
        ])
        .prop_map(str::to_string),
    ]
    .prop_filter("reserved", |n| !RESERVED.contains(&n.as_str()))
}

fn arb_ident() -> impl Strategy<Value = Ident> {
    arb_name().prop_map(sp)
}

fn arb_duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        3 => prop::sample::select(vec![0i64, 1, 500, 1000, 30_000, 60_000, 5_400_000, 86_400_000]),
        1 => 0..=i64::MAX,
    ]
    .prop_map(|millis| Duration { millis })
}

fn arb_literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        any::<bool>().prop_map(Literal::Bool),
        (0..=i64::MAX).prop_map(Literal::Int),
        any::<f64>()
            .prop_filter("writable", |v| v.is_finite() && v.is_sign_positive())
            .prop_map(Literal::Float),
        prop::sample::select(vec![0.0, 0.5, 1.0, 1e21, 1e-7, 123.456]).prop_map(Literal::Float),
        any::<String>().prop_map(Literal::String),
        arb_duration().prop_map(Literal::Duration),
        any::<i64>().prop_map(Literal::Timestamp),
        Just(Literal::Null),
    ]
}

/// Any expression tree, whether or not its parentheses are where the grammar needs them.
fn arb_expr() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        4 => arb_literal().prop_map(|l| ex(ExprKind::Literal(l))),
        1 => Just(ex(ExprKind::Literal(Literal::Int(i64::MIN)))),
        1 => Just(ex(ExprKind::Key)),
        4 => arb_name().prop_map(|n| ex(ExprKind::Name(n))),
    ];
    leaf.prop_recursive(4, 48, 3, |inner| {
        let binary = prop::sample::select(vec![
            BinaryOp::Or,
            BinaryOp::And,
            BinaryOp::Eq,
            BinaryOp::Ne,
            BinaryOp::Lt,
            BinaryOp::Le,
            BinaryOp::Gt,
            BinaryOp::Ge,
            BinaryOp::Coalesce,
            BinaryOp::Add,
            BinaryOp::Sub,
            BinaryOp::Mul,
            BinaryOp::Div,
            BinaryOp::Rem,
        ]);
        prop_oneof![
            1 => (inner.clone(), arb_ident()).prop_map(|(b, field)| ex(ExprKind::Field {
                base: Box::new(b),
                field
            })),
            1 => (
                prop::option::of(arb_ident()),
                arb_ident(),
                prop::collection::vec(inner.clone(), 0..3)
            )
                .prop_map(|(module, function, args)| ex(ExprKind::Call {
                    module,
                    function,
                    args
                })),
            1 => (prop::sample::select(vec![UnaryOp::Not, UnaryOp::Neg]), inner.clone()).prop_map(
                |(op, e)| ex(ExprKind::Unary {
                    op,
                    operand: Box::new(e)
                })
            ),
            3 => (binary, inner.clone(), inner.clone()).prop_map(|(op, l, r)| ex(
                ExprKind::Binary {
                    op,
                    lhs: Box::new(l),
                    rhs: Box::new(r)
                }
            )),
            1 => (inner.clone(), inner.clone(), inner.clone()).prop_map(|(c, t, o)| ex(
                ExprKind::If {
                    cond: Box::new(c),
                    then: Box::new(t),
                    otherwise: Box::new(o)
                }
            )),
            1 => inner.prop_map(|e| ex(ExprKind::Paren(Box::new(e)))),
        ]
    })
}

/// How tightly an expression binds as an operand, written independently of the printer.
fn strength(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary { op, .. } => match op {
            BinaryOp::Or => 1,
            BinaryOp::And => 2,
            BinaryOp::Coalesce => 5,
            BinaryOp::Add | BinaryOp::Sub => 6,
            BinaryOp::Mul | BinaryOp::Div | BinaryOp::Rem => 7,
            _ => 4,
        },
        ExprKind::Unary {
            op: UnaryOp::Not, ..
        } => 3,
        ExprKind::Unary {
            op: UnaryOp::Neg, ..
        } => 8,
        ExprKind::Literal(Literal::Int(v)) if *v < 0 => 8,
        _ => 10,
    }
}

/// `e` with a `Paren` wherever the grammar needs one, that is: exactly the tree the parser
/// builds from the printed text. `tail` says nothing follows `e` in its expression.
fn canon(e: Expr, tail: bool) -> Expr {
    let kind = match e.kind {
        ExprKind::Binary { op, lhs, rhs } => {
            let p = strength(&ex(ExprKind::Binary {
                op,
                lhs: lhs.clone(),
                rhs: rhs.clone(),
            }));
            let left_min = if p == 4 { 5 } else { p };
            ExprKind::Binary {
                op,
                lhs: Box::new(wrap(*lhs, left_min, false)),
                rhs: Box::new(wrap(*rhs, p + 1, tail)),
            }
        }
        ExprKind::Unary { op, operand } => {
            let min = if op == UnaryOp::Not { 3 } else { 8 };
            ExprKind::Unary {
                op,
                operand: Box::new(wrap(*operand, min, tail)),
            }
        }
        ExprKind::Field { base, field } => ExprKind::Field {
            base: Box::new(wrap(*base, 9, false)),
            field,
        },
        ExprKind::Call {
            module,
            function,
            args,
        } => ExprKind::Call {
            module,
            function,
            args: args.into_iter().map(|a| canon(a, true)).collect(),
        },
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => ExprKind::If {
            cond: Box::new(canon(*cond, true)),
            then: Box::new(canon(*then, true)),
            otherwise: Box::new(canon(*otherwise, tail)),
        },
        ExprKind::Paren(inner) => ExprKind::Paren(Box::new(canon(*inner, true))),
        other => other,
    };
    ex(kind)
}

fn wrap(e: Expr, min: u8, tail: bool) -> Expr {
    let is_if = matches!(e.kind, ExprKind::If { .. });
    if strength(&e) < min || (is_if && !tail) {
        ex(ExprKind::Paren(Box::new(canon(e, true))))
    } else {
        canon(e, tail)
    }
}

/// `e` without any `Paren` node.
fn unparen(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(inner) = map.get_mut("kind").and_then(|k| k.get_mut("Paren")) {
                let inner = inner.take();
                *v = inner;
                unparen(v);
                return;
            }
            map.values_mut().for_each(unparen);
        }
        Value::Array(items) => items.iter_mut().for_each(unparen),
        _ => {}
    }
}

fn arb_quantifier() -> impl Strategy<Value = Quantifier> {
    let count = prop_oneof![
        (0u32..50, prop::option::of(0u32..50)).prop_map(|(min, extra)| (
            min,
            extra.map(|e| min + e),
            QuantifierForm::Braces
        )),
        Just((1, None, QuantifierForm::Plus)),
        Just((0, None, QuantifierForm::Star)),
        Just((0, Some(1), QuantifierForm::Optional)),
    ];
    let inner = prop::option::of(prop::sample::select(vec![
        Contiguity::Strict,
        Contiguity::NonDeterministic,
    ]));
    (count, any::<bool>(), inner, any::<bool>()).prop_map(
        |((min, max, form), reluctant, inner, greedy)| Quantifier {
            min,
            max,
            form,
            reluctant,
            greedy,
            inner,
            span: Span::default(),
        },
    )
}

fn arb_condition() -> impl Strategy<Value = Option<Expr>> {
    prop::option::of(arb_expr().prop_map(|e| canon(e, true)))
}

fn arb_step() -> impl Strategy<Value = Atom> {
    (
        arb_ident(),
        arb_ident(),
        prop::option::of(arb_quantifier()),
        arb_condition(),
        arb_condition(),
    )
        .prop_map(|(name, stream, quantifier, condition, until)| {
            Atom::Step(Step {
                name,
                stream,
                quantifier,
                condition,
                until,
                span: Span::default(),
            })
        })
}

fn arb_element(atom: BoxedStrategy<Atom>) -> impl Strategy<Value = Element> {
    prop::collection::vec(atom, 1..3).prop_map(|alternatives| Element {
        alternatives,
        span: Span::default(),
    })
}

fn arb_link() -> impl Strategy<Value = Link> {
    (
        prop::sample::select(vec![
            Contiguity::Strict,
            Contiguity::Relaxed,
            Contiguity::NonDeterministic,
        ]),
        prop::option::of(arb_duration().prop_map(sp)),
    )
        .prop_map(|(contiguity, within)| Link {
            contiguity,
            negated: false,
            within,
            span: Span::default(),
        })
}

fn arb_negation() -> impl Strategy<Value = (Link, Element)> {
    (
        prop::sample::select(vec![Contiguity::Strict, Contiguity::Relaxed]),
        prop::option::of(arb_ident()),
        arb_ident(),
        arb_condition(),
    )
        .prop_map(|(contiguity, name, stream, condition)| {
            let link = Link {
                contiguity,
                negated: true,
                within: None,
                span: Span::default(),
            };
            let atom = Atom::Negated(NegatedStep {
                name,
                stream,
                condition,
                span: Span::default(),
            });
            (
                link,
                Element {
                    alternatives: vec![atom],
                    span: Span::default(),
                },
            )
        })
}

fn arb_pattern() -> impl Strategy<Value = Pattern> {
    let atom = arb_step().boxed().prop_recursive(3, 12, 3, |atom| {
        let group = (pattern_of(atom.clone()), prop::option::of(arb_quantifier())).prop_map(
            |(p, quantifier)| {
                Atom::Group(Group {
                    pattern: Box::new(p),
                    quantifier,
                    span: Span::default(),
                })
            },
        );
        prop_oneof![2 => atom, 1 => group].boxed()
    });
    pattern_of(atom.boxed())
}

fn pattern_of(atom: BoxedStrategy<Atom>) -> impl Strategy<Value = Pattern> {
    let link_element = prop_oneof![
        3 => (arb_link(), arb_element(atom.clone())),
        1 => arb_negation(),
    ];
    (arb_element(atom), prop::collection::vec(link_element, 0..3)).prop_map(|(first, rest)| {
        Pattern {
            first,
            rest,
            span: Span::default(),
        }
    })
}

fn arb_fields() -> impl Strategy<Value = Vec<EmitField>> {
    prop::collection::vec(
        (arb_ident(), arb_expr().prop_map(|e| canon(e, true)))
            .prop_map(|(name, value)| EmitField { name, value }),
        0..3,
    )
}

fn arb_emit() -> impl Strategy<Value = Emit> {
    (
        prop::option::of(arb_ident()),
        prop::option::of(arb_ident()),
        arb_fields(),
    )
        .prop_map(|(name, severity, fields)| Emit {
            name,
            severity,
            fields,
            span: Span::default(),
        })
}

fn arb_clause() -> impl Strategy<Value = Clause> {
    let names = || prop::collection::vec(arb_ident(), 1..3);
    let skip = prop_oneof![
        Just(SkipStrategy::None),
        Just(SkipStrategy::ToNext),
        Just(SkipStrategy::PastLast),
        arb_ident().prop_map(SkipStrategy::ToFirst),
        arb_ident().prop_map(SkipStrategy::ToLast),
    ];
    prop_oneof![
        1 => names().prop_map(ClauseKind::From),
        1 => names().prop_map(ClauseKind::Key),
        1 => names().prop_map(ClauseKind::To),
        3 => arb_pattern().prop_map(ClauseKind::Match),
        1 => arb_duration().prop_map(|d| ClauseKind::Within(sp(d))),
        1 => skip.prop_map(|s| ClauseKind::Skip(sp(s))),
        1 => arb_emit().prop_map(ClauseKind::Emit),
        1 => arb_emit().prop_map(ClauseKind::OnTimeout),
    ]
    .prop_map(|kind| Clause {
        kind,
        span: Span::default(),
    })
}

fn arb_item() -> impl Strategy<Value = Item> {
    let ty = prop::sample::select(TypeName::ALL.to_vec());
    let field = (arb_ident(), ty, any::<bool>()).prop_map(|(name, ty, nullable)| FieldDecl {
        name,
        ty: sp(ty),
        nullable,
        span: Span::default(),
    });
    let stream = (
        arb_ident(),
        prop::collection::vec(field, 0..4),
        prop::option::of(arb_ident()),
        prop::option::of(arb_duration().prop_map(sp)),
        prop::option::of(arb_duration().prop_map(sp)),
    )
        .prop_map(|(name, fields, time, lateness, idle)| {
            Item::Stream(StreamDecl {
                name,
                fields,
                time,
                lateness,
                idle,
                span: Span::default(),
            })
        });
    let window = prop_oneof![
        arb_duration().prop_map(|d| Window::Tumbling(sp(d))),
        (arb_duration(), arb_duration()).prop_map(|(size, every)| Window::Sliding {
            size: sp(size),
            every: sp(every)
        }),
    ];
    let aggregate = (
        arb_ident(),
        arb_ident(),
        prop::collection::vec(arb_ident(), 0..3),
        prop::option::of(window.prop_map(sp)),
        arb_fields(),
    )
        .prop_map(|(name, source, key, window, select)| {
            Item::Aggregate(AggregateDecl {
                name,
                source,
                key,
                window,
                select,
                span: Span::default(),
            })
        });
    let import = (any::<String>(), prop::option::of(arb_ident())).prop_map(|(path, alias)| {
        Item::Import(Import {
            path: sp(path),
            alias,
            span: Span::default(),
        })
    });
    let rule =
        (arb_ident(), prop::collection::vec(arb_clause(), 0..6)).prop_map(|(name, clauses)| {
            Item::Rule(Rule {
                name,
                clauses,
                span: Span::default(),
            })
        });
    prop_oneof![1 => import, 2 => stream, 2 => aggregate, 5 => rule]
}

// ---------------------------------------------------------------------------- properties

proptest! {
    #![proptest_config(cases(256))]

    /// A tree with the parentheses the grammar needs prints to text that parses back to it.
    #[test]
    fn canonical_expressions_round_trip(e in arb_expr()) {
        let e = canon(e, true);
        let text = format!("rule r {{ emit {{ x: {} }} }}", print_expr(&e));
        let file = parse_clean(&text);
        let Item::Rule(rule) = &file.items[0] else { panic!("not a rule") };
        let ClauseKind::Emit(emit) = &rule.clauses[0].kind else { panic!("not an emit") };
        prop_assert_eq!(shape(&emit.fields[0].value), shape(&e), "printed: {}", text);
    }

    /// Whatever the tree, the printer adds enough parentheses to keep its meaning.
    #[test]
    fn printer_parenthesizes_any_tree(e in arb_expr()) {
        let text = format!("rule r {{ emit {{ x: {} }} }}", print_expr(&e));
        let file = parse_clean(&text);
        let Item::Rule(rule) = &file.items[0] else { panic!("not a rule") };
        let ClauseKind::Emit(emit) = &rule.clauses[0].kind else { panic!("not an emit") };
        let mut got = shape(&emit.fields[0].value);
        let mut want = shape(&e);
        unparen(&mut got);
        unparen(&mut want);
        prop_assert_eq!(got, want, "printed: {}", text);
    }

    /// Whole files print to text that parses back to the same AST.
    #[test]
    fn files_round_trip(items in prop::collection::vec(arb_item(), 0..4)) {
        let file = File {
            items,
            ..File::default()
        };
        let text = print(&file);
        let again = parse_clean(&text);
        prop_assert_eq!(shape(&again), shape(&file), "printed:\n{}", text);
        prop_assert_eq!(print(&again), text);
    }
}

// ------------------------------------------------------------------------------ fuzzing

/// Parses anything and checks that the result is usable: the parser did not panic, every
/// diagnostic points into the text, and the AST prints and the diagnostics render.
fn survive(text: &str) {
    let diags = survive_parse(text);
    let mut sources = Sources::new();
    sources.add("fuzz.tern", text);
    let _ = render::to_text(&sources, &diags);
}

/// [`survive`] without rendering, which is slow on huge single-line inputs.
fn survive_parse(text: &str) -> Vec<tern::lang::Diagnostic> {
    let (ast, diags) = parse(FileId(0), text);
    assert!(diags.len() <= tern::lang::parser::MAX_DIAGNOSTICS);
    for d in &diags {
        for l in &d.labels {
            assert!(l.span.start <= l.span.end && l.span.end as usize <= text.len());
            assert!(text.is_char_boundary(l.span.start as usize));
            assert!(text.is_char_boundary(l.span.end as usize));
        }
    }
    let _ = print(&ast);
    diags
}

/// Tokens an author types, for insertions.
const VOCABULARY: &[&str] = &[
    "rule",
    "stream",
    "aggregate",
    "import",
    "from",
    "key",
    "match",
    "where",
    "until",
    "within",
    "skip",
    "emit",
    "on",
    "timeout",
    "to",
    "next",
    "followed",
    "by",
    "any",
    "not",
    "and",
    "or",
    "if",
    "then",
    "else",
    "{",
    "}",
    "(",
    ")",
    ",",
    ":",
    "::",
    "?",
    "??",
    "+",
    "*",
    "-",
    "->",
    "|",
    "||",
    "=",
    "==",
    "<",
    ".",
    "\"",
    "\"\\",
    "/*",
    "*/",
    "//",
    "@",
    "5m",
    "1.5",
    "9999999999999999999",
    "@2024-01-01T00:00:00Z",
    "é",
    "\u{feff}",
    "\n",
    "\r",
    "\t",
    "$",
];

#[derive(Clone, Debug)]
enum Edit {
    Delete(f64, usize),
    Insert(f64, &'static str),
    Swap(f64, f64),
    Duplicate(f64, usize),
}

fn arb_edit() -> impl Strategy<Value = Edit> {
    let at = 0.0..1.0f64;
    prop_oneof![
        (at.clone(), 1usize..8).prop_map(|(a, n)| Edit::Delete(a, n)),
        (at.clone(), prop::sample::select(VOCABULARY)).prop_map(|(a, t)| Edit::Insert(a, t)),
        (at.clone(), at.clone()).prop_map(|(a, b)| Edit::Swap(a, b)),
        (at, 1usize..40).prop_map(|(a, n)| Edit::Duplicate(a, n)),
    ]
}

/// Applies an edit at fractional positions, always on char boundaries.
fn apply(text: &str, edit: &Edit) -> String {
    let chars: Vec<char> = text.chars().collect();
    let pos = |f: f64| ((chars.len() as f64) * f) as usize;
    let mut out = chars.clone();
    match edit {
        Edit::Delete(a, n) => {
            let start = pos(*a).min(out.len());
            let end = (start + n).min(out.len());
            out.drain(start..end);
        }
        Edit::Insert(a, t) => {
            let at = pos(*a).min(out.len());
            out.splice(at..at, t.chars());
        }
        Edit::Swap(a, b) => {
            if !out.is_empty() {
                let (i, j) = (pos(*a).min(out.len() - 1), pos(*b).min(out.len() - 1));
                out.swap(i, j);
            }
        }
        Edit::Duplicate(a, n) => {
            let start = pos(*a).min(out.len());
            let end = (start + n).min(out.len());
            let copy: Vec<char> = out[start..end].to_vec();
            out.splice(end..end, copy);
        }
    }
    out.into_iter().collect()
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        survive(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn random_token_soup_never_panics(tokens in prop::collection::vec(prop::sample::select(VOCABULARY), 0..80)) {
        survive(&tokens.join(" "));
        survive(&tokens.concat());
    }

    #[test]
    fn edited_fixtures_never_panic(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(arb_edit(), 1..6),
    ) {
        let fixtures = ok_fixtures();
        let mut text = pick.get(&fixtures).clone();
        for e in &edits {
            text = apply(&text, e);
        }
        survive(&text);
    }
}

/// Pathological inputs that once were (or could be) slow or deep.
#[test]
fn pathological_inputs_are_handled() {
    let long = 100_000;
    for text in [
        "(".repeat(long),
        format!("rule r {{ match a: s where {}", "(".repeat(long)),
        format!("rule r {{ match {}", "(".repeat(long)),
        format!("rule r {{ match a: s where x{}", " + x".repeat(long / 4)),
        format!("rule r {{ match a: s where {}x", "-".repeat(long)),
        format!("rule r {{ match a: s where {}x", "not ".repeat(long / 4)),
        format!("rule r {{ match a: s{} }}", " next b: s".repeat(long / 10)),
        format!("rule r {{ match {} }}", "a: s | ".repeat(long / 8)),
        "rule r {".repeat(long / 8),
        "\"".repeat(long),
        "/*".repeat(long),
        "{".repeat(long),
        "é".repeat(long),
        format!("rule r {{ emit {{ {} }} }}", "a: 1, ".repeat(long / 6)),
        format!("rule r {{ {} }}", "from a ".repeat(long / 7)),
        format!("rule r {{ from {} }}", "a ".repeat(long / 2)),
        format!("rule r {{ {} }}", "within x key ".repeat(long / 13)),
        "/* /* */ x ".repeat(long / 11),
        format!("rule r {{ {} }}", "/* /* */ wher ".repeat(long / 14)),
    ] {
        let started = std::time::Instant::now();
        survive_parse(&text);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "took {:?} on {:?}...",
            started.elapsed(),
            &text.chars().take(40).collect::<String>()
        );
    }
}
