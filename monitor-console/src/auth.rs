//! Who may use the console. Without a token it listens on loopback only and answers only requests that
//! name a loopback host (a web page elsewhere cannot reach it through DNS rebinding); with `--token`
//! every request carries the token (a bearer header, or the cookie that opening `/?token=...` sets).
//! Writes (policy changes) also need a JSON body and, when the browser sends an Origin, the console's own.

use std::net::{IpAddr, SocketAddr};

/// The cookie that carries the token after `/?token=...`.
pub const COOKIE: &str = "monitor_console_token";

/// The shortest token accepted: guessing it over the network must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// Refuses settings that would open the console to others: anything but loopback needs a token, and so
/// do policy edits (any local user can reach a loopback port). A token is at least [`MIN_TOKEN_LEN`]
/// characters a URL and a cookie carry as they are (letters, digits, `-`, `.`, `_`, `~`).
pub fn check_settings(listen: SocketAddr, token: Option<&str>, policy_edits: bool) -> Result<(), String> {
    if let Some(token) = token {
        if token.chars().count() < MIN_TOKEN_LEN {
            return Err(format!("--token must be at least {MIN_TOKEN_LEN} characters"));
        }
        if !token.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
            return Err("--token: use letters, digits, '-', '.', '_' and '~' only".into());
        }
    }
    if policy_edits && token.is_none() {
        return Err("--allow-policy-edits needs --token: any local user can reach a loopback port".into());
    }
    if !listen.ip().is_loopback() && token.is_none() {
        return Err(format!(
            "--listen {listen}: the console listens beyond loopback only with --token (or MONITOR_CONSOLE_TOKEN)"
        ));
    }
    Ok(())
}

/// Whether the Host header names this machine's loopback (`localhost`, `127.0.0.1`, `[::1]`, with or
/// without a port).
pub fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.rsplit_once(':')
            .map_or(host, |(name, port)| if port.bytes().all(|b| b.is_ascii_digit()) { name } else { host })
    };
    let name = name.trim_end_matches('.');
    name.eq_ignore_ascii_case("localhost")
        || name.to_ascii_lowercase().ends_with(".localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Compares without stopping at the first different byte.
pub fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, byte) in b.iter().enumerate() {
        diff |= byte ^ a.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The token a request carries: `Authorization: Bearer T`, or the console's cookie.
pub fn token_of<'a>(
    authorization: Option<&'a str>,
    cookies: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    if let Some(bearer) = authorization.and_then(|a| a.strip_prefix("Bearer ")) {
        return Some(bearer.trim());
    }
    cookies
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// A write's Origin, when the browser sends one, must be the console itself (`http://HOST`).
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    match (origin, host) {
        (None, _) => true,
        (Some(origin), Some(host)) => {
            origin.strip_prefix("http://").or_else(|| origin.strip_prefix("https://")) == Some(host)
        }
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beyond_loopback_only_with_a_long_token() {
        let any: SocketAddr = "0.0.0.0:8080".parse().expect("an address");
        let local: SocketAddr = "127.0.0.1:8080".parse().expect("an address");
        let local6: SocketAddr = "[::1]:8080".parse().expect("an address");
        assert!(check_settings(any, None, false).is_err());
        assert!(check_settings(any, Some("short"), false).is_err());
        assert!(check_settings(any, Some("0123456789abcdef"), false).is_ok());
        assert!(check_settings(any, Some("0123456789abcdef;x=1"), false).is_err(), "breaks the cookie");
        assert!(check_settings(local, None, false).is_ok());
        assert!(check_settings(local6, None, false).is_ok());
        assert!(check_settings(local, None, true).is_err(), "edits need a token");
        assert!(check_settings(local, Some("0123456789abcdef"), true).is_ok());
    }

    #[test]
    fn loopback_hosts() {
        for host in
            ["127.0.0.1:8080", "localhost:8080", "LOCALHOST", "[::1]:80", "127.5.0.1", "app.localhost:1"]
        {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.example:8080", "10.0.0.1:8080", "localhost.evil.example", "[2001:db8::1]:80", ""] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("0123456789abcdef", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdeX", "0123456789abcdef"));
        assert!(!same_secret("0123456789abcdef0", "0123456789abcdef"));
        assert!(!same_secret("", "0123456789abcdef"));
    }

    #[test]
    fn tokens_from_a_bearer_or_the_cookie() {
        assert_eq!(token_of(Some("Bearer abc"), std::iter::empty()), Some("abc"));
        assert_eq!(token_of(None, ["a=1; monitor_console_token=xyz; b=2"].into_iter()), Some("xyz"));
        assert_eq!(token_of(Some("Basic abc"), ["other=1"].into_iter()), None);
    }

    #[test]
    fn writes_come_from_the_console_itself() {
        assert!(same_origin(None, Some("127.0.0.1:8080")));
        assert!(same_origin(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(!same_origin(Some("http://evil.example"), Some("127.0.0.1:8080")));
        assert!(!same_origin(Some("null"), Some("127.0.0.1:8080")));
    }
}
