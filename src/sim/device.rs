//! Device models and their payloads: each builds what its profile in `devices/` decodes
//! (`traffic-camera.toml` with its rhai script, `loop-detector.toml`,
//! `inspection-station.toml`, `furnace.toml`, `heartbeat.toml`), and can spoil a payload on
//! purpose (a [`Malformation`]) to exercise the dead-letter path.

use chrono::{TimeZone as _, Utc};
use serde_json::{Map, Value as Json, json};

use super::rng::Dice;
use super::traffic::{Reading, Traffic};
use crate::event::Nanos;

/// Probability per camera reading (one a second) that a jam starts: a dozen cameras see
/// about one jam every five minutes between them.
pub const CAMERA_JAM_CHANCE: f64 = 0.0003;

/// Probability per loop-detector reading (one every 10 s) that a jam starts.
pub const DETECTOR_JAM_CHANCE: f64 = 0.003;

/// A deliberately broken message, and the dead-letter reason it should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Malformation {
    /// The payload is cut in half: not JSON.
    Truncated,
    /// The timestamp is left out.
    NoTime,
    /// The timestamp is text no format accepts.
    BadTime,
    /// A required number is sent as text.
    WrongType,
}

impl Malformation {
    /// Every kind, for picking one at random.
    pub const ALL: [Malformation; 4] = [
        Malformation::Truncated,
        Malformation::NoTime,
        Malformation::BadTime,
        Malformation::WrongType,
    ];

    /// A short name for counters.
    pub fn as_str(self) -> &'static str {
        match self {
            Malformation::Truncated => "truncated",
            Malformation::NoTime => "no_time",
            Malformation::BadTime => "bad_time",
            Malformation::WrongType => "wrong_type",
        }
    }
}

/// The kind of a device, for counters and for the profile its messages go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// `devices/traffic-camera.toml`
    Camera,
    /// `devices/loop-detector.toml`
    Detector,
    /// `devices/inspection-station.toml`
    Station,
    /// `devices/furnace.toml`
    Furnace,
    /// `devices/heartbeat.toml`
    Heartbeat,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::Camera,
        Kind::Detector,
        Kind::Station,
        Kind::Furnace,
        Kind::Heartbeat,
    ];

    /// The stream its profile declares.
    pub fn stream(self) -> &'static str {
        match self {
            Kind::Camera => "flow",
            Kind::Detector => "detector",
            Kind::Station => "wafer",
            Kind::Furnace => "furnace",
            Kind::Heartbeat => "heartbeat",
        }
    }

    /// The profile name in `devices/`.
    pub fn profile(self) -> &'static str {
        match self {
            Kind::Camera => "traffic-camera",
            Kind::Detector => "loop-detector",
            Kind::Station => "inspection-station",
            Kind::Furnace => "furnace",
            Kind::Heartbeat => "heartbeat",
        }
    }
}

/// A road-side traffic camera: a list of detections per frame window.
#[derive(Debug, Clone)]
pub struct Camera {
    /// The traffic it watches.
    pub traffic: Traffic,
}

/// An inductive loop detector; single loops measure no speed.
#[derive(Debug, Clone)]
pub struct Detector {
    /// The traffic it counts.
    pub traffic: Traffic,
    /// False for a single loop: no speed in its messages.
    pub has_speed: bool,
    /// Counting interval, seconds (for the vehicle count).
    pub interval_s: f64,
}

/// A wafer inspection station on a production line.
#[derive(Debug, Clone)]
pub struct Station {
    /// Index of its line in the fleet.
    pub line: usize,
    /// Station name, for wafer ids.
    pub name: String,
    /// Wafers inspected so far.
    pub wafers: u64,
    /// The lot being inspected.
    pub lot: u64,
}

/// A production line's yield, shared by its stations.
#[derive(Debug, Clone)]
pub struct Line {
    /// Line name (the key of the yield rule).
    pub name: String,
    /// Pass rate in normal running, 0..1.
    pub normal_yield: f64,
    /// Pass rate during a yield drop.
    pub drop_yield: f64,
    /// A yield drop lasts from `.0` to `.1` (simulated time).
    pub drop: Option<(Nanos, Nanos)>,
}

impl Line {
    /// The pass rate at time `t`.
    pub fn pass_rate(&self, t: Nanos) -> f64 {
        match self.drop {
            Some((from, to)) if (from..to).contains(&t) => self.drop_yield,
            _ => self.normal_yield,
        }
    }
}

/// A furnace held at its setpoint by a controller; a drift is a run of rises that ends
/// above the process limit.
#[derive(Debug, Clone)]
pub struct Furnace {
    /// Controller setpoint, °C.
    pub setpoint: f64,
    /// Last temperature sent.
    pub temperature: f64,
    /// Readings left in a drift (0: none).
    pub drift_left: u32,
    /// Rise per drift reading.
    pub drift_step: f64,
}

/// A device that sends heartbeats: mains-powered ones send no battery, old firmware no
/// uptime.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// When the device booted (simulated time).
    pub boot: Nanos,
    /// Battery charge 0..1, `None` for mains power.
    pub battery: Option<f64>,
    /// Whether the firmware reports uptime.
    pub reports_uptime: bool,
}

/// What a device is.
#[derive(Debug, Clone)]
pub enum Model {
    /// A traffic camera.
    Camera(Camera),
    /// A loop detector.
    Detector(Detector),
    /// An inspection station.
    Station(Station),
    /// A furnace controller.
    Furnace(Furnace),
    /// A heartbeat sender.
    Heartbeat(Heartbeat),
}

impl Model {
    /// The kind of device.
    pub fn kind(&self) -> Kind {
        match self {
            Model::Camera(_) => Kind::Camera,
            Model::Detector(_) => Kind::Detector,
            Model::Station(_) => Kind::Station,
            Model::Furnace(_) => Kind::Furnace,
            Model::Heartbeat(_) => Kind::Heartbeat,
        }
    }

    /// The name of the payload member that carries the time.
    fn time_member(&self) -> &'static str {
        match self {
            Model::Station(_) => "time",
            _ => "ts",
        }
    }

    /// A member of the payload with a typed value to replace for
    /// [`Malformation::WrongType`], and the value.
    fn mistyped(&self) -> (&'static str, Json) {
        match self {
            Model::Camera(_) => ("occupancy", json!("n/a")),
            Model::Detector(_) => ("flow", json!("n/a")),
            Model::Station(_) => ("result", json!({"pass": "yes", "thickness_um": 725.0})),
            Model::Furnace(_) => ("temp_c", json!("812.4 C")),
            Model::Heartbeat(_) => ("uptime_s", json!("n/a")),
        }
    }

    /// The next reading at time `t`, as the payload document.
    pub fn reading(&mut self, dice: &mut Dice, t: Nanos, lines: &[Line]) -> Json {
        match self {
            Model::Camera(c) => {
                let r = c.traffic.step(dice, CAMERA_JAM_CHANCE);
                camera_payload(dice, t, r)
            }
            Model::Detector(d) => {
                let r = d.traffic.step(dice, DETECTOR_JAM_CHANCE);
                let vehicles_per_s = if r.episode { 0.25 } else { 0.6 };
                let flow = dice
                    .normal(vehicles_per_s * d.interval_s, 2.0)
                    .max(0.0)
                    .round() as i64;
                let mut m = Map::new();
                m.insert("ts".into(), json!(t.div_euclid(1_000_000)));
                m.insert("flow".into(), json!(flow));
                m.insert("occupancy".into(), json!(round(r.occupancy / 100.0, 2)));
                if d.has_speed {
                    m.insert("speed".into(), json!(round(r.speed, 1)));
                }
                Json::Object(m)
            }
            Model::Station(s) => {
                s.wafers += 1;
                if s.wafers % 25 == 1 {
                    s.lot += 1;
                }
                let rate = lines.get(s.line).map_or(0.95, |l| l.pass_rate(t));
                let pass = dice.chance(rate);
                let thickness = if pass {
                    dice.normal(725.0, 2.0)
                } else {
                    dice.normal(725.0, 9.0)
                };
                let local = Utc
                    .timestamp_nanos(t)
                    .with_timezone(&chrono_tz::Europe::Berlin)
                    .format("%Y-%m-%d %H:%M:%S%.3f")
                    .to_string();
                let mut m = Map::new();
                m.insert("time".into(), json!(local));
                m.insert("wafer".into(), json!(format!("W-{}-{}", s.name, s.wafers)));
                // Rework wafers travel without a lot.
                if !dice.chance(0.02) {
                    m.insert("lot".into(), json!(format!("L-{}", s.lot)));
                }
                m.insert(
                    "result".into(),
                    json!({"pass": pass, "thickness_um": round(thickness, 1)}),
                );
                Json::Object(m)
            }
            Model::Furnace(f) => {
                if f.drift_left > 0 {
                    f.drift_left -= 1;
                    f.temperature += f.drift_step + dice.range(0.0, 0.6);
                } else {
                    // The controller pulls back towards the setpoint; the sign of each step
                    // is nearly a coin toss, so ten rises in a row are rare.
                    let pull = (f.setpoint - f.temperature) * 0.3;
                    f.temperature += pull + dice.normal(0.0, 1.2);
                }
                json!({
                    "ts": epoch_s(t),
                    "temp_c": round(f.temperature, 1),
                    "pressure_kpa": round(dice.normal(101.3, 0.4), 1),
                })
            }
            Model::Heartbeat(h) => {
                let mut m = Map::new();
                m.insert("ts".into(), json!(rfc3339_ms(t)));
                if h.reports_uptime {
                    m.insert(
                        "uptime_s".into(),
                        json!((t - h.boot).max(0) / 1_000_000_000),
                    );
                }
                if let Some(b) = h.battery.as_mut() {
                    *b = (*b - dice.range(0.0, 0.0005)).max(0.05);
                    m.insert("battery".into(), json!(round(*b, 3)));
                }
                Json::Object(m)
            }
        }
    }

    /// Spoils a payload as `how` says.
    pub fn spoil(&self, how: Malformation, doc: &mut Json) -> Option<Vec<u8>> {
        let time = self.time_member();
        let Json::Object(m) = doc else {
            return None;
        };
        match how {
            Malformation::Truncated => {
                let text = doc.to_string();
                return Some(text.as_bytes()[..text.len() / 2].to_vec());
            }
            Malformation::NoTime => {
                m.shift_remove(time);
            }
            Malformation::BadTime => {
                m.insert(time.into(), json!("yesterday, around noon"));
            }
            Malformation::WrongType => {
                let (member, value) = self.mistyped();
                m.insert(member.into(), value);
            }
        }
        None
    }
}

/// A camera frame window for `r`: detections whose mean speed is about `r.speed`.
fn camera_payload(dice: &mut Dice, t: Nanos, r: Reading) -> Json {
    let vehicles = if r.episode {
        dice.between(3, 9)
    } else if dice.chance(0.03) {
        0
    } else {
        dice.between(1, 7)
    };
    let mut detections = Vec::with_capacity(vehicles as usize);
    let mut timed = 0;
    for _ in 0..vehicles {
        let class = match dice.below(100) {
            0..80 => "car",
            80..90 => "truck",
            90..94 => "bus",
            94..98 => "bike",
            _ => "van",
        };
        let speed = (r.speed + dice.normal(0.0, 2.0)).max(1.0);
        // Now and then the tracker loses a vehicle before it can time it.
        if dice.chance(0.03) {
            detections.push(json!({ "class": class }));
        } else {
            timed += 1;
            detections.push(json!({ "class": class, "speed_kmh": round(speed, 1) }));
        }
    }
    let mut m = Map::new();
    m.insert("ts".into(), json!(rfc3339_ms(t)));
    m.insert("occupancy".into(), json!(round(r.occupancy, 1)));
    m.insert("detections".into(), Json::Array(detections));
    if timed == 0 {
        // Nothing timed in this window (an empty road, or vehicles the tracker lost): the
        // camera sends its own estimate, which the decoder falls back to.
        m.insert("speed".into(), json!(round(r.speed, 1)));
    }
    Json::Object(m)
}

/// `x` rounded to `digits` decimals.
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// RFC 3339 in UTC with milliseconds: `2024-03-01T08:00:00.250Z`.
pub fn rfc3339_ms(t: Nanos) -> String {
    Utc.timestamp_nanos(t)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

/// Seconds since the epoch with milliseconds, as a JSON number: `1709280000.25`.
pub fn epoch_s(t: Nanos) -> Json {
    let ms = t.div_euclid(1_000_000);
    let text = format!("{}.{:03}", ms.div_euclid(1000), ms.rem_euclid(1000));
    serde_json::from_str(&text).unwrap_or(Json::Null)
}
