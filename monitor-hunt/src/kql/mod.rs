//! `hunt`: a subset of KQL over the store.
//!
//! A query is lexed and parsed into a syntax tree ([`ast`]), checked against the tables and compiled into a
//! plan, and evaluated here rather than translated to SQL: KQL's semantics (case rules, `has` terms,
//! dynamic values, `arg_max`, `join` kinds, null handling) are then written once, in Rust, and tested
//! directly. SQLite still does the part it is good at: conditions of the leading `where`s on `Timestamp`
//! (indexed), on strings by equality and on longs are pushed into the table scan, and `take` stops the
//! scan early.

pub mod ast;
mod compile;
mod error;
mod eval;
mod exec;
mod lexer;
mod optimize;
mod parser;
mod plan;
pub mod sql;
mod value;

use rusqlite::Connection;

pub use error::{QueryError, Span};
pub use parser::parse;
pub use value::Value;

use crate::store::Store;
use crate::time::now_micros;

/// Failures of a query.
#[derive(Debug, thiserror::Error)]
pub enum HuntError {
    /// The query is not in the subset or not KQL; the message points at the place.
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("read {table} from the store")]
    Read { table: &'static str, source: rusqlite::Error },
}

/// The rows of a query and the names of their columns.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Value>>,
}

/// Parses and checks `query` without running it.
pub fn check(query: &str) -> Result<(), QueryError> {
    let ast = parse(query)?;
    compile::compile(&ast, now_micros()).map_err(|e| e.locate(query))?;
    Ok(())
}

/// Runs `query` over the tables in `conn`, with `now` (microseconds since the epoch) as `now()` and the
/// reference of `ago()`.
pub fn run(conn: &Connection, query: &str, now: i64) -> Result<QueryResult, HuntError> {
    let ast = parse(query)?;
    let plan = compile::compile(&ast, now).map_err(|e| e.locate(query))?;
    let rows = exec::execute(conn, &plan, now)?;
    Ok(QueryResult { columns: plan.columns, rows })
}

impl Store {
    /// Runs a KQL query now.
    pub fn query(&self, query: &str) -> Result<QueryResult, HuntError> {
        run(&self.conn, query, now_micros())
    }

    /// Runs a KQL query as if it were `now` (microseconds since the epoch): for reproducible results.
    pub fn query_at(&self, query: &str, now: i64) -> Result<QueryResult, HuntError> {
        run(&self.conn, query, now)
    }
}
