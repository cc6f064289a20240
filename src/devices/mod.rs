//! Device profiles (`devices/*.toml`): one profile maps an MQTT topic template to a typed
//! stream, and decodes each message on it into an [`Event`].
//!
//! Stages, each with its own types:
//! - [`profile`]: the TOML as written (serde, unknown keys rejected), with byte spans;
//! - [`load`]: validation into a [`Profile`]; every problem is a [`Diagnostic`] (E400-E404);
//! - [`topic`], [`path`], [`time`], [`script`]: the compiled parts a profile is made of;
//! - [`decode`]: one message to one event, or a [`DecodeError`] with a stable reason.
//!
//! The format is documented in `docs/devices.md`.

pub mod decode;
pub mod load;
pub mod path;
mod profile;
pub mod script;
pub mod time;
pub mod topic;

use std::sync::Arc;

use serde_json::Value as Json;

pub use decode::{DecodeError, FieldSource, ProfileField};
pub use load::{load_dir, load_file, load_source};
pub use topic::{Captures, TopicTemplate};

use crate::compile::schema::StreamSchema;
use crate::event::{Event, Value};
use crate::lang::FileId;
use crate::lang::span::Span;
use script::ScriptDecoder;

/// Whether retained messages (a broker's last value, replayed on subscribe) become events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retained {
    /// Dead-letter them with reason `retained_ignored` (the default): a retained reading is
    /// old news and its time would usually be late.
    Ignore,
    /// Decode them like any message.
    Accept,
}

/// How the payload becomes the document fields are read from.
#[derive(Clone, Debug)]
enum Decoder {
    /// The payload is the document.
    Json,
    /// The payload goes through a rhai script; its result is the document.
    Script(Arc<ScriptDecoder>),
}

/// A loaded device profile: one MQTT-fed stream.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Profile name (`name` in the file, else the file name without `.toml`).
    pub name: String,
    /// The stream rules read (`stream` in the file).
    pub stream_name: String,
    /// Free text from the file.
    pub description: Option<String>,
    /// The compiled topic template.
    pub topic: TopicTemplate,
    /// Fields in schema order: captures not declared in `[fields]` first, then `[fields]` in
    /// file order.
    pub fields: Vec<ProfileField>,
    /// Retained message policy.
    pub retained: Retained,
    /// The profile file in the `Sources` it was loaded into.
    pub file: FileId,
    /// Where the profile's name is written (empty at the file start when it comes from the
    /// file name).
    name_span: Span,
    schema: StreamSchema,
    decoder: Decoder,
    stream_index: u32,
}

impl Profile {
    /// The stream this profile declares, for name resolution and type checking.
    pub fn schema(&self) -> &StreamSchema {
        &self.schema
    }

    /// The MQTT filter to subscribe to: `city/+/camera/+/flow`.
    pub fn subscription_filter(&self) -> String {
        self.topic.subscription_filter()
    }

    /// The captures of `topic` when this profile's template matches it.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        self.topic.matches(topic)
    }

    /// True for a decoder script profile (`format = "script"`).
    pub fn is_script(&self) -> bool {
        matches!(self.decoder, Decoder::Script(_))
    }

    /// The `stream` index events get. [`load_dir`] numbers profiles in load order; a program
    /// that numbers its streams differently sets its own with [`Profile::set_stream_index`].
    pub fn stream_index(&self) -> u32 {
        self.stream_index
    }

    /// Sets the `stream` index of the events this profile decodes.
    pub fn set_stream_index(&mut self, index: u32) {
        self.stream_index = index;
    }

    /// Decodes one MQTT message into an event. `retained` is the message's retain flag.
    pub fn decode(
        &self,
        topic: &str,
        payload: &[u8],
        retained: bool,
    ) -> Result<Event, DecodeError> {
        if retained && self.retained == Retained::Ignore {
            return Err(DecodeError::RetainedIgnored);
        }
        let captures = self
            .topic
            .matches(topic)
            .ok_or_else(|| DecodeError::TopicMismatch {
                topic: topic.to_owned(),
                template: self.topic.as_str().to_owned(),
            })?;
        self.decode_matched(&captures, payload, retained)
    }

    /// Decodes a message whose topic was already matched (by [`route`]), without matching
    /// it again.
    pub fn decode_matched(
        &self,
        captures: &Captures<'_>,
        payload: &[u8],
        retained: bool,
    ) -> Result<Event, DecodeError> {
        if retained && self.retained == Retained::Ignore {
            return Err(DecodeError::RetainedIgnored);
        }
        let json: Json = serde_json::from_slice(payload).map_err(|e| DecodeError::InvalidJson {
            detail: e.to_string(),
        })?;
        let (doc, from_script) = match &self.decoder {
            Decoder::Json => (json, false),
            Decoder::Script(script) => (script.run(&json, self.topic.captures(), captures)?, true),
        };
        // On the stack: the event copies them into its own allocation.
        let mut values: smallvec::SmallVec<[Value; 16]> = smallvec::SmallVec::new();
        for field in &self.fields {
            let value = match &field.source {
                FieldSource::Capture(i) => field.convert_level(captures.get(*i).unwrap_or(""))?,
                FieldSource::Path(path) => match path.lookup(&doc) {
                    None | Some(Json::Null) if field.optional => Value::Null,
                    None | Some(Json::Null) => {
                        return Err(DecodeError::MissingField {
                            field: field.name.clone(),
                            path: path.as_str().to_owned(),
                            from_script,
                        });
                    }
                    Some(v) => field.convert_json(v)?,
                },
            };
            values.push(value);
        }
        let time = match values.get(self.schema.time_field) {
            Some(Value::Timestamp(t)) => *t,
            // The loader guarantees a required timestamp field; this is unreachable, but a
            // message must never panic the pipeline.
            _ => {
                return Err(DecodeError::MissingField {
                    field: self
                        .schema
                        .fields
                        .get(self.schema.time_field)
                        .map_or_else(String::new, |f| f.name.clone()),
                    path: String::new(),
                    from_script,
                });
            }
        };
        Ok(Event::new(self.stream_index, time, values))
    }
}

/// The profile that claims `topic`: the first whose template matches, in the order of
/// `profiles` ([`load_dir`] sorts by file name), with the topic's captures.
pub fn route<'t>(profiles: &[Profile], topic: &'t str) -> Option<(usize, Captures<'t>)> {
    profiles
        .iter()
        .enumerate()
        .find_map(|(i, p)| p.matches(topic).map(|c| (i, c)))
}

#[cfg(test)]
mod tests;
