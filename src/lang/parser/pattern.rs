//! Patterns: elements joined by links, alternatives, steps, groups, negated steps and
//! quantifiers.

use super::lex::{Peek, Tok, is_reserved};
use super::{Cx, PResult};
use crate::lang::ast::{
    Atom, Contiguity, Element, Expr, Group, Ident, Link, NegatedStep, Pattern, Quantifier,
    QuantifierForm, Step,
};
use crate::lang::codes::Code;
use crate::lang::span::{Span, Spanned};

impl<'a> Cx<'a> {
    /// `pattern = element { link element }`
    pub(super) fn parse_pattern(&self, i: &'a str, after: &str) -> PResult<'a, Pattern> {
        let (mut i, first) = self.parse_element(i, Some(after))?;
        let mut rest: Vec<(Link, Element)> = Vec::new();
        loop {
            let (r, link) = self.parse_link(i)?;
            let Some(link) = link else { break };
            let link_text = self.text(link.span).to_string();
            let (r, element) = if link.negated {
                self.parse_negated(r, &link_text)?
            } else {
                self.parse_element(r, None)?
            };
            rest.push((link, element));
            i = r;
        }
        let span = rest
            .last()
            .map_or(first.span, |(_, e)| first.span.to(e.span));
        Ok((i, Pattern { first, rest, span }))
    }

    /// `link = contiguity [ "within" duration ] | negation`, up to the negated step; `None`
    /// when no link comes next (the pattern ends).
    fn parse_link(&self, i: &'a str) -> PResult<'a, Option<Link>> {
        let next = self.peek(i);
        let start = self.peek_span(&next);
        let (r, contiguity, negated) = match next.tok {
            Tok::Word("next") => (next.after, Contiguity::Strict, false),
            Tok::Word("followed") => {
                let (r, _) = self.expect_word(next.after, "by", "`by` after `followed`")?;
                match self.eat_word(r, "any") {
                    Some((r, _)) => (r, Contiguity::NonDeterministic, false),
                    None => (r, Contiguity::Relaxed, false),
                }
            }
            Tok::Punct("->") => match self.eat_word(next.after, "not") {
                Some((r, _)) => (r, Contiguity::Relaxed, true),
                None => (next.after, Contiguity::Relaxed, false),
            },
            Tok::Word("not") => {
                let what = self.peek(next.after);
                if what.is_word("next") {
                    (what.after, Contiguity::Strict, true)
                } else if what.is_word("followed") {
                    let (r, _) = self.expect_word(what.after, "by", "`by` after `not followed`")?;
                    (r, Contiguity::Relaxed, true)
                } else {
                    let d = self
                        .unexpected(next.after, "`next` or `followed by` after `not`")
                        .with_note(
                            "a negation is written `not next stream` or `not followed by stream`",
                        );
                    return self.fail(next.after, d);
                }
            }
            _ => return Ok((i, None)),
        };
        let mut span = start.to(Span::new(self.off(r), self.off(r)));
        let mut end = r;
        let mut within = None;
        if !negated && let Some((r, _)) = self.eat_word(end, "within") {
            let (r, bound) = self.parse_duration(r, "`within`")?;
            span = span.to(bound.span);
            within = Some(bound);
            end = r;
        }
        Ok((
            end,
            Some(Link {
                contiguity,
                negated,
                within,
                span,
            }),
        ))
    }

    /// `element = atom { "|" atom }`. `start` is set for the first element of a pattern and
    /// names what the pattern follows.
    fn parse_element(&self, i: &'a str, start: Option<&str>) -> PResult<'a, Element> {
        let (mut i, first) = self.parse_atom(i, start)?;
        let mut span = atom_span(&first);
        let mut alternatives = vec![first];
        loop {
            let bar = self.peek(i);
            if !bar.is_punct("|") {
                break;
            }
            if bar.after.starts_with('|') {
                let d = self
                    .error(
                        Code::E101,
                        "`||` is not an operator",
                        self.span(bar.at, &bar.after[1..]),
                        "not an operator",
                    )
                    .with_note(
                        "combine conditions with `or`; a single `|` separates alternative steps",
                    );
                return self.fail(bar.at, d);
            }
            let (r, atom) = self.parse_atom(bar.after, None)?;
            span = span.to(atom_span(&atom));
            alternatives.push(atom);
            i = r;
        }
        Ok((i, Element { alternatives, span }))
    }

    /// `atom = step | group`
    fn parse_atom(&self, i: &'a str, start: Option<&str>) -> PResult<'a, Atom> {
        let next = self.peek(i);
        let expected = match start {
            Some(after) => format!("a step (`name: stream`) after {after}"),
            None => "a step (`name: stream`) or a group".to_string(),
        };
        match next.tok {
            Tok::Punct("(") => self.parse_group(next).map(|(r, g)| (r, Atom::Group(g))),
            Tok::Word(w) => {
                let colon = self.peek(next.after);
                let span = self.peek_span(&next);
                if colon.is_punct(":") {
                    if is_reserved(w) {
                        self.report(self.reserved_as_name(w, span, "a step name"));
                    }
                    let name = Spanned::new(span, w.to_string());
                    return self
                        .parse_step(name, colon.after)
                        .map(|(r, s)| (r, Atom::Step(s)));
                }
                if w == "not" {
                    let d = if start.is_some() {
                        self.error(
                            Code::E301,
                            "a pattern cannot start with a negation",
                            span,
                            "nothing comes before this negation",
                        )
                        .with_note("a negation forbids an event after a step: `a: s not followed by t`; to detect an absence, write `a: s -> not t` and a `within` clause")
                    } else {
                        self.unexpected(i, &expected)
                            .with_note("write the negation as the link itself: `not next s` or `not followed by s`")
                    };
                    return self.fail(i, d);
                }
                if !is_reserved(w) {
                    return self
                        .parse_unnamed_step(next, w)
                        .map(|(r, s)| (r, Atom::Step(s)));
                }
                self.fail(i, self.unexpected(i, &expected))
            }
            _ => self.fail(i, self.unexpected(i, &expected)),
        }
    }

    /// `step = ident ":" ident [ quantifier ] [ "where" expr ] [ "until" expr ]`, from the
    /// stream (the name and `:` are read).
    fn parse_step(&self, name: Ident, i: &'a str) -> PResult<'a, Step> {
        let (i, stream) = self.parse_name(i, "a stream name after `:`", &[])?;
        self.parse_step_rest(name, stream, i)
    }

    /// A step written without a name (E116): read as if it were named after its stream, so
    /// the rest of the rule still parses.
    fn parse_unnamed_step(&self, stream: Peek<'a>, w: &str) -> PResult<'a, Step> {
        let span = self.peek_span(&stream);
        let stream_ident = Spanned::new(span, w.to_string());
        let name = Spanned::new(
            Span::new(span.start as usize, span.start as usize),
            w.to_string(),
        );
        let (rest, step) = self.parse_step_rest(name, stream_ident, stream.after)?;
        let written = self.text(step.span);
        let hint = if written.len() <= 60 && !written.contains('\n') {
            format!("name the step to refer to its events: `name: {written}`")
        } else {
            format!("name the step to refer to its events: `name: {w} ...`")
        };
        self.report(
            self.error(
                Code::E116,
                "step without a name",
                span,
                "this step needs a name",
            )
            .with_note(hint),
        );
        Ok((rest, step))
    }

    /// What follows a step's stream: quantifier, condition, loop end.
    fn parse_step_rest(&self, name: Ident, stream: Ident, i: &'a str) -> PResult<'a, Step> {
        let (i, quantifier) = self.parse_quantifier(i)?;
        let i = match quantifier {
            Some(_) => i,
            None => self.stray_modifier(i),
        };
        let mut span = name.span.to(stream.span);
        if let Some(q) = &quantifier {
            span = span.to(q.span);
        }
        let (i, condition) = self.opt_condition(i, "where")?;
        let (i, until) = self.opt_condition(i, "until")?;
        for e in condition.iter().chain(until.iter()) {
            span = span.to(e.span);
        }
        let next = self.peek(i);
        if next.is_word("where") {
            let note = if until.is_some() {
                "`where` comes before `until`: `name: stream{2,} where condition until stop`"
            } else {
                "a step has one `where`; join the conditions with `and`"
            };
            let d = self
                .unexpected(i, "a link or the next clause")
                .with_note(note);
            return self.fail(i, d);
        }
        if next.is_word("until") && until.is_some() {
            let d = self
                .unexpected(i, "a link or the next clause")
                .with_note("a loop has one `until`; join the conditions with `or`");
            return self.fail(i, d);
        }
        Ok((
            i,
            Step {
                name,
                stream,
                quantifier,
                condition,
                until,
                span,
            },
        ))
    }

    /// `[ kw expr ]` for `where` and `until`.
    fn opt_condition(&self, i: &'a str, kw: &str) -> PResult<'a, Option<Expr>> {
        match self.eat_word(i, kw) {
            Some((r, _)) => {
                let (r, e) = self.parse_expr(r, &format!("`{kw}`"))?;
                Ok((r, Some(e)))
            }
            None => Ok((i, None)),
        }
    }

    /// `consecutive`, `any` or `greedy` after a step with no quantifier: reported (E112) and
    /// skipped.
    fn stray_modifier(&self, i: &'a str) -> &'a str {
        let next = self.peek(i);
        match next.tok {
            Tok::Word(w @ ("consecutive" | "any" | "greedy")) => {
                self.report(
                    self.error(
                        Code::E112,
                        format!("`{w}` without a quantifier"),
                        self.peek_span(&next),
                        format!("`{w}` applies to a loop"),
                    )
                    .with_note(format!(
                        "add a count before it: `name: stream{{3}} {w}` or `name: stream+ {w}`"
                    )),
                );
                next.after
            }
            _ => i,
        }
    }

    /// `quantifier = count [ "?" ] [ inner ] [ "greedy" ]`, if one comes next.
    pub(super) fn parse_quantifier(&self, i: &'a str) -> PResult<'a, Option<Quantifier>> {
        let next = self.peek(i);
        let start = self.peek_span(&next);
        let (mut r, min, max, form, mut reluctant) = match next.tok {
            Tok::Punct("{") => {
                let (r, (min, max)) = self.parse_braces(next)?;
                (r, min, max, QuantifierForm::Braces, false)
            }
            Tok::Punct("+") => (next.after, 1, None, QuantifierForm::Plus, false),
            Tok::Punct("*") => (next.after, 0, None, QuantifierForm::Star, false),
            Tok::Punct("?") => (next.after, 0, Some(1), QuantifierForm::Optional, false),
            // `??` is one token elsewhere (null coalescing); here it is `?` made reluctant.
            Tok::Punct("??") => (next.after, 0, Some(1), QuantifierForm::Optional, true),
            _ => return Ok((i, None)),
        };
        let mut span = start.to(Span::new(self.off(r), self.off(r)));
        if !reluctant {
            if let Some(after) = r.strip_prefix('?') {
                reluctant = true;
                r = after;
                span.end += 1;
            } else if let Some((after, q)) = self.eat_punct(r, "?") {
                self.report(
                    self.error(
                        Code::E112,
                        "space before a reluctant `?`",
                        q,
                        "write this `?` right after the count",
                    )
                    .with_note(format!("write `{}?`", self.text(span))),
                );
                reluctant = true;
                r = after;
                span = span.to(q);
            }
        }
        let mut inner = None;
        let next = self.peek(r);
        if let Some(c) = inner_word(&next) {
            inner = Some(c);
            span = span.to(self.peek_span(&next));
            r = next.after;
        }
        let mut greedy = false;
        if let Some((after, g)) = self.eat_word(r, "greedy") {
            greedy = true;
            span = span.to(g);
            r = after;
            let next = self.peek(r);
            if let Some(c) = inner_word(&next) {
                let word = self.text(self.peek_span(&next));
                self.report(
                    self.error(
                        Code::E112,
                        format!("`{word}` after `greedy`"),
                        self.peek_span(&next),
                        "the inner contiguity comes before `greedy`",
                    )
                    .with_note(format!("write `{word} greedy`")),
                );
                inner = inner.or(Some(c));
                span = span.to(self.peek_span(&next));
                r = next.after;
            }
        }
        Ok((
            r,
            Some(Quantifier {
                min,
                max,
                form,
                reluctant,
                greedy,
                inner,
                span,
            }),
        ))
    }

    /// `"{" int "}" | "{" int "," "}" | "{" int "," int "}"`, from the `{`. Malformed counts
    /// are reported (E112) and read as the closest valid one.
    fn parse_braces(&self, open: Peek<'a>) -> PResult<'a, (u32, Option<u32>)> {
        let open_span = self.peek_span(&open);
        let forms = "a quantifier is `{n}`, `{n,}` or `{n,m}`";
        let first = self.peek(open.after);
        let (r, min) = match first.tok {
            Tok::Punct("}") => {
                self.report(
                    self.error(
                        Code::E112,
                        "empty quantifier",
                        open_span.to(self.peek_span(&first)),
                        "no count between the braces",
                    )
                    .with_note(forms),
                );
                return Ok((first.after, (1, Some(1))));
            }
            Tok::Punct(",") => {
                self.report(
                    self.error(
                        Code::E112,
                        "quantifier without a minimum",
                        open_span.to(self.peek_span(&first)),
                        "the minimum goes before `,`",
                    )
                    .with_note("write `{0,m}` for at most m"),
                );
                (open.after, 0)
            }
            Tok::Number(_) => self.parse_count(first),
            _ => {
                let d = self.unexpected(open.after, "a count").with_note(forms);
                let d = crate::lang::Diagnostic {
                    code: Code::E112,
                    ..d
                };
                return self.fail(open.after, d);
            }
        };
        let sep = self.peek(r);
        let (r, max) = if sep.is_punct("}") {
            return Ok((sep.after, (min, Some(min))));
        } else if sep.is_punct(",") {
            let next = self.peek(sep.after);
            match next.tok {
                Tok::Punct("}") => return Ok((next.after, (min, None))),
                Tok::Number(_) => {
                    let (r, max) = self.parse_count(next);
                    (r, max)
                }
                _ => {
                    let d = self.unclosed(sep.after, "a maximum or `}`", open_span, "{");
                    return self.fail(sep.after, d);
                }
            }
        } else {
            return self.fail(r, self.unclosed(r, "`,` or `}`", open_span, "{"));
        };
        let close = self.peek(r);
        if !close.is_punct("}") {
            return self.fail(r, self.unclosed(r, "`}`", open_span, "{"));
        }
        if max < min {
            self.report(
                self.error(
                    Code::E112,
                    "quantifier minimum is larger than its maximum",
                    open_span.to(self.peek_span(&close)),
                    format!("at least {min} but at most {max}"),
                )
                .with_note(format!("did you mean `{{{max},{min}}}`?")),
            );
        }
        Ok((close.after, (min, Some(max))))
    }

    /// A count inside braces: a whole number that fits in 32 bits.
    fn parse_count(&self, num: Peek<'a>) -> (&'a str, u32) {
        let (r, value, span) = self.parse_number(num.at);
        match value {
            super::lex::Num::Int(v) => match u32::try_from(v) {
                Ok(v) => (r, v),
                Err(_) => {
                    self.report(self.error(
                        Code::E105,
                        "quantifier count out of range",
                        span,
                        format!("counts go up to {}", u32::MAX),
                    ));
                    (r, 1)
                }
            },
            _ => {
                self.report(
                    self.error(
                        Code::E112,
                        "quantifier count is not a whole number",
                        span,
                        "expected a count such as `3`",
                    )
                    .with_note("to bound a loop in time, use `within` on the rule or a link"),
                );
                (r, 1)
            }
        }
    }

    /// `group = "(" pattern ")" [ quantifier ]`, from the `(`.
    fn parse_group(&self, open: Peek<'a>) -> PResult<'a, Group> {
        let open_span = self.peek_span(&open);
        self.nested(open.at, || {
            let (r, pattern) = self.parse_pattern(open.after, "`(`")?;
            let close = self.peek(r);
            if !close.is_punct(")") {
                let d = self.unclosed(
                    r,
                    "`)` or a link (`next`, `followed by`, `->`)",
                    open_span,
                    "(",
                );
                return self.fail(r, d);
            }
            let (r, quantifier) = self.parse_quantifier(close.after)?;
            let mut span = open_span.to(self.peek_span(&close));
            if let Some(q) = &quantifier {
                span = span.to(q.span);
            }
            Ok((
                r,
                Group {
                    pattern: Box::new(pattern),
                    quantifier,
                    span,
                },
            ))
        })
    }

    /// `neg_step = [ ident ":" ] ident [ "where" expr ]` as the one atom of an element, after
    /// a negation (`link` is how it was written, for messages).
    fn parse_negated(&self, i: &'a str, link: &str) -> PResult<'a, Element> {
        let next = self.peek(i);
        let expected = format!("the stream that must not occur after `{link}`");
        let (r, name, stream) = match next.tok {
            Tok::Word(w) => {
                let span = self.peek_span(&next);
                let colon = self.peek(next.after);
                if colon.is_punct(":") {
                    if is_reserved(w) {
                        self.report(self.reserved_as_name(w, span, "a step name"));
                    }
                    let (r, stream) =
                        self.parse_name(colon.after, "a stream name after `:`", &[])?;
                    (r, Some(Spanned::new(span, w.to_string())), stream)
                } else if !is_reserved(w) {
                    (next.after, None, Spanned::new(span, w.to_string()))
                } else {
                    let d = self.unexpected(i, &expected);
                    let d = match w {
                        "any" => d.with_note(format!(
                            "`{link}` already forbids every matching event; remove `any`"
                        )),
                        "within" => d.with_note(
                            "a negation has no time bound of its own; the rule's `within` clause bounds it",
                        ),
                        _ => d,
                    };
                    return self.fail(i, d);
                }
            }
            Tok::Punct("(") => {
                let d = self
                    .error(
                        Code::E303,
                        "a group cannot be negated",
                        self.peek_span(&next),
                        format!("only a single step can follow `{link}`"),
                    )
                    .with_note("negate each step on its own, or join their conditions with `or` in one negated step");
                return self.fail(i, d);
            }
            _ => return self.fail(i, self.unexpected(i, &expected)),
        };
        let mut span = name
            .as_ref()
            .map_or(stream.span, |n| n.span.to(stream.span));
        let (r, quantifier) = self.parse_quantifier(r)?;
        if let Some(q) = quantifier {
            self.report(
                self.error(
                    Code::E112,
                    "quantifier on a negated step",
                    q.span,
                    "a negated step takes no quantifier",
                )
                .with_note("a negation forbids any one matching event; remove the quantifier"),
            );
        }
        let (r, condition) = self.opt_condition(r, "where")?;
        if let Some(c) = &condition {
            span = span.to(c.span);
        }
        let bar = self.peek(r);
        if bar.is_punct("|") {
            let d = self
                .error(
                    Code::E303,
                    "a negated step cannot have alternatives",
                    self.peek_span(&bar),
                    "alternatives are not allowed after a negation",
                )
                .with_note("join the conditions with `or` in one negated step");
            return self.fail(r, d);
        }
        if bar.is_word("until") {
            let d = self
                .unexpected(r, "a link or the next clause")
                .with_note("`until` ends a loop; a negated step is not one");
            return self.fail(r, d);
        }
        let atom = Atom::Negated(NegatedStep {
            name,
            stream,
            condition,
            span,
        });
        Ok((
            r,
            Element {
                alternatives: vec![atom],
                span,
            },
        ))
    }
}

/// `inner = "consecutive" | "any"`
fn inner_word(next: &Peek<'_>) -> Option<Contiguity> {
    match next.tok {
        Tok::Word("consecutive") => Some(Contiguity::Strict),
        Tok::Word("any") => Some(Contiguity::NonDeterministic),
        _ => None,
    }
}

/// The span of an atom.
fn atom_span(atom: &Atom) -> Span {
    match atom {
        Atom::Step(s) => s.span,
        Atom::Group(g) => g.span,
        Atom::Negated(n) => n.span,
    }
}
