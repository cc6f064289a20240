//! Rhai decoder scripts (`format = "script"`) for payloads that are not flat JSON.
//!
//! A script sees three variables: `payload` (the parsed JSON payload as rhai maps, arrays and
//! values), `topic` (the whole topic as a string) and `captures` (a map from capture name to
//! level). Its last expression is a map of field values, which are then read and type-checked
//! exactly like a JSON payload. The script is compiled once at load, in a sandbox: no modules,
//! no `eval`, no clock, no output, and hard limits on work and sizes so that a bad script
//! fails its message instead of stalling the pipeline.

use rhai::{AST, Dynamic, Engine, EvalAltResult, Map, ParseError, Scope};
use serde_json::Value as Json;

use super::DecodeError;
use super::topic::{CaptureDef, Captures};

pub use crate::sandbox::MAX_OPERATIONS;
/// Deepest function call nesting.
pub const MAX_CALL_LEVELS: usize = 16;

/// A compiled decoder.
pub struct ScriptDecoder {
    engine: Engine,
    ast: AST,
}

impl std::fmt::Debug for ScriptDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptDecoder").finish_non_exhaustive()
    }
}

/// A script that does not compile: the message and where (1-based line, column in chars).
#[derive(Debug, PartialEq, Eq)]
pub struct CompileError {
    /// Rhai's description.
    pub message: String,
    /// Line and column, when rhai knows them.
    pub position: Option<(usize, usize)>,
}

fn sandbox() -> Engine {
    crate::sandbox::engine(MAX_CALL_LEVELS)
}

/// The variables a script may read; strict variables checks names against these at compile time.
fn scope_template<'a>() -> Scope<'a> {
    let mut scope = Scope::new();
    scope.push("payload", Dynamic::UNIT);
    scope.push("topic", Dynamic::UNIT);
    scope.push("captures", Dynamic::UNIT);
    scope
}

impl ScriptDecoder {
    /// Compiles a script in the sandbox.
    pub fn compile(source: &str) -> Result<ScriptDecoder, CompileError> {
        let engine = sandbox();
        let ast = engine
            .compile_with_scope(&scope_template(), source)
            .map_err(|e: ParseError| CompileError {
                message: e.0.to_string(),
                position: e.1.line().map(|l| (l, e.1.position().unwrap_or(1))),
            })?;
        Ok(ScriptDecoder { engine, ast })
    }

    /// Runs the script on one message and returns its result as JSON.
    pub fn run(
        &self,
        payload: &Json,
        names: &[CaptureDef],
        captures: &Captures<'_>,
    ) -> Result<Json, DecodeError> {
        let fail = |detail: String| DecodeError::ScriptError { detail };
        let payload = rhai::serde::to_dynamic(payload)
            .map_err(|e| fail(format!("cannot pass the payload to the script: {e}")))?;
        let mut capture_map = Map::new();
        for (def, value) in names.iter().zip(captures.values()) {
            capture_map.insert(def.name.as_str().into(), value.into());
        }
        let mut scope = Scope::new();
        scope.push("payload", payload);
        scope.push("topic", captures.topic().to_owned());
        scope.push("captures", capture_map);
        let result: Dynamic = self
            .engine
            .eval_ast_with_scope(&mut scope, &self.ast)
            .map_err(|e| fail(describe_runtime(&e)))?;
        if !result.is_map() {
            return Err(fail(format!(
                "the script must end with a map of field values, not {}",
                result.type_name()
            )));
        }
        rhai::serde::from_dynamic::<Json>(&result)
            .map_err(|e| fail(format!("the result is not plain data: {e}")))
    }
}

fn describe_runtime(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorTooManyOperations(pos) => {
            format!("stopped after {MAX_OPERATIONS} operations (an endless loop?) at {pos}")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::devices::topic::TopicTemplate;

    fn run(script: &str, payload: &str) -> Result<Json, DecodeError> {
        let tpl = TopicTemplate::parse("t/{id}").unwrap();
        let caps = tpl.matches("t/dev-1").unwrap();
        let d = ScriptDecoder::compile(script).unwrap();
        d.run(
            &serde_json::from_str(payload).unwrap(),
            tpl.captures(),
            &caps,
        )
    }

    #[test]
    fn sees_payload_topic_and_captures() {
        let out = run(
            r#"#{ v: payload.a[1] * 2, id: captures.id, t: topic }"#,
            r#"{"a": [1, 2.5]}"#,
        )
        .unwrap();
        assert_eq!(
            out,
            serde_json::json!({"v": 5.0, "id": "dev-1", "t": "t/dev-1"})
        );
    }

    #[test]
    fn endless_loop_hits_the_operation_limit() {
        let e = run("loop { } #{}", "{}").unwrap_err();
        assert_eq!(e.reason(), "script_error");
        assert!(e.to_string().contains("operations"), "{e}");
    }

    #[test]
    fn must_return_a_map() {
        let e = run("42", "{}").unwrap_err();
        assert!(e.to_string().contains("map of field values"), "{e}");
    }

    #[test]
    fn sizes_are_limited() {
        let e = run(r#"let s = "x"; loop { s += s; }"#, "{}").unwrap_err();
        assert_eq!(e.reason(), "script_error");
        let e = run("let a = []; loop { a.push(1); }", "{}").unwrap_err();
        assert_eq!(e.reason(), "script_error");
    }

    #[test]
    fn sandbox_has_no_eval_or_clock() {
        assert!(ScriptDecoder::compile(r#"eval("1")"#).is_err());
        assert!(ScriptDecoder::compile(r#"import "x" as y;"#).is_err());
        let e = ScriptDecoder::compile("timestamp()");
        // Compiles (functions resolve at run time) but cannot run: no time package.
        if let Ok(d) = e {
            let tpl = TopicTemplate::parse("t").unwrap();
            let caps = tpl.matches("t").unwrap();
            assert!(d.run(&Json::Null, tpl.captures(), &caps).is_err());
        }
    }

    #[test]
    fn unknown_variables_fail_at_compile_time() {
        let e = ScriptDecoder::compile("#{ x: paylod.a }").unwrap_err();
        assert!(e.message.contains("paylod"), "{e:?}");
        assert_eq!(e.position, Some((1, 7)));
    }
}
