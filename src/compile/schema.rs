//! Stream schemas: the typed fields rules are checked against, wherever they were declared
//! (a `stream` in a rule file, an `aggregate`, or a device profile).

use serde::Serialize;

use crate::lang::FileId;
use crate::lang::ast::TypeName;
use crate::lang::span::Span;

/// A field's type: a base type and whether it may be null.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct FieldType {
    /// Base type.
    pub base: TypeName,
    /// May be null (missing from a payload, or declared with `?`).
    pub nullable: bool,
}

/// One field of a stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldSchema {
    /// Name as rules write it.
    pub name: String,
    /// Its type.
    pub ty: FieldType,
    /// Where it was declared.
    pub origin: Origin,
}

/// Where a declaration was written, for secondary labels ("declared here").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The file.
    pub file: FileId,
    /// The span in it.
    pub span: Span,
}

/// How a stream came to exist.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum StreamKind {
    /// `stream` declaration in a rule file.
    Declared,
    /// A device profile (`devices/NAME.toml`).
    Device {
        /// Profile name.
        profile: String,
    },
    /// An `aggregate` declaration.
    Aggregate,
}

/// A typed stream.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamSchema {
    /// Stream name.
    pub name: String,
    /// Fields in order; events store values in this order.
    pub fields: Vec<FieldSchema>,
    /// Index of the event-time field (type timestamp).
    pub time_field: usize,
    /// Fields that key a device's readings by default (from a profile), in order.
    pub default_key: Vec<usize>,
    /// Allowed out-of-orderness, nanoseconds.
    pub lateness: i64,
    /// Idle timeout after which wall-clock time advances the stream, nanoseconds; 0 = never.
    pub idle: i64,
    /// Where it was declared.
    pub origin: Origin,
    /// Declared, device or aggregate.
    pub kind: StreamKind,
}

impl StreamSchema {
    /// Index of a field by name.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// Field names, for suggestions.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }
}
