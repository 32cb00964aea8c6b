//! Recursive-descent parser for the KQL subset.

use std::collections::HashSet;

use serde_json::Value as Json;

use super::ast::{
    BinaryOp, Expr, ExprKind, JoinKey, JoinKind, Let, LetValue, NamedExpr, Operator, OperatorKind, Query,
    SortKey, Source, StringOp, Tabular, Union,
};
use super::error::{QueryError, Span};
use super::lexer::{Token, TokenKind, tokenize};
use super::value::Value;
use crate::schema::FLEET_TABLES;
use crate::time::parse_datetime;

/// Tallest expression tree accepted; evaluation recurses this deep.
const MAX_DEPTH: u32 = 128;
/// Deepest nesting of parentheses, unary minus and sub-queries; parsing recurses this deep.
const MAX_NESTING: u32 = 48;

pub const OPERATORS: &str = "where, project, project-away, project-rename, extend, summarize, take, limit, sort, order, top, distinct, count, join, union";

/// KQL operators that exist but are outside the subset: named as such instead of "unknown".
const UNSUPPORTED_OPERATORS: [&str; 25] = [
    "mv-expand",
    "mv-apply",
    "make-series",
    "parse",
    "parse-where",
    "parse-kv",
    "render",
    "evaluate",
    "lookup",
    "as",
    "invoke",
    "serialize",
    "sample",
    "sample-distinct",
    "search",
    "getschema",
    "project-keep",
    "project-reorder",
    "facet",
    "fork",
    "partition",
    "scan",
    "reduce",
    "top-nested",
    "find",
];

pub fn parse(source: &str) -> std::result::Result<Query, QueryError> {
    let tokens = tokenize(source).map_err(|e| e.locate(source))?;
    let mut parser = Parser { tokens, pos: 0, nesting: 0, tabular_lets: HashSet::new() };
    parser.query().map_err(|e| e.locate(source))
}

type Result<T> = std::result::Result<T, QueryError>;

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    nesting: u32,
    tabular_lets: HashSet<String>,
}

impl Parser {
    fn peek(&self) -> &Token {
        self.peek_at(0)
    }

    fn peek_at(&self, ahead: usize) -> &Token {
        let last = self.tokens.len() - 1;
        &self.tokens[(self.pos + ahead).min(last)]
    }

    fn bump(&mut self) -> Token {
        let token = self.peek().clone();
        if token.kind != TokenKind::Eof {
            self.pos += 1;
        }
        token
    }

    /// End of the last consumed token.
    fn prev_end(&self) -> usize {
        self.pos.checked_sub(1).map_or(0, |i| self.tokens[i].span.end)
    }

    fn at(&self, kind: &TokenKind) -> bool {
        &self.peek().kind == kind
    }

    fn at_word(&self, word: &str) -> bool {
        matches!(&self.peek().kind, TokenKind::Ident(w) if w == word)
    }

    fn eat(&mut self, kind: &TokenKind) -> bool {
        let found = self.at(kind);
        if found {
            self.bump();
        }
        found
    }

    fn eat_word(&mut self, word: &str) -> bool {
        let found = self.at_word(word);
        if found {
            self.bump();
        }
        found
    }

    /// An error at the current token: "expected X, found Y".
    fn expected(&self, what: &str) -> QueryError {
        let token = self.peek();
        QueryError::new(token.span, format!("expected {what}, found {}", token.kind.describe()))
    }

    fn expect(&mut self, kind: &TokenKind, what: &str) -> Result<Span> {
        if self.at(kind) { Ok(self.bump().span) } else { Err(self.expected(what)) }
    }

    fn expect_word(&mut self, word: &str, what: &str) -> Result<Span> {
        if self.at_word(word) { Ok(self.bump().span) } else { Err(self.expected(what)) }
    }

    fn ident(&mut self, what: &str) -> Result<(String, Span)> {
        match &self.peek().kind {
            TokenKind::Ident(name) => {
                let name = name.clone();
                Ok((name, self.bump().span))
            }
            _ => Err(self.expected(what)),
        }
    }

    fn enter(&mut self) -> Result<()> {
        self.nesting += 1;
        if self.nesting > MAX_NESTING {
            return Err(QueryError::new(
                self.peek().span,
                format!("query nested too deeply (more than {MAX_NESTING} levels); expected a simpler query"),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.nesting -= 1;
    }

    fn node(&self, kind: ExprKind, span: Span, child_depth: u32) -> Result<Expr> {
        let depth = child_depth + 1;
        if depth > MAX_DEPTH {
            return Err(QueryError::new(
                span,
                format!(
                    "expression nested too deeply (more than {MAX_DEPTH} levels); expected a simpler expression"
                ),
            ));
        }
        Ok(Expr { kind, span, depth })
    }

    // ---- statements and tabular expressions ----

    fn query(&mut self) -> Result<Query> {
        let mut lets = Vec::new();
        while self.at_word("let") {
            self.bump();
            let (name, span) = self.ident("a name after 'let'")?;
            self.expect(&TokenKind::Assign, "'=' after the name of the let")?;
            let value = if self.starts_tabular() {
                self.tabular_lets.insert(name.clone());
                LetValue::Tabular(self.tabular()?)
            } else {
                self.tabular_lets.remove(&name);
                LetValue::Scalar(self.expr_for("an expression for the let")?)
            };
            self.expect(&TokenKind::Semicolon, "';' after the let statement")?;
            lets.push(Let { name, span, value });
        }
        let body = self.tabular()?;
        self.eat(&TokenKind::Semicolon);
        if !self.at(&TokenKind::Eof) {
            return Err(self.expected("'|' and an operator, or the end of the query"));
        }
        Ok(Query { lets, body })
    }

    /// A `let` value is tabular when it starts with a table, a tabular `let` or `union`.
    fn starts_tabular(&self) -> bool {
        match &self.peek().kind {
            TokenKind::Ident(name) => {
                name == "union"
                    || FLEET_TABLES.contains(&name.as_str())
                    || (self.tabular_lets.contains(name) && self.peek_at(1).kind != TokenKind::LParen)
            }
            _ => false,
        }
    }

    fn tabular(&mut self) -> Result<Tabular> {
        self.enter()?;
        let source = match self.peek().kind.clone() {
            TokenKind::Ident(word) if word == "union" => Source::Union(self.union()?),
            TokenKind::Ident(name) => Source::Name { name, span: self.bump().span },
            TokenKind::LParen => {
                self.bump();
                let inner = self.tabular()?;
                self.expect(&TokenKind::RParen, "')' to close the sub-query")?;
                Source::Nested(Box::new(inner))
            }
            _ => return Err(self.expected("a table name (DeviceNetworkEvents or DeviceEvents)")),
        };
        let mut ops = Vec::new();
        while self.eat(&TokenKind::Pipe) {
            ops.push(self.operator()?);
        }
        self.leave();
        Ok(Tabular { source, ops })
    }

    fn operator(&mut self) -> Result<Operator> {
        let token = self.peek().clone();
        let TokenKind::Ident(word) = &token.kind else {
            return Err(self.expected(&format!("a tabular operator ({OPERATORS})")));
        };
        let span = token.span;
        let kind = match word.as_str() {
            "where" | "filter" => {
                self.bump();
                OperatorKind::Where(self.expr_for(&format!("a predicate after '{word}'"))?)
            }
            "project" => {
                self.bump();
                OperatorKind::Project(self.named_list("a column or an expression after 'project'")?)
            }
            "extend" => {
                self.bump();
                OperatorKind::Extend(self.named_list("an expression after 'extend'")?)
            }
            "project-away" => {
                self.bump();
                let mut names = Vec::new();
                loop {
                    let (mut name, mut name_span) = self.ident("a column name after 'project-away'")?;
                    // `Initiating*`: the star is lexed apart from the name.
                    if self.at(&TokenKind::Star) && self.peek().span.start == name_span.end {
                        name.push('*');
                        name_span = name_span.to(self.bump().span);
                    }
                    names.push((name, name_span));
                    if !self.eat(&TokenKind::Comma) {
                        break;
                    }
                }
                OperatorKind::ProjectAway(names)
            }
            "project-rename" => {
                self.bump();
                let mut pairs = Vec::new();
                loop {
                    let new = self.ident("a new column name after 'project-rename'")?;
                    self.expect(&TokenKind::Assign, "'=' and the column to rename")?;
                    let old = self.ident("the column to rename")?;
                    pairs.push((new, old));
                    if !self.eat(&TokenKind::Comma) {
                        break;
                    }
                }
                OperatorKind::ProjectRename(pairs)
            }
            "summarize" => {
                self.bump();
                let aggregates = if self.at_word("by") {
                    Vec::new()
                } else {
                    self.named_list("an aggregation such as count() after 'summarize'")?
                };
                let by = if self.eat_word("by") {
                    self.named_list("a column or an expression to group by")?
                } else {
                    Vec::new()
                };
                OperatorKind::Summarize { aggregates, by }
            }
            "take" | "limit" => {
                self.bump();
                OperatorKind::Take(self.expr_for(&format!("a number of rows after '{word}'"))?)
            }
            "sort" | "order" => {
                self.bump();
                self.expect_word("by", &format!("'by' after '{word}'"))?;
                let mut keys = vec![self.sort_key()?];
                while self.eat(&TokenKind::Comma) {
                    keys.push(self.sort_key()?);
                }
                OperatorKind::Sort(keys)
            }
            "top" => {
                self.bump();
                let count = self.expr_for("a number of rows after 'top'")?;
                self.expect_word("by", "'by' after the number of rows")?;
                OperatorKind::Top { count, key: self.sort_key()? }
            }
            "distinct" => {
                self.bump();
                if self.eat(&TokenKind::Star) {
                    OperatorKind::Distinct(None)
                } else {
                    OperatorKind::Distinct(Some(self.named_list("a column after 'distinct', or '*'")?))
                }
            }
            "count" => {
                self.bump();
                OperatorKind::Count
            }
            "join" => {
                self.bump();
                self.join()?
            }
            "union" => OperatorKind::Union(self.union()?),
            other => {
                let message = if UNSUPPORTED_OPERATORS.contains(&other) {
                    format!("'{other}' is outside the supported KQL subset; expected one of: {OPERATORS}")
                } else {
                    let names: Vec<&str> = OPERATORS.split(", ").collect();
                    let hint =
                        suggest(other, &names).map(|s| format!(" (did you mean '{s}'?)")).unwrap_or_default();
                    format!("unknown tabular operator '{other}'{hint}; expected one of: {OPERATORS}")
                };
                return Err(QueryError::new(span, message));
            }
        };
        Ok(Operator { kind, span })
    }

    fn join(&mut self) -> Result<OperatorKind> {
        let mut kind = JoinKind::InnerUnique;
        loop {
            if self.eat_word("kind") {
                self.expect(&TokenKind::Assign, "'=' after 'kind'")?;
                let (name, span) = self.ident("a join kind")?;
                kind = match name.as_str() {
                    "innerunique" => JoinKind::InnerUnique,
                    "inner" => JoinKind::Inner,
                    "leftouter" => JoinKind::LeftOuter,
                    "leftanti" | "anti" | "leftantisemi" => JoinKind::LeftAnti,
                    "leftsemi" => JoinKind::LeftSemi,
                    "rightanti" | "rightantisemi" => JoinKind::RightAnti,
                    "rightsemi" => JoinKind::RightSemi,
                    other => {
                        return Err(QueryError::new(
                            span,
                            format!(
                                "join kind '{other}' is outside the supported subset; expected inner, innerunique, \
                                 leftouter, leftanti, leftsemi, rightanti or rightsemi"
                            ),
                        ));
                    }
                };
            } else if self.at_word("hint") && self.peek_at(1).kind == TokenKind::Dot {
                // Execution hints (hint.strategy=shuffle, ...) change nothing here.
                self.bump();
                self.bump();
                self.ident("a hint name")?;
                self.expect(&TokenKind::Assign, "'=' after the hint")?;
                self.bump();
            } else {
                break;
            }
        }
        let right = match self.peek().kind.clone() {
            TokenKind::LParen => {
                self.bump();
                let inner = self.tabular()?;
                self.expect(&TokenKind::RParen, "')' to close the right side of the join")?;
                inner
            }
            TokenKind::Ident(name) if name != "on" => {
                let span = self.bump().span;
                Tabular { source: Source::Name { name, span }, ops: Vec::new() }
            }
            _ => return Err(self.expected("the right side of the join: a table name or '(' query ')'")),
        };
        self.expect_word("on", "'on' and the columns to join on")?;
        let mut on = Vec::new();
        loop {
            on.push(self.join_key()?);
            if !self.eat(&TokenKind::Comma) {
                break;
            }
        }
        Ok(OperatorKind::Join { kind, right: Box::new(right), on })
    }

    fn join_key(&mut self) -> Result<JoinKey> {
        let side = |p: &mut Parser, what: &str| -> Result<(String, (String, Span))> {
            let (name, _) = p.ident(what)?;
            if name != "$left" && name != "$right" {
                return Err(QueryError::new(
                    p.tokens[p.pos - 1].span,
                    format!("expected {what}, found '{name}'"),
                ));
            }
            p.expect(&TokenKind::Dot, "'.' and a column name")?;
            Ok((name, p.ident("a column name")?))
        };
        match &self.peek().kind {
            TokenKind::Ident(name) if name.starts_with('$') => {
                let (first, first_col) = side(self, "$left or $right")?;
                self.expect(&TokenKind::EqEq, "'==' between the two join columns")?;
                let (second, second_col) = side(self, "$left or $right")?;
                match (first.as_str(), second.as_str()) {
                    ("$left", "$right") => Ok(JoinKey::Pair { left: first_col, right: second_col }),
                    ("$right", "$left") => Ok(JoinKey::Pair { left: second_col, right: first_col }),
                    _ => Err(QueryError::new(
                        first_col.1.to(second_col.1),
                        "expected one column of each side: $left.Column == $right.Column",
                    )),
                }
            }
            TokenKind::Ident(_) => {
                let (name, span) = self.ident("a column to join on")?;
                Ok(JoinKey::Same(name, span))
            }
            _ => Err(self.expected("a column to join on, or $left.Column == $right.Column")),
        }
    }

    fn union(&mut self) -> Result<Union> {
        let start = self.expect_word("union", "'union'")?;
        let mut withsource = None;
        loop {
            if self.eat_word("withsource") {
                self.expect(&TokenKind::Assign, "'=' after 'withsource'")?;
                withsource = Some(self.ident("a column name for the source table")?.0);
            } else if self.at_word("kind") && self.peek_at(1).kind == TokenKind::Assign {
                self.bump();
                self.bump();
                let (kind, span) = self.ident("outer")?;
                if kind != "outer" {
                    return Err(QueryError::new(
                        span,
                        format!("union kind '{kind}' is outside the supported subset; expected outer"),
                    ));
                }
            } else if self.at_word("isfuzzy") && self.peek_at(1).kind == TokenKind::Assign {
                self.bump();
                self.bump();
                self.ident("true or false")?;
            } else {
                break;
            }
        }
        let mut parts = Vec::new();
        loop {
            let part = match self.peek().kind.clone() {
                TokenKind::LParen => {
                    self.bump();
                    let inner = self.tabular()?;
                    self.expect(&TokenKind::RParen, "')' to close the sub-query")?;
                    inner
                }
                TokenKind::Ident(name) => {
                    let span = self.bump().span;
                    Tabular { source: Source::Name { name, span }, ops: Vec::new() }
                }
                _ => return Err(self.expected("a table name or '(' query ')' to union")),
            };
            parts.push(part);
            if !self.eat(&TokenKind::Comma) {
                break;
            }
        }
        Ok(Union { span: start.to(Span::new(self.prev_end(), self.prev_end())), withsource, parts })
    }

    fn named_list(&mut self, what: &str) -> Result<Vec<NamedExpr>> {
        let mut items = Vec::new();
        loop {
            let name = match (&self.peek().kind, &self.peek_at(1).kind) {
                (TokenKind::Ident(name), TokenKind::Assign) => {
                    let name = name.clone();
                    let span = self.bump().span;
                    self.bump();
                    Some((name, span))
                }
                _ => None,
            };
            let expr = self.expr_for(if name.is_some() { "an expression after '='" } else { what })?;
            items.push(NamedExpr { name, expr });
            if !self.eat(&TokenKind::Comma) {
                return Ok(items);
            }
        }
    }

    fn sort_key(&mut self) -> Result<SortKey> {
        let expr = self.expr_for("a column or an expression to sort by")?;
        let descending = if self.eat_word("asc") {
            false
        } else {
            self.eat_word("desc");
            true
        };
        let nulls_first = if self.eat_word("nulls") {
            if self.eat_word("first") {
                Some(true)
            } else {
                self.expect_word("last", "'first' or 'last' after 'nulls'")?;
                Some(false)
            }
        } else {
            None
        };
        Ok(SortKey { expr, descending, nulls_first })
    }

    // ---- expressions ----

    fn starts_expr(&self) -> bool {
        matches!(
            self.peek().kind,
            TokenKind::Ident(_)
                | TokenKind::String(_)
                | TokenKind::Long(_)
                | TokenKind::Real(_)
                | TokenKind::Timespan(_)
                | TokenKind::DateTime(_)
                | TokenKind::LParen
                | TokenKind::LBracket
                | TokenKind::Minus
                | TokenKind::Plus
        )
    }

    /// An expression, or an error that says `what` was expected.
    fn expr_for(&mut self, what: &str) -> Result<Expr> {
        if !self.starts_expr() {
            return Err(self.expected(what));
        }
        self.expr()
    }

    fn expr(&mut self) -> Result<Expr> {
        self.enter()?;
        let e = self.logical("or", BinaryOp::Or);
        self.leave();
        e
    }

    fn logical(&mut self, word: &str, op: BinaryOp) -> Result<Expr> {
        let next = |p: &mut Parser| {
            if op == BinaryOp::Or { p.logical("and", BinaryOp::And) } else { p.comparison() }
        };
        let mut lhs = next(self)?;
        while self.at_word(word) {
            self.bump();
            let rhs = if self.starts_expr() {
                next(self)?
            } else {
                return Err(self.expected(&format!("an expression after '{word}'")));
            };
            let span = lhs.span.to(rhs.span);
            let depth = lhs.depth.max(rhs.depth);
            lhs = self.node(ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span, depth)?;
        }
        Ok(lhs)
    }

    fn comparison(&mut self) -> Result<Expr> {
        let lhs = self.additive()?;
        let token = self.peek().clone();
        let binary = match &token.kind {
            TokenKind::EqEq => Some(BinaryOp::Eq),
            TokenKind::NotEq => Some(BinaryOp::NotEq),
            TokenKind::EqTilde => Some(BinaryOp::EqCi),
            TokenKind::BangTilde => Some(BinaryOp::NotEqCi),
            TokenKind::Lt => Some(BinaryOp::Lt),
            TokenKind::Le => Some(BinaryOp::Le),
            TokenKind::Gt => Some(BinaryOp::Gt),
            TokenKind::Ge => Some(BinaryOp::Ge),
            TokenKind::Assign => {
                return Err(QueryError::new(token.span, "'=' assigns a name; expected '==' to compare"));
            }
            _ => None,
        };
        if let Some(op) = binary {
            self.bump();
            let rhs = self.operand(&token)?;
            let span = lhs.span.to(rhs.span);
            let depth = lhs.depth.max(rhs.depth);
            return self.node(ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span, depth);
        }
        // `!has`, `!in~`, ...: a `!` glued to the operator's name.
        let (negated, word, word_span) = match (&token.kind, &self.peek_at(1).kind) {
            (TokenKind::Ident(w), _) => (false, w.clone(), token.span),
            (TokenKind::Bang, TokenKind::Ident(w)) if self.peek_at(1).span.start == token.span.end => {
                (true, w.clone(), token.span.to(self.peek_at(1).span))
            }
            _ => return Ok(lhs),
        };
        let operator_token = Token {
            kind: TokenKind::Ident(format!("{}{word}", if negated { "!" } else { "" })),
            span: word_span,
        };
        if let Some(op) = StringOp::from_name(&word) {
            self.skip_operator(negated);
            let rhs = self.operand(&operator_token)?;
            let span = lhs.span.to(rhs.span);
            let depth = lhs.depth.max(rhs.depth);
            return self.node(
                ExprKind::StringOp { op, negated, lhs: Box::new(lhs), rhs: Box::new(rhs) },
                span,
                depth,
            );
        }
        match word.as_str() {
            "in" => {
                self.skip_operator(negated);
                let case_insensitive =
                    self.at(&TokenKind::Tilde) && self.peek().span.start == self.prev_end();
                if case_insensitive {
                    self.bump();
                }
                let list = self.paren_list("'(' and a list of values after 'in'")?;
                let span = lhs.span.to(Span::new(self.prev_end(), self.prev_end()));
                let depth = list.iter().map(|e| e.depth).max().unwrap_or(0).max(lhs.depth);
                self.node(ExprKind::In { lhs: Box::new(lhs), list, negated, case_insensitive }, span, depth)
            }
            "has_any" | "has_all" if !negated => {
                self.bump();
                let list = self.paren_list(&format!("'(' and a list of values after '{word}'"))?;
                let span = lhs.span.to(Span::new(self.prev_end(), self.prev_end()));
                let depth = list.iter().map(|e| e.depth).max().unwrap_or(0).max(lhs.depth);
                self.node(ExprKind::HasAny { lhs: Box::new(lhs), list, all: word == "has_all" }, span, depth)
            }
            "between" => {
                self.skip_operator(negated);
                self.expect(&TokenKind::LParen, "'(' after 'between'")?;
                let low = self.additive_for("the lower bound")?;
                self.expect(&TokenKind::DotDot, "'..' between the lower and the upper bound")?;
                let high = self.additive_for("the upper bound")?;
                self.expect(&TokenKind::RParen, "')' after the upper bound")?;
                let span = lhs.span.to(Span::new(self.prev_end(), self.prev_end()));
                let depth = lhs.depth.max(low.depth).max(high.depth);
                let kind = ExprKind::Between {
                    lhs: Box::new(lhs),
                    low: Box::new(low),
                    high: Box::new(high),
                    negated,
                };
                self.node(kind, span, depth)
            }
            "matches" if !negated => {
                self.bump();
                self.expect_word("regex", "'regex' after 'matches'")?;
                let pattern = self.additive_for("a regular expression after 'matches regex'")?;
                let span = lhs.span.to(pattern.span);
                let depth = lhs.depth.max(pattern.depth);
                self.node(
                    ExprKind::MatchesRegex { lhs: Box::new(lhs), pattern: Box::new(pattern) },
                    span,
                    depth,
                )
            }
            _ if negated => Err(QueryError::new(
                word_span,
                format!(
                    "unknown operator '!{word}'; expected one of !has, !contains, !startswith, !endswith, !in, \
                     !in~, !between (or their _cs forms)"
                ),
            )),
            _ => Ok(lhs),
        }
    }

    fn skip_operator(&mut self, negated: bool) {
        if negated {
            self.bump();
        }
        self.bump();
    }

    /// The right operand of a binary operator.
    fn operand(&mut self, operator: &Token) -> Result<Expr> {
        if !self.starts_expr() {
            return Err(self.expected(&format!("an expression after {}", operator.kind.describe())));
        }
        self.additive()
    }

    fn additive_for(&mut self, what: &str) -> Result<Expr> {
        if !self.starts_expr() {
            return Err(self.expected(what));
        }
        self.additive()
    }

    fn paren_list(&mut self, what: &str) -> Result<Vec<Expr>> {
        self.expect(&TokenKind::LParen, what)?;
        let mut list = Vec::new();
        if self.eat(&TokenKind::RParen) {
            return Ok(list);
        }
        loop {
            list.push(self.expr_for("a value in the list")?);
            if self.eat(&TokenKind::RParen) {
                return Ok(list);
            }
            self.expect(&TokenKind::Comma, "',' or ')' in the list")?;
        }
    }

    fn additive(&mut self) -> Result<Expr> {
        let mut lhs = self.multiplicative()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Plus => BinaryOp::Add,
                TokenKind::Minus => BinaryOp::Sub,
                _ => return Ok(lhs),
            };
            let token = self.bump();
            if !self.starts_expr() {
                return Err(self.expected(&format!("an expression after {}", token.kind.describe())));
            }
            let rhs = self.multiplicative()?;
            let span = lhs.span.to(rhs.span);
            let depth = lhs.depth.max(rhs.depth);
            lhs = self.node(ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span, depth)?;
        }
    }

    fn multiplicative(&mut self) -> Result<Expr> {
        let mut lhs = self.unary()?;
        loop {
            let op = match self.peek().kind {
                TokenKind::Star => BinaryOp::Mul,
                TokenKind::Slash => BinaryOp::Div,
                TokenKind::Percent => BinaryOp::Mod,
                _ => return Ok(lhs),
            };
            let token = self.bump();
            if !self.starts_expr() {
                return Err(self.expected(&format!("an expression after {}", token.kind.describe())));
            }
            let rhs = self.unary()?;
            let span = lhs.span.to(rhs.span);
            let depth = lhs.depth.max(rhs.depth);
            lhs = self.node(ExprKind::Binary { op, lhs: Box::new(lhs), rhs: Box::new(rhs) }, span, depth)?;
        }
    }

    fn unary(&mut self) -> Result<Expr> {
        match self.peek().kind {
            TokenKind::Minus | TokenKind::Plus => {
                let token = self.bump();
                if !self.starts_expr() {
                    return Err(self.expected(&format!("an expression after {}", token.kind.describe())));
                }
                self.enter()?;
                let inner = self.unary();
                self.leave();
                let inner = inner?;
                if token.kind == TokenKind::Plus {
                    return Ok(inner);
                }
                let span = token.span.to(inner.span);
                // Fold negative literals so that `-1` is a literal (and i64::MIN is not an overflow).
                match &inner.kind {
                    ExprKind::Literal(Value::Long(n)) => {
                        Ok(Expr { kind: ExprKind::Literal(Value::Long(n.wrapping_neg())), span, depth: 1 })
                    }
                    ExprKind::Literal(Value::Real(r)) => {
                        Ok(Expr { kind: ExprKind::Literal(Value::Real(-r)), span, depth: 1 })
                    }
                    ExprKind::Literal(Value::Timespan(t)) => {
                        Ok(Expr { kind: ExprKind::Literal(Value::Timespan(-t)), span, depth: 1 })
                    }
                    _ => {
                        let depth = inner.depth;
                        self.node(ExprKind::Neg(Box::new(inner)), span, depth)
                    }
                }
            }
            _ => self.postfix(),
        }
    }

    fn postfix(&mut self) -> Result<Expr> {
        let mut expr = self.primary()?;
        loop {
            if self.at(&TokenKind::Dot) {
                self.bump();
                let (name, span) = match self.peek().kind.clone() {
                    TokenKind::Ident(name) => (name, self.bump().span),
                    TokenKind::String(name) => (name, self.bump().span),
                    _ => return Err(self.expected("a property name after '.'")),
                };
                let full = expr.span.to(span);
                let depth = expr.depth;
                expr = self.node(ExprKind::Member { base: Box::new(expr), name }, full, depth)?;
            } else if self.at(&TokenKind::LBracket) {
                self.bump();
                let index = self.expr_for("a property name or an index inside '[ ]'")?;
                let close = self.expect(&TokenKind::RBracket, "']' after the index")?;
                let full = expr.span.to(close);
                let depth = expr.depth.max(index.depth);
                expr =
                    self.node(ExprKind::Index { base: Box::new(expr), index: Box::new(index) }, full, depth)?;
            } else {
                return Ok(expr);
            }
        }
    }

    fn primary(&mut self) -> Result<Expr> {
        let token = self.peek().clone();
        let literal = |value: Value| Ok(Expr { kind: ExprKind::Literal(value), span: token.span, depth: 1 });
        match &token.kind {
            TokenKind::Long(n) => {
                self.bump();
                literal(Value::Long(*n))
            }
            TokenKind::Real(r) => {
                self.bump();
                literal(Value::Real(*r))
            }
            TokenKind::String(s) => {
                self.bump();
                literal(Value::String(s.clone()))
            }
            TokenKind::Timespan(t) => {
                self.bump();
                literal(Value::Timespan(*t))
            }
            TokenKind::DateTime(text) => {
                self.bump();
                if text == "null" {
                    return literal(Value::Null);
                }
                match parse_datetime(text) {
                    Some(t) => literal(Value::DateTime(t)),
                    None => Err(QueryError::new(
                        token.span,
                        format!(
                            "invalid datetime literal '{text}'; expected a time such as 2026-11-29T05:33:12Z"
                        ),
                    )),
                }
            }
            TokenKind::Ident(word) if matches!(word.as_str(), "true" | "false" | "True" | "False") => {
                self.bump();
                literal(Value::Bool(word.eq_ignore_ascii_case("true")))
            }
            TokenKind::Ident(word) if word == "dynamic" && self.peek_at(1).kind == TokenKind::LParen => {
                self.bump();
                self.bump();
                let json = self.json_value(0)?;
                let close = self.expect(&TokenKind::RParen, "')' to close dynamic(")?;
                Ok(Expr {
                    kind: ExprKind::Literal(Value::Dynamic(json)),
                    span: token.span.to(close),
                    depth: 1,
                })
            }
            TokenKind::Ident(name) if self.peek_at(1).kind == TokenKind::LParen => {
                let name = name.clone();
                self.bump();
                self.bump();
                let mut args = Vec::new();
                if !self.at(&TokenKind::RParen) {
                    loop {
                        let is_star = self.at(&TokenKind::Star)
                            && matches!(self.peek_at(1).kind, TokenKind::Comma | TokenKind::RParen);
                        if is_star {
                            let span = self.bump().span;
                            args.push(Expr { kind: ExprKind::Star, span, depth: 1 });
                        } else {
                            args.push(self.expr_for(&format!("an argument of {name}()"))?);
                        }
                        if !self.eat(&TokenKind::Comma) {
                            break;
                        }
                    }
                }
                let close =
                    self.expect(&TokenKind::RParen, &format!("',' or ')' in the arguments of {name}()"))?;
                let depth = args.iter().map(|a| a.depth).max().unwrap_or(0);
                self.node(ExprKind::Call { name, name_span: token.span, args }, token.span.to(close), depth)
            }
            TokenKind::Ident(name) => {
                self.bump();
                Ok(Expr { kind: ExprKind::Name(name.clone()), span: token.span, depth: 1 })
            }
            TokenKind::LParen => {
                self.bump();
                let inner = self.expr_for("an expression after '('")?;
                self.expect(&TokenKind::RParen, "')' to close '('")?;
                Ok(inner)
            }
            TokenKind::LBracket => {
                // ['Column name']
                self.bump();
                let TokenKind::String(name) = self.peek().kind.clone() else {
                    return Err(self.expected("a quoted column name inside '[ ]'"));
                };
                self.bump();
                let close = self.expect(&TokenKind::RBracket, "']' after the column name")?;
                Ok(Expr { kind: ExprKind::Name(name), span: token.span.to(close), depth: 1 })
            }
            _ => Err(self.expected("an expression")),
        }
    }

    /// The JSON inside `dynamic(...)`.
    fn json_value(&mut self, depth: u32) -> Result<Json> {
        if depth > MAX_DEPTH {
            return Err(QueryError::new(self.peek().span, "dynamic literal nested too deeply"));
        }
        let token = self.peek().clone();
        let value = match &token.kind {
            TokenKind::String(s) => Json::String(s.clone()),
            TokenKind::Long(n) => Json::from(*n),
            TokenKind::Real(r) => serde_json::Number::from_f64(*r).map_or(Json::Null, Json::Number),
            TokenKind::Minus => {
                self.bump();
                return match self.peek().kind {
                    TokenKind::Long(n) => {
                        self.bump();
                        Ok(Json::from(n.wrapping_neg()))
                    }
                    TokenKind::Real(r) => {
                        self.bump();
                        Ok(serde_json::Number::from_f64(-r).map_or(Json::Null, Json::Number))
                    }
                    _ => Err(self.expected("a number after '-'")),
                };
            }
            TokenKind::Ident(w) if w == "true" => Json::Bool(true),
            TokenKind::Ident(w) if w == "false" => Json::Bool(false),
            TokenKind::Ident(w) if w == "null" => Json::Null,
            TokenKind::LBracket => {
                self.bump();
                let mut items = Vec::new();
                if !self.eat(&TokenKind::RBracket) {
                    loop {
                        items.push(self.json_value(depth + 1)?);
                        if self.eat(&TokenKind::RBracket) {
                            break;
                        }
                        self.expect(&TokenKind::Comma, "',' or ']' in the array")?;
                    }
                }
                return Ok(Json::Array(items));
            }
            TokenKind::LBrace => {
                self.bump();
                let mut map = serde_json::Map::new();
                if !self.eat(&TokenKind::RBrace) {
                    loop {
                        let TokenKind::String(key) = self.peek().kind.clone() else {
                            return Err(self.expected("a quoted property name"));
                        };
                        self.bump();
                        self.expect(&TokenKind::Colon, "':' after the property name")?;
                        let value = self.json_value(depth + 1)?;
                        map.insert(key, value);
                        if self.eat(&TokenKind::RBrace) {
                            break;
                        }
                        self.expect(&TokenKind::Comma, "',' or '}' in the object")?;
                    }
                }
                return Ok(Json::Object(map));
            }
            _ => {
                return Err(self.expected(
                    "a value inside dynamic(): a string, a number, true, false, null, [ ] or { }",
                ));
            }
        };
        self.bump();
        Ok(value)
    }
}

/// The candidate closest to `word` if it is close enough to be a likely typo.
pub fn suggest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word_lower = word.to_lowercase();
    candidates
        .iter()
        .map(|c| (edit_distance(&word_lower, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= 1.max(c.chars().count() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb { prev } else { 1 + prev.min(cur).min(row[j]) };
            prev = cur;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn product_query_parses() {
        let q = parse(r#"DeviceNetworkEvents | where ActionType == "ConnectionSuccess" and RemoteIP != "10.0.0.5" | take 10"#)
            .expect("the product query parses");
        assert_eq!(q.body.ops.len(), 2);
        assert!(
            matches!(&q.body.ops[0].kind, OperatorKind::Where(e) if matches!(e.kind, ExprKind::Binary { op: BinaryOp::And, .. }))
        );
    }

    #[test]
    fn negated_operators_must_be_glued() {
        let q = parse("DeviceEvents | where RemoteUrl !has 'x' and RemoteUrl !in~ ('a')").expect("parses");
        let OperatorKind::Where(e) = &q.body.ops[0].kind else { panic!("expected a where") };
        let ExprKind::Binary { lhs, rhs, .. } = &e.kind else { panic!("expected and") };
        assert!(matches!(lhs.kind, ExprKind::StringOp { op: StringOp::Has, negated: true, .. }));
        assert!(matches!(rhs.kind, ExprKind::In { negated: true, case_insensitive: true, .. }));
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("DeviceEvents | where {}1{}", "(".repeat(10_000), ")".repeat(10_000));
        let e = parse(&deep).expect_err("too deep");
        assert!(e.message.contains("nested too deeply"), "{e}");
        let long = format!("DeviceEvents | extend x = 1{}", " + 1".repeat(10_000));
        let e = parse(&long).expect_err("too tall");
        assert!(e.message.contains("nested too deeply"), "{e}");
    }

    #[test]
    fn suggestions() {
        assert_eq!(suggest("wher", &["where", "project"]), Some("where"));
        assert_eq!(suggest("zzzzzz", &["where", "project"]), None);
    }
}
