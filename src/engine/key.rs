//! Keys: the values of a rule's key fields, hashable, as they index per-key state.

use arcstr::ArcStr;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde_json::{Map, Value as Json};

use crate::event::{Event, Value};

use super::alert::to_json;

/// A key value that can index a map (floats by their bits).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HashValue(pub Value);

impl PartialEq for HashValue {
    fn eq(&self, o: &Self) -> bool {
        match (&self.0, &o.0) {
            (Value::Float(a), Value::Float(b)) => a.to_bits() == b.to_bits(),
            (a, b) => a == b,
        }
    }
}
impl Eq for HashValue {}

impl Hash for HashValue {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.borrowed().hash_into(h);
    }
}

impl PartialOrd for HashValue {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for HashValue {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Only needed to order timers deterministically; any total order will do.
        super::eval::compare(&self.0, &o.0).unwrap_or_else(|| rank(&self.0).cmp(&rank(&o.0)))
    }
}

fn rank(v: &Value) -> u8 {
    match v {
        Value::Null => 0,
        Value::Bool(_) => 1,
        Value::Int(_) => 2,
        Value::Float(_) => 3,
        Value::Str(_) => 4,
        Value::Timestamp(_) => 5,
        Value::Duration(_) => 6,
    }
}

/// The key of a (rule, event): no fields, one, or several.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum KeyVal {
    /// The rule has no key clause.
    Global,
    /// One key field.
    One(HashValue),
    /// Several key fields, in the order of the key clause (behind a thin pointer, so a key
    /// is 16 bytes: it is in every key's slot).
    Many(Arc<Vec<HashValue>>),
}

impl KeyVal {
    /// The key of `event` given the indices of its key fields.
    pub fn of(event: &Event, fields: &[u16]) -> KeyVal {
        let get = |i: &u16| HashValue(event.value(*i as usize));
        match fields {
            [] => KeyVal::Global,
            [one] => KeyVal::One(get(one)),
            many => KeyVal::Many(Arc::new(many.iter().map(get).collect())),
        }
    }

    /// The key as rules see it (`key`): the value, or the values joined by `/`.
    pub fn value(&self) -> Value {
        match self {
            KeyVal::Global => Value::Str(ArcStr::from("")),
            KeyVal::One(v) => v.0.clone(),
            KeyVal::Many(vs) => {
                let parts: Vec<String> = vs
                    .iter()
                    .map(|v| super::alert::display_value(&v.0))
                    .collect();
                Value::Str(ArcStr::from(parts.join("/")))
            }
        }
    }

    /// [`KeyVal::value`], borrowed where it can be (a single key field).
    pub fn value_ref(&self) -> std::borrow::Cow<'_, Value> {
        match self {
            KeyVal::One(v) => std::borrow::Cow::Borrowed(&v.0),
            other => std::borrow::Cow::Owned(other.value()),
        }
    }

    /// The key in alerts: the value, an object for several fields, null for a global key.
    pub fn to_json(&self, names: &[String]) -> Json {
        match self {
            KeyVal::Global => Json::Null,
            KeyVal::One(v) => to_json(&v.0),
            KeyVal::Many(vs) => {
                let mut m = Map::new();
                for (n, v) in names.iter().zip(vs.iter()) {
                    m.insert(n.clone(), to_json(&v.0));
                }
                Json::Object(m)
            }
        }
    }

    /// Heap bytes owned by the key (strings are shared with events; counted here once).
    pub fn heap_bytes(&self) -> usize {
        fn one(v: &HashValue) -> usize {
            match &v.0 {
                // The string's block: two counters and the bytes.
                Value::Str(s) => crate::alloc::block_size(s.len() + 16),
                _ => 0,
            }
        }
        match self {
            KeyVal::Global => 0,
            KeyVal::One(v) => one(v),
            // The Arc's counts, the vector, its values.
            KeyVal::Many(vs) => {
                vs.iter().map(one).sum::<usize>()
                    + 16
                    + std::mem::size_of::<Vec<HashValue>>()
                    + vs.capacity() * std::mem::size_of::<HashValue>()
            }
        }
    }
}
