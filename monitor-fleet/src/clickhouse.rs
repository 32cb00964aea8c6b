//! ClickHouse, the fleet store, over its HTTP interface: the tables, and the events as their rows.
//!
//! The SQL here runs on every ClickHouse from 18.16 (Debian's) on: no DateTime64 (time to the
//! microsecond is an integer column, `TimestampMicros`, with a `Timestamp` DateTime computed from it), no
//! JSONExtract (AdditionalFields is JSON text for `visitParamExtract*`). A redelivered event is one row
//! after merges and in every query that reads with `FINAL`: the tables are ReplacingMergeTree on
//! `(DeviceId, Seq)`.

use std::path::Path;
use std::time::Duration;

use monitor_hunt::schema::{ColumnType, DEVICE_INFO, FLEET_TABLES, columns_of};
use serde_json::{Map, Value};

use crate::FleetError;
pub use crate::row::TIMESTAMP_MICROS;

/// How long one HTTP request to ClickHouse may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A ClickHouse database reached over HTTP: `http://HOST:PORT/DATABASE`.
#[derive(Clone)]
pub struct ClickHouse {
    endpoint: String,
    database: String,
    user: Option<String>,
    password: Option<String>,
    agent: ureq::Agent,
}

impl std::fmt::Debug for ClickHouse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouse")
            .field("endpoint", &self.endpoint)
            .field("database", &self.database)
            .finish()
    }
}

fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with(|c: char| c.is_ascii_digit())
}

/// Percent-encoding for a URL query value.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3 / 2);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The HTTP client: ClickHouse's own status codes are answers, not errors; TLS trusts `roots` when given,
/// else the well-known roots (webpki-roots).
fn agent(roots: Option<ureq::tls::RootCerts>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(roots) = roots {
        tls = tls.root_certs(roots);
    }
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(REQUEST_TIMEOUT))
        .tls_config(tls.build())
        .build();
    ureq::Agent::new_with_config(config)
}

impl ClickHouse {
    /// `http://HOST:PORT/DATABASE` or `https://HOST:PORT/DATABASE`, with an optional user and password (sent
    /// as ClickHouse's headers). Over https the server's certificate must chain to a well-known root unless
    /// [`ClickHouse::with_tls_ca`] names the CA to trust.
    pub fn new(url: &str, user: Option<String>, password: Option<String>) -> Result<ClickHouse, FleetError> {
        let bad = |why: &str| {
            FleetError::Config(format!("{url:?} is not a ClickHouse URL (http://HOST:8123/DATABASE): {why}"))
        };
        let (scheme, rest) = ["http", "https"]
            .into_iter()
            .find_map(|scheme| Some((scheme, url.strip_prefix(scheme)?.strip_prefix("://")?)))
            .ok_or_else(|| bad("it must start with http:// or https://"))?;
        let (host, database) = rest.split_once('/').ok_or_else(|| bad("no database named"))?;
        let database = database.trim_end_matches('/');
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.contains('@') {
            // They would show in logs, in `ps` and on the console's page.
            return Err(bad(
                "give the user and password with their options (or the environment), not in the URL",
            ));
        }
        if !valid_identifier(database) {
            return Err(bad("the database must be a name of letters, digits and _"));
        }
        Ok(ClickHouse {
            endpoint: format!("{scheme}://{host}"),
            database: database.to_string(),
            user,
            password,
            agent: agent(None),
        })
    }

    /// [`ClickHouse::new`], then [`ClickHouse::with_tls_ca`] when a CA file is given: what `--into`/`--fleet`
    /// with their user, password and CA options name.
    pub fn connect(
        url: &str,
        user: Option<String>,
        password: Option<String>,
        tls_ca: Option<&Path>,
    ) -> Result<ClickHouse, FleetError> {
        let clickhouse = ClickHouse::new(url, user, password)?;
        match tls_ca {
            Some(ca) => clickhouse.with_tls_ca(ca),
            None => Ok(clickhouse),
        }
    }

    /// Trusts only the CA certificates (PEM) in `path` for the server's certificate: an https URL's own CA.
    pub fn with_tls_ca(mut self, path: &Path) -> Result<ClickHouse, FleetError> {
        let what = format!("the ClickHouse CA file {}", path.display());
        if !self.endpoint.starts_with("https://") {
            return Err(FleetError::Config(format!("{what} is for an https:// URL, not {}", self.endpoint)));
        }
        let pem = std::fs::read(path).map_err(|e| FleetError::Config(format!("read {what}: {e}")))?;
        let mut certs = Vec::new();
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(cert)) => certs.push(cert),
                Ok(_) => {}
                Err(e) => return Err(FleetError::Config(format!("{what}: {e}"))),
            }
        }
        if certs.is_empty() {
            return Err(FleetError::Config(format!("{what} holds no PEM certificate")));
        }
        self.agent = agent(Some(ureq::tls::RootCerts::new_with_certs(&certs)));
        Ok(self)
    }

    /// `http(s)://HOST:PORT/DATABASE`.
    pub fn url(&self) -> String {
        format!("{}/{}", self.endpoint, self.database)
    }
}

/// The settings every answer is asked with (64-bit integers as JSON numbers, as [`parse_answer`] reads
/// them; ClickHouse 18.16 quotes them by default).
pub const ANSWER_SETTINGS: &[(&str, &str)] = &[("output_format_json_quote_64bit_integers", "0")];

/// The format of every answer, and of the rows an INSERT sends.
pub const ROW_FORMAT: &str = "JSONEachRow";

/// Where the fleet's SQL runs: a ClickHouse server over HTTP ([`ClickHouse`]), or, in the tests, a
/// ClickHouse embedded in another process (chdb). The statements, the rows sent and the parsing of the
/// answers are the same for all of them; only the transport differs.
pub trait FleetSql {
    /// The database that holds the tables.
    fn database(&self) -> &str;

    /// Runs `statement` with `settings`; `data` follows it as an INSERT's rows (empty otherwise).
    /// Returns the answer's text, or the error ClickHouse gave.
    fn send(&self, statement: &str, data: &[u8], settings: &[(&str, &str)]) -> Result<String, FleetError>;

    /// Runs a statement that returns nothing of interest (DDL).
    fn execute(&self, sql: &str) -> Result<(), FleetError> {
        self.send(sql, b"", &[]).map(|_| ())
    }

    /// Runs a SELECT and returns its rows as JSON objects (64-bit integers as numbers).
    fn query_rows(&self, sql: &str) -> Result<Vec<Map<String, Value>>, FleetError> {
        parse_answer(&self.send(&format!("{sql} FORMAT {ROW_FORMAT}"), b"", ANSWER_SETTINGS)?)
    }

    /// Creates the database and its tables (both event tables and DeviceInfo) when absent.
    fn ensure_schema(&self) -> Result<(), FleetError> {
        self.execute(&format!("CREATE DATABASE IF NOT EXISTS {}", self.database()))?;
        for table in FLEET_TABLES {
            self.execute(&create_table(self.database(), table))?;
            // A table an older ingest made gets the columns added since.
            let have: Vec<String> = self
                .query_rows(&format!(
                    "SELECT name FROM system.columns WHERE database = '{}' AND table = '{table}'",
                    self.database()
                ))?
                .iter()
                .filter_map(|row| row.get("name").and_then(Value::as_str).map(str::to_string))
                .collect();
            for (name, definition) in column_definitions(table) {
                if !have.contains(&name) {
                    self.execute(&format!(
                        "ALTER TABLE {}.{table} ADD COLUMN {definition}",
                        self.database()
                    ))?;
                }
            }
        }
        Ok(())
    }

    /// Inserts rows (objects as [`crate::row::to_row`] makes them) into `table`, all or nothing.
    fn insert(&self, table: &str, rows: &[Map<String, Value>]) -> Result<(), FleetError> {
        let mut body = Vec::with_capacity(rows.len() * 512);
        for row in rows {
            serde_json::to_writer(&mut body, row).map_err(|e| FleetError::ClickHouse(e.to_string()))?;
            body.push(b'\n');
        }
        self.insert_lines(table, &body)
    }

    /// Inserts `lines` (JSONEachRow, as [`crate::row::encode_row`] writes them) into `table`, all or nothing.
    fn insert_lines(&self, table: &str, lines: &[u8]) -> Result<(), FleetError> {
        if lines.is_empty() {
            return Ok(());
        }
        self.send(&format!("INSERT INTO {}.{table} FORMAT {ROW_FORMAT}", self.database()), lines, &[])
            .map(|_| ())
    }
}

/// The rows of an answer in [`ROW_FORMAT`].
pub fn parse_answer(text: &str) -> Result<Vec<Map<String, Value>>, FleetError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .map_err(|e| FleetError::ClickHouse(format!("an answer line is not JSON ({e}): {line}")))
        })
        .collect()
}

impl FleetSql for ClickHouse {
    fn database(&self) -> &str {
        &self.database
    }

    /// Sends `statement` (in the URL) with `data` as the body, and returns the answer.
    fn send(&self, statement: &str, data: &[u8], settings: &[(&str, &str)]) -> Result<String, FleetError> {
        // No `database=` parameter: ClickHouse refuses it before the database exists; the SQL names
        // its tables with the database instead.
        let mut url = format!("{}/?query={}", self.endpoint, encode(statement));
        for (name, value) in settings {
            url.push_str(&format!("&{name}={}", encode(value)));
        }
        let mut request = self.agent.post(&url);
        if let Some(user) = &self.user {
            request = request.header("X-ClickHouse-User", user);
        }
        if let Some(password) = &self.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        let mut response =
            request.send(data).map_err(|e| FleetError::ClickHouse(format!("{}: {e}", self.endpoint)))?;
        let status = response.status();
        let text = response
            .body_mut()
            .with_config()
            .limit(u64::MAX)
            .read_to_string()
            .map_err(|e| FleetError::ClickHouse(format!("read the answer of {}: {e}", self.endpoint)))?;
        if !status.is_success() {
            return Err(FleetError::ClickHouse(format!(
                "{} answered {status}: {}",
                self.endpoint,
                text.trim()
            )));
        }
        Ok(text)
    }
}

/// Each stored column of one of [`FLEET_TABLES`] and its definition (a time is two: the microseconds kept
/// and the DateTime computed from them).
fn column_definitions(table: &str) -> Vec<(String, String)> {
    let mut columns = Vec::new();
    for &(name, ty) in columns_of(table).unwrap_or_default() {
        let definition = match (name, ty) {
            (_, ColumnType::DateTime) => {
                columns.push((TIMESTAMP_MICROS.to_string(), format!("{TIMESTAMP_MICROS} Int64")));
                format!("{name} DateTime MATERIALIZED toDateTime(intDiv({TIMESTAMP_MICROS}, 1000000))")
            }
            ("DeviceId", _) => format!("{name} String"),
            ("Seq", _) => format!("{name} UInt64"),
            (_, ColumnType::Long) => format!("{name} Nullable(Int64)"),
            (_, ColumnType::String | ColumnType::Dynamic) => format!("{name} Nullable(String)"),
        };
        columns.push((name.to_string(), definition));
    }
    columns
}

/// `CREATE TABLE IF NOT EXISTS` for one of the Defender tables ([`FLEET_TABLES`]). An event is kept once
/// per `(DeviceId, Seq)`, a heartbeat once per `(DeviceId, Timestamp)`: a redelivered message replaces
/// itself.
pub fn create_table(database: &str, table: &str) -> String {
    let columns: Vec<String> = column_definitions(table).into_iter().map(|(_, d)| d).collect();
    let key = if table == DEVICE_INFO { TIMESTAMP_MICROS } else { "Seq" };
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.{table} ({}) ENGINE = ReplacingMergeTree() \
         PARTITION BY toYYYYMM(Timestamp) ORDER BY (DeviceId, {key})",
        columns.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_host_and_a_database() {
        let ch = ClickHouse::new("http://127.0.0.1:8123/fleet", None, None).expect("valid URL");
        assert_eq!(ch.database(), "fleet");
        assert_eq!(ch.url(), "http://127.0.0.1:8123/fleet");
        let ch = ClickHouse::new("https://ch.example:8443/fleet", None, None).expect("valid URL");
        assert_eq!(ch.url(), "https://ch.example:8443/fleet");
        for (url, why) in [
            ("127.0.0.1:8123/fleet", "http:// or https://"),
            ("ftp://127.0.0.1:8123/fleet", "http:// or https://"),
            ("http://127.0.0.1:8123", "no database"),
            ("http://127.0.0.1:8123/fl;eet", "letters, digits"),
            ("https:///fleet", "no host"),
            ("http://default:secret@127.0.0.1:8123/fleet", "not in the URL"),
        ] {
            let err = ClickHouse::new(url, None, None).expect_err(url).to_string();
            assert!(err.contains(why), "{url}: {err}");
        }
    }

    #[test]
    fn the_tables_replace_by_device_and_seq() {
        let sql = create_table("fleet", "DeviceEvents");
        assert!(
            sql.contains("ReplacingMergeTree() PARTITION BY toYYYYMM(Timestamp) ORDER BY (DeviceId, Seq)"),
            "{sql}"
        );
        assert!(sql.contains("TimestampMicros Int64, Timestamp DateTime MATERIALIZED"), "{sql}");
        assert!(sql.contains("Seq UInt64") && sql.contains("RemotePort Nullable(Int64)"), "{sql}");
        let sql = create_table("fleet", "DeviceInfo");
        assert!(sql.contains("ORDER BY (DeviceId, TimestampMicros)"), "a heartbeat once per time: {sql}");
        assert!(sql.contains("PolicyRevision Nullable(Int64)") && !sql.contains("Seq"), "{sql}");
    }
}
