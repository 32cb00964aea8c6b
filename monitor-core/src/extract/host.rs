//! Host names and authorities as they appear in requests: `host`, `host:port`, `[v6]:port`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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

/// A host a request asks a proxy (or origin) to reach, as it will reach it: [`normalize_host`], and a
/// numeric name in any form `inet_aton` reads (`2130706433`, `0x7f.1`, `0177.0.0.1`) as the IPv4
/// address it stands for, since that is what squid, tinyproxy and microsocks connect to. Not for a
/// TLS server_name, which nothing resolves.
pub fn request_host(raw: &str) -> Option<String> {
    let name = normalize_host(raw)?;
    Some(match inet_aton(&name) {
        Some(addr) => addr.to_string(),
        None => name,
    })
}

/// glibc's `inet_aton`: one to four parts, each decimal, octal (leading `0`) or hex (`0x`), the last
/// filling the bytes the others left (`a`, `a.b` with b < 2^24, `a.b.c` with c < 2^16, `a.b.c.d`).
pub fn inet_aton(text: &str) -> Option<Ipv4Addr> {
    let mut parts = [0u32; 4];
    let mut count = 0;
    for part in text.split('.') {
        if count == 4 {
            return None;
        }
        parts[count] = numeric_part(part)?;
        count += 1;
    }
    let last = parts[count - 1];
    let head = |n: usize| parts[..n].iter().all(|&p| p <= 0xff);
    let value = match count {
        1 => last,
        2 if head(1) && last <= 0xff_ffff => parts[0] << 24 | last,
        3 if head(2) && last <= 0xffff => parts[0] << 24 | parts[1] << 16 | last,
        4 if head(3) && last <= 0xff => parts[0] << 24 | parts[1] << 16 | parts[2] << 8 | last,
        _ => return None,
    };
    Some(Ipv4Addr::from(value))
}

/// One part of an `inet_aton` address, as `strtoul(part, _, 0)` reads it, all of it digits.
fn numeric_part(part: &str) -> Option<u32> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
        (hex, 16)
    } else if part.len() > 1 && part.starts_with('0') {
        (&part[1..], 8)
    } else {
        (part, 10)
    };
    let all_digits = digits.bytes().all(|b| b.is_ascii_hexdigit());
    if digits.is_empty() || !all_digits || !part.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    // Leading zeros never overflow; the value must fit 32 bits.
    let significant = digits.trim_start_matches('0');
    if significant.len() > 11 {
        return None;
    }
    let value = u64::from_str_radix(if significant.is_empty() { "0" } else { significant }, radix).ok()?;
    u32::try_from(value).ok()
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
    fn numeric_hosts_are_the_addresses_inet_aton_reads() {
        for (raw, addr) in [
            ("127.0.0.12", "127.0.0.12"),
            ("2130706444", "127.0.0.12"),
            ("0x7f00000c", "127.0.0.12"),
            ("0X7F.12", "127.0.0.12"),
            ("127.12", "127.0.0.12"),
            ("127.0.12", "127.0.0.12"),
            ("0177.0.0.014", "127.0.0.12"),
            ("010.000.00.003", "8.0.0.3"),
            ("0", "0.0.0.0"),
            ("0000000000000000177.1", "127.0.0.1"),
            ("127.0.0.12.", "127.0.0.12"),
        ] {
            assert_eq!(request_host(raw).as_deref(), Some(addr), "{raw}");
        }
        // Not numbers to inet_aton: names, which a proxy looks up (and here would not find).
        for name in
            ["08.1.2.3", "0x", "1.2.3.4.5", "256.1.1.1", "1.16777216", "1e100.net", "4294967296", "0x.1"]
        {
            assert_eq!(inet_aton(name), None, "{name}");
        }
        assert_eq!(inet_aton("4294967295"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(request_host("Example.COM.").as_deref(), Some("example.com"));
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
