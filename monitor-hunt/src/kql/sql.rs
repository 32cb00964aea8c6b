//! The KQL subset compiled to ClickHouse SQL, for `monitor hunt --fleet`: filters, aggregations, sorting
//! and limits run on the server, not by pulling rows.
//!
//! The SQL runs on every ClickHouse from 18.16 on: time is integer microseconds (`TimestampMicros`), so
//! `ago()`, `bin()` and comparisons are integer arithmetic (no DateTime64, no toStartOfInterval);
//! `AdditionalFields` is JSON text read with `visitParamExtract*` (no JSONExtract). Every table is read
//! with `FINAL`, so a redelivered event counts once; a query that reads every row reads a large table in
//! DeviceId ranges side by side ([`TableSplits`]), since 18.16 reads `FINAL` in one thread. Each operator is
//! one nested SELECT. What has no translation yet is a [`QueryError`] at the construct that names it.

use super::ast::{
    BinaryOp, Expr, ExprKind, NamedExpr, Operator, OperatorKind, Query, SortKey, Source, StringOp,
};
use super::compile::{default_name, unique_name};
use super::error::{QueryError, Span};
use super::parse;
use super::value::Value;
use crate::schema::{ColumnType, FLEET_TABLES, columns_of};

/// How a result column's cells are read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    /// Integer microseconds since the epoch.
    DateTime,
    /// Integer microseconds.
    Timespan,
    Long,
    Real,
    /// 0 or 1.
    Bool,
    String,
    /// JSON text (or, from `make_set`, an array).
    Dynamic,
}

/// A query as ClickHouse SQL, and the names and types of its columns.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlQuery {
    pub sql: String,
    pub columns: Vec<(String, SqlType)>,
}

type Result<T> = std::result::Result<T, QueryError>;
/// A result column: its name and type.
type Column = (String, SqlType);

fn not_pushed_down(span: Span, what: &str) -> QueryError {
    QueryError::new(
        span,
        format!("{what} is not supported by `hunt --fleet` yet (it runs over a local store)"),
    )
}

/// Compiles `query` for the tables of `database`, with `now` (microseconds) as `now()` and the reference
/// of `ago()`.
pub fn to_clickhouse(query: &str, database: &str, now: i64) -> Result<SqlQuery> {
    to_clickhouse_with(query, database, now, &TableSplits::default())
}

/// [`to_clickhouse`], each table read in the DeviceId ranges `splits` gives it.
pub fn to_clickhouse_with(query: &str, database: &str, now: i64, splits: &TableSplits) -> Result<SqlQuery> {
    let ast = parse(query)?;
    compile(&ast, &Target { database, now, splits }).map_err(|e| e.locate(query))
}

/// Where a tabular source is read from, and how.
struct Target<'a> {
    database: &'a str,
    now: i64,
    splits: &'a TableSplits,
}

/// The column the fleet's tables are sorted by first (then `Seq`), never NULL there.
pub const DEVICE_ID: &str = "DeviceId";

/// DeviceIds that cut a table into ranges read side by side: ClickHouse 18.16 reads a table `FINAL` (each
/// `(DeviceId, Seq)` once) in one thread, merging every part into one stream, and so does everything after
/// it in that stream. A range of DeviceIds is a range of the sorting key, so each range is read `FINAL` on
/// its own (a redelivered event has its DeviceId, so it stays in one range) and the ranges run in threads of
/// their own, joined by UNION ALL. Boundaries are kept in byte order, as ClickHouse orders strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSplits {
    boundaries: Vec<(&'static str, Vec<String>)>,
}

impl TableSplits {
    /// Cuts `table` at `boundaries` (sorted and deduplicated here; none: one read).
    pub fn set(&mut self, table: &'static str, mut boundaries: Vec<String>) {
        boundaries.sort();
        boundaries.dedup();
        self.boundaries.retain(|(t, _)| *t != table);
        self.boundaries.push((table, boundaries));
    }

    pub fn boundaries(&self, table: &str) -> &[String] {
        self.boundaries.iter().find(|(t, _)| *t == table).map_or(&[], |(_, b)| b.as_slice())
    }
}

/// The conditions that pick each DeviceId range `boundaries` (sorted) make, in order: every DeviceId is
/// in exactly one. No boundaries: none (the whole table).
fn range_conditions(boundaries: &[String]) -> Vec<String> {
    let (Some(first), Some(last)) = (boundaries.first(), boundaries.last()) else { return Vec::new() };
    let device = ident(DEVICE_ID);
    let mut ranges = Vec::with_capacity(boundaries.len() + 1);
    ranges.push(format!("{device} < {}", quote(first)));
    for pair in boundaries.windows(2) {
        ranges.push(format!("{device} >= {} AND {device} < {}", quote(&pair[0]), quote(&pair[1])));
    }
    ranges.push(format!("{device} >= {}", quote(last)));
    ranges
}

/// `read` (a SELECT ... FROM ... FINAL without WHERE) once per DeviceId range `boundaries` make, each with
/// `filter` (a condition, or empty) and its range, joined by UNION ALL: the ranges run side by side.
pub fn ranged_reads(read: &str, filter: &str, boundaries: &[String]) -> String {
    let ranges = range_conditions(boundaries);
    let ranges = if ranges.is_empty() { vec![String::new()] } else { ranges };
    ranges
        .iter()
        .map(|range| {
            let conditions: Vec<&str> = [filter, range].into_iter().filter(|c| !c.is_empty()).collect();
            if conditions.is_empty() {
                read.to_string()
            } else {
                format!("{read} WHERE {}", conditions.join(" AND "))
            }
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

/// Boundaries that cut rows counted per DeviceId (`devices`, in any order) into `parts` ranges of about
/// as many rows each; none when there is one part, or fewer than `min_rows` rows to cut.
pub fn split_boundaries(devices: &[(String, u64)], parts: usize, min_rows: u64) -> Vec<String> {
    let total: u64 = devices.iter().map(|(_, n)| n).sum();
    if parts <= 1 || total < min_rows {
        return Vec::new();
    }
    let mut sorted: Vec<&(String, u64)> = devices.iter().collect();
    sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut boundaries = Vec::with_capacity(parts - 1);
    let mut seen = 0u64;
    for (id, n) in sorted {
        let next = boundaries.len() as u64 + 1;
        // A range starts at this device when the rows before it reach the next share.
        if seen > 0 && seen * parts as u64 >= total * next && boundaries.len() + 1 < parts {
            boundaries.push(id.clone());
        }
        seen += n;
    }
    boundaries
}

/// Whether `query` has an operator that reads every row before it answers (summarize, sort, top,
/// distinct, count, join): only such a query gains from reading a table in ranges side by side
/// ([`TableSplits`]); one that streams rows to a `take` ends early either way. False for a query that
/// does not parse (its compilation says why).
pub fn reads_every_row(query: &str) -> bool {
    fn tabular(t: &super::ast::Tabular) -> bool {
        let nested = match &t.source {
            Source::Nested(inner) => tabular(inner),
            Source::Union(union) => union.parts.iter().any(tabular),
            Source::Name { .. } => false,
        };
        nested
            || t.ops.iter().any(|op| match &op.kind {
                OperatorKind::Summarize { .. }
                | OperatorKind::Sort(_)
                | OperatorKind::Top { .. }
                | OperatorKind::Distinct(_)
                | OperatorKind::Count
                | OperatorKind::Join { .. } => true,
                OperatorKind::Union(union) => union.parts.iter().any(tabular),
                _ => false,
            })
    }
    parse(query).is_ok_and(|q| tabular(&q.body))
}

fn compile(query: &Query, target: &Target<'_>) -> Result<SqlQuery> {
    if let Some(first) = query.lets.first() {
        return Err(not_pushed_down(first.span, "`let`"));
    }
    let tabular = &query.body;
    let mut relation = match &tabular.source {
        Source::Name { name, span } => table(name, *span, target)?,
        Source::Union(union) => return Err(not_pushed_down(union.span, "`union`")),
        Source::Nested(inner) => {
            let nested = Query { lets: Vec::new(), body: (**inner).clone() };
            let q = compile(&nested, target)?;
            Relation { sql: q.sql, columns: q.columns, sorted: false }
        }
    };
    for op in &tabular.ops {
        relation = operator(relation, op, target.now)?;
    }
    Ok(SqlQuery { sql: relation.sql, columns: relation.columns })
}

/// The SQL so far and its columns.
struct Relation {
    sql: String,
    columns: Vec<(String, SqlType)>,
    /// Its last clause is ORDER BY (so that a following `take` adds LIMIT to the same SELECT and keeps the
    /// order).
    sorted: bool,
}

fn ident(name: &str) -> String {
    format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
}

/// `text` as a ClickHouse string literal.
pub fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn table(name: &str, span: Span, target: &Target<'_>) -> Result<Relation> {
    let (Some(table), Some(schema)) = (FLEET_TABLES.iter().find(|t| **t == name), columns_of(name)) else {
        return Err(QueryError::new(
            span,
            format!("unknown table '{name}'; expected {}", FLEET_TABLES.join(", ")),
        ));
    };
    let mut select = Vec::with_capacity(schema.len());
    let mut columns = Vec::with_capacity(schema.len());
    for &(column, ty) in schema {
        let (expr, sql_type) = match (column, ty) {
            (_, ColumnType::DateTime) => ("TimestampMicros".to_string(), SqlType::DateTime),
            // Never NULL in the fleet's tables: as it is stored, so that a range of it is a range of the key.
            (DEVICE_ID, _) => (ident(column), SqlType::String),
            // KQL strings are never null: a missing one is empty, as in the local store.
            (_, ColumnType::String) => (format!("ifNull({}, '')", ident(column)), SqlType::String),
            (_, ColumnType::Long) => (ident(column), SqlType::Long),
            (_, ColumnType::Dynamic) => (format!("ifNull({}, '')", ident(column)), SqlType::Dynamic),
        };
        select.push(format!("{expr} AS {}", ident(column)));
        columns.push((column.to_string(), sql_type));
    }
    let read = format!("SELECT {} FROM {}.{} FINAL", select.join(", "), ident(target.database), ident(table));
    Ok(Relation { sql: ranged_reads(&read, "", target.splits.boundaries(table)), columns, sorted: false })
}

fn column_list(columns: &[(String, SqlType)]) -> String {
    columns.iter().map(|(name, _)| ident(name)).collect::<Vec<_>>().join(", ")
}

fn operator(input: Relation, op: &Operator, now: i64) -> Result<Relation> {
    let wrap = |select: String, rest: &str, columns: Vec<(String, SqlType)>, sorted: bool| Relation {
        sql: format!("SELECT {select} FROM ({}){rest}", input.sql),
        columns,
        sorted,
    };
    let all = column_list(&input.columns);
    Ok(match &op.kind {
        OperatorKind::Where(predicate) => {
            let (sql, ty) = expr(predicate, &input.columns, now)?;
            if ty != SqlType::Bool {
                return Err(QueryError::new(predicate.span, "`where` needs a condition (true or false)"));
            }
            wrap(all, &format!(" WHERE {sql}"), input.columns.clone(), false)
        }
        OperatorKind::Project(items) => {
            let (select, columns) = items_sql(items, &input.columns, now, &[])?;
            wrap(select.join(", "), "", columns, false)
        }
        OperatorKind::Extend(items) => {
            let (select, added) = items_sql(items, &input.columns, now, &[])?;
            // An extended name that exists replaces that column in place, as in KQL.
            let mut parts = Vec::new();
            let mut columns = Vec::new();
            for (name, ty) in &input.columns {
                match added.iter().position(|(n, _)| n == name) {
                    Some(i) => {
                        parts.push(select[i].clone());
                        columns.push(added[i].clone());
                    }
                    None => {
                        parts.push(ident(name));
                        columns.push((name.clone(), *ty));
                    }
                }
            }
            for (i, column) in added.iter().enumerate() {
                if !input.columns.iter().any(|(n, _)| *n == column.0) {
                    parts.push(select[i].clone());
                    columns.push(column.clone());
                }
            }
            wrap(parts.join(", "), "", columns, false)
        }
        OperatorKind::Summarize { aggregates, by } => {
            // The grouped SELECT names its columns privately (`__g0`, `__a0`, ...) and the SELECT over it
            // gives them their KQL names: ClickHouse reads a name as a SELECT alias before a column, inside
            // aggregates too, so `max(Timestamp) ... by bin(Timestamp, 1h)` (named Timestamp) would read the
            // bucket. The outer SELECT also unpacks arg_max's tuple, which carries one row's columns.
            let by_items = items(by, &input.columns, now, &[])?;
            let mut select = Vec::new();
            let mut group = Vec::new();
            let mut unpack = Vec::new();
            let mut columns: Vec<Column> = Vec::new();
            for (i, (sql, (name, ty))) in by_items.into_iter().enumerate() {
                let private = ident(&format!("__g{i}"));
                select.push(format!("{sql} AS {private}"));
                group.push(private.clone());
                unpack.push(format!("{private} AS {}", ident(&name)));
                columns.push((name, ty));
            }
            for (n, item) in aggregates.iter().enumerate() {
                let taken: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
                let value = ident(&format!("__a{n}"));
                if let Some(arg) = arg_aggregate(&item.expr, &input.columns, &taken, now)? {
                    let row = ident(&format!("__a{n}_row"));
                    let keys = ident(&format!("__a{n}_n"));
                    let (extreme, pick) = if arg.max { ("max", "argMax") } else { ("min", "argMin") };
                    select.push(format!("{extreme}({}) AS {value}", arg.key_sql));
                    // A group whose keys are all null has no row to take: its columns are null, as locally
                    // (argMax would give the tuple's defaults).
                    select.push(format!("count({}) AS {keys}", arg.key_sql));
                    // Only where the key can be null, and not around a Dynamic column, which may be an
                    // array (never Nullable in ClickHouse): there a group without a row gives its default.
                    let nullable_key = !matches!(arg.key_type, SqlType::String | SqlType::DateTime);
                    let or_null = |sql: String, ty: SqlType| {
                        if nullable_key && ty != SqlType::Dynamic {
                            format!("if({keys} = 0, NULL, {sql})")
                        } else {
                            sql
                        }
                    };
                    // `arg_max(Timestamp, *)` over nothing but the key and the groups is the extreme alone.
                    if !arg.returned.is_empty() {
                        let returned: Vec<&str> =
                            arg.returned.iter().map(|(_, _, sql)| sql.as_str()).collect();
                        select.push(format!(
                            "{pick}(tuple({}), {}) AS {row}",
                            returned.join(", "),
                            arg.key_sql
                        ));
                    }
                    let first = match &item.name {
                        Some((name, _)) => name.clone(),
                        None => arg.key_name,
                    };
                    let first = unique_name(&taken, &first);
                    unpack.push(format!("{} AS {}", or_null(value.clone(), arg.key_type), ident(&first)));
                    columns.push((first, arg.key_type));
                    for (i, (name, ty, _)) in arg.returned.into_iter().enumerate() {
                        let taken: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
                        let name = unique_name(&taken, &name);
                        let element = or_null(format!("tupleElement({row}, {})", i + 1), ty);
                        unpack.push(format!("{element} AS {}", ident(&name)));
                        columns.push((name, ty));
                    }
                    continue;
                }
                let (sql, ty, base) = aggregate(&item.expr, &input.columns, now)?;
                // As the local compiler names it: an explicit name too is made unique.
                let name = unique_name(&taken, item.name.as_ref().map_or(&base, |(name, _)| name));
                select.push(format!("{sql} AS {value}"));
                unpack.push(format!("{value} AS {}", ident(&name)));
                columns.push((name, ty));
            }
            let group =
                if group.is_empty() { String::new() } else { format!(" GROUP BY {}", group.join(", ")) };
            let grouped = wrap(select.join(", "), &group, Vec::new(), false);
            Relation {
                sql: format!("SELECT {} FROM ({})", unpack.join(", "), grouped.sql),
                columns,
                sorted: false,
            }
        }
        OperatorKind::Take(count) => {
            let n = row_count(count, now)?;
            if input.sorted {
                return Ok(Relation {
                    sql: format!("{} LIMIT {n}", input.sql),
                    columns: input.columns,
                    sorted: false,
                });
            }
            wrap(all, &format!(" LIMIT {n}"), input.columns.clone(), false)
        }
        OperatorKind::Sort(keys) => {
            let order = keys.iter().map(|k| sort_key(k, &input.columns, now)).collect::<Result<Vec<_>>>()?;
            wrap(all, &format!(" ORDER BY {}", order.join(", ")), input.columns.clone(), true)
        }
        OperatorKind::Top { count, key } => {
            let n = row_count(count, now)?;
            let order = sort_key(key, &input.columns, now)?;
            wrap(all, &format!(" ORDER BY {order} LIMIT {n}"), input.columns.clone(), false)
        }
        OperatorKind::Count => {
            wrap("count() AS `Count`".into(), "", vec![("Count".into(), SqlType::Long)], false)
        }
        OperatorKind::Distinct(Some(items)) => {
            let (select, columns) = items_sql(items, &input.columns, now, &[])?;
            wrap(format!("DISTINCT {}", select.join(", ")), "", columns, false)
        }
        OperatorKind::Distinct(None) => wrap(format!("DISTINCT {all}"), "", input.columns.clone(), false),
        OperatorKind::ProjectAway(_) => return Err(not_pushed_down(op.span, "`project-away`")),
        OperatorKind::ProjectRename(_) => return Err(not_pushed_down(op.span, "`project-rename`")),
        OperatorKind::Join { .. } => return Err(not_pushed_down(op.span, "`join`")),
        OperatorKind::Union(_) => return Err(not_pushed_down(op.span, "`union`")),
    })
}

/// `name = expr, ...` as SELECT items and the columns they make.
fn items_sql(
    named: &[NamedExpr],
    input: &[(String, SqlType)],
    now: i64,
    taken: &[String],
) -> Result<(Vec<String>, Vec<Column>)> {
    Ok(items(named, input, now, taken)?
        .into_iter()
        .map(|(sql, (name, ty))| (format!("{sql} AS {}", ident(&name)), (name, ty)))
        .unzip())
}

/// `name = expr, ...` as SQL expressions and the columns they make (names unique beside `taken`).
fn items(
    items: &[NamedExpr],
    input: &[(String, SqlType)],
    now: i64,
    taken: &[String],
) -> Result<Vec<(String, Column)>> {
    let mut out: Vec<(String, Column)> = Vec::with_capacity(items.len());
    for item in items {
        let (sql, ty) = expr(&item.expr, input, now)?;
        let mut names: Vec<String> = taken.to_vec();
        names.extend(out.iter().map(|(_, (n, _))| n.clone()));
        let name = match (&item.name, default_name(&item.expr)) {
            (Some((name, _)), _) => unique_name(&names, name),
            (None, Some(name)) => unique_name(&names, &name),
            (None, None) => {
                (1..).map(|i| format!("Column{i}")).find(|n| !names.contains(n)).unwrap_or_default()
            }
        };
        out.push((sql, (name, ty)));
    }
    Ok(out)
}

fn row_count(count: &Expr, now: i64) -> Result<u64> {
    match expr(count, &[], now) {
        Ok((sql, SqlType::Long)) => sql
            .parse::<u64>()
            .map_err(|_| QueryError::new(count.span, "expected a constant, non-negative whole number")),
        _ => Err(QueryError::new(count.span, "expected a constant, non-negative whole number")),
    }
}

fn sort_key(key: &SortKey, input: &[(String, SqlType)], now: i64) -> Result<String> {
    let (sql, _) = expr(&key.expr, input, now)?;
    // KQL's default: nulls last when descending, first when ascending.
    let nulls_first = key.nulls_first.unwrap_or(!key.descending);
    Ok(format!(
        "{sql} {} NULLS {}",
        if key.descending { "DESC" } else { "ASC" },
        if nulls_first { "FIRST" } else { "LAST" }
    ))
}

/// `value` (of type `ty`) as KQL's text of it: a null number is empty, a bool is `true` or `false`. A time
/// is not translated yet (`what` names the call).
fn as_string(value: &str, ty: SqlType, span: Span, what: &str) -> Result<String> {
    Ok(match ty {
        SqlType::String => value.to_string(),
        SqlType::Dynamic => dynamic_string(value),
        SqlType::Long | SqlType::Real => format!("ifNull(toString({value}), '')"),
        SqlType::Bool => format!("if({value}, 'true', 'false')"),
        SqlType::DateTime | SqlType::Timespan => return Err(not_pushed_down(span, what)),
    })
}

/// An `arg_max(Key, Column, ...)` or `arg_min` of a summarize.
struct ArgAggregate {
    max: bool,
    key_sql: String,
    key_type: SqlType,
    /// The name of its first column (the key's extreme), as the local compiler names it.
    key_name: String,
    /// The columns it returns from the row with the extreme key: name, type and SQL.
    returned: Vec<(String, SqlType, String)>,
}

/// `e` as an arg_max or arg_min (`None`: another aggregate). `taken` are the names of the columns the
/// summarize makes before it: `*` returns every input column but those and the key's.
fn arg_aggregate(
    e: &Expr,
    input: &[(String, SqlType)],
    taken: &[String],
    now: i64,
) -> Result<Option<ArgAggregate>> {
    let ExprKind::Call { name, args, .. } = &e.kind else { return Ok(None) };
    let max = match name.as_str() {
        "arg_max" => true,
        "arg_min" => false,
        _ => return Ok(None),
    };
    if args.len() < 2 {
        return Err(QueryError::new(
            e.span,
            format!("{name}() takes 2 to 64 argument(s), found {}", args.len()),
        ));
    }
    let (key_sql, key_type) = expr(&args[0], input, now)?;
    let key_name = default_name(&args[0]).unwrap_or_else(|| if max { "max_" } else { "min_" }.to_string());
    let mut names = vec![key_name.clone()];
    let mut returned = Vec::new();
    for arg in &args[1..] {
        match &arg.kind {
            ExprKind::Star => {
                for (column, ty) in input {
                    if !taken.contains(column) && !names.contains(column) {
                        names.push(column.clone());
                        returned.push((column.clone(), *ty, ident(column)));
                    }
                }
            }
            ExprKind::Name(column) => {
                let (sql, ty) = expr(arg, input, now)?;
                names.push(column.clone());
                returned.push((column.clone(), ty, sql));
            }
            _ => {
                return Err(QueryError::new(
                    arg.span,
                    format!("expected a column name or '*' to return from {name}()"),
                ));
            }
        }
    }
    Ok(Some(ArgAggregate { max, key_sql, key_type, key_name, returned }))
}

/// An aggregate call, its type and its default name.
fn aggregate(e: &Expr, input: &[(String, SqlType)], now: i64) -> Result<(String, SqlType, String)> {
    let ExprKind::Call { name, name_span, args } = &e.kind else {
        if matches!(e.kind, ExprKind::Binary { .. } | ExprKind::Neg(_)) {
            // `Span = max(Timestamp) - min(Timestamp)`: arithmetic over aggregates runs locally.
            return Err(not_pushed_down(e.span, "arithmetic over aggregates in `summarize`"));
        }
        return Err(QueryError::new(e.span, "expected an aggregate such as count() or dcount(Column)"));
    };
    let arity = |min: usize, max: usize| -> Result<()> {
        if args.len() < min || args.len() > max {
            return Err(QueryError::new(
                e.span,
                format!("{name}() takes {min} to {max} argument(s), found {}", args.len()),
            ));
        }
        Ok(())
    };
    let base = args.first().and_then(default_name);
    let named = |prefix: &str| match &base {
        Some(b) => format!("{prefix}_{b}"),
        None => format!("{prefix}_"),
    };
    let arg = |i: usize| expr(&args[i], input, now);
    Ok(match name.as_str() {
        "count" => {
            arity(0, 0)?;
            ("count()".into(), SqlType::Long, "count_".into())
        }
        "countif" => {
            arity(1, 1)?;
            let (sql, ty) = arg(0)?;
            if ty != SqlType::Bool {
                return Err(QueryError::new(args[0].span, "countif() needs a condition"));
            }
            (format!("countIf({sql})"), SqlType::Long, "countif_".into())
        }
        "dcount" => {
            arity(1, 1)?;
            (format!("uniqExact({})", arg(0)?.0), SqlType::Long, named("dcount"))
        }
        "min" | "max" => {
            arity(1, 1)?;
            let (sql, ty) = arg(0)?;
            (format!("{name}({sql})"), ty, named(name))
        }
        "sum" => {
            arity(1, 1)?;
            let (sql, ty) = arg(0)?;
            (format!("sum({sql})"), ty, named("sum"))
        }
        "avg" => {
            arity(1, 1)?;
            (format!("avg({})", arg(0)?.0), SqlType::Real, named("avg"))
        }
        "make_set" => {
            arity(1, 1)?;
            (format!("groupUniqArray({})", arg(0)?.0), SqlType::Dynamic, named("set"))
        }
        "make_list" => {
            arity(1, 1)?;
            (format!("groupArray({})", arg(0)?.0), SqlType::Dynamic, named("list"))
        }
        _ => return Err(QueryError::new(*name_span, format!("unknown aggregate '{name}'"))),
    })
}

/// An escaped RE2 literal.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn string_literal(e: &Expr) -> Option<&str> {
    match &e.kind {
        ExprKind::Literal(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// A scalar expression as SQL, with its type.
fn expr(e: &Expr, input: &[(String, SqlType)], now: i64) -> Result<(String, SqlType)> {
    let sub = |x: &Expr| expr(x, input, now);
    // A dynamic value compared or used as a string is read as one.
    let as_string = |x: &Expr| -> Result<String> {
        let (sql, ty) = sub(x)?;
        Ok(match (ty, &x.kind) {
            (SqlType::Dynamic, ExprKind::Member { .. } | ExprKind::Index { .. }) => dynamic_string(&sql),
            (SqlType::String | SqlType::Dynamic, _) => sql,
            (SqlType::Long | SqlType::Real, _) => format!("toString({sql})"),
            (SqlType::Bool, _) => format!("if({sql}, 'true', 'false')"),
            (SqlType::DateTime | SqlType::Timespan, _) => {
                return Err(not_pushed_down(x.span, "a time as text"));
            }
        })
    };
    Ok(match &e.kind {
        ExprKind::Literal(value) => match value {
            Value::Null => ("NULL".into(), SqlType::Dynamic),
            Value::Bool(b) => ((if *b { "1" } else { "0" }).into(), SqlType::Bool),
            Value::Long(n) => (n.to_string(), SqlType::Long),
            Value::Real(r) => (format!("{r:?}"), SqlType::Real),
            Value::DateTime(t) => (t.to_string(), SqlType::DateTime),
            Value::Timespan(t) => (t.to_string(), SqlType::Timespan),
            Value::String(s) => (quote(s), SqlType::String),
            Value::Dynamic(_) => return Err(not_pushed_down(e.span, "a dynamic literal")),
        },
        ExprKind::Name(name) => match input.iter().find(|(n, _)| n == name) {
            Some((_, ty)) => (ident(name), *ty),
            None => {
                let names: Vec<&str> = input.iter().map(|(n, _)| n.as_str()).collect();
                return Err(QueryError::new(
                    e.span,
                    format!("unknown column '{name}'; the columns here are {}", names.join(", ")),
                ));
            }
        },
        ExprKind::Star => {
            return Err(QueryError::new(e.span, "'*' is only an argument of arg_max() and arg_min()"));
        }
        ExprKind::Neg(inner) => {
            let (sql, ty) = sub(inner)?;
            (format!("(-{sql})"), ty)
        }
        ExprKind::Binary { op, lhs, rhs } => binary(*op, lhs, rhs, input, now)?,
        ExprKind::StringOp { op, negated, lhs, rhs } => {
            let hay = as_string(lhs)?;
            let needle_sql = as_string(rhs)?;
            let test = match op {
                StringOp::Contains => format!("positionCaseInsensitiveUTF8({hay}, {needle_sql}) > 0"),
                StringOp::ContainsCs => format!("position({hay}, {needle_sql}) > 0"),
                StringOp::StartsWith => format!("positionCaseInsensitiveUTF8({hay}, {needle_sql}) = 1"),
                StringOp::StartsWithCs => format!("position({hay}, {needle_sql}) = 1"),
                StringOp::EndsWith => {
                    format!("positionCaseInsensitiveUTF8(reverseUTF8({hay}), reverseUTF8({needle_sql})) = 1")
                }
                StringOp::EndsWithCs => format!("position(reverse({hay}), reverse({needle_sql})) = 1"),
                StringOp::Has | StringOp::HasCs => {
                    let Some(needle) = string_literal(rhs) else {
                        return Err(not_pushed_down(
                            rhs.span,
                            "`has` with a term that is not a string literal",
                        ));
                    };
                    if needle.is_empty() {
                        "1".into()
                    } else {
                        // Whole terms: not glued to more letters or digits where the term itself starts or
                        // ends with one.
                        let alnum = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
                        let before = if alnum(needle.chars().next()) { "(^|[^[:alnum:]])" } else { "" };
                        let after = if alnum(needle.chars().next_back()) { "($|[^[:alnum:]])" } else { "" };
                        let flags = if *op == StringOp::Has { "(?i)" } else { "" };
                        let pattern = format!("{flags}{before}{}{after}", regex_escape(needle));
                        format!("match({hay}, {})", quote(&pattern))
                    }
                }
            };
            (if *negated { format!("NOT ({test})") } else { format!("({test})") }, SqlType::Bool)
        }
        ExprKind::In { lhs, list, negated, case_insensitive } => {
            let (mut value, ty) = sub(lhs)?;
            if ty == SqlType::Dynamic {
                value = as_string(lhs)?;
            }
            let mut items = Vec::with_capacity(list.len());
            for item in list {
                let (sql, _) = sub(item)?;
                items.push(if *case_insensitive { format!("lowerUTF8({sql})") } else { sql });
            }
            if *case_insensitive {
                value = format!("lowerUTF8({value})");
            }
            let keyword = if *negated { "NOT IN" } else { "IN" };
            (format!("({value} {keyword} ({}))", items.join(", ")), SqlType::Bool)
        }
        ExprKind::HasAny { .. } => return Err(not_pushed_down(e.span, "`has_any` and `has_all`")),
        ExprKind::Between { lhs, low, high, negated } => {
            let (value, _) = sub(lhs)?;
            let (low, _) = sub(low)?;
            let (high, _) = sub(high)?;
            let test = format!("({value} >= {low} AND {value} <= {high})");
            (if *negated { format!("NOT {test}") } else { test }, SqlType::Bool)
        }
        ExprKind::MatchesRegex { lhs, pattern } => {
            let hay = as_string(lhs)?;
            let Some(pattern) = string_literal(pattern) else {
                return Err(not_pushed_down(
                    pattern.span,
                    "`matches regex` with a pattern that is not a literal",
                ));
            };
            (format!("match({hay}, {})", quote(pattern)), SqlType::Bool)
        }
        ExprKind::Call { name, name_span, args } => call(name, *name_span, args, e.span, input, now)?,
        ExprKind::Member { base, name } => member(base, name, input, now)?,
        ExprKind::Index { base, index } => match string_literal(index) {
            Some(key) => member(base, key, input, now)?,
            None => return Err(not_pushed_down(index.span, "an index that is not a string literal")),
        },
    })
}

/// `AdditionalFields.Key`: the raw JSON value of the key.
fn member(base: &Expr, key: &str, input: &[(String, SqlType)], now: i64) -> Result<(String, SqlType)> {
    let (sql, ty) = expr(base, input, now)?;
    if ty != SqlType::Dynamic || !matches!(base.kind, ExprKind::Name(_)) {
        return Err(not_pushed_down(base.span, "a member of anything but a dynamic column"));
    }
    Ok((format!("visitParamExtractRaw({sql}, {})", quote(key)), SqlType::Dynamic))
}

/// A raw JSON value (from `visitParamExtractRaw`) as text: a JSON string unquoted, anything else as it is.
fn dynamic_string(raw: &str) -> String {
    let inner = raw.strip_prefix("visitParamExtractRaw(").and_then(|r| r.strip_suffix(')'));
    match inner {
        Some(args) => format!(
            "if(substring(visitParamExtractRaw({args}), 1, 1) = '\"', visitParamExtractString({args}), visitParamExtractRaw({args}))"
        ),
        None => raw.to_string(),
    }
}

fn binary(
    op: BinaryOp,
    lhs: &Expr,
    rhs: &Expr,
    input: &[(String, SqlType)],
    now: i64,
) -> Result<(String, SqlType)> {
    let (mut l, lt) = expr(lhs, input, now)?;
    let (mut r, rt) = expr(rhs, input, now)?;
    // A dynamic member compared with a string is read as text, with a number as a number.
    let member = |x: &Expr| matches!(x.kind, ExprKind::Member { .. } | ExprKind::Index { .. });
    if lt == SqlType::Dynamic && member(lhs) {
        l = match rt {
            SqlType::String => dynamic_string(&l),
            SqlType::Long | SqlType::Real => l.replacen("visitParamExtractRaw", "visitParamExtractFloat", 1),
            SqlType::Bool => l.replacen("visitParamExtractRaw", "visitParamExtractBool", 1),
            _ => l,
        };
    }
    if rt == SqlType::Dynamic && member(rhs) {
        r = match lt {
            SqlType::String => dynamic_string(&r),
            SqlType::Long | SqlType::Real => r.replacen("visitParamExtractRaw", "visitParamExtractFloat", 1),
            _ => r,
        };
    }
    let comparison = |sql_op: &str| (format!("({l} {sql_op} {r})"), SqlType::Bool);
    Ok(match op {
        BinaryOp::And => (format!("({l} AND {r})"), SqlType::Bool),
        BinaryOp::Or => (format!("({l} OR {r})"), SqlType::Bool),
        BinaryOp::Eq => comparison("="),
        BinaryOp::NotEq => comparison("!="),
        BinaryOp::Lt => comparison("<"),
        BinaryOp::Le => comparison("<="),
        BinaryOp::Gt => comparison(">"),
        BinaryOp::Ge => comparison(">="),
        BinaryOp::EqCi => (format!("(lowerUTF8({l}) = lowerUTF8({r}))"), SqlType::Bool),
        BinaryOp::NotEqCi => (format!("(lowerUTF8({l}) != lowerUTF8({r}))"), SqlType::Bool),
        BinaryOp::Add | BinaryOp::Sub => {
            let ty = match (lt, rt, op) {
                (SqlType::DateTime, SqlType::Timespan, _)
                | (SqlType::Timespan, SqlType::DateTime, BinaryOp::Add) => SqlType::DateTime,
                (SqlType::DateTime, SqlType::DateTime, BinaryOp::Sub) => SqlType::Timespan,
                (SqlType::Timespan, SqlType::Timespan, _) => SqlType::Timespan,
                (SqlType::Long, SqlType::Long, _) => SqlType::Long,
                (SqlType::Long | SqlType::Real, SqlType::Long | SqlType::Real, _) => SqlType::Real,
                _ => {
                    return Err(QueryError::new(
                        lhs.span.to(rhs.span),
                        "these values cannot be added or subtracted",
                    ));
                }
            };
            (format!("({l} {} {r})", if op == BinaryOp::Add { "+" } else { "-" }), ty)
        }
        BinaryOp::Mul => (
            format!("({l} * {r})"),
            if lt == SqlType::Long && rt == SqlType::Long { SqlType::Long } else { SqlType::Real },
        ),
        BinaryOp::Div => match (lt, rt) {
            (SqlType::Long, SqlType::Long) => (format!("intDiv({l}, {r})"), SqlType::Long),
            _ => (format!("({l} / {r})"), SqlType::Real),
        },
        BinaryOp::Mod => (format!("({l} % {r})"), SqlType::Long),
    })
}

fn call(
    name: &str,
    name_span: Span,
    args: &[Expr],
    span: Span,
    input: &[(String, SqlType)],
    now: i64,
) -> Result<(String, SqlType)> {
    let arity = |n: usize| -> Result<()> {
        if args.len() != n {
            return Err(QueryError::new(
                span,
                format!("{name}() takes {n} argument(s), found {}", args.len()),
            ));
        }
        Ok(())
    };
    let arg = |i: usize| expr(&args[i], input, now);
    Ok(match name {
        "now" if args.is_empty() => (now.to_string(), SqlType::DateTime),
        "now" => {
            arity(1)?;
            let (offset, _) = arg(0)?;
            (format!("({now} + {offset})"), SqlType::DateTime)
        }
        "ago" => {
            arity(1)?;
            let (span_sql, ty) = arg(0)?;
            if ty != SqlType::Timespan {
                return Err(QueryError::new(args[0].span, "ago() takes a timespan such as 1h"));
            }
            (format!("({now} - {span_sql})"), SqlType::DateTime)
        }
        "bin" | "floor" => {
            arity(2)?;
            let (value, ty) = arg(0)?;
            let (size, _) = arg(1)?;
            // Integer arithmetic: 18.16 has no toStartOfInterval, and time is integer microseconds.
            (format!("(intDiv({value}, {size}) * {size})"), ty)
        }
        "tolower" | "toupper" => {
            arity(1)?;
            let (value, _) = arg(0)?;
            (
                format!("{}({value})", if name == "tolower" { "lowerUTF8" } else { "upperUTF8" }),
                SqlType::String,
            )
        }
        "strlen" => {
            arity(1)?;
            (format!("lengthUTF8({})", arg(0)?.0), SqlType::Long)
        }
        "tostring" => {
            arity(1)?;
            let (value, ty) = arg(0)?;
            (as_string(&value, ty, name_span, "tostring() of a time")?, SqlType::String)
        }
        "tolong" | "toint" => {
            arity(1)?;
            (format!("toInt64OrNull(toString({}))", arg(0)?.0), SqlType::Long)
        }
        "isempty" | "isnotempty" => {
            arity(1)?;
            let (value, ty) = arg(0)?;
            let empty = match ty {
                SqlType::String | SqlType::Dynamic => format!("({value} = '')"),
                _ => format!("isNull({value})"),
            };
            (if name == "isempty" { empty } else { format!("NOT {empty}") }, SqlType::Bool)
        }
        "isnull" | "isnotnull" => {
            arity(1)?;
            (
                format!("{name}({})", arg(0)?.0)
                    .replace("isnotnull(", "isNotNull(")
                    .replace("isnull(", "isNull("),
                SqlType::Bool,
            )
        }
        "not" => {
            arity(1)?;
            (format!("NOT ({})", arg(0)?.0), SqlType::Bool)
        }
        "strcat" => {
            // Each part as text: ClickHouse 18.16's concat() takes strings only (26.x converts).
            let parts = args
                .iter()
                .map(|a| {
                    let (value, ty) = expr(a, input, now)?;
                    as_string(&value, ty, name_span, "strcat() of a time")
                })
                .collect::<Result<Vec<_>>>()?;
            (format!("concat({})", parts.join(", ")), SqlType::String)
        }
        "iff" | "iif" => {
            arity(3)?;
            let (cond, _) = arg(0)?;
            let (then, ty) = arg(1)?;
            let (otherwise, _) = arg(2)?;
            (format!("if({cond}, {then}, {otherwise})"), ty)
        }
        _ => return Err(not_pushed_down(name_span, &format!("{name}()"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_932_000_000_000;

    fn sql(query: &str) -> SqlQuery {
        to_clickhouse(query, "fleet", NOW).unwrap_or_else(|e| panic!("{query}: {}\n{}", e.message, e.excerpt))
    }

    #[test]
    fn filters_aggregations_and_limits_run_in_clickhouse() {
        let q = sql(
            r#"DeviceNetworkEvents | where RemoteUrl has "example" and Timestamp > ago(1h) | summarize count() by DeviceName | top 5 by count_"#,
        );
        assert!(q.sql.contains("FROM `fleet`.`DeviceNetworkEvents` FINAL"), "{}", q.sql);
        assert!(q.sql.contains(&format!("({NOW} - 3600000000)")), "ago() is integer arithmetic: {}", q.sql);
        assert!(q.sql.contains("GROUP BY `__g0`") && q.sql.contains("LIMIT 5"), "{}", q.sql);
        assert!(q.sql.contains("SELECT `__g0` AS `DeviceName`, `__a0` AS `count_` FROM"), "{}", q.sql);
        assert_eq!(q.columns, vec![("DeviceName".into(), SqlType::String), ("count_".into(), SqlType::Long)]);
        assert!(
            !q.sql.contains("toStartOfInterval") && !q.sql.contains("JSONExtract"),
            "runs on 18.16: {}",
            q.sql
        );
    }

    #[test]
    fn what_cannot_be_pushed_down_is_named_at_its_place() {
        for (query, what) in [
            ("DeviceEvents | join (DeviceNetworkEvents) on ReportId", "`join`"),
            ("union DeviceEvents, DeviceNetworkEvents", "`union`"),
            ("DeviceEvents | project-away Seq", "`project-away`"),
        ] {
            let err = to_clickhouse(query, "fleet", NOW).expect_err(query);
            assert!(
                err.message.contains(what) && err.message.contains("--fleet"),
                "{query}: {}",
                err.message
            );
            assert!(err.excerpt.contains('^'), "points at the place: {}", err.excerpt);
        }
        let err = to_clickhouse("DeviceEvents | where Nope == 1", "fleet", NOW).expect_err("unknown column");
        assert!(err.message.contains("unknown column 'Nope'"), "{}", err.message);
    }

    #[test]
    fn arg_max_takes_its_columns_from_one_row() {
        let q = sql("DeviceInfo | summarize arg_max(Timestamp, *) by DeviceName");
        assert!(q.sql.contains("FROM `fleet`.`DeviceInfo` FINAL"), "{}", q.sql);
        assert!(q.sql.contains("argMax(tuple(`DeviceId`, "), "one tuple, so one row: {}", q.sql);
        assert!(q.sql.contains("tupleElement(`__a0_row`, 1) AS `DeviceId`"), "{}", q.sql);
        let names: Vec<&str> = q.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(&names[..4], ["DeviceName", "Timestamp", "DeviceId", "ClientVersion"]);
        assert_eq!(names.len(), monitor_core::device_info::INFO_COLUMNS.len(), "each column once: {names:?}");
        assert_eq!(q.columns[1].1, SqlType::DateTime);
        // Named columns, and the first column renamed; then the rest of the summarize.
        let q = sql("DeviceEvents | summarize Last = arg_min(Seq, RemoteUrl), n = count() by DeviceName");
        let names: Vec<&str> = q.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["DeviceName", "Last", "RemoteUrl", "n"]);
        assert!(q.sql.contains("argMin(tuple(`RemoteUrl`), `Seq`)"), "{}", q.sql);
        // A Long key may be null everywhere in a group: then there is no row, and its columns are null.
        assert!(
            q.sql.contains("if(`__a0_n` = 0, NULL, tupleElement(`__a0_row`, 1)) AS `RemoteUrl`"),
            "{}",
            q.sql
        );
        // A group named as a column of the input does not stand for that column inside the aggregates.
        let q = sql(
            "DeviceEvents | summarize arg_max(Timestamp, RemoteUrl), m = max(Timestamp), m = count() by bin(Timestamp, 1h)",
        );
        let names: Vec<&str> = q.columns.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Timestamp", "Timestamp1", "RemoteUrl", "m", "m1"]);
        assert!(q.sql.contains("max(`Timestamp`) AS `__a0`"), "{}", q.sql);
        let err = to_clickhouse("DeviceEvents | summarize arg_max(Seq, 1 + 2)", "fleet", NOW)
            .expect_err("not a column");
        assert!(err.message.contains("a column name or '*'"), "{}", err.message);
        let err = to_clickhouse("DeviceInfo | summarize arg_max(Timestamp, Nope)", "fleet", NOW)
            .expect_err("unknown");
        assert!(err.message.contains("unknown column 'Nope'"), "{}", err.message);
    }

    #[test]
    fn literals_are_quoted() {
        let q = sql(r#"DeviceEvents | where RemoteUrl == "a'b\\c""#);
        assert!(q.sql.contains(r"'a\'b\\c'"), "{}", q.sql);
    }

    #[test]
    fn tables_split_into_ranges_of_about_as_many_rows() {
        let devices: Vec<(String, u64)> =
            [("d", 10), ("a", 10), ("c", 10), ("b", 10)].iter().map(|(d, n)| (d.to_string(), *n)).collect();
        assert_eq!(split_boundaries(&devices, 2, 0), ["c"]);
        assert_eq!(split_boundaries(&devices, 4, 0), ["b", "c", "d"]);
        assert_eq!(split_boundaries(&devices, 8, 0), ["b", "c", "d"], "at most a range per device");
        assert!(split_boundaries(&devices, 1, 0).is_empty(), "one thread: one read");
        assert!(split_boundaries(&devices, 2, 41).is_empty(), "too few rows to cut");
        let skewed: Vec<(String, u64)> =
            [("a", 90), ("b", 5), ("c", 5)].iter().map(|(d, n)| (d.to_string(), *n)).collect();
        assert_eq!(split_boundaries(&skewed, 2, 0), ["b"], "the big device alone");
        // Byte order, as ClickHouse compares strings: upper case before lower.
        let cased: Vec<(String, u64)> =
            [("b", 1), ("B", 1)].iter().map(|(d, n)| (d.to_string(), *n)).collect();
        assert_eq!(split_boundaries(&cased, 2, 0), ["b"]);
    }

    #[test]
    fn split_tables_are_read_in_disjoint_ranges_side_by_side() {
        let mut splits = TableSplits::default();
        splits.set("DeviceNetworkEvents", vec!["m".into(), "f".into(), "m".into()]);
        let q = to_clickhouse_with("DeviceNetworkEvents | count", "fleet", NOW, &splits).expect("compiles");
        let read = "FROM `fleet`.`DeviceNetworkEvents` FINAL WHERE";
        assert_eq!(q.sql.matches(read).count(), 3, "{}", q.sql);
        for range in [
            "`DeviceId` < 'f' UNION ALL",
            "`DeviceId` >= 'f' AND `DeviceId` < 'm' UNION",
            "`DeviceId` >= 'm')",
        ] {
            assert!(q.sql.contains(range), "{range}: {}", q.sql);
        }
        assert!(
            q.sql.contains("`DeviceId` AS `DeviceId`"),
            "the key as stored, so that ranges prune: {}",
            q.sql
        );
        let other = to_clickhouse_with("DeviceEvents | count", "fleet", NOW, &splits).expect("compiles");
        assert_eq!(other.sql, sql("DeviceEvents | count").sql, "a table without boundaries is read whole");
    }

    #[test]
    fn only_queries_that_read_every_row_are_split() {
        for query in [
            "DeviceNetworkEvents | summarize count() by DeviceName",
            "DeviceNetworkEvents | sort by Timestamp | take 3",
            "DeviceNetworkEvents | top 3 by RemotePort",
            "DeviceNetworkEvents | distinct RemoteUrl",
            "DeviceNetworkEvents | count",
            "DeviceNetworkEvents | where RemotePort == 1 | join (DeviceEvents) on DeviceId",
        ] {
            assert!(reads_every_row(query), "{query}");
        }
        for query in ["DeviceNetworkEvents | where RemotePort == 3128 | take 10", "DeviceEvents", "not kql ("]
        {
            assert!(!reads_every_row(query), "{query}");
        }
    }
}
