//! The optimisations of a plan: the leading `where` conditions SQLite can answer with its indexes pushed
//! into the table scan ([`push_down`]), and the columns no operator needs left unread ([`prune`]).

use super::ast::BinaryOp;
use super::plan::{CExpr, Op, Plan, PlanSource};
use super::value::Value;
use crate::schema::{COLUMNS, Cell, ColumnType};
use crate::time::format_datetime;

/// Moves the conditions of the leading `where`s that SQLite can evaluate exactly (or more loosely) into
/// the table scan: comparisons of Timestamp with a time, equality of a column with a non-empty string, and
/// comparisons of a long column with a long. The `where`s stay in the plan.
pub(super) fn push_down(plan: &mut Plan) {
    match &mut plan.source {
        PlanSource::Table { filters, .. } => {
            for op in &plan.ops {
                match op {
                    Op::Where(predicate) => conjuncts(predicate, filters),
                    _ => break,
                }
            }
        }
        PlanSource::Union(parts) => {
            for part in parts {
                push_down(&mut part.plan);
            }
        }
    }
    for op in &mut plan.ops {
        if let Op::Join { right, .. } = op {
            push_down(right);
        }
    }
}

/// Marks, in every table scan, the columns that the rest of the plan can read, so that the scan decodes
/// only those (`| count` decodes nothing; most queries never parse AdditionalFields). `required` marks
/// which of the plan's output columns its consumer reads (`None`: all).
pub(super) fn prune(plan: &mut Plan, required: Option<&[bool]>) {
    let width = match &plan.source {
        PlanSource::Table { .. } => COLUMNS.len(),
        PlanSource::Union(parts) => parts.first().map_or(0, |p| p.mapping.len()),
    };
    let needed = needed_source_columns(&plan.ops, width, required);
    match &mut plan.source {
        PlanSource::Table { needed: slot, .. } => *slot = needed,
        PlanSource::Union(parts) => {
            for part in parts {
                let mut part_required = vec![false; part.plan.columns.len()];
                for (out, source) in part.mapping.iter().enumerate() {
                    if let Some(i) = source
                        && needed.get(out).copied().unwrap_or(true)
                    {
                        part_required[*i] = true;
                    }
                }
                prune(&mut part.plan, Some(&part_required));
            }
        }
    }
    for op in &mut plan.ops {
        if let Op::Join { right, .. } = op {
            prune(right, None);
        }
    }
}

fn mark_source(origin: &[Option<usize>], needed: &mut [bool], column: usize) {
    if let Some(Some(source)) = origin.get(column) {
        needed[*source] = true;
    }
}

/// Which columns of a plan's source its operators read, following columns through renames and
/// projections until an operator (summarize, distinct, count, join) makes new rows.
fn needed_source_columns(ops: &[Op], width: usize, required: Option<&[bool]>) -> Vec<bool> {
    // For each column of the current rows, the source column it still is (None once computed).
    let mut origin: Vec<Option<usize>> = (0..width).map(Some).collect();
    let mut needed = vec![false; width];
    let reads = |e: &CExpr, origin: &[Option<usize>], needed: &mut Vec<bool>| {
        e.visit_columns(&mut |i| mark_source(origin, needed, i));
    };
    for op in ops {
        match op {
            Op::Where(e) => reads(e, &origin, &mut needed),
            Op::Take(_) => {}
            Op::Extend(steps) => {
                for (slot, e) in steps {
                    reads(e, &origin, &mut needed);
                    match slot {
                        Some(j) => origin[*j] = None,
                        None => origin.push(None),
                    }
                }
            }
            Op::Map(exprs) => {
                exprs.iter().for_each(|e| reads(e, &origin, &mut needed));
                origin = exprs
                    .iter()
                    .map(|e| if let CExpr::Col(i) = e { origin.get(*i).copied().flatten() } else { None })
                    .collect();
            }
            Op::Sort(keys) => keys.iter().for_each(|k| reads(&k.expr, &origin, &mut needed)),
            Op::Top(_, key) => reads(&key.expr, &origin, &mut needed),
            Op::Distinct(exprs) => {
                exprs.iter().for_each(|e| reads(e, &origin, &mut needed));
                return needed;
            }
            Op::Summarize { by, aggregates } => {
                by.iter().for_each(|e| reads(e, &origin, &mut needed));
                for aggregate in aggregates {
                    aggregate.visit_columns(&mut |i| mark_source(&origin, &mut needed, i));
                }
                return needed;
            }
            Op::Count => return needed,
            Op::Join { .. } => {
                // The join's output carries every column of the left rows.
                for i in 0..origin.len() {
                    mark_source(&origin, &mut needed, i);
                }
                return needed;
            }
        }
    }
    for i in 0..origin.len() {
        if required.is_none_or(|r| r.get(i).copied().unwrap_or(true)) {
            mark_source(&origin, &mut needed, i);
        }
    }
    needed
}

fn conjuncts(expr: &CExpr, filters: &mut Vec<(String, Cell)>) {
    match expr {
        CExpr::Binary(BinaryOp::And, l, r) => {
            conjuncts(l, filters);
            conjuncts(r, filters);
        }
        CExpr::Binary(op, l, r) => {
            let (column, value, op) = match (l.as_ref(), r.as_ref()) {
                (CExpr::Col(i), CExpr::Lit(v)) => (*i, v, *op),
                (CExpr::Lit(v), CExpr::Col(i)) => (*i, v, flip(*op)),
                _ => return,
            };
            if let Some(filter) = sql_condition(column, op, value) {
                filters.push(filter);
            }
        }
        CExpr::Between { lhs, low, high, negated: false } => {
            if let (CExpr::Col(i), CExpr::Lit(lo), CExpr::Lit(hi)) =
                (lhs.as_ref(), low.as_ref(), high.as_ref())
            {
                filters.extend(sql_condition(*i, BinaryOp::Ge, lo));
                filters.extend(sql_condition(*i, BinaryOp::Le, hi));
            }
        }
        _ => {}
    }
}

fn flip(op: BinaryOp) -> BinaryOp {
    match op {
        BinaryOp::Lt => BinaryOp::Gt,
        BinaryOp::Le => BinaryOp::Ge,
        BinaryOp::Gt => BinaryOp::Lt,
        BinaryOp::Ge => BinaryOp::Le,
        other => other,
    }
}

fn sql_condition(column: usize, op: BinaryOp, value: &Value) -> Option<(String, Cell)> {
    let (name, ty) = COLUMNS.get(column)?;
    let sql_op = match op {
        BinaryOp::Eq => "=",
        BinaryOp::Lt => "<",
        BinaryOp::Le => "<=",
        BinaryOp::Gt => ">",
        BinaryOp::Ge => ">=",
        _ => return None,
    };
    let cell = match (ty, value) {
        // Stored timestamps are normalised, so text order is time order.
        (ColumnType::DateTime, Value::DateTime(t)) => Cell::Text(format_datetime(*t)),
        (ColumnType::Long, Value::Long(n)) => Cell::Integer(*n),
        // A NULL string reads as "", so only a non-empty string can be matched in SQL.
        (ColumnType::String, Value::String(s)) if op == BinaryOp::Eq && !s.is_empty() => {
            Cell::Text(s.clone())
        }
        _ => return None,
    };
    Some((format!("{name} {sql_op} ?"), cell))
}
