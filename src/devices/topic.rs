//! Topic templates: an MQTT topic filter whose wildcard levels have names.
//!
//! `city/{district}/camera/{camera_id}/flow` subscribes to `city/+/camera/+/flow` and captures
//! the two `+` levels as `district` and `camera_id`. A last level `{rest*}` subscribes with `#`
//! and captures everything after the levels before it (possibly several levels, or nothing).

use std::ops::Range;

/// One level of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Level {
    /// Must equal the topic's level.
    Literal(Box<str>),
    /// Any single level, captured under the capture with this index.
    Capture(usize),
    /// The rest of the topic (last level only), captured under this index.
    Rest(usize),
}

/// A capture of a template: its name and where it is written in the template text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CaptureDef {
    /// Name, as fields and rules see it.
    pub name: String,
    /// Byte range of `{name}` in the template text.
    pub range: Range<usize>,
    /// True for a final `{name*}` (`#`).
    pub rest: bool,
}

/// A compiled topic template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    levels: Vec<Level>,
    captures: Vec<CaptureDef>,
}

/// A problem in a template: where in its text, what, and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError {
    /// Byte range in the template text.
    pub range: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
    /// An earlier place that the error refers to (the first of two duplicate captures).
    pub related: Option<Range<usize>>,
}

impl TemplateError {
    fn new(range: Range<usize>, message: impl Into<String>) -> TemplateError {
        TemplateError {
            range,
            message: message.into(),
            hint: None,
            related: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> TemplateError {
        self.hint = Some(hint.into());
        self
    }
}

/// The captured levels of one topic, as byte ranges into it: matching allocates no strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Captures<'t> {
    topic: &'t str,
    ranges: Vec<Range<usize>>,
}

impl<'t> Captures<'t> {
    /// The value of capture `index` (in template order).
    pub fn get(&self, index: usize) -> Option<&'t str> {
        let range = self.ranges.get(index)?.clone();
        self.topic.get(range)
    }

    /// Every captured value, in template order.
    pub fn values(&self) -> impl Iterator<Item = &'t str> + '_ {
        self.ranges.iter().filter_map(|r| self.topic.get(r.clone()))
    }

    /// The whole topic.
    pub fn topic(&self) -> &'t str {
        self.topic
    }

    /// Number of captures.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when the template captures nothing.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }
}

/// True for a name rules can use: ASCII letter or `_`, then letters, digits, `_`.
pub fn is_ident(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl TopicTemplate {
    /// Compiles a template, reporting every problem at once.
    pub fn parse(text: &str) -> Result<TopicTemplate, Vec<TemplateError>> {
        let mut errors = Vec::new();
        if text.is_empty() {
            errors.push(
                TemplateError::new(0..0, "empty topic template")
                    .hint("write the topic with a `{name}` for each varying level, e.g. `city/{district}/camera/{camera_id}/flow`"),
            );
            return Err(errors);
        }
        if text.len() > 65_535 {
            errors.push(TemplateError::new(
                0..text.len(),
                "an MQTT topic is at most 65535 bytes",
            ));
        }
        let mut levels = Vec::new();
        let mut captures: Vec<CaptureDef> = Vec::new();
        let count = text.split('/').count();
        let mut start = 0;
        for (i, level) in text.split('/').enumerate() {
            let range = start..start + level.len();
            start = range.end + 1;
            let last = i + 1 == count;
            match parse_level(level, range.clone(), last) {
                Ok(Parsed::Literal) => levels.push(Level::Literal(level.into())),
                Ok(Parsed::Capture { name, rest }) => {
                    if let Some(first) = captures.iter().find(|c| c.name == name) {
                        let mut e = TemplateError::new(
                            range.clone(),
                            format!("capture `{name}` appears twice"),
                        )
                        .hint("give each captured level its own name");
                        e.related = Some(first.range.clone());
                        errors.push(e);
                        continue;
                    }
                    let index = captures.len();
                    captures.push(CaptureDef {
                        name: name.to_owned(),
                        range,
                        rest,
                    });
                    levels.push(if rest {
                        Level::Rest(index)
                    } else {
                        Level::Capture(index)
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(TopicTemplate {
                text: text.to_owned(),
                levels,
                captures,
            })
        } else {
            Err(errors)
        }
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The captures in template order.
    pub fn captures(&self) -> &[CaptureDef] {
        &self.captures
    }

    /// Index of a capture by name.
    pub fn capture_index(&self, name: &str) -> Option<usize> {
        self.captures.iter().position(|c| c.name == name)
    }

    /// The MQTT subscription filter: captures become `+`, a rest capture `#`.
    pub fn subscription_filter(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                out.push('/');
            }
            match level {
                Level::Literal(l) => out.push_str(l),
                Level::Capture(_) => out.push('+'),
                Level::Rest(_) => out.push('#'),
            }
        }
        out
    }

    /// Matches a concrete topic (MQTT filter semantics) and returns its captures.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Captures<'t>> {
        // MQTT: a filter starting with a wildcard does not match topics starting with `$`.
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Literal(_))) {
            return None;
        }
        let mut ranges = Vec::with_capacity(self.captures.len());
        // `None` once every level of the topic has been consumed.
        let mut pos = Some(0);
        for level in &self.levels {
            if let Level::Rest(_) = level {
                // `a/#` also matches `a` itself: the rest is then empty.
                let from = pos.unwrap_or(topic.len());
                ranges.push(from..topic.len());
                return Some(Captures { topic, ranges });
            }
            let from = pos?;
            let end = topic[from..].find('/').map_or(topic.len(), |i| from + i);
            match level {
                Level::Literal(l) => {
                    if topic[from..end] != **l {
                        return None;
                    }
                }
                Level::Capture(_) => ranges.push(from..end),
                Level::Rest(_) => {}
            }
            pos = (end < topic.len()).then_some(end + 1);
        }
        pos.is_none().then_some(Captures { topic, ranges })
    }
}

enum Parsed<'a> {
    Literal,
    Capture { name: &'a str, rest: bool },
}

fn parse_level(level: &str, range: Range<usize>, last: bool) -> Result<Parsed<'_>, TemplateError> {
    let at = |i: usize, len: usize| range.start + i..range.start + i + len;
    if let Some(i) = level.find('+') {
        return Err(TemplateError::new(at(i, 1), "`+` written literally")
            .hint("name the level instead: `{name}` matches any one level and captures it"));
    }
    if let Some(i) = level.find('#') {
        return Err(
            TemplateError::new(at(i, 1), "`#` written literally").hint(
                "name the levels instead: a last level `{name*}` matches the rest of the topic and captures it",
            ),
        );
    }
    if let Some(i) = level.find('\0') {
        return Err(TemplateError::new(at(i, 1), "a topic cannot contain NUL"));
    }
    let Some(open) = level.find('{') else {
        return match level.find('}') {
            Some(i) => Err(TemplateError::new(at(i, 1), "`}` without a matching `{`")
                .hint("a capture is written `{name}` and fills a whole level")),
            None => Ok(Parsed::Literal),
        };
    };
    let Some(close) = level.find('}') else {
        return Err(
            TemplateError::new(at(open, level.len() - open), "unclosed `{`")
                .hint("close the capture: `{name}`"),
        );
    };
    if open != 0 || close + 1 != level.len() || close < open {
        return Err(TemplateError::new(
            range.clone(),
            "a capture must be a whole topic level",
        )
        .hint("MQTT matches whole levels only: write the level as `{name}` and split the value in a decoder script if needed"));
    }
    let inner = &level[1..close];
    let (name, rest) = match inner.strip_suffix('*') {
        Some(name) => (name, true),
        None => (inner, false),
    };
    if inner.contains(['{', '}']) {
        return Err(TemplateError::new(range, "nested braces in a capture"));
    }
    if !is_ident(name) {
        let what = if name.is_empty() {
            "a capture needs a name".to_owned()
        } else {
            format!("`{name}` is not a valid capture name")
        };
        return Err(TemplateError::new(range, what)
            .hint("a capture name is a letter or `_` followed by letters, digits or `_`"));
    }
    if rest && !last {
        return Err(
            TemplateError::new(range, format!("`{{{name}*}}` must be the last level"))
                .hint("a rest capture (`#` in MQTT) takes every remaining level, so nothing can follow it"),
        );
    }
    Ok(Parsed::Capture { name, rest })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn t(text: &str) -> TopicTemplate {
        TopicTemplate::parse(text).unwrap()
    }

    fn caps(template: &str, topic: &str) -> Option<Vec<String>> {
        t(template)
            .matches(topic)
            .map(|c| c.values().map(str::to_owned).collect())
    }

    #[test]
    fn captures_named_levels() {
        let tpl = t("city/{district}/camera/{camera_id}/flow");
        assert_eq!(tpl.subscription_filter(), "city/+/camera/+/flow");
        assert_eq!(
            caps(
                "city/{district}/camera/{camera_id}/flow",
                "city/north/camera/cam-17/flow"
            ),
            Some(vec!["north".into(), "cam-17".into()])
        );
        assert_eq!(tpl.capture_index("camera_id"), Some(1));
        assert_eq!(tpl.captures()[1].range, 23..34);
    }

    #[test]
    fn rejects_other_topics() {
        let tpl = "city/{district}/camera/{camera_id}/flow";
        assert_eq!(caps(tpl, "city/north/camera/cam-17"), None);
        assert_eq!(caps(tpl, "city/north/camera/cam-17/flow/x"), None);
        assert_eq!(caps(tpl, "city/north/loop/cam-17/flow"), None);
        assert_eq!(caps(tpl, "town/north/camera/cam-17/flow"), None);
        // `+` matches an empty level, as in MQTT.
        assert_eq!(
            caps(tpl, "city//camera/c/flow"),
            Some(vec![String::new(), "c".into()])
        );
    }

    #[test]
    fn rest_capture_is_mqtt_hash() {
        let tpl = t("plant/{site}/{rest*}");
        assert_eq!(tpl.subscription_filter(), "plant/+/#");
        assert_eq!(
            caps("plant/{site}/{rest*}", "plant/a/b/c"),
            Some(vec!["a".into(), "b/c".into()])
        );
        // `plant/+/#` matches `plant/a` too (MQTT: `#` includes the parent level).
        assert_eq!(
            caps("plant/{site}/{rest*}", "plant/a"),
            Some(vec!["a".into(), String::new()])
        );
        assert_eq!(caps("plant/{site}/{rest*}", "plant"), None);
        assert_eq!(caps("{all*}", "x/y"), Some(vec!["x/y".into()]));
    }

    #[test]
    fn dollar_topics_need_a_literal_first_level() {
        assert_eq!(caps("{a}/x", "$SYS/x"), None);
        assert_eq!(caps("{a*}", "$SYS/x"), None);
        assert_eq!(caps("$SYS/{a}", "$SYS/x"), Some(vec!["x".into()]));
    }

    fn errs(text: &str) -> Vec<(Range<usize>, String)> {
        TopicTemplate::parse(text)
            .unwrap_err()
            .into_iter()
            .map(|e| (e.range, e.message))
            .collect()
    }

    #[test]
    fn reports_every_bad_level() {
        assert_eq!(
            errs("city/{district/camera/+/flow/#"),
            vec![
                (5..14, "unclosed `{`".to_owned()),
                (22..23, "`+` written literally".to_owned()),
                (29..30, "`#` written literally".to_owned()),
            ]
        );
        let e = TopicTemplate::parse("a/{id}/b/{id}").unwrap_err();
        assert_eq!(e[0].message, "capture `id` appears twice");
        assert_eq!(e[0].range, 9..13);
        assert_eq!(e[0].related, Some(2..6));
        assert_eq!(
            errs("a/cam-{id}")[0].1,
            "a capture must be a whole topic level"
        );
        assert_eq!(errs("a/{rest*}/b")[0].1, "`{rest*}` must be the last level");
        assert_eq!(errs("a/{}")[0].1, "a capture needs a name");
        assert_eq!(errs("a/{1x}")[0].1, "`1x` is not a valid capture name");
        assert_eq!(errs("a/x}")[0].1, "`}` without a matching `{`");
        assert_eq!(errs("")[0].1, "empty topic template");
    }
}
