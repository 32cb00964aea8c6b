//! [`FlowInspector`]: the per-connection state machine over the client's (and optionally the
//! server's) bytes.

use super::host::names_differ;
use super::http::{self, RequestHead, RequestTarget};
use super::socks::{self, Socks5ClientMessage, SocksRequest, SocksServerMessage, SocksTarget};
use super::tls::{self, ClientHello, ClientHelloReader};
use super::{Inspection, Step, TargetSource, WireProtocol, proxy_protocol};

/// Client bytes looked at per connection. Every message that names a target fits (a ClientHello with
/// a post-quantum key share is about 2 KB, a padded one 12 KB); past this the answer is final.
pub const INSPECTION_BUDGET: usize = 64 * 1024;
/// Server bytes kept while waiting to read a proxy's reply. Replies are small; a 407 page is the
/// biggest thing expected here.
const SERVER_BUDGET: usize = 16 * 1024;

/// Which layer the next client bytes belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// The connection's first request.
    Outer,
    /// Inside a CONNECT or SOCKS tunnel.
    Tunnel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Deciding which protocol the next bytes speak.
    Sniff(Layer),
    ProxyHeader,
    Http(Layer),
    Tls(Layer),
    Socks5Greeting,
    /// After the greeting: sub-negotiation, the request, or the greeting again.
    Socks5Request,
    Socks4,
    /// Nothing more to learn from the client.
    Done,
}

/// What the server's bytes are read as; set once the client's protocol says what to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerStage {
    /// The client's protocol is not known yet: keep the bytes.
    Waiting,
    /// Replies to CONNECT; `skip` body bytes of a non-2xx reply come first.
    HttpReplies {
        skip: usize,
    },
    Socks5 {
        method: Option<u8>,
        auth_done: bool,
    },
    Socks4,
    /// Nothing (more) to read.
    Done,
}

/// Streaming, per-connection analyser. Bytes are fed in order, in pieces of any size (down to 1 byte).
///
/// The client side alone is enough: the tunnel is taken to start right after the client's CONNECT or
/// SOCKS request, since a client sends nothing else before the proxy's reply. Server bytes, when
/// given, only add the proxy's status.
#[derive(Debug, Clone)]
pub struct FlowInspector {
    inspection: Inspection,
    stage: Stage,
    /// Client bytes not yet consumed by a finished message.
    pending: Vec<u8>,
    /// Client bytes accepted so far, against [`INSPECTION_BUDGET`].
    client_total: usize,
    /// The current parser said it needs this many pending bytes; don't run it before.
    need: usize,
    /// For HTTP heads: pending bytes already searched for a line end. A head is parsed when its first
    /// line is there (to reject garbage early) and when a blank line arrives, not on every byte.
    scanned: usize,
    request_line_checked: bool,
    hello: ClientHelloReader,
    server: Vec<u8>,
    server_stage: ServerStage,
}

impl Default for FlowInspector {
    fn default() -> Self {
        Self::new()
    }
}

impl FlowInspector {
    pub fn new() -> Self {
        FlowInspector {
            inspection: Inspection::default(),
            stage: Stage::Sniff(Layer::Outer),
            pending: Vec::new(),
            client_total: 0,
            need: 1,
            scanned: 0,
            request_line_checked: false,
            hello: ClientHelloReader::default(),
            server: Vec::new(),
            server_stage: ServerStage::Waiting,
        }
    }

    /// Bytes the connecting side sent, in order.
    pub fn client_bytes(&mut self, data: &[u8]) {
        if self.stage == Stage::Done || data.is_empty() {
            return;
        }
        let take = data.len().min(INSPECTION_BUDGET - self.client_total);
        self.pending.extend_from_slice(&data[..take]);
        self.client_total += take;
        self.advance();
        if self.client_total >= INSPECTION_BUDGET && self.stage != Stage::Done {
            let mid_message = !matches!(self.stage, Stage::Sniff(_)) || !self.pending.is_empty();
            if mid_message && self.inspection.malformed.is_none() {
                self.inspection.malformed = Some("message larger than the 64 KiB inspection budget");
            }
            self.set_stage(Stage::Done);
        }
    }

    /// Bytes the other side sent, in order. Optional: the live path may never call it.
    pub fn server_bytes(&mut self, data: &[u8]) {
        if self.server_stage == ServerStage::Done {
            return;
        }
        let take = data.len().min(SERVER_BUDGET - self.server.len());
        self.server.extend_from_slice(&data[..take]);
        self.read_server();
    }

    /// The client's stream ended (or the caller stops waiting for it): what a cut-short message still
    /// carries is read, with `malformed` saying it was cut short. The answer is final afterwards.
    pub fn finish(&mut self) {
        let cut_short = match self.stage {
            Stage::Tls(layer) => {
                match tls::salvage_client_hello(&self.pending) {
                    Some(hello) => self.apply_client_hello(layer, hello),
                    None if layer == Layer::Tunnel => self.inspection.tunneled = true,
                    None => {}
                }
                Some("ClientHello is cut short")
            }
            Stage::Http(layer) => {
                if layer == Layer::Tunnel {
                    self.inspection.tunneled = true;
                }
                // Only the first line and a blank line trigger a parse, so a bad header line that
                // came in a later piece was never looked at: say what a parse of the whole says.
                match http::parse_request_head(&self.pending) {
                    Step::Malformed(why) => Some(why),
                    Step::Done(..) | Step::NeedMore(_) => Some("HTTP request head is cut short"),
                }
            }
            Stage::ProxyHeader => Some("PROXY protocol header is cut short"),
            Stage::Socks5Greeting | Stage::Socks4 => Some("SOCKS request is cut short"),
            Stage::Socks5Request if !self.pending.is_empty() => Some("SOCKS request is cut short"),
            Stage::Socks5Request | Stage::Sniff(_) | Stage::Done => None,
        };
        if self.inspection.malformed.is_none() {
            self.inspection.malformed = cut_short;
        }
        self.set_stage(Stage::Done);
    }

    pub fn inspection(&self) -> &Inspection {
        &self.inspection
    }

    /// True once more client bytes cannot change the answer: a ClientHello was parsed (outer, or the
    /// tunnel's first), a plain or absolute-form HTTP head was parsed, the bytes are no protocol we
    /// know, the bytes are broken, or the 64 KiB budget is spent.
    pub fn is_complete(&self) -> bool {
        self.stage == Stage::Done
    }

    /// True while the answer could still improve: no message finished yet, or a CONNECT/SOCKS request
    /// was read and the tunnel's first bytes are awaited. Always the opposite of [`Self::is_complete`];
    /// both exist so that call sites read as what they ask.
    pub fn wants_more(&self) -> bool {
        !self.is_complete()
    }

    fn set_stage(&mut self, stage: Stage) {
        self.stage = stage;
        self.need = 1;
        self.scanned = 0;
        self.request_line_checked = false;
        self.hello = ClientHelloReader::default();
        if stage == Stage::Done {
            // The bytes are of no further use; free them now, connections can live long.
            self.pending = Vec::new();
            if self.server_stage == ServerStage::Waiting {
                // No CONNECT or SOCKS request was read, so no proxy reply is coming.
                self.server_stage = ServerStage::Done;
            }
        }
        self.read_server();
    }

    /// Drops a finished message's bytes and moves on.
    fn consume(&mut self, n: usize, next: Stage) {
        self.pending.drain(..n.min(self.pending.len()));
        self.set_stage(next);
    }

    fn malformed(&mut self, why: &'static str) {
        if self.inspection.malformed.is_none() {
            self.inspection.malformed = Some(why);
        }
        self.set_stage(Stage::Done);
    }

    /// Runs parsers over the pending bytes until one needs more or the answer is final.
    fn advance(&mut self) {
        while self.stage != Stage::Done && self.pending.len() >= self.need {
            let progressed = match self.stage {
                Stage::Sniff(layer) => self.sniff(layer),
                Stage::ProxyHeader => self.step_proxy_header(),
                Stage::Http(layer) => self.step_http(layer),
                Stage::Tls(layer) => self.step_tls(layer),
                Stage::Socks5Greeting => self.step_socks5_greeting(),
                Stage::Socks5Request => self.step_socks5_request(),
                Stage::Socks4 => self.step_socks4(),
                Stage::Done => false,
            };
            if !progressed {
                break;
            }
        }
    }

    /// Waits for `need` bytes; returns false (no progress) for `advance`.
    fn wait_for(&mut self, need: usize) -> bool {
        self.need = need.max(self.pending.len() + 1);
        false
    }

    fn sniff(&mut self, layer: Layer) -> bool {
        let outer = layer == Layer::Outer;
        if !outer {
            // Line ends right after a CONNECT head belong to the sloppy client's request (a proxy skips
            // them); if they went through, the origin would reject them. Either way the tunnel's real
            // first message follows, and must not hide behind them.
            let line_ends = self.pending.iter().take_while(|&&b| b == b'\r' || b == b'\n').count();
            self.pending.drain(..line_ends);
        }
        let buf = &self.pending;
        // Each check answers Some(true) (it is this), Some(false) (it is not) or None (too few bytes).
        let candidates: [(Option<bool>, Stage, Option<WireProtocol>); 6] = [
            (
                if outer { proxy_protocol::looks_like_proxy_header(buf) } else { Some(false) },
                Stage::ProxyHeader,
                None,
            ),
            (tls::looks_like_handshake_record(buf), Stage::Tls(layer), Some(WireProtocol::Tls)),
            (tls::looks_like_sslv2_client_hello(buf), Stage::Done, Some(WireProtocol::Sslv2)),
            (
                if outer { socks::looks_like_socks5_greeting(buf) } else { Some(false) },
                Stage::Socks5Greeting,
                Some(WireProtocol::Socks5),
            ),
            (
                if outer { socks::looks_like_socks4_request(buf) } else { Some(false) },
                Stage::Socks4,
                Some(WireProtocol::Socks4),
            ),
            (http::looks_like_request(buf), Stage::Http(layer), Some(WireProtocol::Http)),
        ];
        if let Some(&(_, stage, protocol)) = candidates.iter().find(|(verdict, _, _)| *verdict == Some(true))
        {
            if outer {
                if protocol.is_some() {
                    self.inspection.protocol = protocol;
                }
                if let Some(server_stage) = server_stage_for(stage) {
                    self.server_stage = server_stage;
                }
            } else if stage == Stage::Done {
                // An SSLv2 hello inside a tunnel: read, and names nothing.
                self.inspection.tunneled = true;
            }
            self.set_stage(stage);
            return true;
        }
        if candidates.iter().all(|(verdict, _, _)| *verdict == Some(false)) {
            self.set_stage(Stage::Done);
            return true;
        }
        self.wait_for(self.pending.len() + 1)
    }

    fn step_proxy_header(&mut self) -> bool {
        match proxy_protocol::parse_proxy_header(&self.pending) {
            Step::Done((), n) => self.consume(n, Stage::Sniff(Layer::Outer)),
            Step::NeedMore(n) => return self.wait_for(n),
            Step::Malformed(why) => self.malformed(why),
        }
        true
    }

    fn step_http(&mut self, layer: Layer) -> bool {
        // Two bytes of overlap catch a blank line split across pieces.
        let fresh = &self.pending[self.scanned.saturating_sub(2).min(self.pending.len())..];
        let line_end = fresh.contains(&b'\n');
        let head_end = fresh.windows(2).any(|w| w == b"\n\n") || fresh.windows(3).any(|w| w == b"\n\r\n");
        if !(head_end || line_end && !self.request_line_checked) {
            self.scanned = self.pending.len();
            return self.wait_for(self.pending.len() + 1);
        }
        self.request_line_checked |= line_end;
        match http::parse_request_head(&self.pending) {
            Step::Done(head, n) => {
                let next = self.apply_request(layer, head);
                self.consume(n, next);
            }
            Step::NeedMore(_) => {
                self.scanned = self.pending.len();
                return self.wait_for(self.pending.len() + 1);
            }
            Step::Malformed(why) => {
                if layer == Layer::Tunnel {
                    self.inspection.tunneled = true;
                }
                self.malformed(why);
            }
        }
        true
    }

    /// Records what a request head names; returns the stage after it.
    fn apply_request(&mut self, layer: Layer, head: RequestHead) -> Stage {
        let connect = head.is_connect();
        let RequestHead { method: _, target, host_header, quirk } = head;
        if let Some(quirk) = quirk {
            self.inspection.malformed.get_or_insert(quirk);
        }
        let found = &mut self.inspection;
        if connect {
            if layer == Layer::Outer
                && let RequestTarget::Authority { host, port } = target
            {
                found.source = Some(TargetSource::Connect);
                found.host = Some(host.clone());
                found.port = port;
                found.connect_host = Some(host);
                self.server_stage = ServerStage::HttpReplies { skip: 0 };
            }
            // Inside a tunnel, a CONNECT is the client asking again (after a 407, with credentials) or
            // a chained proxy; the first request keeps naming the target.
            return Stage::Sniff(Layer::Tunnel);
        }
        // A CONNECT's own Host header only repeats its authority; other requests are named by it.
        let host_header = match host_header {
            Some(Ok(header)) => Some(header),
            Some(Err(())) => {
                self.inspection.malformed.get_or_insert("Host header is not a host name");
                None
            }
            None => None,
        };
        let found = &mut self.inspection;
        let header_host = host_header.as_ref().map(|h| h.host.clone());
        match layer {
            Layer::Outer => {
                self.server_stage = ServerStage::Done;
                found.http_host = header_host;
                match target {
                    RequestTarget::Absolute { host, port, url } => {
                        found.source = Some(TargetSource::AbsoluteForm);
                        found.host = Some(host);
                        found.port = port;
                        found.url = Some(url);
                    }
                    RequestTarget::Origin { path } => {
                        if let Some(header) = host_header {
                            let host_in_url = if header.host.contains(':') {
                                format!("[{}]", header.host)
                            } else {
                                header.host.clone()
                            };
                            let port_in_url = header.port.map(|p| format!(":{p}")).unwrap_or_default();
                            let path = if path.starts_with('/') { path } else { String::from("/") };
                            found.source = Some(TargetSource::HttpHost);
                            found.url = Some(format!("http://{host_in_url}{port_in_url}{path}"));
                            found.host = Some(header.host);
                            found.port = header.port;
                        }
                    }
                    // A CONNECT-shaped target on another method names nothing we trust.
                    RequestTarget::Authority { .. } => {}
                }
            }
            Layer::Tunnel => {
                found.tunneled = true;
                found.http_host = match target {
                    RequestTarget::Absolute { host, .. } => Some(host),
                    _ => header_host,
                };
                self.check_fronting();
            }
        }
        Stage::Done
    }

    fn step_tls(&mut self, layer: Layer) -> bool {
        match self.hello.read(&self.pending) {
            Step::Done(hello, n) => {
                self.apply_client_hello(layer, hello);
                self.consume(n, Stage::Done);
            }
            Step::NeedMore(n) => return self.wait_for(n),
            Step::Malformed(why) => {
                if layer == Layer::Tunnel {
                    self.inspection.tunneled = true;
                }
                self.malformed(why);
            }
        }
        true
    }

    fn apply_client_hello(&mut self, layer: Layer, hello: ClientHello) {
        let ClientHello { sni, ech, esni, malformed } = hello;
        let found = &mut self.inspection;
        found.ech |= ech || esni;
        if let Some(why) = malformed {
            found.malformed.get_or_insert(why);
        }
        match layer {
            Layer::Outer => {
                if let Some(name) = &sni {
                    found.source = Some(TargetSource::TlsSni);
                    found.host = Some(name.clone());
                }
                found.sni = sni;
            }
            Layer::Tunnel => {
                found.tunneled = true;
                found.tunneled_sni = sni.is_some();
                found.sni = sni;
                self.check_fronting();
            }
        }
    }

    fn check_fronting(&mut self) {
        let found = &mut self.inspection;
        let outer = found.connect_host.as_deref().or(found.socks_host.as_deref());
        let inner = found.sni.as_deref().or(found.http_host.as_deref());
        if let (Some(outer), Some(inner)) = (outer, inner) {
            found.fronting = names_differ(outer, inner);
        }
    }

    fn step_socks5_greeting(&mut self) -> bool {
        match socks::parse_socks5_greeting(&self.pending) {
            Step::Done(_, n) => self.consume(n, Stage::Socks5Request),
            Step::NeedMore(n) => return self.wait_for(n),
            Step::Malformed(why) => self.malformed(why),
        }
        true
    }

    fn step_socks5_request(&mut self) -> bool {
        match socks::parse_socks5_client_message(&self.pending) {
            Step::Done(Socks5ClientMessage::Request(request), n) => {
                let next = self.apply_socks_request(request);
                self.consume(n, next);
            }
            Step::Done(Socks5ClientMessage::Greeting { .. } | Socks5ClientMessage::UserPass, n) => {
                self.consume(n, Stage::Socks5Request);
            }
            Step::NeedMore(n) => return self.wait_for(n),
            Step::Malformed(why) => self.malformed(why),
        }
        true
    }

    fn step_socks4(&mut self) -> bool {
        match socks::parse_socks4_request(&self.pending) {
            Step::Done(request, n) => {
                let next = self.apply_socks_request(request);
                self.consume(n, next);
            }
            Step::NeedMore(n) => return self.wait_for(n),
            Step::Malformed(why) => self.malformed(why),
        }
        true
    }

    fn apply_socks_request(&mut self, request: SocksRequest) -> Stage {
        if !request.is_connect() {
            // BIND and UDP ASSOCIATE carry an address the client expects or offers, not a destination
            // it reaches through this connection.
            return Stage::Done;
        }
        let SocksRequest { version, command: _, target, port } = request;
        let found = &mut self.inspection;
        found.port = Some(port);
        match target {
            SocksTarget::Ip(ip) => {
                found.source = Some(if version == socks::SOCKS5_VERSION {
                    TargetSource::Socks5
                } else {
                    TargetSource::Socks4
                });
                found.host = Some(ip.to_string());
            }
            SocksTarget::Name(Ok(name)) => {
                found.source = Some(if version == socks::SOCKS5_VERSION {
                    TargetSource::Socks5
                } else {
                    TargetSource::Socks4a
                });
                found.host = Some(name.clone());
                found.socks_host = Some(name);
            }
            SocksTarget::Name(Err(())) => {
                found.malformed.get_or_insert("SOCKS domain is not a host name");
            }
        }
        Stage::Sniff(Layer::Tunnel)
    }

    /// Reads the proxy's replies from the server bytes, as far as they go.
    fn read_server(&mut self) {
        loop {
            let step = match self.server_stage {
                ServerStage::Waiting => return,
                ServerStage::Done => {
                    self.server = Vec::new();
                    return;
                }
                ServerStage::HttpReplies { skip } if skip > 0 => {
                    let n = skip.min(self.server.len());
                    self.server.drain(..n);
                    self.server_stage = ServerStage::HttpReplies { skip: skip - n };
                    if n == 0 {
                        return;
                    }
                    continue;
                }
                ServerStage::HttpReplies { .. } => http::parse_response_head(&self.server).map(|reply| {
                    self.inspection.proxy_status = Some(reply.status);
                    match (reply.status, reply.body_len) {
                        (100..=199, _) => ServerStage::HttpReplies { skip: 0 },
                        (200..=299, _) | (_, None) => ServerStage::Done,
                        (_, Some(body)) => ServerStage::HttpReplies { skip: body },
                    }
                }),
                ServerStage::Socks5 { method, auth_done } => {
                    socks::parse_socks5_server_message(&self.server, method, auth_done).map(|message| {
                        match message {
                            SocksServerMessage::Method(0xff) => {
                                self.inspection.proxy_status = Some(0xff);
                                ServerStage::Done
                            }
                            SocksServerMessage::Method(m) => {
                                ServerStage::Socks5 { method: Some(m), auth_done }
                            }
                            SocksServerMessage::UserPassStatus(0) => {
                                ServerStage::Socks5 { method, auth_done: true }
                            }
                            SocksServerMessage::UserPassStatus(_) => ServerStage::Done,
                            SocksServerMessage::Reply(code) => {
                                self.inspection.proxy_status = Some(u16::from(code));
                                ServerStage::Done
                            }
                        }
                    })
                }
                ServerStage::Socks4 => socks::parse_socks4_reply(&self.server).map(|message| {
                    if let SocksServerMessage::Reply(code) = message {
                        self.inspection.proxy_status = Some(u16::from(code));
                    }
                    ServerStage::Done
                }),
            };
            match step {
                Step::Done(next, n) => {
                    self.server.drain(..n);
                    self.server_stage = next;
                }
                Step::NeedMore(_) if self.server.len() < SERVER_BUDGET => return,
                // Server bytes that are not the expected reply (a reverse proxy, a capture gap) only
                // cost us the status.
                Step::NeedMore(_) | Step::Malformed(_) => self.server_stage = ServerStage::Done,
            }
        }
    }
}

/// What to read the server bytes as once the client's outer protocol is known.
fn server_stage_for(client: Stage) -> Option<ServerStage> {
    match client {
        // HTTP replies only matter after a CONNECT; the request head decides that.
        Stage::ProxyHeader | Stage::Http(_) => None,
        Stage::Socks5Greeting => Some(ServerStage::Socks5 { method: None, auth_done: false }),
        Stage::Socks4 => Some(ServerStage::Socks4),
        _ => Some(ServerStage::Done),
    }
}

#[cfg(test)]
mod tests;
