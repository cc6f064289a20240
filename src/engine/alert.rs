//! Alerts: what a match or a timeout becomes, in the JSON every sink receives
//! (product.md section 7).

use std::sync::Arc;

use chrono::SecondsFormat;
use serde_json::{Map, Value as Json};

use crate::compile::hir::{EmitDef, Program, Severity};
use crate::compile::nfa::{Nfa, fmt_duration};
use crate::event::{Nanos, Value};

use super::buffer::Buffer;
use super::eval::{self, Ctx};
use super::run::{Found, FoundKind};

/// An alert, ready for the sinks.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Stable id: a hash of the rule, key, kind and matched events.
    pub id: String,
    /// Rule name.
    pub rule: Arc<str>,
    /// Alert name from the emit clause.
    pub name: String,
    /// Match or timeout.
    pub kind: FoundKind,
    /// The key: a value, an object for several key fields, null for a global key.
    pub key: Json,
    /// Severity.
    pub severity: Severity,
    /// Time of the completing event, or the deadline that passed.
    pub event_time: Nanos,
    /// The emit clause's values.
    pub fields: Map<String, Json>,
    /// Matched events per step, in pattern order; steps that took nothing are absent.
    pub events: Map<String, Json>,
}

impl Alert {
    /// The alert as one line of JSON; `emitted_at` is wall-clock time, given by the caller
    /// because the engine never reads the clock.
    pub fn to_json(&self, emitted_at: Option<Nanos>) -> String {
        let mut m = Map::new();
        m.insert("id".into(), Json::String(self.id.clone()));
        m.insert("rule".into(), Json::String(self.rule.to_string()));
        m.insert("name".into(), Json::String(self.name.clone()));
        m.insert(
            "kind".into(),
            Json::String(
                match self.kind {
                    FoundKind::Match => "match",
                    FoundKind::Timeout => "timeout",
                }
                .into(),
            ),
        );
        m.insert("key".into(), self.key.clone());
        m.insert(
            "severity".into(),
            Json::String(self.severity.as_str().into()),
        );
        m.insert("event_time".into(), Json::String(rfc3339(self.event_time)));
        if let Some(t) = emitted_at {
            m.insert("emitted_at".into(), Json::String(rfc3339(t)));
        }
        m.insert("fields".into(), Json::Object(self.fields.clone()));
        m.insert("events".into(), Json::Object(self.events.clone()));
        Json::Object(m).to_string()
    }
}

/// RFC 3339 in UTC with the shortest exact fraction.
pub fn rfc3339(ns: Nanos) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A value as JSON: timestamps as RFC 3339, durations as tern literals (`1m30s`).
pub fn to_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::Int(i) => Json::from(*i),
        Value::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Value::Str(s) => Json::String(s.to_string()),
        Value::Timestamp(t) => Json::String(rfc3339(*t)),
        Value::Duration(d) => Json::String(fmt_duration(*d)),
    }
}

/// A value as text (for `string(x)` and readable output).
pub fn display_value(v: &Value) -> String {
    match v {
        Value::Str(s) => s.to_string(),
        other => match to_json(other) {
            Json::String(s) => s,
            j => j.to_string(),
        },
    }
}

/// The alert for a match or timeout of `nfa`'s rule.
pub fn build(
    program: &Program,
    nfa: &Nfa,
    buffer: &Buffer,
    found: &Found,
    key: &Value,
    key_json: &Json,
) -> Alert {
    let rule = &nfa.rule;
    let emit: &EmitDef = match found.kind {
        FoundKind::Timeout => rule.on_timeout.as_ref().unwrap_or(&rule.emit),
        FoundKind::Match => &rule.emit,
    };
    let ctx = Ctx {
        candidate: None,
        buffer,
        tail: found.tail,
        key,
        accumulated: &[],
        key_fields: &[],
    };
    let mut fields = Map::new();
    for (name, e) in &emit.fields {
        fields.insert(name.clone(), to_json(&eval::eval(e, &ctx)));
    }
    let chain = buffer.chain(found.tail);
    let mut events = Map::new();
    let mut hasher = Fnv::new();
    hasher.str(&rule.name);
    hasher.str(&key_json.to_string());
    hasher.str(match found.kind {
        FoundKind::Match => "match",
        FoundKind::Timeout => "timeout",
    });
    for (vi, var) in rule.vars.iter().enumerate() {
        let schema = program.stream(var.stream);
        let list: Vec<Json> = chain
            .iter()
            .filter(|e| e.var.0 as usize == vi)
            .map(|e| {
                let mut obj = Map::new();
                for (f, v) in schema.fields.iter().zip(e.event.to_values()) {
                    obj.insert(f.name.clone(), to_json(&v));
                }
                Json::Object(obj)
            })
            .collect();
        if !list.is_empty() {
            events.insert(var.name.clone(), Json::Array(list));
        }
    }
    for e in &chain {
        hasher.u64(u64::from(e.seq));
        hasher.u64(e.event.time() as u64);
        hasher.u64(u64::from(e.var.0));
        for v in e.event.to_values() {
            hasher.str(&to_json(&v).to_string());
        }
    }
    if chain.is_empty() {
        hasher.u64(found.time as u64);
    }
    Alert {
        id: hasher.finish_hex(),
        rule: Arc::from(rule.name.as_str()),
        name: emit.name.clone(),
        kind: found.kind,
        key: key_json.clone(),
        severity: emit.severity,
        event_time: found.time,
        fields,
        events,
    }
}

/// 128-bit FNV-1a, as two independent 64-bit lanes: stable across builds and platforms.
struct Fnv(u64, u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325, 0x8422_2325_cbf2_9ce4)
    }
    fn byte(&mut self, b: u8) {
        self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        self.1 = (self.1 ^ u64::from(b.rotate_left(3))).wrapping_mul(0x0000_0100_0000_01b3);
    }
    fn str(&mut self, s: &str) {
        for b in s.bytes() {
            self.byte(b);
        }
        self.byte(0xff);
    }
    fn u64(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.byte(b);
        }
    }
    fn finish_hex(&self) -> String {
        format!("{:016x}{:016x}", self.0, self.1)
    }
}
