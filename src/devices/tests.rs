#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::lang::ast::TypeName;
use crate::lang::codes::Code;
use crate::lang::source::Sources;

const S: i64 = 1_000_000_000;

fn load(text: &str) -> (Option<Profile>, Vec<crate::lang::Diagnostic>, Sources) {
    let mut sources = Sources::new();
    let file = sources.add("test.toml", text);
    let (p, d) = load_source(file, &mut sources, "test", None);
    (p, d, sources)
}

fn profile(text: &str) -> Profile {
    let (p, d, sources) = load(text);
    assert!(
        d.is_empty(),
        "{}",
        crate::lang::render::to_text(&sources, &d)
    );
    p.unwrap()
}

/// The code and the spanned text of each diagnostic.
fn errors(text: &str) -> Vec<(Code, String, String)> {
    let (p, d, _) = load(text);
    assert!(p.is_none(), "expected no profile");
    d.iter()
        .map(|d| {
            let span = d.primary().unwrap().span;
            (d.code, d.message.clone(), text[span.range()].to_owned())
        })
        .collect()
}

const CAMERA_FLAT: &str = r#"
stream = "flow"
topic = "city/{district}/camera/{camera_id}/flow"
time = "ts"
key = "camera_id"
lateness = "5s"
idle = "1m"

[fields]
ts = { type = "timestamp" }
speed = { type = "float", path = "avg.speed", unit = "km/h" }
cars = "int"
lane = "string?"
ok = { type = "bool", optional = true }
"#;

#[test]
fn schema_lists_captures_then_fields_in_file_order() {
    let p = profile(CAMERA_FLAT);
    let s = p.schema();
    assert_eq!(s.name, "flow");
    assert_eq!(p.name, "test");
    let names: Vec<_> = s.field_names().collect();
    assert_eq!(
        names,
        ["district", "camera_id", "ts", "speed", "cars", "lane", "ok"]
    );
    assert_eq!(s.time_field, 2);
    assert_eq!(s.default_key, vec![1]);
    assert_eq!(s.lateness, 5 * S);
    assert_eq!(s.idle, 60 * S);
    assert_eq!(s.fields[3].ty.base, TypeName::Float);
    assert!(!s.fields[3].ty.nullable);
    assert!(s.fields[5].ty.nullable && s.fields[6].ty.nullable);
    assert_eq!(
        s.kind,
        crate::compile::schema::StreamKind::Device {
            profile: "test".into()
        }
    );
    // Origins point at the stream name and at each field's definition.
    let text = CAMERA_FLAT;
    assert_eq!(&text[s.origin.span.range()], "\"flow\"");
    assert_eq!(&text[s.fields[0].origin.span.range()], "{district}");
    assert_eq!(&text[s.fields[1].origin.span.range()], "{camera_id}");
    assert_eq!(&text[s.fields[4].origin.span.range()], "cars = \"int\"");
    assert_eq!(
        &text[s.fields[3].origin.span.range()],
        "speed = { type = \"float\", path = \"avg.speed\", unit = \"km/h\" }"
    );
    assert_eq!(p.subscription_filter(), "city/+/camera/+/flow");
    assert_eq!(p.fields[3].unit.as_deref(), Some("km/h"));
}

fn decode(p: &Profile, payload: &str) -> Result<Event, DecodeError> {
    p.decode("city/north/camera/cam-1/flow", payload.as_bytes(), false)
}

#[test]
fn decodes_a_good_payload_in_schema_order() {
    let p = profile(CAMERA_FLAT);
    let e = decode(
        &p,
        r#"{"ts": "2024-03-01T08:00:00Z", "avg": {"speed": 31}, "cars": 4, "lane": "2", "ok": true, "extra": [1]}"#,
    )
    .unwrap();
    let t = 1_709_280_000 * S;
    assert_eq!(e.time(), t);
    assert_eq!(
        e.to_values(),
        &[
            Value::Str("north".into()),
            Value::Str("cam-1".into()),
            Value::Timestamp(t),
            Value::Float(31.0),
            Value::Int(4),
            Value::Str("2".into()),
            Value::Bool(true),
        ]
    );
}

#[test]
fn optional_fields_missing_or_null_are_null() {
    let p = profile(CAMERA_FLAT);
    let e = decode(
        &p,
        r#"{"ts": "2024-03-01T08:00:00Z", "avg": {"speed": 31.5}, "cars": 4, "lane": null}"#,
    )
    .unwrap();
    assert_eq!(e.to_values()[5], Value::Null);
    assert_eq!(e.to_values()[6], Value::Null);
}

#[test]
fn required_fields_must_be_there() {
    let p = profile(CAMERA_FLAT);
    let e = decode(
        &p,
        r#"{"ts": "2024-03-01T08:00:00Z", "avg": {}, "cars": 4}"#,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "missing_field");
    assert_eq!(
        e.to_string(),
        "field `speed` is missing: nothing at `avg.speed`"
    );
    let e = decode(
        &p,
        r#"{"ts": "2024-03-01T08:00:00Z", "avg": {"speed": 1}, "cars": null}"#,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "missing_field");
    assert!(e.to_string().contains("`cars`"));
}

#[test]
fn wrong_types_are_named() {
    let p = profile(CAMERA_FLAT);
    let e = decode(
        &p,
        r#"{"ts": "2024-03-01T08:00:00Z", "avg": {"speed": "fast"}, "cars": 4}"#,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "wrong_type");
    assert_eq!(
        e.to_string(),
        "field `speed`: expected float, found string \"fast\""
    );
    let e = decode(
        &p,
        r#"{"ts": "2024-03-01T08:00:00Z", "avg": {"speed": 1}, "cars": 3.0}"#,
    )
    .unwrap_err();
    assert_eq!(e.reason(), "wrong_type");
    assert!(e.to_string().contains("found float 3.0"), "{e}");
    let e = decode(&p, r#"{"ts": 5, "avg": {"speed": 1}, "cars": 3}"#).unwrap_err();
    assert_eq!(e.reason(), "wrong_type");
    assert!(e.to_string().contains("timestamp as a string"), "{e}");
}

#[test]
fn invalid_json_retained_and_topic() {
    let p = profile(CAMERA_FLAT);
    let e = decode(&p, r#"{"ts": "#).unwrap_err();
    assert_eq!(e.reason(), "invalid_json");
    assert!(
        e.to_string().starts_with("payload is not valid JSON: "),
        "{e}"
    );
    let good = br#"{"ts": "2024-03-01T08:00:00Z", "avg": {"speed": 1}, "cars": 3}"#;
    let e = p
        .decode("city/north/camera/cam-1/flow", good, true)
        .unwrap_err();
    assert_eq!(e.reason(), "retained_ignored");
    let e = p
        .decode("city/north/loop/cam-1/flow", good, false)
        .unwrap_err();
    assert_eq!(e.reason(), "topic_mismatch");
    assert_eq!(
        e.to_string(),
        "topic `city/north/loop/cam-1/flow` does not match `city/{district}/camera/{camera_id}/flow`"
    );
    let accepting =
        profile(&CAMERA_FLAT.replace("idle = \"1m\"", "idle = \"1m\"\nretained = \"accept\""));
    assert!(accepting.decode("city/n/camera/c/flow", good, true).is_ok());
}

fn time_profile(format: &str) -> Profile {
    profile(&format!(
        "stream = \"s\"\ntopic = \"t\"\ntime = \"ts\"\n[fields]\nts = {{ type = \"timestamp\", {format} }}\n"
    ))
}

fn time_of(p: &Profile, ts: &str) -> Result<i64, DecodeError> {
    p.decode("t", format!(r#"{{"ts": {ts}}}"#).as_bytes(), false)
        .map(|e| e.time())
}

#[test]
fn every_timestamp_format_decodes_and_rejects() {
    let p = time_profile(r#"format = "rfc3339""#);
    assert_eq!(
        time_of(&p, r#""1970-01-01T00:00:01.5+00:00""#),
        Ok(S + S / 2)
    );
    let e = time_of(&p, r#""1970-01-01 00:00:01""#).unwrap_err();
    assert_eq!(e.reason(), "bad_timestamp");
    assert_eq!(
        e.to_string(),
        "field `ts`: string \"1970-01-01 00:00:01\" is not an RFC 3339 timestamp"
    );

    let p = time_profile(r#"format = "epoch_s""#);
    assert_eq!(time_of(&p, "1.25"), Ok(S + S / 4));
    assert_eq!(time_of(&p, "2"), Ok(2 * S));
    assert_eq!(time_of(&p, "1e300").unwrap_err().reason(), "bad_timestamp");
    assert_eq!(time_of(&p, r#""2""#).unwrap_err().reason(), "wrong_type");

    let p = time_profile(r#"format = "epoch_ms""#);
    assert_eq!(time_of(&p, "1500"), Ok(S + S / 2));
    assert_eq!(
        time_of(&p, "9223372036854775807").unwrap_err().reason(),
        "bad_timestamp"
    );

    let p = time_profile(r#"format = "epoch_us""#);
    assert_eq!(time_of(&p, "1000001"), Ok(S + 1000));
    assert_eq!(
        time_of(&p, "9223372036854775807").unwrap_err().reason(),
        "bad_timestamp"
    );
    let p = time_profile(r#"format = "epoch_ns""#);
    assert_eq!(time_of(&p, "7"), Ok(7));
    assert_eq!(time_of(&p, "-7"), Ok(-7));
    let e = time_of(&p, "1e19").unwrap_err();
    assert_eq!(e.reason(), "bad_timestamp");
    assert_eq!(
        e.to_string(),
        "field `ts`: float 1e+19 is not a valid epoch_ns timestamp (nanoseconds since 1970, years 1677 to 2262)"
    );

    let p = time_profile(r#"format = "%d/%m/%Y %H:%M:%S", timezone = "+01:00""#);
    assert_eq!(time_of(&p, r#""01/01/1970 01:00:03""#), Ok(3 * S));
    let e = time_of(&p, r#""1970-01-01 01:00:03""#).unwrap_err();
    assert_eq!(e.reason(), "bad_timestamp");
    assert!(e.to_string().contains("format `%d/%m/%Y %H:%M:%S`"), "{e}");
}

#[test]
fn duration_fields() {
    let p = profile(
        "stream = \"s\"\ntopic = \"t\"\ntime = \"ts\"\n[fields]\nts = \"timestamp\"\nup = \"duration\"\nwait = { type = \"duration\", format = \"ms\" }\n",
    );
    let e = p
        .decode(
            "t",
            br#"{"ts": "1970-01-01T00:00:00Z", "up": "1h30m", "wait": 250}"#,
            false,
        )
        .unwrap();
    assert_eq!(e.to_values()[1], Value::Duration(5400 * S));
    assert_eq!(e.to_values()[2], Value::Duration(S / 4));
}

#[test]
fn captures_can_be_typed_and_renamed() {
    let p = profile(
        r#"
stream = "s"
topic = "site/{site}/unit/{unit}/{rest*}"
time = "ts"
key = ["site", "unit_no"]
[fields]
unit_no = { type = "int", capture = "unit" }
ts = "timestamp"
"#,
    );
    let names: Vec<_> = p.schema().field_names().collect();
    // `unit` is read by `unit_no`, so it is no field of its own; `rest` is.
    assert_eq!(names, ["site", "rest", "unit_no", "ts"]);
    assert_eq!(p.schema().default_key, vec![0, 2]);
    let e = p
        .decode(
            "site/a/unit/7/x/y",
            br#"{"ts": "1970-01-01T00:00:00Z"}"#,
            false,
        )
        .unwrap();
    assert_eq!(e.to_values()[1], Value::Str("x/y".into()));
    assert_eq!(e.to_values()[2], Value::Int(7));
    let e = p
        .decode(
            "site/a/unit/seven/x",
            br#"{"ts": "1970-01-01T00:00:00Z"}"#,
            false,
        )
        .unwrap_err();
    assert_eq!(e.reason(), "wrong_type");
    assert!(e.to_string().contains("topic level \"seven\""), "{e}");
}

const SCRIPTED: &str = r#"
stream = "s"
topic = "dev/{id}"
time = "ts"
script_source = '''
let n = 0;
for x in payload.values { n += x; }
#{ ts: payload.ts, total: n, id_len: captures.id.len() }
'''
[fields]
ts = "timestamp"
total = "int"
id_len = "int"
"#;

#[test]
fn inline_script_decodes() {
    let p = profile(SCRIPTED);
    assert!(p.is_script());
    let e = p
        .decode(
            "dev/abc",
            br#"{"ts": "1970-01-01T00:00:00Z", "values": [1, 2, 3]}"#,
            false,
        )
        .unwrap();
    assert_eq!(&e.to_values()[2..], &[Value::Int(6), Value::Int(3)]);
    let e = p
        .decode(
            "dev/abc",
            br#"{"ts": "1970-01-01T00:00:00Z", "values": [1.5]}"#,
            false,
        )
        .unwrap_err();
    // The script's result is type-checked like a payload.
    assert_eq!(e.reason(), "wrong_type");
    let e = p
        .decode("dev/abc", br#"{"values": []}"#, false)
        .unwrap_err();
    assert_eq!(e.reason(), "missing_field");
    assert!(e.to_string().ends_with("in the decoder's result"), "{e}");
}

#[test]
fn script_endless_loop_is_a_script_error() {
    let p = profile(&SCRIPTED.replace("let n = 0;", "let n = 0; while true { n += 1; }"));
    let e = p
        .decode(
            "dev/abc",
            br#"{"ts": "1970-01-01T00:00:00Z", "values": []}"#,
            false,
        )
        .unwrap_err();
    assert_eq!(e.reason(), "script_error");
    assert!(e.to_string().contains("operations"), "{e}");
}

#[test]
fn script_errors_point_into_the_inline_source() {
    let text = SCRIPTED.replace("captures.id.len()", "captures.id.len(");
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].0, Code::E404);
}

#[test]
fn route_takes_the_first_match() {
    let a = profile(
        "stream = \"a\"\ntopic = \"x/{id}\"\ntime = \"ts\"\n[fields]\nts = \"timestamp\"\n",
    );
    let b = profile(
        "stream = \"b\"\ntopic = \"{any}/{id}\"\ntime = \"ts\"\n[fields]\nts = \"timestamp\"\n",
    );
    let profiles = [a, b];
    let (i, caps) = route(&profiles, "x/1").unwrap();
    assert_eq!((i, caps.get(0)), (0, Some("1")));
    let (i, caps) = route(&profiles, "y/1").unwrap();
    assert_eq!((i, caps.get(0)), (1, Some("y")));
    assert!(route(&profiles, "y/1/2").is_none());
}

#[test]
fn diagnostics_point_at_the_problem() {
    let e =
        errors("stream = \"s\"\ntopic = \"a/{id\"\ntime = \"ts\"\n[fields]\nts = \"timestamp\"\n");
    assert_eq!(
        e,
        [(
            Code::E401,
            "invalid topic template: unclosed `{`".into(),
            "{id".into()
        )]
    );

    let e = errors("stream = \"s\"\ntopic = \"a\"\ntime = \"ts\"\n[fields]\nts = \"timstamp\"\n");
    assert_eq!(e[0].0, Code::E400);
    assert_eq!(e[0].2, "\"timstamp\"");

    let e = errors(
        "stream = \"s\"\ntopic = \"a\"\ntime = \"ts\"\n[fields]\nts = { type = \"timestamp\", format = \"%Y %q\" }\n",
    );
    assert_eq!(e[0].0, Code::E402);
    assert_eq!(e[0].2, "\"%Y %q\"");

    let e = errors(
        "stream = \"s\"\ntopic = \"a\"\ntime = \"ts\"\nlateness = \"5 s\"\n[fields]\nts = \"timestamp\"\n",
    );
    assert_eq!(e[0].2, "\"5 s\"");

    let e = errors("stream = \"s\"\ntopic = \"a\"\ntime = \"t\"\n[fields]\nts = \"timestamp\"\n");
    assert_eq!(e[0].1, "`time` names no field: `t`");

    let e = errors("stream = \"s\"\ntopic = \"a\"\ntime = \"ts\"\n[fields]\nts = \"timestamp?\"\n");
    assert_eq!(e[0].1, "the time field `ts` is optional");

    let e = errors(
        "stream = \"s\"\ntopic = \"a\"\ntime = \"ts\"\nkey = [\"x\", \"v\"]\n[fields]\nts = \"timestamp\"\nv = \"float\"\n",
    );
    assert_eq!(e.len(), 2);
    assert_eq!(
        (e[0].1.as_str(), e[0].2.as_str()),
        ("key field `x` is not a field", "\"x\"")
    );
    assert_eq!(e[1].1, "key field `v` is a float");

    let e = errors(
        "stream = \"key\"\ntopic = \"a\"\ntime = \"ts\"\n[fields]\nts = \"timestamp\"\n\"my field\" = \"int\"\n",
    );
    assert_eq!(e[0].1, "`key` is a reserved word of the rule language");
    assert_eq!(e[1].1, "`my field` is not a valid field name");

    let e = errors(
        "stream = \"s\"\ntopic = \"a/{id}\"\ntime = \"ts\"\n[fields]\nts = \"timestamp\"\nn = { type = \"int\", capture = \"idd\" }\n",
    );
    assert_eq!(e[0].1, "the topic has no capture `idd`");

    let e = errors(
        "stream = \"s\"\ntopic = \"a\"\ntime = \"ts\"\n[fields]\nts = \"timestamp\"\nn = { type = \"int\", path = \"a..b\" }\n",
    );
    assert_eq!(e[0].1, "invalid path for field `n`: expected a key");
    assert_eq!(e[0].2, ".");

    let e = errors(
        "stream = \"s\"\ntopic = \"a\"\ntime = \"ts\"\nformat = \"script\"\n[fields]\nts = \"timestamp\"\n",
    );
    assert_eq!(e[0].1, "format \"script\" needs a decoder script");
}

#[test]
fn toml_errors_are_diagnostics() {
    let (_, d, _) = load("stream = \"s\"\nstreem = \"x\"\n");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].message, "unknown profile key `streem`");
    assert!(
        d[0].notes.iter().any(|n| n == "did you mean `stream`?"),
        "{:?}",
        d[0].notes
    );
    let (_, d, _) =
        load("stream = \"s\"\n[fields]\nts = { type = \"timestamp\", fromat = \"x\" }\n");
    assert_eq!(d[0].message, "unknown field key `fromat`");
    assert!(
        d[0].notes.iter().any(|n| n == "did you mean `format`?"),
        "{:?}",
        d[0].notes
    );
    let (_, d, _) = load("stream = \n");
    assert_eq!(d[0].code, Code::E400);
    assert!(
        d[0].message.starts_with("invalid profile: "),
        "{}",
        d[0].message
    );
}

#[test]
fn profiles_are_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Profile>();
    send_sync::<DecodeError>();
}
