//! The NFA a checked rule compiles to: immutable, shared by every key.
//!
//! Quantifiers are unrolled (`b{2,}` becomes two take states, the second looping), so a state
//! is simply "the run's last event was taken by this step instance". From each state the
//! compiler precomputes its **waits**: every step instance that could take the next event,
//! reached through epsilon moves (optional elements skipped, loops continued or left), each with
//! the contiguity, bound and negation guards that apply on the way (docs/semantics.md §3). The
//! engine then only walks precomputed lists: no epsilon closure at run time.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::lang::ast::Contiguity;

use super::hir::{LoopMode, Node, Quant, Rule, SeqElem, StreamId, TExpr, VarId};

/// Index of a state in [`Nfa::states`]; state 0 is the start.
pub type StateId = u32;

/// A compiled rule.
#[derive(Debug)]
pub struct Nfa {
    /// The checked rule (conditions, emit clauses, names).
    pub rule: Arc<Rule>,
    /// States; `states[0]` is the start state.
    pub states: Vec<State>,
    /// Conditions, referenced by index from waits and guards.
    pub conds: Vec<TExpr>,
    /// Loops of the pattern, referenced by waits' tags.
    pub loops: Vec<LoopInfo>,
}

/// A loop of the pattern (a quantified step or group).
#[derive(Debug, Clone)]
pub struct LoopInfo {
    /// How it chooses between taking more and moving on.
    pub mode: LoopMode,
}

/// "The last event was taken by step instance `var`#`copy`" (or the start).
#[derive(Debug, Clone)]
pub struct State {
    /// The variable of the step that took the last event; `None` for the start state.
    pub var: Option<VarId>,
    /// Which unrolled copy of the step (1-based), for explain output.
    pub copy: u32,
    /// Where the next event may go.
    pub waits: Vec<Wait>,
    /// Whether a run in this state is a match.
    pub complete: Completion,
}

/// Whether reaching a state completes the pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Completion {
    /// Not complete.
    No,
    /// Complete now.
    Now,
    /// Complete when time passes the deadline with none of these events (trailing
    /// `not followed by`); a strict guard (trailing `not next`) only looks at the next event.
    Absence(Vec<Guard>),
}

/// One way a run in a state may take its next event.
#[derive(Debug, Clone)]
pub struct Wait {
    /// The state after taking.
    pub target: StateId,
    /// The variable the event binds to.
    pub var: VarId,
    /// The stream the event must come from.
    pub stream: StreamId,
    /// Condition (index into [`Nfa::conds`]); `None` accepts every event of the stream.
    pub cond: Option<u32>,
    /// A loop's `until` (index into [`Nfa::conds`]); a matching event ends this wait.
    pub until: Option<u32>,
    /// How the wait treats events it does not take.
    pub contiguity: Contiguity,
    /// Bound between the run's last event and this take, nanoseconds.
    pub within: Option<i64>,
    /// Negations that end this wait when they match.
    pub guards: Vec<Guard>,
    /// For greedy and reluctant loops: whether this wait continues or leaves which loop.
    pub tag: Option<LoopTag>,
    /// Waits into the alternatives of one `a | b` element share a group: the element is one
    /// step for contiguity, so a relaxed wait ends when any alternative takes an event.
    pub alt_group: Option<u32>,
}

/// A wait's relation to the loop it continues or leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoopTag {
    /// Index into [`Nfa::loops`].
    pub loop_id: u32,
    /// True when the wait takes another iteration, false when it leaves the loop.
    pub continues: bool,
}

/// A negated event.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    /// `not next`: only the first event after the run's last take counts.
    pub strict: bool,
    /// The stream.
    pub stream: StreamId,
    /// Condition (index into [`Nfa::conds`]); `None` = any event of the stream.
    pub cond: Option<u32>,
    /// Name written for the negated step, for traces.
    pub name: Option<String>,
}

/// Most waits a state may have (the run's alive set is a 64-bit mask).
pub const MAX_WAITS: usize = 64;

/// Most states a rule's automaton may have (a run holds its state in 16 bits).
pub const MAX_STATES: usize = 1 << 16;

/// Why a rule could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// Too many alternatives reachable from one state.
    #[error(
        "rule `{rule}`: a state has {waits} possible next steps; at most {MAX_WAITS} are supported"
    )]
    TooManyWaits {
        /// Rule name.
        rule: String,
        /// How many.
        waits: usize,
    },
    /// A pattern too large for a run to hold its state in 16 bits.
    #[error(
        "rule `{rule}`: the pattern compiles to {states} states; at most {MAX_STATES} are supported (split it into several rules)"
    )]
    TooManyStates {
        /// Rule name.
        rule: String,
        /// How many.
        states: usize,
    },
}

// -- construction graph ---------------------------------------------------------------------

type GId = usize;

#[derive(Debug, Clone)]
enum G {
    Take {
        var: VarId,
        stream: StreamId,
        cond: Option<u32>,
        until: Option<u32>,
        copy: u32,
        next: GId,
    },
    Eps(Vec<GId>),
    /// The alternatives of an `a | b` element.
    Alt(Vec<GId>, u32),
    Link {
        contiguity: Contiguity,
        within: Option<i64>,
        guards: Vec<Guard>,
        next: GId,
    },
    Not {
        guard: Guard,
        /// The negation is the pattern's last element: an absence, not a guard.
        trailing: bool,
        next: GId,
    },
    Mark {
        tag: LoopTag,
        next: GId,
    },
    End,
    /// Placeholder patched once its target exists (loops point backwards).
    Hole,
}

struct Builder {
    g: Vec<G>,
    alts: u32,
    conds: Vec<TExpr>,
    loops: Vec<LoopInfo>,
}

impl Builder {
    fn add(&mut self, n: G) -> GId {
        self.g.push(n);
        self.g.len() - 1
    }

    fn cond(&mut self, e: &Option<TExpr>) -> Option<u32> {
        e.as_ref().map(|e| {
            self.conds.push(e.clone());
            (self.conds.len() - 1) as u32
        })
    }

    /// Compiles `node` so that it continues at `next`; returns its entry. `inner_guards` are
    /// negations that follow this node and so also guard its loop's inner waits (fine print 4).
    fn c(&mut self, node: &Node, next: GId, inner_guards: &[Guard]) -> GId {
        match node {
            Node::Step(s) => {
                let cond = self.cond(&s.cond);
                let until = self.cond(&s.until);
                let (var, stream) = (s.var, s.stream);
                let one = move |b: &mut Builder, copy: u32, next: GId| {
                    b.add(G::Take {
                        var,
                        stream,
                        cond,
                        until,
                        copy,
                        next,
                    })
                };
                match s.quant {
                    None => one(self, 1, next),
                    Some(q) => self.c_repeat(q, next, inner_guards, &mut |b, copy, next| {
                        one(b, copy, next)
                    }),
                }
            }
            Node::Group { body, quant } => {
                let body = body.as_ref().clone();
                self.c_repeat(*quant, next, inner_guards, &mut |b, _copy, next| {
                    b.c(&body, next, &[])
                })
            }
            Node::Alt(alts) => {
                let entries = alts.iter().map(|a| self.c(a, next, inner_guards)).collect();
                self.alts += 1;
                self.add(G::Alt(entries, self.alts))
            }
            Node::Seq(items) => {
                let mut cont = next;
                let mut following_guards: Vec<Guard> = inner_guards.to_vec();
                for (i, item) in items.iter().enumerate().rev() {
                    match &item.item {
                        SeqElem::Not(n) => {
                            let guard = Guard {
                                strict: item.contiguity == Contiguity::Strict,
                                stream: n.stream,
                                cond: self.cond(&n.cond),
                                name: n.name.clone(),
                            };
                            following_guards.push(guard.clone());
                            let trailing = matches!(self.g[cont], G::End);
                            cont = self.add(G::Not {
                                guard,
                                trailing,
                                next: cont,
                            });
                        }
                        SeqElem::Node(n) => {
                            let entry = self.c(n, cont, &following_guards);
                            following_guards.clear();
                            cont = if i == 0 {
                                entry
                            } else {
                                self.add(G::Link {
                                    contiguity: item.contiguity,
                                    within: item.within,
                                    guards: Vec::new(),
                                    next: entry,
                                })
                            };
                        }
                    }
                }
                cont
            }
        }
    }

    /// Unrolls a quantifier: copies 1..=k of `body`, the last looping when unbounded.
    fn c_repeat(
        &mut self,
        q: Quant,
        next: GId,
        inner_guards: &[Guard],
        body: &mut dyn FnMut(&mut Builder, u32, GId) -> GId,
    ) -> GId {
        let loop_id = self.loops.len() as u32;
        self.loops.push(LoopInfo { mode: q.mode });
        let cont = |continues| LoopTag { loop_id, continues };
        let inner_link = |b: &mut Builder, target: GId| {
            b.add(G::Link {
                contiguity: q.inner,
                within: None,
                guards: inner_guards.to_vec(),
                next: target,
            })
        };
        let copies = match q.max {
            Some(m) => m.max(1),
            None => q.min.max(1),
        };
        // Build backwards: the continuation after copy i.
        let exit = self.add(G::Mark {
            tag: cont(false),
            next,
        });
        let mut after: GId;
        let mut entry_of_next: Option<GId> = None;
        for copy in (1..=copies).rev() {
            let last = copy == copies;
            after = if last {
                if q.max.is_none() {
                    // Loop back to this copy: patched after the copy exists.
                    let hole = self.add(G::Hole);
                    let back = self.add(G::Mark {
                        tag: cont(true),
                        next: hole,
                    });
                    self.add(G::Eps(vec![back, exit]))
                } else {
                    exit
                }
            } else {
                let to_next = inner_link(self, entry_of_next.unwrap_or(exit));
                if copy < q.min {
                    to_next
                } else {
                    let c = self.add(G::Mark {
                        tag: cont(true),
                        next: to_next,
                    });
                    self.add(G::Eps(vec![c, exit]))
                }
            };
            let entry = body(self, copy, after);
            if last && q.max.is_none() {
                // Patch the hole: continue with another iteration of this copy.
                if let G::Eps(v) = &self.g[after]
                    && let Some(&back) = v.first()
                    && let G::Mark { next: hole, .. } = self.g[back]
                {
                    let link = inner_link(self, entry);
                    self.g[hole] = G::Eps(vec![link]);
                }
            }
            entry_of_next = Some(entry);
        }
        let first = entry_of_next.unwrap_or(exit);
        if q.min == 0 {
            let c = self.add(G::Mark {
                tag: cont(true),
                next: first,
            });
            self.add(G::Eps(vec![c, exit]))
        } else {
            first
        }
    }
}

/// Accumulated facts along an epsilon path.
#[derive(Clone)]
struct Path {
    contiguity: Option<Contiguity>,
    within: Option<i64>,
    guards: Vec<Guard>,
    tag: Option<LoopTag>,
    alt_group: Option<u32>,
    negated: bool,
}

/// Compiles a checked rule.
pub fn compile(rule: Arc<Rule>) -> Result<Nfa, CompileError> {
    let mut b = Builder {
        alts: 0,
        g: Vec::new(),
        conds: Vec::new(),
        loops: Vec::new(),
    };
    let end = b.add(G::End);
    let entry = b.c(&rule.pattern, end, &[]);
    // One NFA state per take node, plus the start.
    let mut state_of = vec![u32::MAX; b.g.len()];
    let mut takes = Vec::new();
    for (i, n) in b.g.iter().enumerate() {
        if matches!(n, G::Take { .. }) {
            state_of[i] = (takes.len() + 1) as u32;
            takes.push(i);
        }
    }
    let mut states = Vec::with_capacity(takes.len() + 1);
    let (waits, complete) = closure(&b.g, &state_of, entry);
    states.push(State {
        var: None,
        copy: 0,
        waits,
        complete,
    });
    for &t in &takes {
        if let G::Take {
            var, copy, next, ..
        } = b.g[t]
        {
            let (waits, complete) = closure(&b.g, &state_of, next);
            states.push(State {
                var: Some(var),
                copy,
                waits,
                complete,
            });
        }
    }
    if states.len() > MAX_STATES {
        return Err(CompileError::TooManyStates {
            rule: rule.name.clone(),
            states: states.len(),
        });
    }
    if let Some(s) = states.iter().find(|s| s.waits.len() > MAX_WAITS) {
        return Err(CompileError::TooManyWaits {
            rule: rule.name.clone(),
            waits: s.waits.len(),
        });
    }
    Ok(Nfa {
        rule,
        states,
        conds: b.conds,
        loops: b.loops,
    })
}

/// Every take reachable from `from` by epsilon moves, and whether the end is reachable.
fn closure(g: &[G], state_of: &[u32], from: GId) -> (Vec<Wait>, Completion) {
    let mut waits: Vec<Wait> = Vec::new();
    let mut complete = Completion::No;
    let mut absence_guards: Vec<Guard> = Vec::new();
    let mut stack = vec![(
        from,
        Path {
            contiguity: None,
            within: None,
            guards: Vec::new(),
            tag: None,
            alt_group: None,
            negated: false,
        },
        0usize,
    )];
    // Epsilon cycles only arise through loop back edges, which always pass a take; the depth
    // cap is a safety net against a compiler bug, not a semantic limit.
    while let Some((n, path, depth)) = stack.pop() {
        if depth > 10_000 {
            continue;
        }
        match &g[n] {
            G::Take {
                var,
                stream,
                cond,
                until,
                ..
            } => {
                waits.push(Wait {
                    target: state_of[n],
                    var: *var,
                    stream: *stream,
                    cond: *cond,
                    until: *until,
                    contiguity: path.contiguity.unwrap_or(Contiguity::Relaxed),
                    within: path.within,
                    guards: path.guards.clone(),
                    tag: path.tag,
                    alt_group: path.alt_group,
                });
            }
            G::Eps(next) => {
                // Reverse so the first alternative is explored (and listed) first.
                for &m in next.iter().rev() {
                    stack.push((m, path.clone(), depth + 1));
                }
            }
            G::Alt(next, id) => {
                for &m in next.iter().rev() {
                    let mut p = path.clone();
                    p.alt_group = Some(*id);
                    stack.push((m, p, depth + 1));
                }
            }
            G::Link {
                contiguity,
                within,
                guards,
                next,
            } => {
                let mut p = path.clone();
                // A link starts another element: the alternation (if any) is behind us.
                p.alt_group = None;
                p.contiguity = Some(*contiguity);
                p.within = *within;
                p.guards.extend(guards.iter().cloned());
                stack.push((*next, p, depth + 1));
            }
            G::Not {
                guard,
                trailing,
                next,
            } => {
                let mut p = path.clone();
                p.guards.push(guard.clone());
                p.negated |= *trailing;
                stack.push((*next, p, depth + 1));
            }
            G::Mark { tag, next } => {
                let mut p = path.clone();
                if p.tag.is_none() {
                    p.tag = Some(*tag);
                }
                stack.push((*next, p, depth + 1));
            }
            G::End => {
                if path.negated {
                    for gd in path.guards {
                        if !absence_guards.contains(&gd) {
                            absence_guards.push(gd);
                        }
                    }
                } else {
                    complete = Completion::Now;
                }
            }
            G::Hole => {}
        }
    }
    if complete == Completion::No && !absence_guards.is_empty() {
        complete = Completion::Absence(absence_guards);
    }
    (waits, complete)
}

impl Nfa {
    /// A state's display name: `start`, `b#2` (the step's 2nd take); a step repeated by a
    /// group gets a letter per iteration of the group (`slow#1b`).
    pub fn state_name(&self, id: StateId) -> String {
        let Some(State {
            var: Some(v), copy, ..
        }) = self.states.get(id as usize)
        else {
            return "start".to_string();
        };
        let name = self
            .rule
            .vars
            .get(v.0 as usize)
            .map_or("?", |x| x.name.as_str());
        // States are built from the end of the pattern backwards, so later iterations of a
        // group have smaller ids: count the same (step, copy) at higher ids.
        let same = |s: &&State| s.var == Some(*v) && s.copy == *copy;
        let total = self.states.iter().filter(same).count();
        if total == 1 {
            return format!("{name}#{copy}");
        }
        let rank = self.states[id as usize + 1..].iter().filter(same).count();
        let letter = (b'a' + (rank % 26) as u8) as char;
        format!("{name}#{copy}{letter}")
    }

    /// State ids in pattern order: the start, then by step, copy and iteration.
    pub fn display_order(&self) -> Vec<StateId> {
        let mut ids: Vec<StateId> = (0..self.states.len() as StateId).collect();
        ids.sort_by_key(|&i| {
            let s = &self.states[i as usize];
            (
                s.var.map_or(-1, |v| i64::from(v.0)),
                s.copy,
                std::cmp::Reverse(i),
            )
        });
        ids
    }

    /// The NFA as text (`tern explain`).
    pub fn to_text(&self, stream_name: &dyn Fn(StreamId) -> String) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "rule {} ({} states)",
            self.rule.name,
            self.states.len()
        );
        for i in self.display_order() {
            let s = &self.states[i as usize];
            let complete = match &s.complete {
                Completion::No => String::new(),
                Completion::Now => "  [complete]".to_string(),
                Completion::Absence(g) => format!(
                    "  [complete when time passes without {}]",
                    g.iter()
                        .map(|g| guard_text(g, stream_name))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            let _ = writeln!(out, "  {}{}", self.state_name(i), complete);
            for w in &s.waits {
                let mut line = format!(
                    "    {} {} -> {}",
                    match w.contiguity {
                        Contiguity::Strict => "next",
                        Contiguity::Relaxed => "followed by",
                        Contiguity::NonDeterministic => "followed by any",
                    },
                    stream_name(w.stream),
                    self.state_name(w.target)
                );
                if w.cond.is_some() {
                    line.push_str(" if condition");
                }
                if w.until.is_some() {
                    line.push_str(", until");
                }
                if let Some(d) = w.within {
                    let _ = write!(line, ", within {}", fmt_duration(d));
                }
                for g in &w.guards {
                    let _ = write!(line, ", unless {}", guard_text(g, stream_name));
                }
                if let Some(t) = w.tag {
                    let mode = self
                        .loops
                        .get(t.loop_id as usize)
                        .map_or(LoopMode::All, |l| l.mode);
                    if mode != LoopMode::All {
                        let _ = write!(
                            line,
                            " [{} loop {}]",
                            if t.continues { "continues" } else { "leaves" },
                            match mode {
                                LoopMode::Greedy => "greedy",
                                LoopMode::Reluctant => "reluctant",
                                LoopMode::All => "",
                            }
                        );
                    }
                }
                let _ = writeln!(out, "{line}");
            }
        }
        out
    }

    /// The NFA in Graphviz DOT.
    pub fn to_dot(&self, stream_name: &dyn Fn(StreamId) -> String) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "digraph \"{}\" {{", self.rule.name.replace('"', "'"));
        let _ = writeln!(out, "  rankdir=LR;");
        for (i, s) in self.states.iter().enumerate() {
            let shape = match s.complete {
                Completion::No => "circle",
                _ => "doublecircle",
            };
            let _ = writeln!(
                out,
                "  s{i} [label=\"{}\", shape={shape}];",
                self.state_name(i as StateId)
            );
        }
        for (i, s) in self.states.iter().enumerate() {
            for w in &s.waits {
                let style = match w.contiguity {
                    Contiguity::Strict => "solid",
                    Contiguity::Relaxed => "dashed",
                    Contiguity::NonDeterministic => "dotted",
                };
                let mut label = stream_name(w.stream);
                if !w.guards.is_empty() {
                    let _ = write!(
                        label,
                        " unless {}",
                        w.guards
                            .iter()
                            .map(|g| guard_text(g, stream_name))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                let _ = writeln!(
                    out,
                    "  s{i} -> s{} [label=\"{}\", style={style}];",
                    w.target,
                    label.replace('"', "'")
                );
            }
        }
        out.push_str("}\n");
        out
    }
}

fn guard_text(g: &Guard, stream_name: &dyn Fn(StreamId) -> String) -> String {
    format!(
        "{}{}{}",
        if g.strict { "next " } else { "" },
        g.name
            .as_deref()
            .map(|n| format!("{n}: "))
            .unwrap_or_default(),
        stream_name(g.stream)
    )
}

/// Formats nanoseconds as a duration literal (`1h30m`, `500ms`).
pub fn fmt_duration(ns: i64) -> String {
    let mut ms = ns / 1_000_000;
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if ms < 0 {
        out.push('-');
        ms = -ms;
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if ms >= size {
            let _ = write!(out, "{}{unit}", ms / size);
            ms %= size;
        }
    }
    out
}
