//! Tokens of the KQL subset, each with the byte span it came from.

use super::error::{QueryError, Span};
use crate::time::timespan_unit;

#[derive(Debug, Clone, PartialEq)]
pub enum TokenKind {
    /// A name: column, table, function, keyword. Includes `$left`/`$right` and hyphenated operators such
    /// as `project-away`.
    Ident(String),
    String(String),
    Long(i64),
    Real(f64),
    /// Microseconds.
    Timespan(i64),
    /// The unquoted text inside `datetime(...)`.
    DateTime(String),
    Pipe,
    Comma,
    Semicolon,
    Colon,
    LParen,
    RParen,
    LBracket,
    RBracket,
    LBrace,
    RBrace,
    Dot,
    DotDot,
    Assign,
    EqEq,
    NotEq,
    EqTilde,
    BangTilde,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
    Bang,
    Tilde,
    Eof,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub kind: TokenKind,
    pub span: Span,
}

impl TokenKind {
    /// How an error message names the token.
    pub fn describe(&self) -> String {
        match self {
            TokenKind::Ident(name) => format!("'{name}'"),
            TokenKind::String(s) => format!("string {s:?}"),
            TokenKind::Long(n) => format!("number {n}"),
            TokenKind::Real(n) => format!("number {n}"),
            TokenKind::Timespan(_) => "a timespan".to_string(),
            TokenKind::DateTime(text) => format!("datetime({text})"),
            TokenKind::Eof => "end of query".to_string(),
            other => format!("'{}'", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            TokenKind::Pipe => "|",
            TokenKind::Comma => ",",
            TokenKind::Semicolon => ";",
            TokenKind::Colon => ":",
            TokenKind::LParen => "(",
            TokenKind::RParen => ")",
            TokenKind::LBracket => "[",
            TokenKind::RBracket => "]",
            TokenKind::LBrace => "{",
            TokenKind::RBrace => "}",
            TokenKind::Dot => ".",
            TokenKind::DotDot => "..",
            TokenKind::Assign => "=",
            TokenKind::EqEq => "==",
            TokenKind::NotEq => "!=",
            TokenKind::EqTilde => "=~",
            TokenKind::BangTilde => "!~",
            TokenKind::Lt => "<",
            TokenKind::Le => "<=",
            TokenKind::Gt => ">",
            TokenKind::Ge => ">=",
            TokenKind::Plus => "+",
            TokenKind::Minus => "-",
            TokenKind::Star => "*",
            TokenKind::Slash => "/",
            TokenKind::Percent => "%",
            TokenKind::Bang => "!",
            TokenKind::Tilde => "~",
            _ => "?",
        }
    }
}

/// KQL words written with a hyphen; the lexer keeps them whole so that the parser can name them (and say
/// which are outside the subset).
const HYPHENATED: [&str; 9] = [
    "project-away",
    "project-rename",
    "project-keep",
    "project-reorder",
    "mv-expand",
    "mv-apply",
    "make-series",
    "parse-where",
    "parse-kv",
];

pub fn tokenize(source: &str) -> Result<Vec<Token>, QueryError> {
    let mut lexer = Lexer { src: source, bytes: source.as_bytes(), pos: 0, tokens: Vec::new() };
    lexer.run()?;
    Ok(lexer.tokens)
}

struct Lexer<'a> {
    src: &'a str,
    bytes: &'a [u8],
    pos: usize,
    tokens: Vec<Token>,
}

impl Lexer<'_> {
    fn peek(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.pos + ahead).copied()
    }

    fn push(&mut self, kind: TokenKind, start: usize) {
        self.tokens.push(Token { kind, span: Span::new(start, self.pos) });
    }

    fn run(&mut self) -> Result<(), QueryError> {
        loop {
            self.skip_space_and_comments();
            let start = self.pos;
            let Some(c) = self.peek(0) else {
                self.push(TokenKind::Eof, start);
                return Ok(());
            };
            match c {
                b'"' | b'\'' => {
                    let s = self.string(c, false)?;
                    self.push(TokenKind::String(s), start);
                }
                b'@' if matches!(self.peek(1), Some(b'"' | b'\'')) => {
                    self.pos += 1;
                    let quote = self.bytes[self.pos];
                    let s = self.string(quote, true)?;
                    self.push(TokenKind::String(s), start);
                }
                b'0'..=b'9' => self.number()?,
                c if c == b'_' || c == b'$' || c.is_ascii_alphabetic() || c >= 0x80 => self.ident()?,
                _ => self.symbol(c)?,
            }
        }
    }

    fn skip_space_and_comments(&mut self) {
        while let Some(c) = self.peek(0) {
            if c.is_ascii_whitespace() {
                self.pos += 1;
            } else if c == b'/' && self.peek(1) == Some(b'/') {
                while self.peek(0).is_some_and(|c| c != b'\n') {
                    self.pos += 1;
                }
            } else {
                break;
            }
        }
    }

    fn symbol(&mut self, c: u8) -> Result<(), QueryError> {
        let start = self.pos;
        let next = self.peek(1);
        let (kind, len) = match (c, next) {
            (b'=', Some(b'=')) => (TokenKind::EqEq, 2),
            (b'=', Some(b'~')) => (TokenKind::EqTilde, 2),
            (b'=', _) => (TokenKind::Assign, 1),
            (b'!', Some(b'=')) => (TokenKind::NotEq, 2),
            (b'!', Some(b'~')) => (TokenKind::BangTilde, 2),
            (b'!', _) => (TokenKind::Bang, 1),
            (b'<', Some(b'=')) => (TokenKind::Le, 2),
            (b'<', Some(b'>')) => (TokenKind::NotEq, 2),
            (b'<', _) => (TokenKind::Lt, 1),
            (b'>', Some(b'=')) => (TokenKind::Ge, 2),
            (b'>', _) => (TokenKind::Gt, 1),
            (b'.', Some(b'.')) => (TokenKind::DotDot, 2),
            (b'.', _) => (TokenKind::Dot, 1),
            (b'|', _) => (TokenKind::Pipe, 1),
            (b',', _) => (TokenKind::Comma, 1),
            (b';', _) => (TokenKind::Semicolon, 1),
            (b':', _) => (TokenKind::Colon, 1),
            (b'(', _) => (TokenKind::LParen, 1),
            (b')', _) => (TokenKind::RParen, 1),
            (b'[', _) => (TokenKind::LBracket, 1),
            (b']', _) => (TokenKind::RBracket, 1),
            (b'{', _) => (TokenKind::LBrace, 1),
            (b'}', _) => (TokenKind::RBrace, 1),
            (b'+', _) => (TokenKind::Plus, 1),
            (b'-', _) => (TokenKind::Minus, 1),
            (b'*', _) => (TokenKind::Star, 1),
            (b'/', _) => (TokenKind::Slash, 1),
            (b'%', _) => (TokenKind::Percent, 1),
            (b'~', _) => (TokenKind::Tilde, 1),
            _ => {
                let ch = self.src[start..].chars().next().unwrap_or('?');
                return Err(QueryError::new(
                    Span::new(start, start + ch.len_utf8()),
                    format!(
                        "unexpected character {ch:?}; expected an operator, a name, a number or a string"
                    ),
                ));
            }
        };
        self.pos += len;
        self.push(kind, start);
        Ok(())
    }

    fn ident(&mut self) -> Result<(), QueryError> {
        let start = self.pos;
        self.pos += 1;
        while self.peek(0).is_some_and(|c| c == b'_' || c.is_ascii_alphanumeric() || c >= 0x80) {
            self.pos += 1;
        }
        // Stop at a character boundary: non-ASCII bytes were taken whole above.
        let mut word = self.src[start..self.pos].to_string();
        if self.peek(0) == Some(b'-') {
            let mut end = self.pos + 1;
            while self.bytes.get(end).is_some_and(u8::is_ascii_alphabetic) {
                end += 1;
            }
            let joined = &self.src[start..end];
            if HYPHENATED.contains(&joined) {
                word = joined.to_string();
                self.pos = end;
            }
        }
        if word == "datetime" {
            return self.datetime_literal(start, word);
        }
        self.push(TokenKind::Ident(word), start);
        Ok(())
    }

    /// `datetime(2026-11-29T05:33:12Z)`: the text inside is not KQL tokens, so it is taken raw. A quoted
    /// argument (`datetime("...")`) is left to the parser as a call.
    fn datetime_literal(&mut self, start: usize, word: String) -> Result<(), QueryError> {
        let mut p = self.pos;
        while self.bytes.get(p).is_some_and(u8::is_ascii_whitespace) {
            p += 1;
        }
        if self.bytes.get(p) != Some(&b'(') {
            self.push(TokenKind::Ident(word), start);
            return Ok(());
        }
        let mut q = p + 1;
        while self.bytes.get(q).is_some_and(u8::is_ascii_whitespace) {
            q += 1;
        }
        if matches!(self.bytes.get(q), Some(b'"' | b'\'')) {
            self.push(TokenKind::Ident(word), start);
            return Ok(());
        }
        let Some(close) = self.src[q..].find(')') else {
            return Err(QueryError::new(Span::new(p, p + 1), "unclosed datetime literal; expected ')'"));
        };
        let text = self.src[q..q + close].trim().to_string();
        self.pos = q + close + 1;
        self.push(TokenKind::DateTime(text), start);
        Ok(())
    }

    fn number(&mut self) -> Result<(), QueryError> {
        let start = self.pos;
        while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
        let mut real = false;
        if self.peek(0) == Some(b'.') && self.peek(1).is_some_and(|c| c.is_ascii_digit()) {
            real = true;
            self.pos += 1;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        if matches!(self.peek(0), Some(b'e' | b'E'))
            && (self.peek(1).is_some_and(|c| c.is_ascii_digit())
                || (matches!(self.peek(1), Some(b'+' | b'-'))
                    && self.peek(2).is_some_and(|c| c.is_ascii_digit())))
        {
            real = true;
            self.pos += 2;
            while self.peek(0).is_some_and(|c| c.is_ascii_digit()) {
                self.pos += 1;
            }
        }
        let number = &self.src[start..self.pos];
        // A unit right after the number makes it a timespan: 5m, 100ms, 1.5h.
        let unit_start = self.pos;
        while self.peek(0).is_some_and(|c| c.is_ascii_alphabetic()) {
            self.pos += 1;
        }
        let unit = &self.src[unit_start..self.pos];
        if !unit.is_empty() {
            let Some(scale) = timespan_unit(unit) else {
                return Err(QueryError::new(
                    Span::new(unit_start, self.pos),
                    format!("unknown timespan unit '{unit}'; expected d, h, m, s, ms, microsecond or tick"),
                ));
            };
            let value: f64 = number.parse().unwrap_or(f64::NAN);
            let micros = (value * scale).round();
            if !micros.is_finite() || micros.abs() >= i64::MAX as f64 {
                return Err(QueryError::new(Span::new(start, self.pos), "timespan out of range"));
            }
            self.push(TokenKind::Timespan(micros as i64), start);
            return Ok(());
        }
        let kind = if real {
            TokenKind::Real(
                number.parse().map_err(|_| QueryError::new(Span::new(start, self.pos), "invalid number"))?,
            )
        } else {
            match number.parse::<i64>() {
                Ok(n) => TokenKind::Long(n),
                Err(_) => {
                    return Err(QueryError::new(
                        Span::new(start, self.pos),
                        "number too large; expected a long between -2^63 and 2^63-1",
                    ));
                }
            }
        };
        self.push(kind, start);
        Ok(())
    }

    /// A string literal; `verbatim` (`@"..."`) takes backslashes literally and doubles the quote to escape it.
    fn string(&mut self, quote: u8, verbatim: bool) -> Result<String, QueryError> {
        let open = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            let Some(c) = self.peek(0) else { return Err(unterminated(open, quote)) };
            if c == quote {
                if verbatim && self.peek(1) == Some(quote) {
                    out.push(quote as char);
                    self.pos += 2;
                    continue;
                }
                self.pos += 1;
                return Ok(out);
            }
            if c == b'\\' && !verbatim {
                let escape_at = self.pos;
                let Some(e) = self.peek(1) else { return Err(unterminated(open, quote)) };
                let ch = match e {
                    b'n' => '\n',
                    b't' => '\t',
                    b'r' => '\r',
                    b'0' => '\0',
                    b'\\' => '\\',
                    b'"' => '"',
                    b'\'' => '\'',
                    b'u' => {
                        let hex = self.src.get(self.pos + 2..self.pos + 6).unwrap_or("");
                        let ch =
                            u32::from_str_radix(hex, 16).ok().and_then(char::from_u32).ok_or_else(|| {
                                QueryError::new(
                                    Span::new(escape_at, (escape_at + 6).min(self.src.len())),
                                    "invalid \\u escape; expected four hex digits",
                                )
                            })?;
                        self.pos += 6;
                        out.push(ch);
                        continue;
                    }
                    _ => {
                        return Err(QueryError::new(
                            Span::new(escape_at, escape_at + 2),
                            "unknown escape in string; expected \\n, \\t, \\r, \\\\, \\\", \\' or \\uXXXX",
                        ));
                    }
                };
                out.push(ch);
                self.pos += 2;
                continue;
            }
            // Copy one whole character.
            let ch = self.src[self.pos..].chars().next().unwrap_or('\u{fffd}');
            out.push(ch);
            self.pos += ch.len_utf8();
        }
    }
}

fn unterminated(open: usize, quote: u8) -> QueryError {
    QueryError::new(
        Span::new(open, open + 1),
        format!("unterminated string literal; expected a closing {}", quote as char),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(source: &str) -> Vec<TokenKind> {
        tokenize(source).expect("source lexes").into_iter().map(|t| t.kind).collect()
    }

    #[test]
    fn operators_and_words() {
        assert_eq!(
            kinds("T | project-away A // comment\n| where X !has 'a' and Y in~ (\"b\")"),
            vec![
                TokenKind::Ident("T".into()),
                TokenKind::Pipe,
                TokenKind::Ident("project-away".into()),
                TokenKind::Ident("A".into()),
                TokenKind::Pipe,
                TokenKind::Ident("where".into()),
                TokenKind::Ident("X".into()),
                TokenKind::Bang,
                TokenKind::Ident("has".into()),
                TokenKind::String("a".into()),
                TokenKind::Ident("and".into()),
                TokenKind::Ident("Y".into()),
                TokenKind::Ident("in".into()),
                TokenKind::Tilde,
                TokenKind::LParen,
                TokenKind::String("b".into()),
                TokenKind::RParen,
                TokenKind::Eof,
            ]
        );
    }

    #[test]
    fn literals() {
        assert_eq!(
            kinds(r#"5m 100ms 1.5 7 datetime(2026-11-29T05:33:12Z) @"\d+" 'it\'s' 1..2"#),
            vec![
                TokenKind::Timespan(300_000_000),
                TokenKind::Timespan(100_000),
                TokenKind::Real(1.5),
                TokenKind::Long(7),
                TokenKind::DateTime("2026-11-29T05:33:12Z".into()),
                TokenKind::String(r"\d+".into()),
                TokenKind::String("it's".into()),
                TokenKind::Long(1),
                TokenKind::DotDot,
                TokenKind::Long(2),
                TokenKind::Eof,
            ]
        );
    }

    #[test]
    fn errors_have_spans() {
        let e = tokenize("T | where X == \"abc").expect_err("unterminated string");
        assert_eq!(e.span, Span::new(15, 16));
        let e = tokenize("T | take 5q").expect_err("bad unit");
        assert_eq!(e.span, Span::new(10, 11));
        let e = tokenize("T # x").expect_err("bad character");
        assert_eq!(e.span, Span::new(2, 3));
    }
}
