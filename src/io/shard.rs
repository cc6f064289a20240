//! Keys sharded across worker threads: one reader reads each record's time and key and routes
//! it by a hash of the key to one of N engines, each owning its keys (no lock on the per-event
//! path). JSON lines are decoded by the worker that gets them, so decoding runs in parallel.
//!
//! Event time stays global. The reader keeps the newest event time of every stream, decides
//! lateness exactly as one engine would, and at every batch boundary tells each worker how far
//! its groups' time has gone ([`Engine::advance_group`]), so each worker releases events and
//! fires timeouts at the same event times as a single engine. A key's events and timers reach
//! its rules in the same order as in one engine, so every alert (id included) is the same.
//!
//! The reader mirrors the engine's watermark rule (docs/semantics.md §2) in `Clock`: a
//! change to that rule in the engine must be made here too (`tests/shard.rs` compares late
//! counts and alerts with one engine).
//!
//! Output order: each batch of input is an epoch; the alerts that all workers produced while
//! applying it come out together, sorted by (event time, rule, key, id). That order is
//! deterministic for a given number of workers; it differs from one engine's order only
//! inside an epoch, so `--workers N` output equals `--workers 1` output once both are sorted
//! by the same key.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use crate::compile::hir::{Program, StreamId};
use crate::compile::schema::StreamSchema;
use crate::engine::alert::Alert;
use crate::engine::{Engine, Late, Stats};
use crate::event::{Event, Nanos, ValueRef};
use crate::io::input::fast;

/// Input records per epoch: one message per worker per epoch, so channels cost nothing per
/// event.
pub const BATCH: usize = 4096;
/// Epochs a worker may have queued before the reader waits for it.
const QUEUE: usize = 16;

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
        spans: &mut Vec<u32>,
    ) -> Option<(usize, Nanos)> {
        let fields = match self.routes.get(stream.0 as usize) {
            Some(Some(fields)) => fields.as_slice(),
            _ => &[],
        };
        let mut h = self.hasher.build_hasher();
        let time = fast::time_and_key(schema, line, fields, |v| v.hash_into(&mut h), Some(spans))?;
        let w = if fields.is_empty() {
            0
        } else {
            self.pick(h.finish())
        };
        Some((w, time))
    }

    fn pick(&self, hash: u64) -> usize {
        (hash % self.workers as u64) as usize
    }
}

/// Event time as one engine keeps it (docs/semantics.md §2), over all keys: per stream the
/// newest time, per group the explicit watermark and the time released so far. It mirrors
/// the engine's own rule so that the reader decides lateness exactly as one engine would.
struct Clock {
    lateness: Vec<Nanos>,
    group_of: Vec<usize>,
    members: Vec<Vec<StreamId>>,
    max_seen: Vec<Option<Nanos>>,
    forced: Vec<Nanos>,
    now: Vec<Nanos>,
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
        Clock {
            lateness: program.streams.iter().map(|s| s.lateness).collect(),
            group_of,
            members: members.to_vec(),
            max_seen: vec![None; program.streams.len()],
            forced: vec![Nanos::MIN; members.len()],
            now: vec![Nanos::MIN; members.len()],
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
        let Some(&g) = self.group_of.get(s).filter(|g| **g != usize::MAX) else {
            return Err(Late {
                stream: format!("#{stream}"),
                time,
                watermark: Nanos::MAX,
            });
        };
        let watermark = self.watermark(s, g);
        if time <= watermark {
            return Err(Late {
                stream: program.stream(StreamId(stream)).name.clone(),
                time,
                watermark,
            });
        }
        self.max_seen[s] = Some(self.max_seen[s].map_or(time, |m| m.max(time)));
        self.now[g] = self.now[g].max(self.group_watermark(g));
        Ok(())
    }

    fn set_watermark(&mut self, time: Nanos) {
        for g in 0..self.members.len() {
            self.forced[g] = self.forced[g].max(time);
            self.now[g] = self.now[g].max(self.group_watermark(g));
        }
    }
}

/// One input record of an epoch, in arrival order.
enum Item {
    /// A decoded event.
    Event(Event),
    /// A JSON line (a range of the epoch's text) that the worker decodes from where the
    /// reader found its values (from this index of the epoch's spans).
    Line(usize, usize, usize),
}

enum Msg {
    /// One epoch: this worker's records, then how far each group's time has gone.
    Batch {
        items: Vec<Item>,
        text: Vec<u8>,
        spans: Vec<u32>,
        times: Vec<Nanos>,
    },
    /// End of input: advance time to the end (when `flush`), report and stop.
    Finish { flush: bool },
}

enum Reply {
    /// The alerts of one epoch, in the worker's order, and the epoch's buffers emptied for
    /// the reader to fill again (fresh ones cost page faults and copies as they grow, every
    /// epoch); none for the final flush.
    Epoch(Vec<Alert>, Option<Buffers>),
    /// The worker's counters at the end.
    Done(Stats),
}

struct Worker {
    tx: SyncSender<Msg>,
    rx: Receiver<Reply>,
    handle: JoinHandle<()>,
    pending: Vec<Item>,
    text: Vec<u8>,
    spans: Vec<u32>,
    /// Buffers the worker gave back.
    spare: Vec<Buffers>,
}

/// An epoch's records, the text of its lines, and where their values are.
type Buffers = (Vec<Item>, Vec<u8>, Vec<u32>);

/// N engines over the same program, fed by the calling thread.
pub struct Sharded {
    program: Arc<Program>,
    router: Router,
    clock: Clock,
    workers: Vec<Worker>,
    in_epoch: usize,
    /// Epochs sent whose alerts have not all come back.
    epochs: usize,
    /// Alerts of the oldest outstanding epochs, gathered per worker.
    gathered: VecDeque<Vec<Option<Vec<Alert>>>>,
    late: u64,
    /// The spans of the line being routed, before its worker is known.
    spans: Vec<u32>,
    /// Workers decode JSON lines of this default stream themselves.
    lines: Option<Option<StreamId>>,
}

/// Counters of a sharded run.
#[derive(Debug, Default, Clone, Copy)]
pub struct ShardStats {
    /// Summed over workers; `peak_runs` is the sum of each worker's peak.
    pub engine: Stats,
    /// Events the reader found late.
    pub late: u64,
}

impl Sharded {
    /// Starts one engine thread per worker of `router`. `lines` (JSON Lines input, with its
    /// default stream) lets [`Sharded::push_line`] pass workers lines instead of events.
    pub fn start(
        program: Arc<Program>,
        router: Router,
        lines: Option<Option<StreamId>>,
    ) -> anyhow::Result<Sharded> {
        let probe = Engine::new(Arc::clone(&program))?;
        let clock = Clock::new(&program, probe.groups());
        drop(probe);
        let mut workers = Vec::with_capacity(router.workers);
        for i in 0..router.workers {
            let engine = Engine::new(Arc::clone(&program))?;
            let (tx, in_rx) = sync_channel::<Msg>(QUEUE);
            let (out_tx, rx) = sync_channel::<Reply>(QUEUE * 4);
            let handle = std::thread::Builder::new()
                .name(format!("tern-worker-{i}"))
                .spawn(move || work(engine, lines, in_rx, out_tx))?;
            workers.push(Worker {
                tx,
                rx,
                handle,
                pending: Vec::with_capacity(BATCH),
                text: Vec::new(),
                spans: Vec::new(),
                spare: Vec::new(),
            });
        }
        Ok(Sharded {
            program,
            router,
            clock,
            workers,
            in_epoch: 0,
            epochs: 0,
            gathered: VecDeque::new(),
            late: 0,
            spans: Vec::new(),
            lines,
        })
    }

    /// Accepts a JSON line of the default stream (or rejects it as late, as one engine
    /// would) without decoding it: the line is scanned for its time and key only, and the
    /// worker owning the key decodes it, so decoding runs in parallel. `None`: the line is
    /// not a plain event of the default stream (or the workers were not started for
    /// lines); decode it and pass the event to [`Sharded::push`].
    pub fn push_line(
        &mut self,
        line: &[u8],
        out: &mut dyn FnMut(Alert),
    ) -> anyhow::Result<Option<Result<(), Late>>> {
        let Some(Some(stream)) = self.lines else {
            return Ok(None);
        };
        let schema = self.program.stream(stream);
        self.spans.clear();
        let Some((w, time)) = self
            .router
            .worker_of_line(schema, stream, line, &mut self.spans)
        else {
            return Ok(None);
        };
        if let Err(late) = self.clock.push(&self.program, stream.0, time) {
            self.late += 1;
            return Ok(Some(Err(late)));
        }
        if let Some(worker) = self.workers.get_mut(w) {
            let start = worker.text.len();
            worker.text.extend_from_slice(line);
            let at = worker.spans.len();
            worker.spans.extend_from_slice(&self.spans);
            worker
                .pending
                .push(Item::Line(start, worker.text.len(), at));
        }
        self.tick(out)?;
        Ok(Some(Ok(())))
    }

    /// Accepts an event (or rejects it as late, as one engine would); alerts of completed
    /// epochs go to `out`.
    pub fn push(
        &mut self,
        event: Event,
        out: &mut dyn FnMut(Alert),
    ) -> anyhow::Result<Result<(), Late>> {
        if let Err(late) = self.clock.push(&self.program, event.stream(), event.time()) {
            self.late += 1;
            return Ok(Err(late));
        }
        let w = self.router.worker(&event);
        if let Some(worker) = self.workers.get_mut(w) {
            worker.pending.push(Item::Event(event));
        }
        self.tick(out)?;
        Ok(Ok(()))
    }

    /// An explicit watermark for every stream (replay `$watermark` lines).
    pub fn set_watermark(&mut self, time: Nanos, out: &mut dyn FnMut(Alert)) -> anyhow::Result<()> {
        self.clock.set_watermark(time);
        self.tick(out)
    }

    fn tick(&mut self, out: &mut dyn FnMut(Alert)) -> anyhow::Result<()> {
        self.in_epoch += 1;
        if self.in_epoch >= BATCH {
            self.send_epoch()?;
            self.collect(false, out)?;
        }
        Ok(())
    }

    fn send_epoch(&mut self) -> anyhow::Result<()> {
        self.in_epoch = 0;
        for w in &mut self.workers {
            let (items, text, spans) = w
                .spare
                .pop()
                .unwrap_or_else(|| (Vec::with_capacity(BATCH), Vec::new(), Vec::new()));
            let items = std::mem::replace(&mut w.pending, items);
            let text = std::mem::replace(&mut w.text, text);
            let spans = std::mem::replace(&mut w.spans, spans);
            let msg = Msg::Batch {
                items,
                text,
                spans,
                times: self.clock.now.clone(),
            };
            w.tx.send(msg)
                .map_err(|_| anyhow::anyhow!("a worker stopped"))?;
        }
        self.epochs += 1;
        self.gathered.push_back(vec![None; self.workers.len()]);
        Ok(())
    }

    /// Takes what the workers have sent back and emits every epoch complete in all of them;
    /// with `wait`, waits until every epoch sent is complete.
    fn collect(&mut self, wait: bool, out: &mut dyn FnMut(Alert)) -> anyhow::Result<()> {
        // Epoch k of worker w is the k-th reply on its channel: `gathered` holds the
        // outstanding epochs oldest first.
        for (wi, w) in self.workers.iter_mut().enumerate() {
            while let Some(slot) = self.gathered.iter_mut().find(|e| e[wi].is_none()) {
                let reply = if wait {
                    w.rx.recv()
                        .map_err(|_| anyhow::anyhow!("a worker stopped"))?
                } else {
                    match w.rx.try_recv() {
                        Ok(r) => r,
                        Err(_) => break,
                    }
                };
                match reply {
                    Reply::Epoch(alerts, spent) => {
                        slot[wi] = Some(alerts);
                        w.spare.extend(spent);
                    }
                    Reply::Done(_) => anyhow::bail!("a worker stopped early"),
                }
            }
        }
        while self
            .gathered
            .front()
            .is_some_and(|e| e.iter().all(Option::is_some))
        {
            let Some(epoch) = self.gathered.pop_front() else {
                break;
            };
            self.epochs -= 1;
            let mut alerts: Vec<Alert> = epoch.into_iter().flatten().flatten().collect();
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
                out(a);
            }
        }
        Ok(())
    }

    /// End of input: sends what is pending, advances time to the end when `flush`, emits the
    /// remaining alerts and stops the workers.
    pub fn finish(mut self, flush: bool, out: &mut dyn FnMut(Alert)) -> anyhow::Result<ShardStats> {
        self.send_epoch()?;
        for w in &self.workers {
            w.tx.send(Msg::Finish { flush })
                .map_err(|_| anyhow::anyhow!("a worker stopped"))?;
        }
        // The final flush is one more epoch.
        self.epochs += 1;
        self.gathered.push_back(vec![None; self.workers.len()]);
        self.collect(true, out)?;
        let mut stats = ShardStats {
            late: self.late,
            ..ShardStats::default()
        };
        for w in self.workers {
            match w.rx.recv() {
                Ok(Reply::Done(s)) => {
                    stats.engine.events += s.events;
                    stats.engine.late += s.late;
                    stats.engine.alerts += s.alerts;
                    stats.engine.runs += s.runs;
                    stats.engine.peak_runs += s.peak_runs;
                    stats.engine.keys += s.keys;
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

/// A worker: applies epochs to its engine and sends back each epoch's alerts.
fn work(
    mut engine: Engine,
    lines: Option<Option<StreamId>>,
    rx: Receiver<Msg>,
    tx: SyncSender<Reply>,
) {
    let program = Arc::clone(engine.program());
    let stream = lines.flatten();
    let reader = crate::io::input::JsonReader::new(&program, stream);
    let mut alerts = Vec::new();
    while let Ok(msg) = rx.recv() {
        let mut emit = |a: Alert| alerts.push(a);
        match msg {
            Msg::Batch {
                mut items,
                mut text,
                mut spans,
                times,
            } => {
                for item in items.drain(..) {
                    let event = match item {
                        Item::Event(e) => e,
                        // The reader scanned this line with the same scanner: it is an event.
                        Item::Line(a, b, at) => {
                            let Some(line) = text.get(a..b) else { continue };
                            let built = match (stream, spans.get(at..)) {
                                (Some(stream), Some(spans)) => {
                                    fast::decode_at(program.stream(stream), stream, line, spans)
                                }
                                _ => None,
                            };
                            match built {
                                Some(e) => e,
                                None => match reader.bytes(line) {
                                    Ok(crate::io::input::Record::Event(e)) => e,
                                    _ => continue,
                                },
                            }
                        }
                    };
                    // The reader already rejected late events, so none is late here: a
                    // worker's watermark never passes the global one.
                    let _ = engine.push(event, &mut emit);
                }
                for (g, t) in times.into_iter().enumerate() {
                    if t > Nanos::MIN {
                        engine.advance_group(g, t, &mut emit);
                    }
                }
                text.clear();
                spans.clear();
                let spent = Some((items, text, spans));
                if tx
                    .send(Reply::Epoch(std::mem::take(&mut alerts), spent))
                    .is_err()
                {
                    return;
                }
            }
            Msg::Finish { flush } => {
                if flush {
                    engine.flush(&mut emit);
                }
                let _ = tx.send(Reply::Epoch(std::mem::take(&mut alerts), None));
                let _ = tx.send(Reply::Done(engine.stats()));
                return;
            }
        }
    }
}
