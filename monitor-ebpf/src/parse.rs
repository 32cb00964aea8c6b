//! The kernel's own reading of first bytes: just enough to name the target for a verdict.
//! User space parses the same bytes again, fully, for the event.
//!
//! The parsers read a per-CPU scratch copy of the message through [`Scratch::at`], whose index is masked
//! into the buffer, so every read is in bounds for the verifier; `len` says how much of it is real.
//! Every loop has a constant bound.

use core::ffi::c_void;

use aya_ebpf::helpers::generated::bpf_loop;
use monitor_common::verdict::{
    SOURCE_ABSOLUTE_FORM, SOURCE_CONNECT, SOURCE_HTTP_HOST, SOURCE_SOCKS_IP, SOURCE_SOCKS4A, SOURCE_SOCKS5,
    SOURCE_TLS_SNI,
};

/// Bytes of a message (or of a reassembled ClientHello) the kernel reads, at most.
pub const WINDOW: u32 = 8192;
/// The scratch buffer is twice the window so that `offset & MASK` plus a copy of up to `WINDOW` bytes
/// stays inside it.
pub const SCRATCH_LEN: usize = 2 * WINDOW as usize;
pub const MASK: u32 = WINDOW - 1;
/// A request head longer than this is not searched for a Host header.
const HEAD_MAX: u32 = 2048;
const AUTHORITY_MAX: u32 = 300;
const TLS_EXTENSIONS_MAX: u32 = 48;
const SOCKS_USERID_MAX: u32 = 256;

#[repr(C)]
pub struct Scratch {
    pub bytes: [u8; SCRATCH_LEN],
    /// What the scan found, written and read back through map memory (see `send::settle`).
    pub scan: Scan,
    pub need: u32,
    pub framed: u32,
    pub unframed: u32,
    pub _pad: u32,
}

impl Scratch {
    #[inline(always)]
    pub fn at(&self, i: u32) -> u8 {
        // The mask keeps the index inside the buffer whatever `i` is.
        unsafe { *self.bytes.get_unchecked((i & MASK) as usize) }
    }

    #[inline(always)]
    fn be16(&self, i: u32) -> u32 {
        ((self.at(i) as u32) << 8) | self.at(i + 1) as u32
    }
}

/// What the first bytes say: a plain struct rather than an enum, so that every field has a value on
/// every path (the verifier rejects a register the optimizer left undefined for a variant without it).
#[derive(Clone, Copy)]
pub struct Scan {
    /// One of the `SCAN_*` kinds.
    pub kind: u32,
    /// `SOURCE_*`: which bytes named the target (names and addresses).
    pub source: u32,
    /// A name's offset; an IPv4 address (network order); the bytes needed.
    pub a: u32,
    /// A name's length.
    pub b: u32,
}

/// The target's name is `b` bytes at `a`.
pub const SCAN_NAME: u32 = 0;
/// The target is an IPv4 address `a` (network order).
pub const SCAN_IPV4: u32 = 1;
/// The decision needs `a` bytes in total; more are on their way (the client has not finished the request
/// it must finish before the peer answers).
pub const SCAN_NEED_BYTES: u32 = 2;
/// A SOCKS5 greeting (or auth sub-negotiation) passed: the request is the next write.
pub const SCAN_GREETING: u32 = 3;
/// A known protocol that names no target (a ClientHello without SNI, HTTP without Host).
pub const SCAN_UNNAMED: u32 = 4;
/// Not a protocol we read; the connection is uninspectable.
pub const SCAN_UNKNOWN: u32 = 5;
/// A ClientHello the kernel cannot read whole (past its window or its record walk): user space judges it.
pub const SCAN_DEFER: u32 = 6;

impl Scan {
    #[inline(always)]
    pub const fn name(source: u32, start: u32, len: u32) -> Scan {
        Scan { kind: SCAN_NAME, source, a: start, b: len }
    }
    #[inline(always)]
    pub const fn ipv4(source: u32, addr: u32) -> Scan {
        Scan { kind: SCAN_IPV4, source, a: addr, b: 0 }
    }
    #[inline(always)]
    pub const fn need(n: u32) -> Scan {
        Scan { kind: SCAN_NEED_BYTES, source: 0, a: n, b: 0 }
    }
    pub const GREETING: Scan = Scan { kind: SCAN_GREETING, source: 0, a: 0, b: 0 };
    pub const UNNAMED: Scan = Scan { kind: SCAN_UNNAMED, source: 0, a: 0, b: 0 };
    pub const UNKNOWN: Scan = Scan { kind: SCAN_UNKNOWN, source: 0, a: 0, b: 0 };
    pub const DEFER: Scan = Scan { kind: SCAN_DEFER, source: 0, a: 0, b: 0 };
}

/// Run `body` up to `n` times through the bpf_loop helper (5.17+): the verifier checks the body once
/// instead of once per iteration, which keeps these scans within its budget. `body` returns 1 to stop.
#[inline(always)]
pub fn bounded_loop<C>(n: u32, body: extern "C" fn(u64, *mut C) -> i64, ctx: &mut C) {
    unsafe { bpf_loop(n, body as *mut c_void, (ctx as *mut C).cast(), 0) };
}

#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b + 32 } else { b }
}

/// HTTP request: CONNECT authority, absolute-form host, or Host header.
#[inline(always)]
pub fn scan_http(buf: &Scratch, len: u32) -> Scan {
    // A known method and a space. Only a prefix of one is worth waiting for: a protocol that merely
    // starts with capitals (and may wait for its peer) is not held.
    let method: &[u8] = match buf.at(0) {
        b'G' => b"GET ",
        b'H' => b"HEAD ",
        b'D' => b"DELETE ",
        b'O' => b"OPTIONS ",
        b'C' => b"CONNECT ",
        b'T' => b"TRACE ",
        b'P' if len < 2 => return Scan::need(2),
        b'P' => match buf.at(1) {
            b'O' => b"POST ",
            b'U' => b"PUT ",
            b'A' => b"PATCH ",
            _ => return Scan::UNKNOWN,
        },
        _ => return Scan::UNKNOWN,
    };
    let mut i = 0u32;
    for &expected in method {
        if i >= len {
            return Scan::need(len + 1);
        }
        if buf.at(i) != expected {
            return Scan::UNKNOWN;
        }
        i += 1;
    }
    // `i` is past the space; the method is `i - 1` bytes.
    let i = i - 1;
    let target = i + 1;
    let is_connect = i == 7
        && buf.at(0) == b'C'
        && buf.at(1) == b'O'
        && buf.at(2) == b'N'
        && buf.at(3) == b'N'
        && buf.at(4) == b'E'
        && buf.at(5) == b'C'
        && buf.at(6) == b'T';
    if is_connect {
        return authority(buf, len, target, SOURCE_CONNECT);
    }
    // Absolute form: http:// or https://, any case.
    if len < target + 8 {
        return Scan::need(target + 8);
    }
    if lower(buf.at(target)) == b'h'
        && lower(buf.at(target + 1)) == b't'
        && lower(buf.at(target + 2)) == b't'
        && lower(buf.at(target + 3)) == b'p'
    {
        let mut p = target + 4;
        if lower(buf.at(p)) == b's' {
            p += 1;
        }
        if buf.at(p) == b':' && buf.at(p + 1) == b'/' && buf.at(p + 2) == b'/' {
            return authority(buf, len, p + 3, SOURCE_ABSOLUTE_FORM);
        }
    }
    host_header(buf, len, target)
}

/// A host at `start`: `name[:port]`, `[v6]:port`, or a dotted IPv4 address, ended by `/`, `?`, ` ` or `:`.
#[inline(always)]
fn authority(buf: &Scratch, len: u32, start: u32, source: u32) -> Scan {
    // black_box: LLVM would drop `at`'s mask here (`start < len` bounds it), and verifiers before 6.x
    // learn no bound from a comparison of two registers (6.1 rejects the unmasked access).
    if start < len && buf.at(core::hint::black_box(start)) == b'[' {
        // An IPv6 literal: user space names it; the kernel judges it by the connect-time address only.
        return Scan::UNNAMED;
    }
    let mut scan = Cursor { buf, len, pos: start, found: 0 };
    bounded_loop(AUTHORITY_MAX, authority_end, &mut scan);
    if scan.found == 0 {
        return if scan.pos >= len { Scan::need(len + 1) } else { Scan::UNNAMED };
    }
    let p = scan.pos;
    if p < start {
        return Scan::UNNAMED;
    }
    let n = p - start;
    if n == 0 || n >= AUTHORITY_MAX {
        return Scan::UNNAMED;
    }
    match ipv4_literal(buf, start, n) {
        Some(addr) => Scan::ipv4(source, addr),
        None => Scan::name(source, start, n),
    }
}

/// A position moving through the scratch buffer, for loop bodies.
struct Cursor<'a> {
    buf: &'a Scratch,
    len: u32,
    pos: u32,
    found: u32,
}

extern "C" fn authority_end(_: u64, c: *mut Cursor<'_>) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.len {
        return 1;
    }
    let b = c.buf.at(c.pos);
    if b == b':' || b == b'/' || b == b' ' || b == b'?' || b == b'#' || b == b'\r' || b == b'\n' {
        c.found = 1;
        return 1;
    }
    c.pos += 1;
    0
}

/// Finds `\nhost:` (any case); stops with found = 2 at the end of the head.
extern "C" fn host_line(_: u64, c: *mut Cursor<'_>) -> i64 {
    let c = unsafe { &mut *c };
    let p = c.pos;
    if p + 6 > c.len {
        return 1;
    }
    let buf = c.buf;
    if buf.at(p) == b'\n' {
        if buf.at(p + 1) == b'\r' || buf.at(p + 1) == b'\n' {
            c.found = 2;
            return 1;
        }
        if line_is(buf, p, b"host:") {
            c.found = 1;
            return 1;
        }
    }
    c.pos = p + 1;
    0
}

/// Stops at the next NUL byte (found = 1).
extern "C" fn nul_byte(_: u64, c: *mut Cursor<'_>) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.len {
        return 1;
    }
    if c.buf.at(c.pos) == 0 {
        c.found = 1;
        return 1;
    }
    c.pos += 1;
    0
}

/// Dotted-quad IPv4 in network order, if `len` bytes at `start` are exactly that.
#[inline(always)]
fn ipv4_literal(buf: &Scratch, start: u32, len: u32) -> Option<u32> {
    if len > 15 {
        return None;
    }
    let mut octets = [0u32; 4];
    let mut part = 0usize;
    let mut digits = 0u32;
    let mut i = 0u32;
    for _ in 0..15u32 {
        if i >= len {
            break;
        }
        let c = buf.at(start + i);
        if c == b'.' {
            if digits == 0 || part >= 3 {
                return None;
            }
            part += 1;
            digits = 0;
        } else if c.is_ascii_digit() {
            let v = octets[part & 3] * 10 + (c - b'0') as u32;
            if v > 255 || digits >= 3 {
                return None;
            }
            octets[part & 3] = v;
            digits += 1;
        } else {
            return None;
        }
        i += 1;
    }
    if part != 3 || digits == 0 {
        return None;
    }
    Some(u32::from_ne_bytes([octets[0] as u8, octets[1] as u8, octets[2] as u8, octets[3] as u8]))
}

/// The Host header of a request head, searched from `from`.
#[inline(always)]
fn host_header(buf: &Scratch, len: u32, from: u32) -> Scan {
    let mut scan = Cursor { buf, len, pos: from, found: 0 };
    bounded_loop(HEAD_MAX, host_line, &mut scan);
    match scan.found {
        1 => {
            let mut v = scan.pos + 6;
            if buf.at(v) == b' ' || buf.at(v) == b'\t' {
                v += 1;
            }
            if buf.at(v) == b' ' || buf.at(v) == b'\t' {
                v += 1;
            }
            authority(buf, len, v, SOURCE_HTTP_HOST)
        }
        // End of the head without a Host header.
        2 => Scan::UNNAMED,
        _ if len < HEAD_MAX => Scan::need(len + 1),
        _ => Scan::UNNAMED,
    }
}

/// Where an HTTP request ends, so the next one on the connection can be judged too.
pub enum Framing {
    /// The request (head and body) is this many bytes.
    Length(u32),
    /// The head is not complete yet: this many bytes are needed in total (at least).
    NeedBytes(u32),
    /// It cannot be framed here: a Transfer-Encoding, conflicting or unreadable Content-Length values,
    /// or a head longer than the window.
    Unknown,
}

/// `\n` and then `name` (lowercase, ending in `:`), any case, at `at`.
#[inline(always)]
fn line_is<const N: usize>(buf: &Scratch, at: u32, name: &[u8; N]) -> bool {
    if buf.at(at) != b'\n' {
        return false;
    }
    let mut i = 1u32;
    for &expected in name {
        if lower(buf.at(at + i)) != expected {
            return false;
        }
        i += 1;
    }
    true
}

const CONTENT_LENGTH: &[u8; 15] = b"content-length:";
const TRANSFER_ENCODING: &[u8; 18] = b"transfer-encoding:";

/// One pass over a request head: where it ends, where its Content-Length line is, and whether it has
/// something that stops framing (a Transfer-Encoding, a second Content-Length).
struct HeadScan<'a> {
    buf: &'a Scratch,
    len: u32,
    pos: u32,
    /// The head's length, once its blank line is found.
    end: u32,
    /// The `\n` before the Content-Length line; `lengths` says whether there is one.
    length_at: u32,
    lengths: u32,
    unframed: u32,
}

extern "C" fn head_line(_: u64, c: *mut HeadScan<'_>) -> i64 {
    let c = unsafe { &mut *c };
    let p = c.pos;
    if p + 2 > c.len {
        return 1;
    }
    let buf = c.buf;
    if buf.at(p) == b'\n' {
        let next = buf.at(p + 1);
        if next == b'\n' {
            c.end = p + 2;
            return 1;
        }
        if next == b'\r' && p + 3 <= c.len && buf.at(p + 2) == b'\n' {
            c.end = p + 3;
            return 1;
        }
        if p + 1 + TRANSFER_ENCODING.len() as u32 <= c.len && line_is(buf, p, TRANSFER_ENCODING) {
            // Chunked (or any coding): the body's end is not a count the kernel can follow.
            c.unframed = 1;
            return 1;
        }
        if p + 1 + CONTENT_LENGTH.len() as u32 <= c.len && line_is(buf, p, CONTENT_LENGTH) {
            if c.lengths != 0 {
                // A second Content-Length is how requests are smuggled past a reader that takes the other.
                c.unframed = 1;
                return 1;
            }
            c.lengths = 1;
            c.length_at = p;
        }
    }
    c.pos = p + 1;
    0
}

/// The digits of a Content-Length value at `at` (after at most 4 blanks), ended by CR, LF or a blank.
#[inline(always)]
fn length_value(buf: &Scratch, at: u32) -> Option<u32> {
    let mut p = at;
    for _ in 0..4 {
        let b = buf.at(p);
        if b == b' ' || b == b'\t' {
            p += 1;
        }
    }
    let mut value = 0u64;
    let mut digits = 0u32;
    let mut ended = false;
    for _ in 0..10 {
        let b = buf.at(p + digits);
        if !b.is_ascii_digit() {
            ended = b == b'\r' || b == b'\n' || b == b' ' || b == b'\t';
            break;
        }
        value = value * 10 + (b - b'0') as u64;
        digits += 1;
    }
    if digits == 0 || !ended || value >= u32::MAX as u64 {
        return None;
    }
    Some(value as u32)
}

/// The length of the HTTP request whose head starts `buf`: its head plus its Content-Length.
#[inline(always)]
pub fn head_framing(buf: &Scratch, len: u32) -> Framing {
    let mut scan = HeadScan { buf, len, pos: 0, end: 0, length_at: 0, lengths: 0, unframed: 0 };
    bounded_loop(WINDOW, head_line, &mut scan);
    if scan.unframed != 0 {
        return Framing::Unknown;
    }
    if scan.end == 0 {
        return if len < WINDOW { Framing::NeedBytes(len + 1) } else { Framing::Unknown };
    }
    if scan.lengths == 0 {
        return Framing::Length(scan.end);
    }
    match length_value(buf, scan.length_at + 1 + CONTENT_LENGTH.len() as u32) {
        Some(body) => match scan.end.checked_add(body) {
            Some(total) => Framing::Length(total),
            None => Framing::Unknown,
        },
        None => Framing::Unknown,
    }
}

/// A TLS handshake message already stripped of its record headers (see `send::copy_handshake`):
/// the SNI of a ClientHello.
#[inline(always)]
pub fn scan_client_hello(buf: &Scratch, len: u32) -> Scan {
    if len < 4 || buf.at(0) != 1 {
        return Scan::UNKNOWN;
    }
    // type(1) length(3) version(2) random(32) session_id
    let mut p = 38u32;
    p += 1 + buf.at(p) as u32;
    p += 2 + buf.be16(p);
    p += 1 + buf.at(p) as u32;
    let ext_end = p + 2 + buf.be16(p);
    p += 2;
    let end = if ext_end < len { ext_end } else { len };
    let mut scan = Cursor { buf, len: end, pos: p, found: 0 };
    bounded_loop(TLS_EXTENSIONS_MAX, server_name_extension, &mut scan);
    if scan.found == 0 {
        return Scan::UNNAMED;
    }
    let p = scan.pos;
    // server_name_list length(2), name_type(1) = host_name, name length(2), name
    if buf.at(p + 6) != 0 {
        return Scan::UNNAMED;
    }
    let n = buf.be16(p + 7);
    let start = p + 9;
    if n == 0 || start + n > end {
        return Scan::UNNAMED;
    }
    Scan::name(SOURCE_TLS_SNI, start, n)
}

/// Walks the extensions; stops at server_name (type 0) with found = 1.
extern "C" fn server_name_extension(_: u64, c: *mut Cursor<'_>) -> i64 {
    let c = unsafe { &mut *c };
    let p = c.pos;
    if p + 4 > c.len {
        return 1;
    }
    if c.buf.be16(p) == 0 {
        c.found = 1;
        return 1;
    }
    c.pos = p + 4 + c.buf.be16(p + 2);
    0
}

/// SOCKS4/4a (`04 01 port ip userid\0 [domain\0]`) and SOCKS5 greetings and requests.
#[inline(always)]
pub fn scan_socks(buf: &Scratch, len: u32, after_greeting: bool) -> Scan {
    if len < 2 {
        return Scan::need(2);
    }
    let version = buf.at(0);
    if version == 4 {
        return socks4(buf, len);
    }
    if after_greeting && version == 1 {
        // Username/password sub-negotiation: 01 ulen user plen pass.
        let ulen = buf.at(1) as u32;
        let need = 2 + ulen + 1;
        if len < need {
            return Scan::need(need);
        }
        let total = need + buf.at(need - 1) as u32;
        return if len < total { Scan::need(total) } else { Scan::GREETING };
    }
    if version != 5 {
        return Scan::UNKNOWN;
    }
    if !after_greeting {
        // 05 nmethods methods...; the client waits for the method choice before its request.
        let need = 2 + buf.at(1) as u32;
        return if len < need { Scan::need(need) } else { Scan::GREETING };
    }
    // 05 cmd 00 atyp addr port
    if len < 5 {
        return Scan::need(5);
    }
    match buf.at(3) {
        1 => {
            if len < 10 {
                return Scan::need(10);
            }
            let addr = u32::from_ne_bytes([buf.at(4), buf.at(5), buf.at(6), buf.at(7)]);
            Scan::ipv4(SOURCE_SOCKS_IP, addr)
        }
        3 => {
            let n = buf.at(4) as u32;
            if len < 5 + n + 2 {
                return Scan::need(5 + n + 2);
            }
            if n == 0 { Scan::UNNAMED } else { Scan::name(SOURCE_SOCKS5, 5, n) }
        }
        // IPv6: judged by user space and the connect-time address.
        _ => Scan::UNNAMED,
    }
}

#[inline(always)]
fn socks4(buf: &Scratch, len: u32) -> Scan {
    if len < 9 {
        return Scan::need(9);
    }
    if buf.at(1) != 1 {
        return Scan::UNKNOWN;
    }
    // Skip the user id.
    let mut scan = Cursor { buf, len, pos: 8, found: 0 };
    bounded_loop(SOCKS_USERID_MAX, nul_byte, &mut scan);
    if scan.found == 0 {
        return if scan.pos >= len { Scan::need(len + 1) } else { Scan::UNKNOWN };
    }
    let p = scan.pos + 1;
    let is_4a = buf.at(4) == 0 && buf.at(5) == 0 && buf.at(6) == 0 && buf.at(7) != 0;
    if !is_4a {
        let addr = u32::from_ne_bytes([buf.at(4), buf.at(5), buf.at(6), buf.at(7)]);
        return Scan::ipv4(SOURCE_SOCKS_IP, addr);
    }
    let start = p;
    let mut scan = Cursor { buf, len, pos: p, found: 0 };
    bounded_loop(256, nul_byte, &mut scan);
    if scan.found == 0 {
        return if scan.pos >= len { Scan::need(len + 1) } else { Scan::UNNAMED };
    }
    let end = scan.pos;
    if end <= start { Scan::UNNAMED } else { Scan::name(SOURCE_SOCKS4A, start, end - start) }
}
