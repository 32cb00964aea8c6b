//! Evaluation of compiled scalar expressions over one row. Nothing here fails: as in KQL, an operation on
//! values it does not apply to gives null.

use std::borrow::Cow;

use regex::Regex;
use serde_json::Value as Json;

use super::ast::{BinaryOp, StringOp};
use super::plan::{CExpr, Func, RegexArg};
use super::value::{Value, compare, equals};
use crate::time::parse_datetime;

pub fn eval(expr: &CExpr, row: &[Value], now: i64) -> Value {
    match expr {
        CExpr::Lit(v) => v.clone(),
        CExpr::Col(i) => row.get(*i).cloned().unwrap_or(Value::Null),
        CExpr::Neg(inner) => match eval(inner, row, now).normalized().as_ref() {
            Value::Long(n) => n.checked_neg().map_or(Value::Null, Value::Long),
            Value::Real(r) => Value::Real(-r),
            Value::Timespan(t) => t.checked_neg().map_or(Value::Null, Value::Timespan),
            _ => Value::Null,
        },
        CExpr::Binary(BinaryOp::And, l, r) => {
            let left = as_bool(&eval(l, row, now));
            if left == Some(false) {
                return Value::Bool(false);
            }
            match (left, as_bool(&eval(r, row, now))) {
                (_, Some(false)) => Value::Bool(false),
                (Some(true), Some(true)) => Value::Bool(true),
                _ => Value::Null,
            }
        }
        CExpr::Binary(BinaryOp::Or, l, r) => {
            let left = as_bool(&eval(l, row, now));
            if left == Some(true) {
                return Value::Bool(true);
            }
            match (left, as_bool(&eval(r, row, now))) {
                (_, Some(true)) => Value::Bool(true),
                (Some(false), Some(false)) => Value::Bool(false),
                _ => Value::Null,
            }
        }
        CExpr::Binary(op, l, r) => binary(*op, &eval(l, row, now), &eval(r, row, now)),
        CExpr::StringOp { op, negated, lhs, rhs } => {
            let hay = eval(lhs, row, now).to_text();
            let needle = eval(rhs, row, now).to_text();
            Value::Bool(string_op(*op, &hay, &needle) != *negated)
        }
        CExpr::In { lhs, list, negated, case_insensitive } => {
            let value = eval(lhs, row, now);
            let items = flatten(list, row, now);
            let found = if *case_insensitive {
                let text = value.to_text().to_lowercase();
                items.iter().any(|item| item.to_text().to_lowercase() == text)
            } else {
                items.iter().any(|item| equals(&value, item) == Some(true))
            };
            Value::Bool(found != *negated)
        }
        CExpr::HasAny { lhs, list, all } => {
            let hay = eval(lhs, row, now).to_text().to_lowercase();
            let items = flatten(list, row, now);
            let mut terms = items.iter().map(|item| has_term(&hay, &item.to_text().to_lowercase()));
            Value::Bool(if *all { terms.all(|t| t) } else { terms.any(|t| t) })
        }
        CExpr::Between { lhs, low, high, negated } => {
            let value = eval(lhs, row, now);
            let low = eval(low, row, now);
            let mut high = eval(high, row, now);
            // `Timestamp between (datetime(...) .. 1h)`: the upper bound is a span after the lower.
            if let (Value::DateTime(l), Value::Timespan(span)) = (&low, &high) {
                high = Value::DateTime(l.saturating_add(*span));
            }
            match (compare(&value, &low), compare(&value, &high)) {
                (Some(a), Some(b)) => Value::Bool((a.is_ge() && b.is_le()) != *negated),
                _ => Value::Null,
            }
        }
        CExpr::Regex { lhs, pattern } => {
            let text = eval(lhs, row, now).to_text();
            match pattern {
                RegexArg::Fixed(re) => Value::Bool(re.is_match(&text)),
                RegexArg::Computed(p) => match Regex::new(&eval(p, row, now).to_text()) {
                    Ok(re) => Value::Bool(re.is_match(&text)),
                    Err(_) => Value::Null,
                },
            }
        }
        CExpr::Call(func, args) => call(func, args, row, now),
        CExpr::Member(base, name) => member(&eval(base, row, now), name),
        CExpr::Index(base, index) => {
            let base = eval(base, row, now);
            match eval(index, row, now).normalized().as_ref() {
                Value::String(key) => member(&base, key),
                Value::Long(i) => element(&base, *i),
                _ => Value::Null,
            }
        }
    }
}

fn as_bool(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) | Value::Dynamic(Json::Bool(b)) => Some(*b),
        _ => None,
    }
}

/// List operands of `in` and `has_any`, with dynamic arrays spread out.
fn flatten(list: &[CExpr], row: &[Value], now: i64) -> Vec<Value> {
    let mut out = Vec::new();
    for item in list {
        match eval(item, row, now) {
            Value::Dynamic(Json::Array(items)) => out.extend(items.into_iter().map(Value::Dynamic)),
            other => out.push(other),
        }
    }
    out
}

fn binary(op: BinaryOp, a: &Value, b: &Value) -> Value {
    let ordered =
        |test: fn(std::cmp::Ordering) -> bool| compare(a, b).map_or(Value::Null, |o| Value::Bool(test(o)));
    match op {
        BinaryOp::Eq => equals(a, b).map_or(Value::Null, Value::Bool),
        BinaryOp::NotEq => equals(a, b).map_or(Value::Null, |e| Value::Bool(!e)),
        BinaryOp::EqCi => Value::Bool(a.to_text().to_lowercase() == b.to_text().to_lowercase()),
        BinaryOp::NotEqCi => Value::Bool(a.to_text().to_lowercase() != b.to_text().to_lowercase()),
        BinaryOp::Lt => ordered(|o| o.is_lt()),
        BinaryOp::Le => ordered(|o| o.is_le()),
        BinaryOp::Gt => ordered(|o| o.is_gt()),
        BinaryOp::Ge => ordered(|o| o.is_ge()),
        BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => arithmetic(op, a, b),
        BinaryOp::And | BinaryOp::Or => Value::Null,
    }
}

fn arithmetic(op: BinaryOp, a: &Value, b: &Value) -> Value {
    use BinaryOp::{Add, Div, Mod, Mul, Sub};
    let (a, b) = (a.normalized(), b.normalized());
    let long = |v: Option<i64>| v.map_or(Value::Null, Value::Long);
    let span = |v: Option<i64>| v.map_or(Value::Null, Value::Timespan);
    let time = |v: Option<i64>| v.map_or(Value::Null, Value::DateTime);
    let scale = |t: i64, f: f64| {
        let r = (t as f64 * f).round();
        if r.is_finite() && r.abs() < i64::MAX as f64 { Value::Timespan(r as i64) } else { Value::Null }
    };
    match (op, a.as_ref(), b.as_ref()) {
        (Add, Value::Long(x), Value::Long(y)) => long(x.checked_add(*y)),
        (Sub, Value::Long(x), Value::Long(y)) => long(x.checked_sub(*y)),
        (Mul, Value::Long(x), Value::Long(y)) => long(x.checked_mul(*y)),
        (Div, Value::Long(x), Value::Long(y)) => long(x.checked_div(*y)),
        (Mod, Value::Long(x), Value::Long(y)) => long(x.checked_rem(*y)),
        (Add, Value::DateTime(t), Value::Timespan(s)) | (Add, Value::Timespan(s), Value::DateTime(t)) => {
            time(t.checked_add(*s))
        }
        (Sub, Value::DateTime(t), Value::Timespan(s)) => time(t.checked_sub(*s)),
        (Sub, Value::DateTime(x), Value::DateTime(y)) => span(x.checked_sub(*y)),
        (Add, Value::Timespan(x), Value::Timespan(y)) => span(x.checked_add(*y)),
        (Sub, Value::Timespan(x), Value::Timespan(y)) => span(x.checked_sub(*y)),
        (Mul, Value::Timespan(t), n) | (Mul, n, Value::Timespan(t)) if n.as_f64().is_some() => {
            scale(*t, n.as_f64().unwrap_or(0.0))
        }
        (Div, Value::Timespan(x), Value::Timespan(y)) if *y != 0 => Value::Real(*x as f64 / *y as f64),
        (Div, Value::Timespan(t), n) if n.as_f64().is_some_and(|f| f != 0.0) => {
            scale(*t, 1.0 / n.as_f64().unwrap_or(1.0))
        }
        (op, x, y) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => Value::Real(match op {
                Add => x + y,
                Sub => x - y,
                Mul => x * y,
                Div => x / y,
                _ => x % y,
            }),
            _ => Value::Null,
        },
    }
}

fn string_op(op: StringOp, hay: &str, needle: &str) -> bool {
    let lower = || (hay.to_lowercase(), needle.to_lowercase());
    match op {
        StringOp::Has => {
            let (h, n) = lower();
            has_term(&h, &n)
        }
        StringOp::HasCs => has_term(hay, needle),
        StringOp::Contains => {
            let (h, n) = lower();
            h.contains(&n)
        }
        StringOp::ContainsCs => hay.contains(needle),
        StringOp::StartsWith => {
            let (h, n) = lower();
            h.starts_with(&n)
        }
        StringOp::StartsWithCs => hay.starts_with(needle),
        StringOp::EndsWith => {
            let (h, n) = lower();
            h.ends_with(&n)
        }
        StringOp::EndsWithCs => hay.ends_with(needle),
    }
}

/// KQL term characters: letters and digits. Everything else separates terms.
fn is_term_char(c: char) -> bool {
    c.is_alphanumeric()
}

/// `has`: `needle` occurs in `hay` as whole terms, i.e. not glued to more letters or digits on either side.
/// A needle that itself starts or ends with a separator (`.com`) only needs the other side to be a
/// boundary.
pub fn has_term(hay: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    let first_is_term = needle.chars().next().is_some_and(is_term_char);
    let last_is_term = needle.chars().next_back().is_some_and(is_term_char);
    let mut from = 0;
    while let Some(found) = hay[from..].find(needle) {
        let start = from + found;
        let end = start + needle.len();
        let before_ok = !first_is_term || hay[..start].chars().next_back().is_none_or(|c| !is_term_char(c));
        let after_ok = !last_is_term || hay[end..].chars().next().is_none_or(|c| !is_term_char(c));
        if before_ok && after_ok {
            return true;
        }
        // Move past the first character of this match.
        from = start + hay[start..].chars().next().map_or(1, char::len_utf8);
    }
    false
}

fn member(base: &Value, name: &str) -> Value {
    match base {
        Value::Dynamic(Json::Object(map)) => map.get(name).cloned().map_or(Value::Null, Value::Dynamic),
        // KQL tables often hold JSON in string columns; reading a property parses it.
        Value::String(s) | Value::Dynamic(Json::String(s)) => match serde_json::from_str::<Json>(s) {
            Ok(Json::Object(mut map)) => map.remove(name).map_or(Value::Null, Value::Dynamic),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

fn element(base: &Value, index: i64) -> Value {
    let items: Cow<'_, [Json]> = match base {
        Value::Dynamic(Json::Array(items)) => Cow::Borrowed(items.as_slice()),
        Value::String(s) | Value::Dynamic(Json::String(s)) => match serde_json::from_str::<Json>(s) {
            Ok(Json::Array(items)) => Cow::Owned(items),
            _ => return Value::Null,
        },
        _ => return Value::Null,
    };
    let len = items.len() as i64;
    let i = if index < 0 { len + index } else { index };
    if (0..len).contains(&i) { Value::Dynamic(items[i as usize].clone()) } else { Value::Null }
}

fn call(func: &Func, args: &[CExpr], row: &[Value], now: i64) -> Value {
    let arg = |i: usize| args.get(i).map_or(Value::Null, |a| eval(a, row, now));
    match func {
        Func::Iff => {
            if arg(0).is_true() {
                arg(1)
            } else {
                arg(2)
            }
        }
        Func::Case => {
            let pairs = args.len() / 2;
            for i in 0..pairs {
                if arg(2 * i).is_true() {
                    return arg(2 * i + 1);
                }
            }
            arg(args.len() - 1)
        }
        Func::Coalesce => {
            for a in args {
                let v = eval(a, row, now);
                let empty =
                    v.is_null() || matches!(v.normalized().as_ref(), Value::String(s) if s.is_empty());
                if !empty {
                    return v;
                }
            }
            Value::Null
        }
        Func::Ago => match arg(0).normalized().as_ref() {
            Value::Timespan(t) => now.checked_sub(*t).map_or(Value::Null, Value::DateTime),
            _ => Value::Null,
        },
        Func::Now => match args.first().map(|_| arg(0)) {
            None => Value::DateTime(now),
            Some(Value::Timespan(t)) => now.checked_add(t).map_or(Value::Null, Value::DateTime),
            Some(_) => Value::Null,
        },
        Func::DateTime => match arg(0).normalized().as_ref() {
            Value::DateTime(t) => Value::DateTime(*t),
            Value::String(s) => parse_datetime(s).map_or(Value::Null, Value::DateTime),
            _ => Value::Null,
        },
        Func::Bin => bin(&arg(0), &arg(1)),
        Func::ToLower => Value::String(arg(0).to_text().to_lowercase()),
        Func::ToUpper => Value::String(arg(0).to_text().to_uppercase()),
        Func::ToString => Value::String(arg(0).to_text()),
        Func::ToInt => match to_long(&arg(0)) {
            Some(n) if i32::try_from(n).is_ok() => Value::Long(n),
            _ => Value::Null,
        },
        Func::ToLong => to_long(&arg(0)).map_or(Value::Null, Value::Long),
        Func::ToDouble => match arg(0).normalized().as_ref() {
            Value::Long(n) => Value::Real(*n as f64),
            Value::Real(r) => Value::Real(*r),
            Value::Bool(b) => Value::Real(if *b { 1.0 } else { 0.0 }),
            Value::String(s) => s.trim().parse().map_or(Value::Null, Value::Real),
            _ => Value::Null,
        },
        Func::ToBool => match arg(0).normalized().as_ref() {
            Value::Bool(b) => Value::Bool(*b),
            Value::Long(n) => Value::Bool(*n != 0),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Value::Bool(true),
                "false" | "0" => Value::Bool(false),
                _ => Value::Null,
            },
            _ => Value::Null,
        },
        Func::StrCat => Value::String((0..args.len()).map(|i| arg(i).to_text()).collect()),
        Func::StrLen => Value::Long(arg(0).to_text().chars().count() as i64),
        Func::Substring => {
            let text = arg(0).to_text();
            let start = to_long(&arg(1)).unwrap_or(0).max(0) as usize;
            let chars = text.chars().skip(start);
            Value::String(match args.get(2).map(|_| to_long(&arg(2))) {
                Some(Some(len)) => chars.take(len.max(0) as usize).collect(),
                Some(None) => return Value::Null,
                None => chars.collect(),
            })
        }
        Func::IsEmpty => Value::Bool(is_empty(&arg(0))),
        Func::IsNotEmpty => Value::Bool(!is_empty(&arg(0))),
        Func::IsNull => Value::Bool(arg(0).is_null()),
        Func::IsNotNull => Value::Bool(!arg(0).is_null()),
        Func::Split => {
            let text = arg(0).to_text();
            let delimiter = arg(1).to_text();
            if delimiter.is_empty() {
                return Value::Null;
            }
            let parts: Vec<Json> =
                text.split(delimiter.as_str()).map(|p| Json::String(p.to_string())).collect();
            match args.get(2).map(|_| to_long(&arg(2))) {
                None => Value::Dynamic(Json::Array(parts)),
                Some(Some(i)) if i >= 0 && (i as usize) < parts.len() => {
                    Value::Dynamic(Json::Array(vec![parts[i as usize].clone()]))
                }
                Some(_) => Value::Dynamic(Json::Array(Vec::new())),
            }
        }
        Func::Extract(fixed) => {
            let computed;
            let re = match fixed {
                Some(re) => re,
                None => match Regex::new(&arg(0).to_text()) {
                    Ok(re) => {
                        computed = re;
                        &computed
                    }
                    Err(_) => return Value::Null,
                },
            };
            let Some(group) = to_long(&arg(1)).and_then(|g| usize::try_from(g).ok()) else {
                return Value::Null;
            };
            let text = arg(2).to_text();
            Value::String(
                re.captures(&text)
                    .and_then(|c| c.get(group))
                    .map(|m| m.as_str().to_string())
                    .unwrap_or_default(),
            )
        }
        Func::ParseJson => match arg(0) {
            Value::String(s) => Value::Dynamic(serde_json::from_str(&s).unwrap_or(Json::String(s))),
            Value::Dynamic(Json::String(s)) => {
                Value::Dynamic(serde_json::from_str(&s).unwrap_or(Json::String(s)))
            }
            Value::Null => Value::Dynamic(Json::Null),
            other => Value::Dynamic(other.to_json()),
        },
        Func::Not => as_bool(&arg(0)).map_or(Value::Null, |b| Value::Bool(!b)),
        Func::ArrayLength => match arg(0) {
            Value::Dynamic(Json::Array(items)) => Value::Long(items.len() as i64),
            _ => Value::Null,
        },
    }
}

fn is_empty(v: &Value) -> bool {
    match v.normalized().as_ref() {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}

fn to_long(v: &Value) -> Option<i64> {
    match v.normalized().as_ref() {
        Value::Long(n) => Some(*n),
        Value::Real(r) if r.is_finite() && r.abs() < i64::MAX as f64 => Some(r.trunc() as i64),
        Value::Bool(b) => Some(i64::from(*b)),
        Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>().ok().or_else(|| {
                s.parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite() && r.abs() < i64::MAX as f64)
                    .map(|r| r.trunc() as i64)
            })
        }
        _ => None,
    }
}

/// `bin(value, size)`: rounds down to a multiple of size (numbers, times and spans).
fn bin(value: &Value, size: &Value) -> Value {
    let (value, size) = (value.normalized(), size.normalized());
    match (value.as_ref(), size.as_ref()) {
        (Value::Long(v), Value::Long(s)) if *s > 0 => floor_to(*v, *s).map_or(Value::Null, Value::Long),
        (Value::DateTime(t), Value::Timespan(s)) if *s > 0 => {
            floor_to(*t, *s).map_or(Value::Null, Value::DateTime)
        }
        (Value::Timespan(t), Value::Timespan(s)) if *s > 0 => {
            floor_to(*t, *s).map_or(Value::Null, Value::Timespan)
        }
        (v, s) => match (v.as_f64(), s.as_f64()) {
            (Some(v), Some(s)) if s > 0.0 => Value::Real((v / s).floor() * s),
            _ => Value::Null,
        },
    }
}

/// The largest multiple of `step` (> 0) not above `value`; `None` when it does not fit.
fn floor_to(value: i64, step: i64) -> Option<i64> {
    value.div_euclid(step).checked_mul(step)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn has_matches_whole_terms() {
        assert!(has_term("api.github.com", "github"));
        assert!(has_term("api.github.com", "github.com"));
        assert!(!has_term("api.github.com", "git"));
        assert!(!has_term("mygithub.com", "github"));
        assert!(has_term("http://deb.debian.org/debian/dists", "debian"));
        assert!(has_term("a.example.com", ".com"));
        assert!(!has_term("", "x"));
    }

    #[test]
    fn bins() {
        assert_eq!(bin(&Value::Long(17), &Value::Long(5)), Value::Long(15));
        assert_eq!(
            bin(&Value::DateTime(301_000_000), &Value::Timespan(300_000_000)),
            Value::DateTime(300_000_000)
        );
        assert_eq!(bin(&Value::Real(2.5), &Value::Long(1)), Value::Real(2.0));
        assert_eq!(bin(&Value::Long(1), &Value::Long(0)), Value::Null);
        assert_eq!(bin(&Value::Long(i64::MIN), &Value::Long(3)), Value::Null);
    }

    #[test]
    fn arithmetic_on_times() {
        let hour = Value::Timespan(3_600_000_000);
        assert_eq!(arithmetic(BinaryOp::Sub, &Value::DateTime(0), &hour), Value::DateTime(-3_600_000_000));
        assert_eq!(arithmetic(BinaryOp::Div, &hour, &Value::Timespan(60_000_000)), Value::Real(60.0));
        assert_eq!(arithmetic(BinaryOp::Div, &Value::Long(7), &Value::Long(0)), Value::Null);
        assert_eq!(arithmetic(BinaryOp::Mul, &Value::Long(i64::MAX), &Value::Long(2)), Value::Null);
    }
}
