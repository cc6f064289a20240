//! Text to AST, with no semantics: spans, the AST, the parser, the printer and diagnostics.
//!
//! `parse` never panics and never stops at the first error: it recovers at the next item
//! and returns every diagnostic together with the items it could read.

pub mod ast;
pub mod codes;
pub mod diagnostic;
pub mod parser;
pub mod print;
pub mod render;
pub mod source;
pub mod span;
pub mod suggest;
pub mod toml_error;

pub use diagnostic::{Diagnostic, FileId};
pub use parser::parse;
