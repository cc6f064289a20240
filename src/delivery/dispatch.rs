//! The outbox and its dispatchers: one task per sink, each reading the durable outbox from
//! its own cursor and handing alerts to its [`Deliver`].
//!
//! The engine thread stages a batch's alerts into the same RocksDB write as the state they
//! came from ([`Outbox::stage`]), then announces them ([`Outbox::committed`]). Dispatchers
//! wake up, read what is new, skip what their routing and filter exclude, deliver the rest,
//! and move their cursor on. Entries every sink has passed are deleted.
//!
//! When the outbox holds `capacity` alerts that some sink has not passed, the engine thread
//! waits in [`Outbox::wait_for_room`]: its queue fills, the MQTT source stops reading, and the
//! broker keeps the messages. Nothing is dropped; a sink that stays down long enough stops
//! the intake, and its retry policy decides how long that is.

use std::collections::HashSet;
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

/// The outbox: sequence numbers, cursors and the wake-ups between the engine thread and the
/// dispatchers.
pub struct Outbox {
    store: Arc<Store>,
    capacity: u64,
    state: Mutex<State>,
    room: Condvar,
    committed: watch::Sender<u64>,
    /// Per sink (by index), its metrics: the queue gauge is kept here, where the numbers are.
    metrics: Vec<SinkMetrics>,
}

struct State {
    /// Sequence number of the next alert staged.
    next: u64,
    /// Sequence number of the next alert not yet committed.
    committed: u64,
    /// Per sink (by index), the next sequence number it has not passed.
    cursors: Vec<u64>,
    /// The outbox is trimmed below this.
    trimmed: u64,
}

impl State {
    fn slowest(&self) -> u64 {
        self.cursors.iter().copied().min().unwrap_or(self.committed)
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
            }),
            room: Condvar::new(),
            committed: watch::Sender::new(next),
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

    /// Adds `alerts` to `batch`; they become visible to the sinks at [`Outbox::committed`].
    /// Each alert goes with the sinks it is for, decided when it fired: a reload that
    /// reroutes its rule does not change where an alert already stored goes.
    pub fn stage(
        &self,
        batch: &mut Batch<'_>,
        alerts: &[(OutAlert, Arc<[String]>)],
    ) -> anyhow::Result<()> {
        let mut s = self.lock();
        for (a, sinks) in alerts {
            batch.put_alert(s.next, a, sinks)?;
            s.next += 1;
        }
        Ok(())
    }

    /// Announces that everything staged so far is written.
    pub fn committed(&self) {
        let next = {
            let mut s = self.lock();
            s.committed = s.next;
            for (m, cursor) in self.metrics.iter().zip(&s.cursors) {
                m.queue.set(gauge(s.committed.saturating_sub(*cursor)));
            }
            s.next
        };
        self.committed.send_if_modified(|v| {
            let changed = *v != next;
            *v = next;
            changed
        });
    }

    /// Forgets alerts staged but not written (the write failed).
    pub fn abandon(&self) {
        let mut s = self.lock();
        s.next = s.committed;
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
    let mut committed = outbox.committed.subscribe();
    let limit = sink.batch_limit().max(1);
    let mut cursor = outbox.cursor(index);
    // Entries read from the store and not handed over yet: a sink taking one alert at a time
    // does not read the store again for each one.
    let mut ahead: std::collections::VecDeque<Entry> = Default::default();
    loop {
        let end = *committed.borrow_and_update();
        if cursor >= end {
            if drain.is_cancelled() || stop.is_cancelled() {
                break;
            }
            tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                _ = drain.cancelled() => continue,
                changed = committed.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    continue;
                }
            }
        }
        if stop.is_cancelled() {
            break;
        }
        if ahead.is_empty() {
            let store = Arc::clone(outbox.store());
            let from = cursor;
            let read =
                tokio::task::spawn_blocking(move || store.outbox_read(from, READ_AHEAD.max(limit)))
                    .await??;
            ahead.extend(read);
        }
        // Entries past `end` may be visible if the engine wrote meanwhile; leave them for the
        // next round so `end` stays the limit announced.
        let mut wanted: Vec<(u64, Arc<OutAlert>)> = Vec::new();
        let mut passed = cursor;
        while let Some(entry) = ahead.front() {
            let seq = entry.seq;
            if seq >= end || (!wanted.is_empty() && !route.wants(entry)) {
                break;
            }
            let Some(entry) = ahead.pop_front() else {
                break;
            };
            if route.wants(&entry) {
                wanted.push((seq, Arc::new(entry.alert)));
                if wanted.len() >= limit {
                    break;
                }
            } else {
                passed = seq + 1;
            }
        }
        if wanted.is_empty() {
            // Everything read was for other sinks (or the outbox was trimmed past us).
            let next = if passed > cursor { passed } else { end };
            outbox.advance(index, &route.name, next)?;
            cursor = next;
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
        if done > cursor {
            outbox.advance(index, &route.name, done)?;
            cursor = done;
        }
        if outcomes.len() < wanted.len() {
            // Stopped while retrying: what was not handed over stays in the outbox.
            break;
        }
    }
    sink.close().await;
    report.left = (*committed.borrow()).saturating_sub(cursor);
    Ok(report)
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
        let mut batch = store.batch();
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
        outbox.stage(&mut batch, &alerts).unwrap();
        store.write(batch).unwrap();
        outbox.committed();
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
        let mut batch = store.batch();
        let sinks: Arc<[String]> = names.to_vec().into();
        let alerts: Vec<(OutAlert, Arc<[String]>)> = (0..3)
            .map(|i| (alert(i, "r", Severity::Info), Arc::clone(&sinks)))
            .collect();
        outbox.stage(&mut batch, &alerts).unwrap();
        store.write(batch).unwrap();
        outbox.committed();
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
        let mut batch = store.batch();
        outbox.stage(&mut batch, &alerts).unwrap();
        store.write(batch).unwrap();
        outbox.committed();
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
}
