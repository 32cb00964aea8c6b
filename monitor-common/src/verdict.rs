//! Indicator values and the kernel's verdicts, numbered so user space can count and print them.

/// Bits of one generation slot of an indicator value.
pub const IND_ALLOW: u8 = 1;
pub const IND_BLOCK: u8 = 2;

/// An indicator map value: one byte of `IND_*` bits per generation (see `Config::generation`).
pub type IndicatorSlots = [u8; 2];

/// What the kernel decided about a connection.
pub const VERDICT_NO_MATCH: u32 = 0;
pub const VERDICT_ALLOWED: u32 = 1;
pub const VERDICT_BLOCKED: u32 = 2;
pub const VERDICT_AUDITED: u32 = 3;
pub const VERDICT_UNINSPECTABLE_ALLOWED: u32 = 4;
pub const VERDICT_UNINSPECTABLE_BLOCKED: u32 = 5;

/// Which bytes named the target the kernel judged.
pub const SOURCE_NONE: u32 = 0;
pub const SOURCE_CONNECT: u32 = 1;
pub const SOURCE_ABSOLUTE_FORM: u32 = 2;
pub const SOURCE_HTTP_HOST: u32 = 3;
pub const SOURCE_TLS_SNI: u32 = 4;
pub const SOURCE_SOCKS5: u32 = 5;
pub const SOURCE_SOCKS4A: u32 = 6;
pub const SOURCE_SOCKS_IP: u32 = 7;
pub const SOURCE_REMOTE_IP: u32 = 8;
/// No name: a held send reached the hold timeout without the bytes that decide.
pub const SOURCE_HOLD_EXPIRED: u32 = 9;
/// A plain HTTP request whose end cannot be found (a Transfer-Encoding, conflicting Content-Length
/// values, a head past the window): the next request on its connection could not be judged.
pub const SOURCE_UNFRAMED: u32 = 10;

/// Reasons the kernel could not hand a record to user space, counted in `DROPS`.
pub const DROP_RINGBUF_FULL: u32 = 0;
pub const DROP_FLOW_TABLE_FULL: u32 = 1;
pub const DROP_PULL_FAILED: u32 = 2;
pub const DROP_CAPTURE_LIMIT: u32 = 3;
pub const DROP_REASONS: u32 = 4;

pub const fn drop_reason_name(reason: u32) -> &'static str {
    match reason {
        DROP_RINGBUF_FULL => "ringbuf_full",
        DROP_FLOW_TABLE_FULL => "flow_table_full",
        DROP_PULL_FAILED => "msg_pull_failed",
        DROP_CAPTURE_LIMIT => "capture_limit",
        _ => "unknown",
    }
}

pub const fn source_name(source: u32) -> &'static str {
    match source {
        SOURCE_CONNECT => "Connect",
        SOURCE_ABSOLUTE_FORM => "AbsoluteForm",
        SOURCE_HTTP_HOST => "HttpHost",
        SOURCE_TLS_SNI => "TlsSni",
        SOURCE_SOCKS5 => "Socks5",
        SOURCE_SOCKS4A => "Socks4a",
        SOURCE_SOCKS_IP => "SocksIp",
        SOURCE_REMOTE_IP => "RemoteIp",
        SOURCE_HOLD_EXPIRED => "HoldExpired",
        SOURCE_UNFRAMED => "Unframed",
        _ => "None",
    }
}
