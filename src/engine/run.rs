//! The mutable state of one (rule, key): its runs (partial matches), their shared buffer, and
//! matches held back by a skip strategy. This is the only mutable thing the engine keeps per
//! key, and the thing that gets persisted.
//!
//! The rules implemented here are stated in docs/semantics.md; section numbers refer to it.

use crate::compile::hir::{LoopMode, Skip, VarId};
use crate::compile::nfa::{Completion, Guard, Nfa, StateId};
use crate::event::{Event, Nanos, Value};
use crate::lang::ast::Contiguity;

use super::buffer::{Buffer, NIL};
use super::eval::{self, Ctx};
use super::inline::Inline;
use super::trace::{Reason, Trace, What};

/// A key's sequence number of an event. 32 bits, to keep a key holding one partial match
/// small (every byte of its slot is a byte per key); a key that lives long enough to near
/// the end is renumbered ([`KeyState::renumber`]): only the order of sequence numbers matters.
pub type Seq = u32;

/// A run's creation number within its key; 32 bits and renumbered like [`Seq`].
pub type RunId = u32;

/// A key renumbers ([`KeyState::renumber`]) when its next sequence number or run id reaches
/// this: half the range, so that no single event can run past the end.
const RENUMBER_AT: u32 = u32::MAX / 2;

/// Maps each of `values` to its rank among them, and any larger value to one past the
/// largest rank.
fn ranks(mut values: Vec<u32>) -> impl Fn(u32) -> u32 {
    values.sort_unstable();
    values.dedup();
    move |v| values.partition_point(|x| *x < v) as u32
}

/// A partial match. The time of its last event, which bounds its waits, is its last entry's
/// event's ([`KeyState::last_time`]); it is stored as a field all the same (`StoredRun`).
///
/// 32 bytes, so that a key holding one run and one entry takes 96: the state in 16 bits
/// (the compiler refuses more states, [`crate::compile::nfa::MAX_STATES`]) and two of the
/// three flags in one byte; `fresh` stays a `bool`, whose spare values tell [`Inline`]'s
/// shapes apart.
#[derive(Debug, Clone)]
pub struct Run {
    /// Bit i set: the state's wait i is still open.
    pub alive: u64,
    /// Time of the first event.
    pub start_time: Nanos,
    /// Sequence number of the first event.
    pub start_seq: Seq,
    /// The last entry in the shared buffer (this run holds a reference on it).
    pub tail: u32,
    /// Creation order, to order matches that start with the same event.
    pub id: RunId,
    /// The NFA state: which step took the last event.
    state: u16,
    /// No event has arrived since the last take (`not next` guards look at the next one only).
    pub fresh: bool,
    /// [`COMPLETED`] and [`ABSENCE`].
    flags: u8,
}

/// The run has been emitted as a match: it times out silently.
const COMPLETED: u8 = 1;
/// The run completes when time passes its deadline without a negated event (§4).
const ABSENCE: u8 = 2;

impl Run {
    /// The run every event tries to start from: in the first state, nothing taken yet.
    pub(super) fn starting(seq: Seq, time: Nanos) -> Run {
        Run::new(0, u64::MAX, seq, time, NIL, 0)
    }

    /// A run in `state`, not fresh, neither completed nor an absence.
    pub(super) fn new(
        state: StateId,
        alive: u64,
        start_seq: Seq,
        start_time: Nanos,
        tail: u32,
        id: RunId,
    ) -> Run {
        Run {
            alive,
            start_time,
            start_seq,
            tail,
            id,
            // The compiler keeps state numbers within 16 bits.
            state: state as u16,
            fresh: false,
            flags: 0,
        }
    }

    /// The NFA state: which step took the last event.
    pub fn state(&self) -> StateId {
        StateId::from(self.state)
    }

    /// The run has been emitted as a match: it times out silently.
    pub fn completed(&self) -> bool {
        self.flags & COMPLETED != 0
    }

    /// Marks the run emitted.
    fn set_completed(&mut self) {
        self.flags |= COMPLETED;
    }

    /// The run completes when time passes its deadline without a negated event (§4).
    pub fn absence(&self) -> bool {
        self.flags & ABSENCE != 0
    }

    /// Makes the run an absence, or no longer one.
    pub(super) fn set_absence(&mut self, on: bool) {
        self.flags = if on {
            self.flags | ABSENCE
        } else {
            self.flags & !ABSENCE
        };
    }
}

/// Why an output was produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FoundKind {
    /// A completed match.
    Match,
    /// A partial match whose time ran out.
    Timeout,
}

/// A match or timeout found for this key. Holds a reference on `tail`, which the caller
/// releases (through [`KeyState::release`]) once the alert is built.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Found {
    /// Match or timeout.
    pub kind: FoundKind,
    /// The completing event's time, or the deadline that passed.
    pub time: Nanos,
    /// Last entry of the matched events.
    pub tail: u32,
    /// Sequence number of the first event.
    pub start_seq: Seq,
    /// Sequence number of the last event.
    pub last_seq: Seq,
    /// Creation order of the run.
    pub id: RunId,
}

/// Everything one key holds for one rule. Laid out for the common key, which holds one run
/// and one entry: both are inline, so the key takes no allocation of its own; the matches held
/// back until earlier-started runs are decided (§5), rarely any, are kept aside by the buffer
/// ([`Buffer::held`]). It serializes as the struct of vectors it replaced, so the stored
/// format is unchanged.
#[derive(Debug, Default, Clone)]
pub struct KeyState {
    /// Matched events, shared between runs, and the held-back matches.
    pub buffer: Buffer,
    /// Partial matches.
    pub runs: Inline<Run>,
    /// Sequence number of the next event.
    pub next_seq: Seq,
    /// Next run id.
    pub next_run: RunId,
}

/// A run as stored: with the time of its last event, as before that time was read from the
/// event.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename = "Run")]
struct StoredRun {
    state: StateId,
    alive: u64,
    fresh: bool,
    start_seq: Seq,
    start_time: Nanos,
    last_time: Nanos,
    tail: u32,
    id: RunId,
    completed: bool,
    absence: bool,
}

/// The runs of a key, written one [`StoredRun`] each.
struct StoredRuns<'a>(&'a KeyState);

impl serde::Serialize for StoredRuns<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.runs.iter().map(|r| StoredRun {
            state: r.state(),
            alive: r.alive,
            fresh: r.fresh,
            start_seq: r.start_seq,
            start_time: r.start_time,
            last_time: self.0.last_time(r),
            tail: r.tail,
            id: r.id,
            completed: r.completed(),
            absence: r.absence(),
        }))
    }
}

/// How a key's state is written: the struct of vectors it was.
#[derive(serde::Serialize)]
#[serde(rename = "KeyState")]
struct StoredState<'a> {
    buffer: super::buffer::StoredBuffer<'a>,
    runs: StoredRuns<'a>,
    pending: &'a [Found],
    next_seq: Seq,
    next_run: RunId,
}

/// How a key's state is read.
#[derive(serde::Deserialize)]
#[serde(rename = "KeyState")]
struct ReadState {
    buffer: super::buffer::ReadBuffer,
    runs: Vec<StoredRun>,
    pending: Vec<Found>,
    next_seq: Seq,
    next_run: RunId,
}

impl serde::Serialize for KeyState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        StoredState {
            buffer: self.buffer.stored(),
            runs: StoredRuns(self),
            pending: self.buffer.held(),
            next_seq: self.next_seq,
            next_run: self.next_run,
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for KeyState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<KeyState, D::Error> {
        let r = ReadState::deserialize(d)?;
        // The stored `last_time` is the last entry's event's time, read from the event now.
        let runs = r.runs.into_iter().map(|r| {
            if r.state > StateId::from(u16::MAX) {
                return Err(serde::de::Error::custom(format!(
                    "run in state {}: beyond 16 bits",
                    r.state
                )));
            }
            let mut run = Run::new(r.state, r.alive, r.start_seq, r.start_time, r.tail, r.id);
            run.fresh = r.fresh;
            if r.completed {
                run.set_completed();
            }
            run.set_absence(r.absence);
            Ok(run)
        });
        Ok(KeyState {
            buffer: Buffer::from_stored(r.buffer, r.pending),
            runs: runs.collect::<Result<Vec<_>, _>>()?.into(),
            next_seq: r.next_seq,
            next_run: r.next_run,
        })
    }
}

/// Scratch space reused across keys, so stepping allocates nothing in the common case.
#[derive(Debug, Default)]
pub struct Scratch {
    runs: Vec<Run>,
    created: Vec<Run>,
    found: Vec<Found>,
}

impl KeyState {
    /// True when the key holds nothing and can be forgotten.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty() && self.buffer.held().is_empty()
    }

    /// Time of the last event `run` took (its last entry's), or of its start before it took
    /// any.
    pub fn last_time(&self, run: &Run) -> Nanos {
        self.buffer.time_of(run.tail, run.start_time)
    }

    /// Heap bytes held beyond the key state itself: runs, held-back matches and entries that
    /// do not fit inline (not the shared events).
    pub fn heap_bytes(&self) -> usize {
        self.runs.heap_bytes() + self.buffer.heap_bytes()
    }

    /// Renumbers sequence numbers and run ids by rank, so that the next ones are as small as
    /// can be. Matches compare both only by order and equality (which run started first,
    /// where a skip strategy cuts), never by distance, so every decision stays the same.
    /// Alert ids hash the new sequence numbers; the renumbering is a function of the key's
    /// state alone, so a replay after a crash renumbers at the same event and repeats the
    /// same ids. A trace across it (`tern explain`) shows the runs under their new numbers.
    pub fn renumber(&mut self) {
        let mut seqs: Vec<Seq> = self.buffer.seqs_mut().map(|s| *s).collect();
        seqs.extend(self.runs.iter().map(|r| r.start_seq));
        let mut held = self.buffer.take_held();
        seqs.extend(held.iter().flat_map(|f| [f.start_seq, f.last_seq]));
        let rank = ranks(seqs);
        let new = |old: &mut Seq| *old = rank(*old);
        self.buffer.seqs_mut().for_each(new);
        for r in self.runs.iter_mut() {
            new(&mut r.start_seq);
        }
        for f in held.iter_mut() {
            new(&mut f.start_seq);
            new(&mut f.last_seq);
        }
        self.next_seq = rank(self.next_seq);

        let ids: Vec<RunId> = self
            .runs
            .iter()
            .map(|r| r.id)
            .chain(held.iter().map(|f| f.id))
            .collect();
        let rank = ranks(ids);
        for r in self.runs.iter_mut() {
            r.id = rank(r.id);
        }
        for f in held.iter_mut() {
            f.id = rank(f.id);
        }
        self.next_run = rank(self.next_run);
        self.buffer.set_held(held);
    }

    /// Releases the reference a [`Found`] holds.
    pub fn release(&mut self, found: &Found) {
        self.buffer.release(found.tail);
        self.buffer.trim();
    }

    /// The earliest time at which something may happen without an event: a whole-match
    /// deadline, a step bound, an absence.
    pub fn next_deadline(&self, nfa: &Nfa) -> Option<Nanos> {
        let within = nfa.rule.within;
        let mut best: Option<Nanos> = None;
        let mut consider = |t: Nanos| best = Some(best.map_or(t, |b: Nanos| b.min(t)));
        for r in &self.runs {
            if let Some(w) = within {
                consider(r.start_time.saturating_add(w));
            }
            let state = &nfa.states[r.state() as usize];
            for (i, wait) in state.waits.iter().enumerate() {
                if r.alive & (1 << i) != 0
                    && let Some(b) = wait.within
                {
                    consider(self.last_time(r).saturating_add(b));
                }
            }
        }
        best
    }

    /// True when `event` may start a match: without it, feeding the event to a key that
    /// holds nothing leaves the key holding nothing.
    pub fn may_start(nfa: &Nfa, event: &Event, key: &Value) -> bool {
        let empty = KeyState::default();
        let start_run = Run::starting(0, event.time());
        empty.matching_waits(nfa, &start_run, event, key, true).all != 0
    }

    /// Feeds one event (already in time order, after [`KeyState::advance`] to its time).
    pub fn on_event(
        &mut self,
        nfa: &Nfa,
        event: &Event,
        key: &Value,
        scratch: &mut Scratch,
        out: &mut Vec<Found>,
    ) {
        self.on_event_traced(nfa, event, key, scratch, out, None);
    }

    /// [`KeyState::on_event`], recording what happens to each run in `trace` when given.
    pub fn on_event_traced(
        &mut self,
        nfa: &Nfa,
        event: &Event,
        key: &Value,
        scratch: &mut Scratch,
        out: &mut Vec<Found>,
        mut trace: Option<&mut Trace>,
    ) {
        if self.next_seq >= RENUMBER_AT || self.next_run >= RENUMBER_AT {
            self.renumber();
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let first_out = out.len();
        let mut survivors = std::mem::take(&mut scratch.runs);
        survivors.clear();
        let mut created = std::mem::take(&mut scratch.created);
        created.clear();
        let mut runs = std::mem::take(&mut self.runs);
        for mut run in runs.drain() {
            let keep = self.step_run(
                nfa,
                &mut run,
                event,
                seq,
                key,
                &mut created,
                out,
                trace.as_deref_mut(),
            );
            if keep {
                survivors.push(run);
            } else {
                self.buffer.release(run.tail);
            }
        }
        // Every event may start a match (§3).
        let start_run = Run::starting(seq, event.time());
        let matched = self.matching_waits(nfa, &start_run, event, key, true);
        for i in bits(matched.taken) {
            let wait = &nfa.states[0].waits[i];
            let r = self.extend(
                nfa,
                &start_run,
                wait.target,
                wait.var,
                event,
                seq,
                out,
                trace.as_deref_mut(),
            );
            if let Some(r) = r {
                created.push(r);
            }
        }
        survivors.append(&mut created);
        scratch.created = created;
        // The key keeps its own vector (sized by its own history, not by the busiest key's)
        // and the scratch vector goes back to the pool for the next key.
        runs.extend(survivors.drain(..));
        if runs.spilled() && runs.capacity() > 4 * runs.len().max(1) {
            runs.shrink_to_fit();
        }
        self.runs = runs;
        scratch.runs = survivors;
        // Matches completed by one event come out in the order of their first events (§5).
        out[first_out..].sort_by_key(|f| (f.start_seq, f.id));
        self.settle(nfa, scratch, out, first_out, trace.as_deref_mut());
        self.buffer.trim();
        if let Some(t) = trace {
            note_emitted(t, &out[first_out..]);
        }
    }

    /// Applies one event to one run; returns whether the run survives.
    #[allow(clippy::too_many_arguments)]
    fn step_run(
        &mut self,
        nfa: &Nfa,
        run: &mut Run,
        event: &Event,
        seq: Seq,
        key: &Value,
        created: &mut Vec<Run>,
        out: &mut Vec<Found>,
        mut trace: Option<&mut Trace>,
    ) -> bool {
        let state = &nfa.states[run.state() as usize];
        if run.absence()
            && let Completion::Absence(guards) = &state.complete
        {
            if let Some(g) = guards
                .iter()
                .find(|g| self.guard_hits(nfa, g, run, event, key))
            {
                // The negated event happened: no absence (§4).
                run.set_absence(false);
                if run.alive == 0 {
                    if let Some(t) = trace {
                        t.note(What::Ended {
                            run: run.id,
                            state: run.state(),
                            reason: Reason::Negation {
                                name: g.name.clone(),
                                stream: g.stream,
                            },
                        });
                    }
                    return false;
                }
            } else if guards.iter().all(|g| g.strict) {
                // A trailing `not next` is decided by the first event after the run.
                run.set_absence(false);
                run.set_completed();
                self.buffer.retain(run.tail);
                out.push(Found {
                    kind: FoundKind::Match,
                    time: event.time(),
                    tail: run.tail,
                    start_seq: run.start_seq,
                    last_seq: self.last_seq(run.tail),
                    id: run.id,
                });
                if let Some(t) = trace.as_deref_mut() {
                    t.note(What::Completed {
                        run: run.id,
                        state: run.state(),
                        time: event.time(),
                    });
                }
            }
        }
        let matched = self.matching_waits(nfa, run, event, key, false);
        // Which open waits end with this event.
        let mut ended = 0u64;
        for i in bits(run.alive) {
            let wait = &state.waits[i];
            let bit = 1u64 << i;
            if wait
                .guards
                .iter()
                .any(|g| self.guard_hits(nfa, g, run, event, key))
            {
                ended |= bit;
                continue;
            }
            if let Some(u) = wait.until
                && wait.stream.0 == event.stream()
                && self.cond(nfa, u, run, event, key)
            {
                ended |= bit;
                continue;
            }
            match wait.contiguity {
                Contiguity::Strict => ended |= bit,
                Contiguity::Relaxed if matched.all & bit != 0 => ended |= bit,
                Contiguity::Relaxed => {
                    // One alternative taking the event ends the wait for the whole element.
                    if let Some(g) = wait.alt_group {
                        let sibling_took = bits(matched.all)
                            .any(|j| j != i && state.waits[j].alt_group == Some(g));
                        if sibling_took {
                            ended |= bit;
                        }
                    }
                }
                Contiguity::NonDeterministic => {}
            }
            // Greedy: an event the loop can take ends the waits that leave (or skip) it.
            if let Some(tag) = wait.tag
                && !tag.continues
                && greedy_loop_took(nfa, state, matched.all, tag.loop_id)
            {
                ended |= bit;
            }
        }
        let mark = trace.as_deref().map_or(0, Trace::len);
        for i in bits(matched.taken) {
            let wait = &state.waits[i];
            if let Some(r) = self.extend(
                nfa,
                run,
                wait.target,
                wait.var,
                event,
                seq,
                out,
                trace.as_deref_mut(),
            ) {
                created.push(r);
            }
        }
        if let Some(t) = trace {
            self.trace_step(nfa, run, ended, matched.taken, event, key, mark, t);
        }
        run.alive &= !ended;
        run.fresh = false;
        run.alive != 0 || run.absence()
    }

    /// Waits of the run's state whose step takes this event: `all` before greedy/reluctant
    /// preferences, `taken` after.
    fn matching_waits(
        &self,
        nfa: &Nfa,
        run: &Run,
        event: &Event,
        key: &Value,
        start: bool,
    ) -> Matched {
        let state = &nfa.states[run.state() as usize];
        let mut all = 0u64;
        for (i, wait) in state.waits.iter().enumerate() {
            let bit = 1u64 << i;
            if run.alive & bit == 0 || wait.stream.0 != event.stream() {
                continue;
            }
            // At the start every wait is open and guards have nothing to guard.
            if !start
                && wait
                    .guards
                    .iter()
                    .any(|g| self.guard_hits(nfa, g, run, event, key))
            {
                continue;
            }
            if let Some(u) = wait.until
                && self.cond(nfa, u, run, event, key)
            {
                continue;
            }
            if wait.cond.is_none_or(|c| self.cond(nfa, c, run, event, key)) {
                all |= bit;
            }
        }
        Matched {
            all,
            taken: prefer(nfa, &state.waits, all),
        }
    }

    /// Records what one event did to a run that took nothing or took and ended (cold: only
    /// when tracing). Called before the run's waits are updated.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    fn trace_step(
        &self,
        nfa: &Nfa,
        run: &Run,
        ended: u64,
        taken: u64,
        event: &Event,
        key: &Value,
        mark: usize,
        t: &mut Trace,
    ) {
        let survives = run.alive & !ended != 0 || run.absence();
        if taken != 0 {
            if !survives {
                // The first run made from this one replaces it.
                let me = run.id;
                if let Some(r) = t
                    .since(mark)
                    .iter_mut()
                    .find(|r| matches!(r.what, What::Branched { from, .. } if from == me))
                    && let What::Branched { from, run, state } = r.what
                {
                    r.what = What::Advanced { from, run, state };
                }
            }
            return;
        }
        if survives {
            t.note(What::Skipped {
                run: run.id,
                state: run.state(),
            });
        } else if let Some(reason) = self.end_reason(nfa, run, ended, event, key) {
            t.note(What::Ended {
                run: run.id,
                state: run.state(),
                reason,
            });
        }
    }

    /// Why the waits in `ended` ended, most telling first: a negation, an `until`, strict
    /// contiguity, a greedy loop.
    fn end_reason(
        &self,
        nfa: &Nfa,
        run: &Run,
        ended: u64,
        event: &Event,
        key: &Value,
    ) -> Option<Reason> {
        let state = &nfa.states[run.state() as usize];
        let ended = ended & run.alive;
        for i in bits(ended) {
            if let Some(g) = state.waits[i]
                .guards
                .iter()
                .find(|g| self.guard_hits(nfa, g, run, event, key))
            {
                return Some(Reason::Negation {
                    name: g.name.clone(),
                    stream: g.stream,
                });
            }
        }
        for i in bits(ended) {
            let w = &state.waits[i];
            if w.until
                .is_some_and(|u| w.stream.0 == event.stream() && self.cond(nfa, u, run, event, key))
            {
                return Some(Reason::Until { step: w.target });
            }
        }
        for i in bits(ended) {
            let w = &state.waits[i];
            if w.contiguity == Contiguity::Strict {
                return Some(Reason::Strict {
                    step: w.target,
                    other_stream: w.stream.0 != event.stream(),
                });
            }
        }
        (ended != 0).then_some(Reason::Greedy)
    }

    fn guard_hits(&self, nfa: &Nfa, g: &Guard, run: &Run, event: &Event, key: &Value) -> bool {
        if g.strict && !run.fresh {
            return false;
        }
        g.stream.0 == event.stream() && g.cond.is_none_or(|c| self.cond(nfa, c, run, event, key))
    }

    fn cond(&self, nfa: &Nfa, c: u32, run: &Run, event: &Event, key: &Value) -> bool {
        let ctx = Ctx {
            candidate: Some(event),
            buffer: &self.buffer,
            tail: run.tail,
            key,
            accumulated: &[],
            key_fields: &[],
        };
        nfa.conds
            .get(c as usize)
            .is_some_and(|e| eval::test(e, &ctx))
    }

    fn last_seq(&self, tail: u32) -> Seq {
        if tail == NIL {
            0
        } else {
            self.buffer.entry(tail).seq
        }
    }

    /// A new run: `from` plus `event` taken into `target`. Emits it if it completes; returns
    /// it if it can go on.
    #[allow(clippy::too_many_arguments)]
    fn extend(
        &mut self,
        nfa: &Nfa,
        from: &Run,
        target: StateId,
        var: VarId,
        event: &Event,
        seq: Seq,
        out: &mut Vec<Found>,
        mut trace: Option<&mut Trace>,
    ) -> Option<Run> {
        let in_loop = nfa.rule.vars.get(var.0 as usize).is_some_and(|v| v.is_loop);
        let tail = self
            .buffer
            .push(event.clone(), seq, var, in_loop, from.tail);
        let id = self.next_run;
        self.next_run += 1;
        if let Some(t) = trace.as_deref_mut() {
            t.note(if from.tail == NIL {
                What::Started {
                    run: id,
                    state: target,
                }
            } else {
                What::Branched {
                    from: from.id,
                    run: id,
                    state: target,
                }
            });
        }
        let state = &nfa.states[target as usize];
        let mut alive = if state.waits.len() >= 64 {
            u64::MAX
        } else {
            (1u64 << state.waits.len()) - 1
        };
        let (start_seq, start_time) = if from.tail == NIL {
            (seq, event.time())
        } else {
            (from.start_seq, from.start_time)
        };
        let mut run = Run::new(target, alive, start_seq, start_time, tail, id);
        run.fresh = true;
        match &state.complete {
            Completion::Now => {
                self.buffer.retain(tail);
                out.push(Found {
                    kind: FoundKind::Match,
                    time: event.time(),
                    tail,
                    start_seq: run.start_seq,
                    last_seq: seq,
                    id,
                });
                run.set_completed();
                if let Some(t) = trace {
                    t.note(What::Completed {
                        run: id,
                        state: target,
                        time: event.time(),
                    });
                }
                // A trailing reluctant loop stops at its minimum (§3).
                for (i, w) in state.waits.iter().enumerate() {
                    if let Some(t) = w.tag {
                        let reluctant = nfa
                            .loops
                            .get(t.loop_id as usize)
                            .is_some_and(|l| l.mode == LoopMode::Reluctant);
                        if reluctant && t.continues {
                            alive &= !(1u64 << i);
                        }
                    }
                }
                run.alive = alive;
            }
            Completion::Absence(_) => run.set_absence(true),
            Completion::No => {}
        }
        if run.alive == 0 && !run.absence() {
            self.buffer.release(tail);
            return None;
        }
        Some(run)
    }

    /// Advances time to `now`: expires runs whose bounds passed, completes absences (§4).
    pub fn advance(&mut self, nfa: &Nfa, now: Nanos, scratch: &mut Scratch, out: &mut Vec<Found>) {
        self.advance_traced(nfa, now, scratch, out, None);
    }

    /// [`KeyState::advance`], recording what happens to each run in `trace` when given.
    pub fn advance_traced(
        &mut self,
        nfa: &Nfa,
        now: Nanos,
        scratch: &mut Scratch,
        out: &mut Vec<Found>,
        mut trace: Option<&mut Trace>,
    ) {
        let within = nfa.rule.within;
        let timeouts = nfa.rule.on_timeout.is_some();
        let first_out = out.len();
        let mut runs = std::mem::take(&mut self.runs);
        let mut i = 0;
        while i < runs.len() {
            let run = &mut runs[i];
            let mut dead = None;
            let mut whole = false;
            if let Some(w) = within {
                let deadline = run.start_time.saturating_add(w);
                if now >= deadline {
                    dead = Some(deadline);
                    whole = true;
                }
            }
            if dead.is_none() {
                let state = &nfa.states[run.state() as usize];
                let mut latest = None;
                for b in bits(run.alive) {
                    if let Some(bound) = state.waits[b].within {
                        let deadline = self
                            .buffer
                            .time_of(run.tail, run.start_time)
                            .saturating_add(bound);
                        if now >= deadline {
                            run.alive &= !(1u64 << b);
                            latest = Some(latest.map_or(deadline, |l: Nanos| l.max(deadline)));
                        }
                    }
                }
                if run.alive == 0 && !run.absence() {
                    dead = Some(latest.unwrap_or(now));
                }
            }
            if let Some(deadline) = dead
                && let Some(run) = runs.swap_remove(i)
            {
                if let Some(t) = trace.as_deref_mut() {
                    note_expired(t, &run, deadline, whole, timeouts);
                }
                let last_seq = self.last_seq(run.tail);
                if run.absence() {
                    out.push(Found {
                        kind: FoundKind::Match,
                        time: deadline,
                        tail: run.tail,
                        start_seq: run.start_seq,
                        last_seq,
                        id: run.id,
                    });
                } else if timeouts && !run.completed() {
                    out.push(Found {
                        kind: FoundKind::Timeout,
                        time: deadline,
                        tail: run.tail,
                        start_seq: run.start_seq,
                        last_seq,
                        id: run.id,
                    });
                } else {
                    self.buffer.release(run.tail);
                }
                continue;
            }
            i += 1;
        }
        // swap_remove disturbed creation order, which decides output order.
        runs.sort_by_key(|r| r.id);
        self.runs = runs;
        // Outputs of one advance come out in deadline order, then run order.
        out[first_out..].sort_by_key(|f| (f.time, f.start_seq, f.id));
        self.settle(nfa, scratch, out, first_out, trace.as_deref_mut());
        self.buffer.trim();
        if let Some(t) = trace {
            note_emitted(t, &out[first_out..]);
        }
    }

    /// Emits or holds back matches as the skip strategy says (§5).
    fn settle(
        &mut self,
        nfa: &Nfa,
        scratch: &mut Scratch,
        out: &mut Vec<Found>,
        from: usize,
        mut trace: Option<&mut Trace>,
    ) {
        let skip = nfa.rule.skip;
        if skip == Skip::None {
            return;
        }
        // Only a trace needs to tell new matches from held ones (no allocation otherwise).
        let new_matches: Vec<RunId> = match trace {
            Some(_) => out[from..]
                .iter()
                .filter(|f| f.kind == FoundKind::Match)
                .map(|f| f.id)
                .collect(),
            None => Vec::new(),
        };
        // Matches found just now join the held-back ones; timeouts pass straight through.
        let mut pending = self.buffer.take_held();
        let mut keep = std::mem::take(&mut scratch.found);
        keep.clear();
        for f in out.drain(from..) {
            if f.kind == FoundKind::Match {
                pending.push(f);
            } else {
                keep.push(f);
            }
        }
        out.append(&mut keep);
        scratch.found = keep;
        pending.sort_by_key(|f| (f.start_seq, f.id));
        while let Some(first) = pending.first() {
            if self.runs.iter().any(|r| r.start_seq < first.start_seq) {
                break;
            }
            let m = pending.remove(0);
            let cut = match skip {
                Skip::None => None,
                Skip::ToNext => Some(Cut::Equal(m.start_seq)),
                Skip::PastLast => Some(Cut::AtOrBefore(m.last_seq)),
                Skip::ToFirst(v) => self.var_seq(m.tail, v, true).map(Cut::Before),
                Skip::ToLast(v) => self.var_seq(m.tail, v, false).map(Cut::Before),
            };
            let by = m.id;
            out.push(m);
            if let Some(cut) = cut {
                let mut runs = std::mem::take(&mut self.runs);
                runs.retain(|r| {
                    let drop = cut.drops(r.start_seq);
                    if drop {
                        self.buffer.release(r.tail);
                        if let Some(t) = trace.as_deref_mut() {
                            t.note(What::Ended {
                                run: r.id,
                                state: r.state(),
                                reason: Reason::Skip { by },
                            });
                        }
                    }
                    !drop
                });
                self.runs = runs;
                pending.retain(|p| {
                    let drop = cut.drops(p.start_seq);
                    if drop {
                        self.buffer.release(p.tail);
                        if let Some(t) = trace.as_deref_mut() {
                            t.note(What::Discarded { run: p.id, by });
                        }
                    }
                    !drop
                });
            }
        }
        if let Some(t) = trace {
            for p in &pending {
                if new_matches.contains(&p.id) {
                    t.note(What::Held { run: p.id });
                }
            }
        }
        self.buffer.set_held(pending);
    }

    /// Sequence number of the first (or last) event of `var` in the chain ending at `tail`.
    fn var_seq(&self, tail: u32, var: VarId, first: bool) -> Option<Seq> {
        let chain = self.buffer.chain(tail);
        let mut it = chain.iter().filter(|e| e.var == var).map(|e| e.seq);
        if first { it.next() } else { it.next_back() }
    }

    /// Ends every run and held-back match (a changed rule, an evicted key).
    pub fn clear(&mut self) {
        self.runs.clear();
        self.buffer = Buffer::default();
    }
}

/// Records the alerts a step produced, in the order they come out.
#[cold]
fn note_emitted(t: &mut Trace, found: &[Found]) {
    for f in found {
        t.note(What::Emitted {
            run: f.id,
            kind: f.kind,
            time: f.time,
        });
    }
}

/// Records a run whose time ran out: an absence completes, a timeout is reported, anything
/// else ends.
#[cold]
fn note_expired(t: &mut Trace, run: &Run, deadline: Nanos, whole: bool, timeouts: bool) {
    let reason = if whole {
        Reason::Within { deadline }
    } else {
        Reason::StepBound { deadline }
    };
    t.note(if run.absence() {
        What::Completed {
            run: run.id,
            state: run.state(),
            time: deadline,
        }
    } else if timeouts && !run.completed() {
        What::TimedOut {
            run: run.id,
            state: run.state(),
            reason,
        }
    } else {
        What::Ended {
            run: run.id,
            state: run.state(),
            reason,
        }
    });
}

/// Pruning rule of a skip strategy.
#[derive(Debug, Clone, Copy)]
enum Cut {
    Equal(Seq),
    AtOrBefore(Seq),
    Before(Seq),
}

impl Cut {
    fn drops(self, start: Seq) -> bool {
        match self {
            Cut::Equal(s) => start == s,
            Cut::AtOrBefore(s) => start <= s,
            Cut::Before(s) => start < s,
        }
    }
}

struct Matched {
    all: u64,
    taken: u64,
}

/// True when a wait continuing greedy loop `loop_id` accepts the event.
fn greedy_loop_took(
    nfa: &Nfa,
    state: &crate::compile::nfa::State,
    matched: u64,
    loop_id: u32,
) -> bool {
    let greedy = nfa
        .loops
        .get(loop_id as usize)
        .is_some_and(|l| l.mode == LoopMode::Greedy);
    greedy
        && bits(matched).any(|j| {
            state.waits[j]
                .tag
                .is_some_and(|t| t.loop_id == loop_id && t.continues)
        })
}

/// Applies greedy and reluctant preferences to the waits that matched.
fn prefer(nfa: &Nfa, waits: &[crate::compile::nfa::Wait], matched: u64) -> u64 {
    let mut taken = matched;
    for i in bits(matched) {
        let Some(tag) = waits[i].tag else { continue };
        let mode = nfa
            .loops
            .get(tag.loop_id as usize)
            .map_or(LoopMode::All, |l| l.mode);
        let wins = match mode {
            LoopMode::All => continue,
            // Greedy: a continuing take beats leaving the loop; reluctant: the reverse.
            LoopMode::Greedy => tag.continues,
            LoopMode::Reluctant => !tag.continues,
        };
        if wins {
            for j in bits(matched) {
                if let Some(other) = waits[j].tag
                    && other.loop_id == tag.loop_id
                    && other.continues != tag.continues
                {
                    taken &= !(1u64 << j);
                }
            }
        }
    }
    taken
}

/// Indices of the set bits.
fn bits(mask: u64) -> impl Iterator<Item = usize> {
    let mut m = mask;
    std::iter::from_fn(move || {
        if m == 0 {
            return None;
        }
        let i = m.trailing_zeros() as usize;
        m &= m - 1;
        Some(i)
    })
}
