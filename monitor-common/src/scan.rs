//! The kernel's own reading of first bytes: just enough to name the target for a verdict.
//! User space parses the same bytes again, fully, for the event.
//!
//! This code is built twice: for the BPF target, where `inspect_send` runs it, and for the host, where
//! the differential test (`monitor-core/tests/kernel_scan.rs`) and a fuzz target run the very same
//! scanners against the user-space parsers. Only [`bounded_loop`] differs between the two.
//!
//! The target is what the proxy or origin will really use (checked against squid 5.7, tinyproxy 1.11
//! and microsocks): userinfo before the last `@` of an authority is dropped, the method is read in any
//! case and may be followed by several blanks, empty lines before a request are skipped, a Host value
//! may follow any number of blanks, a SOCKS5 name ends at its first NUL (C servers resolve the string
//! up to it), and a numeric host in any form `inet_aton` reads (`2130706433`, `0x7f.1`, `0177.0.0.1`)
//! is the address it stands for.
//!
//! The parsers read a per-CPU scratch copy of the message through [`Scratch::at`], whose index is masked
//! into the buffer, so every read is in bounds for the verifier; `len` says how much of it is real.
//! Every loop has a constant bound.

use crate::verdict::{
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
pub const HEAD_MAX: u32 = 2048;
/// An authority (userinfo, host and port) longer than this is not read.
pub const AUTHORITY_MAX: u32 = 300;
pub const TLS_EXTENSIONS_MAX: u32 = 48;
pub const SOCKS_USERID_MAX: u32 = 256;
/// Empty lines skipped before a request line, and blanks skipped after the method or before a Host
/// value; more than this is left to user space.
pub const BLANKS_MAX: u32 = 64;
/// Characters of a URI scheme (`http`, `https`, `ftp`, `ws`, ...) read before `://`.
/// The longest URI scheme read as an absolute form (user space applies the same bound).
pub const SCHEME_MAX: u32 = 16;

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
    /// An empty scratch buffer, for running the scanners on the host (the kernel's lives in a map).
    pub const fn zeroed() -> Scratch {
        Scratch { bytes: [0; SCRATCH_LEN], scan: Scan::UNKNOWN, need: 0, framed: 0, unframed: 0, _pad: 0 }
    }

    #[inline(always)]
    pub fn at(&self, i: u32) -> u8 {
        // The mask keeps the index inside the buffer whatever `i` is.
        unsafe { *self.bytes.get_unchecked((i & MASK) as usize) }
    }

    /// [`Self::at`] for an index the compiler has bounded by comparisons with `len`: it would drop the
    /// mask as redundant, and verifiers learn no bound from a comparison of two registers (6.1 and 6.18
    /// alike reject the unmasked access when the index came back from a `bpf_loop` context).
    #[inline(always)]
    pub fn at_opaque(&self, i: u32) -> u8 {
        self.at(core::hint::black_box(i))
    }

    #[inline(always)]
    pub fn be16(&self, i: u32) -> u32 {
        ((self.at(i) as u32) << 8) | self.at(i + 1) as u32
    }
}

/// What the first bytes say: a plain struct rather than an enum, so that every field has a value on
/// every path (the verifier rejects a register the optimizer left undefined for a variant without it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn bounded_loop<C>(n: u32, body: extern "C" fn(u64, *mut C) -> i64, ctx: &mut C) {
    unsafe {
        aya_ebpf::helpers::generated::bpf_loop(n, body as *mut core::ffi::c_void, (ctx as *mut C).cast(), 0)
    };
}

/// The host's `bpf_loop`: the same bound, the same early stop.
#[cfg(not(target_arch = "bpf"))]
#[inline(always)]
pub fn bounded_loop<C>(n: u32, body: extern "C" fn(u64, *mut C) -> i64, ctx: &mut C) {
    for i in 0..n {
        if body(u64::from(i), ctx) != 0 {
            break;
        }
    }
}

#[inline(always)]
fn lower(b: u8) -> u8 {
    if b.is_ascii_uppercase() { b + 32 } else { b }
}

#[inline(always)]
fn is_blank(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// A position moving through the scratch buffer, for loop bodies.
struct Cursor<'a> {
    buf: &'a Scratch,
    len: u32,
    pos: u32,
    found: u32,
}

/// Skips CR and LF; stops (found = 1) at anything else.
extern "C" fn line_ends(_: u64, c: *mut Cursor<'_>) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.len {
        return 1;
    }
    let b = c.buf.at(c.pos);
    if b != b'\r' && b != b'\n' {
        c.found = 1;
        return 1;
    }
    c.pos += 1;
    0
}

/// Skips spaces and tabs; stops (found = 1) at anything else.
extern "C" fn blanks(_: u64, c: *mut Cursor<'_>) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.len {
        return 1;
    }
    if !is_blank(c.buf.at(c.pos)) {
        c.found = 1;
        return 1;
    }
    c.pos += 1;
    0
}

/// Skips URI scheme characters (letters, digits, `+`, `-`, `.`); stops (found = 1) at anything else.
extern "C" fn scheme_chars(_: u64, c: *mut Cursor<'_>) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.len {
        return 1;
    }
    let b = c.buf.at(c.pos);
    if !(b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.') {
        c.found = 1;
        return 1;
    }
    c.pos += 1;
    0
}

/// How `skip` ended: `Ok(pos)` at the first byte it does not skip, `Err(scan)` when the bytes ran out
/// (more are needed) or the bound was reached (unnamed).
#[inline(always)]
fn skip(
    buf: &Scratch,
    len: u32,
    from: u32,
    bound: u32,
    body: extern "C" fn(u64, *mut Cursor<'_>) -> i64,
) -> Result<u32, Scan> {
    let mut c = Cursor { buf, len, pos: from, found: 0 };
    bounded_loop(bound, body, &mut c);
    if c.found != 0 {
        Ok(c.pos)
    } else if c.pos >= len {
        Err(Scan::need(len + 1))
    } else {
        Err(Scan::UNNAMED)
    }
}

/// HTTP request: CONNECT authority, absolute-form host, or Host header.
#[inline(always)]
pub fn scan_http(buf: &Scratch, len: u32) -> Scan {
    if len == 0 {
        return Scan::need(1);
    }
    // Empty lines before the request line are skipped by squid and tinyproxy alike.
    let s = if buf.at(0) == b'\r' || buf.at(0) == b'\n' {
        match skip(buf, len, 0, BLANKS_MAX, line_ends) {
            Ok(s) => s,
            Err(scan) if scan.kind == SCAN_NEED_BYTES => return scan,
            Err(_) => return Scan::UNKNOWN,
        }
    } else {
        0
    };
    // A known method in any case (squid takes `get` and `connect`), then a blank. Only a prefix of one
    // is worth waiting for: a protocol that merely starts with letters (and may wait for its peer) is
    // not held.
    let method: &[u8] = match lower(buf.at_opaque(s)) {
        b'g' => b"get",
        b'h' => b"head",
        b'd' => b"delete",
        b'o' => b"options",
        b'c' => b"connect",
        b't' => b"trace",
        b'p' if len < s + 2 => return Scan::need(s + 2),
        b'p' => match lower(buf.at_opaque(s + 1)) {
            b'o' => b"post",
            b'u' => b"put",
            b'a' => b"patch",
            _ => return Scan::UNKNOWN,
        },
        _ => return Scan::UNKNOWN,
    };
    let is_connect = lower(buf.at_opaque(s)) == b'c';
    let mut i = s;
    for &expected in method {
        if i >= len {
            return Scan::need(len + 1);
        }
        if lower(buf.at_opaque(i)) != expected {
            return Scan::UNKNOWN;
        }
        i += 1;
    }
    if i >= len {
        return Scan::need(len + 1);
    }
    if !is_blank(buf.at_opaque(i)) {
        return Scan::UNKNOWN;
    }
    // Squid takes any run of spaces and tabs between the method and the target.
    let target = match skip(buf, len, i, BLANKS_MAX, blanks) {
        Ok(t) => t,
        Err(scan) => return scan,
    };
    // One authority read for the three sources: the verifier then walks it once, not once per source.
    let (start, source) = if is_connect {
        (target, SOURCE_CONNECT)
    } else {
        match absolute_form(buf, len, target) {
            Ok(Some(p)) => (p, SOURCE_ABSOLUTE_FORM),
            Ok(None) => match host_value(buf, len, target) {
                Ok(v) => (v, SOURCE_HTTP_HOST),
                Err(scan) => return scan,
            },
            Err(scan) => return scan,
        }
    };
    authority(buf, len, start, source)
}

/// Absolute form: a scheme (`http`, `https`, `ftp`, ... in any case) and `://` at `target`; `Ok(Some)`
/// is where its authority starts.
#[inline(always)]
fn absolute_form(buf: &Scratch, len: u32, target: u32) -> Result<Option<u32>, Scan> {
    if !buf.at_opaque(target).is_ascii_alphabetic() {
        return Ok(None);
    }
    let p = match skip(buf, len, target, SCHEME_MAX, scheme_chars) {
        Ok(p) => p,
        Err(scan) if scan.kind == SCAN_NEED_BYTES => return Err(scan),
        Err(_) => return Ok(None),
    };
    if len < p + 3 {
        return Err(Scan::need(p + 3));
    }
    let slashes = buf.at_opaque(p) == b':' && buf.at_opaque(p + 1) == b'/' && buf.at_opaque(p + 2) == b'/';
    Ok(if slashes { Some(p + 3) } else { None })
}

/// Where an authority's host lies: after its last `@` (userinfo is dropped, as squid does), up to its
/// first `:` after that (the port) or its end.
struct AuthorityScan<'a> {
    buf: &'a Scratch,
    len: u32,
    pos: u32,
    host: u32,
    /// The first `:` after `host`; `NO_COLON` while there is none.
    colon: u32,
    found: u32,
}

const NO_COLON: u32 = u32::MAX;

extern "C" fn authority_step(_: u64, c: *mut AuthorityScan<'_>) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.len {
        return 1;
    }
    let b = c.buf.at(c.pos);
    if b == b'/' || b == b' ' || b == b'\t' || b == b'?' || b == b'#' || b == b'\r' || b == b'\n' {
        c.found = 1;
        return 1;
    }
    if b == b'@' {
        c.host = c.pos + 1;
        c.colon = NO_COLON;
    } else if b == b':' && c.colon == NO_COLON {
        c.colon = c.pos;
    }
    c.pos += 1;
    0
}

/// A host at `start`: `[userinfo@]name[:port]`, `[v6]:port`, or a numeric IPv4 address, ended by `/`,
/// `?`, `#`, a blank or a line end.
#[inline(always)]
fn authority(buf: &Scratch, len: u32, start: u32, source: u32) -> Scan {
    let mut scan = AuthorityScan { buf, len, pos: start, host: start, colon: NO_COLON, found: 0 };
    bounded_loop(AUTHORITY_MAX, authority_step, &mut scan);
    if scan.found == 0 {
        return if scan.pos >= len { Scan::need(len + 1) } else { Scan::UNNAMED };
    }
    let host = scan.host;
    let end = if scan.colon == NO_COLON { scan.pos } else { scan.colon };
    if end <= host || host < start {
        return Scan::UNNAMED;
    }
    if buf.at_opaque(host) == b'[' {
        // An IPv6 literal: user space names it; the kernel judges it by the connect-time address only.
        return Scan::UNNAMED;
    }
    let n = end - host;
    if n >= AUTHORITY_MAX {
        return Scan::UNNAMED;
    }
    named(buf, source, host, n)
}

/// A name from a request: the IPv4 address it stands for when `inet_aton` reads it as one (what the
/// proxy will connect to), else the name.
#[inline(always)]
fn named(buf: &Scratch, source: u32, start: u32, len: u32) -> Scan {
    match numeric_ipv4(buf, start, len) {
        Some(addr) => Scan::ipv4(source, addr),
        None => Scan::name(source, start, len),
    }
}

/// glibc's `inet_aton`, one character per step: up to four parts, each decimal, octal (leading `0`)
/// or hex (`0x`), the last filling the bytes the others left.
struct Numeric<'a> {
    buf: &'a Scratch,
    end: u32,
    pos: u32,
    /// 0 at the start of a part, 1 after its leading `0`, 2 in its digits.
    phase: u32,
    base: u32,
    digits: u32,
    value: u64,
    parts: [u32; 3],
    count: u32,
    bad: u32,
}

extern "C" fn numeric_step(_: u64, c: *mut Numeric<'_>) -> i64 {
    let c = unsafe { &mut *c };
    if c.pos >= c.end {
        return 1;
    }
    let b = c.buf.at(c.pos);
    c.pos += 1;
    if c.phase == 0 {
        if !b.is_ascii_digit() {
            c.bad = 1;
            return 1;
        }
        c.value = (b - b'0') as u64;
        c.digits = 1;
        if b == b'0' {
            c.base = 8;
            c.phase = 1;
        } else {
            c.base = 10;
            c.phase = 2;
        }
        return 0;
    }
    if c.phase == 1 && (b == b'x' || b == b'X') {
        c.base = 16;
        c.digits = 0;
        c.phase = 2;
        return 0;
    }
    c.phase = 2;
    if b == b'.' {
        if c.count >= 3 || c.value > 0xff || c.digits == 0 {
            c.bad = 1;
            return 1;
        }
        if let Some(part) = c.parts.get_mut(c.count as usize) {
            *part = c.value as u32;
        }
        c.count += 1;
        c.phase = 0;
        return 0;
    }
    let digit = if b.is_ascii_digit() {
        (b - b'0') as u64
    } else if c.base == 16 && b.is_ascii_hexdigit() {
        (lower(b) - b'a' + 10) as u64
    } else {
        c.bad = 1;
        return 1;
    };
    if digit >= c.base as u64 {
        c.bad = 1;
        return 1;
    }
    c.value = c.value * c.base as u64 + digit;
    c.digits = 1;
    if c.value > 0xffff_ffff {
        c.bad = 1;
        return 1;
    }
    0
}

/// The IPv4 address (network order) that `len` bytes at `start` stand for, read the way `inet_aton`
/// (and so getaddrinfo, squid, tinyproxy and microsocks) reads them; one trailing dot is ignored, as
/// for names.
#[inline(always)]
pub fn numeric_ipv4(buf: &Scratch, start: u32, len: u32) -> Option<u32> {
    let mut len = len;
    if len > 1 && buf.at(start + len - 1) == b'.' {
        len -= 1;
    }
    if len == 0 || len >= AUTHORITY_MAX || !buf.at(start).is_ascii_digit() {
        return None;
    }
    let mut c = Numeric {
        buf,
        end: start + len,
        pos: start,
        phase: 0,
        base: 10,
        digits: 0,
        value: 0,
        parts: [0; 3],
        count: 0,
        bad: 0,
    };
    bounded_loop(AUTHORITY_MAX, numeric_step, &mut c);
    if c.bad != 0 || c.pos < c.end || c.phase == 0 || c.digits == 0 {
        return None;
    }
    let [a, b, d] = c.parts;
    let v = c.value as u32;
    let addr = match c.count {
        0 => v,
        1 if c.value <= 0xff_ffff => (a << 24) | v,
        2 if c.value <= 0xffff => (a << 24) | (b << 16) | v,
        3 if c.value <= 0xff => (a << 24) | (b << 16) | (d << 8) | v,
        _ => return None,
    };
    Some(u32::from_be(addr))
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

/// Where the value of the Host header of a request head starts, searched from `from`.
#[inline(always)]
fn host_value(buf: &Scratch, len: u32, from: u32) -> Result<u32, Scan> {
    let mut scan = Cursor { buf, len, pos: from, found: 0 };
    bounded_loop(HEAD_MAX, host_line, &mut scan);
    match scan.found {
        // Any run of blanks may come before the value (tinyproxy takes `Host:   name`).
        1 => skip(buf, len, scan.pos + 6, BLANKS_MAX, blanks),
        // End of the head without a Host header.
        2 => Err(Scan::UNNAMED),
        _ if len < HEAD_MAX => Err(Scan::need(len + 1)),
        _ => Err(Scan::UNNAMED),
    }
}

/// Where an HTTP request ends, so the next one on the connection can be judged too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    for (i, &expected) in (1u32..).zip(name.iter()) {
        if lower(buf.at(at + i)) != expected {
            return false;
        }
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

/// TLS records of one message the kernel walks to gather a fragmented ClientHello.
pub const TLS_RECORDS_MAX: u32 = 8;

/// A message that starts with a TLS handshake record, as sk_msg reads it: the ClientHello's SNI, the
/// bytes it still needs (a hold), or [`Scan::DEFER`] when it goes on past what the kernel can read (its
/// window, or the records it walks), so that user space judges it. `read(dst, len, at)` copies `len` bytes
/// of the message from offset `at`; `size` bytes of it are readable.
#[inline(always)]
pub fn scan_tls_message(scratch: &mut Scratch, read: impl Fn(*mut u8, u32, u32), size: u32) -> Scan {
    match copy_handshake(scratch, &read, size) {
        Ok(n) => {
            let scan = scan_client_hello(scratch, n);
            if scan.kind != SCAN_NAME && hello_truncated(scratch, n) { Scan::DEFER } else { scan }
        }
        // Longer than the window can hold: user space reads it.
        Err(need) if need > WINDOW => Scan::DEFER,
        Err(need) => Scan::need(need),
    }
}

/// Copy the TLS handshake bytes of the records at the start of the message into `scratch`, without
/// their record headers, so a ClientHello fragmented over several records reads as one message.
/// `Err(n)`: the message must hold `n` bytes before the ClientHello is whole.
#[inline(always)]
fn copy_handshake(scratch: &mut Scratch, read: &impl Fn(*mut u8, u32, u32), size: u32) -> Result<u32, u32> {
    let mut src = 0u32;
    let mut dst = 0u32;
    let mut header = [0u8; 5];
    for _ in 0..TLS_RECORDS_MAX {
        if src + 5 > size {
            return Err(src + 5);
        }
        read(header.as_mut_ptr(), 5, src);
        if header[0] != 0x16 {
            break;
        }
        let record_len = ((header[3] as u32) << 8) | header[4] as u32;
        let available = size - src - 5;
        let mut n = if record_len < available { record_len } else { available };
        if dst + n > WINDOW {
            n = WINDOW - dst;
        }
        let n = n & (WINDOW * 2 - 1);
        if n > WINDOW {
            break;
        }
        let at = dst & MASK;
        // `at` is masked into the window and `n` is at most a window: inside the buffer, twice as long.
        read(unsafe { scratch.bytes.as_mut_ptr().add(at as usize) }, n, src + 5);
        dst += n;
        src += 5 + record_len;
        if dst >= 4 {
            let handshake_len =
                ((scratch.at(1) as u32) << 16) | ((scratch.at(2) as u32) << 8) | scratch.at(3) as u32;
            if dst >= handshake_len + 4 || dst >= WINDOW {
                return Ok(dst);
            }
        }
        if src > size {
            return Err(src);
        }
    }
    Ok(dst)
}

/// Whether the ClientHello in `scratch` (its first `n` handshake bytes) goes on past them: the window,
/// or the records the kernel walks, ended before it did.
#[inline(always)]
fn hello_truncated(scratch: &Scratch, n: u32) -> bool {
    if n < 4 || scratch.at(0) != 1 {
        return false;
    }
    let length = ((scratch.at(1) as u32) << 16) | ((scratch.at(2) as u32) << 8) | scratch.at(3) as u32;
    length + 4 > n
}

/// A TLS handshake message already stripped of its record headers (see [`scan_tls_message`]):
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
            // The server resolves the name as a C string: it ends at its first NUL.
            let mut scan = Cursor { buf, len: 5 + n, pos: 5, found: 0 };
            bounded_loop(256, nul_byte, &mut scan);
            let n = scan.pos - 5;
            if n == 0 { Scan::UNNAMED } else { named(buf, SOURCE_SOCKS5, 5, n) }
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
    if end <= start { Scan::UNNAMED } else { named(buf, SOURCE_SOCKS4A, start, end - start) }
}
