//! A fleet of simulated devices and the messages it publishes, in simulated time.
//!
//! The fleet is deterministic: a seed and a start time give the same messages in the same
//! order. It never reads the clock; a publisher maps simulated time to the wall clock
//! (`--speed`). Besides ordinary readings it produces, on purpose and counted in
//! [`FleetStats`]:
//! - congestion episodes on cameras and loop detectors, furnace drifts, yield drops;
//! - devices going silent for a few minutes;
//! - malformed messages (a [`Malformation`]: dead-lettered with a decode reason);
//! - late messages: a reading stamped a minute in the past, behind every stream's
//!   allowed lateness once the stream has run for a while (dead-lettered as `late`).
//!
//! With [`FleetConfig::opening`] the first minutes are scripted so that each bundled rule
//! has something to find early: a jam on the first camera after 2 s, a heartbeat that stops
//! after 6 s, a camera that goes silent after 5 s, a jam on the first loop detector after
//! 25 s, a drift
//! on the first furnace, and a yield drop on the first line from the second full
//! quarter-hour on.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use super::device::{
    Camera, Detector, Furnace, Heartbeat, Kind, Line, Malformation, Model, Station,
};
use super::rng::Dice;
use super::traffic::Traffic;
use crate::event::Nanos;

const SECOND: Nanos = 1_000_000_000;
const MINUTE: Nanos = 60 * SECOND;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Random seed.
    pub seed: u64,
    /// Simulated time of the start (ns since the epoch).
    pub start: Nanos,
    /// Traffic cameras (one reading a second each).
    pub cameras: u32,
    /// Loop detectors (one reading every 10 s).
    pub detectors: u32,
    /// Production lines.
    pub lines: u32,
    /// Inspection stations per line (one wafer every 5 s each).
    pub stations_per_line: u32,
    /// Furnaces (one reading every 5 s).
    pub furnaces: u32,
    /// Devices sending heartbeats (every 5 s).
    pub heartbeats: u32,
    /// Probability that a message is malformed.
    pub malformed: f64,
    /// Probability that a camera, detector or heartbeat reading is followed by a late copy.
    pub late: f64,
    /// Probability per reading that a camera or heartbeat device goes silent for a while.
    pub silence: f64,
    /// Script the first minutes so every bundled rule fires early (see the module doc).
    pub opening: bool,
}

/// Readings per second of one device of each kind.
const CAMERA_PERIOD: Nanos = SECOND;
const DETECTOR_PERIOD: Nanos = 10 * SECOND;
const STATION_PERIOD: Nanos = 5 * SECOND;
const FURNACE_PERIOD: Nanos = 5 * SECOND;
const HEARTBEAT_PERIOD: Nanos = 5 * SECOND;
/// How far in the past a late copy is stamped: more than any shipped profile's lateness.
const LATE_BY: Nanos = MINUTE;
/// No late copies before this much simulated time, so the streams have watermarks to be
/// late against.
const LATE_AFTER: Nanos = 90 * SECOND;

impl FleetConfig {
    /// The demo fleet: a dozen cameras, a few of everything else, about 16 messages a
    /// second, with the scripted opening and a few flawed messages.
    pub fn demo(seed: u64, start: Nanos) -> FleetConfig {
        FleetConfig {
            seed,
            start,
            cameras: 12,
            detectors: 6,
            lines: 2,
            stations_per_line: 2,
            furnaces: 3,
            heartbeats: 8,
            malformed: 0.003,
            late: 0.002,
            silence: 0.00003,
            opening: true,
        }
    }

    /// The demo fleet with as many cameras as it takes to publish about `rate` messages
    /// per second of simulated time (at least two).
    pub fn with_rate(mut self, rate: f64) -> FleetConfig {
        let others = self.rate() - f64::from(self.cameras) * per_second(CAMERA_PERIOD);
        let cameras = ((rate - others) / per_second(CAMERA_PERIOD)).round();
        self.cameras = if cameras.is_finite() {
            cameras.clamp(2.0, 1_000_000.0) as u32
        } else {
            2
        };
        self
    }

    /// Messages per second of simulated time, flaws aside.
    pub fn rate(&self) -> f64 {
        f64::from(self.cameras) * per_second(CAMERA_PERIOD)
            + f64::from(self.detectors) * per_second(DETECTOR_PERIOD)
            + f64::from(self.lines * self.stations_per_line) * per_second(STATION_PERIOD)
            + f64::from(self.furnaces) * per_second(FURNACE_PERIOD)
            + f64::from(self.heartbeats) * per_second(HEARTBEAT_PERIOD)
    }
}

fn per_second(period: Nanos) -> f64 {
    SECOND as f64 / period as f64
}

/// What is special about a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flaw {
    /// An ordinary reading.
    None,
    /// Broken on purpose: the pipeline must dead-letter it with a decode reason.
    Malformed(Malformation),
    /// A reading stamped a minute ago: the pipeline must dead-letter it as late.
    Late,
}

/// One message to publish.
#[derive(Debug, Clone)]
pub struct Message {
    /// When to publish it, in simulated time.
    pub at: Nanos,
    /// MQTT topic.
    pub topic: String,
    /// Payload bytes.
    pub payload: Vec<u8>,
    /// The kind of device that sent it.
    pub kind: Kind,
    /// What is special about it.
    pub flaw: Flaw,
}

/// The simulator's own counters: what it did on purpose.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Messages produced.
    pub messages: u64,
    /// Malformed messages, by kind.
    pub malformed: BTreeMap<&'static str, u64>,
    /// Late copies.
    pub late: u64,
    /// Devices that went silent.
    pub silences: u64,
    /// Furnace drifts started.
    pub drifts: u64,
    /// Yield drops scheduled.
    pub yield_drops: u64,
    /// Messages by kind of device.
    pub by_kind: BTreeMap<Kind, u64>,
}

impl FleetStats {
    /// All malformed messages.
    pub fn malformed_total(&self) -> u64 {
        self.malformed.values().sum()
    }
}

impl std::fmt::Display for FleetStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} messages ({} malformed on purpose, {} late on purpose), {} silences, {} furnace drifts, {} yield drops",
            self.messages,
            self.malformed_total(),
            self.late,
            self.silences,
            self.drifts,
            self.yield_drops
        )
    }
}

struct Device {
    topic: String,
    period: Nanos,
    silent_until: Nanos,
    dice: Dice,
    model: Model,
}

/// A scripted change, applied when simulated time reaches it.
#[derive(Debug, Clone, Copy)]
enum Script {
    SteadyJam { device: usize, readings: u32 },
    Silence { device: usize, duration: Nanos },
    Drift { device: usize },
}

/// The fleet: devices, their schedule, and the counters.
pub struct Fleet {
    config: FleetConfig,
    devices: Vec<Device>,
    lines: Vec<Line>,
    due: BinaryHeap<Reverse<(Nanos, usize)>>,
    scripts: Vec<(Nanos, Script)>,
    pending: VecDeque<Message>,
    dice: Dice,
    stats: FleetStats,
}

const DISTRICTS: [&str; 5] = ["north", "south", "east", "west", "centre"];
const SITES: [&str; 2] = ["hamburg", "dresden"];

impl Fleet {
    /// Builds the fleet; the first messages are due within one period of `config.start`.
    pub fn new(config: FleetConfig) -> Fleet {
        let mut dice = Dice::new(config.seed);
        let start = config.start;
        let mut devices = Vec::new();
        let mut add = |dice: &mut Dice, topic: String, period: Nanos, model| {
            devices.push(Device {
                topic,
                period,
                silent_until: Nanos::MIN,
                dice: dice.fork(),
                model,
            });
        };
        for i in 0..config.cameras {
            let district = DISTRICTS[i as usize % DISTRICTS.len()];
            let id = format!("cam-{:03}", i + 1);
            let topic = format!("city/{district}/camera/{id}/flow");
            let traffic = Traffic::new(&mut dice);
            add(
                &mut dice,
                topic,
                CAMERA_PERIOD,
                Model::Camera(Camera { traffic }),
            );
        }
        for i in 0..config.detectors {
            let district = DISTRICTS[i as usize % DISTRICTS.len()];
            let id = format!("loop-{:03}", i + 1);
            let topic = format!("city/{district}/loop/{id}");
            let model = Model::Detector(Detector {
                traffic: Traffic::new(&mut dice),
                has_speed: i % 3 != 2,
                interval_s: DETECTOR_PERIOD as f64 / SECOND as f64,
            });
            add(&mut dice, topic, DETECTOR_PERIOD, model);
        }
        let mut lines = Vec::new();
        for l in 0..config.lines {
            let line = format!("line-{}", l + 1);
            for s in 0..config.stations_per_line {
                let station = format!("insp-{}{}", l + 1, char::from(b'a' + (s % 26) as u8));
                let topic = format!("fab/{line}/station/{station}/inspection");
                let model = Model::Station(Station {
                    line: l as usize,
                    name: station.clone(),
                    wafers: 0,
                    lot: dice.between(100, 900),
                });
                add(&mut dice, topic, STATION_PERIOD, model);
            }
            let normal_yield = dice.range(0.95, 0.98);
            lines.push(Line {
                name: line,
                normal_yield,
                drop_yield: normal_yield - dice.range(0.06, 0.10),
                drop: None,
            });
        }
        for i in 0..config.furnaces {
            let site = SITES[i as usize % SITES.len()];
            let id = format!("furnace-{}", i + 1);
            let topic = format!("plant/{site}/furnace/{id}/telemetry");
            let setpoint = dice.range(800.0, 820.0);
            let model = Model::Furnace(Furnace {
                setpoint,
                temperature: setpoint,
                drift_left: 0,
                drift_step: 0.0,
            });
            add(&mut dice, topic, FURNACE_PERIOD, model);
        }
        for i in 0..config.heartbeats {
            let id = format!("gw-{:02}", i + 1);
            let topic = format!("devices/{id}/heartbeat");
            let model = Model::Heartbeat(Heartbeat {
                boot: start - (dice.between(60, 30 * 86_400) as Nanos) * SECOND,
                battery: (i % 2 == 1).then(|| dice.range(0.4, 1.0)),
                reports_uptime: i % 4 != 3,
            });
            add(&mut dice, topic, HEARTBEAT_PERIOD, model);
        }
        let mut due = BinaryHeap::with_capacity(devices.len());
        for (i, d) in devices.iter().enumerate() {
            let phase = dice.below(d.period as u64) as Nanos;
            due.push(Reverse((round_ms(start + phase), i)));
        }
        let mut fleet = Fleet {
            config,
            devices,
            lines,
            due,
            scripts: Vec::new(),
            pending: VecDeque::new(),
            dice,
            stats: FleetStats::default(),
        };
        fleet.plan_yield_drops();
        if fleet.config.opening {
            fleet.script_opening();
        }
        fleet
    }

    /// The configuration.
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> &FleetStats {
        &self.stats
    }

    /// The time of the next message.
    pub fn peek_time(&self) -> Nanos {
        match self.pending.front() {
            Some(m) => m.at,
            None => self.due.peek().map_or(Nanos::MAX, |Reverse((t, _))| *t),
        }
    }

    fn index_of(&self, kind: Kind, nth: usize) -> Option<usize> {
        self.devices
            .iter()
            .enumerate()
            .filter(|(_, d)| d.model.kind() == kind)
            .nth(nth)
            .map(|(i, _)| i)
    }

    fn script_opening(&mut self) {
        let start = self.config.start;
        let mut plan = Vec::new();
        if let Some(device) = self.index_of(Kind::Camera, 0) {
            plan.push((
                start + 2 * SECOND,
                Script::SteadyJam {
                    device,
                    readings: 8,
                },
            ));
        }
        if let Some(device) = self.index_of(Kind::Heartbeat, 0) {
            // After its first heartbeat, which comes within one period.
            let at = start + HEARTBEAT_PERIOD + SECOND;
            plan.push((
                at,
                Script::Silence {
                    device,
                    duration: 2 * MINUTE,
                },
            ));
        }
        if let Some(device) = self.index_of(Kind::Camera, 1) {
            let duration = 150 * SECOND;
            plan.push((start + 5 * SECOND, Script::Silence { device, duration }));
        }
        if let Some(device) = self.index_of(Kind::Detector, 0) {
            // After two ordinary readings: the rule wants a clear reading before the jam.
            plan.push((
                start + 25 * SECOND,
                Script::SteadyJam {
                    device,
                    readings: 6,
                },
            ));
        }
        if let Some(device) = self.index_of(Kind::Furnace, 0) {
            plan.push((start + 10 * SECOND, Script::Drift { device }));
        }
        if let Some(line) = self.lines.first_mut() {
            // One full quarter-hour of normal running as the baseline, then four low ones.
            let quarter = 15 * MINUTE;
            let first_full = start.div_euclid(quarter) * quarter + quarter;
            let from = first_full + quarter;
            line.drop = Some((from, from + 4 * quarter));
        }
        plan.sort_by_key(|(t, _)| *t);
        self.scripts = plan;
    }

    /// Each line gets a yield drop of 4-6 quarter-hours now and then (every few hours).
    fn plan_yield_drops(&mut self) {
        let start = self.config.start;
        for line in &mut self.lines {
            let from = start + (self.dice.between(120, 360) as Nanos) * MINUTE;
            let len = (self.dice.between(4, 6) as Nanos) * 15 * MINUTE;
            line.drop = Some((from, from + len));
            self.stats.yield_drops += 1;
        }
    }

    fn apply_scripts(&mut self, now: Nanos) {
        while let Some(&(t, script)) = self.scripts.first() {
            if t > now {
                break;
            }
            self.scripts.remove(0);
            match script {
                Script::SteadyJam { device, readings } => {
                    if let Some(d) = self.devices.get_mut(device) {
                        match &mut d.model {
                            Model::Camera(c) => c.traffic.start_steady_jam(readings),
                            Model::Detector(x) => x.traffic.start_steady_jam(readings),
                            _ => {}
                        }
                    }
                }
                Script::Silence { device, duration } => {
                    if let Some(d) = self.devices.get_mut(device) {
                        d.silent_until = t + duration;
                        self.stats.silences += 1;
                    }
                }
                Script::Drift { device } => {
                    if let Some(d) = self.devices.get_mut(device) {
                        start_drift(&mut d.model);
                        self.stats.drifts += 1;
                    }
                }
            }
        }
    }

    fn next_line_drop(&mut self, line: usize, now: Nanos) {
        let Some(l) = self.lines.get_mut(line) else {
            return;
        };
        if matches!(l.drop, Some((_, to)) if to <= now) {
            let from = now + (self.dice.between(120, 360) as Nanos) * MINUTE;
            let len = (self.dice.between(4, 6) as Nanos) * 15 * MINUTE;
            l.drop = Some((from, from + len));
            self.stats.yield_drops += 1;
        }
    }

    /// The next message, in simulated time order.
    pub fn next_message(&mut self) -> Message {
        loop {
            if let Some(m) = self.pending.pop_front() {
                self.count(&m);
                return m;
            }
            let Some(Reverse((at, i))) = self.due.pop() else {
                // A fleet without devices: nothing will ever be due.
                return Message {
                    at: Nanos::MAX,
                    topic: String::new(),
                    payload: Vec::new(),
                    kind: Kind::Heartbeat,
                    flaw: Flaw::None,
                };
            };
            self.apply_scripts(at);
            if let Some(Model::Station(s)) = self.devices.get(i).map(|d| &d.model) {
                let line = s.line;
                self.next_line_drop(line, at);
            }
            let config = &self.config;
            let Some(d) = self.devices.get_mut(i) else {
                continue;
            };
            let jitter = d.dice.range(-0.1, 0.1) * d.period as f64;
            self.due
                .push(Reverse((round_ms(at + d.period + jitter as Nanos), i)));
            if at < d.silent_until {
                continue;
            }
            let kind = d.model.kind();
            let may_fall_silent = matches!(kind, Kind::Camera | Kind::Heartbeat);
            if may_fall_silent && at - config.start > 10 * MINUTE && d.dice.chance(config.silence) {
                d.silent_until = at + (d.dice.between(90, 240) as Nanos) * SECOND;
                self.stats.silences += 1;
                continue;
            }
            if let Model::Furnace(_) = d.model
                && d.dice.chance(0.0005)
            {
                start_drift(&mut d.model);
                self.stats.drifts += 1;
            }
            let mut doc = d.model.reading(&mut d.dice, at, &self.lines);
            let (payload, flaw) = if d.dice.chance(config.malformed) {
                let how = Malformation::ALL
                    .get(d.dice.below(Malformation::ALL.len() as u64) as usize)
                    .copied()
                    .unwrap_or(Malformation::Truncated);
                let payload = d
                    .model
                    .spoil(how, &mut doc)
                    .unwrap_or_else(|| doc.to_string().into_bytes());
                (payload, Flaw::Malformed(how))
            } else {
                (doc.to_string().into_bytes(), Flaw::None)
            };
            let late_copy = matches!(kind, Kind::Camera | Kind::Detector | Kind::Heartbeat)
                && at - config.start >= LATE_AFTER
                && d.dice.chance(config.late);
            if late_copy {
                let old = d.model.reading(&mut d.dice, at - LATE_BY, &self.lines);
                self.pending.push_back(Message {
                    at,
                    topic: d.topic.clone(),
                    payload: old.to_string().into_bytes(),
                    kind,
                    flaw: Flaw::Late,
                });
            }
            let m = Message {
                at,
                topic: d.topic.clone(),
                payload,
                kind,
                flaw,
            };
            self.count(&m);
            return m;
        }
    }

    fn count(&mut self, m: &Message) {
        self.stats.messages += 1;
        *self.stats.by_kind.entry(m.kind).or_default() += 1;
        match m.flaw {
            Flaw::None => {}
            Flaw::Late => self.stats.late += 1,
            Flaw::Malformed(how) => *self.stats.malformed.entry(how.as_str()).or_default() += 1,
        }
    }

    /// Every message due up to and including `until`, in order.
    pub fn until(&mut self, until: Nanos) -> Vec<Message> {
        let mut out = Vec::new();
        while self.peek_time() <= until {
            out.push(self.next_message());
        }
        out
    }
}

/// A furnace drift: the temperature climbs on every reading until it is a few degrees past
/// the 850 °C process limit.
fn start_drift(model: &mut Model) {
    if let Model::Furnace(f) = model {
        let readings = 13;
        f.drift_left = readings;
        f.drift_step = ((856.0 - f.temperature) / f64::from(readings)).max(0.5);
    }
}

/// Simulated times are whole milliseconds: every timestamp format the profiles use can
/// carry them exactly.
fn round_ms(t: Nanos) -> Nanos {
    t.div_euclid(1_000_000) * 1_000_000
}
