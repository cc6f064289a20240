//! The registry of diagnostic codes. A code is never reused or renumbered: editors, CI
//! filters and docs link to them. Ranges by stage: E1xx parse, E2xx names and types,
//! E3xx pattern shape and boundedness, E40x device profiles, E41x the configuration file
//! (tern.toml), E42x rule tests (`tern test`), W-codes are warnings.

use serde::Serialize;

macro_rules! codes {
    ($($variant:ident = $code:literal, $title:literal;)*) => {
        /// A stable diagnostic code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $(#[doc = $title] $variant,)*
        }

        impl Code {
            /// The code as printed: `E201`.
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $code,)* }
            }

            /// A short title, as in `tern check --explain` and docs/diagnostics.md.
            pub fn title(self) -> &'static str {
                match self { $(Code::$variant => $title,)* }
            }

            /// Every registered code, in order.
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];
        }
    };
}

codes! {
    // -- E1xx: text to AST ------------------------------------------------------------------
    E100 = "E100", "unexpected character";
    E101 = "E101", "unexpected token";
    E102 = "E102", "unterminated string";
    E103 = "E103", "unterminated block comment";
    E104 = "E104", "invalid escape in string";
    E105 = "E105", "number out of range";
    E106 = "E106", "invalid duration";
    E107 = "E107", "invalid timestamp";
    E108 = "E108", "reserved word used as a name";
    E109 = "E109", "unclosed delimiter";
    E110 = "E110", "unknown clause";
    E111 = "E111", "unknown type";
    E112 = "E112", "invalid quantifier";
    E113 = "E113", "`=` used for comparison";
    E114 = "E114", "chained comparison";
    E115 = "E115", "unknown skip strategy";
    E116 = "E116", "step without a name";
    E117 = "E117", "unknown stream option";
    // -- E2xx: names and types --------------------------------------------------------------
    E200 = "E200", "unknown stream";
    E201 = "E201", "unknown field";
    E202 = "E202", "unknown variable";
    E203 = "E203", "unknown function";
    E204 = "E204", "type mismatch";
    E205 = "E205", "condition is not a bool";
    E206 = "E206", "variable used before it is bound";
    E207 = "E207", "aggregate over a step that is not a loop";
    E208 = "E208", "loop variable read without an aggregate";
    E209 = "E209", "wrong number of arguments";
    E210 = "E210", "duplicate name";
    E211 = "E211", "unknown sink";
    E212 = "E212", "unknown severity";
    E213 = "E213", "stream not listed in `from`";
    E214 = "E214", "key field missing or mistyped";
    E215 = "E215", "bad time field";
    E216 = "E216", "missing clause";
    E217 = "E217", "duplicate clause";
    E218 = "E218", "unknown step in skip strategy";
    E219 = "E219", "field read outside a condition";
    E220 = "E220", "unknown module";
    E221 = "E221", "invalid aggregate stream";
    E222 = "E222", "invalid argument";
    E223 = "E223", "invalid user function script";
    E224 = "E224", "unknown user function";
    E225 = "E225", "too many streams or fields";
    // -- E3xx: pattern shape and boundedness ------------------------------------------------
    E300 = "E300", "unbounded pattern state";
    E301 = "E301", "negation cannot start a pattern";
    E302 = "E302", "absence without a time bound";
    E303 = "E303", "negation not allowed here";
    E304 = "E304", "`until` on a step that is not a loop";
    E305 = "E305", "quantifier too large";
    E306 = "E306", "pattern can match no event";
    E307 = "E307", "conflicting quantifier modifiers";
    E308 = "E308", "timeout without a time bound";
    E309 = "E309", "invalid duration value";
    // -- E4xx: device profiles --------------------------------------------------------------
    E400 = "E400", "invalid device profile";
    E401 = "E401", "invalid topic template";
    E402 = "E402", "invalid timestamp format";
    E403 = "E403", "duplicate stream across profiles";
    E404 = "E404", "invalid decoder script";
    // -- E41x: config (tern.toml) -----------------------------------------------------------
    E410 = "E410", "invalid configuration file";
    E411 = "E411", "unknown configuration key";
    E412 = "E412", "invalid configuration value";
    E413 = "E413", "missing configuration key";
    E414 = "E414", "unknown sink type";
    E415 = "E415", "key does not apply to this sink type";
    E416 = "E416", "secret not available";
    E417 = "E417", "admin endpoint beyond loopback without a token";
    // -- E42x: rule tests (`*.test.toml`) ---------------------------------------------------
    E420 = "E420", "invalid test file";
    E421 = "E421", "unknown rule or stream in a test";
    E422 = "E422", "invalid test event";
    E423 = "E423", "invalid expectation";
    E424 = "E424", "missing test input";
    // -- warnings ---------------------------------------------------------------------------
    W001 = "W001", "unused step";
    W002 = "W002", "condition is always true";
    W003 = "W003", "rule without a key over a keyed stream";
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Code;

    #[test]
    fn codes_are_unique_and_match_their_variant() {
        let mut seen = std::collections::HashSet::new();
        for code in Code::ALL {
            assert!(
                seen.insert(code.as_str()),
                "{} registered twice",
                code.as_str()
            );
            assert_eq!(format!("{code:?}"), code.as_str());
        }
    }
}
