//! Per-key evaluation in event time.
//!
//! The [`Engine`] owns the compiled rules and their per-key states. Events go into a reorder
//! buffer and come out in (time, arrival) order once the watermark passes them; timers
//! (whole-match bounds, step bounds, absences, window ends) fire in deadline order between
//! them, before any event at the same time (docs/semantics.md §2). The engine never reads the
//! clock: time comes from events, watermarks and whoever drives [`Engine::advance_to`].

pub mod alert;
pub mod buffer;
pub mod eval;
pub mod inline;
pub mod key;
pub mod persist;
pub mod run;
mod table;
pub mod timers;
pub mod trace;
pub mod window;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use crate::compile::hir::{Program, StreamId};
use crate::compile::nfa::{self, CompileError, Nfa};
use crate::event::{Event, Fields, Nanos, Value};

use alert::Alert;
use key::KeyVal;
use persist::Restored;
use run::{Found, KeyState, Scratch};
use table::KeyTable;
use timers::Timers;
use window::AggRuntime;

/// An event that arrived behind its stream's watermark.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "late event: time {} is not after the watermark {} of stream `{stream}`",
    alert::rfc3339(*.time),
    alert::rfc3339(*.watermark)
)]
pub struct Late {
    /// Stream name.
    pub stream: String,
    /// The event's time.
    pub time: Nanos,
    /// The watermark it was behind.
    pub watermark: Nanos,
}

/// Counters for `--stats` and metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Events accepted.
    pub events: u64,
    /// Events rejected as late.
    pub late: u64,
    /// Alerts emitted.
    pub alerts: u64,
    /// Partial matches alive now.
    pub runs: u64,
    /// Most partial matches alive at once.
    pub peak_runs: u64,
    /// Keys holding state now (over all rules).
    pub keys: u64,
}

struct RuleRuntime {
    nfa: Nfa,
    /// Key field indices per input stream.
    key_fields: Vec<(StreamId, Vec<u16>)>,
    /// Each key's slot.
    keys: KeyTable,
    /// Each key's next deadline, with the key's hash in the table (8 bytes where the key
    /// takes 16); equal deadlines fire in the order they were scheduled.
    timers: Timers,
}

/// One key of a rule: the key, its state and its timer, in the rule's slab of slots.
struct Slot {
    /// The key, here rather than beside the index in the table's bucket.
    key: KeyVal,
    state: KeyState,
    /// The deadline of the key's timer in the rule's timers, or [`UNSCHEDULED`].
    scheduled: Nanos,
}

/// No timer for the key (a sentinel rather than an `Option`, to keep the key's state small:
/// deadlines are never this early).
const UNSCHEDULED: Nanos = Nanos::MIN;

impl Slot {
    fn new(key: KeyVal, state: KeyState) -> Slot {
        Slot {
            key,
            state,
            scheduled: UNSCHEDULED,
        }
    }
}

#[derive(Clone, Copy)]
enum Consumer {
    Rule(usize),
    Aggregate(usize),
}

struct Buffered {
    time: Nanos,
    arrival: u64,
    event: Event,
}

/// Events waiting for the watermark, released in (time, arrival) order. Input mostly comes
/// in time order: an event no earlier than the newest waiting one joins a queue in constant
/// time, and only events out of order go to a heap (logarithmic, and cache-hungry with the
/// thousands of same-second events a fleet sends).
#[derive(Default)]
struct Reorder {
    in_order: std::collections::VecDeque<Buffered>,
    out_of_order: BinaryHeap<Reverse<Buffered>>,
}

impl Reorder {
    fn push(&mut self, b: Buffered) {
        if self.in_order.back().is_none_or(|last| *last <= b) {
            self.in_order.push_back(b);
        } else {
            self.out_of_order.push(Reverse(b));
        }
    }

    /// The next event to release, and whether it heads the in-order queue.
    fn next(&self) -> Option<(&Buffered, bool)> {
        match (self.in_order.front(), self.out_of_order.peek()) {
            (Some(a), Some(Reverse(b))) if b < a => Some((b, false)),
            (Some(a), _) => Some((a, true)),
            (None, b) => b.map(|Reverse(b)| (b, false)),
        }
    }

    /// The time of the next event to release.
    fn next_time(&self) -> Option<Nanos> {
        self.next().map(|(b, _)| b.time)
    }

    fn pop(&mut self) -> Option<Buffered> {
        if self.next()?.1 {
            self.in_order.pop_front()
        } else {
            self.out_of_order.pop().map(|Reverse(b)| b)
        }
    }
}

/// Makes the event's key fields share the strings of `key`, the equal key stored in a rule's
/// map (when the event is not shared yet). An event that a key keeps then holds no string of
/// its own: it costs less, and freeing it later touches only the key's string, which the
/// key's lookup has just read, instead of a cold one.
fn adopt_key(event: &mut Event, key: &KeyVal, fields: &[u16]) {
    let adopt = |values: &mut Fields<'_>, field: u16, value: &Value| {
        // The strings are equal: `key` is the table's key equal to this event's.
        if let Value::Str(stored) = value
            && values
                .str_at(field as usize)
                .is_some_and(|mine| !arcstr::ArcStr::ptr_eq(mine, stored))
        {
            values.set(field as usize, Value::Str(stored.clone()));
        }
    };
    match key {
        KeyVal::Global => {}
        KeyVal::One(v) => {
            if let [field] = fields {
                event.unique_fields(|values| adopt(values, *field, &v.0));
            }
        }
        KeyVal::Many(vs) => {
            event.unique_fields(|values| {
                for (field, v) in fields.iter().zip(vs.iter()) {
                    adopt(values, *field, &v.0);
                }
            });
        }
    }
}

impl PartialEq for Buffered {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.arrival) == (o.time, o.arrival)
    }
}
impl Eq for Buffered {}
impl PartialOrd for Buffered {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Buffered {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.time, self.arrival).cmp(&(o.time, o.arrival))
    }
}

/// The streams that rules and aggregates tie together, with their own event time: a reorder
/// buffer, watermarks and timers. Groups do not wait for each other, so a stream with a long
/// `lateness` (or one that starts late) only delays the rules that read it.
struct Group {
    program: Arc<Program>,
    rules: Vec<RuleRuntime>,
    aggregates: Vec<AggRuntime>,
    consumers: Vec<Vec<Consumer>>,
    /// Largest event time seen per stream (`None` before the first event).
    max_seen: Vec<Option<Nanos>>,
    /// Explicit watermark (replay `$watermark` lines).
    forced: Nanos,
    /// Time up to which everything has been released.
    now: Nanos,
    reorder: Reorder,
    arrival: u64,
    scratch: Scratch,
    found: Vec<Found>,
    stats: Stats,
    /// What changed since the last [`Engine::persist`] (tracked only when persisting).
    changes: Option<Box<Changes>>,
    /// What the runs did (recorded only for `explain --input` and `tern test`).
    trace: Option<Box<trace::Trace>>,
}

/// A group's changes since the last write of its state.
#[derive(Default)]
struct Changes {
    keys: HashSet<(usize, KeyVal)>,
    windows: HashSet<(usize, KeyVal)>,
    /// Events added to the reorder buffer, by arrival (removed again if released before the
    /// write, so they are never written).
    added: HashMap<u64, Event>,
    /// Events released that an earlier write stored: (stream, time, arrival).
    released: Vec<(u32, Nanos, u64)>,
    /// Watermarks or time moved.
    time: bool,
}

impl Group {
    /// Compiles the given rules and aggregates of the program (indices into it).
    fn new(
        program: Arc<Program>,
        rule_ids: &[usize],
        agg_ids: &[usize],
    ) -> Result<Group, CompileError> {
        let mut rules = Vec::new();
        let mut consumers = vec![Vec::new(); program.streams.len()];
        for (i, &a) in agg_ids.iter().enumerate() {
            let agg = &program.aggregates[a];
            if let Some(c) = consumers.get_mut(agg.source.0 as usize) {
                c.push(Consumer::Aggregate(i));
            }
        }
        for (i, &r) in rule_ids.iter().enumerate() {
            let rule = &program.rules[r];
            let nfa = nfa::compile(Arc::clone(rule))?;
            let mut key_fields = Vec::new();
            for (s, stream) in rule.streams.iter().enumerate() {
                key_fields.push((*stream, rule.key.get(s).cloned().unwrap_or_default()));
                if let Some(c) = consumers.get_mut(stream.0 as usize) {
                    c.push(Consumer::Rule(i));
                }
            }
            rules.push(RuleRuntime {
                nfa,
                key_fields,
                keys: KeyTable::default(),
                timers: Timers::default(),
            });
        }
        let aggregates = agg_ids
            .iter()
            .map(|&a| AggRuntime::new(program.aggregates[a].clone()))
            .collect();
        Ok(Group {
            max_seen: vec![None; program.streams.len()],
            program,
            rules,
            aggregates,
            consumers,
            forced: Nanos::MIN,
            now: Nanos::MIN,
            reorder: Reorder::default(),
            arrival: 0,
            scratch: Scratch::default(),
            found: Vec::new(),
            stats: Stats::default(),
            changes: None,
            trace: None,
        })
    }

    /// Counters so far.
    fn stats(&self) -> Stats {
        self.stats
    }

    /// The compiled NFA of a rule.
    pub fn nfa(&self, rule: &str) -> Option<&Nfa> {
        self.rules
            .iter()
            .map(|r| &r.nfa)
            .find(|n| n.rule.name == rule)
    }

    /// A stream's watermark: newest time seen minus its lateness minus 1 ns, or the explicit
    /// watermark if that is later.
    pub fn watermark(&self, stream: StreamId) -> Nanos {
        let own = match self.max_seen.get(stream.0 as usize).copied().flatten() {
            Some(max) => {
                let lateness = self.program.stream(stream).lateness;
                max.saturating_sub(lateness).saturating_sub(1)
            }
            None => Nanos::MIN,
        };
        own.max(self.forced).max(self.now)
    }

    /// The time up to which every stream with data has its events: the minimum of their
    /// watermarks.
    fn global_watermark(&self) -> Nanos {
        let mut wm: Option<Nanos> = None;
        for (i, seen) in self.max_seen.iter().enumerate() {
            if seen.is_some() {
                let w = self.watermark(StreamId(i as u32));
                wm = Some(wm.map_or(w, |x| x.min(w)));
            }
        }
        wm.unwrap_or(Nanos::MIN).max(self.forced)
    }

    /// Accepts an event; alerts that become due are passed to `out`.
    pub fn push(&mut self, event: Event, out: &mut dyn FnMut(Alert)) -> Result<(), Late> {
        let stream = StreamId(event.stream());
        let watermark = self.watermark(stream);
        if event.time() <= watermark {
            self.stats.late += 1;
            return Err(Late {
                stream: self.program.stream(stream).name.clone(),
                time: event.time(),
                watermark,
            });
        }
        self.stats.events += 1;
        if let Some(seen) = self.max_seen.get_mut(event.stream() as usize) {
            *seen = Some(seen.map_or(event.time(), |m| m.max(event.time())));
        }
        self.arrival += 1;
        let time = event.time();
        if let Some(c) = self.changes.as_mut() {
            c.added.insert(self.arrival, event.clone());
            c.time = true;
        }
        self.reorder.push(Buffered {
            time,
            arrival: self.arrival,
            event,
        });
        let wm = self.global_watermark();
        self.release(wm, out);
        Ok(())
    }

    /// Sets an explicit watermark for every stream (replay `$watermark` lines).
    pub fn set_watermark(&mut self, time: Nanos, out: &mut dyn FnMut(Alert)) {
        self.forced = self.forced.max(time);
        let wm = self.global_watermark();
        self.release(wm, out);
    }

    /// Advances time to `time`: releases buffered events up to it and fires due timers.
    pub fn advance_to(&mut self, time: Nanos, out: &mut dyn FnMut(Alert)) {
        self.forced = self.forced.max(time);
        self.release(time, out);
    }

    /// Releases buffered events with time `<= up_to + 1 ns` in order, firing timers between
    /// them. Time stays at `up_to`.
    ///
    /// Why one instant past the watermark: an event arriving from now on has a time after
    /// the watermark (or it is late), so the buffered events at exactly `up_to + 1` already
    /// come before it in (time, arrival) order, and so do deadlines at that instant (which
    /// fire before events of their time). Nothing can overtake them, and they need not wait
    /// for a later time to be seen: with no `lateness`, an event at the newest time is fed at
    /// once instead of when the next instant arrives (a fleet sending thousands of readings
    /// per timestamp otherwise keeps them all waiting, cold in memory). What the rules see,
    /// and in what order, is unchanged.
    fn release(&mut self, up_to: Nanos, out: &mut dyn FnMut(Alert)) {
        let limit = up_to.saturating_add(1);
        loop {
            let next_event = self.reorder.next_time().filter(|t| *t <= limit);
            let next_timer = self.next_timer().filter(|t| *t <= limit);
            match (next_timer, next_event) {
                (Some(t), Some(e)) if t <= e => self.fire_timers(t, out),
                (Some(t), None) => self.fire_timers(t, out),
                (_, Some(_)) => {
                    if let Some(b) = self.reorder.pop() {
                        if let Some(c) = self.changes.as_mut()
                            && c.added.remove(&b.arrival).is_none()
                        {
                            c.released.push((b.event.stream(), b.time, b.arrival));
                        }
                        self.now = self.now.max(b.time.saturating_sub(1));
                        self.process(b.event, out);
                    }
                }
                (None, None) => break,
            }
        }
        if up_to > self.now
            && let Some(c) = self.changes.as_mut()
        {
            c.time = true;
        }
        self.now = self.now.max(up_to);
    }

    fn next_timer(&self) -> Option<Nanos> {
        let rules = self
            .rules
            .iter()
            .filter_map(|r| r.timers.peek().map(|(deadline, _)| deadline));
        let aggs = self.aggregates.iter().filter_map(AggRuntime::next_close);
        rules.chain(aggs).min()
    }

    /// Fires every timer due at exactly `t` (the earliest pending deadline).
    fn fire_timers(&mut self, t: Nanos, out: &mut dyn FnMut(Alert)) {
        // Window closes first: their outputs are events at time t for the rules.
        for a in 0..self.aggregates.len() {
            let mut touched = Vec::new();
            let produced = self.aggregates[a].close_due(t, &mut touched);
            if let Some(c) = self.changes.as_mut() {
                c.windows.extend(touched.into_iter().map(|k| (a, k)));
            }
            let output = self.aggregates[a].def().output;
            for fields in produced {
                let event = Event::new(output.0, t, fields.into_vec());
                self.stats.events += 1;
                self.process(event, out);
            }
        }
        for r in 0..self.rules.len() {
            loop {
                let due = matches!(self.rules[r].timers.peek(), Some((d, _)) if d <= t);
                if !due {
                    break;
                }
                let Some((deadline, hash)) = self.rules[r].timers.pop() else {
                    break;
                };
                self.advance_key(r, hash, deadline, out);
            }
        }
    }

    fn advance_key(&mut self, r: usize, hash: u32, now: Nanos, out: &mut dyn FnMut(Alert)) {
        let rt = &mut self.rules[r];
        // None when the key is gone, or its timer was superseded by an earlier one, which
        // already fired.
        let Some(at) = rt.keys.due(hash, now) else {
            return;
        };
        let Some(slot) = rt.keys.at_mut(at) else {
            return;
        };
        let key = &slot.key.clone();
        if let Some(c) = self.changes.as_mut() {
            c.keys.insert((r, key.clone()));
        }
        // Deadlines only move later as events arrive, and a key is not rescheduled for that:
        // the old timer fires, finds nothing due, and sets the next one (one timer per
        // key instead of one per event).
        slot.scheduled = UNSCHEDULED;
        let before = slot.state.runs.len() as u64;
        self.found.clear();
        if let Some(t) = self.trace.as_deref_mut() {
            t.begin(&rt.nfa.rule.name, key.to_json(&rt.nfa.rule.key_names));
            t.note(trace::What::Time { now });
        }
        slot.state.advance_traced(
            &rt.nfa,
            now,
            &mut self.scratch,
            &mut self.found,
            self.trace.as_deref_mut(),
        );
        let after = slot.state.runs.len() as u64;
        self.stats.runs = self.stats.runs + after - before.min(self.stats.runs + after);
        emit_found(
            &self.program,
            &rt.nfa,
            slot,
            key,
            &mut self.found,
            &mut self.stats,
            out,
        );
        if schedule(&rt.nfa, &mut rt.timers, slot, hash) {
            rt.keys.remove_at(hash, at);
            self.stats.keys = self.stats.keys.saturating_sub(1);
        }
    }

    fn process(&mut self, mut event: Event, out: &mut dyn FnMut(Alert)) {
        let stream = event.stream() as usize;
        let n = self.consumers.get(stream).map_or(0, Vec::len);
        for ci in 0..n {
            let c = self.consumers[stream][ci];
            match c {
                Consumer::Aggregate(a) => {
                    let key = self.aggregates[a].add(&event);
                    if let Some(c) = self.changes.as_mut() {
                        c.windows.insert((a, key));
                    }
                }
                Consumer::Rule(r) => self.feed_rule(r, &mut event, out),
            }
        }
        event.recycle();
    }

    /// Feeds one released event to rule `r`, for the event's key.
    fn feed_rule(&mut self, r: usize, held: &mut Event, out: &mut dyn FnMut(Alert)) {
        let rt = &mut self.rules[r];
        let event = &*held;
        let fields = rt
            .key_fields
            .iter()
            .find(|(s, _)| s.0 == event.stream())
            .map_or(&[][..], |(_, v)| &v[..]);
        let key = KeyVal::of(event, fields);
        let key_value = key.value_ref();
        // One probe of the map per event. A key without state stays without unless the event
        // can start a match: stepping an empty key on any other event changes nothing (its
        // sequence numbers restart with the key anyway), so it is neither created nor
        // dropped. A trace records every event, so it takes the full path.
        let hash = rt.keys.hash(&key);
        let (at, found) = match rt.keys.find(hash, &key) {
            Some(at) => (at, true),
            None => {
                if self.trace.is_none() && !KeyState::may_start(&rt.nfa, event, &key_value) {
                    return;
                }
                self.stats.keys += 1;
                let slot = Slot::new(key.clone(), KeyState::default());
                (rt.keys.add(hash, slot), false)
            }
        };
        let Some(slot) = rt.keys.at_mut(at) else {
            return;
        };
        if found {
            adopt_key(held, &slot.key, fields);
        }
        let event = &*held;
        if let Some(c) = self.changes.as_mut() {
            c.keys.insert((r, key.clone()));
        }
        let before = slot.state.runs.len() as u64;
        self.found.clear();
        if let Some(t) = self.trace.as_deref_mut() {
            t.begin(&rt.nfa.rule.name, key.to_json(&rt.nfa.rule.key_names));
            t.note(trace::What::Event {
                event: event.clone(),
                seq: slot.state.next_seq,
            });
        }
        slot.state.on_event_traced(
            &rt.nfa,
            event,
            &key_value,
            &mut self.scratch,
            &mut self.found,
            self.trace.as_deref_mut(),
        );
        let after = slot.state.runs.len() as u64;
        self.stats.runs = (self.stats.runs + after).saturating_sub(before);
        self.stats.peak_runs = self.stats.peak_runs.max(self.stats.runs);
        emit_found(
            &self.program,
            &rt.nfa,
            slot,
            &key,
            &mut self.found,
            &mut self.stats,
            out,
        );
        if schedule(&rt.nfa, &mut rt.timers, slot, hash) {
            rt.keys.remove_at(hash, at);
            self.stats.keys = self.stats.keys.saturating_sub(1);
        }
    }

    /// The per-key state of a rule, for `explain` and the admin API.
    pub fn key_state(&self, rule: &str, key: &KeyVal) -> Option<&KeyState> {
        self.rules
            .iter()
            .find(|r| r.nfa.rule.name == rule)
            .and_then(|r| r.keys.get(key))
            .map(|s| &s.state)
    }

    /// Every key of `rule` holding state; `None` when the rule is not in this group.
    pub fn keys_of(&self, rule: &str) -> Option<Vec<(&KeyVal, &KeyState)>> {
        self.rules
            .iter()
            .find(|r| r.nfa.rule.name == rule)
            .map(|r| r.keys.iter().map(|s| (&s.key, &s.state)).collect())
    }

    /// Approximate bytes of per-key state held, over all rules (keys, runs, buffers, timers;
    /// the events themselves are shared and counted once per key). Each block counts as the
    /// allocator's size class for it, which is what it takes.
    pub fn state_bytes(&self) -> usize {
        let mut total = 0;
        for r in &self.rules {
            total += r.keys.bytes();
            total += r.timers.heap_bytes();
            for slot in r.keys.iter() {
                total += slot.key.heap_bytes() + slot.state.heap_bytes();
                let mut seen = std::collections::HashSet::new();
                for run in &slot.state.runs {
                    for e in slot.state.buffer.chain(run.tail) {
                        if seen.insert(e.event.address()) {
                            total += e.event.heap_bytes();
                        }
                    }
                }
            }
        }
        total
    }
}

/// The pattern engine for one loaded program: independent [`Group`]s of streams, each in its
/// own event time.
pub struct Engine {
    program: Arc<Program>,
    groups: Vec<Group>,
    /// The group each stream belongs to.
    group_of: Vec<usize>,
    /// Streams of each group.
    members: Vec<Vec<StreamId>>,
    /// Per stream, a fingerprint of its schema (stored events of another schema are dropped).
    schema_fp: Vec<u64>,
}

impl Engine {
    /// Compiles every rule of the program and groups streams: two streams share a group when
    /// a rule reads both, or one is an aggregate of the other.
    pub fn new(program: Arc<Program>) -> Result<Engine, CompileError> {
        let n = program.streams.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn root(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut union = |a: usize, b: usize| {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            if ra != rb {
                parent[ra.max(rb)] = ra.min(rb);
            }
        };
        for a in &program.aggregates {
            union(a.source.0 as usize, a.output.0 as usize);
        }
        for r in &program.rules {
            for w in r.streams.windows(2) {
                union(w[0].0 as usize, w[1].0 as usize);
            }
        }
        let mut roots: Vec<usize> = Vec::new();
        let mut group_of = vec![0; n];
        for (i, g) in group_of.iter_mut().enumerate() {
            let r = root(&mut parent, i);
            *g = match roots.iter().position(|&x| x == r) {
                Some(p) => p,
                None => {
                    roots.push(r);
                    roots.len() - 1
                }
            };
        }
        let mut groups = Vec::with_capacity(roots.len());
        let mut members = vec![Vec::new(); roots.len()];
        for (i, &g) in group_of.iter().enumerate() {
            members[g].push(StreamId(i as u32));
        }
        for g in 0..roots.len() {
            let in_group = |s: StreamId| group_of.get(s.0 as usize) == Some(&g);
            let rules: Vec<usize> = (0..program.rules.len())
                .filter(|&r| {
                    program.rules[r]
                        .streams
                        .first()
                        .is_some_and(|s| in_group(*s))
                })
                .collect();
            let aggs: Vec<usize> = (0..program.aggregates.len())
                .filter(|&a| in_group(program.aggregates[a].source))
                .collect();
            groups.push(Group::new(Arc::clone(&program), &rules, &aggs)?);
        }
        let schema_fp = program.streams.iter().map(persist::fingerprint).collect();
        Ok(Engine {
            program,
            groups,
            group_of,
            members,
            schema_fp,
        })
    }

    /// The program being run.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// Every user (rhai) function a rule calls, with how many of its calls failed so far.
    pub fn script_errors(&self) -> Vec<crate::compile::script::ScriptErrors> {
        self.program.script_errors()
    }

    /// Counters so far, over all groups (the peak is the sum of each group's peak).
    pub fn stats(&self) -> Stats {
        let mut t = Stats::default();
        for g in &self.groups {
            let s = g.stats();
            t.events += s.events;
            t.late += s.late;
            t.alerts += s.alerts;
            t.runs += s.runs;
            t.peak_runs += s.peak_runs;
            t.keys += s.keys;
        }
        t
    }

    /// The compiled NFA of a rule.
    pub fn nfa(&self, rule: &str) -> Option<&Nfa> {
        self.groups.iter().find_map(|g| g.nfa(rule))
    }

    /// A stream's watermark (in its group's event time).
    pub fn watermark(&self, stream: StreamId) -> Nanos {
        self.group_of
            .get(stream.0 as usize)
            .map_or(Nanos::MIN, |&g| self.groups[g].watermark(stream))
    }

    /// The newest event time seen on a stream (restored state included).
    pub fn newest(&self, stream: StreamId) -> Option<Nanos> {
        let g = self.group_of.get(stream.0 as usize)?;
        self.groups[*g]
            .max_seen
            .get(stream.0 as usize)
            .copied()
            .flatten()
    }

    /// The groups of streams that share event time, by index.
    pub fn groups(&self) -> &[Vec<StreamId>] {
        &self.members
    }

    /// Accepts an event; alerts that become due are passed to `out`.
    pub fn push(&mut self, event: Event, out: &mut dyn FnMut(Alert)) -> Result<(), Late> {
        match self.group_of.get(event.stream() as usize) {
            Some(&g) => self.groups[g].push(event, out),
            // A stream id outside the program is a bug in the caller; treat it as late rather
            // than crash the engine.
            None => Err(Late {
                stream: format!("#{}", event.stream()),
                time: event.time(),
                watermark: Nanos::MAX,
            }),
        }
    }

    /// Sets an explicit watermark for every stream (replay `$watermark` lines).
    pub fn set_watermark(&mut self, time: Nanos, out: &mut dyn FnMut(Alert)) {
        for g in &mut self.groups {
            g.set_watermark(time, out);
        }
    }

    /// Advances time to `time` in every group.
    pub fn advance_to(&mut self, time: Nanos, out: &mut dyn FnMut(Alert)) {
        for g in &mut self.groups {
            g.advance_to(time, out);
        }
    }

    /// Advances time to `time` in one group (an idle stream's, from the wall clock).
    pub fn advance_group(&mut self, group: usize, time: Nanos, out: &mut dyn FnMut(Alert)) {
        if let Some(g) = self.groups.get_mut(group) {
            g.advance_to(time, out);
        }
    }

    /// End of input: releases everything and advances time to the end, so pending absences
    /// and timeouts fire.
    pub fn flush(&mut self, out: &mut dyn FnMut(Alert)) {
        self.advance_to(Nanos::MAX, out);
    }

    /// The per-key state of a rule, for `explain` and the admin API.
    pub fn key_state(&self, rule: &str, key: &KeyVal) -> Option<&KeyState> {
        self.groups.iter().find_map(|g| g.key_state(rule, key))
    }

    /// True when `program` runs exactly as this engine's: the same streams (by schema),
    /// aggregates and rules (by fingerprint), in the same order. A reload of such a program
    /// can keep this engine and its state as they are.
    pub fn runs_same_as(&self, program: &Program) -> bool {
        let old = &self.program;
        old.streams.len() == program.streams.len()
            && self
                .schema_fp
                .iter()
                .zip(&program.streams)
                .all(|(fp, s)| *fp == persist::fingerprint(s))
            && old.aggregates.len() == program.aggregates.len()
            && old
                .aggregates
                .iter()
                .zip(&program.aggregates)
                .all(|(a, b)| persist::fingerprint(a) == persist::fingerprint(b))
            && old.rules.len() == program.rules.len()
            && old
                .rules
                .iter()
                .zip(&program.rules)
                .all(|(a, b)| a.name == b.name && a.fingerprint == b.fingerprint)
    }

    /// Every key of `rule` holding state (partial matches, or matches held back), for the
    /// admin API; `None` when no rule has that name.
    pub fn keys_of(&self, rule: &str) -> Option<Vec<(&KeyVal, &KeyState)>> {
        self.groups.iter().find_map(|g| g.keys_of(rule))
    }

    /// Approximate bytes of per-key state held, over all rules.
    pub fn state_bytes(&self) -> usize {
        self.groups.iter().map(Group::state_bytes).sum()
    }

    /// Starts recording what every run does ([`trace`]), for `tern explain --input` and
    /// `tern test`; [`Engine::take_trace`] collects it.
    pub fn enable_trace(&mut self) {
        for g in &mut self.groups {
            g.trace.get_or_insert_with(Box::default);
        }
    }

    /// The trace recorded since the last call (empty unless [`Engine::enable_trace`]).
    pub fn take_trace(&mut self) -> Vec<trace::Record> {
        let mut out = Vec::new();
        for g in &mut self.groups {
            if let Some(t) = g.trace.as_deref_mut() {
                out.append(&mut t.take());
            }
        }
        out
    }

    /// Starts tracking what changes, for [`Engine::persist`] (off by default: a replay
    /// does not pay for it).
    pub fn track_changes(&mut self) {
        for g in &mut self.groups {
            g.changes.get_or_insert_with(Box::default);
        }
    }

    /// Writes every record that changed since the last call (see [`persist`]).
    pub fn persist(&mut self, w: &mut dyn persist::StateWriter) -> anyhow::Result<()> {
        use crate::store::encode;
        use persist::{KEYS, named_key};
        for (gi, g) in self.groups.iter_mut().enumerate() {
            let Some(changes) = g.changes.as_mut() else {
                continue;
            };
            let c = std::mem::take(&mut **changes);
            for (r, key) in c.keys {
                let rt = &g.rules[r];
                let k = named_key(b'k', &rt.nfa.rule.name, &persist::key_bytes(&key));
                match rt.keys.get(&key) {
                    Some(slot) => {
                        #[derive(serde::Serialize)]
                        struct Ref<'a> {
                            fingerprint: u64,
                            state: &'a KeyState,
                        }
                        let v = encode(&Ref {
                            fingerprint: rt.nfa.rule.fingerprint,
                            state: &slot.state,
                        })?;
                        w.put(KEYS, k, v);
                    }
                    None => w.delete(KEYS, k),
                }
            }
            for (a, key) in c.windows {
                let agg = &g.aggregates[a];
                let name = &self.program.stream(agg.def().output).name;
                let k = named_key(b'a', name, &persist::key_bytes(&key));
                match agg.windows(&key) {
                    Some(windows) => {
                        #[derive(serde::Serialize)]
                        struct Ref<'a> {
                            fingerprint: u64,
                            windows: &'a window::KeyWindows,
                        }
                        let v = encode(&Ref {
                            fingerprint: agg.fingerprint(),
                            windows,
                        })?;
                        w.put(KEYS, k, v);
                    }
                    None => w.delete(KEYS, k),
                }
            }
            for (stream, time, arrival) in c.released {
                let name = &self.program.stream(StreamId(stream)).name;
                w.delete(
                    persist::GROUPS,
                    named_key(b'r', name, &persist::buffered_suffix(time, arrival)),
                );
            }
            for (arrival, event) in c.added {
                let id = StreamId(event.stream());
                let v = encode(&persist::BufferedRecord {
                    schema: self.schema_fp.get(id.0 as usize).copied().unwrap_or(0),
                    fields: event.to_values().into(),
                })?;
                w.put(
                    persist::GROUPS,
                    named_key(
                        b'r',
                        &self.program.stream(id).name,
                        &persist::buffered_suffix(event.time(), arrival),
                    ),
                    v,
                );
            }
            if c.time {
                for id in &self.members[gi] {
                    let rec = persist::StreamRecord {
                        schema: self.schema_fp.get(id.0 as usize).copied().unwrap_or(0),
                        max_seen: g.max_seen.get(id.0 as usize).copied().flatten(),
                        forced: g.forced,
                        now: g.now,
                        arrival: g.arrival,
                    };
                    w.put(
                        persist::GROUPS,
                        named_key(b's', &self.program.stream(*id).name, &[]),
                        encode(&rec)?,
                    );
                }
            }
        }
        Ok(())
    }

    /// Loads records written by [`Engine::persist`] (from `keys` and `groups`). Records of
    /// rules, aggregates or streams that changed or are gone are deleted through `stale`.
    pub fn restore(
        &mut self,
        keys: Vec<(Vec<u8>, Vec<u8>)>,
        groups: Vec<(Vec<u8>, Vec<u8>)>,
        stale: &mut dyn persist::StateWriter,
    ) -> Restored {
        use crate::store::decode;
        use persist::{GROUPS, KEYS};
        let mut out = Restored::default();
        let mut dropped: std::collections::BTreeMap<String, u64> = Default::default();
        let current_schema = |id: StreamId| self.schema_fp.get(id.0 as usize).copied();
        // Streams first: their times, then their buffered events.
        let mut valid_streams = HashSet::new();
        for (k, v) in &groups {
            let Some((b's', name, _)) = persist::split_key(k) else {
                continue;
            };
            let rec: Option<persist::StreamRecord> = decode(v).ok();
            let id = self.program.stream_id(name);
            match (id, rec) {
                (Some(id), Some(rec)) if current_schema(id) == Some(rec.schema) => {
                    valid_streams.insert(id);
                    if let Some(&g) = self.group_of.get(id.0 as usize) {
                        let g = &mut self.groups[g];
                        if let Some(slot) = g.max_seen.get_mut(id.0 as usize) {
                            *slot = rec.max_seen;
                        }
                        g.forced = g.forced.max(rec.forced);
                        g.now = g.now.max(rec.now);
                        g.arrival = g.arrival.max(rec.arrival);
                    }
                }
                _ => {
                    *dropped.entry(format!("stream {name}")).or_default() += 1;
                    stale.delete(GROUPS, k.clone());
                }
            }
        }
        for (k, v) in groups {
            let Some((b'r', name, rest)) = persist::split_key(&k) else {
                continue;
            };
            let id = self.program.stream_id(name);
            let rec: Option<persist::BufferedRecord> = decode(&v).ok();
            let at = persist::parse_buffered_suffix(rest);
            match (id, rec, at) {
                (Some(id), Some(rec), Some((time, arrival)))
                    if valid_streams.contains(&id) && current_schema(id) == Some(rec.schema) =>
                {
                    if let Some(&g) = self.group_of.get(id.0 as usize) {
                        self.groups[g].reorder.push(Buffered {
                            time,
                            arrival,
                            event: Event::new(id.0, time, rec.fields.into_owned()),
                        });
                        out.buffered += 1;
                    }
                }
                _ => stale.delete(GROUPS, k),
            }
        }
        // Per-key state: find each rule once, not once per key.
        let rule_at: HashMap<String, (usize, usize)> = self
            .groups
            .iter()
            .enumerate()
            .flat_map(|(g, group)| {
                group
                    .rules
                    .iter()
                    .enumerate()
                    .map(move |(r, rt)| (rt.nfa.rule.name.clone(), (g, r)))
            })
            .collect();
        for (k, v) in keys {
            let Some((tag, name, rest)) = persist::split_key(&k) else {
                stale.delete(KEYS, k);
                continue;
            };
            let key: Option<KeyVal> = postcard::from_bytes(rest).ok();
            let placed = match (tag, key) {
                (b'k', Some(key)) => match rule_at.get(name) {
                    Some(&(g, r)) => self.restore_key(g, r, key, &v, &mut out),
                    None => false,
                },
                (b'a', Some(key)) => self.restore_windows(name, key, &v, &mut out),
                _ => false,
            };
            if !placed {
                *dropped.entry(name.to_owned()).or_default() += 1;
                stale.delete(KEYS, k);
            }
        }
        out.dropped = dropped.into_iter().collect();
        out
    }

    /// Puts back one key of rule `r` of group `g`; false when the record is not this rule's
    /// current form.
    fn restore_key(
        &mut self,
        g: usize,
        r: usize,
        key: KeyVal,
        value: &[u8],
        out: &mut Restored,
    ) -> bool {
        let group = &mut self.groups[g];
        let rt = &mut group.rules[r];
        let Ok(rec) = crate::store::decode::<persist::KeyRecord>(value) else {
            return false;
        };
        if rec.fingerprint != rt.nfa.rule.fingerprint || rec.state.is_empty() {
            return false;
        }
        out.keys += 1;
        out.runs += rec.state.runs.len() as u64;
        group.stats.keys += 1;
        group.stats.runs += rec.state.runs.len() as u64;
        rt.keys.insert(Slot::new(key.clone(), rec.state));
        reschedule(rt, &key, &mut group.stats);
        true
    }

    fn restore_windows(
        &mut self,
        output: &str,
        key: KeyVal,
        value: &[u8],
        out: &mut Restored,
    ) -> bool {
        let Some(id) = self.program.stream_id(output) else {
            return false;
        };
        for g in &mut self.groups {
            let Some(agg) = g.aggregates.iter_mut().find(|a| a.def().output == id) else {
                continue;
            };
            let Ok(rec) = crate::store::decode::<persist::AggRecord>(value) else {
                return false;
            };
            if rec.fingerprint != agg.fingerprint() {
                return false;
            }
            agg.restore(key, rec.windows);
            out.windows += 1;
            return true;
        }
        false
    }
}

fn emit_found(
    program: &Program,
    nfa: &Nfa,
    slot: &mut Slot,
    key: &KeyVal,
    found: &mut Vec<Found>,
    stats: &mut Stats,
    out: &mut dyn FnMut(Alert),
) {
    if found.is_empty() {
        return;
    }
    let key_value = key.value();
    let key_json = key.to_json(&nfa.rule.key_names);
    for f in found.drain(..) {
        let alert = alert::build(program, nfa, &slot.state.buffer, &f, &key_value, &key_json);
        slot.state.release(&f);
        stats.alerts += 1;
        out(alert);
    }
}

/// Schedules a key's next deadline; true when the key holds nothing and should be dropped
/// (so that it costs nothing).
fn schedule(nfa: &Nfa, timers: &mut Timers, slot: &mut Slot, hash: u32) -> bool {
    if slot.state.is_empty() {
        return true;
    }
    if let Some(d) = slot.state.next_deadline(nfa)
        && (slot.scheduled == UNSCHEDULED || d < slot.scheduled)
    {
        slot.scheduled = d;
        timers.push(d, hash);
    }
    false
}

/// Drops an empty key or schedules its next deadline (after a restore).
fn reschedule(rt: &mut RuleRuntime, key: &KeyVal, stats: &mut Stats) {
    let hash = rt.keys.hash(key);
    let Some(slot) = rt.keys.get_mut(key) else {
        return;
    };
    if schedule(&rt.nfa, &mut rt.timers, slot, hash) {
        rt.keys.remove(key);
        stats.keys = stats.keys.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::key::HashValue;
    use super::*;

    #[test]
    fn a_key_holding_one_run_and_one_entry_is_one_small_allocation() {
        // The layout the memory figures in docs/performance.md rest on: the run and the entry
        // inline in the key's state, and keys 16 bytes (a timer's 8 are in timers.rs).
        let mut state = KeyState::default();
        state.runs.push(run::Run::starting(0, 0));
        assert!(!state.runs.spilled(), "the first run is inline");
        assert_eq!(state.heap_bytes(), 0, "and holds no memory of its own");
        assert_eq!(std::mem::size_of::<KeyVal>(), 16);
        assert!(
            std::mem::size_of::<Slot>() <= 144,
            "{}",
            std::mem::size_of::<Slot>()
        );
    }

    /// An engine over one camera stream (no lateness) and `rules`.
    fn camera_engine(rules: &str) -> Engine {
        Engine::new(Arc::new(camera_program(rules))).unwrap()
    }

    /// One camera stream (no lateness) and `rules`, checked.
    fn camera_program(rules: &str) -> Program {
        let text = format!(
            "stream cam {{ camera_id: string, ts: timestamp, speed: float, time ts }}\n{rules}"
        );
        let mut sources = crate::lang::source::Sources::new();
        let (program, diags) = crate::compile::check_text(
            &mut sources,
            &[("r.tern", &text)],
            Vec::new(),
            &["stdout".to_string()],
        );
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        program
    }

    /// A reading of camera `cam-7`, its string decoded anew as from the wire.
    fn reading(t: Nanos, speed: f64) -> Event {
        Event::new(
            0,
            t,
            [
                Value::Str(arcstr::ArcStr::from(String::from("cam-7"))),
                Value::Timestamp(t),
                Value::Float(speed),
            ],
        )
    }

    #[test]
    fn an_event_at_the_newest_time_is_fed_at_once_and_deadlines_fire_before_it() {
        let mut engine = camera_engine(
            "rule fast { from cam key camera_id match f: cam where speed > 80 emit fast { } }\n\
             rule quiet { from cam key camera_id match seen: cam not followed by cam \
             within 30s emit quiet { } }",
        );
        let mut alerts = Vec::new();
        engine
            .push(reading(1_000, 90.0), &mut |a| {
                alerts.push(a.rule.to_string())
            })
            .unwrap();
        assert_eq!(alerts, ["fast"], "no later event was needed");
        // The next reading comes exactly at the absence's deadline: the deadline fires first.
        let deadline = 1_000 + 30_000_000_000;
        engine
            .push(reading(deadline, 90.0), &mut |a| {
                alerts.push(a.rule.to_string())
            })
            .unwrap();
        assert_eq!(alerts, ["fast", "quiet", "fast"]);
        // Time stays at the watermark: another reading at the same instant is not late.
        engine
            .push(reading(deadline, 10.0), &mut |a| {
                alerts.push(a.rule.to_string())
            })
            .unwrap();
        assert_eq!(engine.stats().late, 0);
    }

    #[test]
    fn renumbering_sequence_numbers_and_run_ids_changes_no_match() {
        // Skip strategies cut by sequence number, held-back matches are ordered by it and by
        // run id: an engine whose keys are renumbered after every event must find exactly
        // the matches of one that never renumbers (the alert ids, which hash sequence
        // numbers, aside).
        let rules = "\
            rule slowing { from cam key camera_id \
              match first: cam where speed < 20.0 \
                followed by slower: cam+ where speed < first.speed \
                followed by stop: cam where speed < 8.0 \
              within 2m skip past last emit slowing { n: count(slower.speed) } }\n\
            rule branch { from cam key camera_id \
              match a: cam where speed < 12.0 followed by any b: cam where speed < 12.0 \
              within 20s skip to next emit branch { a: a.speed, b: b.speed } }\n\
            rule first { from cam key camera_id \
              match a: cam where speed < 20.0 followed by l: cam{2,4} where speed < 30.0 \
                followed by f: cam where speed > 40.0 \
              within 1m skip to first l emit first { n: count(l.speed) } }\n\
            rule last { from cam key camera_id \
              match a: cam where speed < 20.0 followed by l: cam{2,4} where speed < 30.0 \
                followed by f: cam where speed > 40.0 \
              within 1m skip to last l emit last { n: count(l.speed) } }\n\
            rule pair { from cam key camera_id \
              match a: cam where speed < 15.0 followed by b: cam where speed < 10.0 \
              within 10s skip past last emit pair { } on timeout emit alone { a: a.speed } }";
        let mut plain = camera_engine(rules);
        let mut renumbered = camera_engine(rules);
        let speeds = [3.0, 5.0, 7.0, 9.0, 11.0, 14.0, 18.0, 25.0, 28.0, 45.0, 75.0];
        let mut x: u64 = 7;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let strip = |alert: Alert| {
            let mut json: serde_json::Value = serde_json::from_str(&alert.to_json(None)).unwrap();
            json.as_object_mut().unwrap().remove("id");
            json
        };
        for i in 0..3_000i64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let camera = format!("cam-{}", (x >> 33) % 3);
            let speed = speeds[((x >> 40) % speeds.len() as u64) as usize];
            let t = i * 700_000_000;
            let event = |c: &str| {
                Event::new(
                    0,
                    t,
                    [
                        Value::Str(c.into()),
                        Value::Timestamp(t),
                        Value::Float(speed),
                    ],
                )
            };
            plain
                .push(event(&camera), &mut |x| a.push(strip(x)))
                .unwrap();
            renumbered
                .push(event(&camera), &mut |x| b.push(strip(x)))
                .unwrap();
            for g in &mut renumbered.groups {
                for r in &mut g.rules {
                    for slot in r.keys.iter_mut() {
                        slot.state.renumber();
                        // Ranks: no number is larger than the values it has to tell apart.
                        let told = slot.state.buffer.seqs_mut().count()
                            + slot.state.runs.len()
                            + 2 * slot.state.buffer.held().len();
                        assert!(slot.state.next_seq as usize <= told);
                        assert!(slot.state.next_run as usize <= told);
                    }
                }
            }
        }
        let seqs = |e: &Engine| {
            e.groups[0]
                .rules
                .iter()
                .flat_map(|r| r.keys.iter().map(|s| s.state.next_seq))
                .max()
        };
        // Without renumbering the numbers only grow.
        assert!(seqs(&plain) > Some(100), "{:?}", seqs(&plain));
        plain.flush(&mut |x| a.push(strip(x)));
        renumbered.flush(&mut |x| b.push(strip(x)));
        for rule in ["slowing", "branch", "first", "last", "pair", "alone"] {
            let n = a.iter().filter(|j| j["name"] == rule).count();
            assert!(n >= 5, "{rule}: {n} alerts, too few to tell");
        }
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x, y);
        }
    }

    #[test]
    fn a_keys_slot_holding_one_run_and_one_entry_is_96_bytes() {
        // Slots sit in the table's slab at their own size, so every byte here is a byte per
        // key: the key 16, its timer's deadline 8, the buffer (its one entry inline) 32, the
        // run 32, the two counters 8.
        assert_eq!(std::mem::size_of::<run::Run>(), 32);
        assert_eq!(std::mem::size_of::<buffer::Buffer>(), 32);
        assert_eq!(std::mem::size_of::<Slot>(), 96);
    }

    #[test]
    fn a_pattern_of_more_states_than_a_run_can_hold_is_refused() {
        // 66 counted steps of 1,000 each: 66,000 states, past the 16 bits a run holds.
        let steps: Vec<String> = (0..66).map(|i| format!("s{i}: cam{{1000}}")).collect();
        let program = camera_program(&format!(
            "rule big {{ from cam key camera_id match {} within 1h emit big {{ }} }}",
            steps.join(" followed by ")
        ));
        let err = Engine::new(Arc::new(program)).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("rule `big`") && e.contains("at most 65536")),
            "{err:?}"
        );
    }

    #[test]
    fn an_event_a_key_keeps_shares_the_keys_string() {
        let mut engine = camera_engine(
            "rule quiet { from cam key camera_id match seen: cam not followed by cam \
             within 30s emit quiet { camera: key } }",
        );
        let mut alerts = Vec::new();
        for t in [1_000, 2_000, 3_000] {
            engine
                .push(reading(t, 50.0), &mut |a| alerts.push(a))
                .unwrap();
        }
        let keys = engine.keys_of("quiet").unwrap();
        let [(key, state)] = keys.as_slice() else {
            panic!("one key: {keys:?}")
        };
        let KeyVal::One(HashValue(Value::Str(stored))) = key else {
            panic!("{key:?}")
        };
        let [run] = state.runs.as_slice() else {
            panic!("one run: {:?}", state.runs)
        };
        let kept = &state.buffer.entry(run.tail).event;
        assert_eq!(kept.time(), 3_000, "the newest reading is the one kept");
        let Some(held) = kept.str_at(0) else {
            panic!("{kept:?}")
        };
        assert!(arcstr::ArcStr::ptr_eq(held, stored));
        assert!(alerts.is_empty());
    }

    #[test]
    fn the_reorder_buffer_releases_by_time_then_arrival_whatever_the_input_order() {
        let times = [5, 3, 7, 7, 3, 9, 1, 9, 8, 2, 10, 4, 4];
        let mut r = Reorder::default();
        for (arrival, t) in times.iter().enumerate() {
            r.push(Buffered {
                time: *t,
                arrival: arrival as u64,
                event: Event::new(0, *t, []),
            });
        }
        let mut want: Vec<(Nanos, u64)> = times
            .iter()
            .enumerate()
            .map(|(a, t)| (*t, a as u64))
            .collect();
        want.sort();
        let mut got = Vec::new();
        while let Some(next) = r.next_time() {
            let b = r.pop().unwrap();
            assert_eq!(b.time, next, "next_time names the event pop returns");
            got.push((b.time, b.arrival));
        }
        assert_eq!(got, want);
    }
}
