//! Requests to a running pipeline from outside its engine thread: `SIGHUP`, the rule-file
//! watcher and the admin API all go through a [`Handle`].
//!
//! Requests travel on the engine's own queue, so one is answered between two batches of
//! messages: a reload never cuts a batch in half, and an answer describes the state after
//! every message before it.

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// What the engine thread is asked.
#[derive(Debug)]
pub enum Request {
    /// Load the rule files and device profiles again and, if they check, run them.
    Reload {
        /// What triggered it, for the log (`SIGHUP`, `watch`, `api`).
        cause: &'static str,
        /// Where the answer goes.
        reply: oneshot::Sender<ReloadOutcome>,
    },
    /// The rules running now.
    Rules {
        /// Where the answer goes.
        reply: oneshot::Sender<Vec<RuleInfo>>,
    },
    /// The partial matches one key holds for one rule.
    Key {
        /// Rule name.
        rule: String,
        /// The key as alerts show it (`key_text`: the value of a one-field key, `a=1,b=2`).
        key: String,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<KeyInfo, KeyError>>,
    },
}

/// How a reload ended.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ReloadOutcome {
    /// The new rule set runs.
    Reloaded(ReloadReport),
    /// The rule set has errors; the running one continues.
    Rejected {
        /// The diagnostics, rendered as `tern check` prints them (without colour).
        diagnostics: String,
        /// How many of them are errors.
        errors: usize,
    },
    /// The files could not be read; the running rule set continues.
    Failed {
        /// Why.
        error: String,
    },
}

/// What a successful reload changed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReloadReport {
    /// Rules that are new.
    pub added: Vec<String>,
    /// Rules that are gone (their state is dropped).
    pub removed: Vec<String>,
    /// Rules whose compiled form changed (they start afresh).
    pub changed: Vec<String>,
    /// Rules that kept their partial matches.
    pub kept: Vec<String>,
    /// Keys holding state after the reload.
    pub keys: u64,
    /// How long the engine was paused, in milliseconds.
    pub paused_ms: u64,
}

/// A running rule, for `GET /rules`.
#[derive(Debug, Clone, Serialize)]
pub struct RuleInfo {
    /// Name.
    pub name: String,
    /// The file that defines it.
    pub file: String,
    /// The line of its `rule` keyword.
    pub line: u32,
    /// Streams it reads.
    pub streams: Vec<String>,
    /// Sinks its alerts go to.
    pub sinks: Vec<String>,
    /// Keys holding partial matches now.
    pub keys: u64,
    /// Partial matches alive now.
    pub partial_matches: u64,
    /// Alerts emitted since the rule started running (this process, or its last reload).
    pub alerts: u64,
    /// Fingerprint of the compiled rule: it changes exactly when a reload drops its state.
    pub fingerprint: String,
}

/// One key's partial matches, for `GET /rules/{name}/keys/{key}`.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInfo {
    /// Rule name.
    pub rule: String,
    /// The key, as asked.
    pub key: String,
    /// Partial matches, oldest first.
    pub partial_matches: Vec<serde_json::Value>,
    /// Matches complete but held back until earlier-started partial matches are decided.
    pub pending_matches: usize,
    /// Events held for the partial matches.
    pub buffered_events: usize,
}

/// Why a key query has no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// No rule of that name runs.
    #[error("no rule named `{0}`")]
    NoRule(String),
    /// The rule holds nothing for that key.
    #[error("rule `{rule}` holds no partial match for key `{key}`")]
    NoKey {
        /// Rule name.
        rule: String,
        /// The key asked for.
        key: String,
    },
}

/// The pipeline has stopped (or is stopping) and answers no more requests.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the pipeline is not running")]
pub struct Stopped;

/// Sends requests to a running pipeline; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Request>,
}

impl Handle {
    /// A handle and the receiving end the pipeline serves.
    pub fn new() -> (Handle, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(16);
        (Handle { tx }, rx)
    }

    /// Reloads the rules; `cause` is logged.
    pub async fn reload(&self, cause: &'static str) -> Result<ReloadOutcome, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Reload { cause, reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// The rules running now.
    pub async fn rules(&self) -> Result<Vec<RuleInfo>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Request::Rules { reply })
            .await
            .map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// The partial matches of `key` in `rule`.
    pub async fn key(&self, rule: &str, key: &str) -> Result<Result<KeyInfo, KeyError>, Stopped> {
        let (reply, answer) = oneshot::channel();
        let request = Request::Key {
            rule: rule.to_owned(),
            key: key.to_owned(),
            reply,
        };
        self.tx.send(request).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }
}
