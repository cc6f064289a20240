//! User functions written in rhai: scripts a rule file imports, compiled once at load in a
//! sandbox, and called from conditions and emit clauses.
//!
//! A program has one rhai engine, shared by every script it imports; each script is compiled
//! once (functions only: top-level statements never run) and each function a rule calls gets
//! a [`UserFn`] handle that the typed expression holds, so a call at run time looks nothing
//! up by name in tern.
//!
//! The sandbox: no module resolver and no `import` (no file access; rhai has no network),
//! no `eval`, no clock or random numbers (only the core, logic, math, string, array, map and
//! bit-field packages), and hard limits on operations, call depth, sizes and expression
//! depth. A call that fails, hits a limit or returns a value tern has no type for counts an
//! error on its function and yields null ("unknown"): its condition is false, its emit field
//! null. The operation limit is what bounds an endless loop: the call fails after
//! [`MAX_OPERATIONS`] steps, and the engine goes on with the next event.

use arcstr::ArcStr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, FnAccess, Scope};

use crate::event::Value;

pub use crate::sandbox::MAX_OPERATIONS;
/// Deepest function call nesting inside a script.
pub const MAX_CALL_LEVELS: usize = 32;

/// How often a failing function is logged again after its first failure.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// The sandboxed engine every script of a program runs in.
pub fn sandbox() -> Engine {
    crate::sandbox::engine(MAX_CALL_LEVELS)
}

/// A function a script defines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signature {
    /// Its name.
    pub name: String,
    /// How many parameters it takes.
    pub arity: usize,
    /// False for `private fn`: callable only from the script itself.
    pub public: bool,
}

/// A script that does not compile: rhai's message and where (1-based line, column in chars).
#[derive(Debug, PartialEq, Eq)]
pub struct CompileError {
    /// Rhai's description.
    pub message: String,
    /// Line and column, when rhai knows them.
    pub position: Option<(usize, usize)>,
}

/// One compiled script.
pub struct Script {
    /// The script's path as the import wrote it (shown in stats and logs).
    pub name: String,
    /// Where it was read from.
    pub path: PathBuf,
    /// FNV-1a of the script's text: part of the fingerprint of every rule that calls it.
    pub text_hash: u64,
    /// Every function it defines.
    pub functions: Vec<Signature>,
    engine: Arc<Engine>,
    ast: AST,
    /// The handles made so far, one per (name, arity), so counters are per function.
    handles: Mutex<Vec<Arc<UserFn>>>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Script")
            .field("name", &self.name)
            .field("functions", &self.functions)
            .finish_non_exhaustive()
    }
}

impl Script {
    /// Compiles a script's text with `engine`; only its function definitions are kept.
    pub fn compile(
        engine: Arc<Engine>,
        name: String,
        path: PathBuf,
        text: &str,
    ) -> Result<Script, CompileError> {
        let ast = engine.compile(text).map_err(|e| CompileError {
            message: e.0.to_string(),
            position: e.1.line().map(|l| (l, e.1.position().unwrap_or(1))),
        })?;
        let ast = ast.clone_functions_only();
        let mut functions: Vec<Signature> = ast
            .iter_functions()
            .map(|f| Signature {
                name: f.name.to_string(),
                arity: f.params.len(),
                public: f.access != FnAccess::Private,
            })
            .collect();
        functions.sort_by(|a, b| (&a.name, a.arity).cmp(&(&b.name, b.arity)));
        Ok(Script {
            name,
            path,
            text_hash: fnv1a(text.as_bytes()),
            functions,
            engine,
            ast,
            handles: Mutex::new(Vec::new()),
        })
    }

    /// The arities of the public functions called `name` (rhai overloads by arity).
    pub fn arities(&self, name: &str) -> Vec<usize> {
        self.functions
            .iter()
            .filter(|f| f.public && f.name == name)
            .map(|f| f.arity)
            .collect()
    }

    /// True when a `private fn` has this name.
    pub fn is_private(&self, name: &str) -> bool {
        self.functions.iter().any(|f| !f.public && f.name == name)
    }

    /// Names of the public functions, each once, sorted: for "did you mean".
    pub fn public_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .functions
            .iter()
            .filter(|f| f.public)
            .map(|f| f.name.as_str())
            .collect();
        names.dedup();
        names
    }

    /// The handle for calling `name` with `arity` arguments: the same one for every call
    /// site, so its error counter covers them all.
    pub fn handle(self: &Arc<Script>, name: &str, arity: usize) -> Arc<UserFn> {
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = handles.iter().find(|h| h.name == name && h.arity == arity) {
            return Arc::clone(h);
        }
        let h = Arc::new(UserFn {
            script: Arc::clone(self),
            name: name.to_string(),
            arity,
            errors: AtomicU64::new(0),
            last_log: Mutex::new(None),
        });
        handles.push(Arc::clone(&h));
        h
    }

    /// Every function called by some rule, with its error count so far.
    pub fn error_counts(&self) -> Vec<ScriptErrors> {
        let handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        handles
            .iter()
            .map(|h| ScriptErrors {
                script: self.name.clone(),
                function: h.name.clone(),
                errors: h.errors(),
            })
            .collect()
    }
}

/// How often one user function failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScriptErrors {
    /// The script, as imported.
    pub script: String,
    /// The function.
    pub function: String,
    /// Calls that failed, hit a limit or returned an unsupported type.
    pub errors: u64,
}

/// A callable user function: its script, name and arity, and its error counter.
pub struct UserFn {
    script: Arc<Script>,
    name: String,
    arity: usize,
    errors: AtomicU64,
    /// When the last failure was logged (wall clock: logging only, never results).
    last_log: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for UserFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}::{}/{}", self.script.name, self.name, self.arity)
    }
}

impl UserFn {
    /// Calls the function. Any failure counts an error and gives `Value::Null`.
    pub fn call(&self, args: Vec<Value>) -> Value {
        let mut dyn_args = Vec::with_capacity(args.len());
        for a in args {
            match to_dynamic(a) {
                Ok(d) => dyn_args.push(d),
                Err(ty) => return self.fail(&format!("cannot pass a {ty} to a rhai function")),
            }
        }
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true);
        let result = self.script.engine.call_fn_with_options::<Dynamic>(
            options,
            &mut Scope::new(),
            &self.script.ast,
            &self.name,
            dyn_args,
        );
        match result {
            Ok(d) => match from_dynamic(d) {
                Ok(v) => v,
                Err(ty) => self.fail(&format!(
                    "returned {ty}; a user function returns an int, float, bool, string or ()"
                )),
            },
            Err(e) => self.fail(&describe(&e)),
        }
    }

    /// The hash of its script's text.
    pub fn text_hash(&self) -> u64 {
        self.script.text_hash
    }

    /// Failed calls so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    fn fail(&self, detail: &str) -> Value {
        let n = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let mut last = self.last_log.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            *last = Some(now);
            tracing::warn!(
                script = %self.script.name,
                function = %self.name,
                errors = n,
                "user function failed: {detail}; the call counts as unknown (condition false, field null)"
            );
        }
        Value::Null
    }
}

/// A tern value as a rhai value; timestamps and durations have no rhai type (the checker
/// rejects them as arguments), so they are an error here.
fn to_dynamic(v: Value) -> Result<Dynamic, &'static str> {
    Ok(match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(b),
        Value::Int(i) => Dynamic::from_int(i),
        Value::Float(f) => Dynamic::from_float(f),
        Value::Str(s) => Dynamic::from(rhai::ImmutableString::from(&*s)),
        Value::Timestamp(_) => return Err("timestamp"),
        Value::Duration(_) => return Err("duration"),
    })
}

/// A rhai result as a tern value: int, float (finite), bool, string (or char) and `()`.
fn from_dynamic(d: Dynamic) -> Result<Value, String> {
    if d.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(i) = d.as_int() {
        return Ok(Value::Int(i));
    }
    if let Ok(f) = d.as_float() {
        return if f.is_finite() {
            Ok(Value::Float(f))
        } else {
            Err("a float that is not finite".to_string())
        };
    }
    if let Ok(b) = d.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(c) = d.as_char() {
        return Ok(Value::Str(ArcStr::from(c.to_string())));
    }
    let ty = d.type_name();
    match d.into_immutable_string() {
        Ok(s) => Ok(Value::Str(ArcStr::from(s.as_str()))),
        Err(_) => Err(format!("a value of type `{ty}`")),
    }
}

fn describe(e: &EvalAltResult) -> String {
    match e {
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("stopped after {MAX_OPERATIONS} operations (an endless loop?)")
        }
        other => other.to_string(),
    }
}

/// FNV-1a, 64 bits: stable across runs and builds (unlike `std`'s hasher).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Byte offset of a 1-based line and column (in chars) of `text`, clamped to the text.
pub fn offset_of(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(n) => start += n + 1,
            None => return text.len(),
        }
    }
    let line_text = text[start..].split('\n').next().unwrap_or("");
    let col = line_text
        .char_indices()
        .nth(column.saturating_sub(1))
        .map_or(line_text.len(), |(i, _)| i);
    start + col
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn script(text: &str) -> Arc<Script> {
        Arc::new(
            Script::compile(
                Arc::new(sandbox()),
                "t.rhai".into(),
                PathBuf::from("t.rhai"),
                text,
            )
            .unwrap(),
        )
    }

    #[test]
    fn values_cross_both_ways() {
        let s = script(
            r#"fn id(x) { x } fn twice(x) { x * 2 } fn greet(n) { "hi " + n } fn none() { }"#,
        );
        let id = s.handle("id", 1);
        for v in [
            Value::Null,
            Value::Bool(true),
            Value::Int(-3),
            Value::Float(2.5),
            Value::Str(ArcStr::from("é")),
        ] {
            assert_eq!(id.call(vec![v.clone()]), v);
        }
        assert_eq!(
            s.handle("twice", 1).call(vec![Value::Int(21)]),
            Value::Int(42)
        );
        assert_eq!(
            s.handle("greet", 1)
                .call(vec![Value::Str(ArcStr::from("x"))]),
            Value::Str(ArcStr::from("hi x"))
        );
        assert_eq!(s.handle("none", 0).call(vec![]), Value::Null);
        assert_eq!(id.errors(), 0);
    }

    #[test]
    fn failures_count_and_give_null() {
        let s = script("fn spin() { loop {} } fn arr() { [1] } fn bad(x) { x.nope() }");
        let spin = s.handle("spin", 0);
        assert_eq!(spin.call(vec![]), Value::Null);
        assert_eq!(spin.call(vec![]), Value::Null);
        assert_eq!(spin.errors(), 2);
        assert_eq!(s.handle("arr", 0).call(vec![]), Value::Null);
        assert_eq!(s.handle("bad", 1).call(vec![Value::Int(1)]), Value::Null);
        assert_eq!(s.handle("bad", 1).errors(), 1, "one handle per function");
        assert_eq!(
            s.handle("spin", 0).call(vec![Value::Timestamp(0)]),
            Value::Null
        );
    }

    #[test]
    fn sandbox_has_no_eval_import_or_clock() {
        let e = Arc::new(sandbox());
        let compile = |t: &str| Script::compile(e.clone(), "t".into(), "t".into(), t);
        assert!(compile(r#"fn f() { eval("1") }"#).is_err());
        assert!(compile(r#"import "x" as y; fn f() { 1 }"#).is_err());
        let s = Arc::new(compile("fn f() { timestamp() }").unwrap());
        assert_eq!(s.handle("f", 0).call(vec![]), Value::Null);
    }

    #[test]
    fn signatures_and_positions() {
        let s = script("fn a(x, y) { x } private fn b() { 1 } fn a(x) { x }");
        assert_eq!(s.arities("a"), [1, 2]);
        assert!(s.arities("b").is_empty() && s.is_private("b"));
        let e = Script::compile(
            Arc::new(sandbox()),
            "t".into(),
            "t".into(),
            "fn f() {\n  1 +\n}",
        )
        .unwrap_err();
        assert_eq!(e.position.map(|p| p.0), Some(3));
        assert_eq!(offset_of("ab\ncé d", 2, 3), 6);
        assert_eq!(offset_of("ab", 9, 1), 2);
    }
}
