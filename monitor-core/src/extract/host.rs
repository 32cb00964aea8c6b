//! Host names and authorities as they appear in requests: `host`, `host:port`, `[v6]:port`.

use std::net::{IpAddr, Ipv6Addr};

/// The longest name DNS can carry (RFC 1035), without the trailing dot.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// The form in which names are reported and compared: lower case, without one trailing dot, and an
/// IPv6 literal without brackets in its canonical text form. `None` when `raw` cannot be a host name.
///
/// Letters, digits, `-` and `_` (seen in real service names) are accepted in labels; IDNs stay in
/// their punycode (`xn--`) form. An IPv4 literal passes as it is, leading zeros included, because it
/// is what the client sent (SOCKS clients put such strings in the domain field).
pub fn normalize_host(raw: &str) -> Option<String> {
    let unbracketed = raw.strip_prefix('[').and_then(|r| r.strip_suffix(']'));
    let name = unbracketed.unwrap_or(raw);
    if name.contains(':') {
        // Only an IPv6 literal has colons. Zone ids (`%eth0`) are not accepted by the parser, which is
        // right: a zone means nothing off the client host.
        return name.parse::<Ipv6Addr>().ok().map(|a| a.to_string());
    }
    if unbracketed.is_some() {
        return None;
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return None;
    }
    let labels_ok = name.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= MAX_LABEL_LEN
            && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    labels_ok.then(|| name.to_ascii_lowercase())
}

/// True when a normalised host is an IP address rather than a name.
pub fn is_ip_literal(host: &str) -> bool {
    host.parse::<IpAddr>().is_ok()
}

/// Splits `host`, `host:port`, `[v6]` or `[v6]:port` (brackets removed from the host). A bare IPv6
/// literal (several colons, no brackets) is taken as a host without port. `None` when the port is not
/// a number in 0..=65535 or the brackets are unbalanced.
pub fn split_authority(authority: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => parse_port(after.strip_prefix(':')?)?,
        };
        return Some((host, port));
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => Some((host, parse_port(port)?)),
        _ => Some((authority, None)),
    }
}

/// `Some(None)` for an empty port (`host:` is legal in URIs), `None` for garbage.
fn parse_port(digits: &str) -> Option<Option<u16>> {
    if digits.is_empty() {
        return Some(None);
    }
    if digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Some)
}

/// Whether two normalised names differ, for the fronting check: IP literals are not compared with names
/// (a SOCKS request by address says nothing about the name the client meant).
pub(crate) fn names_differ(outer: &str, inner: &str) -> bool {
    !is_ip_literal(outer) && outer != inner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lowercased_without_trailing_dot() {
        assert_eq!(normalize_host("WWW.Example.COM.").as_deref(), Some("www.example.com"));
        assert_eq!(normalize_host("www.love.xn--55qx5d").as_deref(), Some("www.love.xn--55qx5d"));
        assert_eq!(normalize_host("_dmarc.example.com").as_deref(), Some("_dmarc.example.com"));
        assert_eq!(normalize_host("010.000.00.003").as_deref(), Some("010.000.00.003"));
        assert_eq!(
            normalize_host("r1---sn-5f5nxgvh5o-hjul.googlevideo.com").as_deref(),
            Some("r1---sn-5f5nxgvh5o-hjul.googlevideo.com")
        );
    }

    #[test]
    fn ipv6_literals_lose_brackets_and_take_canonical_form() {
        assert_eq!(normalize_host("[2001:DB8::1]").as_deref(), Some("2001:db8::1"));
        assert_eq!(normalize_host("2001:db8:0::1").as_deref(), Some("2001:db8::1"));
        assert_eq!(normalize_host("[::1"), None);
        assert_eq!(normalize_host("[example.com]"), None);
        assert_eq!(normalize_host("fe80::1%eth0"), None);
    }

    #[test]
    fn bytes_that_cannot_be_in_a_name_are_rejected() {
        for bad in ["", ".", "a..b", ".a", "a b", "a/b", "exa\u{e9}mple.com", "a\0b", "a..", "x@y"] {
            assert_eq!(normalize_host(bad), None, "{bad:?}");
        }
        assert_eq!(normalize_host(&"a".repeat(64)), None);
        assert_eq!(normalize_host(&["a"; 128].join(".")), None);
    }

    #[test]
    fn authorities_split_into_host_and_port() {
        assert_eq!(split_authority("apache.org:443"), Some(("apache.org", Some(443))));
        assert_eq!(split_authority("toni.lan"), Some(("toni.lan", None)));
        assert_eq!(split_authority("[::1]:8080"), Some(("::1", Some(8080))));
        assert_eq!(split_authority("[::1]"), Some(("::1", None)));
        assert_eq!(split_authority("::1"), Some(("::1", None)));
        assert_eq!(split_authority("host:"), Some(("host", None)));
        assert_eq!(split_authority("host:99999"), None);
        assert_eq!(split_authority("host:+80"), None);
        assert_eq!(split_authority("[::1]x"), None);
    }
}
