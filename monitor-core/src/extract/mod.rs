//! Naming the real target of a connection from its first bytes: pure parsers over byte slices, and
//! [`FlowInspector`], the streaming per-connection analyser that the live daemon and capture replay
//! both feed.
//!
//! What names the target, outermost first: a PROXY-protocol header is skipped; then a CONNECT request,
//! an absolute-form proxy request, a SOCKS4/4a/5 request, a TLS ClientHello's SNI, or a plain HTTP Host
//! header. Inside a CONNECT or SOCKS tunnel the client's next bytes are read again for a ClientHello
//! or an HTTP request, which may name a different host than the proxy request did (domain fronting).
//!
//! Over UDP, [`QuicInspector`] reads the ClientHello out of a QUIC client's Initial packets.

mod host;
pub mod http;
mod inspector;
pub mod proxy_protocol;
pub mod quic;
pub mod socks;
pub mod tls;

use serde::Serialize;
use serde_json::{Map, Value};

pub use host::{inet_aton, is_ip_literal, normalize_host, request_host, split_authority};
pub use inspector::{FlowInspector, INSPECTION_BUDGET};
pub use quic::QuicInspector;

/// The outcome of trying to parse one message from the start of a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step<T> {
    /// The message, and how many bytes it took.
    Done(T, usize),
    /// Not all there yet: try again once the buffer holds at least this many bytes.
    NeedMore(usize),
    /// The bytes are this protocol, but broken in the way said.
    Malformed(&'static str),
}

impl<T> Step<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Step<U> {
        match self {
            Step::Done(value, n) => Step::Done(f(value), n),
            Step::NeedMore(n) => Step::NeedMore(n),
            Step::Malformed(why) => Step::Malformed(why),
        }
    }
}

/// How the target was named.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum TargetSource {
    Connect,
    AbsoluteForm,
    HttpHost,
    TlsSni,
    Socks5,
    Socks4a,
    /// SOCKS4 names only an IPv4 address.
    Socks4,
    /// The SNI of the ClientHello in a QUIC client's Initial packets.
    QuicSni,
}

/// The protocol the client's first bytes speak (after any PROXY-protocol header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum WireProtocol {
    Http,
    Tls,
    /// An SSL 2.0-format ClientHello: no extensions, so never a name.
    Sslv2,
    Socks4,
    Socks5,
    /// QUIC (over UDP), of a version whose Initial packets we read.
    Quic,
}

/// Everything the first bytes of one connection say about its destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inspection {
    /// What named `host` (the outer layer: the first request on the connection).
    pub source: Option<TargetSource>,
    /// Normalised (see [`normalize_host`]); an IP literal for SOCKS requests by address.
    pub host: Option<String>,
    /// The port the request carries: CONNECT authority, URI (or its scheme's default), an explicit
    /// Host-header port, or the SOCKS port. `None` for TLS, which carries no port.
    pub port: Option<u16>,
    /// The absolute-form URL, or `http://host/path` for plain HTTP. Credentials in the URI are dropped.
    pub url: Option<String>,
    /// The CONNECT authority's host.
    pub connect_host: Option<String>,
    /// The Host header of the first request that is not a CONNECT: the outer plain or absolute-form
    /// request, or the plain HTTP request inside a CONNECT/SOCKS tunnel. A CONNECT's own Host header
    /// repeats its authority and is not reported.
    pub http_host: Option<String>,
    /// The name in a SOCKS4a or SOCKS5 domain request (`None` for requests by address).
    pub socks_host: Option<String>,
    /// The outer ClientHello's SNI, or the one inside a CONNECT/SOCKS tunnel.
    pub sni: Option<String>,
    /// `sni` came from inside a CONNECT/SOCKS tunnel.
    pub tunneled_sni: bool,
    /// The client's bytes inside a CONNECT/SOCKS tunnel were read (a ClientHello or HTTP request head).
    pub tunneled: bool,
    /// The ClientHello offers Encrypted Client Hello (an outer-type `encrypted_client_hello`,
    /// 0xfe0d) or the draft ESNI extension (0xffce). Chrome's GREASE ECH cannot be told from real ECH
    /// on the wire, so this is set for it too; `sni` is always the outer (cleartext) name, which for
    /// real ECH is the provider's public name.
    pub ech: bool,
    /// The CONNECT/SOCKS name and the name inside the tunnel (SNI, or Host of a plain request) differ.
    /// Never set when the outer request named only an IP address.
    pub fronting: bool,
    /// The proxy's reply, when server bytes were given: the HTTP status of the reply to CONNECT (the
    /// last one read, up to the first 2xx), the SOCKS5 REP code (255 when the server accepted none of
    /// the offered methods) or the SOCKS4 CD code (90 = granted).
    pub proxy_status: Option<u16>,
    /// Why bytes that looked like a known protocol could not be (fully) parsed. Names found before the
    /// damage are kept.
    pub malformed: Option<&'static str>,
    /// The protocol of the client's first bytes; `None` while undecided or when none we know.
    pub protocol: Option<WireProtocol>,
}

impl Inspection {
    /// The name for the event's RemoteUrl: the URL of an absolute-form request; else the outer host if
    /// it is a name; else a name from inside the tunnel (a SOCKS request by address followed by a
    /// ClientHello); else the outer host (an address).
    pub fn remote_url(&self) -> Option<&str> {
        if self.source == Some(TargetSource::AbsoluteForm) {
            return self.url.as_deref();
        }
        let outer_name = self.host.as_deref().filter(|h| !is_ip_literal(h));
        let inner_name = if self.tunneled { self.sni.as_deref().or(self.http_host.as_deref()) } else { None };
        outer_name.or(inner_name).or(self.host.as_deref())
    }

    /// Every distinct name (or address) the connection carried: outer host, CONNECT and SOCKS names, SNI
    /// and Host. Indicators must be checked against all of them, since with fronting they differ.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        let all = [&self.host, &self.connect_host, &self.socks_host, &self.sni, &self.http_host];
        for name in all.into_iter().flatten() {
            if !names.contains(&name.as_str()) {
                names.push(name);
            }
        }
        names
    }

    /// The event's AdditionalFields that describe how the target was found. Keys without a value are
    /// left out; the flags are always there.
    pub fn additional_fields(&self) -> Map<String, Value> {
        let Inspection {
            source,
            host,
            port,
            url,
            connect_host,
            http_host,
            socks_host,
            sni,
            tunneled_sni: _,
            tunneled,
            ech,
            fronting,
            proxy_status,
            malformed,
            protocol,
        } = self;
        let mut fields = Map::new();
        let mut put = |key: &str, value: Option<Value>| {
            if let Some(value) = value {
                fields.insert(key.to_string(), value);
            }
        };
        let text = |s: &Option<String>| s.as_ref().map(|s| Value::from(s.as_str()));
        put("TargetSource", source.and_then(|s| serde_json::to_value(s).ok()));
        put("TargetHost", text(host));
        put("TargetPort", port.map(Value::from));
        put("Url", text(url));
        put("Protocol", protocol.and_then(|p| serde_json::to_value(p).ok()));
        put("ConnectHost", text(connect_host));
        put("SocksHost", text(socks_host));
        put("Sni", text(sni));
        put("HttpHost", text(http_host));
        put("Tunneled", Some(Value::from(*tunneled)));
        put("Ech", Some(Value::from(*ech)));
        put("DomainFronting", Some(Value::from(*fronting)));
        put("ProxyStatus", proxy_status.map(Value::from));
        put("Malformed", malformed.map(Value::from));
        fields
    }
}

#[cfg(test)]
pub(crate) mod tests {
    /// Hex (whitespace ignored) to bytes, for fixtures.
    pub(crate) fn unhex(text: &str) -> Vec<u8> {
        let digits: Vec<u8> = text.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
        digits
            .chunks(2)
            .map(|pair| {
                let pair = std::str::from_utf8(pair).expect("hex digits are ASCII");
                u8::from_str_radix(pair, 16).expect("fixture is valid hex")
            })
            .collect()
    }
}
