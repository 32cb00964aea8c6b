//! KQL's scalar values and how they compare.

use std::cmp::Ordering;

use serde_json::Value as Json;

use crate::time::{format_datetime, format_timespan};

/// One cell of a query result.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Long(i64),
    Real(f64),
    /// Microseconds since the UNIX epoch, UTC.
    DateTime(i64),
    /// Microseconds.
    Timespan(i64),
    String(String),
    /// JSON: `AdditionalFields`, `parse_json()`, `make_set()`, `split()`.
    Dynamic(Json),
}

impl Value {
    /// A dynamic scalar as the plain value it holds, so that `AdditionalFields.IsAudit == true` compares
    /// booleans. Arrays and objects stay dynamic.
    pub fn normalized(&self) -> std::borrow::Cow<'_, Value> {
        use std::borrow::Cow;
        match self {
            Value::Dynamic(json) => Cow::Owned(match json {
                Json::Null => Value::Null,
                Json::Bool(b) => Value::Bool(*b),
                Json::Number(n) => match n.as_i64() {
                    Some(i) => Value::Long(i),
                    None => n.as_f64().map_or(Value::Null, Value::Real),
                },
                Json::String(s) => Value::String(s.clone()),
                other => Value::Dynamic(other.clone()),
            }),
            other => Cow::Borrowed(other),
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null | Value::Dynamic(Json::Null))
    }

    /// `true` only for a true boolean: `where` keeps the row, `and`/`or`/`iff` take the branch.
    pub fn is_true(&self) -> bool {
        matches!(self, Value::Bool(true) | Value::Dynamic(Json::Bool(true)))
    }

    /// The text `tostring()` gives: strings as they are, null as empty.
    pub fn to_text(&self) -> String {
        match self {
            Value::Null => String::new(),
            Value::Bool(b) => b.to_string(),
            Value::Long(n) => n.to_string(),
            Value::Real(r) => format_real(*r),
            Value::DateTime(t) => format_datetime(*t),
            Value::Timespan(t) => format_timespan(*t),
            Value::String(s) => s.clone(),
            Value::Dynamic(Json::Null) => String::new(),
            Value::Dynamic(Json::String(s)) => s.clone(),
            Value::Dynamic(other) => other.to_string(),
        }
    }

    /// The value as JSON, for `--format json` and for `make_set()`.
    pub fn to_json(&self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(*b),
            Value::Long(n) => Json::from(*n),
            Value::Real(r) => serde_json::Number::from_f64(*r).map_or(Json::Null, Json::Number),
            Value::DateTime(_) | Value::Timespan(_) => Json::String(self.to_text()),
            Value::String(s) => Json::String(s.clone()),
            Value::Dynamic(json) => json.clone(),
        }
    }

    /// Numeric value of a long or real.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Long(n) => Some(*n as f64),
            Value::Real(r) => Some(*r),
            _ => None,
        }
    }

    /// A key that is equal for equal values of the same type: grouping, `distinct`, `dcount`, joins.
    pub fn group_key(&self) -> String {
        match self.normalized().as_ref() {
            Value::Null => "n".to_string(),
            Value::Bool(b) => format!("b{b}"),
            Value::Long(n) => format!("l{n}"),
            Value::Real(r) => format!("r{}", r.to_bits()),
            Value::DateTime(t) => format!("d{t}"),
            Value::Timespan(t) => format!("t{t}"),
            Value::String(s) => format!("s{s}"),
            Value::Dynamic(json) => format!("j{json}"),
        }
    }
}

/// Reals print like KQL: whole numbers without a fraction.
pub fn format_real(r: f64) -> String {
    if r.is_nan() {
        "NaN".to_string()
    } else if r.is_infinite() {
        if r > 0.0 { "Infinity".to_string() } else { "-Infinity".to_string() }
    } else {
        format!("{r}")
    }
}

/// Order of two values of comparable types (numbers with numbers, strings with strings, ...); `None`
/// when they cannot be compared.
pub fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    let (a, b) = (a.normalized(), b.normalized());
    match (a.as_ref(), b.as_ref()) {
        (Value::Long(x), Value::Long(y)) => Some(x.cmp(y)),
        (Value::DateTime(x), Value::DateTime(y)) | (Value::Timespan(x), Value::Timespan(y)) => Some(x.cmp(y)),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        (Value::Bool(x), Value::Bool(y)) => Some(x.cmp(y)),
        (Value::Real(x), Value::Real(y)) => x.partial_cmp(y),
        (Value::Long(x), Value::Real(y)) => compare_long_real(*x, *y),
        (Value::Real(x), Value::Long(y)) => compare_long_real(*y, *x).map(Ordering::reverse),
        _ => None,
    }
}

/// Exact order of a long and a real (converting the long to f64 would round, and sorting needs a
/// consistent order); `None` for NaN.
fn compare_long_real(long: i64, real: f64) -> Option<Ordering> {
    // 2^63: every i64 is below it, and every i64 is at least -2^63.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if real.is_nan() {
        return None;
    }
    if real >= TWO_63 {
        return Some(Ordering::Less);
    }
    if real < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let whole = real.trunc();
    // |whole| < 2^63, so the conversion is exact.
    Some(long.cmp(&(whole as i64)).then(if real > whole {
        Ordering::Less
    } else if real < whole {
        Ordering::Greater
    } else {
        Ordering::Equal
    }))
}

/// `==`: `None` (null) when either side is null; numbers compare by value; a number and a string compare
/// as numbers when the string is one.
pub fn equals(a: &Value, b: &Value) -> Option<bool> {
    let (a, b) = (a.normalized(), b.normalized());
    let (a, b) = (a.as_ref(), b.as_ref());
    if a.is_null() || b.is_null() {
        return None;
    }
    if let Some(order) = compare(a, b) {
        return Some(order == Ordering::Equal);
    }
    match (a, b) {
        (Value::String(s), n @ (Value::Long(_) | Value::Real(_)))
        | (n @ (Value::Long(_) | Value::Real(_)), Value::String(s)) => {
            Some(s.trim().parse::<f64>().ok().zip(n.as_f64()).is_some_and(|(x, y)| x == y))
        }
        (Value::Dynamic(x), Value::Dynamic(y)) => Some(x == y),
        _ => Some(a.to_text() == b.to_text()),
    }
}

/// Sort order of any two values: comparable values by [`compare`], otherwise by type, so that sorting a
/// column of mixed types is still total. Nulls are placed by the caller.
pub fn sort_order(a: &Value, b: &Value) -> Ordering {
    if let Some(order) = compare(a, b) {
        return order;
    }
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Long(_) | Value::Real(_) => 2,
            Value::DateTime(_) => 3,
            Value::Timespan(_) => 4,
            Value::String(_) => 5,
            Value::Dynamic(_) => 6,
        }
    }
    let (a, b) = (a.normalized(), b.normalized());
    rank(&a).cmp(&rank(&b)).then_with(|| match (a.as_ref(), b.as_ref()) {
        // NaN sorts after every other number.
        (x, y) if x.as_f64().is_some() && y.as_f64().is_some() => {
            x.as_f64().is_some_and(f64::is_nan).cmp(&y.as_f64().is_some_and(f64::is_nan))
        }
        (x, y) => x.to_text().cmp(&y.to_text()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dynamic_scalars_compare_as_plain_values() {
        assert_eq!(equals(&Value::Dynamic(json!(true)), &Value::Bool(true)), Some(true));
        assert_eq!(equals(&Value::Dynamic(json!("x")), &Value::String("x".into())), Some(true));
        assert_eq!(equals(&Value::Long(3128), &Value::Real(3128.0)), Some(true));
        assert_eq!(equals(&Value::Long(3128), &Value::String("3128".into())), Some(true));
        assert_eq!(equals(&Value::Dynamic(json!(null)), &Value::String("x".into())), None);
        assert_eq!(compare(&Value::String("a".into()), &Value::Long(1)), None);
        assert_eq!(compare(&Value::Long(i64::MAX), &Value::Real(i64::MAX as f64)), Some(Ordering::Less));
        assert_eq!(compare(&Value::Real(2.5), &Value::Long(2)), Some(Ordering::Greater));
        assert_eq!(compare(&Value::Long(-3), &Value::Real(-2.5)), Some(Ordering::Less));
        assert_eq!(compare(&Value::Long(2), &Value::Real(f64::NAN)), None);
    }

    #[test]
    fn text_of_values() {
        assert_eq!(Value::Real(2.0).to_text(), "2");
        assert_eq!(Value::Dynamic(json!({"a": 1})).to_text(), r#"{"a":1}"#);
        assert_eq!(Value::Dynamic(json!("s")).to_text(), "s");
        assert_eq!(Value::Timespan(3_600_000_000).to_text(), "01:00:00");
    }
}
