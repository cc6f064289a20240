//! The outbox and its dispatchers: one task per sink, each reading the durable outbox from
//! its own cursor and handing alerts to its [`Deliver`].
//!
//! The engine thread numbers a batch's alerts and makes them visible at once
//! ([`Outbox::stage`]), then writes them in the same RocksDB write as the state they came
//! from and announces them durable ([`Outbox::committed`]). Dispatchers wake up, take what
//! is new (from memory while it is recent, else from the store), skip what their routing and
//! filter exclude, deliver the rest, and move their cursor on. Entries every sink has passed
//! are deleted.
//!
//! A sink may deliver an alert before its write is durable: waiting for the disk would put
//! an fsync on every alert's way out. That keeps every guarantee. The messages behind an
//! alert are acknowledged only once it is durable, so if tern dies in between, the broker
//! sends them again, the engine resumes from the state before them and produces the alert
//! again, with the same id (a hash of rule, key and matched events), and it is delivered
//! again. What must not run ahead is the stored cursor: stored past an alert that never
//! became durable, it would skip whatever alert gets that number after the restart. So a
//! cursor is stored only as far as what is durable.
//!
//! When the outbox holds `capacity` alerts that some sink has not passed, the engine thread
//! waits in [`Outbox::wait_for_room`]: its queue fills, the MQTT source stops reading, and the
//! broker keeps the messages. Nothing is dropped; a sink that stays down long enough stops
//! the intake, and its retry policy decides how long that is.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::{Deliver, OutAlert, Outcome};
use crate::config::SinkFilter;
use crate::event::Nanos;
use crate::io::deadletter::{AlertLetter, Letter};
use crate::metrics::{Metrics, SinkMetrics};
use crate::store::{Batch, Entry, Store};

/// Alerts read from the store per step when a sink takes single alerts.
const READ_AHEAD: usize = 256;

/// Trim the outbox when the slowest sink has moved this far past the last trim.
const TRIM_EVERY: u64 = 512;

/// The most recent alerts kept in memory for the dispatchers; a sink further behind reads
/// the store.
const RECENT: usize = 4096;

/// The outbox: sequence numbers, cursors and the wake-ups between the engine thread and the
/// dispatchers.
pub struct Outbox {
    store: Arc<Store>,
    capacity: u64,
    state: Mutex<State>,
    room: Condvar,
    marks: watch::Sender<Marks>,
    /// Per sink (by index), its metrics: the queue gauge is kept here, where the numbers are.
    metrics: Vec<SinkMetrics>,
}

/// How far the outbox goes: alerts numbered below `staged` may be delivered, those below
/// `committed` are also durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    staged: u64,
    committed: u64,
}

struct State {
    /// Sequence number of the next alert staged.
    next: u64,
    /// Sequence number of the next alert not yet committed.
    committed: u64,
    /// Per sink (by index), the next sequence number it has passed as far as stored: never
    /// past `committed`.
    cursors: Vec<u64>,
    /// The outbox is trimmed below this.
    trimmed: u64,
    /// The latest alerts staged, numbered consecutively, up to `next`.
    recent: VecDeque<Entry>,
}

impl State {
    fn slowest(&self) -> u64 {
        self.cursors.iter().copied().min().unwrap_or(self.committed)
    }

    fn marks(&self) -> Marks {
        Marks {
            staged: self.next,
            committed: self.committed,
        }
    }

    /// Drops from memory what every sink has passed, and the oldest beyond [`RECENT`].
    fn forget_passed(&mut self) {
        let slowest = self.slowest();
        while self.recent.len() > RECENT || self.recent.front().is_some_and(|e| e.seq < slowest) {
            self.recent.pop_front();
        }
    }
}

/// What a sink's dispatcher needs to know about it.
#[derive(Debug, Clone)]
pub struct Route {
    /// Sink name (its cursor's key).
    pub name: String,
    /// Rules whose alerts go to this sink, for outbox entries that do not say (written by a
    /// format-1 build).
    pub rules: HashSet<String>,
    /// The sink's own filter.
    pub filter: SinkFilter,
}

impl Route {
    /// True when `alert` goes to this sink.
    pub fn wants(&self, entry: &Entry) -> bool {
        let alert = &entry.alert;
        let routed = match &entry.sinks {
            Some(sinks) => sinks.contains(&self.name),
            None => self.rules.contains(&alert.rule),
        };
        routed
            && self
                .filter
                .accepts(&alert.rule, alert.severity, alert.kind.as_str())
    }
}

impl Outbox {
    /// Opens the outbox of `store` for the sinks `names` (in dispatcher order). A sink seen
    /// for the first time starts at the end: it receives alerts from now on. Cursors of sinks
    /// no longer configured are forgotten.
    pub fn open(store: Arc<Store>, names: &[String], capacity: u64) -> anyhow::Result<Outbox> {
        let next = store.outbox_next()?;
        let stored = store.cursors()?;
        let mut cursors = Vec::with_capacity(names.len());
        for name in names {
            let at = stored
                .iter()
                .find(|(n, _)| n == name)
                .map_or(next, |(_, c)| (*c).min(next));
            store.set_cursor(name, at)?;
            cursors.push(at);
        }
        for (name, _) in &stored {
            if !names.contains(name) {
                tracing::info!(sink = %name, "a sink is no longer configured: its place in the outbox is dropped");
                store.remove_cursor(name)?;
            }
        }
        let slowest = cursors.iter().copied().min().unwrap_or(next);
        store.outbox_trim(slowest)?;
        let pending = next - slowest;
        if pending > 0 {
            tracing::info!(
                pending,
                "alerts from before the restart are waiting in the outbox"
            );
        }
        Ok(Outbox {
            store,
            capacity: capacity.max(1),
            state: Mutex::new(State {
                next,
                committed: next,
                cursors,
                trimmed: slowest,
                recent: VecDeque::new(),
            }),
            room: Condvar::new(),
            marks: watch::Sender::new(Marks {
                staged: next,
                committed: next,
            }),
            metrics: Vec::new(),
        })
    }

    /// Counts each sink's deliveries and backlog in `metrics`; `names` are the sinks in
    /// dispatcher order, as given to [`Outbox::open`].
    pub fn with_metrics(mut self, metrics: &Metrics, names: &[String]) -> Outbox {
        self.metrics = names.iter().map(|n| metrics.sink(n)).collect();
        let s = self.lock();
        for (m, cursor) in self.metrics.iter().zip(&s.cursors) {
            m.queue.set(gauge(s.committed.saturating_sub(*cursor)));
        }
        drop(s);
        self
    }

    /// The metrics of sink `index` (unregistered ones without [`Outbox::with_metrics`]).
    fn sink_metrics(&self, index: usize) -> SinkMetrics {
        self.metrics.get(index).cloned().unwrap_or_default()
    }

    /// The store.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A dispatcher that panicked while holding the lock left only numbers behind: keep
        // going with them.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Numbers `alerts` and shows them to the sinks at once, before they are written (see
    /// the module's notes); returns them for [`Outbox::put`], then [`Outbox::committed`].
    /// Each alert goes with the sinks it is for, decided when it fired: a reload that
    /// reroutes its rule does not change where an alert already stored goes.
    pub fn stage(&self, alerts: Vec<(OutAlert, Arc<[String]>)>) -> Vec<Entry> {
        if alerts.is_empty() {
            return Vec::new();
        }
        let (entries, marks) = {
            let mut s = self.lock();
            let mut entries = Vec::with_capacity(alerts.len());
            for (alert, sinks) in alerts {
                entries.push(Entry {
                    seq: s.next,
                    alert: Arc::new(alert),
                    sinks: Some(sinks),
                });
                s.next += 1;
            }
            s.recent.extend(entries.iter().cloned());
            s.forget_passed();
            (entries, s.marks())
        };
        self.announce(marks);
        entries
    }

    /// Adds staged `entries` to `batch`, with the next number after them.
    pub fn put(batch: &mut Batch<'_>, entries: &[Entry]) -> anyhow::Result<()> {
        for e in entries {
            batch.put_alert(e.seq, &e.alert, e.sinks.as_deref().unwrap_or_default())?;
        }
        Ok(())
    }

    /// Announces that every alert numbered below `upto` is written.
    pub fn committed(&self, upto: u64) {
        let marks = {
            let mut s = self.lock();
            s.committed = s.committed.max(upto.min(s.next));
            for (m, cursor) in self.metrics.iter().zip(&s.cursors) {
                m.queue.set(gauge(s.committed.saturating_sub(*cursor)));
            }
            s.marks()
        };
        self.announce(marks);
    }

    fn announce(&self, marks: Marks) {
        self.marks.send_if_modified(|v| {
            let changed = *v != marks;
            *v = marks;
            changed
        });
    }

    /// Up to `limit` recent entries from number `from` on, if memory still holds `from`.
    fn recent(&self, from: u64, limit: usize) -> Option<Vec<Entry>> {
        let s = self.lock();
        let first = s.recent.front()?.seq;
        let skip = usize::try_from(from.checked_sub(first)?).ok()?;
        if skip >= s.recent.len() {
            return None;
        }
        Some(s.recent.iter().skip(skip).take(limit).cloned().collect())
    }

    /// Alerts written that some sink has not passed.
    pub fn pending(&self) -> u64 {
        let s = self.lock();
        s.committed - s.slowest()
    }

    /// Blocks (the engine thread) while the outbox is full, up to `timeout`; true when there
    /// is room.
    pub fn wait_for_room(&self, timeout: Duration) -> bool {
        let s = self.lock();
        let (s, _) = self
            .room
            .wait_timeout_while(s, timeout, |s| s.committed - s.slowest() >= self.capacity)
            .unwrap_or_else(|e| e.into_inner());
        s.committed - s.slowest() < self.capacity
    }

    fn advance(&self, sink: usize, name: &str, next: u64) -> anyhow::Result<()> {
        self.store.set_cursor(name, next)?;
        let trim = {
            let mut s = self.lock();
            if let Some(c) = s.cursors.get_mut(sink) {
                *c = next;
            }
            if let Some(m) = self.metrics.get(sink) {
                m.queue.set(gauge(s.committed.saturating_sub(next)));
            }
            s.forget_passed();
            let slowest = s.slowest();
            let all_passed = slowest == s.committed && slowest > s.trimmed;
            if all_passed || slowest >= s.trimmed + TRIM_EVERY {
                s.trimmed = slowest;
                Some(slowest)
            } else {
                None
            }
        };
        self.room.notify_all();
        if let Some(below) = trim {
            self.store.outbox_trim(below)?;
        }
        Ok(())
    }

    fn cursor(&self, sink: usize) -> u64 {
        let s = self.lock();
        s.cursors.get(sink).copied().unwrap_or(s.committed)
    }
}

/// What a dispatcher did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkReport {
    /// Alerts delivered.
    pub delivered: u64,
    /// Alerts the sink gave up on (dead-lettered).
    pub failed: u64,
    /// Alerts left in the outbox at shutdown, for the next start.
    pub left: u64,
}

/// One sink's dispatcher: delivers from the outbox until `drain` is cancelled and everything
/// committed is passed, or until `stop` is cancelled (then what is left stays for the next
/// start).
#[allow(clippy::too_many_arguments)]
pub async fn run(
    outbox: Arc<Outbox>,
    index: usize,
    route: Route,
    mut sink: Box<dyn Deliver>,
    dead: tokio::sync::mpsc::Sender<Letter>,
    clock: Arc<dyn Fn() -> Nanos + Send + Sync>,
    drain: CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<SinkReport> {
    let mut report = SinkReport::default();
    let metrics = outbox.sink_metrics(index);
    let mut retries = sink.retries();
    let mut marks = outbox.marks.subscribe();
    let limit = sink.batch_limit().max(1);
    // The next alert to look at; the saver stores it only as far as what is durable (see
    // the module's notes).
    let mut cursor = outbox.cursor(index);
    let mut saver = Saver {
        outbox: Arc::clone(&outbox),
        index,
        name: route.name.clone(),
        saved: cursor,
        writing: None,
    };
    // Entries taken and not handed over yet: a sink taking one alert at a time does not go
    // back to the outbox for each one.
    let mut ahead: VecDeque<Entry> = VecDeque::new();
    loop {
        let Marks { staged, committed } = *marks.borrow_and_update();
        saver.start(cursor.min(committed));
        if cursor >= staged {
            if drain.is_cancelled() || stop.is_cancelled() {
                break;
            }
            if !wake(&stop, Some(&drain), &mut saver, &mut marks).await? {
                break;
            }
            continue;
        }
        if stop.is_cancelled() {
            break;
        }
        // How far what was taken can reach: everything staged when it comes from memory,
        // only what is durable when it comes from the store.
        let mut reach = staged;
        if ahead.is_empty() {
            let want = READ_AHEAD.max(limit);
            if let Some(recent) = outbox.recent(cursor, want) {
                ahead.extend(recent);
            } else if cursor < committed {
                let store = Arc::clone(outbox.store());
                let from = cursor;
                let read =
                    tokio::task::spawn_blocking(move || store.outbox_read(from, want)).await??;
                ahead.extend(read);
                reach = committed;
            } else {
                // No longer in memory and not written yet: wait for the write.
                if !wake(&stop, None, &mut saver, &mut marks).await? {
                    break;
                }
                continue;
            }
        }
        let mut wanted: Vec<(u64, Arc<OutAlert>)> = Vec::new();
        let mut passed = cursor;
        while let Some(entry) = ahead.front() {
            let seq = entry.seq;
            if seq >= reach || (!wanted.is_empty() && !route.wants(entry)) {
                break;
            }
            let Some(entry) = ahead.pop_front() else {
                break;
            };
            if route.wants(&entry) {
                wanted.push((seq, entry.alert));
                if wanted.len() >= limit {
                    break;
                }
            } else {
                passed = seq + 1;
            }
        }
        if wanted.is_empty() {
            // Everything taken was for other sinks (or the outbox was trimmed past us).
            cursor = if passed > cursor { passed } else { reach };
            continue;
        }
        let alerts: Vec<Arc<OutAlert>> = wanted.iter().map(|(_, a)| Arc::clone(a)).collect();
        let outcomes = sink.deliver(&alerts, &stop).await;
        let now_retries = sink.retries();
        metrics.retries.inc_by(now_retries.saturating_sub(retries));
        retries = now_retries;
        let mut done = passed;
        for ((seq, alert), outcome) in wanted.iter().zip(&outcomes) {
            match outcome {
                Outcome::Delivered => {
                    report.delivered += 1;
                    metrics.delivered.inc();
                }
                Outcome::Failed { reason, attempts } => {
                    report.failed += 1;
                    metrics.failures.inc();
                    tracing::error!(sink = %route.name, alert = %alert.id, rule = %alert.rule,
                        attempts, reason = %reason, "alert not delivered: dead-lettered");
                    let (written_tx, written_rx) = oneshot::channel();
                    let letter = AlertLetter {
                        failed_at: clock(),
                        sink: route.name.clone(),
                        attempts: *attempts,
                        reason: reason.clone(),
                        alert: Arc::clone(alert),
                    };
                    // The cursor moves past a failed alert only once its dead letter is
                    // written, so a crash in between delivers it (or dead-letters it) again.
                    if dead
                        .send(Letter::Alert(letter, Some(written_tx)))
                        .await
                        .is_ok()
                    {
                        let _ = written_rx.await;
                    }
                }
            }
            done = seq + 1;
        }
        cursor = cursor.max(done);
        if outcomes.len() < wanted.len() {
            // Stopped while retrying: what was not handed over stays in the outbox.
            break;
        }
    }
    let committed = marks.borrow().committed;
    saver.finish(cursor.min(committed)).await?;
    sink.close().await;
    report.left = committed.saturating_sub(saver.saved);
    Ok(report)
}

/// Waits for what a dispatcher acts on next: a stop, a drain (when `drain` is given), its
/// cursor's write finishing, or the outbox moving on. False when it should stop.
async fn wake(
    stop: &CancellationToken,
    drain: Option<&CancellationToken>,
    saver: &mut Saver,
    marks: &mut watch::Receiver<Marks>,
) -> anyhow::Result<bool> {
    let drained = async {
        match drain {
            Some(d) => d.cancelled().await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        _ = stop.cancelled() => Ok(false),
        _ = drained => Ok(true),
        written = saver.written() => written.map(|()| true),
        changed = marks.changed() => Ok(changed.is_ok()),
    }
}

/// Stores a sink's cursor on a blocking thread, one write at a time, while the sink goes on
/// delivering: a store write can wait behind the engine's synced write, which would otherwise
/// hold up both the sink and the async thread it runs on.
struct Saver {
    outbox: Arc<Outbox>,
    index: usize,
    name: String,
    /// The cursor as last stored.
    saved: u64,
    writing: Option<tokio::task::JoinHandle<anyhow::Result<u64>>>,
}

impl Saver {
    /// Starts storing `upto`, unless a write is under way or it is stored already.
    fn start(&mut self, upto: u64) {
        if self.writing.is_some() || upto <= self.saved {
            return;
        }
        let outbox = Arc::clone(&self.outbox);
        let (index, name) = (self.index, self.name.clone());
        self.writing = Some(tokio::task::spawn_blocking(move || {
            outbox.advance(index, &name, upto).map(|()| upto)
        }));
    }

    /// Waits for the write under way; never returns while there is none.
    async fn written(&mut self) -> anyhow::Result<()> {
        let Some(writing) = &mut self.writing else {
            return std::future::pending().await;
        };
        let stored = writing.await;
        self.writing = None;
        self.saved = stored??;
        Ok(())
    }

    /// Waits for the write under way, then stores `upto`.
    async fn finish(&mut self, upto: u64) -> anyhow::Result<()> {
        if self.writing.is_some() {
            self.written().await?;
        }
        self.start(upto);
        if self.writing.is_some() {
            self.written().await?;
        }
        Ok(())
    }
}

/// A count as a gauge value.
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::compile::hir::Severity;
    use crate::delivery::{AlertKind, DeliverFuture};

    fn alert(i: u64, rule: &str, severity: Severity) -> OutAlert {
        OutAlert {
            id: format!("id{i}"),
            rule: rule.into(),
            name: rule.into(),
            kind: AlertKind::Match,
            severity,
            key_text: "k".into(),
            event_time: i as i64,
            emitted_at: 0,
            json: format!("{{\"id\":\"id{i}\"}}"),
        }
    }

    /// Records what it is handed; refuses the ids in `refuse`.
    struct Recorder {
        got: Arc<Mutex<Vec<String>>>,
        refuse: Vec<String>,
        limit: usize,
    }

    impl Deliver for Recorder {
        fn batch_limit(&self) -> usize {
            self.limit
        }
        fn deliver<'a>(
            &'a mut self,
            batch: &'a [Arc<OutAlert>],
            _stop: &'a CancellationToken,
        ) -> DeliverFuture<'a> {
            Box::pin(async move {
                batch
                    .iter()
                    .map(|a| {
                        self.got.lock().unwrap().push(a.id.clone());
                        if self.refuse.contains(&a.id) {
                            Outcome::Failed {
                                reason: "HTTP 400".into(),
                                attempts: 1,
                            }
                        } else {
                            Outcome::Delivered
                        }
                    })
                    .collect()
            })
        }
    }

    /// Stages `alerts`, writes them and announces them durable, as the engine thread does.
    fn write(outbox: &Outbox, alerts: Vec<(OutAlert, Arc<[String]>)>) -> Vec<Entry> {
        let entries = outbox.stage(alerts);
        let mut batch = outbox.store().batch();
        Outbox::put(&mut batch, &entries).unwrap();
        outbox.store().write(batch).unwrap();
        outbox.committed(entries.last().map_or(0, |e| e.seq + 1));
        entries
    }

    fn route(name: &str, rules: &[&str], filter: SinkFilter) -> Route {
        Route {
            name: name.into(),
            rules: rules.iter().map(|r| r.to_string()).collect(),
            filter,
        }
    }

    #[tokio::test]
    async fn each_sink_gets_its_alerts_in_order_and_failures_are_dead_lettered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), false).unwrap());
        let names = ["a".to_string(), "b".to_string()];
        let outbox = Arc::new(Outbox::open(Arc::clone(&store), &names, 100).unwrap());
        // r1 goes to both sinks, r2 to b only.
        let both: Arc<[String]> = names.to_vec().into();
        let only_b: Arc<[String]> = vec!["b".to_string()].into();
        let alerts: Vec<(OutAlert, Arc<[String]>)> = (0..10)
            .map(|i| {
                if i % 3 == 0 {
                    (alert(i, "r1", Severity::Critical), Arc::clone(&both))
                } else {
                    (alert(i, "r2", Severity::Info), Arc::clone(&only_b))
                }
            })
            .collect();
        write(&outbox, alerts);
        assert_eq!(outbox.pending(), 10);

        let got_a = Arc::new(Mutex::new(Vec::new()));
        let got_b = Arc::new(Mutex::new(Vec::new()));
        let (dead_tx, mut dead_rx) = tokio::sync::mpsc::channel(8);
        let dead_task = tokio::spawn(async move {
            let mut letters = Vec::new();
            while let Some(l) = dead_rx.recv().await {
                if let Letter::Alert(a, Some(done)) = l {
                    letters.push((a.sink.clone(), a.alert.id.clone(), a.reason.clone()));
                    done.send(()).unwrap();
                }
            }
            letters
        });
        let drain = CancellationToken::new();
        drain.cancel();
        let stop = CancellationToken::new();
        let clock: Arc<dyn Fn() -> Nanos + Send + Sync> = Arc::new(|| 0);
        let a = run(
            Arc::clone(&outbox),
            0,
            route("a", &[], SinkFilter::default()),
            Box::new(Recorder {
                got: Arc::clone(&got_a),
                refuse: vec!["id3".into()],
                limit: 1,
            }),
            dead_tx.clone(),
            Arc::clone(&clock),
            drain.clone(),
            stop.clone(),
        );
        let b = run(
            Arc::clone(&outbox),
            1,
            route(
                "b",
                &[],
                SinkFilter {
                    kinds: vec!["match".into()],
                    ..SinkFilter::default()
                },
            ),
            Box::new(Recorder {
                got: Arc::clone(&got_b),
                refuse: vec![],
                limit: 4,
            }),
            dead_tx,
            clock,
            drain,
            stop,
        );
        let (ra, rb) = tokio::join!(a, b);
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(
            *got_a.lock().unwrap(),
            ["id0", "id3", "id6", "id9"],
            "only r1, in order"
        );
        assert_eq!(got_b.lock().unwrap().len(), 10);
        assert_eq!(
            (ra.delivered, ra.failed, ra.left, rb.delivered),
            (3, 1, 0, 10)
        );
        assert_eq!(
            dead_task.await.unwrap(),
            [("a".to_string(), "id3".to_string(), "HTTP 400".to_string())]
        );
        // Both passed everything: cursors at the end, the outbox emptied.
        assert_eq!(outbox.pending(), 0);
        assert_eq!(store.outbox_len(0).unwrap(), 0);
        let mut cursors = store.cursors().unwrap();
        cursors.sort();
        assert_eq!(cursors, [("a".to_string(), 10), ("b".to_string(), 10)]);
    }

    #[test]
    fn a_full_outbox_has_no_room_until_the_slowest_sink_moves() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), false).unwrap());
        let names = ["fast".to_string(), "slow".to_string()];
        let outbox = Outbox::open(Arc::clone(&store), &names, 3).unwrap();
        let sinks: Arc<[String]> = names.to_vec().into();
        let alerts: Vec<(OutAlert, Arc<[String]>)> = (0..3)
            .map(|i| (alert(i, "r", Severity::Info), Arc::clone(&sinks)))
            .collect();
        write(&outbox, alerts);
        outbox.advance(0, "fast", 3).unwrap();
        assert!(!outbox.wait_for_room(Duration::from_millis(1)));
        outbox.advance(1, "slow", 1).unwrap();
        assert!(outbox.wait_for_room(Duration::from_millis(1)));
        // A restart resumes each sink where it was; a sink no longer configured is dropped
        // and a new one starts at the end.
        drop(outbox);
        let names = ["slow".to_string(), "new".to_string()];
        let outbox = Outbox::open(Arc::clone(&store), &names, 3).unwrap();
        assert_eq!((outbox.cursor(0), outbox.cursor(1)), (1, 3));
        assert_eq!(outbox.pending(), 2);
        assert_eq!(store.outbox_read(0, 10).unwrap()[0].seq, 1);
    }

    /// Delivers everything, reporting one retry per alert.
    struct Retrying(u64);

    impl Deliver for Retrying {
        fn deliver<'a>(
            &'a mut self,
            batch: &'a [Arc<OutAlert>],
            _stop: &'a CancellationToken,
        ) -> DeliverFuture<'a> {
            self.0 += batch.len() as u64;
            Box::pin(async move { vec![Outcome::Delivered; batch.len()] })
        }

        fn retries(&self) -> u64 {
            self.0
        }
    }

    #[tokio::test]
    async fn deliveries_retries_and_backlog_are_counted_per_sink() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), false).unwrap());
        let names = ["hook".to_string(), "idle".to_string()];
        let metrics = Metrics::new();
        let outbox = Arc::new(
            Outbox::open(Arc::clone(&store), &names, 100)
                .unwrap()
                .with_metrics(&metrics, &names),
        );
        let sinks: Arc<[String]> = Arc::from(vec!["hook".to_string(), "idle".to_string()]);
        let alerts: Vec<(OutAlert, Arc<[String]>)> = (0..4)
            .map(|i| (alert(i, "r", Severity::Info), Arc::clone(&sinks)))
            .collect();
        write(&outbox, alerts);
        let (hook, idle) = (metrics.sink("hook"), metrics.sink("idle"));
        assert_eq!((hook.queue.get(), idle.queue.get()), (4, 4));
        let (dead_tx, _dead_rx) = tokio::sync::mpsc::channel(8);
        let drain = CancellationToken::new();
        drain.cancel();
        let report = run(
            Arc::clone(&outbox),
            0,
            route("hook", &["r"], SinkFilter::default()),
            Box::new(Retrying(0)),
            dead_tx,
            Arc::new(|| 0),
            drain,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(report.delivered, 4);
        assert_eq!(hook.delivered.get(), 4);
        assert_eq!(hook.retries.get(), 4);
        assert_eq!(hook.failures.get(), 0);
        // The sink that did not run still has all four waiting.
        assert_eq!((hook.queue.get(), idle.queue.get()), (0, 4));
    }

    /// Polls `cond` until it holds, for at most ten seconds.
    async fn until(what: &str, cond: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !cond() {
            assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The dispatcher of sink 0, `hook`, recording into `got`, `limit` alerts at a time.
    fn hook(
        outbox: &Arc<Outbox>,
        got: &Arc<Mutex<Vec<String>>>,
        limit: usize,
        drain: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<SinkReport>> + use<> {
        // Dead letters are not expected: the receiver may go.
        let (dead_tx, _) = tokio::sync::mpsc::channel(8);
        run(
            Arc::clone(outbox),
            0,
            route("hook", &["r"], SinkFilter::default()),
            Box::new(Recorder {
                got: Arc::clone(got),
                refuse: vec![],
                limit,
            }),
            dead_tx,
            Arc::new(|| 0),
            drain,
            CancellationToken::new(),
        )
    }

    /// A store in a new directory and an outbox of `capacity` for one sink, `hook`; the
    /// directory lives as long as the first item.
    fn one_sink(capacity: u64) -> (tempfile::TempDir, Arc<Store>, Arc<Outbox>, Arc<[String]>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), false).unwrap());
        let names = ["hook".to_string()];
        let outbox = Arc::new(Outbox::open(Arc::clone(&store), &names, capacity).unwrap());
        (dir, store, outbox, names.to_vec().into())
    }

    fn stored_cursor(store: &Store, name: &str) -> u64 {
        let cursors = store.cursors().unwrap();
        cursors.iter().find(|(n, _)| n == name).unwrap().1
    }

    #[tokio::test]
    async fn a_staged_alert_goes_out_before_its_write_but_the_stored_cursor_waits_for_it() {
        let (_dir, store, outbox, sinks) = one_sink(100);
        let staged = outbox.stage(
            (0..3)
                .map(|i| (alert(i, "r", Severity::Info), Arc::clone(&sinks)))
                .collect(),
        );
        let got = Arc::new(Mutex::new(Vec::new()));
        let drain = CancellationToken::new();
        let task = tokio::spawn(hook(&outbox, &got, 2, drain.clone()));
        until("the staged alerts delivered", || {
            got.lock().unwrap().len() == 3
        })
        .await;
        assert_eq!(*got.lock().unwrap(), ["id0", "id1", "id2"]);
        // Nothing is durable yet: a restart now must not skip these numbers.
        assert_eq!(stored_cursor(&store, "hook"), 0);
        assert_eq!(store.outbox_len(0).unwrap(), 0);

        let mut batch = store.batch();
        Outbox::put(&mut batch, &staged[..2]).unwrap();
        store.write(batch).unwrap();
        outbox.committed(2);
        until("the cursor stored up to the durable alerts", || {
            stored_cursor(&store, "hook") == 2
        })
        .await;
        let mut batch = store.batch();
        Outbox::put(&mut batch, &staged[2..]).unwrap();
        store.write(batch).unwrap();
        outbox.committed(3);
        drain.cancel();
        let report = task.await.unwrap().unwrap();
        assert_eq!((report.delivered, report.left), (3, 0));
        assert_eq!(stored_cursor(&store, "hook"), 3);
        assert_eq!(got.lock().unwrap().len(), 3, "each delivered once");
    }

    #[tokio::test]
    async fn a_sink_behind_what_memory_holds_reads_the_store_then_memory() {
        let (_dir, _, outbox, sinks) = one_sink(1_000_000);
        let n = RECENT as u64 + 1000;
        write(
            &outbox,
            (0..n)
                .map(|i| (alert(i, "r", Severity::Info), Arc::clone(&sinks)))
                .collect(),
        );
        assert!(
            outbox.recent(0, 1).is_none(),
            "the oldest are only in the store"
        );
        assert!(outbox.recent(n - 1, 1).is_some());
        let got = Arc::new(Mutex::new(Vec::new()));
        let drain = CancellationToken::new();
        drain.cancel();
        let report = hook(&outbox, &got, 100, drain).await.unwrap();
        let want: Vec<String> = (0..n).map(|i| format!("id{i}")).collect();
        assert_eq!(*got.lock().unwrap(), want, "every alert once, in order");
        assert_eq!((report.delivered, report.left), (n, 0));
        assert!(
            outbox.recent(n - 1, 1).is_none(),
            "memory forgets what every sink passed"
        );
    }
}
