//! The syntax tree of a query, with the span of every part.

use super::error::Span;
use super::value::Value;

#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub lets: Vec<Let>,
    pub body: Tabular,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Let {
    pub name: String,
    pub span: Span,
    pub value: LetValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum LetValue {
    Scalar(Expr),
    Tabular(Tabular),
}

/// A source and the operators piped after it.
#[derive(Debug, Clone, PartialEq)]
pub struct Tabular {
    pub source: Source,
    pub ops: Vec<Operator>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// A table or a tabular `let`.
    Name {
        name: String,
        span: Span,
    },
    Union(Union),
    /// `( tabular )`
    Nested(Box<Tabular>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Union {
    pub span: Span,
    /// `withsource=Column`: a column naming each row's source.
    pub withsource: Option<String>,
    pub parts: Vec<Tabular>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Operator {
    pub kind: OperatorKind,
    /// The operator's keyword.
    pub span: Span,
}

#[derive(Debug, Clone, PartialEq)]
pub enum OperatorKind {
    Where(Expr),
    Project(Vec<NamedExpr>),
    /// Column names; `*` in a name matches any characters.
    ProjectAway(Vec<(String, Span)>),
    /// `new = old` pairs.
    ProjectRename(Vec<((String, Span), (String, Span))>),
    Extend(Vec<NamedExpr>),
    Summarize {
        aggregates: Vec<NamedExpr>,
        by: Vec<NamedExpr>,
    },
    Take(Expr),
    Sort(Vec<SortKey>),
    Top {
        count: Expr,
        key: SortKey,
    },
    /// `None` is `distinct *`.
    Distinct(Option<Vec<NamedExpr>>),
    Count,
    Join {
        kind: JoinKind,
        right: Box<Tabular>,
        on: Vec<JoinKey>,
    },
    Union(Union),
}

#[derive(Debug, Clone, PartialEq)]
pub struct NamedExpr {
    pub name: Option<(String, Span)>,
    pub expr: Expr,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SortKey {
    pub expr: Expr,
    pub descending: bool,
    /// `None` is KQL's default: nulls last when descending, first when ascending.
    pub nulls_first: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    /// KQL's default: left rows deduplicated on the key, then an inner join.
    InnerUnique,
    Inner,
    LeftOuter,
    LeftAnti,
    LeftSemi,
    RightAnti,
    RightSemi,
}

#[derive(Debug, Clone, PartialEq)]
pub enum JoinKey {
    /// `on Column`: the same column on both sides.
    Same(String, Span),
    /// `on $left.A == $right.B`
    Pair { left: (String, Span), right: (String, Span) },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    pub kind: ExprKind,
    pub span: Span,
    /// Height of the tree below, bounded by the parser so that evaluation cannot overflow the stack.
    pub depth: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Eq,
    NotEq,
    EqCi,
    NotEqCi,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringOp {
    Has,
    HasCs,
    Contains,
    ContainsCs,
    StartsWith,
    StartsWithCs,
    EndsWith,
    EndsWithCs,
}

impl StringOp {
    pub fn from_name(name: &str) -> Option<StringOp> {
        Some(match name {
            "has" => StringOp::Has,
            "has_cs" => StringOp::HasCs,
            "contains" => StringOp::Contains,
            "contains_cs" => StringOp::ContainsCs,
            "startswith" => StringOp::StartsWith,
            "startswith_cs" => StringOp::StartsWithCs,
            "endswith" => StringOp::EndsWith,
            "endswith_cs" => StringOp::EndsWithCs,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    Literal(Value),
    /// A column or a scalar `let`.
    Name(String),
    /// `*` as an argument: `arg_max(Timestamp, *)`.
    Star,
    Neg(Box<Expr>),
    Binary {
        op: BinaryOp,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    StringOp {
        op: StringOp,
        negated: bool,
        lhs: Box<Expr>,
        rhs: Box<Expr>,
    },
    In {
        lhs: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
        case_insensitive: bool,
    },
    /// `has_any` (`all` false) and `has_all`.
    HasAny {
        lhs: Box<Expr>,
        list: Vec<Expr>,
        all: bool,
    },
    Between {
        lhs: Box<Expr>,
        low: Box<Expr>,
        high: Box<Expr>,
        negated: bool,
    },
    MatchesRegex {
        lhs: Box<Expr>,
        pattern: Box<Expr>,
    },
    Call {
        name: String,
        name_span: Span,
        args: Vec<Expr>,
    },
    Member {
        base: Box<Expr>,
        name: String,
    },
    Index {
        base: Box<Expr>,
        index: Box<Expr>,
    },
}
