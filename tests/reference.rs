//! The engine against a naive reference matcher, on small random patterns and inputs.
//!
//! The reference enumerates every assignment of events to the pattern's elements and keeps
//! those the semantics allow (docs/semantics.md §3): element types, contiguity between
//! elements and inside loops, and negation guards (including a negation after a loop guarding
//! the loop's inner waits). With `skip none` and a bound that never expires, the engine must
//! emit exactly that set of matches.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use proptest::prelude::*;
use tern::compile::{self, DEFAULT_SINKS};
use tern::engine::Engine;
use tern::io::input::{JsonReader, Record};
use tern::lang::render;
use tern::lang::source::Sources;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cont {
    Strict,
    Relaxed,
    Any,
}

#[derive(Debug, Clone)]
struct Elem {
    ty: char,
    min: usize,
    max: usize,
    inner: Cont,
    /// Contiguity of the link into this element (ignored for the first).
    link: Cont,
    /// Negation between the previous element and this one: (strict `not next`, type).
    neg: Option<(bool, char)>,
}

fn cont() -> impl Strategy<Value = Cont> {
    prop_oneof![Just(Cont::Strict), Just(Cont::Relaxed), Just(Cont::Any)]
}

fn elem() -> impl Strategy<Value = Elem> {
    (
        prop_oneof![Just('a'), Just('b'), Just('c')],
        prop_oneof![
            Just((1, 1)),
            Just((1, 2)),
            Just((2, 2)),
            Just((1, 3)),
            Just((2, 3))
        ],
        cont(),
        cont(),
        proptest::option::weighted(
            0.3,
            (
                any::<bool>(),
                prop_oneof![Just('a'), Just('b'), Just('c'), Just('x')],
            ),
        ),
    )
        .prop_map(|(ty, (min, max), inner, link, neg)| Elem {
            ty,
            min,
            max,
            inner,
            link,
            neg,
        })
}

fn pattern() -> impl Strategy<Value = Vec<Elem>> {
    proptest::collection::vec(elem(), 1..=3).prop_map(|mut v| {
        v[0].neg = None;
        v
    })
}

fn events() -> impl Strategy<Value = Vec<char>> {
    proptest::collection::vec(
        prop_oneof![Just('a'), Just('b'), Just('c'), Just('x')],
        0..=8,
    )
}

fn word(c: Cont, inner: bool) -> &'static str {
    match (c, inner) {
        (Cont::Strict, false) => "next",
        (Cont::Relaxed, false) => "followed by",
        (Cont::Any, false) => "followed by any",
        (Cont::Strict, true) => " consecutive",
        (Cont::Relaxed, true) => "",
        (Cont::Any, true) => " any",
    }
}

fn rule_text(p: &[Elem]) -> String {
    let mut m = String::new();
    for (i, e) in p.iter().enumerate() {
        if i > 0 {
            if let Some((strict, t)) = e.neg {
                let w = if strict {
                    "not next"
                } else {
                    "not followed by"
                };
                m.push_str(&format!("\n        {w} ev where t == \"{t}\""));
            }
            m.push_str(&format!("\n        {} ", word(e.link, false)));
        }
        let q = if e.min == 1 && e.max == 1 {
            String::new()
        } else {
            format!("{{{},{}}}{}", e.min, e.max, word(e.inner, true))
        };
        m.push_str(&format!("s{i}: ev{q} where t == \"{}\"", e.ty));
    }
    format!(
        "stream ev {{ id: string, k: string, ts: timestamp, t: string, time ts }}\n\
         rule r {{\n    key k\n    match {m}\n    within 1d\n}}\n"
    )
}

type Match = Vec<(usize, usize)>; // (element, event index)

/// Every assignment the semantics allow.
fn reference(p: &[Elem], ev: &[char]) -> Vec<Match> {
    let mut out = Vec::new();
    for start in 0..ev.len() {
        if ev[start] == p[0].ty {
            extend(p, ev, vec![(0, start)], &mut out);
        }
    }
    out.sort();
    out
}

/// Negation guards that apply to a wait from `p` whose next take is `q`.
fn guards_ok(guard: Option<(bool, char)>, ev: &[char], p: usize, q: usize) -> bool {
    match guard {
        None => true,
        Some((true, t)) => ev[p + 1] != t,
        Some((false, t)) => (p + 1..=q).all(|r| ev[r] != t),
    }
}

fn extend(p: &[Elem], ev: &[char], m: Match, out: &mut Vec<Match>) {
    let &(e, last) = m.last().unwrap();
    let taken = m.iter().filter(|(x, _)| *x == e).count();
    let done = e + 1 == p.len();
    if done && taken >= p[e].min {
        out.push(m.clone());
    }
    // Continue the loop of element e.
    if taken < p[e].max {
        // A negation after this loop also guards its inner waits (fine print 4).
        let guard = p.get(e + 1).and_then(|n| n.neg);
        for q in last + 1..ev.len() {
            if ev[q] != p[e].ty || !guards_ok(guard, ev, last, q) {
                continue;
            }
            let ok = match p[e].inner {
                Cont::Strict => q == last + 1,
                Cont::Relaxed => (last + 1..q).all(|r| ev[r] != p[e].ty),
                Cont::Any => true,
            };
            if ok {
                let mut n = m.clone();
                n.push((e, q));
                extend(p, ev, n, out);
            }
        }
    }
    // Enter the next element.
    if !done && taken >= p[e].min {
        let next = &p[e + 1];
        for q in last + 1..ev.len() {
            if ev[q] != next.ty || !guards_ok(next.neg, ev, last, q) {
                continue;
            }
            let ok = match next.link {
                Cont::Strict => q == last + 1,
                Cont::Relaxed => (last + 1..q).all(|r| ev[r] != next.ty),
                Cont::Any => true,
            };
            if ok {
                let mut n = m.clone();
                n.push((e + 1, q));
                extend(p, ev, n, out);
            }
        }
    }
}

fn engine(p: &[Elem], ev: &[char]) -> Result<Vec<Match>, String> {
    let text = rule_text(p);
    let mut sources = Sources::new();
    let sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
    let (program, diags) =
        compile::check_text(&mut sources, &[("r.tern", &text)], Vec::new(), &sinks);
    if diags.iter().any(|d| d.is_error()) {
        return Err(format!("{text}\n{}", render::to_text(&sources, &diags)));
    }
    let program = Arc::new(program);
    let stream = program.rules[0].streams[0];
    let mut engine = Engine::new(Arc::clone(&program)).map_err(|e| e.to_string())?;
    let reader = JsonReader::new(&program, Some(stream));
    let mut found = Vec::new();
    let mut emit = |a: tern::engine::alert::Alert| found.push(a);
    for (i, t) in ev.iter().enumerate() {
        let line = format!(
            r#"{{"id":"{i}","k":"k","ts":{},"t":"{t}"}}"#,
            1_000 * (i as i64 + 1)
        );
        match reader.line(&line) {
            Ok(Record::Event(e)) => engine.push(e, &mut emit).map_err(|e| e.to_string())?,
            other => return Err(format!("{other:?}")),
        }
    }
    engine.flush(&mut emit);
    let mut out: Vec<Match> = found
        .iter()
        .map(|a| {
            let mut m: Vec<(usize, usize)> = Vec::new();
            for (step, list) in &a.events {
                let e: usize = step[1..].parse().unwrap();
                for ev in list.as_array().unwrap() {
                    m.push((e, ev["id"].as_str().unwrap().parse().unwrap()));
                }
            }
            m.sort_by_key(|(_, i)| *i);
            m
        })
        .collect();
    out.sort();
    Ok(out)
}

fn show(p: &[Elem], ev: &[char], want: &[Match], got: &[Match]) -> String {
    let fmt = |ms: &[Match]| {
        ms.iter()
            .map(|m| {
                m.iter()
                    .map(|(e, i)| format!("s{e}:{}{i}", ev[*i]))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect::<Vec<_>>()
            .join(" | ")
    };
    let mut missing = BTreeMap::new();
    for m in want {
        if !got.contains(m) {
            missing.insert(fmt(std::slice::from_ref(m)), ());
        }
    }
    format!(
        "{}\ninput: {}\nreference: {}\nengine:    {}\nmissing: {:?}",
        rule_text(p),
        ev.iter()
            .enumerate()
            .map(|(i, c)| format!("{c}{i}"))
            .collect::<Vec<_>>()
            .join(" "),
        fmt(want),
        fmt(got),
        missing.keys().collect::<Vec<_>>()
    )
}

proptest! {
    #[test]
    fn engine_matches_the_reference(p in pattern(), ev in events()) {
        let want = reference(&p, &ev);
        let got = engine(&p, &ev).map_err(TestCaseError::fail)?;
        prop_assert!(want == got, "{}", show(&p, &ev, &want, &got));
    }
}
