//! The plan a query compiles to ([`super::compile`]): where the rows come from, the operators, and the
//! expressions with names resolved to column positions. The SQLite executor ([`super::exec`]) and the
//! evaluator ([`super::eval`]) read it; the optimisations ([`super::optimize`]) rewrite it.

use regex::Regex;

use super::ast::{BinaryOp, JoinKind, StringOp};
use super::value::Value;
use crate::schema::Cell;

/// A compiled query: where the rows come from, what is done to them, and the names of the result's columns.
#[derive(Debug, Clone)]
pub struct Plan {
    pub source: PlanSource,
    pub ops: Vec<Op>,
    pub columns: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum PlanSource {
    /// A scan of one table; `filters` are SQL conditions (`Timestamp >= ?`) that select a superset of the
    /// rows the plan's leading `where`s keep. The `where`s still run, so the pushdown only saves work.
    /// `needed` marks the columns the plan reads; the others are left null instead of being decoded.
    Table {
        table: &'static str,
        filters: Vec<(String, Cell)>,
        needed: Vec<bool>,
    },
    Union(Vec<UnionPart>),
}

#[derive(Debug, Clone)]
pub struct UnionPart {
    pub plan: Plan,
    /// The value of the `withsource` column for this part's rows.
    pub source_name: Option<String>,
    /// For each output column, the part's column that fills it (or null).
    pub mapping: Vec<Option<usize>>,
}

#[derive(Debug, Clone)]
pub enum Op {
    Where(CExpr),
    /// New rows made of these expressions.
    Map(Vec<CExpr>),
    /// Evaluated in order on the growing row: `Some(i)` replaces column i, `None` appends.
    Extend(Vec<(Option<usize>, CExpr)>),
    Take(usize),
    Sort(Vec<CSortKey>),
    Top(usize, CSortKey),
    Summarize {
        by: Vec<CExpr>,
        aggregates: Vec<Aggregate>,
    },
    Distinct(Vec<CExpr>),
    Count,
    Join {
        kind: JoinKind,
        right: Box<Plan>,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
    },
}

impl Op {
    /// Row-at-a-time operators, run while the table is scanned.
    pub fn is_streaming(&self) -> bool {
        matches!(self, Op::Where(_) | Op::Map(_) | Op::Extend(_) | Op::Take(_))
    }
}

#[derive(Debug, Clone)]
pub struct CSortKey {
    pub expr: CExpr,
    pub descending: bool,
    pub nulls_first: bool,
}

#[derive(Debug, Clone)]
pub enum Aggregate {
    Count,
    CountIf(CExpr),
    DCount(CExpr),
    MakeSet(CExpr, usize),
    MakeList(CExpr, usize),
    Min(CExpr),
    Max(CExpr),
    Sum(CExpr),
    Avg(CExpr),
    /// The expression to maximise (or minimise) and the columns of the winning row to return.
    ArgMax(CExpr, Vec<usize>),
    ArgMin(CExpr, Vec<usize>),
}

/// A compiled expression.
#[derive(Debug, Clone)]
pub enum CExpr {
    Lit(Value),
    Col(usize),
    Neg(Box<CExpr>),
    Binary(BinaryOp, Box<CExpr>, Box<CExpr>),
    StringOp { op: StringOp, negated: bool, lhs: Box<CExpr>, rhs: Box<CExpr> },
    In { lhs: Box<CExpr>, list: Vec<CExpr>, negated: bool, case_insensitive: bool },
    HasAny { lhs: Box<CExpr>, list: Vec<CExpr>, all: bool },
    Between { lhs: Box<CExpr>, low: Box<CExpr>, high: Box<CExpr>, negated: bool },
    Regex { lhs: Box<CExpr>, pattern: RegexArg },
    Call(Func, Vec<CExpr>),
    Member(Box<CExpr>, String),
    Index(Box<CExpr>, Box<CExpr>),
}

#[derive(Debug, Clone)]
pub enum RegexArg {
    Fixed(Regex),
    /// A pattern computed per row; an invalid one gives null.
    Computed(Box<CExpr>),
}

/// Scalar functions.
#[derive(Debug, Clone)]
pub enum Func {
    Ago,
    Now,
    DateTime,
    Bin,
    ToLower,
    ToUpper,
    ToString,
    ToInt,
    ToLong,
    ToDouble,
    ToBool,
    StrCat,
    StrLen,
    Substring,
    IsEmpty,
    IsNotEmpty,
    IsNull,
    IsNotNull,
    Iff,
    Case,
    Split,
    /// The pattern when it is a constant.
    Extract(Option<Regex>),
    ParseJson,
    Not,
    ArrayLength,
    Coalesce,
}

impl CExpr {
    /// Calls `f` with every column the expression reads.
    pub(super) fn visit_columns(&self, f: &mut dyn FnMut(usize)) {
        match self {
            CExpr::Lit(_) => {}
            CExpr::Col(i) => f(*i),
            CExpr::Neg(e) | CExpr::Member(e, _) => e.visit_columns(f),
            CExpr::Binary(_, l, r) | CExpr::Index(l, r) | CExpr::StringOp { lhs: l, rhs: r, .. } => {
                l.visit_columns(f);
                r.visit_columns(f);
            }
            CExpr::In { lhs, list, .. } | CExpr::HasAny { lhs, list, .. } => {
                lhs.visit_columns(f);
                list.iter().for_each(|e| e.visit_columns(f));
            }
            CExpr::Between { lhs, low, high, .. } => {
                lhs.visit_columns(f);
                low.visit_columns(f);
                high.visit_columns(f);
            }
            CExpr::Regex { lhs, pattern } => {
                lhs.visit_columns(f);
                if let RegexArg::Computed(p) = pattern {
                    p.visit_columns(f);
                }
            }
            CExpr::Call(_, args) => args.iter().for_each(|e| e.visit_columns(f)),
        }
    }
}

impl Aggregate {
    pub(super) fn visit_columns(&self, f: &mut dyn FnMut(usize)) {
        match self {
            Aggregate::Count => {}
            Aggregate::CountIf(e)
            | Aggregate::DCount(e)
            | Aggregate::MakeSet(e, _)
            | Aggregate::MakeList(e, _)
            | Aggregate::Min(e)
            | Aggregate::Max(e)
            | Aggregate::Sum(e)
            | Aggregate::Avg(e) => e.visit_columns(f),
            Aggregate::ArgMax(e, columns) | Aggregate::ArgMin(e, columns) => {
                e.visit_columns(f);
                columns.iter().for_each(|c| f(*c));
            }
        }
    }
}
