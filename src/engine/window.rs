//! Aggregate streams: tumbling and sliding window aggregates per key. A window `[start, end)`
//! closes when time reaches `end`; its output is an event of the aggregate's stream at time
//! `end`, fed to rules like any other event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use crate::compile::hir::{AggFunc, Aggregate};
use crate::event::{Event, Nanos, Value};

use super::buffer::{Buffer, NIL};
use super::eval::{self, Ctx, compare};
use super::key::KeyVal;

/// One running aggregate.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Acc {
    Count(i64),
    Sum {
        int: i64,
        float: f64,
        n: u64,
        all_int: bool,
        duration: bool,
    },
    Pick(Option<Value>),
}

impl Acc {
    fn new(func: AggFunc) -> Acc {
        match func {
            AggFunc::Count => Acc::Count(0),
            AggFunc::Sum | AggFunc::Avg => Acc::Sum {
                int: 0,
                float: 0.0,
                n: 0,
                all_int: true,
                duration: false,
            },
            _ => Acc::Pick(None),
        }
    }

    fn add(&mut self, func: AggFunc, v: Value) {
        match self {
            Acc::Count(n) => {
                if !v.is_null() {
                    *n += 1;
                }
            }
            Acc::Sum {
                int,
                float,
                n,
                all_int,
                duration,
            } => match v {
                Value::Int(i) => {
                    *int = int.wrapping_add(i);
                    *float += i as f64;
                    *n += 1;
                }
                Value::Float(f) => {
                    *all_int = false;
                    *float += f;
                    *n += 1;
                }
                Value::Duration(d) => {
                    *duration = true;
                    *int = int.wrapping_add(d);
                    *float += d as f64;
                    *n += 1;
                }
                _ => {}
            },
            Acc::Pick(cur) => {
                if v.is_null() {
                    return;
                }
                let replace = match (&*cur, func) {
                    (None, _) => true,
                    (Some(_), AggFunc::First) => false,
                    (Some(_), AggFunc::Last) => true,
                    (Some(c), AggFunc::Min) => compare(&v, c).is_some_and(|o| o.is_lt()),
                    (Some(c), AggFunc::Max) => compare(&v, c).is_some_and(|o| o.is_gt()),
                    _ => false,
                };
                if replace {
                    *cur = Some(v);
                }
            }
        }
    }

    fn value(&self, func: AggFunc) -> Value {
        match self {
            Acc::Count(n) => Value::Int(*n),
            Acc::Sum {
                int,
                float,
                n,
                all_int,
                duration,
            } => {
                if *n == 0 {
                    return Value::Null;
                }
                match (func, *duration, *all_int) {
                    (AggFunc::Sum, true, _) => Value::Duration(*int),
                    (AggFunc::Sum, false, true) => Value::Int(*int),
                    (AggFunc::Sum, false, false) => Value::Float(*float),
                    (_, true, _) => Value::Duration((*float / *n as f64) as i64),
                    _ => Value::Float(*float / *n as f64),
                }
            }
            Acc::Pick(v) => v.clone().unwrap_or(Value::Null),
        }
    }
}

/// One key's open windows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KeyWindows {
    key_values: Vec<Value>,
    /// Open windows by end time.
    open: BTreeMap<Nanos, Vec<Acc>>,
}

/// The running state of one aggregate.
pub struct AggRuntime {
    def: Aggregate,
    fingerprint: u64,
    keys: HashMap<KeyVal, KeyWindows>,
    closes: BinaryHeap<Reverse<(Nanos, KeyVal)>>,
    empty: Buffer,
}

impl AggRuntime {
    /// State for one aggregate definition.
    pub fn new(def: Aggregate) -> AggRuntime {
        AggRuntime {
            fingerprint: super::persist::fingerprint(&def),
            def,
            keys: HashMap::new(),
            closes: BinaryHeap::new(),
            empty: Buffer::default(),
        }
    }

    /// The definition.
    pub fn def(&self) -> &Aggregate {
        &self.def
    }

    /// Earliest window end still open.
    pub fn next_close(&self) -> Option<Nanos> {
        self.closes.peek().map(|Reverse((t, _))| *t)
    }

    /// A stable hash of the definition: stored windows of another definition are dropped.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// A key's open windows.
    pub fn windows(&self, key: &KeyVal) -> Option<&KeyWindows> {
        self.keys.get(key)
    }

    /// Puts back a key's open windows (loading state).
    pub fn restore(&mut self, key: KeyVal, windows: KeyWindows) {
        for end in windows.open.keys() {
            self.closes.push(Reverse((*end, key.clone())));
        }
        self.keys.insert(key, windows);
    }

    /// Adds a source event to every window that contains its time; returns its key.
    pub fn add(&mut self, event: &Event) -> KeyVal {
        let key = KeyVal::of(event, &self.def.key);
        let size = self.def.size;
        let every = self.def.every.max(1);
        let entry = self.keys.entry(key.clone()).or_insert_with(|| KeyWindows {
            key_values: self
                .def
                .key
                .iter()
                .map(|i| event.value(*i as usize))
                .collect(),
            open: BTreeMap::new(),
        });
        // Window ends on the `every` grid with end - size <= t < end.
        let first_end = event
            .time()
            .div_euclid(every)
            .saturating_add(1)
            .saturating_mul(every);
        let mut end = first_end;
        let ctx = Ctx {
            candidate: Some(event),
            buffer: &self.empty,
            tail: NIL,
            key: &Value::Null,
            accumulated: &[],
            key_fields: &[],
        };
        while end.saturating_sub(size) <= event.time() {
            let accs = entry.open.entry(end).or_insert_with(|| {
                self.closes.push(Reverse((end, key.clone())));
                self.def
                    .accumulators
                    .iter()
                    .map(|a| Acc::new(a.func))
                    .collect()
            });
            for (acc, def) in accs.iter_mut().zip(&self.def.accumulators) {
                let v = match &def.arg {
                    Some(arg) => eval::eval(arg, &ctx),
                    None => Value::Bool(true),
                };
                acc.add(def.func, v);
            }
            end = end.saturating_add(every);
            if end == Nanos::MAX {
                break;
            }
        }
        key
    }

    /// Closes every window ending at or before `t`; returns the output events' fields.
    pub fn close_due(&mut self, t: Nanos, touched: &mut Vec<KeyVal>) -> Vec<Box<[Value]>> {
        let mut out = Vec::new();
        while let Some(Reverse((end, _))) = self.closes.peek() {
            if *end > t {
                break;
            }
            let Some(Reverse((end, key))) = self.closes.pop() else {
                break;
            };
            let Some(kw) = self.keys.get_mut(&key) else {
                continue;
            };
            let Some(accs) = kw.open.remove(&end) else {
                continue;
            };
            touched.push(key.clone());
            let accumulated: Vec<Value> = accs
                .iter()
                .zip(&self.def.accumulators)
                .map(|(a, d)| a.value(d.func))
                .collect();
            let ctx = Ctx {
                candidate: None,
                buffer: &self.empty,
                tail: NIL,
                key: &Value::Null,
                accumulated: &accumulated,
                key_fields: &kw.key_values,
            };
            let mut fields: Vec<Value> = kw.key_values.clone();
            fields.push(Value::Timestamp(end.saturating_sub(self.def.size)));
            fields.push(Value::Timestamp(end));
            for (_, e) in &self.def.select {
                fields.push(eval::eval(e, &ctx));
            }
            out.push(fields.into_boxed_slice());
            if kw.open.is_empty() {
                self.keys.remove(&key);
            }
        }
        out
    }
}
