//! Indicators (allow and block lists) and the verdicts they give.
//!
//! A file holds one indicator per line; `#` starts a comment; blank lines are ignored. An indicator is
//! a domain (it and every subdomain), an IPv4 or IPv6 address, or a CIDR range. Allow wins over block.
//! A domain written in Unicode (`bücher.example`) is mapped by UTS 46 to the ASCII form the wire carries
//! (`xn--bcher-kva.example`), and kept and matched in that form only.
//! The kernel holds the same sets in its maps (see `monitor_common::name_hash`); this module parses and
//! validates them and answers "which indicator matched" for events.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    sync::Arc,
};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum IndicatorError {
    #[error("{path}:{line}: {reason}: {text:?}")]
    BadLine { path: PathBuf, line: usize, text: String, reason: &'static str },
    #[error("cannot read indicator file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ListKind {
    Allow,
    Block,
}

impl ListKind {
    /// `allow` or `block`, as the control protocol and the configuration name the lists.
    pub fn from_name(name: &str) -> Option<ListKind> {
        [ListKind::Allow, ListKind::Block].into_iter().find(|k| k.to_string() == name)
    }
}

impl fmt::Display for ListKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ListKind::Allow => "allow",
            ListKind::Block => "block",
        })
    }
}

/// One entry of an allow or block list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Indicator {
    /// A normalised domain: lower case, no trailing dot. Shared, not copied, between the lists read from
    /// the files and the set built from them: with a million indicators each copy is tens of MiB.
    Domain(Arc<str>),
    /// An address range; a single address is a /32 or /128.
    Net { addr: IpAddr, prefix: u8 },
}

impl fmt::Display for Indicator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Indicator::Domain(d) => f.write_str(d),
            Indicator::Net { addr, prefix } => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                if *prefix == full { write!(f, "{addr}") } else { write!(f, "{addr}/{prefix}") }
            }
        }
    }
}

/// Lower case, without one trailing dot, in ASCII (a Unicode name in its punycode form, by UTS 46);
/// `None` if it cannot be a host name.
pub fn normalize_domain(text: &str) -> Option<String> {
    if text.is_ascii() {
        return ascii_domain(text);
    }
    ascii_domain(&idna::domain_to_ascii(text).ok()?)
}

/// The Unicode form of a name with a punycode (`xn--`) label, for people to read; `None` for other names
/// and for labels that are not valid punycode.
pub fn unicode_form(name: &str) -> Option<String> {
    let punycode = name.split('.').any(|l| l.len() > 4 && l[..4].eq_ignore_ascii_case("xn--"));
    if !punycode || !name.is_ascii() {
        return None;
    }
    let (unicode, checked) = idna::domain_to_unicode(name);
    checked.ok()?;
    (!unicode.eq_ignore_ascii_case(name)).then_some(unicode)
}

fn ascii_domain(text: &str) -> Option<String> {
    let text = text.strip_suffix('.').unwrap_or(text);
    if text.is_empty() || text.len() > 253 {
        return None;
    }
    let ok_label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !text.split('.').all(ok_label) {
        return None;
    }
    Some(text.to_ascii_lowercase())
}

impl Indicator {
    /// Parse one indicator (a line without comment or surrounding space).
    pub fn parse(text: &str) -> Result<Indicator, &'static str> {
        if let Some((addr, prefix)) = text.split_once('/') {
            let addr: IpAddr = addr.parse().map_err(|_| "not an IP address before '/'")?;
            let prefix: u8 = prefix.parse().map_err(|_| "CIDR prefix is not a number")?;
            let full = if addr.is_ipv4() { 32 } else { 128 };
            if prefix > full {
                return Err("CIDR prefix longer than the address");
            }
            return Ok(Indicator::Net { addr: mask(addr, prefix), prefix });
        }
        if let Ok(addr) = text.parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(Indicator::Net { addr, prefix });
        }
        if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err("neither a valid IPv4 address nor a domain");
        }
        if !text.is_ascii() {
            let ascii = idna::domain_to_ascii(text)
                .map_err(|_| "not a valid internationalised domain name (UTS 46)")?;
            return ascii_domain(&ascii)
                .map(|d| Indicator::Domain(d.into()))
                .ok_or("an internationalised domain name whose ASCII form is not a host name");
        }
        normalize_domain(text)
            .map(|d| Indicator::Domain(d.into()))
            .ok_or("not a domain, address or CIDR range")
    }
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let m = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
            IpAddr::V4(Ipv4Addr::from(bits & m))
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let m = if prefix == 0 { 0 } else { u128::MAX << (128 - prefix as u32) };
            IpAddr::V6(Ipv6Addr::from(bits & m))
        }
    }
}

/// Parse an indicator list. A bad line fails the whole file with its path and line number.
pub fn parse_list(path: &Path, text: &str) -> Result<Vec<Indicator>, IndicatorError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let indicator = Indicator::parse(line).map_err(|reason| IndicatorError::BadLine {
            path: path.to_path_buf(),
            line: i + 1,
            text: raw.to_string(),
            reason,
        })?;
        out.push(indicator);
    }
    Ok(out)
}

pub fn read_list(path: &Path) -> Result<Vec<Indicator>, IndicatorError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| IndicatorError::Io { path: path.to_path_buf(), source })?;
    parse_list(path, &text)
}

/// What the lists say about a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    NoMatch,
    /// An allow indicator matched (whether or not a block one did too).
    Allowed(Indicator),
    Blocked(Indicator),
}

/// Both lists, as user space keeps them to explain verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IndicatorSet {
    domains: HashMap<Arc<str>, ListBits>,
    nets: BTreeMap<(IpAddr, u8), ListBits>,
    /// The prefix table: how many ranges of each length there are, per family. Judging an address looks
    /// its masked forms up once per length present (at most 33 or 129 lookups), not every range.
    lengths_v4: BTreeMap<u8, usize>,
    lengths_v6: BTreeMap<u8, usize>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListBits {
    pub allow: bool,
    pub block: bool,
}

impl IndicatorSet {
    pub fn from_lists(allow: &[Indicator], block: &[Indicator]) -> Self {
        let mut set = IndicatorSet::default();
        for i in allow {
            set.insert(ListKind::Allow, i.clone());
        }
        for i in block {
            set.insert(ListKind::Block, i.clone());
        }
        set
    }

    pub fn insert(&mut self, kind: ListKind, indicator: Indicator) {
        let bits = match indicator {
            Indicator::Domain(d) => self.domains.entry(d).or_default(),
            Indicator::Net { addr, prefix } => {
                if !self.nets.contains_key(&(addr, prefix)) {
                    *self.lengths_mut(&addr).entry(prefix).or_default() += 1;
                }
                self.nets.entry((addr, prefix)).or_default()
            }
        };
        match kind {
            ListKind::Allow => bits.allow = true,
            ListKind::Block => bits.block = true,
        }
    }

    /// Returns whether it was present.
    pub fn remove(&mut self, kind: ListKind, indicator: &Indicator) -> bool {
        let (present, empty) = match indicator {
            Indicator::Domain(d) => match self.domains.get_mut(d) {
                Some(bits) => (clear(bits, kind), *bits == ListBits::default()),
                None => (false, false),
            },
            Indicator::Net { addr, prefix } => match self.nets.get_mut(&(*addr, *prefix)) {
                Some(bits) => (clear(bits, kind), *bits == ListBits::default()),
                None => (false, false),
            },
        };
        if empty {
            match indicator {
                Indicator::Domain(d) => {
                    self.domains.remove(d);
                }
                Indicator::Net { addr, prefix } => {
                    self.nets.remove(&(*addr, *prefix));
                    let lengths = self.lengths_mut(addr);
                    if let Some(n) = lengths.get_mut(prefix) {
                        *n -= 1;
                        if *n == 0 {
                            lengths.remove(prefix);
                        }
                    }
                }
            }
        }
        present
    }

    pub fn domains(&self) -> impl Iterator<Item = (&str, ListBits)> {
        self.domains.iter().map(|(d, b)| (&**d, *b))
    }

    pub fn nets(&self) -> impl Iterator<Item = (IpAddr, u8, ListBits)> + '_ {
        self.nets.iter().map(|((a, p), b)| (*a, *p, *b))
    }

    /// Each list's entries, sorted.
    pub fn list(&self, kind: ListKind) -> Vec<Indicator> {
        let pick = |b: &ListBits| match kind {
            ListKind::Allow => b.allow,
            ListKind::Block => b.block,
        };
        let mut out: Vec<Indicator> = self
            .domains
            .iter()
            .filter(|(_, b)| pick(b))
            .map(|(d, _)| Indicator::Domain(Arc::clone(d)))
            .chain(
                self.nets
                    .iter()
                    .filter(|(_, b)| pick(b))
                    .map(|((a, p), _)| Indicator::Net { addr: *a, prefix: *p }),
            )
            .collect();
        out.sort();
        out
    }

    /// How many indicators each list has (counted in place: listing a million of them to count is slow).
    pub fn counts(&self) -> (usize, usize) {
        let (mut allow, mut block) = (0, 0);
        for bits in self.domains.values().chain(self.nets.values()) {
            allow += bits.allow as usize;
            block += bits.block as usize;
        }
        (allow, block)
    }

    /// The decision for a host name (or an IP literal written as a name).
    pub fn judge_host(&self, host: &str) -> Decision {
        if let Ok(addr) = host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            return self.judge_addr(&addr);
        }
        let Some(host) = normalize_domain(host) else {
            return Decision::NoMatch;
        };
        let mut blocked = None;
        let mut suffix = host.as_str();
        loop {
            if let Some(bits) = self.domains.get(suffix) {
                if bits.allow {
                    return Decision::Allowed(Indicator::Domain(suffix.into()));
                }
                if bits.block && blocked.is_none() {
                    blocked = Some(Indicator::Domain(suffix.into()));
                }
            }
            match suffix.split_once('.') {
                Some((_, rest)) => suffix = rest,
                None => break,
            }
        }
        blocked.map(Decision::Blocked).unwrap_or(Decision::NoMatch)
    }

    fn lengths_mut(&mut self, addr: &IpAddr) -> &mut BTreeMap<u8, usize> {
        if addr.is_ipv4() { &mut self.lengths_v4 } else { &mut self.lengths_v6 }
    }

    /// The ranges holding `addr` whose prefix is at most `max_prefix`, longest first.
    fn ranges_holding(
        &self,
        addr: IpAddr,
        max_prefix: u8,
    ) -> impl Iterator<Item = (IpAddr, u8, ListBits)> + '_ {
        let lengths = if addr.is_ipv4() { &self.lengths_v4 } else { &self.lengths_v6 };
        lengths.range(..=max_prefix).rev().filter_map(move |(&prefix, _)| {
            let net = mask(addr, prefix);
            self.nets.get(&(net, prefix)).map(|bits| (net, prefix, *bits))
        })
    }

    /// The decision for an address: an allow range holding it wins over any block range; the range
    /// named is the longest of its kind.
    pub fn judge_addr(&self, addr: &IpAddr) -> Decision {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(*addr),
            _ => *addr,
        };
        let mut blocked: Option<Indicator> = None;
        for (net, prefix, bits) in self.ranges_holding(addr, u8::MAX) {
            let indicator = Indicator::Net { addr: net, prefix };
            if bits.allow {
                return Decision::Allowed(indicator);
            }
            if bits.block && blocked.is_none() {
                blocked = Some(indicator);
            }
        }
        blocked.map(Decision::Blocked).unwrap_or(Decision::NoMatch)
    }

    /// The kernel's LPM trie answers with the longest matching prefix only. So that allow still wins
    /// over a longer block prefix inside an allowed range, every block prefix covered by an allow
    /// prefix is stored as allow.
    pub fn kernel_nets(&self) -> Vec<(IpAddr, u8, ListBits)> {
        self.nets
            .iter()
            .map(|((addr, prefix), bits)| {
                let covered = self.ranges_holding(*addr, *prefix).any(|(_, _, b)| b.allow);
                let bits = if covered { ListBits { allow: true, block: bits.block } } else { *bits };
                (*addr, *prefix, bits)
            })
            .collect()
    }
}

fn clear(bits: &mut ListBits, kind: ListKind) -> bool {
    let flag = match kind {
        ListKind::Allow => &mut bits.allow,
        ListKind::Block => &mut bits.block,
    };
    std::mem::replace(flag, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(allow: &[&str], block: &[&str]) -> IndicatorSet {
        let parse = |l: &[&str]| l.iter().map(|t| Indicator::parse(t).unwrap()).collect::<Vec<_>>();
        IndicatorSet::from_lists(&parse(allow), &parse(block))
    }

    #[test]
    fn domains_match_themselves_and_subdomains_only() {
        let s = set(&[], &["example.com"]);
        assert!(matches!(s.judge_host("example.com"), Decision::Blocked(_)));
        assert!(matches!(s.judge_host("a.b.example.com"), Decision::Blocked(_)));
        assert_eq!(s.judge_host("badexample.com"), Decision::NoMatch);
        assert_eq!(s.judge_host("example.com.evil.net"), Decision::NoMatch);
    }

    #[test]
    fn case_and_trailing_dot_do_not_matter() {
        let s = set(&[], &["Example.COM."]);
        assert_eq!(
            s.judge_host("WWW.EXAMPLE.com."),
            Decision::Blocked(Indicator::Domain("example.com".into()))
        );
    }

    #[test]
    fn allow_wins_over_block_at_any_depth() {
        let s = set(&["ok.example.com"], &["example.com"]);
        assert!(matches!(s.judge_host("ok.example.com"), Decision::Allowed(_)));
        assert!(matches!(s.judge_host("x.ok.example.com"), Decision::Allowed(_)));
        assert!(matches!(s.judge_host("other.example.com"), Decision::Blocked(_)));
        let s = set(&["example.com"], &["bad.example.com"]);
        assert!(matches!(s.judge_host("bad.example.com"), Decision::Allowed(_)));
    }

    #[test]
    fn punycode_names_are_plain_labels() {
        let s = set(&[], &["xn--bcher-kva.example"]);
        assert!(matches!(s.judge_host("www.XN--BCHER-KVA.example"), Decision::Blocked(_)));
        assert_eq!(s.judge_host("bcher-kva.example"), Decision::NoMatch);
    }

    #[test]
    fn unicode_names_are_kept_and_matched_as_punycode() {
        let s = set(&[], &["Bücher.Example."]);
        assert_eq!(s.list(ListKind::Block), vec![Indicator::Domain("xn--bcher-kva.example".into())]);
        assert_eq!(
            s.judge_host("www.xn--bcher-kva.example"),
            Decision::Blocked(Indicator::Domain("xn--bcher-kva.example".into()))
        );
        // A name written in Unicode on the wire is judged in the same form.
        assert!(matches!(s.judge_host("BÜCHER.example"), Decision::Blocked(_)));
        assert_eq!(s.judge_host("bucher.example"), Decision::NoMatch);
        // UTS 46 maps full-width dots and compatibility forms too.
        assert_eq!(
            Indicator::parse("ｂüｃｈｅｒ。example"),
            Ok(Indicator::Domain("xn--bcher-kva.example".into()))
        );
        assert_eq!(Indicator::parse("例え.テスト"), Ok(Indicator::Domain("xn--r8jz45g.xn--zckzah".into())));
    }

    #[test]
    fn invalid_unicode_names_name_file_and_line() {
        // U+2488 maps to "1." and leaves an empty label; a lone combining mark cannot start a label.
        for bad in ["a\u{2488}.example", "\u{0301}x.example", "bü cher.example"] {
            let err = parse_list(Path::new("block.txt"), &format!("ok.example\n{bad}\n")).unwrap_err();
            let text = err.to_string();
            assert!(text.starts_with("block.txt:2: "), "{text}");
            assert!(text.contains("internationalised domain name"), "{text}");
        }
    }

    #[test]
    fn unicode_form_only_for_punycode_names() {
        assert_eq!(unicode_form("www.xn--bcher-kva.example").as_deref(), Some("www.bücher.example"));
        assert_eq!(unicode_form("WWW.XN--BCHER-KVA.example").as_deref(), Some("www.bücher.example"));
        assert_eq!(unicode_form("origin.test"), None);
        assert_eq!(unicode_form(""), None);
        // Not valid punycode: no Unicode form to show.
        assert_eq!(unicode_form("xn--a.example"), None);
    }

    #[test]
    fn addresses_and_ranges() {
        let s = set(&["10.1.0.0/16"], &["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]);
        assert!(matches!(s.judge_host("10.2.3.4"), Decision::Blocked(_)));
        assert!(matches!(s.judge_host("10.1.3.4"), Decision::Allowed(_)));
        assert!(matches!(s.judge_host("192.0.2.7"), Decision::Blocked(_)));
        assert_eq!(s.judge_host("192.0.2.8"), Decision::NoMatch);
        assert!(matches!(s.judge_host("[2001:db8::1]"), Decision::Blocked(_)));
        assert!(matches!(s.judge_addr(&"::ffff:10.9.9.9".parse().unwrap()), Decision::Blocked(_)));
    }

    #[test]
    fn the_longest_range_is_named_and_removed_ranges_stop_matching() {
        let mut s = set(&[], &["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "2001:db8::/32"]);
        let judged = |s: &IndicatorSet, a: &str| s.judge_addr(&a.parse().expect("an address"));
        let net = |a: &str, prefix| Indicator::Net { addr: a.parse().expect("an address"), prefix };
        assert_eq!(judged(&s, "10.1.2.3"), Decision::Blocked(net("10.1.2.0", 24)));
        assert_eq!(judged(&s, "10.1.9.9"), Decision::Blocked(net("10.1.0.0", 16)));
        assert!(s.remove(ListKind::Block, &net("10.1.2.0", 24)));
        assert_eq!(judged(&s, "10.1.2.3"), Decision::Blocked(net("10.1.0.0", 16)));
        assert!(
            s.remove(ListKind::Block, &net("10.1.0.0", 16)) && s.remove(ListKind::Block, &net("10.0.0.0", 8))
        );
        assert_eq!(judged(&s, "10.1.2.3"), Decision::NoMatch);
        assert_eq!(s.lengths_v4.len(), 0, "no length left without a range");
        assert_eq!(judged(&s, "2001:db8:1::1"), Decision::Blocked(net("2001:db8::", 32)));
        // Many ranges of one length: looked up, not scanned, and still exact.
        for i in 0..=255u8 {
            s.insert(ListKind::Block, net(&format!("172.16.{i}.0"), 24));
        }
        assert_eq!(judged(&s, "172.16.200.1"), Decision::Blocked(net("172.16.200.0", 24)));
        assert_eq!(judged(&s, "172.17.0.1"), Decision::NoMatch);
        s.insert(ListKind::Allow, net("172.16.0.0", 12));
        assert_eq!(judged(&s, "172.16.200.1"), Decision::Allowed(net("172.16.0.0", 12)), "allow wins");
    }

    #[test]
    fn kernel_prefixes_keep_allow_winning_inside_allowed_ranges() {
        let s = set(&["10.0.0.0/8"], &["10.1.0.0/16"]);
        let nets = s.kernel_nets();
        let inner = nets.iter().find(|(_, p, _)| *p == 16).unwrap();
        assert!(inner.2.allow, "a block range inside an allowed one must read as allowed");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let err = parse_list(Path::new("block.txt"), "# c\nexample.com\n\nbad name!\n").unwrap_err();
        assert_eq!(err.to_string(), "block.txt:4: not a domain, address or CIDR range: \"bad name!\"");
        assert!(parse_list(Path::new("f"), "10.0.0.0/33").is_err());
        assert!(parse_list(Path::new("f"), "300.1.1.1").is_err());
        assert_eq!(parse_list(Path::new("f"), "a.com # trailing comment\n  b.org  ").unwrap().len(), 2);
    }
}
