//! Checks a syntax tree against the tables and turns it into a plan ([`super::plan`]): names resolved to
//! column positions, `let`s and constant sub-expressions evaluated, regular expressions compiled; then the
//! plan is optimised ([`super::optimize`]).

use std::collections::HashMap;

use regex::Regex;

use super::ast::{
    Expr, ExprKind, JoinKey, JoinKind, LetValue, NamedExpr, Operator, OperatorKind, Query, SortKey, Source,
    Tabular, Union,
};
use super::error::{QueryError, Span};
use super::eval::eval;
use super::optimize::{prune, push_down};
use super::parser::suggest;
use super::plan::{Aggregate, CExpr, CSortKey, Func, Op, Plan, PlanSource, RegexArg, UnionPart};
use super::value::Value;
use crate::schema::{COLUMNS, DEVICE_INFO, FLEET_TABLES, TABLES, column_names};

type Result<T> = std::result::Result<T, QueryError>;

/// A scalar function's name, constructor, and fewest and most arguments.
type FunctionSpec = (&'static str, fn() -> Func, usize, usize);

const FUNCTIONS: [FunctionSpec; 31] = [
    ("ago", || Func::Ago, 1, 1),
    ("now", || Func::Now, 0, 1),
    ("datetime", || Func::DateTime, 1, 1),
    ("todatetime", || Func::DateTime, 1, 1),
    ("bin", || Func::Bin, 2, 2),
    ("floor", || Func::Bin, 2, 2),
    ("tolower", || Func::ToLower, 1, 1),
    ("toupper", || Func::ToUpper, 1, 1),
    ("tostring", || Func::ToString, 1, 1),
    ("toint", || Func::ToInt, 1, 1),
    ("tolong", || Func::ToLong, 1, 1),
    ("todouble", || Func::ToDouble, 1, 1),
    ("toreal", || Func::ToDouble, 1, 1),
    ("tobool", || Func::ToBool, 1, 1),
    ("strcat", || Func::StrCat, 1, 64),
    ("strlen", || Func::StrLen, 1, 1),
    ("substring", || Func::Substring, 2, 3),
    ("isempty", || Func::IsEmpty, 1, 1),
    ("isnotempty", || Func::IsNotEmpty, 1, 1),
    ("isnull", || Func::IsNull, 1, 1),
    ("isnotnull", || Func::IsNotNull, 1, 1),
    ("iff", || Func::Iff, 3, 3),
    ("iif", || Func::Iff, 3, 3),
    ("case", || Func::Case, 3, 255),
    ("split", || Func::Split, 2, 3),
    ("extract", || Func::Extract(None), 3, 3),
    ("parse_json", || Func::ParseJson, 1, 1),
    ("todynamic", || Func::ParseJson, 1, 1),
    ("not", || Func::Not, 1, 1),
    ("array_length", || Func::ArrayLength, 1, 1),
    ("coalesce", || Func::Coalesce, 1, 64),
];

const AGGREGATES: [&str; 11] =
    ["count", "countif", "dcount", "make_set", "make_list", "min", "max", "sum", "avg", "arg_max", "arg_min"];

/// Largest `make_set`/`make_list` when no size is given (KQL's default).
const DEFAULT_SET_SIZE: usize = 1_048_576;

pub fn compile(query: &Query, now: i64) -> Result<Plan> {
    let mut compiler = Compiler { now, scalars: HashMap::new(), tables: HashMap::new() };
    for binding in &query.lets {
        match &binding.value {
            LetValue::Scalar(expr) => {
                let value = match compiler.expr(expr, &[])? {
                    CExpr::Lit(v) => v,
                    _ => {
                        return Err(QueryError::new(
                            expr.span,
                            "expected a constant expression for a scalar let",
                        ));
                    }
                };
                compiler.tables.remove(&binding.name);
                compiler.scalars.insert(binding.name.clone(), value);
            }
            LetValue::Tabular(tabular) => {
                let plan = compiler.tabular(tabular)?;
                compiler.scalars.remove(&binding.name);
                compiler.tables.insert(binding.name.clone(), plan);
            }
        }
    }
    let mut plan = compiler.tabular(&query.body)?;
    push_down(&mut plan);
    prune(&mut plan, None);
    Ok(plan)
}

struct Compiler {
    now: i64,
    scalars: HashMap<String, Value>,
    tables: HashMap<String, Plan>,
}

impl Compiler {
    fn tabular(&mut self, tabular: &Tabular) -> Result<Plan> {
        let mut plan = match &tabular.source {
            Source::Name { name, span } => self.named_source(name, *span)?,
            Source::Union(union) => self.union(None, union)?,
            Source::Nested(inner) => self.tabular(inner)?,
        };
        for op in &tabular.ops {
            plan = self.operator(plan, op)?;
        }
        Ok(plan)
    }

    fn named_source(&self, name: &str, span: Span) -> Result<Plan> {
        if let Some(plan) = self.tables.get(name) {
            return Ok(plan.clone());
        }
        if let Some(table) = TABLES.iter().find(|t| **t == name) {
            return Ok(Plan {
                source: PlanSource::Table { table, filters: Vec::new(), needed: vec![true; COLUMNS.len()] },
                ops: Vec::new(),
                columns: column_names(),
            });
        }
        if name == DEVICE_INFO {
            return Err(QueryError::new(
                span,
                "DeviceInfo holds the agents' heartbeats, which only the fleet store keeps: \
                 run the query with `monitor hunt --fleet URL`",
            ));
        }
        let mut candidates: Vec<&str> = TABLES.to_vec();
        candidates.extend(self.tables.keys().map(String::as_str));
        let hint = suggest(name, &candidates).map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default();
        Err(QueryError::new(
            span,
            format!("unknown table '{name}'{hint}; expected DeviceNetworkEvents or DeviceEvents"),
        ))
    }

    fn union(&mut self, first: Option<Plan>, union: &Union) -> Result<Plan> {
        let mut parts: Vec<(Plan, String)> = Vec::new();
        if let Some(plan) = first {
            let name = source_name_of_plan(&plan).unwrap_or_else(|| "union_arg0".to_string());
            parts.push((plan, name));
        }
        for part in &union.parts {
            let name = match (&part.source, part.ops.is_empty()) {
                (Source::Name { name, .. }, true) => name.clone(),
                _ => format!("union_arg{}", parts.len()),
            };
            parts.push((self.tabular(part)?, name));
        }
        let mut columns: Vec<String> = Vec::new();
        if let Some(source_column) = &union.withsource {
            columns.push(source_column.clone());
        }
        for (plan, _) in &parts {
            for column in &plan.columns {
                if !columns.contains(column) {
                    columns.push(column.clone());
                }
            }
        }
        let parts = parts
            .into_iter()
            .map(|(plan, name)| {
                let mapping = columns.iter().map(|c| plan.columns.iter().position(|p| p == c)).collect();
                UnionPart { plan, source_name: union.withsource.as_ref().map(|_| name), mapping }
            })
            .collect();
        Ok(Plan { source: PlanSource::Union(parts), ops: Vec::new(), columns })
    }

    fn operator(&mut self, mut plan: Plan, op: &Operator) -> Result<Plan> {
        match &op.kind {
            OperatorKind::Where(predicate) => {
                let predicate = self.expr(predicate, &plan.columns)?;
                plan.ops.push(Op::Where(predicate));
            }
            OperatorKind::Project(items) => {
                let mut exprs = Vec::new();
                let mut names: Vec<String> = Vec::new();
                for item in items {
                    let name = self.item_name(item, &names);
                    if names.contains(&name) {
                        let span = item.name.as_ref().map_or(item.expr.span, |n| n.1);
                        return Err(QueryError::new(
                            span,
                            format!("duplicate column name '{name}' in project; expected each name once"),
                        ));
                    }
                    exprs.push(self.expr(&item.expr, &plan.columns)?);
                    names.push(name);
                }
                plan.ops.push(Op::Map(exprs));
                plan.columns = names;
            }
            OperatorKind::Extend(items) => {
                let mut steps = Vec::new();
                for item in items {
                    let expr = self.expr(&item.expr, &plan.columns)?;
                    let name = self.item_name(item, &plan.columns);
                    match plan.columns.iter().position(|c| *c == name) {
                        Some(i) => steps.push((Some(i), expr)),
                        None => {
                            steps.push((None, expr));
                            plan.columns.push(name);
                        }
                    }
                }
                plan.ops.push(Op::Extend(steps));
            }
            OperatorKind::ProjectAway(names) => {
                let mut keep = vec![true; plan.columns.len()];
                for (name, span) in names {
                    let mut matched = false;
                    for (i, column) in plan.columns.iter().enumerate() {
                        if glob_match(name, column) {
                            keep[i] = false;
                            matched = true;
                        }
                    }
                    if !matched && !name.contains('*') {
                        return Err(unknown_column(name, *span, &plan.columns));
                    }
                }
                let exprs = (0..plan.columns.len()).filter(|i| keep[*i]).map(CExpr::Col).collect();
                plan.columns =
                    plan.columns.iter().zip(&keep).filter(|(_, k)| **k).map(|(c, _)| c.clone()).collect();
                plan.ops.push(Op::Map(exprs));
            }
            OperatorKind::ProjectRename(pairs) => {
                for ((new, new_span), (old, old_span)) in pairs {
                    let Some(i) = plan.columns.iter().position(|c| c == old) else {
                        return Err(unknown_column(old, *old_span, &plan.columns));
                    };
                    if plan.columns.iter().enumerate().any(|(j, c)| j != i && c == new) {
                        return Err(QueryError::new(
                            *new_span,
                            format!("column '{new}' already exists; expected a new name"),
                        ));
                    }
                    plan.columns[i] = new.clone();
                }
            }
            OperatorKind::Summarize { aggregates, by } => {
                return self.summarize(plan, op.span, aggregates, by);
            }
            OperatorKind::Take(count) => {
                let n = self.row_count(count)?;
                plan.ops.push(Op::Take(n));
            }
            OperatorKind::Sort(keys) => {
                let keys =
                    keys.iter().map(|k| self.sort_key(k, &plan.columns)).collect::<Result<Vec<_>>>()?;
                plan.ops.push(Op::Sort(keys));
            }
            OperatorKind::Top { count, key } => {
                let n = self.row_count(count)?;
                let key = self.sort_key(key, &plan.columns)?;
                plan.ops.push(Op::Top(n, key));
            }
            OperatorKind::Distinct(None) => {
                plan.ops.push(Op::Distinct((0..plan.columns.len()).map(CExpr::Col).collect()));
            }
            OperatorKind::Distinct(Some(items)) => {
                let mut exprs = Vec::new();
                let mut names = Vec::new();
                for item in items {
                    let name = self.item_name(item, &names);
                    exprs.push(self.expr(&item.expr, &plan.columns)?);
                    names.push(unique_name(&names, &name));
                }
                plan.ops.push(Op::Distinct(exprs));
                plan.columns = names;
            }
            OperatorKind::Count => {
                plan.ops.push(Op::Count);
                plan.columns = vec!["Count".to_string()];
            }
            OperatorKind::Join { kind, right, on } => {
                let right = self.tabular(right)?;
                let find = |columns: &[String], (name, span): &(String, Span), side: &str| {
                    columns.iter().position(|c| c == name).ok_or_else(|| {
                        let hint = suggest(name, &columns.iter().map(String::as_str).collect::<Vec<_>>())
                            .map(|s| format!(" (did you mean '{s}'?)"))
                            .unwrap_or_default();
                        QueryError::new(
                            *span,
                            format!("unknown column '{name}' on the {side} side of the join{hint}; expected a column of that side"),
                        )
                    })
                };
                let mut left_keys = Vec::new();
                let mut right_keys = Vec::new();
                for key in on {
                    let (l, r) = match key {
                        JoinKey::Same(name, span) => ((name.clone(), *span), (name.clone(), *span)),
                        JoinKey::Pair { left, right } => (left.clone(), right.clone()),
                    };
                    left_keys.push(find(&plan.columns, &l, "left")?);
                    right_keys.push(find(&right.columns, &r, "right")?);
                }
                let columns = match kind {
                    JoinKind::LeftAnti | JoinKind::LeftSemi => plan.columns.clone(),
                    JoinKind::RightAnti | JoinKind::RightSemi => right.columns.clone(),
                    JoinKind::Inner | JoinKind::InnerUnique | JoinKind::LeftOuter => {
                        let mut columns = plan.columns.clone();
                        for c in &right.columns {
                            let name = unique_name(&columns, c);
                            columns.push(name);
                        }
                        columns
                    }
                };
                plan.ops.push(Op::Join { kind: *kind, right: Box::new(right), left_keys, right_keys });
                plan.columns = columns;
            }
            OperatorKind::Union(union) => return self.union(Some(plan), union),
        }
        Ok(plan)
    }

    fn summarize(
        &mut self,
        mut plan: Plan,
        span: Span,
        aggregates: &[NamedExpr],
        by: &[NamedExpr],
    ) -> Result<Plan> {
        if aggregates.is_empty() && by.is_empty() {
            return Err(QueryError::new(span, "expected an aggregation or 'by' after 'summarize'"));
        }
        // The summarize itself makes "intermediate" rows: the by values, then each aggregation's columns.
        // Items that compute over aggregations (`max(T) - min(T)`) are evaluated on those rows afterwards.
        let mut intermediate: Vec<String> = Vec::new();
        let mut by_exprs = Vec::new();
        for item in by {
            let name = self.item_name(item, &intermediate);
            by_exprs.push(self.expr(&item.expr, &plan.columns)?);
            intermediate.push(unique_name(&intermediate, &name));
        }
        let mut outputs: Vec<(String, Option<Expr>)> =
            intermediate.iter().map(|n| (n.clone(), None)).collect();
        let mut compiled = Vec::new();
        for item in aggregates {
            match &item.expr.kind {
                ExprKind::Call { name, name_span, args } if AGGREGATES.contains(&name.as_str()) => {
                    let (aggregate, mut names) =
                        self.aggregate(name, *name_span, args, item.expr.span, &plan.columns, &intermediate)?;
                    if let Some((explicit, _)) = &item.name {
                        names[0] = explicit.clone();
                    }
                    for n in names {
                        let n = unique_name(&intermediate, &n);
                        intermediate.push(n.clone());
                        outputs.push((n, None));
                    }
                    compiled.push(aggregate);
                }
                _ => {
                    let before = compiled.len();
                    let lifted =
                        self.lift_aggregates(&item.expr, &plan.columns, &mut intermediate, &mut compiled)?;
                    if compiled.len() == before {
                        return Err(match &item.expr.kind {
                            ExprKind::Call { name, name_span, .. } => {
                                let hint = suggest(name, &AGGREGATES)
                                    .map(|s| format!(" (did you mean '{s}'?)"))
                                    .unwrap_or_default();
                                QueryError::new(
                                    *name_span,
                                    format!(
                                        "'{name}' is not an aggregation{hint}; expected one of: {}",
                                        AGGREGATES.join(", ")
                                    ),
                                )
                            }
                            _ => QueryError::new(
                                item.expr.span,
                                "expected an aggregation such as count(), dcount(), make_set() or arg_max()",
                            ),
                        });
                    }
                    let taken: Vec<String> = outputs.iter().map(|(n, _)| n.clone()).collect();
                    let name = unique_name(&taken, &self.item_name(item, &taken));
                    outputs.push((name, Some(lifted)));
                }
            }
        }
        plan.ops.push(Op::Summarize { by: by_exprs, aggregates: compiled });
        if outputs.iter().all(|(_, e)| e.is_none()) {
            plan.columns = intermediate;
            return Ok(plan);
        }
        let mut exprs = Vec::new();
        for (name, expr) in &outputs {
            exprs.push(match expr {
                None => CExpr::Col(intermediate.iter().position(|c| c == name).unwrap_or_default()),
                Some(expr) => self.expr(expr, &intermediate)?,
            });
        }
        plan.ops.push(Op::Map(exprs));
        plan.columns = outputs.into_iter().map(|(n, _)| n).collect();
        Ok(plan)
    }

    /// A copy of `expr` in which every aggregation is compiled into `aggregates` and replaced by a
    /// reference to its (hidden) intermediate column.
    fn lift_aggregates(
        &mut self,
        expr: &Expr,
        input: &[String],
        intermediate: &mut Vec<String>,
        aggregates: &mut Vec<Aggregate>,
    ) -> Result<Expr> {
        if let ExprKind::Call { name, name_span, args } = &expr.kind
            && AGGREGATES.contains(&name.as_str())
        {
            if name == "arg_max" || name == "arg_min" {
                return Err(QueryError::new(
                    *name_span,
                    format!("{name}() returns several columns; expected it alone, as a summarize item"),
                ));
            }
            let (aggregate, _) = self.aggregate(name, *name_span, args, expr.span, input, intermediate)?;
            // A name no query can write, so that it cannot clash with a real column.
            let hidden = format!("\u{0}aggregate{}", aggregates.len());
            intermediate.push(hidden.clone());
            aggregates.push(aggregate);
            return Ok(Expr { kind: ExprKind::Name(hidden), span: expr.span, depth: 1 });
        }
        let mut lift = |e: &Expr| self.lift_aggregates(e, input, intermediate, aggregates).map(Box::new);
        let kind = match &expr.kind {
            ExprKind::Literal(_) | ExprKind::Name(_) | ExprKind::Star => expr.kind.clone(),
            ExprKind::Neg(e) => ExprKind::Neg(lift(e)?),
            ExprKind::Binary { op, lhs, rhs } => {
                ExprKind::Binary { op: *op, lhs: lift(lhs)?, rhs: lift(rhs)? }
            }
            ExprKind::StringOp { op, negated, lhs, rhs } => {
                ExprKind::StringOp { op: *op, negated: *negated, lhs: lift(lhs)?, rhs: lift(rhs)? }
            }
            ExprKind::In { lhs, list, negated, case_insensitive } => ExprKind::In {
                lhs: lift(lhs)?,
                list: list.iter().map(|e| lift(e).map(|b| *b)).collect::<Result<_>>()?,
                negated: *negated,
                case_insensitive: *case_insensitive,
            },
            ExprKind::HasAny { lhs, list, all } => ExprKind::HasAny {
                lhs: lift(lhs)?,
                list: list.iter().map(|e| lift(e).map(|b| *b)).collect::<Result<_>>()?,
                all: *all,
            },
            ExprKind::Between { lhs, low, high, negated } => {
                ExprKind::Between { lhs: lift(lhs)?, low: lift(low)?, high: lift(high)?, negated: *negated }
            }
            ExprKind::MatchesRegex { lhs, pattern } => {
                ExprKind::MatchesRegex { lhs: lift(lhs)?, pattern: lift(pattern)? }
            }
            ExprKind::Call { name, name_span, args } => ExprKind::Call {
                name: name.clone(),
                name_span: *name_span,
                args: args.iter().map(|e| lift(e).map(|b| *b)).collect::<Result<_>>()?,
            },
            ExprKind::Member { base, name } => ExprKind::Member { base: lift(base)?, name: name.clone() },
            ExprKind::Index { base, index } => ExprKind::Index { base: lift(base)?, index: lift(index)? },
        };
        Ok(Expr { kind, span: expr.span, depth: expr.depth })
    }

    /// One aggregation call: what it computes and the default names of the columns it makes.
    fn aggregate(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[Expr],
        span: Span,
        input: &[String],
        taken: &[String],
    ) -> Result<(Aggregate, Vec<String>)> {
        let arity = |min: usize, max: usize| -> Result<()> {
            if args.len() < min || args.len() > max {
                let expected = if min == max { format!("{min}") } else { format!("{min} to {max}") };
                return Err(QueryError::new(
                    span,
                    format!("{name}() takes {expected} argument(s), found {}", args.len()),
                ));
            }
            Ok(())
        };
        let base = args.first().and_then(default_name);
        let named = |prefix: &str| match &base {
            Some(b) => format!("{prefix}_{b}"),
            None => format!("{prefix}_"),
        };
        Ok(match name {
            "count" => {
                arity(0, 1)?;
                (Aggregate::Count, vec!["count_".to_string()])
            }
            "countif" => {
                arity(1, 1)?;
                (Aggregate::CountIf(self.expr(&args[0], input)?), vec!["countif_".to_string()])
            }
            "dcount" => {
                arity(1, 2)?;
                (Aggregate::DCount(self.expr(&args[0], input)?), vec![named("dcount")])
            }
            "make_set" | "make_list" => {
                arity(1, 2)?;
                let limit = match args.get(1) {
                    Some(arg) => self.row_count(arg)?,
                    None => DEFAULT_SET_SIZE,
                };
                let expr = self.expr(&args[0], input)?;
                if name == "make_set" {
                    (Aggregate::MakeSet(expr, limit), vec![named("set")])
                } else {
                    (Aggregate::MakeList(expr, limit), vec![named("list")])
                }
            }
            "min" | "max" | "sum" | "avg" => {
                arity(1, 1)?;
                let expr = self.expr(&args[0], input)?;
                let aggregate = match name {
                    "min" => Aggregate::Min(expr),
                    "max" => Aggregate::Max(expr),
                    "sum" => Aggregate::Sum(expr),
                    _ => Aggregate::Avg(expr),
                };
                (aggregate, vec![named(name)])
            }
            "arg_max" | "arg_min" => {
                arity(2, 64)?;
                let prefix = if name == "arg_max" { "max" } else { "min" };
                let expr = self.expr(&args[0], input)?;
                let mut returned = Vec::new();
                let mut names = vec![base.clone().unwrap_or_else(|| format!("{prefix}_"))];
                for arg in &args[1..] {
                    match &arg.kind {
                        ExprKind::Star => {
                            for (i, c) in input.iter().enumerate() {
                                if !taken.contains(c) && !names.contains(c) {
                                    returned.push(i);
                                    names.push(c.clone());
                                }
                            }
                        }
                        ExprKind::Name(column) => match input.iter().position(|c| c == column) {
                            Some(i) => {
                                returned.push(i);
                                names.push(column.clone());
                            }
                            None => return Err(unknown_column(column, arg.span, input)),
                        },
                        _ => {
                            return Err(QueryError::new(
                                arg.span,
                                format!("expected a column name or '*' to return from {name}()"),
                            ));
                        }
                    }
                }
                if name == "arg_max" {
                    (Aggregate::ArgMax(expr, returned), names)
                } else {
                    (Aggregate::ArgMin(expr, returned), names)
                }
            }
            other => {
                return Err(QueryError::new(
                    name_span,
                    format!(
                        "'{other}' is not a known aggregation; expected one of: {}",
                        AGGREGATES.join(", ")
                    ),
                ));
            }
        })
    }

    fn sort_key(&mut self, key: &SortKey, columns: &[String]) -> Result<CSortKey> {
        Ok(CSortKey {
            expr: self.expr(&key.expr, columns)?,
            descending: key.descending,
            nulls_first: key.nulls_first.unwrap_or(!key.descending),
        })
    }

    /// A constant, non-negative whole number of rows.
    fn row_count(&mut self, expr: &Expr) -> Result<usize> {
        match self.expr(expr, &[]) {
            Ok(CExpr::Lit(Value::Long(n))) if n >= 0 => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
            _ => Err(QueryError::new(expr.span, "expected a constant, non-negative whole number")),
        }
    }

    /// The output name of a projected expression: the given name, or one derived from it, or `ColumnN`.
    fn item_name(&self, item: &NamedExpr, taken: &[String]) -> String {
        if let Some((name, _)) = &item.name {
            return name.clone();
        }
        if let Some(name) = default_name(&item.expr) {
            return name;
        }
        (1..).map(|i| format!("Column{i}")).find(|n| !taken.contains(n)).unwrap_or_default()
    }

    fn expr(&mut self, expr: &Expr, columns: &[String]) -> Result<CExpr> {
        let compiled = match &expr.kind {
            ExprKind::Literal(v) => return Ok(CExpr::Lit(v.clone())),
            ExprKind::Name(name) => {
                if let Some(value) = self.scalars.get(name) {
                    return Ok(CExpr::Lit(value.clone()));
                }
                if let Some(i) = columns.iter().position(|c| c == name) {
                    return Ok(CExpr::Col(i));
                }
                if self.tables.contains_key(name) || FLEET_TABLES.contains(&name.as_str()) {
                    return Err(QueryError::new(
                        expr.span,
                        format!(
                            "'{name}' is a table; expected a scalar (a column, a literal or a scalar let)"
                        ),
                    ));
                }
                return Err(unknown_column(name, expr.span, columns));
            }
            ExprKind::Star => {
                return Err(QueryError::new(
                    expr.span,
                    "'*' is only allowed in arg_max(), arg_min() and distinct *",
                ));
            }
            ExprKind::Neg(inner) => CExpr::Neg(Box::new(self.expr(inner, columns)?)),
            ExprKind::Binary { op, lhs, rhs } => {
                CExpr::Binary(*op, Box::new(self.expr(lhs, columns)?), Box::new(self.expr(rhs, columns)?))
            }
            ExprKind::StringOp { op, negated, lhs, rhs } => CExpr::StringOp {
                op: *op,
                negated: *negated,
                lhs: Box::new(self.expr(lhs, columns)?),
                rhs: Box::new(self.expr(rhs, columns)?),
            },
            ExprKind::In { lhs, list, negated, case_insensitive } => CExpr::In {
                lhs: Box::new(self.expr(lhs, columns)?),
                list: self.exprs(list, columns)?,
                negated: *negated,
                case_insensitive: *case_insensitive,
            },
            ExprKind::HasAny { lhs, list, all } => CExpr::HasAny {
                lhs: Box::new(self.expr(lhs, columns)?),
                list: self.exprs(list, columns)?,
                all: *all,
            },
            ExprKind::Between { lhs, low, high, negated } => CExpr::Between {
                lhs: Box::new(self.expr(lhs, columns)?),
                low: Box::new(self.expr(low, columns)?),
                high: Box::new(self.expr(high, columns)?),
                negated: *negated,
            },
            ExprKind::MatchesRegex { lhs, pattern } => {
                let lhs = Box::new(self.expr(lhs, columns)?);
                let pattern = match self.expr(pattern, columns)? {
                    CExpr::Lit(v) => RegexArg::Fixed(compile_regex(&v.to_text(), pattern.span)?),
                    other => RegexArg::Computed(Box::new(other)),
                };
                CExpr::Regex { lhs, pattern }
            }
            ExprKind::Call { name, name_span, args } => {
                self.call(name, *name_span, args, expr.span, columns)?
            }
            ExprKind::Member { base, name } => {
                CExpr::Member(Box::new(self.expr(base, columns)?), name.clone())
            }
            ExprKind::Index { base, index } => {
                CExpr::Index(Box::new(self.expr(base, columns)?), Box::new(self.expr(index, columns)?))
            }
        };
        Ok(self.fold(compiled))
    }

    fn exprs(&mut self, exprs: &[Expr], columns: &[String]) -> Result<Vec<CExpr>> {
        exprs.iter().map(|e| self.expr(e, columns)).collect()
    }

    fn call(
        &mut self,
        name: &str,
        name_span: Span,
        args: &[Expr],
        span: Span,
        columns: &[String],
    ) -> Result<CExpr> {
        if AGGREGATES.contains(&name) && !FUNCTIONS.iter().any(|(n, ..)| *n == name) {
            return Err(QueryError::new(
                name_span,
                format!("aggregation '{name}()' is only allowed in summarize; expected a scalar function"),
            ));
        }
        let Some((_, make, min, max)) = FUNCTIONS.iter().find(|(n, ..)| *n == name) else {
            let names: Vec<&str> = FUNCTIONS.iter().map(|(n, ..)| *n).collect();
            let hint = suggest(name, &names).map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default();
            return Err(QueryError::new(
                name_span,
                format!("unknown function '{name}'{hint}; expected one of: {}", names.join(", ")),
            ));
        };
        if args.len() < *min || args.len() > *max {
            let expected = match (min, max) {
                (a, b) if a == b => format!("{a}"),
                (a, 64 | 255) => format!("at least {a}"),
                (a, b) => format!("{a} to {b}"),
            };
            return Err(QueryError::new(
                span,
                format!("{name}() takes {expected} argument(s), found {}", args.len()),
            ));
        }
        if name == "case" && args.len().is_multiple_of(2) {
            return Err(QueryError::new(
                span,
                "case() takes condition/value pairs and a final else value; expected an odd number of arguments",
            ));
        }
        let mut func = make();
        let compiled = self.exprs(args, columns)?;
        if let (Func::Extract(fixed), Some(CExpr::Lit(pattern))) = (&mut func, compiled.first()) {
            *fixed = Some(compile_regex(&pattern.to_text(), args[0].span)?);
        }
        Ok(CExpr::Call(func, compiled))
    }

    /// Evaluates an expression whose operands are all constants.
    fn fold(&self, expr: CExpr) -> CExpr {
        let constant = |e: &CExpr| matches!(e, CExpr::Lit(_));
        let foldable = match &expr {
            CExpr::Lit(_) | CExpr::Col(_) => false,
            CExpr::Neg(e) | CExpr::Member(e, _) => constant(e),
            CExpr::Binary(_, l, r) | CExpr::Index(l, r) | CExpr::StringOp { lhs: l, rhs: r, .. } => {
                constant(l) && constant(r)
            }
            CExpr::In { lhs, list, .. } | CExpr::HasAny { lhs, list, .. } => {
                constant(lhs) && list.iter().all(constant)
            }
            CExpr::Between { lhs, low, high, .. } => constant(lhs) && constant(low) && constant(high),
            CExpr::Regex { lhs, pattern } => {
                constant(lhs) && matches!(pattern, RegexArg::Fixed(_))
                    || matches!(pattern, RegexArg::Computed(p) if constant(p) && constant(lhs))
            }
            CExpr::Call(_, args) => args.iter().all(constant),
        };
        if foldable { CExpr::Lit(eval(&expr, &[], self.now)) } else { expr }
    }
}

fn compile_regex(pattern: &str, span: Span) -> Result<Regex> {
    regex::RegexBuilder::new(pattern).size_limit(1 << 20).build().map_err(|e| {
        let detail = e.to_string().lines().last().unwrap_or("").trim().to_string();
        QueryError::new(span, format!("invalid regular expression: {detail}; expected RE2 syntax"))
    })
}

fn unknown_column(name: &str, span: Span, columns: &[String]) -> QueryError {
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    let hint = suggest(name, &names).map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default();
    QueryError::new(span, format!("unknown column '{name}'{hint}; expected one of: {}", names.join(", ")))
}

/// The name KQL gives an unnamed column: a column keeps its name, `bin(X, ..)` is named X, and
/// `AdditionalFields.Sni` becomes `AdditionalFields_Sni`.
pub(crate) fn default_name(expr: &Expr) -> Option<String> {
    match &expr.kind {
        ExprKind::Name(name) => Some(name.clone()),
        ExprKind::Member { base, name } => Some(format!("{}_{name}", default_name(base)?)),
        ExprKind::Index { base, index } => match &index.kind {
            ExprKind::Literal(Value::String(key)) => Some(format!("{}_{key}", default_name(base)?)),
            _ => None,
        },
        ExprKind::Call { name, args, .. } if name == "bin" || name == "floor" => {
            args.first().and_then(default_name)
        }
        _ => None,
    }
}

fn source_name_of_plan(plan: &Plan) -> Option<String> {
    match &plan.source {
        PlanSource::Table { table, .. } if plan.ops.is_empty() => Some((*table).to_string()),
        _ => None,
    }
}

/// `base`, or `base1`, `base2`... if it is taken.
pub(crate) fn unique_name(taken: &[String], base: &str) -> String {
    if !taken.iter().any(|t| t == base) {
        return base.to_string();
    }
    (1..).map(|i| format!("{base}{i}")).find(|n| !taken.contains(n)).unwrap_or_default()
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let mut rest = name;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            let Some(r) = rest.strip_prefix(part) else { return false };
            rest = r;
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            let Some(at) = rest.find(part) else { return false };
            rest = &rest[at + part.len()..];
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kql::parser::parse;

    fn plan(query: &str) -> Plan {
        compile(&parse(query).expect("query parses"), 0).expect("query compiles")
    }

    #[test]
    fn time_and_equality_are_pushed_down() {
        let p = plan(
            r#"DeviceNetworkEvents | where Timestamp > datetime(2026-01-01) and RemoteIP == "10.0.0.5" and RemoteUrl has "x" | where RemotePort == 3128"#,
        );
        let PlanSource::Table { filters, .. } = &p.source else { panic!("expected a table scan") };
        let sql: Vec<&str> = filters.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(sql, ["Timestamp > ?", "RemoteIP = ?", "RemotePort = ?"]);
        assert_eq!(p.ops.len(), 2, "the wheres stay");
    }

    #[test]
    fn empty_strings_are_not_pushed_down() {
        let p = plan(r#"DeviceNetworkEvents | where InitiatingProcessAccountName == """#);
        let PlanSource::Table { filters, .. } = &p.source else { panic!("expected a table scan") };
        assert!(filters.is_empty());
    }

    fn needed(p: &Plan) -> Vec<&'static str> {
        let PlanSource::Table { needed, .. } = &p.source else { panic!("expected a table scan") };
        COLUMNS.iter().zip(needed).filter(|(_, n)| **n).map(|((name, _), _)| *name).collect()
    }

    #[test]
    fn scans_decode_only_the_columns_the_query_reads() {
        assert!(needed(&plan("DeviceEvents | count")).is_empty());
        assert_eq!(
            needed(&plan(
                "DeviceEvents | where RemotePort == 1 | extend X = RemoteUrl | project X, Y = ReportId"
            )),
            ["RemotePort", "RemoteUrl", "ReportId"]
        );
        assert_eq!(
            needed(&plan(
                "DeviceEvents | project-rename T = Timestamp | summarize arg_max(T, DeviceName) by LocalIP"
            )),
            ["Timestamp", "DeviceName", "LocalIP"]
        );
        assert_eq!(needed(&plan("DeviceEvents | take 1")).len(), COLUMNS.len());
        let union = plan("union DeviceEvents, DeviceNetworkEvents | summarize dcount(ReportId)");
        let PlanSource::Union(parts) = &union.source else { panic!("expected a union") };
        for part in parts {
            assert_eq!(needed(&part.plan), ["ReportId"]);
        }
    }

    #[test]
    fn constants_are_folded() {
        let p = plan("DeviceEvents | where Timestamp > ago(1h)");
        let Op::Where(CExpr::Binary(_, _, rhs)) = &p.ops[0] else { panic!("expected a where") };
        assert!(matches!(rhs.as_ref(), CExpr::Lit(Value::DateTime(t)) if *t == -3_600_000_000));
    }

    #[test]
    fn globs() {
        assert!(glob_match("Initiating*", "InitiatingProcessId"));
        assert!(glob_match("*Port", "RemotePort"));
        assert!(glob_match("*Process*Name", "InitiatingProcessFileName"));
        assert!(!glob_match("Remote*", "LocalPort"));
    }
}
