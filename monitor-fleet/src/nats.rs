//! Connecting to NATS the way its users expect: one or more `nats://HOST:PORT` URLs, a credentials file,
//! a user and password, a CA for TLS.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::ServerAddr;

use crate::FleetError;

/// The stream every agent exports to.
pub const STREAM: &str = "MONITOR_EVENTS";
/// Subjects of exported events: `monitor.events.<Table>.<DeviceName>`.
pub const SUBJECT_PREFIX: &str = "monitor.events";
/// Where the ingest republishes messages that are not valid events.
pub const DEADLETTER_SUBJECT: &str = "monitor.deadletter";
/// The stream that keeps the dead letters, so that they can be read after the fact.
pub const DEADLETTER_STREAM: &str = "MONITOR_DEADLETTER";

/// How to reach NATS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsOptions {
    pub servers: Vec<String>,
    /// A NATS credentials file (JWT and nkey seed).
    pub creds: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Trust this CA (PEM) and require TLS.
    pub tls_ca: Option<PathBuf>,
}

impl NatsOptions {
    /// `nats://HOST:PORT[,nats://HOST:PORT...]` (the scheme may be left out; `tls://` asks for TLS).
    pub fn parse_servers(text: &str) -> Result<Vec<String>, FleetError> {
        let servers: Vec<String> =
            text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect();
        if servers.is_empty() {
            return Err(FleetError::Config(format!("{text:?} names no NATS server (nats://HOST:PORT)")));
        }
        for server in &servers {
            server.parse::<ServerAddr>().map_err(|e| {
                FleetError::Config(format!("{server:?} is not a NATS URL (nats://HOST:PORT): {e}"))
            })?;
        }
        Ok(servers)
    }

    fn addrs(&self) -> Result<Vec<ServerAddr>, FleetError> {
        self.servers
            .iter()
            .map(|s| s.parse::<ServerAddr>().map_err(|e| FleetError::Config(format!("{s:?}: {e}"))))
            .collect()
    }

    /// Connects once; fails fast when no server answers or the credentials are refused. The client then
    /// reconnects by itself after a lost connection.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, FleetError> {
        if self.user.is_some() != self.password.is_some() {
            return Err(FleetError::Config("a NATS user needs a password and a password a user".into()));
        }
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            // Unbounded: an agent outlives any outage of the fleet's servers.
            .max_reconnects(None);
        if let Some(path) = &self.creds {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| FleetError::Config(format!("NATS credentials file {}: {e}", path.display())))?;
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        options
            .connect(self.addrs()?)
            .await
            .map_err(|e| FleetError::Nats(format!("connect to {}: {e}", self.servers.join(","))))
    }
}

/// A subject token for `text`: NATS separates tokens with `.` and uses `*` and `>` as wildcards, so those
/// (and white space) become `_`.
pub fn subject_token(text: &str) -> String {
    let token: String = text
        .chars()
        .map(|c| if c == '.' || c == '*' || c == '>' || c.is_whitespace() { '_' } else { c })
        .collect();
    if token.is_empty() { "_".into() } else { token }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_are_a_comma_separated_list_of_urls() {
        assert_eq!(
            NatsOptions::parse_servers("nats://127.0.0.1:4222, nats://10.0.0.2:4222").expect("two URLs"),
            vec!["nats://127.0.0.1:4222", "nats://10.0.0.2:4222"]
        );
        let err = NatsOptions::parse_servers(" , ").expect_err("no server").to_string();
        assert!(err.contains("names no NATS server"), "{err}");
        let err = NatsOptions::parse_servers("http://[::1").expect_err("not a URL").to_string();
        assert!(err.contains("not a NATS URL"), "{err}");
    }

    #[test]
    fn device_names_become_single_subject_tokens() {
        assert_eq!(subject_token("web-1.example.com"), "web-1_example_com");
        assert_eq!(subject_token("a*b >c"), "a_b__c");
        assert_eq!(subject_token(""), "_");
    }
}
