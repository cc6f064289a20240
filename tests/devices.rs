//! Device profiles: the shipped `devices/` load cleanly and decode realistic payloads (real
//! lines from the replay data for the data profiles); broken profiles give the diagnostics
//! snapshotted beside them in `tests/fixtures/devices/err/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use tern::devices::{self, DecodeError, Profile};
use tern::event::{Event, Value};
use tern::lang::codes::Code;
use tern::lang::render;
use tern::lang::source::Sources;

const S: i64 = 1_000_000_000;

fn shipped() -> Vec<Profile> {
    let mut sources = Sources::new();
    let (profiles, diagnostics) = devices::load_dir(Path::new("devices"), &mut sources);
    assert!(
        diagnostics.is_empty(),
        "{}",
        render::to_text(&sources, &diagnostics)
    );
    profiles
}

fn by_stream<'p>(profiles: &'p [Profile], stream: &str) -> &'p Profile {
    profiles
        .iter()
        .find(|p| p.stream_name == stream)
        .unwrap_or_else(|| panic!("no profile for stream {stream}"))
}

/// Field name to value, to assert on decoded events by name.
fn field(p: &Profile, e: &Event, name: &str) -> Value {
    let i = p
        .schema()
        .field_index(name)
        .unwrap_or_else(|| panic!("{} has no field {name}", p.stream_name));
    e.value(i)
}

fn rfc3339(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap()
        .timestamp_nanos_opt()
        .unwrap()
}

fn str(s: &str) -> Value {
    Value::Str(s.into())
}

#[test]
fn shipped_profiles_load_in_file_order() {
    let profiles = shipped();
    let streams: Vec<_> = profiles.iter().map(|p| p.stream_name.as_str()).collect();
    assert_eq!(
        streams,
        [
            "engine",
            "furnace",
            "heartbeat",
            "wafer",
            "detector",
            "metr_speed",
            "machine_temp",
            "nab_traffic",
            "secom",
            "flow",
        ]
    );
    for (i, p) in profiles.iter().enumerate() {
        assert_eq!(p.stream_index() as usize, i);
        let s = p.schema();
        assert_eq!(s.name, p.stream_name);
        assert_eq!(s.default_key.len(), 1, "{} has one key field", p.name);
    }
}

#[test]
fn shipped_schemas_are_what_rules_expect() {
    let profiles = shipped();
    let expect = |stream: &str, fields: &[&str], key: &str, lateness: i64, idle: i64| {
        let p = by_stream(&profiles, stream);
        let s = p.schema();
        let described: Vec<String> = s
            .fields
            .iter()
            .map(|f| {
                format!(
                    "{}: {}{}",
                    f.name,
                    f.ty.base.as_str(),
                    if f.ty.nullable { "?" } else { "" }
                )
            })
            .collect();
        assert_eq!(described, fields, "fields of {stream}");
        assert_eq!(s.fields[s.default_key[0]].name, key, "key of {stream}");
        assert_eq!(s.fields[s.time_field].name, "ts", "time of {stream}");
        assert_eq!((s.lateness, s.idle), (lateness, idle), "times of {stream}");
    };
    expect(
        "flow",
        &[
            "district: string",
            "camera_id: string",
            "ts: timestamp",
            "speed: float",
            "occupancy: float",
            "cars: int",
            "trucks: int",
            "buses: int",
            "bikes: int",
        ],
        "camera_id",
        5 * S,
        60 * S,
    );
    expect(
        "detector",
        &[
            "district: string",
            "detector_id: string",
            "ts: timestamp",
            "flow: int",
            "occupancy: float",
            "speed: float?",
        ],
        "detector_id",
        10 * S,
        120 * S,
    );
    expect(
        "wafer",
        &[
            "line: string",
            "station: string",
            "ts: timestamp",
            "wafer_id: string",
            "lot: string?",
            "pass: bool",
            "thickness: float",
        ],
        "line",
        30 * S,
        600 * S,
    );
    expect(
        "furnace",
        &[
            "site: string",
            "furnace_id: string",
            "ts: timestamp",
            "temperature: float",
            "pressure: float",
        ],
        "furnace_id",
        5 * S,
        60 * S,
    );
    expect(
        "heartbeat",
        &[
            "device_id: string",
            "ts: timestamp",
            "uptime: int?",
            "battery: float?",
        ],
        "device_id",
        2 * S,
        30 * S,
    );
    let data = |stream: &str, fields: &[&str]| {
        let p = by_stream(&profiles, stream);
        let names: Vec<_> = p.schema().field_names().collect();
        assert_eq!(names, fields, "fields of {stream}");
        assert_eq!(p.schema().fields[p.schema().default_key[0]].name, "device");
    };
    data("metr_speed", &["device", "ts", "speed"]);
    data("machine_temp", &["device", "ts", "temperature"]);
    data(
        "nab_traffic",
        &[
            "device",
            "station",
            "ts",
            "speed",
            "occupancy",
            "travel_time",
        ],
    );
    data(
        "secom",
        &[
            "device",
            "ts",
            "lot",
            "pass_fail",
            "fail",
            "f0",
            "f2",
            "f3",
            "f6",
            "f7",
        ],
    );
    data(
        "engine",
        &[
            "device", "ts", "cycle", "s2", "s3", "s4", "s7", "s11", "s12", "s15", "s17", "s20",
            "s21",
        ],
    );
}

#[test]
fn traffic_camera_summarises_detections() {
    let profiles = shipped();
    let p = by_stream(&profiles, "flow");
    assert_eq!(p.subscription_filter(), "city/+/camera/+/flow");
    let topic = "city/north/camera/cam-17/flow";
    let e = p
        .decode(
            topic,
            br#"{"ts": "2024-03-01T08:00:00.250Z", "occupancy": 12.5,
                 "detections": [{"class": "car", "speed_kmh": 31.2}, {"class": "car", "speed_kmh": 28},
                                {"class": "bus", "speed_kmh": 20.8}, {"class": "truck"},
                                {"class": "bike", "speed_kmh": 16.0}, {"class": "scooter", "speed_kmh": 24.0}]}"#,
            false,
        )
        .unwrap();
    assert_eq!(e.time(), rfc3339("2024-03-01T08:00:00.250Z"));
    assert_eq!(field(p, &e, "district"), str("north"));
    assert_eq!(field(p, &e, "camera_id"), str("cam-17"));
    let Value::Float(speed) = field(p, &e, "speed") else {
        panic!("speed is a float")
    };
    assert!(
        (speed - 24.0).abs() < 1e-9,
        "mean of the timed detections: {speed}"
    );
    assert_eq!(field(p, &e, "occupancy"), Value::Float(12.5));
    assert_eq!(field(p, &e, "cars"), Value::Int(2));
    assert_eq!(field(p, &e, "trucks"), Value::Int(1));
    assert_eq!(field(p, &e, "buses"), Value::Int(1));
    assert_eq!(field(p, &e, "bikes"), Value::Int(1));

    // No detections: the payload's own speed, else missing_field.
    let e = p
        .decode(
            topic,
            br#"{"ts": "2024-03-01T08:00:01Z", "occupancy": 0, "detections": [], "speed": 50}"#,
            false,
        )
        .unwrap();
    assert_eq!(field(p, &e, "speed"), Value::Float(50.0));
    assert_eq!(field(p, &e, "cars"), Value::Int(0));
    let err = p
        .decode(
            topic,
            br#"{"ts": "2024-03-01T08:00:01Z", "occupancy": 0, "detections": []}"#,
            false,
        )
        .unwrap_err();
    assert_eq!(err.reason(), "missing_field");
    assert_eq!(
        err.to_string(),
        "field `speed` is missing: nothing at `speed` in the decoder's result"
    );
    // A payload that is not an object fails inside the script.
    let err = p.decode(topic, b"[1, 2]", false).unwrap_err();
    assert_eq!(err.reason(), "script_error");
    assert_eq!(
        p.decode(topic, b"{", false).unwrap_err().reason(),
        "invalid_json"
    );
}

#[test]
fn loop_detector_furnace_heartbeat_and_wafer_decode() {
    let profiles = shipped();
    let p = by_stream(&profiles, "detector");
    let e = p
        .decode(
            "city/south/loop/L-4",
            br#"{"ts": 1709280000000, "flow": 12, "occupancy": 0.18, "speed": 54.0}"#,
            false,
        )
        .unwrap();
    assert_eq!(e.time(), 1_709_280_000 * S);
    assert_eq!(field(p, &e, "detector_id"), str("L-4"));
    assert_eq!(field(p, &e, "flow"), Value::Int(12));
    let e = p
        .decode(
            "city/south/loop/L-4",
            br#"{"ts": 1709280000000, "flow": 12, "occupancy": 0.18}"#,
            false,
        )
        .unwrap();
    assert_eq!(field(p, &e, "speed"), Value::Null);
    let err = p
        .decode(
            "city/south/loop/L-4",
            br#"{"ts": 1709280000000, "flow": 12.5, "occupancy": 0.18}"#,
            false,
        )
        .unwrap_err();
    assert_eq!(err.reason(), "wrong_type");

    let p = by_stream(&profiles, "furnace");
    let e = p
        .decode(
            "plant/essen/furnace/F2/telemetry",
            br#"{"ts": 1709280000.25, "temp_c": 812.4, "pressure_kpa": 101.2}"#,
            false,
        )
        .unwrap();
    assert_eq!(e.time(), 1_709_280_000 * S + S / 4);
    assert_eq!(field(p, &e, "temperature"), Value::Float(812.4));
    assert_eq!(field(p, &e, "pressure"), Value::Float(101.2));
    assert_eq!(field(p, &e, "site"), str("essen"));

    let p = by_stream(&profiles, "heartbeat");
    let e = p
        .decode(
            "devices/gw-3/heartbeat",
            br#"{"ts": "2024-03-01T08:00:00Z", "uptime_s": 123, "battery": 0.87}"#,
            false,
        )
        .unwrap();
    assert_eq!(field(p, &e, "uptime"), Value::Int(123));
    assert_eq!(field(p, &e, "battery"), Value::Float(0.87));
    let e = p
        .decode(
            "devices/gw-3/heartbeat",
            br#"{"ts": "2024-03-01T08:00:00Z"}"#,
            false,
        )
        .unwrap();
    assert_eq!(field(p, &e, "uptime"), Value::Null);
    assert_eq!(field(p, &e, "battery"), Value::Null);
    // A retained heartbeat is the broker's memory of an old one, not a sign of life.
    let err = p
        .decode(
            "devices/gw-3/heartbeat",
            br#"{"ts": "2024-03-01T08:00:00Z"}"#,
            true,
        )
        .unwrap_err();
    assert_eq!(err, DecodeError::RetainedIgnored);

    let p = by_stream(&profiles, "wafer");
    let e = p
        .decode(
            "fab/L1/station/S7/inspection",
            br#"{"time": "2024-03-01 08:00:00.123", "wafer": "W-1", "lot": "L-7",
                 "result": {"pass": true, "thickness_um": 725.1}}"#,
            false,
        )
        .unwrap();
    // Berlin is UTC+1 in March.
    assert_eq!(e.time(), rfc3339("2024-03-01T07:00:00.123Z"));
    assert_eq!(field(p, &e, "line"), str("L1"));
    assert_eq!(field(p, &e, "station"), str("S7"));
    assert_eq!(field(p, &e, "wafer_id"), str("W-1"));
    assert_eq!(field(p, &e, "lot"), str("L-7"));
    assert_eq!(field(p, &e, "pass"), Value::Bool(true));
    assert_eq!(field(p, &e, "thickness"), Value::Float(725.1));
    let err = p
        .decode(
            "fab/L1/station/S7/inspection",
            br#"{"time": "2024-03-01T08:00:00Z", "wafer": "W-1", "result": {"pass": true, "thickness_um": 1}}"#,
            false,
        )
        .unwrap_err();
    assert_eq!(err.reason(), "bad_timestamp");
    assert_eq!(
        err.to_string(),
        "field `ts`: string \"2024-03-01T08:00:00Z\" is not a time in the format `%Y-%m-%d %H:%M:%S%.f`"
    );
}

/// Real lines from /work/shared/data, published on the topic their profile subscribes to.
#[test]
fn data_profiles_decode_real_lines() {
    let profiles = shipped();
    let decode = |stream: &str, topic: &str, line: &str| {
        let p = by_stream(&profiles, stream);
        let (i, _) = devices::route(&profiles, topic).unwrap();
        assert_eq!(
            profiles[i].stream_name, stream,
            "{topic} routes to {stream}"
        );
        let e = p
            .decode(topic, line.as_bytes(), false)
            .unwrap_or_else(|e| panic!("{stream}: {e}"));
        (p, e)
    };

    let (p, e) = decode(
        "metr_speed",
        "metr/760987/speed",
        r#"{"device":"760987","ts":"2012-03-01T08:00:00Z","speed":64.375}"#,
    );
    assert_eq!(e.time(), rfc3339("2012-03-01T08:00:00Z"));
    assert_eq!(field(p, &e, "device"), str("760987"));
    assert_eq!(field(p, &e, "speed"), Value::Float(64.375));

    let (p, e) = decode(
        "machine_temp",
        "nab/machine_temperature_system_failure/temperature",
        r#"{"device":"machine_temperature_system_failure","ts":"2013-12-02T21:15:00Z","temperature":73.96732207}"#,
    );
    assert_eq!(field(p, &e, "temperature"), Value::Float(73.96732207));

    let (p, e) = decode(
        "nab_traffic",
        "nab/speed_6005/traffic",
        r#"{"device":"speed_6005","ts":"2015-08-31T18:22:00Z","station":"6005","speed":90}"#,
    );
    assert_eq!(field(p, &e, "station"), str("6005"));
    assert_eq!(field(p, &e, "speed"), Value::Float(90.0));
    assert_eq!(field(p, &e, "occupancy"), Value::Null);
    assert_eq!(field(p, &e, "travel_time"), Value::Null);
    let (p, e) = decode(
        "nab_traffic",
        "nab/TravelTime_387/traffic",
        r#"{"device":"TravelTime_387","ts":"2015-07-10T14:24:00Z","station":"387","travel_time":564}"#,
    );
    assert_eq!(field(p, &e, "travel_time"), Value::Float(564.0));

    let secom = std::fs::read_to_string("tests/fixtures/devices/data/secom-lot-20.json").unwrap();
    let (p, e) = decode("secom", "secom/secom_line/lot", secom.trim());
    assert_eq!(e.time(), rfc3339("2008-07-22T15:30:00Z"));
    assert_eq!(field(p, &e, "lot"), Value::Int(20));
    assert_eq!(field(p, &e, "pass_fail"), Value::Int(-1));
    assert_eq!(field(p, &e, "fail"), Value::Bool(false));
    assert_eq!(field(p, &e, "f0"), Value::Float(2987.32));
    assert_eq!(field(p, &e, "f2"), Value::Null);
    assert_eq!(field(p, &e, "f7"), Value::Float(0.1195));

    let (p, e) = decode(
        "engine",
        "cmapss/engine_100/cycle",
        r#"{"device":"engine_100","ts":"2000-01-01T04:00:00Z","cycle":5,"op_setting_1":-0.0018,"op_setting_2":0.0003,"op_setting_3":100.0,"s1":518.67,"s2":641.9,"s3":1590.02,"s4":1400.6,"s5":14.62,"s6":21.61,"s7":553.6,"s8":2388.07,"s9":9061.86,"s10":1.3,"s11":47.4,"s12":522.04,"s13":2388.09,"s14":8141.82,"s15":8.365,"s16":0.03,"s17":392,"s18":2388,"s19":100.0,"s20":39.06,"s21":23.2351}"#,
    );
    assert_eq!(field(p, &e, "cycle"), Value::Int(5));
    assert_eq!(field(p, &e, "s17"), Value::Float(392.0));
    assert_eq!(field(p, &e, "s21"), Value::Float(23.2351));
}

#[test]
fn no_two_shipped_templates_claim_the_same_topic() {
    let profiles = shipped();
    // One sample topic per profile; each must route to its own profile only.
    for (i, p) in profiles.iter().enumerate() {
        let topic: String = p
            .subscription_filter()
            .split('/')
            .map(|l| if l == "+" { "x" } else { l })
            .collect::<Vec<_>>()
            .join("/");
        let claims: Vec<_> = profiles
            .iter()
            .filter(|q| q.matches(&topic).is_some())
            .map(|q| q.name.as_str())
            .collect();
        assert_eq!(claims, [profiles[i].name.as_str()], "{topic}");
    }
}

fn fixtures(dir: &str, ext: &str) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == ext))
        .collect();
    files.sort();
    files
}

fn snapshot_settings() -> insta::Settings {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("fixtures/devices/err");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings
}

/// Each `err/*.toml` must fail to load; its rendered diagnostics are the snapshot.
#[test]
fn broken_profiles_render_their_diagnostics() {
    let files = fixtures("tests/fixtures/devices/err", "toml");
    assert!(files.len() >= 10, "fixtures found: {files:?}");
    for path in files {
        let mut sources = Sources::new();
        let (profile, diagnostics) = devices::load_file(&path, &mut sources);
        assert!(profile.is_none(), "{} loaded", path.display());
        assert!(!diagnostics.is_empty(), "{}", path.display());
        assert!(
            diagnostics
                .iter()
                .all(|d| d.code.as_str().starts_with("E4")),
            "{}",
            path.display()
        );
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        snapshot_settings().bind(|| {
            insta::assert_snapshot!(name, render::to_text(&sources, &diagnostics));
        });
    }
}

#[test]
fn duplicate_streams_across_profiles() {
    let mut sources = Sources::new();
    let (profiles, diagnostics) =
        devices::load_dir(Path::new("tests/fixtures/devices/dup"), &mut sources);
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0].name, "a");
    assert_eq!(diagnostics.len(), 1);
    assert_eq!(diagnostics[0].code, Code::E403);
    snapshot_settings().bind(|| {
        insta::assert_snapshot!("duplicate_stream", render::to_text(&sources, &diagnostics));
    });
}

#[test]
fn missing_directory_is_empty() {
    let mut sources = Sources::new();
    let (profiles, diagnostics) =
        devices::load_dir(Path::new("tests/fixtures/devices/nowhere"), &mut sources);
    assert!(profiles.is_empty() && diagnostics.is_empty());
}
