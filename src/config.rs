//! `tern.toml`: where tern connects, which rules and devices it loads, and where alerts and bad
//! messages go. The reference with an annotated example is `docs/config.md`.
//!
//! Two stages, as for device profiles: serde reads the file into raw tables that keep every
//! value's byte span and reject unknown keys (`RawConfig`); validation then turns them into
//! a [`Config`], reporting every bad value at once as a [`Diagnostic`] (E410-E417) with its
//! place in the file and a "did you mean". Secrets are never in the file: it names an
//! environment variable or a file, read by [`SecretRef::resolve`] when `tern run` starts.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::compile::DEFAULT_SINKS;
use crate::devices::time::parse_duration;
use crate::lang::codes::Code;
use crate::lang::diagnostic::{Diagnostic, FileId};
use crate::lang::source::Sources;
use crate::lang::span::Span;
use crate::lang::toml_error::{TomlProblem, classify};

/// The file `tern run`, `tern check` and `tern replay` read when no `--config` is given.
pub const DEFAULT_PATH: &str = "tern.toml";

/// A validated `tern.toml`. Paths are already resolved against the file's directory.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file in the [`Sources`] it was loaded into (`None` for the built-in defaults).
    pub file: Option<FileId>,
    /// Rule files or directories.
    pub rules: Vec<PathBuf>,
    /// Directory of device profiles.
    pub devices: PathBuf,
    /// QoS of the subscriptions (0, 1 or 2).
    pub qos: u8,
    /// Where durable state lives (RocksDB): the alert outbox, sink cursors.
    pub state_dir: PathBuf,
    /// Wait for the disk (fsync) on every state write, to survive power loss as well as a
    /// crash of tern.
    pub state_sync: bool,
    /// Alerts the outbox holds for sinks that have not taken them; when full, tern stops
    /// reading from the broker until a sink catches up.
    pub outbox_capacity: u64,
    /// At shutdown, how long sinks may go on delivering what the outbox holds.
    pub drain_timeout: Duration,
    /// Reload the rules when a rule file or device profile changes (polled every second).
    pub watch_rules: bool,
    /// Messages held between the MQTT source and the engine; when full, tern stops reading
    /// from the broker.
    pub queue: usize,
    /// How many recent messages are remembered to drop redeliveries (0: none).
    pub dedupe_window: usize,
    /// The broker to connect to; `None` starts the embedded broker.
    pub broker: Option<BrokerConfig>,
    /// The embedded broker, used when there is no `[broker]`.
    pub embedded_broker: EmbeddedBrokerConfig,
    /// Alert sinks, by name (sorted).
    pub sinks: Vec<SinkConfig>,
    /// Where bad messages go.
    pub dead_letter: DeadLetterConfig,
    /// The admin HTTP endpoint.
    pub admin: AdminConfig,
    /// Logs.
    pub logging: LoggingConfig,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            file: None,
            rules: vec![PathBuf::from("rules")],
            devices: PathBuf::from("devices"),
            qos: 1,
            state_dir: PathBuf::from("state"),
            state_sync: true,
            outbox_capacity: 100_000,
            drain_timeout: Duration::from_secs(10),
            watch_rules: true,
            queue: 1024,
            dedupe_window: 10_000,
            broker: None,
            embedded_broker: EmbeddedBrokerConfig::default(),
            sinks: Vec::new(),
            dead_letter: DeadLetterConfig::default(),
            admin: AdminConfig::default(),
            logging: LoggingConfig::default(),
        }
    }
}

/// MQTT protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4): every broker and gateway speaks it.
    V311,
    /// MQTT 5.
    V5,
}

/// `[broker]`: the MQTT broker tern subscribes to.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port (default 1883, or 8883 with TLS).
    pub port: u16,
    /// Client id; stable, so the broker keeps the session across restarts.
    pub client_id: String,
    /// Protocol version.
    pub protocol: Protocol,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Start a fresh session on every connect (default false: a persistent session).
    pub clean_session: bool,
    /// Largest packet accepted or sent, bytes.
    pub max_packet_size: usize,
    /// Most outgoing QoS 1/2 messages unacknowledged at once.
    pub inflight: u16,
    /// Time allowed for TCP, TLS and CONNACK.
    pub connect_timeout: Duration,
    /// MQTT 5: how long the broker keeps the session after a disconnect.
    pub session_expiry: Duration,
    /// Delay before the first reconnect attempt; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// TLS, when the table is present.
    pub tls: Option<TlsConfig>,
    /// Username and password, when the table is present.
    pub auth: Option<AuthConfig>,
    /// The connection's TCP receive buffer, bytes; `None`: the kernel's, which it sizes
    /// itself.
    pub receive_buffer: Option<u32>,
}

/// The receive buffer for a broker on this machine: small enough that the kernel
/// acknowledges as tern reads, so that the broker's Nagle algorithm never holds messages
/// back for long waiting for an acknowledgement (on loopback it would gather up to 64 KiB,
/// about 18 ms of messages at 50,000/s), and still far more than a loopback round trip
/// needs (docs/performance.md, "Live pipeline").
const LOOPBACK_RECEIVE_BUFFER: u32 = 32 << 10;

/// True for a host name or address of this machine's loopback interface.
fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl BrokerConfig {
    /// The client configuration for the embedded broker at `addr`.
    pub fn local(addr: SocketAddr) -> BrokerConfig {
        BrokerConfig {
            host: addr.ip().to_string(),
            port: addr.port(),
            client_id: "tern".into(),
            protocol: Protocol::V311,
            keep_alive: Duration::from_secs(30),
            clean_session: false,
            max_packet_size: 1 << 20,
            inflight: 100,
            connect_timeout: Duration::from_secs(10),
            session_expiry: Duration::from_secs(86_400),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(30),
            tls: None,
            auth: None,
            receive_buffer: addr.ip().is_loopback().then_some(LOOPBACK_RECEIVE_BUFFER),
        }
    }
}

/// `[broker.tls]`.
#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    /// PEM file of the CA certificates that sign the broker's certificate; default: the
    /// system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain, for brokers that require one.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    pub key_file: Option<PathBuf>,
}

/// `[broker.auth]`.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// User name.
    pub username: String,
    /// Where the password is.
    pub password: SecretRef,
}

/// Where a secret is read from; never the secret itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file (its content, without a trailing newline).
    File(PathBuf),
}

/// A secret's source, with where `tern.toml` names it (for a diagnostic when it is missing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretRef {
    /// The source.
    pub source: SecretSource,
    /// The span of the key naming it.
    pub span: Span,
}

impl SecretRef {
    /// Reads the secret. The error says what is missing, never any secret text.
    pub fn resolve(&self) -> Result<SecretString, String> {
        match &self.source {
            SecretSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => Ok(SecretString::from(v)),
                Ok(_) => Err(format!("environment variable `{name}` is empty")),
                Err(_) => Err(format!("environment variable `{name}` is not set")),
            },
            SecretSource::File(path) => match std::fs::read_to_string(path) {
                Ok(v) => {
                    let v = v.strip_suffix('\n').unwrap_or(&v);
                    let v = v.strip_suffix('\r').unwrap_or(v);
                    if v.is_empty() {
                        Err(format!("{} is empty", path.display()))
                    } else {
                        Ok(SecretString::from(v.to_owned()))
                    }
                }
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            },
        }
    }

    /// A diagnostic for a secret that cannot be read.
    pub fn diagnostic(&self, file: Option<FileId>, why: &str) -> Diagnostic {
        let d = Diagnostic::error(
            Code::E416,
            format!("secret not available: {why}"),
            file.unwrap_or_default(),
            self.span,
            "named here",
        );
        match &self.source {
            SecretSource::Env(name) => {
                d.with_note(format!("set it before starting tern: `export {name}=...`"))
            }
            SecretSource::File(_) => {
                d.with_note("the file holds the secret alone; a trailing newline is ignored")
            }
        }
    }
}

/// `[embedded_broker]`: the broker tern starts when there is no `[broker]`.
#[derive(Debug, Clone)]
pub struct EmbeddedBrokerConfig {
    /// Address it listens on.
    pub listen: SocketAddr,
}

impl Default for EmbeddedBrokerConfig {
    fn default() -> Self {
        EmbeddedBrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
        }
    }
}

/// One `[sinks.NAME]` table.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// The name rules use in `to`.
    pub name: String,
    /// What it is.
    pub kind: SinkKind,
    /// Which alerts it takes, beyond the rules' `to` routing.
    pub filter: SinkFilter,
}

/// A sink's filter: an alert goes to the sink only if it passes every part given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SinkFilter {
    /// Alerts at least this severe.
    pub min_severity: Option<crate::compile::hir::Severity>,
    /// Only these rules (empty: every rule).
    pub rules: Vec<String>,
    /// Only these kinds, `match` or `timeout` (empty: both).
    pub kinds: Vec<String>,
}

impl SinkFilter {
    /// True when the alert passes.
    pub fn accepts(&self, rule: &str, severity: crate::compile::hir::Severity, kind: &str) -> bool {
        self.min_severity.is_none_or(|m| severity >= m)
            && (self.rules.is_empty() || self.rules.iter().any(|r| r == rule))
            && (self.kinds.is_empty() || self.kinds.iter().any(|k| k == kind))
    }
}

/// A sink's type and settings.
#[derive(Debug, Clone)]
pub enum SinkKind {
    /// One line per alert on stdout.
    Stdout {
        /// Readable text or JSON lines.
        format: StdoutFormat,
    },
    /// JSON Lines appended to a file.
    File {
        /// The file.
        path: PathBuf,
    },
    /// HTTP POST of each alert (delivered from the next release on).
    Webhook(WebhookConfig),
    /// MQTT publish of each alert (delivered from the next release on).
    Mqtt(MqttSinkConfig),
    /// One InfluxDB point per alert (delivered from the next release on).
    Influx(InfluxConfig),
}

impl SinkKind {
    /// The `type` value.
    pub fn type_name(&self) -> &'static str {
        match self {
            SinkKind::Stdout { .. } => "stdout",
            SinkKind::File { .. } => "file",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::Mqtt(_) => "mqtt",
            SinkKind::Influx(_) => "influx",
        }
    }
}

/// How the stdout sink writes alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdoutFormat {
    /// One readable line, coloured on a terminal.
    Text,
    /// The alert JSON, one per line.
    Json,
}

/// Retries of a network sink.
#[derive(Debug, Clone, PartialEq)]
pub struct RetryConfig {
    /// Attempts before the alert is dead-lettered.
    pub max_attempts: u32,
    /// Delay before the first retry; doubles up to `max_delay`, with jitter.
    pub initial_delay: Duration,
    /// Longest delay between attempts.
    pub max_delay: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 10,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(300),
        }
    }
}

/// `type = "webhook"`.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where alerts are POSTed.
    pub url: String,
    /// The Standard Webhooks signing secret.
    pub secret: Option<SecretRef>,
    /// Time allowed for one request, connecting included.
    pub timeout: Duration,
    /// Time allowed to connect.
    pub connect_timeout: Duration,
    /// Extra request headers.
    pub headers: BTreeMap<String, String>,
    /// Retries.
    pub retry: RetryConfig,
}

/// `type = "mqtt"`: publishes on the `[broker]` connection.
#[derive(Debug, Clone)]
pub struct MqttSinkConfig {
    /// Topic template: `{rule}`, `{name}`, `{key}` and `{severity}` are replaced.
    pub topic: String,
    /// QoS of the publishes.
    pub qos: u8,
    /// Publish retained.
    pub retain: bool,
    /// Retries.
    pub retry: RetryConfig,
}

/// `type = "influx"` (InfluxDB 2 write API).
#[derive(Debug, Clone)]
pub struct InfluxConfig {
    /// Base URL of the server.
    pub url: String,
    /// Organisation.
    pub org: String,
    /// Bucket.
    pub bucket: String,
    /// API token.
    pub token: SecretRef,
    /// Measurement (default: the rule name).
    pub measurement: Option<String>,
    /// Time allowed for one write.
    pub timeout: Duration,
    /// Most points in one write.
    pub batch: usize,
    /// Retries.
    pub retry: RetryConfig,
}

/// `[dead_letter]`: where bad messages go (a file, a topic, or both).
#[derive(Debug, Clone, Default)]
pub struct DeadLetterConfig {
    /// JSON Lines file.
    pub file: Option<PathBuf>,
    /// MQTT topic on the `[broker]` connection.
    pub topic: Option<String>,
}

/// `[admin]`: the admin HTTP endpoint (health, metrics, rules; `docs/operations.md`).
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Whether `tern run` serves it.
    pub enabled: bool,
    /// Listen address.
    pub listen: SocketAddr,
    /// The address was written in tern.toml: failing to bind it stops `tern run`. The
    /// default address is best effort (another tern on the machine may hold it).
    pub listen_set: bool,
    /// The bearer token every endpoint but the health checks requires. Without one, the
    /// endpoint listens only on a loopback address (E417).
    pub token: Option<SecretRef>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            listen_set: false,
            token: None,
        }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Text on a terminal, JSON otherwise.
    Auto,
    /// Readable text.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[logging]`.
#[derive(Debug, Clone)]
pub struct LoggingConfig {
    /// A filter in `RUST_LOG` syntax (`info`, `tern=debug,rumqttc=warn`); `TERN_LOG`
    /// overrides it.
    pub level: String,
    /// Output format.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".into(),
            format: LogFormat::Auto,
        }
    }
}

/// A configuration file rejected: its diagnostics with the source to render them against.
#[derive(Debug)]
pub struct ConfigError {
    /// The file read.
    pub sources: Sources,
    /// What is wrong.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = crate::lang::render::to_text(&self.sources, &self.diagnostics);
        write!(f, "invalid configuration:\n{}", text.trim_end())
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// The configuration for a command: `path` if given, else `./tern.toml` if it exists, else
    /// the defaults. Problems are diagnostics in a [`ConfigError`]; a file that cannot be read
    /// is one too (E410).
    pub fn discover(path: Option<&Path>) -> Result<(Config, Sources), ConfigError> {
        let mut sources = Sources::new();
        let path = match path {
            Some(p) => p.to_path_buf(),
            None if Path::new(DEFAULT_PATH).is_file() => PathBuf::from(DEFAULT_PATH),
            None => return Ok((Config::default(), sources)),
        };
        match Config::load(&path, &mut sources) {
            Ok(c) => Ok((c, sources)),
            Err(diagnostics) => Err(ConfigError {
                sources,
                diagnostics,
            }),
        }
    }

    /// Reads and validates a file; relative paths in it are relative to its directory.
    pub fn load(path: &Path, sources: &mut Sources) -> Result<Config, Vec<Diagnostic>> {
        let file = match sources.read(path) {
            Ok(f) => f,
            Err(e) => {
                let file = sources.add(path.display().to_string(), "");
                return Err(vec![Diagnostic::error(
                    Code::E410,
                    format!("cannot read the configuration: {e}"),
                    file,
                    Span::default(),
                    "here",
                )]);
            }
        };
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Config::parse(file, sources.text(file), base)
    }

    /// Validates configuration text registered as `file`; relative paths join `base`.
    pub fn parse(file: FileId, text: &str, base: &Path) -> Result<Config, Vec<Diagnostic>> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| vec![toml_error(file, &e)])?;
        let mut v = Validator {
            file,
            base,
            diagnostics: Vec::new(),
        };
        let config = v.config(raw);
        // Tables are validated in key order (sinks sorted by name): report in file order.
        v.diagnostics
            .sort_by_key(|d| d.primary().map_or(0, |l| l.span.start));
        if v.diagnostics.is_empty() {
            Ok(config)
        } else {
            Err(v.diagnostics)
        }
    }

    /// Sink names rules may use: the built-in names and every `[sinks.NAME]`.
    pub fn sink_names(&self) -> Vec<String> {
        let mut names: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
        for s in &self.sinks {
            if !names.contains(&s.name) {
                names.push(s.name.clone());
            }
        }
        names
    }

    /// The configured sink of this name.
    pub fn sink(&self, name: &str) -> Option<&SinkConfig> {
        self.sinks.iter().find(|s| s.name == name)
    }

    /// Every secret the configuration names, with where (for [`SecretRef::diagnostic`]).
    pub fn secrets(&self) -> Vec<&SecretRef> {
        let mut out = Vec::new();
        if let Some(auth) = self.broker.as_ref().and_then(|b| b.auth.as_ref()) {
            out.push(&auth.password);
        }
        for s in &self.sinks {
            match &s.kind {
                SinkKind::Webhook(w) => out.extend(w.secret.as_ref()),
                SinkKind::Influx(i) => out.push(&i.token),
                _ => {}
            }
        }
        if self.admin.enabled {
            out.extend(self.admin.token.as_ref());
        }
        out
    }

    /// Checks that every secret can be read, without keeping any: diagnostics for the others.
    pub fn check_secrets(&self) -> Vec<Diagnostic> {
        self.secrets()
            .into_iter()
            .filter_map(|s| s.resolve().err().map(|why| s.diagnostic(self.file, &why)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw tables, as written.

/// The whole file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    rules: Option<Spanned<StrList>>,
    devices: Option<Spanned<String>>,
    qos: Option<Spanned<i64>>,
    state_dir: Option<Spanned<String>>,
    state_sync: Option<Spanned<bool>>,
    outbox_capacity: Option<Spanned<i64>>,
    drain_timeout: Option<Spanned<String>>,
    watch_rules: Option<Spanned<bool>>,
    queue: Option<Spanned<i64>>,
    dedupe_window: Option<Spanned<i64>>,
    broker: Option<RawBroker>,
    embedded_broker: Option<RawEmbedded>,
    sinks: Option<BTreeMap<Spanned<String>, Spanned<RawSink>>>,
    dead_letter: Option<RawDeadLetter>,
    admin: Option<RawAdmin>,
    logging: Option<RawLogging>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    host: Option<Spanned<String>>,
    port: Option<Spanned<i64>>,
    client_id: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    keep_alive: Option<Spanned<String>>,
    clean_session: Option<bool>,
    max_packet_size: Option<Spanned<toml::Value>>,
    inflight: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
    session_expiry: Option<Spanned<String>>,
    reconnect_min: Option<Spanned<String>>,
    reconnect_max: Option<Spanned<String>>,
    tls: Option<RawTls>,
    auth: Option<Spanned<RawAuth>>,
    receive_buffer: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<String>,
    cert_file: Option<Spanned<String>>,
    key_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    username: Option<String>,
    password_env: Option<Spanned<String>>,
    password_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEmbedded {
    listen: Option<Spanned<String>>,
}

/// A sink table: the union of every type's keys; validation checks which apply.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSink {
    #[serde(rename = "type")]
    ty: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    secret_env: Option<Spanned<String>>,
    secret_file: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    headers: Option<Spanned<BTreeMap<String, String>>>,
    retry: Option<Spanned<RawRetry>>,
    topic: Option<Spanned<String>>,
    qos: Option<Spanned<i64>>,
    retain: Option<Spanned<bool>>,
    org: Option<Spanned<String>>,
    bucket: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    measurement: Option<Spanned<String>>,
    connect_timeout: Option<Spanned<String>>,
    batch: Option<Spanned<i64>>,
    min_severity: Option<Spanned<String>>,
    rules: Option<Spanned<Vec<String>>>,
    kinds: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    max_attempts: Option<Spanned<i64>>,
    initial_delay: Option<Spanned<String>>,
    max_delay: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDeadLetter {
    file: Option<Spanned<String>>,
    topic: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    enabled: Option<bool>,
    listen: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLogging {
    level: Option<Spanned<String>>,
    format: Option<Spanned<String>>,
}

/// `"rules"` or `["rules", "more"]`.
#[derive(Debug)]
struct StrList(Vec<String>);

impl<'de> Deserialize<'de> for StrList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StrList;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path or an array of paths")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StrList, E> {
                Ok(StrList(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrList, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StrList(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Keys each sink type accepts besides `type` (for E415 and the notes).
const SINK_KEYS: &[(&str, &[&str])] = &[
    ("stdout", &["format"]),
    ("file", &["path"]),
    (
        "webhook",
        &[
            "url",
            "secret_env",
            "secret_file",
            "timeout",
            "connect_timeout",
            "headers",
            "retry",
        ],
    ),
    ("mqtt", &["topic", "qos", "retain", "retry"]),
    (
        "influx",
        &[
            "url",
            "org",
            "bucket",
            "token_env",
            "token_file",
            "measurement",
            "timeout",
            "batch",
            "retry",
        ],
    ),
];

/// Keys that would hold a secret inline; tern refuses them with a pointer to `*_env`/`*_file`.
const INLINE_SECRETS: &[(&str, &str)] = &[
    ("password", "password_env` or `password_file"),
    ("secret", "secret_env` or `secret_file"),
    ("token", "token_env` or `token_file"),
];

/// toml's error (unknown key, wrong type, missing key, bad syntax) as a diagnostic.
fn toml_error(file: FileId, e: &toml::de::Error) -> Diagnostic {
    let (at, problem) = classify(e);
    match problem {
        TomlProblem::UnknownKey { name, expected } => {
            let d = Diagnostic::error(
                Code::E411,
                format!("unknown key `{name}`"),
                file,
                at,
                "not a key of this table",
            );
            if let Some((_, instead)) = INLINE_SECRETS.iter().find(|(k, _)| *k == name) {
                return d.with_note(format!(
                    "secrets are never written in tern.toml: use `{instead}` to name an environment \
                     variable or a file holding it"
                ));
            }
            let d = d.with_suggestion(name, expected.iter().copied());
            if expected.is_empty() {
                d
            } else {
                d.with_note(format!("the keys here are: {}", expected.join(", ")))
            }
        }
        TomlProblem::MissingKey { name } => Diagnostic::error(
            Code::E413,
            format!("missing key `{name}`"),
            file,
            at,
            format!("this table needs `{name}`"),
        )
        .with_note("docs/config.md lists every key"),
        TomlProblem::BadValue { headline } | TomlProblem::Other { headline } => {
            let code = if matches!(problem, TomlProblem::BadValue { .. }) {
                Code::E412
            } else {
                Code::E410
            };
            Diagnostic::error(
                code,
                format!("invalid configuration: {headline}"),
                file,
                at,
                "here",
            )
            .with_note("docs/config.md describes tern.toml")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

struct Validator<'a> {
    file: FileId,
    base: &'a Path,
    diagnostics: Vec<Diagnostic>,
}

impl Validator<'_> {
    fn error(&mut self, code: Code, at: Range<usize>, message: String, label: &str) -> usize {
        self.diagnostics.push(Diagnostic::error(
            code,
            message,
            self.file,
            Span::from(at),
            label,
        ));
        self.diagnostics.len() - 1
    }

    fn note(&mut self, index: usize, note: impl Into<String>) {
        if let Some(d) = self.diagnostics.get_mut(index) {
            d.notes.push(note.into());
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() || self.base == Path::new(".") {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn duration(&mut self, v: &Option<Spanned<String>>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match parse_duration(v.get_ref()) {
            Ok(ns) if ns >= 0 => Duration::from_nanos(ns as u64),
            Ok(_) => {
                self.error(
                    Code::E412,
                    v.span(),
                    "a duration cannot be negative".into(),
                    "negative",
                );
                default
            }
            Err(why) => {
                let i = self.error(
                    Code::E412,
                    v.span(),
                    format!("invalid duration: {why}"),
                    "not a duration",
                );
                self.note(
                    i,
                    "durations are a number and a unit: \"500ms\", \"30s\", \"5m\", \"1h30m\"",
                );
                default
            }
        }
    }

    fn int(&mut self, v: &Option<Spanned<i64>>, lo: i64, hi: i64, default: i64) -> i64 {
        let Some(v) = v else { return default };
        let n = *v.get_ref();
        if (lo..=hi).contains(&n) {
            n
        } else {
            self.error(
                Code::E412,
                v.span(),
                format!("{n} is out of range: expected {lo} to {hi}"),
                "out of range",
            );
            default
        }
    }

    fn choice(
        &mut self,
        v: &Option<Spanned<String>>,
        what: &str,
        allowed: &[&str],
    ) -> Option<String> {
        let v = v.as_ref()?;
        if allowed.contains(&v.get_ref().as_str()) {
            return Some(v.get_ref().clone());
        }
        let i = self.error(
            Code::E412,
            v.span(),
            format!("unknown {what} `{}`", v.get_ref()),
            "unknown value",
        );
        if let Some(best) = crate::lang::suggest::closest(v.get_ref(), allowed.iter().copied()) {
            self.note(i, format!("did you mean `{best}`?"));
        }
        self.note(
            i,
            format!(
                "expected one of: {}",
                allowed
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        None
    }

    fn socket(&mut self, v: &Option<Spanned<String>>, default: SocketAddr) -> SocketAddr {
        let Some(v) = v else { return default };
        match v.get_ref().parse::<SocketAddr>() {
            Ok(a) => a,
            Err(_) => {
                let i = self.error(
                    Code::E412,
                    v.span(),
                    format!("invalid address `{}`", v.get_ref()),
                    "not an IP address and port",
                );
                self.note(i, "write an IP address and a port: \"127.0.0.1:9464\"");
                default
            }
        }
    }

    fn nonempty(&mut self, v: &Spanned<String>, what: &str) -> String {
        if v.get_ref().trim().is_empty() {
            self.error(Code::E412, v.span(), format!("{what} is empty"), "empty");
        }
        v.get_ref().clone()
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let d = Config::default();
        let rules = match &raw.rules {
            Some(r) if r.get_ref().0.is_empty() => {
                self.error(
                    Code::E412,
                    r.span(),
                    "`rules` names no path".into(),
                    "empty",
                );
                d.rules.clone()
            }
            Some(r) => r.get_ref().0.iter().map(|p| self.path(p)).collect(),
            None => d
                .rules
                .iter()
                .map(|p| self.path(&p.to_string_lossy()))
                .collect(),
        };
        let devices = self.path(
            raw.devices
                .as_ref()
                .map_or("devices", |s| s.get_ref().as_str()),
        );
        let state_dir = self.path(
            raw.state_dir
                .as_ref()
                .map_or("state", |s| s.get_ref().as_str()),
        );
        let qos = self.int(&raw.qos, 0, 2, 1) as u8;
        let state_sync = raw.state_sync.map_or(d.state_sync, Spanned::into_inner);
        let outbox_capacity =
            self.int(&raw.outbox_capacity, 1, 1 << 40, d.outbox_capacity as i64) as u64;
        let drain_timeout = self.duration(&raw.drain_timeout, d.drain_timeout);
        let watch_rules = raw.watch_rules.map_or(d.watch_rules, Spanned::into_inner);
        let queue = self.int(&raw.queue, 1, 1 << 24, d.queue as i64) as usize;
        let dedupe_window =
            self.int(&raw.dedupe_window, 0, 1 << 24, d.dedupe_window as i64) as usize;
        let broker = raw.broker.map(|b| self.broker(b));
        let embedded_broker = match raw.embedded_broker {
            Some(e) => EmbeddedBrokerConfig {
                listen: self.socket(&e.listen, d.embedded_broker.listen),
            },
            None => d.embedded_broker.clone(),
        };
        let mut sinks = Vec::new();
        for (name, sink) in raw.sinks.into_iter().flatten() {
            if !crate::devices::topic::is_ident(name.get_ref()) {
                let i = self.error(
                    Code::E412,
                    name.span(),
                    format!("invalid sink name `{}`", name.get_ref()),
                    "not a name",
                );
                self.note(
                    i,
                    "rules name sinks in `to`: use letters, digits and `_`, starting with a letter",
                );
                continue;
            }
            if let Some((kind, filter)) = self.sink(sink) {
                sinks.push(SinkConfig {
                    name: name.into_inner(),
                    kind,
                    filter,
                });
            }
        }
        let dead_letter = match raw.dead_letter {
            Some(dl) => {
                let topic = dl.topic.as_ref().map(|t| {
                    let topic = self.nonempty(t, "the dead-letter topic");
                    if topic.contains(['+', '#']) {
                        self.error(
                            Code::E412,
                            t.span(),
                            "a topic to publish to cannot contain wildcards".into(),
                            "`+` or `#`",
                        );
                    }
                    topic
                });
                DeadLetterConfig {
                    file: dl.file.as_ref().map(|f| self.path(f.get_ref())),
                    topic,
                }
            }
            None => DeadLetterConfig::default(),
        };
        let admin = match raw.admin {
            Some(a) => self.admin(a),
            None => d.admin.clone(),
        };
        let logging = match raw.logging {
            Some(l) => {
                let format = match self
                    .choice(&l.format, "log format", &["auto", "text", "json"])
                    .as_deref()
                {
                    Some("text") => LogFormat::Text,
                    Some("json") => LogFormat::Json,
                    _ => LogFormat::Auto,
                };
                let level = match &l.level {
                    Some(level) => {
                        if let Err(e) = tracing_subscriber::EnvFilter::try_new(level.get_ref()) {
                            let i = self.error(
                                Code::E412,
                                level.span(),
                                format!("invalid log level: {e}"),
                                "not a log filter",
                            );
                            self.note(
                                i,
                                "use a level (error, warn, info, debug, trace) or a filter such \
                                 as \"info,tern=debug\"",
                            );
                        }
                        level.get_ref().clone()
                    }
                    None => d.logging.level.clone(),
                };
                LoggingConfig { level, format }
            }
            None => d.logging.clone(),
        };
        Config {
            file: Some(self.file),
            rules,
            devices,
            qos,
            state_dir,
            state_sync,
            outbox_capacity,
            drain_timeout,
            watch_rules,
            queue,
            dedupe_window,
            broker,
            embedded_broker,
            sinks,
            dead_letter,
            admin,
            logging,
        }
    }

    fn broker(&mut self, b: RawBroker) -> BrokerConfig {
        let tls = b.tls.map(|t| {
            if t.cert_file.is_some() != t.key_file.is_some() {
                let at = t
                    .cert_file
                    .as_ref()
                    .or(t.key_file.as_ref())
                    .map(Spanned::span)
                    .unwrap_or_default();
                let i = self.error(
                    Code::E413,
                    at,
                    "a client certificate needs both `cert_file` and `key_file`".into(),
                    "given alone",
                );
                self.note(
                    i,
                    "give both, or neither when the broker needs no client certificate",
                );
            }
            TlsConfig {
                ca_file: t.ca_file.as_deref().map(|p| self.path(p)),
                cert_file: t.cert_file.as_ref().map(|p| self.path(p.get_ref())),
                key_file: t.key_file.as_ref().map(|p| self.path(p.get_ref())),
            }
        });
        let default_port = if tls.is_some() { 8883 } else { 1883 };
        let local = BrokerConfig::local(SocketAddr::from(([127, 0, 0, 1], default_port)));
        let host = match &b.host {
            Some(h) => self.nonempty(h, "the broker host"),
            None => "localhost".into(),
        };
        let port = self.int(&b.port, 1, 65535, i64::from(default_port)) as u16;
        let client_id = match &b.client_id {
            Some(c) => {
                let id = self.nonempty(c, "the client id");
                if id.len() > 65535 {
                    self.error(
                        Code::E412,
                        c.span(),
                        "the client id is too long".into(),
                        "here",
                    );
                }
                id
            }
            None => local.client_id.clone(),
        };
        let protocol = match self
            .choice(&b.protocol, "MQTT protocol version", &["3.1.1", "5"])
            .as_deref()
        {
            Some("5") => Protocol::V5,
            _ => Protocol::V311,
        };
        let keep_alive = self.duration(&b.keep_alive, local.keep_alive);
        if let Some(k) = &b.keep_alive
            && (keep_alive < Duration::from_secs(1) || keep_alive.as_secs() > 65535)
        {
            self.error(
                Code::E412,
                k.span(),
                "keep_alive must be between 1s and 65535s".into(),
                "out of range",
            );
        }
        let max_packet_size = match &b.max_packet_size {
            Some(v) => self
                .size(
                    v,
                    "max_packet_size",
                    16..=256 << 20,
                    "between 16 bytes and 256 MiB",
                )
                .unwrap_or(local.max_packet_size),
            None => local.max_packet_size,
        };
        let inflight = self.int(&b.inflight, 1, 65535, i64::from(local.inflight)) as u16;
        let connect_timeout = self.duration(&b.connect_timeout, local.connect_timeout);
        let session_expiry = self.duration(&b.session_expiry, local.session_expiry);
        if let Some(s) = &b.session_expiry
            && session_expiry.as_secs() > u64::from(u32::MAX)
        {
            self.error(
                Code::E412,
                s.span(),
                "session_expiry is longer than MQTT allows (about 136 years)".into(),
                "too long",
            );
        }
        let reconnect_min = self.duration(&b.reconnect_min, local.reconnect_min);
        let reconnect_max = self.duration(&b.reconnect_max, local.reconnect_max);
        if reconnect_max < reconnect_min
            && let Some(m) = &b.reconnect_max
        {
            self.error(
                Code::E412,
                m.span(),
                "reconnect_max is shorter than reconnect_min".into(),
                "too short",
            );
        }
        let auth = b.auth.and_then(|a| {
            let at = a.span();
            let a = a.into_inner();
            let username = match a.username {
                Some(u) => u,
                None => {
                    let i = self.error(
                        Code::E413,
                        at.clone(),
                        "[broker.auth] needs a `username`".into(),
                        "no username",
                    );
                    self.note(i, "MQTT sends a password only together with a user name");
                    String::new()
                }
            };
            let password = self.secret(
                a.password_env,
                a.password_file,
                at,
                ("password_env", "password_file"),
            )?;
            Some(AuthConfig { username, password })
        });
        let receive_buffer = match &b.receive_buffer {
            None => is_loopback_host(&host).then_some(LOOPBACK_RECEIVE_BUFFER),
            Some(v) => self.receive_buffer(v),
        };
        BrokerConfig {
            host,
            port,
            client_id,
            protocol,
            keep_alive,
            clean_session: b.clean_session.unwrap_or(false),
            max_packet_size,
            inflight,
            connect_timeout,
            session_expiry,
            reconnect_min,
            reconnect_max,
            tls,
            auth,
            receive_buffer,
        }
    }

    /// `receive_buffer`: `"system"`, or a size from 4 KiB to 64 MiB.
    fn receive_buffer(&mut self, v: &Spanned<toml::Value>) -> Option<u32> {
        if v.get_ref().as_str() == Some("system") {
            return None;
        }
        match self.size(
            v,
            "receive_buffer",
            4 << 10..=64 << 20,
            "between 4 KiB and 64 MiB",
        ) {
            Ok(n) => u32::try_from(n).ok(),
            Err(i) => {
                self.note(i, "or write \"system\" to let the kernel size it");
                None
            }
        }
    }

    /// `[admin]`: a token is optional, but required to listen beyond loopback (E417).
    fn admin(&mut self, a: RawAdmin) -> AdminConfig {
        let d = AdminConfig::default();
        let enabled = a.enabled.unwrap_or(d.enabled);
        let listen = self.socket(&a.listen, d.listen);
        let token = match (&a.token_env, &a.token_file) {
            (None, None) => None,
            _ => self.secret(
                a.token_env.clone(),
                a.token_file.clone(),
                Range::default(),
                ("token_env", "token_file"),
            ),
        };
        if let Some(at) = &a.listen
            && enabled
            && token.is_none()
            && !listen.ip().is_loopback()
            && a.token_env.is_none()
            && a.token_file.is_none()
        {
            let i = self.error(
                Code::E417,
                at.span(),
                format!("the admin endpoint would listen on {listen} without a token"),
                "not a loopback address",
            );
            self.note(
                i,
                "beyond loopback every request must carry a bearer token: set `token_env` or \
                 `token_file` in [admin], or listen on 127.0.0.1",
            );
        }
        AdminConfig {
            enabled,
            listen,
            listen_set: a.listen.is_some(),
            token,
        }
    }

    /// Exactly one of `KEY_env` and `KEY_file`.
    fn secret(
        &mut self,
        env: Option<Spanned<String>>,
        file: Option<Spanned<String>>,
        table: Range<usize>,
        keys: (&str, &str),
    ) -> Option<SecretRef> {
        match (env, file) {
            (Some(e), None) => {
                if e.get_ref().is_empty() || e.get_ref().contains(['=', '\0']) {
                    self.error(
                        Code::E412,
                        e.span(),
                        format!("`{}` is not a valid environment variable name", e.get_ref()),
                        "not a variable name",
                    );
                }
                Some(SecretRef {
                    span: Span::from(e.span()),
                    source: SecretSource::Env(e.into_inner()),
                })
            }
            (None, Some(f)) => Some(SecretRef {
                span: Span::from(f.span()),
                source: SecretSource::File(self.path(f.get_ref())),
            }),
            (Some(e), Some(_)) => {
                let i = self.error(
                    Code::E412,
                    e.span(),
                    format!("give `{}` or `{}`, not both", keys.0, keys.1),
                    "both given",
                );
                self.note(i, "the secret is read from one place");
                None
            }
            (None, None) => {
                let i = self.error(
                    Code::E413,
                    table,
                    format!("missing `{}` or `{}`", keys.0, keys.1),
                    "no secret named",
                );
                self.note(
                    i,
                    "secrets are never written in tern.toml: name an environment variable or a \
                     file holding it",
                );
                None
            }
        }
    }

    /// Bytes: an integer, or a string with a unit (`"512KiB"`, `"1MiB"`, `"1MB"`), within
    /// `range` (`bounds` says it in words); the error's index when it is not.
    fn size(
        &mut self,
        v: &Spanned<toml::Value>,
        key: &str,
        range: std::ops::RangeInclusive<usize>,
        bounds: &str,
    ) -> Result<usize, usize> {
        let parsed = match v.get_ref() {
            toml::Value::Integer(n) => usize::try_from(*n).ok(),
            toml::Value::String(s) => parse_size(s),
            _ => None,
        };
        match parsed {
            Some(n) if range.contains(&n) => Ok(n),
            Some(_) => Err(self.error(
                Code::E412,
                v.span(),
                format!("{key} must be {bounds}"),
                "out of range",
            )),
            None => {
                let i = self.error(Code::E412, v.span(), "invalid size".into(), "not a size");
                self.note(
                    i,
                    "write bytes as an integer, or a string such as \"512KiB\" or \"1MiB\"",
                );
                Err(i)
            }
        }
    }

    fn sink(&mut self, s: Spanned<RawSink>) -> Option<(SinkKind, SinkFilter)> {
        let at = s.span();
        let s = s.into_inner();
        let Some(ty) = &s.ty else {
            let i = self.error(
                Code::E413,
                at,
                "missing key `type`".into(),
                "this sink needs a `type`",
            );
            self.note(
                i,
                "type is one of: \"stdout\", \"file\", \"webhook\", \"mqtt\", \"influx\"",
            );
            return None;
        };
        let Some((type_name, keys)) = SINK_KEYS.iter().find(|(t, _)| *t == ty.get_ref()).copied()
        else {
            let names: Vec<&str> = SINK_KEYS.iter().map(|(t, _)| *t).collect();
            let i = self.error(
                Code::E414,
                ty.span(),
                format!("unknown sink type `{}`", ty.get_ref()),
                "not a sink type",
            );
            if let Some(best) = crate::lang::suggest::closest(ty.get_ref(), names.iter().copied()) {
                self.note(i, format!("did you mean `{best}`?"));
            }
            self.note(i, format!("the sink types are: {}", names.join(", ")));
            return None;
        };
        // Every key given must apply to this type.
        let given: [(&str, Option<Range<usize>>); 19] = [
            ("format", s.format.as_ref().map(Spanned::span)),
            ("path", s.path.as_ref().map(Spanned::span)),
            ("url", s.url.as_ref().map(Spanned::span)),
            ("secret_env", s.secret_env.as_ref().map(Spanned::span)),
            ("secret_file", s.secret_file.as_ref().map(Spanned::span)),
            ("timeout", s.timeout.as_ref().map(Spanned::span)),
            ("headers", s.headers.as_ref().map(Spanned::span)),
            ("retry", s.retry.as_ref().map(Spanned::span)),
            ("topic", s.topic.as_ref().map(Spanned::span)),
            ("qos", s.qos.as_ref().map(Spanned::span)),
            ("retain", s.retain.as_ref().map(Spanned::span)),
            ("org", s.org.as_ref().map(Spanned::span)),
            ("bucket", s.bucket.as_ref().map(Spanned::span)),
            ("token_env", s.token_env.as_ref().map(Spanned::span)),
            ("token_file", s.token_file.as_ref().map(Spanned::span)),
            ("measurement", s.measurement.as_ref().map(Spanned::span)),
            (
                "connect_timeout",
                s.connect_timeout.as_ref().map(Spanned::span),
            ),
            ("batch", s.batch.as_ref().map(Spanned::span)),
            ("type", None),
        ];
        let before = self.diagnostics.len();
        for (key, at) in given {
            if let Some(at) = at
                && !keys.contains(&key)
            {
                let owners: Vec<&str> = SINK_KEYS
                    .iter()
                    .filter(|(_, k)| k.contains(&key))
                    .map(|(t, _)| *t)
                    .collect();
                let i = self.error(
                    Code::E415,
                    at,
                    format!("`{key}` does not apply to a `{type_name}` sink"),
                    "not used by this type",
                );
                self.note(
                    i,
                    format!(
                        "a `{type_name}` sink takes: type, {}; `{key}` belongs to {}",
                        keys.join(", "),
                        owners.join(", ")
                    ),
                );
            }
        }
        let retry = s.retry.map(|r| {
            let r = r.into_inner();
            let d = RetryConfig::default();
            RetryConfig {
                max_attempts: self.int(&r.max_attempts, 1, 1000, i64::from(d.max_attempts)) as u32,
                initial_delay: self.duration(&r.initial_delay, d.initial_delay),
                max_delay: self.duration(&r.max_delay, d.max_delay),
            }
        });
        let required = |v: &mut Self, value: &Option<Spanned<String>>, key: &str| -> String {
            match value {
                Some(x) => v.nonempty(x, &format!("`{key}`")),
                None => {
                    v.error(
                        Code::E413,
                        at.clone(),
                        format!("a `{type_name}` sink needs `{key}`"),
                        &format!("no `{key}`"),
                    );
                    String::new()
                }
            }
        };
        let kind = match type_name {
            "stdout" => SinkKind::Stdout {
                format: match self
                    .choice(&s.format, "stdout format", &["text", "json"])
                    .as_deref()
                {
                    Some("json") => StdoutFormat::Json,
                    _ => StdoutFormat::Text,
                },
            },
            "file" => {
                let path = required(self, &s.path, "path");
                SinkKind::File {
                    path: self.path(&path),
                }
            }
            "webhook" => {
                let url = required(self, &s.url, "url");
                self.url(&s.url);
                let secret = match (&s.secret_env, &s.secret_file) {
                    (None, None) => None,
                    _ => self.secret(
                        s.secret_env.clone(),
                        s.secret_file.clone(),
                        at.clone(),
                        ("secret_env", "secret_file"),
                    ),
                };
                SinkKind::Webhook(WebhookConfig {
                    url,
                    secret,
                    timeout: self.duration(&s.timeout, Duration::from_secs(10)),
                    connect_timeout: self.duration(&s.connect_timeout, Duration::from_secs(5)),
                    headers: s.headers.map(Spanned::into_inner).unwrap_or_default(),
                    retry: retry.unwrap_or_default(),
                })
            }
            "mqtt" => {
                let topic = required(self, &s.topic, "topic");
                if let Some(t) = &s.topic
                    && t.get_ref().contains(['+', '#'])
                {
                    self.error(
                        Code::E412,
                        t.span(),
                        "a topic to publish to cannot contain wildcards".into(),
                        "`+` or `#`",
                    );
                }
                if let Some(t) = &s.topic {
                    self.topic_placeholders(t);
                }
                SinkKind::Mqtt(MqttSinkConfig {
                    topic,
                    qos: self.int(&s.qos, 0, 2, 1) as u8,
                    retain: s.retain.map(Spanned::into_inner).unwrap_or(false),
                    retry: retry.unwrap_or_default(),
                })
            }
            _ => {
                let url = required(self, &s.url, "url");
                self.url(&s.url);
                let org = required(self, &s.org, "org");
                let bucket = required(self, &s.bucket, "bucket");
                let token = self.secret(
                    s.token_env.clone(),
                    s.token_file.clone(),
                    at.clone(),
                    ("token_env", "token_file"),
                );
                SinkKind::Influx(InfluxConfig {
                    url,
                    org,
                    bucket,
                    token: token.unwrap_or(SecretRef {
                        source: SecretSource::Env(String::new()),
                        span: Span::from(at.clone()),
                    }),
                    measurement: s.measurement.map(Spanned::into_inner),
                    timeout: self.duration(&s.timeout, Duration::from_secs(10)),
                    batch: self.int(&s.batch, 1, 100_000, 500) as usize,
                    retry: retry.unwrap_or_default(),
                })
            }
        };
        let filter = SinkFilter {
            min_severity: self
                .choice(
                    &s.min_severity,
                    "severity",
                    &["info", "warning", "error", "critical"],
                )
                .and_then(|w| crate::compile::hir::Severity::from_word(&w)),
            rules: s.rules.map(Spanned::into_inner).unwrap_or_default(),
            kinds: match s.kinds {
                Some(k) => {
                    let span = k.span();
                    let kinds = k.into_inner();
                    for kind in &kinds {
                        let v = Some(Spanned::new(span.clone(), kind.clone()));
                        self.choice(&v, "alert kind", &["match", "timeout"]);
                    }
                    kinds
                }
                None => Vec::new(),
            },
        };
        (self.diagnostics.len() == before).then_some((kind, filter))
    }

    /// Every `{...}` in an alert topic template must be a known placeholder.
    fn topic_placeholders(&mut self, t: &Spanned<String>) {
        let known = crate::delivery::mqtt::PLACEHOLDERS;
        let text = t.get_ref();
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            let Some(close) = after.find('}') else { break };
            let name = &after[..close];
            if !known.contains(&name) {
                let i = self.error(
                    Code::E412,
                    t.span(),
                    format!("unknown placeholder `{{{name}}}` in the topic"),
                    "not a placeholder",
                );
                if let Some(best) = crate::lang::suggest::closest(name, known.iter().copied()) {
                    self.note(i, format!("did you mean `{{{best}}}`?"));
                }
                self.note(
                    i,
                    "the placeholders are {rule}, {name}, {key} and {severity}",
                );
            }
            rest = &after[close + 1..];
        }
    }

    fn url(&mut self, v: &Option<Spanned<String>>) {
        let Some(v) = v else { return };
        let u = v.get_ref();
        if !(u.starts_with("http://") || u.starts_with("https://")) {
            let i = self.error(
                Code::E412,
                v.span(),
                format!("invalid URL `{u}`"),
                "not an http(s) URL",
            );
            self.note(i, "write a full URL: \"https://alerts.example.com/tern\"");
        }
    }
}

/// Parses `"512KiB"`, `"1MiB"`, `"1MB"`, `"4096"`, `"2 MiB"`.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::compile::hir::Severity;
    use crate::lang::render;

    fn parse(text: &str) -> Result<Config, String> {
        let mut sources = Sources::new();
        let file = sources.add("tern.toml", text);
        Config::parse(file, text, Path::new("/etc/tern")).map_err(|d| render::to_text(&sources, &d))
    }

    #[test]
    fn defaults_without_a_file() {
        let c = Config::default();
        assert_eq!(c.qos, 1);
        assert!(c.broker.is_none());
        assert_eq!(c.embedded_broker.listen.to_string(), "127.0.0.1:1883");
        assert_eq!(c.admin.listen.to_string(), "127.0.0.1:9464");
        assert!(c.admin.enabled && c.admin.token.is_none() && !c.admin.listen_set);
        assert!(c.sink_names().contains(&"stdout".to_string()));
    }

    #[test]
    fn full_example_parses() {
        let text = include_str!("../examples/tern.toml");
        let c = parse(text).unwrap();
        let b = c.broker.as_ref().unwrap();
        assert_eq!(b.port, 8883);
        assert_eq!(b.protocol, Protocol::V311);
        assert!(!b.clean_session);
        assert_eq!(b.max_packet_size, 1 << 20);
        assert_eq!(
            b.tls.as_ref().unwrap().ca_file.as_deref(),
            Some(Path::new("/etc/tern/certs/ca.pem"))
        );
        let auth = b.auth.as_ref().unwrap();
        assert_eq!(
            auth.password.source,
            SecretSource::Env("TERN_MQTT_PASSWORD".into())
        );
        assert_eq!(c.rules, vec![PathBuf::from("/etc/tern/rules")]);
        let names: Vec<&str> = c.sinks.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["alerts_file", "console", "influx", "mqtt", "webhook"]
        );
        assert!(matches!(
            c.sink("webhook").unwrap().kind,
            SinkKind::Webhook(WebhookConfig { ref retry, .. }) if retry.max_attempts == 8
        ));
        assert_eq!(
            c.dead_letter.file.as_deref(),
            Some(Path::new("/etc/tern/dead-letter.jsonl"))
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let text =
            "[broker]\nhost = \"h\"\n[broker.auth]\nusername = \"u\"\npassword_file = \"pw\"\n";
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pw"), "hunter2\n").unwrap();
        let mut sources = Sources::new();
        let file = sources.add("tern.toml", text);
        let c = Config::parse(file, text, dir.path()).unwrap();
        let secret = c.secrets()[0].resolve().unwrap();
        assert_eq!(secrecy::ExposeSecret::expose_secret(&secret), "hunter2");
        assert!(!format!("{secret:?}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.check_secrets().is_empty());
    }

    #[test]
    fn unknown_key_has_location_and_suggestion() {
        let err = parse("[broker]\nhots = \"localhost\"\n").unwrap_err();
        insta::assert_snapshot!(err);
    }

    #[test]
    fn inline_password_is_refused() {
        let err =
            parse("[broker]\nhost = \"h\"\n[broker.auth]\nusername = \"u\"\npassword = \"x\"\n")
                .unwrap_err();
        insta::assert_snapshot!(err);
    }

    #[test]
    fn bad_values_are_all_reported() {
        let err = parse(
            r#"qos = 3
[broker]
protocol = "3.11"
keep_alive = "30 seconds"
max_packet_size = "1 MeB"
[sinks.ops]
type = "webhok"
[sinks.log]
type = "file"
url = "http://x"
[logging]
format = "jsn"
"#,
        )
        .unwrap_err();
        insta::assert_snapshot!(err);
    }

    #[test]
    fn wrong_type_and_missing_secret() {
        let err = parse("[broker]\nport = \"1883\"\n").unwrap_err();
        assert!(err.contains("E412"), "{err}");
        assert!(err.contains("tern.toml:2:8"), "{err}");
        let err = parse(
            "[sinks.db]\ntype = \"influx\"\nurl = \"http://i\"\norg = \"o\"\nbucket = \"b\"\n",
        )
        .unwrap_err();
        assert!(err.contains("missing `token_env` or `token_file`"), "{err}");
    }

    #[test]
    fn missing_env_secret_is_a_diagnostic() {
        let text = "[broker]\n[broker.auth]\nusername = \"u\"\npassword_env = \"TERN_TEST_SURELY_UNSET_VAR\"\n";
        let mut sources = Sources::new();
        let file = sources.add("tern.toml", text);
        let c = Config::parse(file, text, Path::new(".")).unwrap();
        let diags = c.check_secrets();
        let out = render::to_text(&sources, &diags);
        assert!(out.contains("E416"), "{out}");
        assert!(
            out.contains("TERN_TEST_SURELY_UNSET_VAR` is not set"),
            "{out}"
        );
        assert!(out.contains("tern.toml:4:16"), "{out}");
    }

    #[test]
    fn a_broker_on_loopback_gets_a_small_receive_buffer_unless_told_otherwise() {
        let buffer = |toml: &str| parse(toml).unwrap().broker.unwrap().receive_buffer;
        for host in ["localhost", "127.0.0.1", "127.0.1.1", "::1", "[::1]"] {
            assert_eq!(
                buffer(&format!("[broker]\nhost = \"{host}\"\n")),
                Some(LOOPBACK_RECEIVE_BUFFER),
                "{host}"
            );
        }
        assert_eq!(
            buffer("[broker]\n"),
            Some(LOOPBACK_RECEIVE_BUFFER),
            "localhost by default"
        );
        for host in ["broker.example.com", "10.0.0.5", "::2"] {
            assert_eq!(
                buffer(&format!("[broker]\nhost = \"{host}\"\n")),
                None,
                "{host}"
            );
        }
        assert_eq!(buffer("[broker]\nreceive_buffer = \"system\"\n"), None);
        assert_eq!(
            buffer("[broker]\nhost = \"10.0.0.5\"\nreceive_buffer = \"64KiB\"\n"),
            Some(64 << 10)
        );
        assert_eq!(buffer("[broker]\nreceive_buffer = 8192\n"), Some(8192));
        for bad in ["\"1KiB\"", "\"1GiB\"", "\"auto\"", "true"] {
            let err = parse(&format!("[broker]\nreceive_buffer = {bad}\n")).unwrap_err();
            assert!(err.contains("error[E412]"), "{bad}: {err}");
            assert!(err.contains("tern.toml:2:18"), "{bad}: {err}");
            assert!(
                err.contains("\"system\" to let the kernel size it"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn admin_beyond_loopback_needs_a_token() {
        let c = parse("[admin]\nlisten = \"127.0.0.1:9500\"\n").unwrap();
        assert_eq!(c.admin.listen.port(), 9500);
        assert!(c.admin.listen_set);
        let err = parse("[admin]\nlisten = \"0.0.0.0:9464\"\n").unwrap_err();
        assert!(err.contains("error[E417]"), "{err}");
        assert!(err.contains("tern.toml:2:10"), "{err}");
        assert!(err.contains("set `token_env` or `token_file`"), "{err}");
        let c = parse("[admin]\nlisten = \"0.0.0.0:9464\"\ntoken_env = \"TERN_ADMIN_TOKEN\"\n")
            .unwrap();
        assert_eq!(
            c.admin.token.as_ref().map(|t| &t.source),
            Some(&SecretSource::Env("TERN_ADMIN_TOKEN".into()))
        );
        // The token is a secret like the others: checked at startup, never inline.
        assert_eq!(c.secrets().len(), 1);
        let err = parse("[admin]\ntoken = \"hunter2\"\n").unwrap_err();
        assert!(err.contains("use `token_env` or `token_file`"), "{err}");
        // Turned off, it needs nothing.
        assert!(parse("[admin]\nenabled = false\nlisten = \"[::]:9464\"\n").is_ok());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Some(1 << 20));
        assert_eq!(parse_size("512 KiB"), Some(512 << 10));
        assert_eq!(parse_size("1000"), Some(1000));
        assert_eq!(parse_size("1 MeB"), None);
        let c = parse("[broker]\nmax_packet_size = 65536\n").unwrap();
        assert_eq!(c.broker.unwrap().max_packet_size, 65536);
    }

    #[test]
    fn sink_filters_and_outbox_settings() {
        let c = parse(
            "outbox_capacity = 500\ndrain_timeout = \"3s\"\nstate_sync = false\n\
             [sinks.pager]\ntype = \"stdout\"\nmin_severity = \"error\"\n\
             rules = [\"furnace_drift\"]\nkinds = [\"match\"]\n",
        )
        .unwrap();
        assert_eq!(c.outbox_capacity, 500);
        assert_eq!(c.drain_timeout, Duration::from_secs(3));
        assert!(!c.state_sync);
        let f = &c.sink("pager").unwrap().filter;
        assert!(f.accepts("furnace_drift", Severity::Critical, "match"));
        assert!(!f.accepts("furnace_drift", Severity::Warning, "match"));
        assert!(!f.accepts("furnace_drift", Severity::Error, "timeout"));
        assert!(!f.accepts("congestion", Severity::Critical, "match"));
        let err = parse("[sinks.pager]\ntype = \"stdout\"\nkinds = [\"timout\"]\n").unwrap_err();
        assert!(err.contains("unknown alert kind `timout`"), "{err}");
        assert!(err.contains("did you mean `timeout`?"), "{err}");
        let err =
            parse("[sinks.pager]\ntype = \"stdout\"\nmin_severity = \"fatal\"\n").unwrap_err();
        assert!(err.contains("unknown severity `fatal`"), "{err}");
    }

    #[test]
    fn mqtt_topic_placeholders_are_checked() {
        assert!(parse("[sinks.m]\ntype = \"mqtt\"\ntopic = \"alerts/{rule}/{key}\"\n").is_ok());
        let err =
            parse("[sinks.m]\ntype = \"mqtt\"\ntopic = \"alerts/{rul}/{key}\"\n").unwrap_err();
        assert!(err.contains("unknown placeholder `{rul}`"), "{err}");
        assert!(err.contains("did you mean `{rule}`?"), "{err}");
    }

    #[test]
    fn sink_names_add_configured_ones() {
        let c = parse("[sinks.ops_room]\ntype = \"stdout\"\n").unwrap();
        let names = c.sink_names();
        assert!(names.contains(&"ops_room".to_string()));
        assert!(names.contains(&"webhook".to_string()));
    }
}
