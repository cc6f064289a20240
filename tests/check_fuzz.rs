//! No input makes the checker (or the parser before it) panic or hang: mutated versions of
//! the shipped rules, and random text, go through the whole front end.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::OnceLock;

use proptest::prelude::*;
use tern::compile::schema::StreamSchema;
use tern::compile::{self, DEFAULT_SINKS};
use tern::lang::render;
use tern::lang::source::Sources;

fn corpus() -> &'static (Vec<String>, Vec<StreamSchema>) {
    static CORPUS: OnceLock<(Vec<String>, Vec<StreamSchema>)> = OnceLock::new();
    CORPUS.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut rules: Vec<String> = compile::rule_files(&root.join("rules"))
            .unwrap()
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap())
            .collect();
        for dir in ["tests/fixtures/check/err"] {
            for p in compile::rule_files(&root.join(dir)).unwrap() {
                rules.push(std::fs::read_to_string(p).unwrap());
            }
        }
        let mut sources = Sources::new();
        let (profiles, _) = tern::devices::load_dir(&root.join("devices"), &mut sources);
        (rules, profiles.iter().map(|p| p.schema().clone()).collect())
    })
}

/// A mutation of a text: delete, duplicate, swap or insert a slice, at char boundaries.
#[derive(Debug, Clone)]
enum Mutation {
    Delete(usize, usize),
    Duplicate(usize, usize),
    Insert(usize, String),
    Swap(usize, usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let tokens = prop_oneof![
        Just("{".to_string()),
        Just("}".to_string()),
        Just("(".to_string()),
        Just(")".to_string()),
        Just(" next ".to_string()),
        Just(" not followed by ".to_string()),
        Just(" within 0s ".to_string()),
        Just(" within 9999999999d ".to_string()),
        Just(" next within 106751d b: flow ".to_string()),
        Just(" window sliding 9999999999d every 1ms ".to_string()),
        Just("{3,1}".to_string()),
        Just("+".to_string()),
        Just("?".to_string()),
        Just(" | ".to_string()),
        Just(".".to_string()),
        Just("\"".to_string()),
        Just("/*".to_string()),
        Just(" avg(".to_string()),
        Just("@2024-13-01T00:00:00Z".to_string()),
        Just("99999999999999999999".to_string()),
        "[a-z_]{1,8}",
        "\\PC{1,4}",
    ];
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Mutation::Delete(a, n)),
        (any::<usize>(), 0usize..40).prop_map(|(a, n)| Mutation::Duplicate(a, n)),
        (any::<usize>(), tokens).prop_map(|(a, t)| Mutation::Insert(a, t)),
        (any::<usize>(), any::<usize>(), 1usize..20).prop_map(|(a, b, n)| Mutation::Swap(a, b, n)),
    ]
}

fn boundary(s: &str, at: usize) -> usize {
    let mut i = if s.is_empty() { 0 } else { at % (s.len() + 1) };
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// `at` clamped to the text, moved back to a char boundary.
fn clamp(s: &str, at: usize) -> usize {
    let mut i = at.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn apply(s: &str, m: &Mutation) -> String {
    match m {
        Mutation::Delete(a, n) => {
            let i = boundary(s, *a);
            let j = clamp(s, i + n);
            format!("{}{}", &s[..i], &s[j..])
        }
        Mutation::Duplicate(a, n) => {
            let i = boundary(s, *a);
            let j = clamp(s, i + n);
            format!("{}{}{}", &s[..j], &s[i..j], &s[j..])
        }
        Mutation::Insert(a, t) => {
            let i = boundary(s, *a);
            format!("{}{t}{}", &s[..i], &s[i..])
        }
        Mutation::Swap(a, b, n) => {
            let i = boundary(s, *a);
            let j = boundary(s, *b);
            let (i, j) = (i.min(j), i.max(j));
            let ie = clamp(s, i + n).min(j);
            let je = clamp(s, j + n);
            format!(
                "{}{}{}{}{}",
                &s[..i],
                &s[j..je],
                &s[ie..j],
                &s[i..ie],
                &s[je..]
            )
        }
    }
}

fn check(text: &str) {
    let (_, streams) = corpus();
    let mut sources = Sources::new();
    let sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
    let (_, diags) = compile::check_text(
        &mut sources,
        &[("fuzz.tern", text)],
        streams.clone(),
        &sinks,
    );
    // Rendering must not panic either, and every diagnostic has a location.
    let _ = render::to_text(&sources, &diags);
    for d in &diags {
        assert!(d.primary().is_some());
        let l = d.primary().unwrap();
        assert!(
            l.span.end as usize <= sources.text(l.file).len(),
            "span past the end of its file"
        );
    }
}

proptest! {
    #[test]
    fn mutated_rules_never_panic(idx in any::<usize>(), muts in proptest::collection::vec(mutation(), 1..6)) {
        let (rules, _) = corpus();
        let mut text = rules[idx % rules.len()].clone();
        for m in &muts {
            text = apply(&text, m);
        }
        check(&text);
    }

    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        check(&text);
    }
}
