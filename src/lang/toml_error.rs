//! toml's deserialisation errors, located and classified, for the TOML files tern reads
//! (tern.toml and device profiles). Each reader turns them into its own diagnostics.

use super::span::Span;

/// What went wrong in a TOML document.
#[derive(Debug, Clone, PartialEq)]
pub enum TomlProblem<'e> {
    /// A key the schema does not have, with the keys it expected (from serde's message).
    UnknownKey {
        /// The key written.
        name: &'e str,
        /// The keys the table accepts.
        expected: Vec<&'e str>,
    },
    /// A required key is absent.
    MissingKey {
        /// The key.
        name: &'e str,
    },
    /// A value of the wrong type or out of range.
    BadValue {
        /// toml's first line.
        headline: &'e str,
    },
    /// Anything else (syntax).
    Other {
        /// toml's first line.
        headline: &'e str,
    },
}

/// Where the problem is (empty span when toml gives none) and what it is.
pub fn classify(e: &toml::de::Error) -> (Span, TomlProblem<'_>) {
    let at = e
        .span()
        .map(|r| Span::new(r.start, r.end))
        .unwrap_or_default();
    let message = e.message().trim();
    let problem = if let Some(rest) = message.strip_prefix("unknown field `") {
        TomlProblem::UnknownKey {
            name: rest.split('`').next().unwrap_or_default(),
            // serde lists the expected keys in backticks after "expected".
            expected: rest
                .split_once("expected")
                .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
                .unwrap_or_default(),
        }
    } else if let Some(rest) = message.strip_prefix("missing field `") {
        TomlProblem::MissingKey {
            name: rest.split('`').next().unwrap_or_default(),
        }
    } else {
        let headline = message.lines().next().unwrap_or("invalid TOML");
        if headline.starts_with("invalid type") || headline.starts_with("invalid value") {
            TomlProblem::BadValue { headline }
        } else {
            TomlProblem::Other { headline }
        }
    };
    (at, problem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct T {
        speed: f64,
        unit: String,
    }

    #[test]
    fn classifies_with_location() {
        let e = toml::from_str::<T>("speed = 1.0\nunit = \"kmh\"\nsped = 2\n").unwrap_err();
        let (at, p) = classify(&e);
        assert_eq!(
            p,
            TomlProblem::UnknownKey {
                name: "sped",
                expected: vec!["speed", "unit"]
            }
        );
        assert_eq!(at.start, 25);
        let e = toml::from_str::<T>("speed = 1.0\n").unwrap_err();
        assert_eq!(classify(&e).1, TomlProblem::MissingKey { name: "unit" });
        let e = toml::from_str::<T>("speed = \"x\"\nunit = \"u\"\n").unwrap_err();
        assert!(matches!(classify(&e).1, TomlProblem::BadValue { .. }));
    }
}
