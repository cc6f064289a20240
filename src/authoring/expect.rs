//! Expected alerts against actual ones.
//!
//! An expectation gives some members of an alert (`rule`, `kind`, `key`, `fields`, ...); an
//! alert matches it when it has every member given with the same value: objects are matched
//! on the keys given (so `fields = { avg_speed = 15.0 }` ignores the other fields), arrays
//! element by element, numbers within a relative 1e-9, and times as instants (so
//! `2024-03-01T09:00:00+01:00` equals `2024-03-01T08:00:00Z`).

use serde_json::{Map, Value as Json};

use super::spec::Expect;

/// True when `actual` has every member of `expected`, with the same value.
pub fn matches(expected: &Json, actual: &Json) -> bool {
    match (expected, actual) {
        (Json::Object(e), Json::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| matches(v, av))),
        (Json::Array(e), Json::Array(a)) => {
            e.len() == a.len() && e.iter().zip(a).all(|(x, y)| matches(x, y))
        }
        (Json::Number(e), Json::Number(a)) => match (e.as_i64(), a.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (e.as_f64(), a.as_f64()) {
                (Some(x), Some(y)) => close(x, y),
                _ => false,
            },
        },
        (Json::String(e), Json::String(a)) => e == a || same_instant(e, a),
        _ => expected == actual,
    }
}

fn close(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
}

fn same_instant(e: &str, a: &str) -> bool {
    match (
        crate::io::input::parse_rfc3339(e),
        crate::io::input::parse_rfc3339(a),
    ) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// One member that differs: its path (`fields.avg_speed`), the value expected, and the
/// actual one (`None` when the alert lacks it).
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    /// Dotted path from the alert's top.
    pub path: String,
    /// Expected value.
    pub expected: Json,
    /// Actual value, if the alert has the member.
    pub actual: Option<Json>,
}

/// The members of `expected` that `actual` does not match, leaf by leaf.
pub fn differences(expected: &Map<String, Json>, actual: &Json) -> Vec<Difference> {
    let mut out = Vec::new();
    for (k, v) in expected {
        walk(k, v, actual.get(k), &mut out);
    }
    out
}

fn walk(path: &str, e: &Json, a: Option<&Json>, out: &mut Vec<Difference>) {
    match (e, a) {
        (_, None) => out.push(Difference {
            path: path.to_string(),
            expected: e.clone(),
            actual: None,
        }),
        (Json::Object(em), Some(Json::Object(_))) => {
            for (k, v) in em {
                walk(&format!("{path}.{k}"), v, a.and_then(|a| a.get(k)), out);
            }
        }
        (Json::Array(ea), Some(Json::Array(aa))) if ea.len() == aa.len() => {
            for (i, (x, y)) in ea.iter().zip(aa).enumerate() {
                walk(&format!("{path}[{i}]"), x, Some(y), out);
            }
        }
        (_, Some(a)) => {
            if !matches(e, a) {
                out.push(Difference {
                    path: path.to_string(),
                    expected: e.clone(),
                    actual: Some(a.clone()),
                });
            }
        }
    }
}

/// How a case's alerts compare with its expectations.
#[derive(Debug, Default)]
pub struct Comparison {
    /// Per expectation, the index of the alert that matched it.
    pub matched: Vec<Option<usize>>,
    /// Alerts no expectation matched (a failure unless others are allowed).
    pub unexpected: Vec<usize>,
    /// (expect_none index, alert index): alerts that must not come out and did.
    pub unwanted: Vec<(usize, usize)>,
}

impl Comparison {
    /// True when the case passes.
    pub fn passed(&self, allow_others: bool) -> bool {
        self.matched.iter().all(Option::is_some)
            && self.unwanted.is_empty()
            && (allow_others || self.unexpected.is_empty())
    }
}

/// Matches expectations to alerts in order: each takes the first alert after the previous
/// one's that matches it.
pub fn compare(expect: &[Expect], expect_none: &[Expect], actual: &[Json]) -> Comparison {
    let mut used = vec![false; actual.len()];
    let mut next = 0;
    let mut matched = Vec::with_capacity(expect.len());
    for e in expect {
        let want = Json::Object(e.alert.clone());
        let found = (next..actual.len()).find(|&j| !used[j] && matches(&want, &actual[j]));
        if let Some(j) = found {
            used[j] = true;
            next = j + 1;
        }
        matched.push(found);
    }
    let unexpected = (0..actual.len()).filter(|&j| !used[j]).collect();
    let mut unwanted = Vec::new();
    for (i, e) in expect_none.iter().enumerate() {
        let bad = Json::Object(e.alert.clone());
        for (j, a) in actual.iter().enumerate() {
            if matches(&bad, a) {
                unwanted.push((i, j));
            }
        }
    }
    Comparison {
        matched,
        unexpected,
        unwanted,
    }
}

/// Among `candidates` (alert indices), the alert closest to `expected`: the one with the
/// fewest differing members, if it agrees on at least one (so `rule`, `kind` and `key` alone
/// already make a candidate).
pub fn closest(
    expected: &Map<String, Json>,
    actual: &[Json],
    candidates: &[usize],
) -> Option<(usize, Vec<Difference>)> {
    let total = leaves(&Json::Object(expected.clone()));
    candidates
        .iter()
        .map(|&j| (j, differences(expected, &actual[j])))
        .filter(|(_, d)| d.len() < total)
        .min_by_key(|(_, d)| d.len())
}

fn leaves(j: &Json) -> usize {
    match j {
        Json::Object(m) => m.values().map(leaves).sum(),
        Json::Array(a) if !a.is_empty() => a.iter().map(leaves).sum(),
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_numbers_and_times() {
        let a = json!({"rule": "r", "kind": "match", "fields": {"x": 15.000000000000002, "y": 1,
            "t": "2024-03-01T08:00:00Z"}});
        assert!(matches(&json!({"fields": {"x": 15.0}}), &a));
        assert!(matches(
            &json!({"fields": {"t": "2024-03-01T09:00:00+01:00"}}),
            &a
        ));
        assert!(!matches(&json!({"fields": {"y": 2}}), &a));
        assert!(!matches(&json!({"fields": {"z": 2}}), &a));
        assert!(matches(&json!({"fields": {"y": 1.0}}), &a));
    }

    #[test]
    fn differences_name_the_leaf() {
        let a = json!({"kind": "match", "fields": {"x": 1.5, "y": 2}});
        let e = json!({"kind": "match", "fields": {"x": 1.0, "z": 3}});
        let d = differences(e.as_object().unwrap(), &a);
        let paths: Vec<&str> = d.iter().map(|d| d.path.as_str()).collect();
        assert_eq!(paths, ["fields.x", "fields.z"]);
        assert_eq!(d[1].actual, None);
    }
}
