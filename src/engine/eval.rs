//! Evaluates typed expressions against a candidate event and a run's matched events.
//!
//! Names were resolved to indices at compile time, so evaluation reads fields by position and
//! walks the run's shared buffer chain for earlier steps; nothing is looked up by name and
//! nothing is allocated except for string results.

use chrono::{Datelike, Timelike};

use crate::compile::hir::{AggFunc, Builtin, TExpr, TExprKind, VarId};
use crate::event::{Event, Value, ValueRef};
use crate::lang::ast::BinaryOp;

use super::buffer::{Buffer, NIL};

/// What an expression can see.
pub struct Ctx<'a> {
    /// The candidate event (conditions) or `None` (emit clauses).
    pub candidate: Option<&'a Event>,
    /// The shared buffer holding the run's events.
    pub buffer: &'a Buffer,
    /// The run's last matched entry (`NIL` when it has none).
    pub tail: u32,
    /// The match key as a value.
    pub key: &'a Value,
    /// Window accumulators (aggregate streams' select).
    pub accumulated: &'a [Value],
    /// Window key values (aggregate streams' select).
    pub key_fields: &'a [Value],
}

/// Evaluates a condition: true only for `Bool(true)` (null and errors are false).
pub fn test(e: &TExpr, ctx: &Ctx<'_>) -> bool {
    truth(e, ctx) == Some(true)
}

/// What [`eval`] gives a condition, as a bool, or `None` for anything else (null): the same
/// operands evaluated in the same order, without building a [`Value`] for each comparison
/// and each `and` or `or` joining them, which is most of what conditions are.
fn truth(e: &TExpr, ctx: &Ctx<'_>) -> Option<bool> {
    use BinaryOp::*;
    match &e.kind {
        TExprKind::Binary { op, lhs, rhs } => match op {
            Eq | Ne | Lt | Le | Gt | Ge => Some(compares(*op, lhs, rhs, ctx)),
            And => match truth(lhs, ctx) {
                Some(false) => Some(false),
                l => match (l, truth(rhs, ctx)) {
                    (Some(true), r) => r,
                    (_, Some(false)) => Some(false),
                    _ => None,
                },
            },
            Or => match truth(lhs, ctx) {
                Some(true) => Some(true),
                l => match (l, truth(rhs, ctx)) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                },
            },
            _ => bool_of(eval(e, ctx)),
        },
        _ => bool_of(eval(e, ctx)),
    }
}

fn bool_of(v: Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(b),
        _ => None,
    }
}

/// A comparison: false when either side is null or they do not compare.
fn compares(op: BinaryOp, lhs: &TExpr, rhs: &TExpr, ctx: &Ctx<'_>) -> bool {
    use BinaryOp::*;
    let order = match (&lhs.kind, &rhs.kind) {
        // The commonest condition, a field of the event against a constant, read directly.
        (TExprKind::Field(i), TExprKind::Const(c)) => {
            let field = ctx.candidate.and_then(|ev| ev.get(*i as usize));
            compare_ref(field.unwrap_or(ValueRef::Null), c.borrowed())
        }
        _ => compare_ref(operand(lhs, ctx).get(), operand(rhs, ctx).get()),
    };
    order.is_some_and(|ord| match op {
        Eq => ord.is_eq(),
        Ne => !ord.is_eq(),
        Lt => ord.is_lt(),
        Le => ord.is_le(),
        Gt => ord.is_gt(),
        _ => ord.is_ge(),
    })
}

/// Evaluates an expression.
pub fn eval(e: &TExpr, ctx: &Ctx<'_>) -> Value {
    match &e.kind {
        TExprKind::Const(v) => v.clone(),
        // Owned from the event: a string is shared, not copied.
        TExprKind::Field(i) => ctx
            .candidate
            .map_or(Value::Null, |ev| ev.value(*i as usize)),
        TExprKind::VarField { var, field } => {
            var_event(*var, ctx).map_or(Value::Null, |ev| ev.value(*field as usize))
        }
        TExprKind::VarAgg {
            func,
            var,
            field,
            nth,
        } => aggregate(*func, *var, *field, *nth, ctx),
        TExprKind::Accumulated(i) => ctx
            .accumulated
            .get(*i as usize)
            .cloned()
            .unwrap_or(Value::Null),
        TExprKind::Key => ctx.key.clone(),
        TExprKind::KeyField(i) => ctx
            .key_fields
            .get(*i as usize)
            .cloned()
            .unwrap_or(Value::Null),
        TExprKind::Not(x) => match eval(x, ctx) {
            Value::Bool(b) => Value::Bool(!b),
            _ => Value::Null,
        },
        TExprKind::Neg(x) => match eval(x, ctx) {
            Value::Int(i) => Value::Int(i.wrapping_neg()),
            Value::Float(f) => Value::Float(-f),
            Value::Duration(d) => Value::Duration(d.wrapping_neg()),
            _ => Value::Null,
        },
        TExprKind::IsNull { negated, operand } => {
            let null = eval(operand, ctx).is_null();
            Value::Bool(null != *negated)
        }
        TExprKind::Binary { op, lhs, rhs } => binary(*op, lhs, rhs, ctx),
        TExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            if test(cond, ctx) {
                eval(then, ctx)
            } else {
                eval(otherwise, ctx)
            }
        }
        TExprKind::Call { func, args } => call(*func, args, ctx),
        // A user function that fails (or whose script is not loaded) gives null: unknown,
        // so its condition is false and its emit field null. The failure is counted on the
        // function (`Program::script_errors`).
        TExprKind::User { func, args, .. } => match func {
            Some(f) => f.call(args.iter().map(|a| eval(a, ctx)).collect()),
            None => Value::Null,
        },
    }
}

/// An operand of a comparison.
enum Operand<'a> {
    /// Borrowed where it already exists: a field of the candidate or of a matched event, a
    /// constant, the key. Comparisons, most of what conditions do, then copy nothing.
    Borrowed(ValueRef<'a>),
    /// Computed.
    Owned(Value),
}

impl Operand<'_> {
    fn get(&self) -> ValueRef<'_> {
        match self {
            Operand::Borrowed(v) => *v,
            Operand::Owned(v) => v.borrowed(),
        }
    }
}

fn operand<'a>(e: &'a TExpr, ctx: &Ctx<'a>) -> Operand<'a> {
    let found = match &e.kind {
        TExprKind::Const(v) => Some(v.borrowed()),
        TExprKind::Key => Some(ctx.key.borrowed()),
        TExprKind::Field(i) => ctx.candidate.and_then(|ev| ev.get(*i as usize)),
        TExprKind::VarField { var, field } => {
            var_event(*var, ctx).and_then(|ev| ev.get(*field as usize))
        }
        _ => return Operand::Owned(eval(e, ctx)),
    };
    Operand::Borrowed(found.unwrap_or(ValueRef::Null))
}

/// The event a single-event step matched, found from the run's last entry.
fn var_event<'a>(var: VarId, ctx: &Ctx<'a>) -> Option<&'a Event> {
    // VarField reads single-event steps only, so loop entries can be jumped over.
    let buffer: &'a Buffer = ctx.buffer;
    let mut cur = ctx.tail;
    while cur != NIL {
        let entry = buffer.entry(cur);
        if !entry.in_loop && entry.var == var {
            return Some(&entry.event);
        }
        cur = entry.anchor;
    }
    None
}

fn binary(op: BinaryOp, lhs: &TExpr, rhs: &TExpr, ctx: &Ctx<'_>) -> Value {
    use BinaryOp::*;
    match op {
        And => {
            // Short-circuit: a false left side decides.
            match eval(lhs, ctx) {
                Value::Bool(false) => Value::Bool(false),
                l => match (l, eval(rhs, ctx)) {
                    (Value::Bool(true), Value::Bool(b)) => Value::Bool(b),
                    (_, Value::Bool(false)) => Value::Bool(false),
                    _ => Value::Null,
                },
            }
        }
        Or => match eval(lhs, ctx) {
            Value::Bool(true) => Value::Bool(true),
            l => match (l, eval(rhs, ctx)) {
                (_, Value::Bool(true)) => Value::Bool(true),
                (Value::Bool(false), Value::Bool(false)) => Value::Bool(false),
                _ => Value::Null,
            },
        },
        Coalesce => match eval(lhs, ctx) {
            Value::Null => eval(rhs, ctx),
            v => v,
        },
        Eq | Ne | Lt | Le | Gt | Ge => Value::Bool(compares(op, lhs, rhs, ctx)),
        Add | Sub | Mul | Div | Rem => arith(op, eval(lhs, ctx), eval(rhs, ctx)),
    }
}

/// Orders two values of comparable types; `None` when either is null or they don't compare.
#[inline]
pub fn compare(l: &Value, r: &Value) -> Option<std::cmp::Ordering> {
    compare_ref(l.borrowed(), r.borrowed())
}

/// [`compare`], on borrowed values.
#[inline]
pub fn compare_ref(l: ValueRef<'_>, r: ValueRef<'_>) -> Option<std::cmp::Ordering> {
    use ValueRef as V;
    match (l, r) {
        (V::Float(a), V::Float(b)) => a.partial_cmp(&b),
        (V::Int(a), V::Int(b)) => Some(a.cmp(&b)),
        (V::Int(_) | V::Float(_), V::Int(_) | V::Float(_)) => l.as_f64()?.partial_cmp(&r.as_f64()?),
        (V::Str(a), V::Str(b)) => Some(a.cmp(b)),
        (V::Bool(a), V::Bool(b)) => Some(a.cmp(&b)),
        (V::Timestamp(a), V::Timestamp(b)) | (V::Duration(a), V::Duration(b)) => Some(a.cmp(&b)),
        _ => None,
    }
}

fn arith(op: BinaryOp, l: Value, r: Value) -> Value {
    use BinaryOp::*;
    use Value::*;
    match (op, l, r) {
        (_, Null, _) | (_, _, Null) => Null,
        (Add, Int(a), Int(b)) => a.checked_add(b).map_or(Null, Int),
        (Sub, Int(a), Int(b)) => a.checked_sub(b).map_or(Null, Int),
        (Mul, Int(a), Int(b)) => a.checked_mul(b).map_or(Null, Int),
        (Rem, Int(a), Int(b)) => a.checked_rem(b).map_or(Null, Int),
        (Div, a @ (Int(_) | Float(_)), b @ (Int(_) | Float(_))) => {
            float(a.as_f64().unwrap_or(f64::NAN) / b.as_f64().unwrap_or(f64::NAN))
        }
        (op, a @ (Int(_) | Float(_)), b @ (Int(_) | Float(_))) => {
            let (x, y) = (
                a.as_f64().unwrap_or(f64::NAN),
                b.as_f64().unwrap_or(f64::NAN),
            );
            float(match op {
                Add => x + y,
                Sub => x - y,
                Mul => x * y,
                Rem => x % y,
                _ => f64::NAN,
            })
        }
        (Add, Timestamp(t), Duration(d)) | (Add, Duration(d), Timestamp(t)) => {
            t.checked_add(d).map_or(Null, Timestamp)
        }
        (Sub, Timestamp(t), Duration(d)) => t.checked_sub(d).map_or(Null, Timestamp),
        (Sub, Timestamp(a), Timestamp(b)) => a.checked_sub(b).map_or(Null, Duration),
        (Add, Duration(a), Duration(b)) => a.checked_add(b).map_or(Null, Duration),
        (Sub, Duration(a), Duration(b)) => a.checked_sub(b).map_or(Null, Duration),
        (Mul, Duration(d), n @ (Int(_) | Float(_)))
        | (Mul, n @ (Int(_) | Float(_)), Duration(d)) => {
            duration_f(d as f64 * n.as_f64().unwrap_or(f64::NAN))
        }
        (Div, Duration(d), n @ (Int(_) | Float(_))) => {
            duration_f(d as f64 / n.as_f64().unwrap_or(f64::NAN))
        }
        (Div, Duration(a), Duration(b)) => float(a as f64 / b as f64),
        (Add, Str(a), Str(b)) => {
            let mut s = String::with_capacity(a.len() + b.len());
            s.push_str(&a);
            s.push_str(&b);
            Str(arcstr::ArcStr::from(s))
        }
        _ => Null,
    }
}

/// Division by zero and overflow give null rather than NaN or infinity.
fn float(f: f64) -> Value {
    if f.is_finite() {
        Value::Float(f)
    } else {
        Value::Null
    }
}

fn duration_f(f: f64) -> Value {
    if f.is_finite() && f.abs() < i64::MAX as f64 {
        Value::Duration(f as i64)
    } else {
        Value::Null
    }
}

fn aggregate(func: AggFunc, var: VarId, field: Option<u16>, nth: u32, ctx: &Ctx<'_>) -> Value {
    // The chain runs from the newest entry to the oldest.
    let values = ChainIter {
        buffer: ctx.buffer,
        cur: ctx.tail,
        var,
    }
    .map(|ev| match field {
        Some(f) => ev.value(f as usize),
        None => Value::Bool(true),
    });
    match func {
        AggFunc::Count => Value::Int(values.count() as i64),
        AggFunc::Last => values.into_iter().next().unwrap_or(Value::Null),
        AggFunc::Prev => values
            .into_iter()
            .nth(nth.saturating_sub(1) as usize)
            .unwrap_or(Value::Null),
        AggFunc::First => values.last().unwrap_or(Value::Null),
        AggFunc::Sum | AggFunc::Avg => {
            let mut n = 0usize;
            let mut int_sum: i64 = 0;
            let mut f_sum = 0.0;
            let mut all_int = true;
            let mut dur = false;
            for v in values {
                match v {
                    Value::Int(i) => {
                        int_sum = int_sum.wrapping_add(i);
                        f_sum += i as f64;
                    }
                    Value::Float(f) => {
                        all_int = false;
                        f_sum += f;
                    }
                    Value::Duration(d) => {
                        dur = true;
                        int_sum = int_sum.wrapping_add(d);
                        f_sum += d as f64;
                    }
                    _ => continue,
                }
                n += 1;
            }
            if n == 0 {
                return Value::Null;
            }
            match (func, dur, all_int) {
                (AggFunc::Sum, true, _) => Value::Duration(int_sum),
                (AggFunc::Sum, false, true) => Value::Int(int_sum),
                (AggFunc::Sum, false, false) => float(f_sum),
                (_, true, _) => Value::Duration((f_sum / n as f64) as i64),
                _ => float(f_sum / n as f64),
            }
        }
        AggFunc::Min | AggFunc::Max => {
            let mut best: Option<Value> = None;
            for v in values {
                if v.is_null() {
                    continue;
                }
                best = match best {
                    None => Some(v),
                    Some(b) => {
                        let keep_new = match compare(&v, &b) {
                            Some(o) => {
                                (func == AggFunc::Min && o.is_lt())
                                    || (func == AggFunc::Max && o.is_gt())
                            }
                            None => false,
                        };
                        Some(if keep_new { v } else { b })
                    }
                };
            }
            best.unwrap_or(Value::Null)
        }
    }
}

/// A variable's events in a run, newest first.
struct ChainIter<'a> {
    buffer: &'a Buffer,
    cur: u32,
    var: VarId,
}

impl<'a> Iterator for ChainIter<'a> {
    type Item = &'a Event;
    fn next(&mut self) -> Option<&'a Event> {
        while self.cur != NIL {
            let entry = self.buffer.entry(self.cur);
            self.cur = entry.prev;
            if entry.var == self.var {
                return Some(&entry.event);
            }
        }
        None
    }
}

fn call(func: Builtin, args: &[TExpr], ctx: &Ctx<'_>) -> Value {
    use Builtin::*;
    let arg = |i: usize| args.get(i).map_or(Value::Null, |a| eval(a, ctx));
    let a = arg(0);
    match func {
        Len => match a {
            Value::Str(s) => Value::Int(s.chars().count() as i64),
            _ => Value::Null,
        },
        Lower => match a {
            Value::Str(s) => Value::Str(s.to_lowercase().into()),
            _ => Value::Null,
        },
        Upper => match a {
            Value::Str(s) => Value::Str(s.to_uppercase().into()),
            _ => Value::Null,
        },
        Contains | StartsWith | EndsWith => match (a, arg(1)) {
            (Value::Str(s), Value::Str(p)) => Value::Bool(match func {
                Contains => s.contains(&*p),
                StartsWith => s.starts_with(&*p),
                _ => s.ends_with(&*p),
            }),
            _ => Value::Null,
        },
        Abs => match a {
            Value::Int(i) => i.checked_abs().map_or(Value::Null, Value::Int),
            Value::Float(f) => Value::Float(f.abs()),
            _ => Value::Null,
        },
        Round | Floor | Ceil => match a {
            Value::Int(i) => Value::Int(i),
            Value::Float(f) => {
                let r = match func {
                    Round => f.round(),
                    Floor => f.floor(),
                    _ => f.ceil(),
                };
                if r.is_finite() && r.abs() < i64::MAX as f64 {
                    Value::Int(r as i64)
                } else {
                    Value::Null
                }
            }
            _ => Value::Null,
        },
        Sqrt => a.as_f64().map_or(Value::Null, |f| float(f.sqrt())),
        Min2 | Max2 => {
            let b = arg(1);
            match compare(&a, &b) {
                Some(o) => {
                    let take_a = if func == Min2 { o.is_le() } else { o.is_ge() };
                    let v = if take_a { a } else { b };
                    // Mixed int/float compare as floats and return a float.
                    match v {
                        Value::Int(i)
                            if args.iter().any(|x| x.ty == crate::compile::hir::Ty::Float) =>
                        {
                            Value::Float(i as f64)
                        }
                        v => v,
                    }
                }
                None => Value::Null,
            }
        }
        ToFloat => match a {
            Value::Int(i) => Value::Float(i as f64),
            Value::Float(f) => Value::Float(f),
            Value::Bool(b) => Value::Float(if b { 1.0 } else { 0.0 }),
            Value::Str(s) => s.trim().parse::<f64>().ok().map_or(Value::Null, float),
            _ => Value::Null,
        },
        ToInt => match a {
            Value::Int(i) => Value::Int(i),
            Value::Float(f) if f.is_finite() && f.abs() < i64::MAX as f64 => {
                Value::Int(f.trunc() as i64)
            }
            Value::Bool(b) => Value::Int(i64::from(b)),
            Value::Str(s) => s.trim().parse::<i64>().map_or(Value::Null, Value::Int),
            _ => Value::Null,
        },
        ToString => match a {
            Value::Null => Value::Null,
            Value::Str(s) => Value::Str(s),
            v => Value::Str(super::alert::display_value(&v).into()),
        },
        Hour | Minute | Weekday => match a {
            Value::Timestamp(ns) => {
                let t = chrono::DateTime::from_timestamp_nanos(ns);
                Value::Int(match func {
                    Hour => i64::from(t.hour()),
                    Minute => i64::from(t.minute()),
                    _ => i64::from(t.weekday().number_from_monday()),
                })
            }
            _ => Value::Null,
        },
        Seconds => match a {
            Value::Duration(d) => Value::Float(d as f64 / 1e9),
            _ => Value::Null,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::hir::Ty;

    fn expr(kind: TExprKind) -> TExpr {
        TExpr { kind, ty: Ty::Bool }
    }

    fn cmp(op: BinaryOp, field: u16) -> TExpr {
        expr(TExprKind::Binary {
            op,
            lhs: Box::new(expr(TExprKind::Field(field))),
            rhs: Box::new(expr(TExprKind::Const(Value::Float(20.0)))),
        })
    }

    #[test]
    fn conditions_are_true_exactly_when_they_evaluate_to_true() {
        // Fields: a float under 20, a null, a true, a null bool, a string.
        let event = Event::new(
            0,
            0,
            [
                Value::Float(10.0),
                Value::Null,
                Value::Bool(true),
                Value::Null,
                Value::Str("x".into()),
            ],
        );
        let buffer = Buffer::default();
        let ctx = Ctx {
            candidate: Some(&event),
            buffer: &buffer,
            tail: NIL,
            key: &Value::Null,
            accumulated: &[],
            key_fields: &[],
        };
        // Each comparison, and the one that says the same with its operands swapped.
        let comparisons = [
            (BinaryOp::Eq, BinaryOp::Eq),
            (BinaryOp::Ne, BinaryOp::Ne),
            (BinaryOp::Lt, BinaryOp::Gt),
            (BinaryOp::Le, BinaryOp::Ge),
            (BinaryOp::Gt, BinaryOp::Lt),
            (BinaryOp::Ge, BinaryOp::Le),
        ];
        let mut atoms = Vec::new();
        for (op, _) in comparisons {
            for field in [0, 1, 4] {
                atoms.push(cmp(op, field));
            }
        }
        atoms.extend([
            expr(TExprKind::Field(2)),
            expr(TExprKind::Field(3)),
            expr(TExprKind::Const(Value::Bool(false))),
            expr(TExprKind::Not(Box::new(expr(TExprKind::Field(3))))),
        ]);
        let mut all = atoms.clone();
        for l in &atoms {
            for r in &atoms {
                for op in [BinaryOp::And, BinaryOp::Or] {
                    all.push(expr(TExprKind::Binary {
                        op,
                        lhs: Box::new(l.clone()),
                        rhs: Box::new(r.clone()),
                    }));
                }
            }
        }
        // A field against a constant is read directly; the constant against the field goes
        // the general way, and must agree.
        for (op, flipped) in comparisons {
            for field in 0..6 {
                for c in [
                    Value::Float(20.0),
                    Value::Float(10.0),
                    Value::Int(10),
                    Value::Null,
                ] {
                    let direct = expr(TExprKind::Binary {
                        op,
                        lhs: Box::new(expr(TExprKind::Field(field))),
                        rhs: Box::new(expr(TExprKind::Const(c.clone()))),
                    });
                    let general = expr(TExprKind::Binary {
                        op: flipped,
                        lhs: Box::new(expr(TExprKind::Const(c.clone()))),
                        rhs: Box::new(expr(TExprKind::Field(field))),
                    });
                    assert_eq!(test(&direct, &ctx), test(&general, &ctx), "{direct:?}");
                }
            }
        }
        let (mut held, mut null) = (0, 0);
        for e in &all {
            let full = eval(e, &ctx);
            assert_eq!(truth(e, &ctx), bool_of(full.clone()), "{e:?}");
            assert_eq!(test(e, &ctx), full == Value::Bool(true), "{e:?}");
            held += usize::from(full == Value::Bool(true));
            null += usize::from(full == Value::Null);
        }
        // Every outcome is covered: true, false and null.
        assert!(
            held > 0 && null > 0 && held + null < all.len(),
            "{held} {null}"
        );
    }
}
