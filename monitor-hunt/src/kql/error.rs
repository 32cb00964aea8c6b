//! Query errors that point at the place in the query.

use std::fmt;

/// A byte range in the query text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Span {
        Span { start, end: end.max(start) }
    }

    /// From the start of `self` to the end of `other`.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start.min(other.start), self.end.max(other.end))
    }
}

/// A query that is not in the subset, or not KQL: where (line and column, 1-based, in characters) and
/// what was expected there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryError {
    pub span: Span,
    pub message: String,
    pub line: usize,
    pub column: usize,
    /// The query line with a caret under the place.
    pub excerpt: String,
}

impl QueryError {
    pub fn new(span: Span, message: impl Into<String>) -> QueryError {
        QueryError { span, message: message.into(), line: 0, column: 0, excerpt: String::new() }
    }

    /// Fills in line, column and excerpt from the query text.
    pub fn locate(mut self, source: &str) -> QueryError {
        let start = floor_char_boundary(source, self.span.start.min(source.len()));
        let line_start = source[..start].rfind('\n').map_or(0, |i| i + 1);
        let line_end = source[start..].find('\n').map_or(source.len(), |i| start + i);
        self.line = source[..start].matches('\n').count() + 1;
        self.column = source[line_start..start].chars().count() + 1;
        let text: String =
            source[line_start..line_end].chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let end = floor_char_boundary(source, self.span.end.clamp(start, line_end));
        let width = source[start..end].chars().count().max(1);
        self.excerpt = format!("  {text}\n  {}{}", " ".repeat(self.column - 1), "^".repeat(width));
        self
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "query error at {}:{}: {}", self.line, self.column, self.message)?;
        if !self.excerpt.is_empty() {
            write!(f, "\n{}", self.excerpt)?;
        }
        Ok(())
    }
}

impl std::error::Error for QueryError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_at_the_second_line() {
        let source = "T\n| wher x";
        let e = QueryError::new(Span::new(4, 8), "unknown operator").locate(source);
        assert_eq!((e.line, e.column), (2, 3));
        assert_eq!(e.to_string(), "query error at 2:3: unknown operator\n  | wher x\n    ^^^^");
    }

    #[test]
    fn end_of_query_gets_one_caret() {
        let source = "T | where";
        let e = QueryError::new(Span::new(9, 9), "expected an expression").locate(source);
        assert_eq!((e.line, e.column), (1, 10));
        assert!(e.excerpt.ends_with("\n           ^"), "{:?}", e.excerpt);
    }
}
