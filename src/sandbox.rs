//! The one rhai sandbox: device decoder scripts and user functions in rule files both run in
//! an engine built here, so they share its guarantees.

use rhai::Engine;
use rhai::packages::{
    BasicArrayPackage, BasicMapPackage, BasicMathPackage, BitFieldPackage, CorePackage,
    LogicPackage, MoreStringPackage, Package,
};

/// Most operations one call may cost: generous for a decoder or a unit conversion, small
/// enough that an endless loop fails within a few milliseconds.
pub const MAX_OPERATIONS: u64 = 100_000;
/// Longest string a script may build, in bytes.
pub const MAX_STRING_SIZE: usize = 64 * 1024;
/// Longest array a script may build.
pub const MAX_ARRAY_SIZE: usize = 10_000;
/// Largest map a script may build.
pub const MAX_MAP_SIZE: usize = 1_000;
/// Deepest expression nesting (at top level, inside functions).
pub const MAX_EXPR_DEPTHS: (usize, usize) = (64, 32);

/// A sandboxed engine allowing `call_levels` nested calls.
///
/// `new_raw` has no module resolver (no `import` from files), no print/debug output and no
/// packages; the ones added here have no clock, no random numbers and no I/O, so a script's
/// result depends on its inputs only (a replay gives what the live run gave). `eval` would
/// compile text at run time and `import` has nothing to import: both are disabled. Strict
/// variables make a misspelt name a load-time error instead of a failure per message.
pub fn engine(call_levels: usize) -> Engine {
    let mut engine = Engine::new_raw();
    CorePackage::new().register_into_engine(&mut engine);
    LogicPackage::new().register_into_engine(&mut engine);
    BasicMathPackage::new().register_into_engine(&mut engine);
    BasicArrayPackage::new().register_into_engine(&mut engine);
    BasicMapPackage::new().register_into_engine(&mut engine);
    MoreStringPackage::new().register_into_engine(&mut engine);
    BitFieldPackage::new().register_into_engine(&mut engine);
    engine.disable_symbol("eval");
    engine.disable_symbol("import");
    engine.set_strict_variables(true);
    engine.set_max_operations(MAX_OPERATIONS);
    engine.set_max_call_levels(call_levels);
    engine.set_max_string_size(MAX_STRING_SIZE);
    engine.set_max_array_size(MAX_ARRAY_SIZE);
    engine.set_max_map_size(MAX_MAP_SIZE);
    engine.set_max_expr_depths(MAX_EXPR_DEPTHS.0, MAX_EXPR_DEPTHS.1);
    engine
}
