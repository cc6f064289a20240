//! The engine's trace ([`crate::engine::trace`]) in the rule author's words.
//!
//! The engine gives a run a new id each time it takes an event; here a run keeps its number
//! for as long as it advances, and a branch gets a new one, so `run #2` is one partial match
//! from its first event to its end. Steps are named as `tern explain` names NFA states:
//! `slow#2` is the second event taken by step `slow`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value as Json, json};

use crate::compile::hir::{Program, Skip};
use crate::compile::nfa::{self, Nfa, StateId, fmt_duration};
use crate::engine::alert::{Alert, rfc3339, to_json};
use crate::engine::run::{FoundKind, RunId};
use crate::engine::trace::{Reason, Record, What};
use crate::event::Nanos;

/// One line of a narrated trace: a header (an event, or time passing) or a happening under it.
#[derive(Debug, Clone)]
pub struct Line {
    /// The rule.
    pub rule: Arc<str>,
    /// The key, as alerts show it.
    pub key: Json,
    /// True for the event (or time) line that the happenings below it belong to.
    pub header: bool,
    /// For people.
    pub text: String,
    /// For tools (one JSON Lines record).
    pub json: Json,
}

/// A run across the key's lifetimes: (epoch, engine run id).
type RunKey = (u32, RunId);
/// How far a run got: (step index in pattern order, events taken).
type Rank = (i64, u32);

/// Per (rule, key): run numbers as the author sees them, and how far the pattern got.
#[derive(Default)]
struct KeyTrack {
    /// (epoch, engine run id) -> (display number, state, events taken).
    runs: HashMap<RunKey, (u32, StateId, u32)>,
    /// Bumped when the key's state starts afresh (the engine reuses run ids then).
    epoch: u32,
    next: u32,
    events: u32,
    now: Nanos,
    /// The current block is time passing, not an event.
    timed: bool,
    /// The run that got furthest: (rank, run, time of its last take).
    best: Option<(Rank, RunKey, Nanos)>,
    /// How each run ended: (time, words).
    fates: HashMap<RunKey, (Nanos, String)>,
}

impl KeyTrack {
    fn id(&self, run: RunId) -> RunKey {
        (self.epoch, run)
    }

    fn display(&mut self, run: RunId) -> u32 {
        if let Some(r) = self.runs.get(&self.id(run)) {
            return r.0;
        }
        self.next += 1;
        self.runs.insert(self.id(run), (self.next, 0, 0));
        self.next
    }

    fn taken(&self, run: RunId) -> u32 {
        self.runs.get(&self.id(run)).map_or(0, |r| r.2)
    }
}

/// Narrates traces of one program, keeping run numbers across calls.
pub struct Narrator {
    program: Arc<Program>,
    nfas: HashMap<String, Nfa>,
    keys: HashMap<(Arc<str>, String), KeyTrack>,
}

impl Narrator {
    /// A narrator for the rules of `program`.
    pub fn new(program: Arc<Program>) -> Narrator {
        let nfas = program
            .rules
            .iter()
            .filter_map(|r| {
                nfa::compile(Arc::clone(r))
                    .ok()
                    .map(|n| (r.name.clone(), n))
            })
            .collect();
        Narrator {
            program,
            nfas,
            keys: HashMap::new(),
        }
    }

    /// Lines for `records`, in order. `alerts` are the alerts the engine emitted while it
    /// made these records, in order: each `Emitted` record takes the next one.
    pub fn lines(
        &mut self,
        records: &[Record],
        alerts: &mut std::collections::VecDeque<Alert>,
    ) -> Vec<Line> {
        let mut out = Vec::new();
        for r in records {
            let alert = match r.what {
                What::Emitted { .. } => alerts.pop_front(),
                _ => None,
            };
            if let Some(line) = self.line(r, alert) {
                out.push(line);
            }
        }
        out
    }

    fn line(&mut self, r: &Record, alert: Option<Alert>) -> Option<Line> {
        let nfa = self.nfas.get(&*r.rule)?;
        let program = &self.program;
        let track = self
            .keys
            .entry((Arc::clone(&r.rule), r.key.to_string()))
            .or_default();
        let step = |s: StateId| nfa.state_name(s);
        let mut header = false;
        let (what, text, mut extra): (&str, String, Map<String, Json>) = match &r.what {
            What::Event { event, seq } => {
                header = true;
                if *seq == 0 {
                    track.epoch += 1;
                }
                track.events += 1;
                track.now = event.time();
                track.timed = false;
                let schema = program.stream(crate::compile::hir::StreamId(event.stream()));
                let mut fields = Map::new();
                let mut shown = Vec::new();
                for (i, (f, v)) in schema.fields.iter().zip(event.to_values()).enumerate() {
                    fields.insert(f.name.clone(), to_json(&v));
                    if i != schema.time_field {
                        shown.push(format!("{}={}", f.name, to_json(&v)));
                    }
                }
                let mut m = Map::new();
                m.insert("stream".into(), Json::String(schema.name.clone()));
                m.insert("fields".into(), Json::Object(fields));
                (
                    "event",
                    format!(
                        "{}  {} {}  {}",
                        rfc3339(event.time()),
                        schema.name,
                        key_text(&r.key),
                        shown.join(" ")
                    ),
                    m,
                )
            }
            What::Time { now } => {
                header = true;
                track.now = *now;
                track.timed = true;
                (
                    "time",
                    format!("{}  time passes, {}", rfc3339(*now), key_text(&r.key)),
                    Map::new(),
                )
            }
            What::Started { run, state } => {
                track.runs.remove(&track.id(*run));
                let d = track.display(*run);
                track.runs.insert(track.id(*run), (d, *state, 1));
                consider(track, nfa, *run, *state, 1);
                (
                    "started",
                    format!("run #{d} started: the event is `{}`", step(*state)),
                    ids(d, None, Some(step(*state))),
                )
            }
            What::Advanced { from, run, state } => {
                let d = track.display(*from);
                let taken = track.taken(*from) + 1;
                track.runs.insert(track.id(*run), (d, *state, taken));
                consider(track, nfa, *run, *state, taken);
                (
                    "advanced",
                    format!("run #{d} advanced: the event is `{}`", step(*state)),
                    ids(d, None, Some(step(*state))),
                )
            }
            What::Branched { from, run, state } => {
                let parent = track.display(*from);
                let taken = track.taken(*from) + 1;
                track.next += 1;
                let d = track.next;
                track.runs.insert(track.id(*run), (d, *state, taken));
                consider(track, nfa, *run, *state, taken);
                (
                    "branched",
                    format!(
                        "run #{d} branched from run #{parent}: the event is `{}`; run #{parent} waits on",
                        step(*state)
                    ),
                    ids(d, Some(parent), Some(step(*state))),
                )
            }
            What::Skipped { run, state } => {
                let d = track.display(*run);
                (
                    "skipped",
                    format!(
                        "run #{d} (at `{}`) lets the event pass: waiting for {}",
                        step(*state),
                        waiting_for(nfa, *state)
                    ),
                    ids(d, None, Some(step(*state))),
                )
            }
            What::Completed { run, state, time } => {
                let d = track.display(*run);
                let absence = matches!(
                    nfa.states.get(*state as usize).map(|s| &s.complete),
                    Some(nfa::Completion::Absence(_))
                ) && track.timed;
                let words = if absence {
                    "time passed its deadline without the negated event".to_string()
                } else {
                    "the pattern is complete".to_string()
                };
                track
                    .fates
                    .insert(track.id(*run), (*time, "completed".to_string()));
                (
                    "completed",
                    format!("run #{d} completed at `{}`: {words}", step(*state)),
                    ids(d, None, Some(step(*state))),
                )
            }
            What::Held { run } => {
                let d = track.display(*run);
                (
                    "held",
                    format!(
                        "run #{d}'s match is held: a run that started earlier is still alive ({})",
                        skip_text(nfa)
                    ),
                    ids(d, None, None),
                )
            }
            What::TimedOut { run, state, reason } => {
                let d = track.display(*run);
                let why = reason_text(program, nfa, reason, track);
                track.fates.insert(
                    track.id(*run),
                    (
                        deadline_of(reason).unwrap_or(track.now),
                        format!("timed out: {why}"),
                    ),
                );
                (
                    "timed_out",
                    format!("run #{d} timed out at `{}`: {why}", step(*state)),
                    ids(d, None, Some(step(*state))),
                )
            }
            What::Ended { run, state, reason } => {
                let d = track.display(*run);
                let why = reason_text(program, nfa, reason, track);
                let at = deadline_of(reason).unwrap_or(track.now);
                track
                    .fates
                    .insert(track.id(*run), (at, format!("dropped: {why}")));
                let mut m = ids(d, None, Some(step(*state)));
                m.insert("reason".into(), reason_json(reason));
                (
                    "dropped",
                    format!("run #{d} dropped at `{}`: {why}", step(*state)),
                    m,
                )
            }
            What::Discarded { run, by } => {
                let d = track.display(*run);
                let b = track.display(*by);
                track.fates.insert(
                    track.id(*run),
                    (
                        track.now,
                        format!("its match was discarded by run #{b}'s ({})", skip_text(nfa)),
                    ),
                );
                (
                    "discarded",
                    format!(
                        "run #{d}'s held match is discarded: run #{b}'s match came first ({})",
                        skip_text(nfa)
                    ),
                    ids(d, None, None),
                )
            }
            What::Emitted { run, kind, time } => {
                let d = track.display(*run);
                let kind_word = match kind {
                    FoundKind::Match => "match",
                    FoundKind::Timeout => "timeout",
                };
                let mut m = ids(d, None, None);
                let mut text = format!("alert ({kind_word}) from run #{d} at {}", rfc3339(*time));
                if let Some(a) = &alert {
                    let j: Json = serde_json::from_str(&a.to_json(None)).unwrap_or(Json::Null);
                    text.push_str(&format!(": {} {}", a.name, Json::Object(a.fields.clone())));
                    m.insert("alert".into(), j);
                }
                ("alert", text, m)
            }
        };
        let time = track.now;
        let mut json = Map::new();
        json.insert("what".into(), Json::String(what.into()));
        json.insert("rule".into(), Json::String(r.rule.to_string()));
        json.insert("key".into(), r.key.clone());
        json.insert("time".into(), Json::String(rfc3339(time)));
        json.append(&mut extra);
        json.insert("text".into(), Json::String(text.clone()));
        Some(Line {
            rule: Arc::clone(&r.rule),
            key: r.key.clone(),
            header,
            text,
            json: Json::Object(json),
        })
    }

    /// How far `rule`'s pattern got for `key` (from everything narrated so far), in one
    /// sentence: the step its furthest run reached, and what became of that run.
    pub fn how_far(&self, rule: &str, key: &Json) -> String {
        let Some(nfa) = self.nfas.get(rule) else {
            return format!("no rule `{rule}` in this run");
        };
        let k = key_text(key);
        let Some(track) = self.keys.get(&(Arc::from(rule), key.to_string())) else {
            return format!("no event with {k} reached rule `{rule}`");
        };
        let Some(((_, taken), id, last)) = track.best else {
            let first: Vec<String> = nfa.states[0]
                .waits
                .iter()
                .map(|w| format!("`{}`", var_name(nfa, w.target)))
                .collect();
            return format!(
                "for {k}, no run started: none of its {} event{} satisfied the first step {}",
                track.events,
                if track.events == 1 { "" } else { "s" },
                first.join(" or ")
            );
        };
        let state = track.runs.get(&id).map_or(0, |r| r.1);
        let d = track.runs.get(&id).map_or(0, |r| r.0);
        let var = nfa.states.get(state as usize).and_then(|s| s.var);
        let steps = nfa.rule.vars.len();
        let index = var.map_or(0, |v| usize::from(v.0) + 1);
        let fate = match track.fates.get(&id) {
            Some((at, words)) => match words.split_once(": ") {
                Some((verb, why)) => format!("{verb} at {}: {why}", rfc3339(*at)),
                None => format!("{words} at {}", rfc3339(*at)),
            },
            None => format!(
                "still waiting at the end of the events, for {}",
                waiting_for(nfa, state)
            ),
        };
        format!(
            "for {k} the pattern got to step `{}` ({index} of {steps}; run #{d}, {taken} event{} taken, the last at {}); {fate}",
            var_name(nfa, state),
            if taken == 1 { "" } else { "s" },
            rfc3339(last),
        )
    }

    /// Keys of `rule` seen so far, in the order first seen is not kept: sorted by text.
    pub fn keys_of(&self, rule: &str) -> Vec<Json> {
        let mut keys: Vec<Json> = self
            .keys
            .keys()
            .filter(|(r, _)| &**r == rule)
            .filter_map(|(_, k)| serde_json::from_str(k).ok())
            .collect();
        keys.sort_by_key(|k| k.to_string());
        keys
    }
}

/// Records a run as the furthest so far when it is (by step in pattern order, then events).
fn consider(track: &mut KeyTrack, nfa: &Nfa, run: RunId, state: StateId, taken: u32) {
    let var = nfa
        .states
        .get(state as usize)
        .and_then(|s| s.var)
        .map_or(-1, |v| i64::from(v.0));
    let rank = (var, taken);
    if track.best.is_none_or(|(b, _, _)| rank >= b) {
        track.best = Some((rank, track.id(run), track.now));
    }
}

fn ids(run: u32, from: Option<u32>, step: Option<String>) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("run".into(), json!(run));
    if let Some(f) = from {
        m.insert("from".into(), json!(f));
    }
    if let Some(s) = step {
        m.insert("step".into(), Json::String(s));
    }
    m
}

/// The key as a reader sees it: `key cam-7`, `key {"line":"A"}`, `the global key`.
pub fn key_text(key: &Json) -> String {
    match key {
        Json::Null => "the global key".to_string(),
        Json::String(s) => format!("key {s}"),
        other => format!("key {other}"),
    }
}

fn var_name(nfa: &Nfa, state: StateId) -> String {
    nfa.states
        .get(state as usize)
        .and_then(|s| s.var)
        .and_then(|v| nfa.rule.vars.get(usize::from(v.0)))
        .map_or_else(|| "start".to_string(), |v| v.name.clone())
}

/// The steps a run in `state` may take next: "`slow#2`, `third#1`".
fn waiting_for(nfa: &Nfa, state: StateId) -> String {
    let mut names: Vec<String> = Vec::new();
    if let Some(s) = nfa.states.get(state as usize) {
        for w in &s.waits {
            let n = format!("`{}`", nfa.state_name(w.target));
            if !names.contains(&n) {
                names.push(n);
            }
        }
        if let nfa::Completion::Absence(_) = s.complete {
            names.push("the deadline (absence)".to_string());
        }
    }
    if names.is_empty() {
        "nothing more".to_string()
    } else {
        names.join(", ")
    }
}

fn skip_text(nfa: &Nfa) -> String {
    let var = |v: crate::compile::hir::VarId| {
        nfa.rule
            .vars
            .get(usize::from(v.0))
            .map_or("?", |x| x.name.as_str())
    };
    match nfa.rule.skip {
        Skip::None => "no skip".to_string(),
        Skip::ToNext => "skip to next".to_string(),
        Skip::PastLast => "skip past last".to_string(),
        Skip::ToFirst(v) => format!("skip to first {}", var(v)),
        Skip::ToLast(v) => format!("skip to last {}", var(v)),
    }
}

fn deadline_of(reason: &Reason) -> Option<Nanos> {
    match reason {
        Reason::Within { deadline } | Reason::StepBound { deadline } => Some(*deadline),
        _ => None,
    }
}

/// Why a run ended, in words.
fn reason_text(program: &Program, nfa: &Nfa, reason: &Reason, track: &KeyTrack) -> String {
    match reason {
        Reason::Strict { step, other_stream } => {
            if *other_stream {
                format!(
                    "strict contiguity: the next event is from another stream than `{}`'s",
                    nfa.state_name(*step)
                )
            } else {
                format!(
                    "strict contiguity: the next event does not satisfy `{}` (condition false)",
                    nfa.state_name(*step)
                )
            }
        }
        Reason::Negation { name, stream } => {
            let s = &program.stream(*stream).name;
            match name {
                Some(n) => format!("negation seen: the event is `{n}` ({s})"),
                None => format!("negation seen: the event is a negated `{s}` event"),
            }
        }
        Reason::Until { step } => {
            format!("the `until` condition of `{}` held", var_name(nfa, *step))
        }
        Reason::Greedy => "a greedy loop took the event instead".to_string(),
        Reason::Within { deadline } => format!(
            "within {} passed{}",
            nfa.rule.within.map_or_else(String::new, fmt_duration),
            if track.timed {
                String::new()
            } else {
                format!(" at {}", rfc3339(*deadline))
            }
        ),
        Reason::StepBound { .. } => "the bound between steps passed".to_string(),
        Reason::Skip { by } => {
            let b = track.runs.get(&track.id(*by)).map_or(0, |r| r.0);
            format!("{} after run #{b}'s match", skip_text(nfa))
        }
    }
}

fn reason_json(reason: &Reason) -> Json {
    match reason {
        Reason::Strict { other_stream, .. } => {
            json!({"kind": "strict", "other_stream": other_stream})
        }
        Reason::Negation { name, .. } => json!({"kind": "negation", "name": name}),
        Reason::Until { .. } => json!({"kind": "until"}),
        Reason::Greedy => json!({"kind": "greedy"}),
        Reason::Within { deadline } => json!({"kind": "within", "deadline": rfc3339(*deadline)}),
        Reason::StepBound { deadline } => {
            json!({"kind": "step_bound", "deadline": rfc3339(*deadline)})
        }
        Reason::Skip { .. } => json!({"kind": "skip"}),
    }
}
