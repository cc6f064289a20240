//! What the NFA did, event by event: runs started, advanced, branched, completed or ended, and
//! why. Recorded only when asked for (`tern explain --input`, `tern test`); the stepping code
//! pays one predictable branch per call when it is off.
//!
//! A record names the engine's run id. Run ids change when a run takes an event (the run
//! that took it is a new run, see [`super::run`]): [`What::Advanced`] says that the new run
//! replaces the old one, [`What::Branched`] that the old one goes on waiting beside it.
//! Readers that want one id per line of descent follow `from`.

use std::sync::Arc;

use serde_json::Value as Json;

use crate::compile::hir::StreamId;
use crate::compile::nfa::StateId;
use crate::event::{Event, Nanos};

use super::run::FoundKind;

/// One thing that happened to one (rule, key).
#[derive(Debug, Clone)]
pub struct Record {
    /// The rule.
    pub rule: Arc<str>,
    /// The key, as alerts show it.
    pub key: Json,
    /// What happened.
    pub what: What,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum What {
    /// An event is fed to the rule for this key; the records after it, up to the next
    /// `Event` or `Time` of the same rule and key, are what it caused.
    Event {
        /// The event.
        event: Event,
        /// The key's sequence number of the event.
        seq: super::run::Seq,
    },
    /// Time passed `now` for this key without an event (a deadline came due).
    Time {
        /// The key's time.
        now: Nanos,
    },
    /// The event started a new run, taken into `state`.
    Started {
        /// The new run.
        run: super::run::RunId,
        /// The state it is in (the step that took the event).
        state: StateId,
    },
    /// Run `from` took the event into `state` and the result is run `run`; `from` is gone.
    Advanced {
        /// The run that took the event.
        from: super::run::RunId,
        /// The run it became.
        run: super::run::RunId,
        /// Its state.
        state: StateId,
    },
    /// Run `from` took the event into `state` as the new run `run`, and `from` goes on
    /// waiting (a loop that may take more, an optional step, `followed by any`).
    Branched {
        /// The run that took the event and goes on.
        from: super::run::RunId,
        /// The new run.
        run: super::run::RunId,
        /// Its state.
        state: StateId,
    },
    /// A run that waits on; the event was not for it (relaxed contiguity skips it).
    Skipped {
        /// The run.
        run: super::run::RunId,
        /// Its state.
        state: StateId,
    },
    /// The run is a complete match (an absence: its deadline passed without the negated
    /// event).
    Completed {
        /// The run.
        run: super::run::RunId,
        /// Its state.
        state: StateId,
        /// The match's time.
        time: Nanos,
    },
    /// A completed match waits for an earlier-started run to be decided (skip strategies).
    Held {
        /// The run whose match waits.
        run: super::run::RunId,
    },
    /// The run's time ran out and the rule emits a timeout alert for it.
    TimedOut {
        /// The run.
        run: super::run::RunId,
        /// Its state.
        state: StateId,
        /// Which bound passed ([`Reason::Within`] or [`Reason::StepBound`]).
        reason: Reason,
    },
    /// A held match was dropped by the skip strategy when run `by`'s match was emitted.
    Discarded {
        /// The run whose match is dropped.
        run: super::run::RunId,
        /// The run whose match pruned it.
        by: super::run::RunId,
    },
    /// The run is gone without a match (or after its match, when it could have taken more).
    Ended {
        /// The run.
        run: super::run::RunId,
        /// Its state.
        state: StateId,
        /// Why.
        reason: Reason,
    },
    /// A match or timeout became an alert (in the order alerts come out).
    Emitted {
        /// The run.
        run: super::run::RunId,
        /// Match or timeout.
        kind: FoundKind,
        /// The alert's event time.
        time: Nanos,
    },
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Reason {
    /// A strict (`next`, `consecutive`) wait for `step` saw an event it does not take: the
    /// condition was false, or the event came from another stream.
    Strict {
        /// The state it would have taken the event into.
        step: StateId,
        /// The event's stream is not the step's.
        other_stream: bool,
    },
    /// A negated event was seen (`not next`, `not followed by`).
    Negation {
        /// The negated step's name, if it has one.
        name: Option<String>,
        /// Its stream.
        stream: StreamId,
    },
    /// A loop's `until` condition held.
    Until {
        /// The loop's state that the wait would have taken the event into.
        step: StateId,
    },
    /// A greedy loop took the event, which ends the waits that leave it.
    Greedy,
    /// The whole-match `within` bound passed.
    Within {
        /// first event + bound.
        deadline: Nanos,
    },
    /// A bound between steps passed.
    StepBound {
        /// last event + bound.
        deadline: Nanos,
    },
    /// Pruned by the skip strategy when run `by`'s match was emitted.
    Skip {
        /// The run whose match pruned it.
        by: super::run::RunId,
    },
}

/// The records of one engine group, with the (rule, key) they are about.
#[derive(Debug, Default)]
pub struct Trace {
    records: Vec<Record>,
    rule: Option<Arc<str>>,
    key: Json,
}

impl Trace {
    /// Sets the (rule, key) of the records that follow.
    pub fn begin(&mut self, rule: &str, key: Json) {
        if self.rule.as_deref() != Some(rule) {
            self.rule = Some(Arc::from(rule));
        }
        self.key = key;
    }

    /// Records a happening for the current (rule, key).
    pub fn note(&mut self, what: What) {
        self.records.push(Record {
            rule: self.rule.clone().unwrap_or_else(|| Arc::from("")),
            key: self.key.clone(),
            what,
        });
    }

    /// How many records are held.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The records from index `from` on (to rewrite `Branched` into `Advanced`).
    pub(crate) fn since(&mut self, from: usize) -> &mut [Record] {
        let from = from.min(self.records.len());
        &mut self.records[from..]
    }

    /// Takes every record so far.
    pub fn take(&mut self) -> Vec<Record> {
        std::mem::take(&mut self.records)
    }
}
