//! Runs a plan: scans the tables through SQLite (with the pushed-down conditions), streams the leading
//! row-at-a-time operators during the scan so that `take` stops it early, and runs the rest in memory.

use std::collections::{HashMap, HashSet};

use rusqlite::Connection;
use rusqlite::types::ValueRef;
use serde_json::Value as Json;

use super::HuntError;
use super::ast::JoinKind;
use super::eval::eval;
use super::plan::{Aggregate, CExpr, CSortKey, Op, Plan, PlanSource};
use super::value::{Value, compare, sort_order};
use crate::schema::{COLUMNS, Cell, ColumnType};
use crate::store::SqlCell;
use crate::time::parse_datetime;

pub type Row = Vec<Value>;

pub fn execute(conn: &Connection, plan: &Plan, now: i64) -> Result<Vec<Row>, HuntError> {
    let streaming = plan.ops.iter().take_while(|op| op.is_streaming()).count();
    let (head, tail) = plan.ops.split_at(streaming);
    let mut pipeline = Pipeline::new(head, now);
    let mut rows = Vec::new();
    if !pipeline.exhausted() {
        match &plan.source {
            PlanSource::Table { table, filters, needed } => {
                scan(conn, table, filters, needed, |row| pipeline.push(row, &mut rows))?
            }
            PlanSource::Union(parts) => {
                'parts: for part in parts {
                    for part_row in execute(conn, &part.plan, now)? {
                        let mut row: Row = Vec::with_capacity(part.mapping.len() + 1);
                        if let Some(name) = &part.source_name {
                            row.push(Value::String(name.clone()));
                        }
                        let offset = row.len();
                        row.extend(
                            part.mapping[offset..]
                                .iter()
                                .map(|m| m.map_or(Value::Null, |i| part_row[i].clone())),
                        );
                        if pipeline.push(row, &mut rows) == Flow::Stop {
                            break 'parts;
                        }
                    }
                }
            }
        }
    }
    for op in tail {
        rows = apply(conn, op, rows, now)?;
    }
    Ok(rows)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// Row-at-a-time operators with the state of their `take`s.
struct Pipeline<'a> {
    ops: &'a [Op],
    remaining: Vec<usize>,
    now: i64,
}

impl<'a> Pipeline<'a> {
    fn new(ops: &'a [Op], now: i64) -> Pipeline<'a> {
        let remaining = ops.iter().map(|op| if let Op::Take(n) = op { *n } else { usize::MAX }).collect();
        Pipeline { ops, remaining, now }
    }

    /// A `take` has passed all its rows: no later row can come out.
    fn exhausted(&self) -> bool {
        self.remaining.contains(&0)
    }

    fn push(&mut self, mut row: Row, out: &mut Vec<Row>) -> Flow {
        for (i, op) in self.ops.iter().enumerate() {
            match op {
                Op::Where(predicate) if !eval(predicate, &row, self.now).is_true() => return Flow::Continue,
                Op::Map(exprs) => row = exprs.iter().map(|e| eval(e, &row, self.now)).collect(),
                Op::Extend(steps) => {
                    for (slot, expr) in steps {
                        let value = eval(expr, &row, self.now);
                        match slot {
                            Some(j) => row[*j] = value,
                            None => row.push(value),
                        }
                    }
                }
                Op::Take(_) => self.remaining[i] -= 1,
                // Only streaming operators (`Op::is_streaming`) are put in a pipeline.
                _ => {}
            }
        }
        out.push(row);
        if self.exhausted() { Flow::Stop } else { Flow::Continue }
    }
}

fn scan(
    conn: &Connection,
    table: &'static str,
    filters: &[(String, Cell)],
    needed: &[bool],
    mut each: impl FnMut(Row) -> Flow,
) -> Result<(), HuntError> {
    // Columns nobody reads are selected as NULL, so that positions stay those of the schema.
    let names: Vec<&str> =
        COLUMNS.iter().zip(needed).map(|((name, _), needed)| if *needed { *name } else { "NULL" }).collect();
    let mut sql = format!("SELECT {} FROM {table}", names.join(", "));
    if !filters.is_empty() {
        let conditions: Vec<&str> = filters.iter().map(|(c, _)| c.as_str()).collect();
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    let read = |source| HuntError::Read { table, source };
    let mut statement = conn.prepare(&sql).map_err(read)?;
    let mut rows = statement
        .query(rusqlite::params_from_iter(filters.iter().map(|(_, cell)| SqlCell(cell))))
        .map_err(read)?;
    while let Some(sql_row) = rows.next().map_err(read)? {
        let mut row = Vec::with_capacity(COLUMNS.len());
        for (i, ((_, ty), needed)) in COLUMNS.iter().zip(needed).enumerate() {
            row.push(if *needed { cell_value(*ty, sql_row.get_ref(i).map_err(read)?) } else { Value::Null });
        }
        if each(row) == Flow::Stop {
            break;
        }
    }
    Ok(())
}

/// A stored cell as its KQL value. KQL strings are never null: a NULL string column reads as "".
fn cell_value(ty: ColumnType, cell: ValueRef<'_>) -> Value {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    match (ty, cell) {
        (ColumnType::DateTime, ValueRef::Text(t)) => {
            parse_datetime(&text(t)).map_or(Value::Null, Value::DateTime)
        }
        (ColumnType::String, ValueRef::Text(t)) => Value::String(text(t)),
        (ColumnType::String, ValueRef::Null) => Value::String(String::new()),
        (ColumnType::String, ValueRef::Integer(n)) => Value::String(n.to_string()),
        (ColumnType::Long, ValueRef::Integer(n)) => Value::Long(n),
        (ColumnType::Long, ValueRef::Real(r)) => Value::Real(r),
        (ColumnType::Dynamic, ValueRef::Text(t)) => {
            let raw = text(t);
            Value::Dynamic(serde_json::from_str(&raw).unwrap_or(Json::String(raw)))
        }
        (ColumnType::Dynamic, ValueRef::Null) => Value::Dynamic(Json::Null),
        _ => Value::Null,
    }
}

fn apply(conn: &Connection, op: &Op, rows: Vec<Row>, now: i64) -> Result<Vec<Row>, HuntError> {
    Ok(match op {
        Op::Where(_) | Op::Map(_) | Op::Extend(_) | Op::Take(_) => {
            let ops = std::slice::from_ref(op);
            let mut pipeline = Pipeline::new(ops, now);
            let mut out = Vec::new();
            if !pipeline.exhausted() {
                for row in rows {
                    if pipeline.push(row, &mut out) == Flow::Stop {
                        break;
                    }
                }
            }
            out
        }
        Op::Sort(keys) => sort(rows, keys, now),
        Op::Top(n, key) => {
            let mut sorted = sort(rows, std::slice::from_ref(key), now);
            sorted.truncate(*n);
            sorted
        }
        Op::Summarize { by, aggregates } => summarize(rows, by, aggregates, now),
        Op::Distinct(exprs) => {
            let mut seen = HashSet::new();
            let mut out = Vec::new();
            for row in rows {
                let values: Row = exprs.iter().map(|e| eval(e, &row, now)).collect();
                if seen.insert(key_of(&values)) {
                    out.push(values);
                }
            }
            out
        }
        Op::Count => vec![vec![Value::Long(rows.len() as i64)]],
        Op::Join { kind, right, left_keys, right_keys } => {
            let right_rows = execute(conn, right, now)?;
            join(*kind, rows, &right_rows, left_keys, right_keys, right.columns.len())
        }
    })
}

fn key_of(values: &[Value]) -> String {
    let mut key = String::new();
    for v in values {
        key.push_str(&v.group_key());
        key.push('\u{1}');
    }
    key
}

fn sort(rows: Vec<Row>, keys: &[CSortKey], now: i64) -> Vec<Row> {
    let mut keyed: Vec<(Vec<Value>, Row)> =
        rows.into_iter().map(|row| (keys.iter().map(|k| eval(&k.expr, &row, now)).collect(), row)).collect();
    keyed.sort_by(|(a, _), (b, _)| {
        for (key, (x, y)) in keys.iter().zip(a.iter().zip(b)) {
            let order = match (x.is_null(), y.is_null()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => {
                    if key.nulls_first {
                        std::cmp::Ordering::Less
                    } else {
                        std::cmp::Ordering::Greater
                    }
                }
                (false, true) => {
                    if key.nulls_first {
                        std::cmp::Ordering::Greater
                    } else {
                        std::cmp::Ordering::Less
                    }
                }
                (false, false) => {
                    let o = sort_order(x, y);
                    if key.descending { o.reverse() } else { o }
                }
            };
            if order.is_ne() {
                return order;
            }
        }
        std::cmp::Ordering::Equal
    });
    keyed.into_iter().map(|(_, row)| row).collect()
}

fn join(
    kind: JoinKind,
    left: Vec<Row>,
    right: &[Row],
    left_keys: &[usize],
    right_keys: &[usize],
    right_width: usize,
) -> Vec<Row> {
    // Null keys match nothing.
    let key = |row: &Row, idx: &[usize]| -> Option<String> {
        let values: Vec<Value> = idx.iter().map(|i| row[*i].clone()).collect();
        (!values.iter().any(Value::is_null)).then(|| key_of(&values))
    };
    match kind {
        JoinKind::RightAnti | JoinKind::RightSemi => {
            let left_set: HashSet<String> = left.iter().filter_map(|r| key(r, left_keys)).collect();
            let want = kind == JoinKind::RightSemi;
            right
                .iter()
                .filter(|r| key(r, right_keys).is_some_and(|k| left_set.contains(&k)) == want)
                .cloned()
                .collect()
        }
        _ => {
            let mut index: HashMap<String, Vec<usize>> = HashMap::new();
            for (i, row) in right.iter().enumerate() {
                if let Some(k) = key(row, right_keys) {
                    index.entry(k).or_default().push(i);
                }
            }
            let mut seen_left = HashSet::new();
            let mut out = Vec::new();
            for row in left {
                let k = key(&row, left_keys);
                let matches: &[usize] = k.as_ref().and_then(|k| index.get(k)).map_or(&[], Vec::as_slice);
                match kind {
                    JoinKind::LeftAnti if matches.is_empty() => out.push(row),
                    JoinKind::LeftSemi if !matches.is_empty() => out.push(row),
                    JoinKind::LeftOuter if matches.is_empty() => {
                        let mut joined = row;
                        joined.extend(std::iter::repeat_n(Value::Null, right_width));
                        out.push(joined);
                    }
                    JoinKind::Inner | JoinKind::InnerUnique | JoinKind::LeftOuter => {
                        // innerunique keeps the first left row of each key.
                        if kind == JoinKind::InnerUnique
                            && !k.as_ref().is_some_and(|k| seen_left.insert(k.clone()))
                        {
                            continue;
                        }
                        for &m in matches {
                            let mut joined = row.clone();
                            joined.extend(right[m].iter().cloned());
                            out.push(joined);
                        }
                    }
                    _ => {}
                }
            }
            out
        }
    }
}

/// One aggregation's running state for one group.
enum State {
    Count(i64),
    Distinct(HashSet<String>),
    Set { seen: HashSet<String>, items: Vec<Json>, limit: usize },
    List { items: Vec<Json>, limit: usize },
    Extreme { best: Option<Value>, max: bool },
    Sum { long: i128, real: f64, span: i128, saw_long: bool, saw_real: bool, saw_span: bool },
    Avg { sum: f64, n: u64 },
    Arg { best: Option<Value>, row: Option<Row>, max: bool },
}

impl State {
    fn new(aggregate: &Aggregate) -> State {
        match aggregate {
            Aggregate::Count | Aggregate::CountIf(_) => State::Count(0),
            Aggregate::DCount(_) => State::Distinct(HashSet::new()),
            Aggregate::MakeSet(_, limit) => {
                State::Set { seen: HashSet::new(), items: Vec::new(), limit: *limit }
            }
            Aggregate::MakeList(_, limit) => State::List { items: Vec::new(), limit: *limit },
            Aggregate::Min(_) => State::Extreme { best: None, max: false },
            Aggregate::Max(_) => State::Extreme { best: None, max: true },
            Aggregate::Sum(_) => {
                State::Sum { long: 0, real: 0.0, span: 0, saw_long: false, saw_real: false, saw_span: false }
            }
            Aggregate::Avg(_) => State::Avg { sum: 0.0, n: 0 },
            Aggregate::ArgMax(..) => State::Arg { best: None, row: None, max: true },
            Aggregate::ArgMin(..) => State::Arg { best: None, row: None, max: false },
        }
    }

    fn update(&mut self, aggregate: &Aggregate, row: &Row, now: i64) {
        let value = |e: &CExpr| eval(e, row, now);
        let better = |candidate: &Value, best: &Option<Value>, max: bool| match best {
            None => true,
            Some(b) => compare(candidate, b).is_some_and(|o| if max { o.is_gt() } else { o.is_lt() }),
        };
        match (self, aggregate) {
            (State::Count(n), Aggregate::Count) => *n += 1,
            (State::Count(n), Aggregate::CountIf(e)) if value(e).is_true() => *n += 1,
            (State::Distinct(set), Aggregate::DCount(e)) => {
                let v = value(e);
                if !v.is_null() {
                    set.insert(v.group_key());
                }
            }
            (State::Set { seen, items, limit }, Aggregate::MakeSet(e, _)) => {
                let v = value(e);
                if !v.is_null() && items.len() < *limit && seen.insert(v.group_key()) {
                    items.push(v.to_json());
                }
            }
            (State::List { items, limit }, Aggregate::MakeList(e, _)) => {
                let v = value(e);
                if !v.is_null() && items.len() < *limit {
                    items.push(v.to_json());
                }
            }
            (State::Extreme { best, max }, Aggregate::Min(e) | Aggregate::Max(e)) => {
                let v = value(e);
                if !v.is_null() && better(&v, best, *max) {
                    *best = Some(v.normalized().into_owned());
                }
            }
            (State::Sum { long, real, span, saw_long, saw_real, saw_span }, Aggregate::Sum(e)) => {
                match value(e).normalized().as_ref() {
                    Value::Long(n) => {
                        *long += i128::from(*n);
                        *saw_long = true;
                    }
                    Value::Real(r) => {
                        *real += r;
                        *saw_real = true;
                    }
                    Value::Timespan(t) => {
                        *span += i128::from(*t);
                        *saw_span = true;
                    }
                    _ => {}
                }
            }
            (State::Avg { sum, n }, Aggregate::Avg(e)) => {
                if let Some(f) = value(e).normalized().as_f64() {
                    *sum += f;
                    *n += 1;
                }
            }
            (
                State::Arg { best, row: kept, max },
                Aggregate::ArgMax(e, columns) | Aggregate::ArgMin(e, columns),
            ) => {
                let v = value(e);
                if !v.is_null() && better(&v, best, *max) {
                    *best = Some(v);
                    *kept = Some(columns.iter().map(|c| row[*c].clone()).collect());
                }
            }
            _ => {}
        }
    }

    fn finish(self, aggregate: &Aggregate, out: &mut Row) {
        match self {
            State::Count(n) => out.push(Value::Long(n)),
            State::Distinct(set) => out.push(Value::Long(set.len() as i64)),
            State::Set { items, .. } | State::List { items, .. } => {
                out.push(Value::Dynamic(Json::Array(items)))
            }
            State::Extreme { best, .. } => out.push(best.unwrap_or(Value::Null)),
            State::Sum { long, real, span, saw_long, saw_real, saw_span } => out.push(if saw_real {
                Value::Real(real + long as f64)
            } else if saw_long {
                i64::try_from(long).map_or(Value::Real(long as f64), Value::Long)
            } else if saw_span {
                i64::try_from(span).map_or(Value::Null, Value::Timespan)
            } else {
                Value::Null
            }),
            State::Avg { sum, n } => out.push(if n == 0 { Value::Null } else { Value::Real(sum / n as f64) }),
            State::Arg { best, row, .. } => {
                let width = match aggregate {
                    Aggregate::ArgMax(_, columns) | Aggregate::ArgMin(_, columns) => columns.len(),
                    _ => 0,
                };
                out.push(best.unwrap_or(Value::Null));
                match row {
                    Some(values) => out.extend(values),
                    None => out.extend(std::iter::repeat_n(Value::Null, width)),
                }
            }
        }
    }
}

fn summarize(rows: Vec<Row>, by: &[CExpr], aggregates: &[Aggregate], now: i64) -> Vec<Row> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(Row, Vec<State>)> = Vec::new();
    for row in rows {
        let keys: Row = by.iter().map(|e| eval(e, &row, now)).collect();
        let slot = *index.entry(key_of(&keys)).or_insert_with(|| {
            groups.push((keys, aggregates.iter().map(State::new).collect()));
            groups.len() - 1
        });
        for (state, aggregate) in groups[slot].1.iter_mut().zip(aggregates) {
            state.update(aggregate, &row, now);
        }
    }
    // Without `by`, an empty input still gives one row (count() is 0).
    if by.is_empty() && groups.is_empty() {
        groups.push((Vec::new(), aggregates.iter().map(State::new).collect()));
    }
    groups
        .into_iter()
        .map(|(keys, states)| {
            let mut out = keys;
            for (state, aggregate) in states.into_iter().zip(aggregates) {
                state.finish(aggregate, &mut out);
            }
            out
        })
        .collect()
}
