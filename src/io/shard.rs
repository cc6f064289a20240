//! Keys sharded across worker threads, each owning the keys whose hash picks it (no lock on
//! the per-event path).
//!
//! The calling thread only cuts the input into epochs of records, shared by every worker.
//! Each epoch is cut into chunks of contiguous records, a few per worker, that the workers
//! claim one at a time: each line is read once, in parallel, and a worker that falls behind
//! (its core taken by another thread) reads fewer chunks instead of holding up the others.
//! The worker that reads a chunk passes its values to every other worker with a mark per
//! record: time, stream, owner, or not an event; each owner builds its own events from
//! them. Each worker then walks all the marks of the epoch in input order, so every
//! worker's clock sees every record: it decides lateness exactly as one engine would and
//! feeds its own events to its engine. At the end of each epoch it advances its engine's
//! groups to the clock's time ([`Engine::advance_group`]), so each worker releases events
//! and fires timeouts at the same event times as a single engine. A key's events and
//! timers reach its rules in the same order as in one engine, so every alert (id included)
//! is the same. A worker's inbox takes epochs and its peers' chunks alike: it applies its
//! oldest epoch as soon as every chunk of it has come and reads chunks of the next epochs
//! while one has not, so it waits only when no chunk is left to claim.
//!
//! `Clock` mirrors the engine's watermark rule (docs/semantics.md §2): a change to that rule
//! in the engine must be made here too (`tests/shard.rs` compares late counts and alerts with
//! one engine).
//!
//! Output order: the alerts that all workers produced while applying an epoch come out
//! together, sorted by (event time, rule, key, id). That order is deterministic for a given
//! number of workers; it differs from one engine's order only inside an epoch, so
//! `--workers N` output equals `--workers 1` output once both are sorted by the same key.
//! Rejected records (late, or not records) come out in input order with their epoch.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use crate::compile::hir::{Program, StreamId};
use crate::compile::schema::StreamSchema;
use crate::engine::alert::Alert;
use crate::engine::{Engine, Late, Stats};
use crate::event::{Event, Nanos, ValueRef};
use crate::io::input::fast::{self, Raw};
use crate::io::input::{BadLine, JsonReader, Record, is_blank};

/// Input records per epoch: one message per worker per epoch, so channels cost nothing per
/// event.
pub const BATCH: usize = 4096;
/// Bytes of JSON Lines per epoch, read whole (a longer line makes a longer epoch).
const BLOCK: usize = 1 << 20;
/// Epochs sent and not yet applied by every worker before the calling thread waits: a worker
/// that cannot apply its oldest epoch yet (a peer's chunk of it has not come) reads chunks of
/// the next ones meanwhile, so a few keep all busy, and each is a read buffer in memory.
const QUEUE: usize = 4;
/// Chunks per worker that an epoch's records are cut into for reading: workers claim them
/// one at a time, so a worker that falls behind (its core taken by another thread, its
/// caches cold) reads fewer of them and the others go on instead of waiting for its share.
const CHUNKS_PER_WORKER: usize = 4;

/// How events are routed: per stream, the fields whose values pick the worker.
#[derive(Debug, Clone)]
pub struct Router {
    /// Per stream: the key fields (indices into its schema); `None` when nothing keyed reads it.
    routes: Vec<Option<Vec<u16>>>,
    workers: usize,
    hasher: foldhash::fast::FixedState,
}

impl Router {
    /// Plans routing for `workers` workers, or says why the program's keys do not allow it
    /// (a rule without a key, rules on one stream keyed by different fields, an aggregate
    /// whose output is keyed otherwise than by the aggregate's key).
    pub fn plan(program: &Program, workers: usize) -> Result<Router, String> {
        let mut routes: Vec<Option<(Vec<u16>, String)>> = vec![None; program.streams.len()];
        let mut set = |stream: StreamId, key: Vec<u16>, by: String| -> Result<(), String> {
            let Some(slot) = routes.get_mut(stream.0 as usize) else {
                return Ok(());
            };
            match slot {
                Some((k, first)) if *k != key => Err(format!(
                    "{first} and {by} key stream `{}` by different fields",
                    program.stream(stream).name
                )),
                Some(_) => Ok(()),
                None => {
                    *slot = Some((key, by));
                    Ok(())
                }
            }
        };
        for a in &program.aggregates {
            if a.key.is_empty() {
                return Err(format!("aggregate `{}` has no key", a.name));
            }
            let by = format!("aggregate `{}`", a.name);
            set(a.source, a.key.clone(), by.clone())?;
            // Its output events start with the key values, in the aggregate's key order.
            set(a.output, (0..a.key.len() as u16).collect(), by)?;
        }
        for r in &program.rules {
            for (i, s) in r.streams.iter().enumerate() {
                let key = r.key.get(i).cloned().unwrap_or_default();
                if key.is_empty() {
                    return Err(format!("rule `{}` has no key (one global key)", r.name));
                }
                set(*s, key, format!("rule `{}`", r.name))?;
            }
        }
        Ok(Router {
            routes: routes.into_iter().map(|r| r.map(|(k, _)| k)).collect(),
            workers: workers.max(1),
            hasher: foldhash::fast::FixedState::with_seed(0x7465_726e),
        })
    }

    /// The worker an event goes to.
    pub fn worker(&self, event: &Event) -> usize {
        match self.routes.get(event.stream() as usize) {
            Some(Some(fields)) => {
                let mut h = self.hasher.build_hasher();
                for f in fields {
                    let v = event.get(*f as usize).unwrap_or(ValueRef::Null);
                    v.hash_into(&mut h);
                }
                self.pick(h.finish())
            }
            // Read by nothing keyed (or by nothing at all): any worker will do.
            _ => 0,
        }
    }

    /// The worker for the event a JSON line of `stream` holds, and its time, read without
    /// building the event; `None` when the line needs full decoding (the general path).
    fn worker_of_line(
        &self,
        schema: &StreamSchema,
        stream: StreamId,
        line: &[u8],
        raws: &mut Vec<Raw>,
    ) -> Option<(usize, Nanos)> {
        let fields = match self.routes.get(stream.0 as usize) {
            Some(Some(fields)) => fields.as_slice(),
            _ => &[],
        };
        let first = raws.len();
        let time = fast::read(schema, line, raws)?;
        if fields.is_empty() {
            return Some((0, time));
        }
        let mut h = self.hasher.build_hasher();
        for f in fields {
            let raw = raws.get(first + *f as usize).copied().unwrap_or(Raw::Null);
            raw.hash_into(line, &mut h);
        }
        Some((self.pick(h.finish()), time))
    }

    fn pick(&self, hash: u64) -> usize {
        (hash % self.workers as u64) as usize
    }
}

/// Event time as one engine keeps it (docs/semantics.md §2), over all keys: per stream the
/// newest time, per group the explicit watermark and the time released so far. It mirrors
/// the engine's own rule so that every worker decides lateness exactly as one engine would.
struct Clock {
    lateness: Vec<Nanos>,
    group_of: Vec<usize>,
    members: Vec<Vec<StreamId>>,
    max_seen: Vec<Option<Nanos>>,
    forced: Vec<Nanos>,
    now: Vec<Nanos>,
    /// Per stream, its watermark as it stands (an event at or before it is late); the
    /// maximum for a stream that belongs to no group.
    limit: Vec<Nanos>,
}

impl Clock {
    fn new(program: &Program, members: &[Vec<StreamId>]) -> Clock {
        let mut group_of = vec![usize::MAX; program.streams.len()];
        for (g, m) in members.iter().enumerate() {
            for s in m {
                if let Some(x) = group_of.get_mut(s.0 as usize) {
                    *x = g;
                }
            }
        }
        let mut clock = Clock {
            lateness: program.streams.iter().map(|s| s.lateness).collect(),
            group_of,
            members: members.to_vec(),
            max_seen: vec![None; program.streams.len()],
            forced: vec![Nanos::MIN; members.len()],
            now: vec![Nanos::MIN; members.len()],
            limit: Vec::new(),
        };
        clock.limit = (0..program.streams.len())
            .map(|s| match clock.group_of[s] {
                usize::MAX => Nanos::MAX,
                g => clock.watermark(s, g),
            })
            .collect();
        clock
    }

    /// Brings the limits of group `g`'s streams up to date.
    fn refresh(&mut self, g: usize) {
        for i in 0..self.members.get(g).map_or(0, Vec::len) {
            let s = self.members[g][i].0 as usize;
            let w = self.watermark(s, g);
            if let Some(l) = self.limit.get_mut(s) {
                *l = w;
            }
        }
    }

    fn watermark(&self, stream: usize, g: usize) -> Nanos {
        let own = match self.max_seen[stream] {
            Some(max) => max.saturating_sub(self.lateness[stream]).saturating_sub(1),
            None => Nanos::MIN,
        };
        own.max(self.forced[g]).max(self.now[g])
    }

    /// The group's time: the minimum watermark of its streams with data.
    fn group_watermark(&self, g: usize) -> Nanos {
        let mut wm: Option<Nanos> = None;
        for s in &self.members[g] {
            let s = s.0 as usize;
            if self.max_seen[s].is_some() {
                let w = self.watermark(s, g);
                wm = Some(wm.map_or(w, |x| x.min(w)));
            }
        }
        wm.unwrap_or(Nanos::MIN).max(self.forced[g])
    }

    /// Accepts the time of an event of `stream`, or says it is late.
    fn push(&mut self, program: &Program, stream: u32, time: Nanos) -> Result<(), Late> {
        let s = stream as usize;
        if self.limit.get(s).is_none_or(|l| time <= *l) {
            return Err(self.late(program, stream, time));
        }
        // Most events are not newer than their stream's newest: then nothing moves.
        if self.max_seen[s].is_none_or(|m| time > m) {
            self.max_seen[s] = Some(time);
            let g = self.group_of[s];
            self.now[g] = self.now[g].max(self.group_watermark(g));
            self.refresh(g);
        }
        Ok(())
    }

    /// Why an event of `stream` at `time` is late.
    fn late(&self, program: &Program, stream: u32, time: Nanos) -> Late {
        let s = stream as usize;
        match self.group_of.get(s).filter(|g| **g != usize::MAX) {
            Some(&g) => Late {
                stream: program.stream(StreamId(stream)).name.clone(),
                time,
                watermark: self.watermark(s, g),
            },
            None => Late {
                stream: format!("#{stream}"),
                time,
                watermark: Nanos::MAX,
            },
        }
    }

    fn set_watermark(&mut self, time: Nanos) {
        for g in 0..self.members.len() {
            self.forced[g] = self.forced[g].max(time);
            self.now[g] = self.now[g].max(self.group_watermark(g));
            self.refresh(g);
        }
    }
}

/// What an input record of an epoch holds.
enum Kind {
    /// An event the caller decoded.
    Event(Event),
    /// An explicit watermark for every stream.
    Watermark(Nanos),
}

/// One input record of an epoch, with its line number and text (a range of the epoch's
/// text) for the dead-letter record if it is rejected.
struct Item {
    line_no: u64,
    start: usize,
    end: usize,
    kind: Kind,
}

/// A batch of input records in arrival order, shared by every worker: either `items` the
/// caller decoded, or (`block`) whole JSON lines as read, which the workers split and decode.
#[derive(Default)]
struct Epoch {
    text: Vec<u8>,
    items: Vec<Item>,
    block: bool,
    /// Its place in input order, from 0.
    seq: u64,
    /// The first chunk no worker has claimed yet.
    next: AtomicUsize,
}

impl Epoch {
    fn line(&self, item: &Item) -> &[u8] {
        self.text.get(item.start..item.end).unwrap_or_default()
    }
}

/// The records of an epoch in chunk `w` of `n`: a contiguous share, so that each line is
/// decoded once, by one worker.
fn share(w: usize, n: usize, len: usize) -> std::ops::Range<usize> {
    len * w / n..len * (w + 1) / n
}

/// The bytes of a block in chunk `w` of `n`: its share of the bytes, each end moved on to the
/// start of a line.
fn share_of_block(w: usize, n: usize, text: &[u8]) -> std::ops::Range<usize> {
    let cut = |x: usize| match x {
        0 => 0,
        x => memchr::memchr(b'\n', text.get(x - 1..).unwrap_or_default())
            .map_or(text.len(), |i| x + i),
    };
    let len = text.len();
    cut(len * w / n)..cut(len * (w + 1) / n)
}

/// The line of `text` from `start`, without its newline and trailing carriage returns, and
/// where the next one starts.
fn line_at(text: &[u8], start: usize, end: usize) -> (usize, usize) {
    let rest = text.get(start..end).unwrap_or_default();
    let stop = memchr::memchr(b'\n', rest).map_or(end, |i| start + i);
    let mut last = stop;
    while last > start && text.get(last - 1) == Some(&b'\r') {
        last -= 1;
    }
    (last, stop + 1)
}

/// What a worker found in one record it scanned.
#[derive(Clone, Copy)]
enum Mark {
    /// An event of `stream` at `time`, owned by worker `owner`: `decoded` in the part's
    /// events, otherwise a JSON line whose values the part's raws hold.
    Event {
        stream: u32,
        time: Nanos,
        owner: u16,
        decoded: bool,
    },
    /// An explicit watermark.
    Watermark(Nanos),
    /// A line that is not a record; its error goes to worker 0.
    Bad,
    /// A blank line.
    Blank,
}

/// One chunk of an epoch as read, as one worker receives it.
struct Part {
    /// A mark per record of the chunk, in order (the same for every receiver).
    marks: Arc<Vec<Mark>>,
    /// The chunk's decoded events that the receiver owns, in order: lines that took the
    /// general path, and events the caller decoded.
    events: Vec<Event>,
    /// For each of the chunk's other events, in order and whoever owns it: where the line
    /// is in the epoch's text (a `Raw::Text`), then its values as the scan read them, one
    /// per field of the default stream, so that the owner builds each event itself, in its
    /// own memory, without reading the line again (the same for every receiver).
    raws: Arc<Vec<Raw>>,
    /// The chunk's bad lines, in order; only worker 0 gets them.
    bad: Vec<BadLine>,
}

/// Why a record was not applied.
#[derive(Debug)]
pub enum Rejected {
    /// Behind the watermark.
    Late(Late),
    /// Not a record.
    Bad(BadLine),
}

impl Rejected {
    /// The dead-letter reason: `late`, or the bad line's.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejected::Late(_) => "late",
            Rejected::Bad(e) => e.reason(),
        }
    }
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejected::Late(late) => late.fmt(f),
            Rejected::Bad(e) => e.fmt(f),
        }
    }
}

/// What a worker receives, from the calling thread or a peer, in one inbox: it takes
/// whichever comes, so it never waits on one while the other has work for it.
enum Msg {
    /// An epoch of input.
    Epoch(Arc<Epoch>),
    /// Chunk `chunk` of an epoch, as a peer read it.
    Part {
        epoch: Arc<Epoch>,
        chunk: usize,
        part: Part,
    },
    /// End of input: advance time to the end (when `flush`), report and stop.
    Finish { flush: bool },
    /// Stop now: the caller has given up on the run.
    Stop,
}

/// What a worker reports for one epoch.
struct Applied {
    /// The alerts, in the worker's order.
    alerts: Vec<Alert>,
    /// Records rejected (index in the epoch, why), in order; worker 0 reports them all.
    rejects: Vec<(usize, Rejected)>,
    /// The epoch's records, blank lines included.
    records: usize,
}

enum Reply {
    /// One epoch applied (or, after the last, the final flush).
    Epoch(Applied),
    /// The worker's counters at the end, and the late events its clock counted.
    Done(Stats, u64),
}

struct Worker {
    tx: Sender<Msg>,
    rx: Receiver<Reply>,
    handle: JoinHandle<()>,
}

/// N engines over the same program, fed by the calling thread.
pub struct Sharded {
    workers: Vec<Worker>,
    /// The epoch being filled.
    filling: Epoch,
    /// Epochs every worker is done with, to fill again (fresh ones cost page faults as they
    /// grow, every epoch).
    spare: Vec<Epoch>,
    /// Epochs sent whose replies have not all come back, oldest first, with the replies so
    /// far per worker.
    outstanding: VecDeque<(Arc<Epoch>, Vec<Option<Applied>>)>,
    /// Lines in the blocks done, for the line numbers of the next.
    lines_done: u64,
    /// Epochs sent so far.
    sent: u64,
}

/// Counters of a sharded run.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// Summed over workers; `peak_runs` is the sum of each worker's peak.
    pub engine: Stats,
    /// Events found late.
    pub late: u64,
}

/// Where a sharded run's alerts go.
pub type Emit<'a> = &'a mut dyn FnMut(Alert);
/// Where rejected records go: line number, text, why.
pub type Reject<'a> = &'a mut dyn FnMut(u64, &[u8], Rejected);

impl Sharded {
    /// Starts one engine thread per worker of `router`; JSON lines without `$stream` are
    /// events of `default_stream`.
    pub fn start(
        program: Arc<Program>,
        router: Router,
        default_stream: Option<StreamId>,
    ) -> anyhow::Result<Sharded> {
        let n = router.workers;
        // Unbounded: what is in flight is bounded by the epochs outstanding (QUEUE), and a
        // worker never blocks sending to a peer that is itself sending to it.
        let inboxes: Vec<(Sender<Msg>, Receiver<Msg>)> = (0..n).map(|_| channel()).collect();
        let senders: Vec<Sender<Msg>> = inboxes.iter().map(|(tx, _)| tx.clone()).collect();
        let peers_of = |me: usize| -> Vec<Option<Sender<Msg>>> {
            (0..n)
                .map(|to| (to != me).then(|| senders[to].clone()))
                .collect()
        };
        let mut workers = Vec::with_capacity(n);
        for (me, (tx, in_rx)) in inboxes.into_iter().enumerate() {
            let engine = Engine::new(Arc::clone(&program))?;
            let (out_tx, rx) = channel::<Reply>();
            let shard = Shard {
                me,
                n,
                router: router.clone(),
                default_stream,
                peers: peers_of(me),
            };
            let handle = std::thread::Builder::new()
                .name(format!("tern-worker-{me}"))
                .spawn(move || shard.work(engine, in_rx, out_tx))?;
            workers.push(Worker { tx, rx, handle });
        }
        Ok(Sharded {
            workers,
            filling: Epoch::default(),
            spare: Vec::new(),
            outstanding: VecDeque::new(),
            lines_done: 0,
            sent: 0,
        })
    }

    /// Accepts an event decoded from `line` (CSV, captures); its alerts, or why it was
    /// rejected, come out once its epoch is done.
    pub fn push(
        &mut self,
        line_no: u64,
        line: &[u8],
        event: Event,
        emit: Emit<'_>,
        reject: Reject<'_>,
    ) -> anyhow::Result<()> {
        self.add(line_no, line, Kind::Event(event), emit, reject)
    }

    /// An explicit watermark for every stream (replay `$watermark` lines).
    pub fn set_watermark(
        &mut self,
        line_no: u64,
        time: Nanos,
        emit: Emit<'_>,
        reject: Reject<'_>,
    ) -> anyhow::Result<()> {
        self.add(line_no, b"", Kind::Watermark(time), emit, reject)
    }

    fn add(
        &mut self,
        line_no: u64,
        line: &[u8],
        kind: Kind,
        emit: Emit<'_>,
        reject: Reject<'_>,
    ) -> anyhow::Result<()> {
        let start = self.filling.text.len();
        self.filling.text.extend_from_slice(line);
        self.filling.items.push(Item {
            line_no,
            start,
            end: self.filling.text.len(),
            kind,
        });
        if self.filling.items.len() >= BATCH {
            self.send_epoch()?;
            self.collect(QUEUE, emit, reject)?;
        }
        Ok(())
    }

    fn send_epoch(&mut self) -> anyhow::Result<()> {
        let next = self.spare.pop().unwrap_or_default();
        let epoch = std::mem::replace(&mut self.filling, next);
        self.send(epoch)
    }

    fn send(&mut self, mut epoch: Epoch) -> anyhow::Result<()> {
        epoch.seq = self.sent;
        self.sent += 1;
        let epoch = Arc::new(epoch);
        for w in &self.workers {
            w.tx.send(Msg::Epoch(Arc::clone(&epoch)))
                .map_err(|_| anyhow::anyhow!("a worker stopped"))?;
        }
        let none = self.workers.iter().map(|_| None).collect();
        self.outstanding.push_back((epoch, none));
        Ok(())
    }

    /// Reads JSON Lines from `input` to its end, a block of whole lines per epoch that the
    /// workers split and decode themselves: this thread only reads. Line numbers count on
    /// from those of earlier blocks.
    pub fn read_lines(
        &mut self,
        mut input: impl std::io::Read,
        emit: Emit<'_>,
        reject: Reject<'_>,
    ) -> anyhow::Result<()> {
        if !self.filling.items.is_empty() {
            self.send_epoch()?;
        }
        // The start of a line the last block cut.
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let mut text = self.spare.pop().map(|e| e.text).unwrap_or_default();
            text.clear();
            text.append(&mut carry);
            let mut whole = memchr::memchr(b'\n', &text).is_some();
            let mut eof = false;
            while !(eof || whole && text.len() >= BLOCK) {
                let len = text.len();
                let want = len.max(BLOCK / 2) * 2 - len;
                text.reserve(want);
                // Reads into the spare capacity as it is: a file is not zeroed first.
                let got = std::io::Read::read_to_end(
                    &mut std::io::Read::take(&mut input, want as u64),
                    &mut text,
                )
                .map_err(|e| anyhow::Error::new(e).context("cannot read input"))?;
                // Short of `want`: the input has ended.
                eof = got < want;
                whole |= memchr::memchr(b'\n', text.get(len..).unwrap_or_default()).is_some();
            }
            let cut = if eof {
                text.len()
            } else {
                memchr::memrchr(b'\n', &text).map_or(text.len(), |i| i + 1)
            };
            carry.extend_from_slice(text.get(cut..).unwrap_or_default());
            text.truncate(cut);
            if !text.is_empty() {
                self.send(Epoch {
                    text,
                    block: true,
                    ..Epoch::default()
                })?;
                self.collect(QUEUE, emit, reject)?;
            }
            if eof {
                return Ok(());
            }
        }
    }

    /// Takes what the workers have sent back and emits every epoch complete in all of them,
    /// waiting until at most `keep` epochs sent are not complete.
    fn collect(&mut self, keep: usize, emit: Emit<'_>, reject: Reject<'_>) -> anyhow::Result<()> {
        loop {
            for wi in 0..self.workers.len() {
                // Only replies for epochs sent: the last one is followed by the counters.
                while self.lacks(wi) {
                    let Ok(reply) = self.workers[wi].rx.try_recv() else {
                        break;
                    };
                    self.take(wi, reply)?;
                }
            }
            self.emit_done(emit, reject);
            if self.outstanding.len() <= keep {
                return Ok(());
            }
            // The oldest epoch is not complete: wait for a worker it lacks.
            let lacking = self
                .outstanding
                .front()
                .and_then(|(_, r)| r.iter().position(Option::is_none));
            if let Some(wi) = lacking {
                let reply = self.workers[wi]
                    .rx
                    .recv()
                    .map_err(|_| anyhow::anyhow!("a worker stopped"))?;
                self.take(wi, reply)?;
            }
        }
    }

    /// Whether an epoch sent still lacks worker `wi`'s reply.
    fn lacks(&self, wi: usize) -> bool {
        self.outstanding
            .iter()
            .any(|(_, r)| r.get(wi).is_some_and(Option::is_none))
    }

    /// Files a reply of worker `wi`: its replies come in epoch order, each for its oldest
    /// epoch without one.
    fn take(&mut self, wi: usize, reply: Reply) -> anyhow::Result<()> {
        let slot = self
            .outstanding
            .iter_mut()
            .find_map(|(_, r)| r.get_mut(wi).filter(|r| r.is_none()));
        match (reply, slot) {
            (Reply::Epoch(applied), Some(slot)) => {
                *slot = Some(applied);
                Ok(())
            }
            _ => anyhow::bail!("a worker stopped early"),
        }
    }

    /// Emits the alerts and rejects of the oldest epochs while they are complete.
    fn emit_done(&mut self, emit: Emit<'_>, reject: Reject<'_>) {
        while self
            .outstanding
            .front()
            .is_some_and(|(_, r)| r.iter().all(Option::is_some))
        {
            let Some((epoch, replies)) = self.outstanding.pop_front() else {
                break;
            };
            let mut alerts = Vec::new();
            let mut rejects = Vec::new();
            let mut records = 0;
            for applied in replies.into_iter().flatten() {
                alerts.extend(applied.alerts);
                rejects.extend(applied.rejects);
                // Every worker walks every record.
                records = records.max(applied.records);
            }
            if epoch.block {
                // Rejects in record order: each line is found once, walking on.
                let (mut ordinal, mut at) = (0, 0);
                for (o, why) in rejects {
                    while ordinal < o {
                        at = line_at(&epoch.text, at, epoch.text.len()).1;
                        ordinal += 1;
                    }
                    let end = line_at(&epoch.text, at, epoch.text.len()).0;
                    let line = epoch.text.get(at..end).unwrap_or_default();
                    reject(self.lines_done + o as u64 + 1, line, why);
                }
                self.lines_done += records as u64;
            } else {
                for (i, why) in rejects {
                    if let Some(item) = epoch.items.get(i) {
                        reject(item.line_no, epoch.line(item), why);
                    }
                }
            }
            if self.workers.len() > 1 {
                alerts.sort_by_cached_key(|a| {
                    (
                        a.event_time,
                        a.rule.clone(),
                        a.key.to_string(),
                        a.id.clone(),
                    )
                });
            }
            for a in alerts {
                emit(a);
            }
            // Every worker dropped its handle before replying, but for a worker that has yet
            // to take the caller's message about an epoch its peers read whole: then the
            // buffers are not reused.
            if let Ok(Epoch {
                mut text,
                mut items,
                ..
            }) = Arc::try_unwrap(epoch)
            {
                text.clear();
                items.clear();
                self.spare.push(Epoch {
                    text,
                    items,
                    ..Epoch::default()
                });
            }
        }
    }

    /// End of input: sends what is pending, advances time to the end when `flush`, emits the
    /// remaining alerts and rejects, and stops the workers.
    pub fn finish(
        mut self,
        flush: bool,
        emit: Emit<'_>,
        reject: Reject<'_>,
    ) -> anyhow::Result<ShardStats> {
        if !self.filling.items.is_empty() {
            self.send_epoch()?;
        }
        for w in &self.workers {
            w.tx.send(Msg::Finish { flush })
                .map_err(|_| anyhow::anyhow!("a worker stopped"))?;
        }
        // The final flush replies as one more epoch, of no records.
        let none = self.workers.iter().map(|_| None).collect();
        self.outstanding
            .push_back((Arc::new(Epoch::default()), none));
        self.collect(0, emit, reject)?;
        let mut stats = ShardStats::default();
        for (wi, w) in std::mem::take(&mut self.workers).into_iter().enumerate() {
            match w.rx.recv() {
                Ok(Reply::Done(s, late)) => {
                    stats.engine.events += s.events;
                    stats.engine.late += s.late;
                    stats.engine.alerts += s.alerts;
                    stats.engine.runs += s.runs;
                    stats.engine.peak_runs += s.peak_runs;
                    stats.engine.keys += s.keys;
                    // Every worker's clock saw every record: they agree.
                    if wi == 0 {
                        stats.late = late;
                    }
                }
                _ => anyhow::bail!("a worker stopped early"),
            }
            w.handle
                .join()
                .map_err(|_| anyhow::anyhow!("a worker panicked"))?;
        }
        Ok(stats)
    }
}

impl Drop for Sharded {
    /// A run given up (an error on the way) stops its workers: each waits on its peers as
    /// well as on this thread, so closing its inbox alone would not end it.
    fn drop(&mut self) {
        for w in &self.workers {
            let _ = w.tx.send(Msg::Stop);
        }
    }
}

/// A chunk of an epoch as it is read.
struct Scanned {
    marks: Vec<Mark>,
    /// Per worker, as in [`Part`].
    events: Vec<Vec<Event>>,
    raws: Vec<Raw>,
    bad: Vec<BadLine>,
}

/// How much a worker's scan of the last chunk held, to size the next one's buffers.
#[derive(Default)]
struct Sizes {
    marks: usize,
    events: Vec<usize>,
    raws: usize,
}

/// A worker's place among the others.
struct Shard {
    me: usize,
    n: usize,
    router: Router,
    default_stream: Option<StreamId>,
    /// Per worker, its inbox (none to itself: a worker's inbox closes once the caller and
    /// every peer are gone).
    peers: Vec<Option<Sender<Msg>>>,
}

/// An epoch a worker has heard of and not yet applied, with the chunks of it come so far.
struct Pending {
    epoch: Arc<Epoch>,
    /// Per chunk, its part for this worker once read (by this worker or a peer).
    parts: Vec<Option<Part>>,
    /// Chunks not yet come.
    missing: usize,
}

/// What a worker holds between messages.
struct Queues {
    /// Epochs not yet applied, in input order.
    pending: VecDeque<Pending>,
    /// Chunks per epoch.
    chunks: usize,
    /// The next epoch to apply: a message about an earlier one (an epoch whose every chunk
    /// a peer read before the caller's message about it came) is stale.
    next_apply: u64,
    /// End of input, once told: whether to advance time to the end.
    finish: Option<bool>,
    /// Told to stop at once (the caller gave up).
    stop: bool,
}

impl Queues {
    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Epoch(epoch) => {
                self.pending_for(epoch);
            }
            Msg::Part { epoch, chunk, part } => self.file(epoch, chunk, part),
            Msg::Finish { flush } => self.finish = Some(flush),
            Msg::Stop => self.stop = true,
        }
    }

    /// The pending entry of `epoch`, made if it is new; `None` once it has been applied.
    fn pending_for(&mut self, epoch: Arc<Epoch>) -> Option<&mut Pending> {
        if epoch.seq < self.next_apply {
            return None;
        }
        // A peer's part can come before the caller's message about its epoch, so entries
        // are kept in input order whichever comes first.
        let at = self
            .pending
            .iter()
            .position(|p| p.epoch.seq >= epoch.seq)
            .unwrap_or(self.pending.len());
        if self
            .pending
            .get(at)
            .is_none_or(|p| p.epoch.seq != epoch.seq)
        {
            let entry = Pending {
                epoch,
                parts: (0..self.chunks).map(|_| None).collect(),
                missing: self.chunks,
            };
            self.pending.insert(at, entry);
        }
        self.pending.get_mut(at)
    }

    /// Files chunk `chunk` of `epoch`.
    fn file(&mut self, epoch: Arc<Epoch>, chunk: usize, part: Part) {
        if let Some(p) = self.pending_for(epoch)
            && let Some(slot) = p.parts.get_mut(chunk)
        {
            if slot.is_none() {
                p.missing -= 1;
            }
            *slot = Some(part);
        }
    }

    /// A chunk no worker has claimed yet, of the oldest epoch that has one, now claimed by
    /// this worker.
    fn claim(&self) -> Option<(Arc<Epoch>, usize)> {
        self.pending.iter().find_map(|p| {
            if p.epoch.next.load(Ordering::Relaxed) >= self.chunks {
                return None;
            }
            let chunk = p.epoch.next.fetch_add(1, Ordering::Relaxed);
            (chunk < self.chunks).then(|| (Arc::clone(&p.epoch), chunk))
        })
    }

    /// The oldest epoch with every chunk of it come, and its parts in chunk order.
    fn ready(&mut self) -> Option<(Arc<Epoch>, Vec<Part>)> {
        if self.pending.front()?.missing > 0 {
            return None;
        }
        let p = self.pending.pop_front()?;
        self.next_apply = p.epoch.seq + 1;
        Some((p.epoch, p.parts.into_iter().flatten().collect()))
    }
}

impl Shard {
    /// A worker: reads chunks of the epochs (whichever no worker has claimed yet) and passes
    /// the other workers their parts, and applies each epoch to its engine once every chunk
    /// of it has come, sending back its alerts. It applies whenever it can and reads ahead
    /// while it cannot, so it waits only when it has nothing at all to do.
    fn work(self, mut engine: Engine, rx: Receiver<Msg>, tx: Sender<Reply>) {
        let program = Arc::clone(engine.program());
        let reader = JsonReader::new(&program, self.default_stream);
        let mut clock = Clock::new(&program, engine.groups());
        let mut late = 0u64;
        let mut sizes = Sizes::default();
        let mut q = Queues {
            pending: VecDeque::new(),
            chunks: self.n * CHUNKS_PER_WORKER,
            next_apply: 0,
            finish: None,
            stop: false,
        };
        loop {
            while let Ok(msg) = rx.try_recv() {
                q.take(msg);
            }
            if q.stop {
                return;
            }
            if let Some((epoch, parts)) = q.ready() {
                let applied = self.apply(&reader, epoch, parts, &mut engine, &mut clock, &mut late);
                if tx.send(Reply::Epoch(applied)).is_err() {
                    return;
                }
                continue;
            }
            if let Some((epoch, chunk)) = q.claim() {
                let parts = self.scan(&epoch, chunk, q.chunks, &program, &reader, &mut sizes);
                for (to, part) in parts.into_iter().enumerate() {
                    if to == self.me {
                        q.file(Arc::clone(&epoch), chunk, part);
                    } else if let Some(Some(peer)) = self.peers.get(to) {
                        let msg = Msg::Part {
                            epoch: Arc::clone(&epoch),
                            chunk,
                            part,
                        };
                        if peer.send(msg).is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
            if let (Some(flush), true) = (q.finish, q.pending.is_empty()) {
                let mut alerts = Vec::new();
                if flush {
                    engine.flush(&mut |a| alerts.push(a));
                }
                let last = Applied {
                    alerts,
                    rejects: Vec::new(),
                    records: 0,
                };
                let _ = tx.send(Reply::Epoch(last));
                let _ = tx.send(Reply::Done(engine.stats(), late));
                return;
            }
            match rx.recv() {
                Ok(msg) => q.take(msg),
                Err(_) => return,
            }
        }
    }

    /// Reads chunk `chunk` of `chunks` of `epoch` (every line's time, owner and values; the
    /// general path only for what the fast scan leaves) and routes it: one part per worker.
    fn scan(
        &self,
        epoch: &Epoch,
        chunk: usize,
        chunks: usize,
        program: &Program,
        reader: &JsonReader<'_>,
        sizes: &mut Sizes,
    ) -> Vec<Part> {
        // Each buffer is allocated at about the size the last chunk's needed (with a margin),
        // not grown: growing copies, and touches fresh memory (zeroed by the kernel) every
        // chunk.
        let room = |n: usize| n + n / 8 + 16;
        let mut out = Scanned {
            marks: Vec::with_capacity(room(sizes.marks)),
            events: (0..self.n)
                .map(|to| Vec::with_capacity(room(sizes.events.get(to).copied().unwrap_or(0))))
                .collect(),
            raws: Vec::with_capacity(room(sizes.raws)),
            bad: Vec::new(),
        };
        if epoch.block {
            let share = share_of_block(chunk, chunks, &epoch.text);
            let mut at = share.start;
            while at < share.end {
                let (end, next) = line_at(&epoch.text, at, share.end);
                self.line(&mut out, program, reader, &epoch.text, at, end);
                at = next;
            }
        } else {
            for i in share(chunk, chunks, epoch.items.len()) {
                let Some(item) = epoch.items.get(i) else {
                    break;
                };
                match &item.kind {
                    Kind::Event(e) => self.event(&mut out, e.clone()),
                    Kind::Watermark(t) => out.marks.push(Mark::Watermark(*t)),
                }
            }
        }
        let Scanned {
            marks,
            events,
            raws,
            mut bad,
        } = out;
        sizes.marks = marks.len();
        sizes.events = events.iter().map(Vec::len).collect();
        sizes.raws = raws.len();
        let marks = Arc::new(marks);
        let raws = Arc::new(raws);
        events
            .into_iter()
            .enumerate()
            .map(|(to, events)| Part {
                marks: Arc::clone(&marks),
                events,
                raws: Arc::clone(&raws),
                bad: if to == 0 {
                    std::mem::take(&mut bad)
                } else {
                    Vec::new()
                },
            })
            .collect()
    }

    /// Scans the JSON line `text[start..end]`.
    fn line(
        &self,
        out: &mut Scanned,
        program: &Program,
        reader: &JsonReader<'_>,
        text: &[u8],
        start: usize,
        end: usize,
    ) {
        let line = text.get(start..end).unwrap_or_default();
        if is_blank(line) {
            out.marks.push(Mark::Blank);
            return;
        }
        // Where the line is: u32 offsets into the epoch's text.
        if let Some(stream) = self.default_stream.filter(|_| u32::try_from(end).is_ok()) {
            let schema = program.stream(stream);
            let at = out.raws.len();
            out.raws.push(Raw::Text(start as u32, end as u32));
            if let Some((owner, time)) =
                self.router
                    .worker_of_line(schema, stream, line, &mut out.raws)
            {
                out.marks.push(Mark::Event {
                    stream: stream.0,
                    time,
                    owner: owner as u16,
                    decoded: false,
                });
                return;
            }
            out.raws.truncate(at);
        }
        match reader.bytes(line) {
            Ok(Record::Event(e)) => self.event(out, e),
            Ok(Record::Watermark(t)) => out.marks.push(Mark::Watermark(t)),
            Err(e) => {
                out.marks.push(Mark::Bad);
                out.bad.push(e);
            }
        }
    }

    /// Routes a decoded event.
    fn event(&self, out: &mut Scanned, event: Event) {
        let owner = self.router.worker(&event);
        out.marks.push(Mark::Event {
            stream: event.stream(),
            time: event.time(),
            owner: owner as u16,
            decoded: true,
        });
        if let Some(mine) = out.events.get_mut(owner) {
            mine.push(event);
        }
    }

    /// Applies an epoch, given its chunks' parts in chunk order: the marks, in record order,
    /// move its clock exactly as one engine's would; the events this worker owns go to its
    /// engine.
    fn apply(
        &self,
        reader: &JsonReader<'_>,
        epoch: Arc<Epoch>,
        parts: Vec<Part>,
        engine: &mut Engine,
        clock: &mut Clock,
        late: &mut u64,
    ) -> Applied {
        let program = Arc::clone(engine.program());
        let width = self
            .default_stream
            .map_or(0, |s| program.stream(s).fields.len());
        let mut records = 0;
        let mut alerts = Vec::new();
        let mut rejects = Vec::new();
        let mut emit = |a: Alert| alerts.push(a);
        for part in parts {
            let base = records;
            records += part.marks.len();
            let mut events = part.events.into_iter();
            let mut raws = part.raws.as_slice();
            let mut bad = part.bad.into_iter();
            for (k, mark) in part.marks.iter().enumerate() {
                match *mark {
                    Mark::Event {
                        stream,
                        time,
                        owner,
                        decoded,
                    } => {
                        let mine = usize::from(owner) == self.me;
                        let event = if decoded {
                            if mine { events.next() } else { None }
                        } else {
                            // The raws of every line read on the fast path, whoever owns it,
                            // follow each other in the part.
                            let (these, rest) = raws.split_at((width + 1).min(raws.len()));
                            raws = rest;
                            match these {
                                [Raw::Text(start, end), values @ ..] if mine => epoch
                                    .text
                                    .get(*start as usize..*end as usize)
                                    .and_then(|l| self.build(&program, reader, l, values)),
                                _ => None,
                            }
                        };
                        match clock.push(&program, stream, time) {
                            // The clock accepted it, so the engine does: a worker's
                            // watermark never passes the global one.
                            Ok(()) => {
                                if let Some(e) = event {
                                    let _ = engine.push(e, &mut emit);
                                }
                            }
                            Err(l) => {
                                *late += 1;
                                if self.me == 0 {
                                    rejects.push((base + k, Rejected::Late(l)));
                                }
                            }
                        }
                    }
                    Mark::Watermark(t) => clock.set_watermark(t),
                    Mark::Bad => {
                        if let Some(e) = bad.next() {
                            rejects.push((base + k, Rejected::Bad(e)));
                        }
                    }
                    Mark::Blank => {}
                }
            }
        }
        for (g, t) in clock.now.iter().enumerate() {
            if *t > Nanos::MIN {
                engine.advance_group(g, *t, &mut emit);
            }
        }
        drop(epoch);
        Applied {
            alerts,
            rejects,
            records,
        }
    }

    /// The event of a line the fast scan accepted, from the values it read.
    fn build(
        &self,
        program: &Program,
        reader: &JsonReader<'_>,
        line: &[u8],
        raws: &[Raw],
    ) -> Option<Event> {
        let stream = self.default_stream?;
        fast::build(program.stream(stream), stream, line, raws).or_else(|| {
            // Values that do not fit (never, for the scanner's own): decode it all.
            match reader.bytes(line) {
                Ok(Record::Event(e)) => Some(e),
                _ => None,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A part whose one mark is a watermark at `t`, to tell parts apart.
    fn part(t: Nanos) -> Part {
        Part {
            marks: Arc::new(vec![Mark::Watermark(t)]),
            events: Vec::new(),
            raws: Arc::new(Vec::new()),
            bad: Vec::new(),
        }
    }

    fn epoch(seq: u64) -> Arc<Epoch> {
        Arc::new(Epoch {
            seq,
            ..Epoch::default()
        })
    }

    fn times(parts: &[Part]) -> Vec<Nanos> {
        parts
            .iter()
            .flat_map(|p| p.marks.iter())
            .map(|m| match m {
                Mark::Watermark(t) => *t,
                _ => Nanos::MIN,
            })
            .collect()
    }

    #[test]
    fn epochs_apply_in_input_order_whichever_message_comes_first() {
        let mut q = Queues {
            pending: VecDeque::new(),
            chunks: 2,
            next_apply: 0,
            finish: None,
            stop: false,
        };
        let (e0, e1) = (epoch(0), epoch(1));
        // A peer claimed both chunks of epoch 0 and the first of epoch 1. Its part of epoch 1
        // comes first, and all of epoch 0 before the caller's message about it.
        e0.next.store(2, Ordering::Relaxed);
        e1.next.store(1, Ordering::Relaxed);
        q.take(Msg::Part {
            epoch: Arc::clone(&e1),
            chunk: 0,
            part: part(10),
        });
        q.take(Msg::Part {
            epoch: Arc::clone(&e0),
            chunk: 1,
            part: part(1),
        });
        assert!(q.ready().is_none(), "epoch 0 lacks a chunk");
        q.take(Msg::Part {
            epoch: Arc::clone(&e0),
            chunk: 0,
            part: part(0),
        });
        let (first, parts) = q.ready().unwrap();
        assert_eq!((first.seq, times(&parts)), (0, vec![0, 1]));
        // The caller's message about an epoch already applied changes nothing.
        q.take(Msg::Epoch(Arc::clone(&e0)));
        q.take(Msg::Epoch(Arc::clone(&e1)));
        assert_eq!(q.pending.len(), 1);
        assert!(q.ready().is_none(), "epoch 1 lacks a chunk");
        // This worker claims what is left, once.
        assert_eq!(q.claim().map(|(e, c)| (e.seq, c)), Some((1, 1)));
        assert!(q.claim().is_none());
        q.file(e1, 1, part(11));
        let (second, parts) = q.ready().unwrap();
        assert_eq!((second.seq, times(&parts)), (1, vec![10, 11]));
        assert!(q.pending.is_empty());
    }
}
