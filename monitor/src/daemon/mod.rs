//! The daemon: load and attach the kernel programs, follow connections, emit events, apply policy.

mod abort;
pub mod control;
mod features;
mod fleet_policy;
mod flows;
mod heartbeat;
mod indicators;
mod kernel;
mod metrics;
mod netlink;
mod policy;
mod policy_worker;
pub mod probe;
mod process;
mod records;
mod settings;
mod sink;
mod status;
mod wire_reclaim;

use status::Status;

use std::{
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf, SockHash};
use monitor_common::{
    config::{Config, MODE_AUDIT, MODE_BLOCK, MODE_OFF, UNINSPECTABLE_ALLOW, UNINSPECTABLE_BLOCK},
    record::{WIRE_QUIC_DENIED, WireFlowKey},
    verdict::{DROP_REASONS, drop_reason_name},
};
use monitor_core::policy::{Indicator, ListKind};
use serde_json::{Value, json};
use tokio::{io::unix::AsyncFd, signal::unix::SignalKind, sync::mpsc};

use crate::cli::{Mode, RunArgs, Uninspectable};
use control::{Call, Request};
use flows::{Flows, QuicKey};
use indicators::Indicators;
use kernel::{Kernel, LoadOptions, cgroup2_root};
use monitor_fleet::policy::PolicyState;
use policy::KernelPolicy;
use records::Record;
use settings::Settings;
use sink::Sink;

const TICK: Duration = Duration::from_millis(100);
/// How often the kernel's drop counters are read (a rise is logged).
const DROPS_POLL: Duration = Duration::from_millis(250);

use tracing::{error, info, warn};

fn random_seed() -> anyhow::Result<[u64; 2]> {
    let mut bytes = [0u8; 16];
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if n != bytes.len() as isize {
        bail!("getrandom failed: {}", std::io::Error::last_os_error());
    }
    Ok([
        u64::from_ne_bytes(bytes[..8].try_into().context("seed")?),
        u64::from_ne_bytes(bytes[8..].try_into().context("seed")?),
    ])
}

/// Tell systemd (Type=notify) that the programs are attached.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(socket) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let _ = socket.send_to(b"READY=1", PathBuf::from(path));
}

/// About how much memory the maps take (kernels before 5.11 charge it to RLIMIT_MEMLOCK): entry
/// sizes plus the kernel's per-entry overhead, rounded up.
fn map_bytes(ring_buffer_bytes: u32, domain_capacity: u32, net_capacity: u32, wire_flows: u32) -> u64 {
    ring_buffer_bytes as u64
        + domain_capacity as u64 * 96
        + 2 * net_capacity as u64 * 96
        + 65_536 * 64 // SOCKS
        + wire_flows as u64 * 128 // WIRE_FLOWS
        + 16_384 * 64 // QUIC_DENY
        + 16_384 * 96 // WIRE_QUIC
        + (1 << 20) // CONFIG, DROPS, SCRATCH
}

/// Give freed heap back to the system: glibc keeps what a replaced indicator set used, so the daemon's RSS
/// would stay at its highest after every reload.
fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only returns free memory at the top of the heaps to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The kernel's copy of the hold timeout (settings bound it to a day).
fn hold_millis(timeout: std::time::Duration) -> u32 {
    timeout.as_millis().min(u32::MAX as u128) as u32
}

fn mode_value(mode: Mode) -> u32 {
    match mode {
        Mode::Off => MODE_OFF,
        Mode::Audit => MODE_AUDIT,
        Mode::Block => MODE_BLOCK,
    }
}

pub fn run(cli_args: RunArgs) -> anyhow::Result<ExitCode> {
    let args = Settings::resolve(&cli_args)?;
    if unsafe { libc::geteuid() } != 0 && !cli_args.check {
        bail!(
            "`monitor run` must run as root: it loads BPF programs and attaches them to cgroups and interfaces \
             (CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN)"
        );
    }
    for (what, path) in [("the allow list", &args.allow), ("the block list", &args.block)] {
        if let Some(path) = path {
            settings::check_owner(what, path)?;
        }
    }
    let mut indicators = Indicators::load(args.allow.as_deref(), args.block.as_deref())
        .map_err(|e| kernel::left_as_it_was(e.into(), args.pin_dir.as_deref()))?;
    // `--policy`: the copy of the fleet policy on disk applies from the first moment, to the maps and the
    // mode the daemon starts with (NATS may be down; a block-mode restart must not drop the fleet's blocks).
    let fleet_at_start = args.policy.as_ref().and_then(|p| match PolicyState::load(&p.cache) {
        Ok(state) => state.map(|state| state.effective(&p.groups)),
        Err(e) => {
            warn!("fleet policy: {e}; starting without the copy on disk");
            None
        }
    });
    if let Some(fleet) = &fleet_at_start {
        indicators.set_fleet(fleet.block.clone(), fleet.allow.clone());
    }
    let fleet_mode = fleet_at_start.as_ref().and_then(|f| f.mode).map(fleet_policy::mode);
    let mut start_mode =
        fleet_policy::choose_mode(args.mode, fleet_mode, args.prefer_local_mode, args.mode_given);
    let set = indicators.effective();
    for cgroup in &args.cgroups {
        if !cgroup.join("cgroup.procs").exists() {
            bail!("{} is not a cgroup v2 directory (no cgroup.procs)", cgroup.display());
        }
    }
    for iface in &args.ifaces {
        kernel::check_iface(iface)?;
    }
    let capacity = |n: usize| ((n + n / 4).max(1024).min(u32::MAX as usize / 2)) as u32;
    let domain_capacity = capacity(set.domains().count() + 65_536);
    let net_capacity = capacity(set.nets().count() + 16_384);
    // Why the fleet's block could not be served at start (the agent audits instead; status shows it).
    let mut fleet_block_refused = None;
    // What the kernel can do decides what is attached; a `--check` by someone else than root cannot probe.
    let plan = if unsafe { libc::geteuid() } == 0 {
        let found = features::Features::detect();
        let wanted = features::Wanted {
            mode: mode_value(start_mode),
            ifaces: &args.ifaces,
            explicit_cgroups: !args.cgroups.is_empty(),
            map_bytes: map_bytes(args.ring_buffer_bytes, domain_capacity, net_capacity, args.wire_flows),
        };
        let plan = if args.policy.is_some() {
            // The fleet's block, not this host's: the fleet's mode wins unless the configuration sets one
            // and prefers it.
            let fleet_asks_block =
                fleet_mode == Some(Mode::Block) && !(args.prefer_local_mode && args.mode_given);
            let (plan, refused) = features::decide_under_fleet(&found, &wanted, fleet_asks_block)
                .map_err(|reason| anyhow::anyhow!(reason))?;
            if let Some(why) = refused {
                warn!(
                    "the fleet policy asks for block mode, which this kernel cannot enforce: starting in audit ({why})"
                );
                start_mode = Mode::Audit;
                fleet_block_refused = Some(why);
            }
            plan
        } else {
            features::decide(&found, &wanted).map_err(|reason| anyhow::anyhow!(reason))?
        };
        for note in &plan.notes {
            warn!("{note}");
        }
        Some((plan, found))
    } else {
        None
    };
    let mode = mode_value(start_mode);
    let cgroups = match &plan {
        Some((plan, _)) if !plan.cgroup_hooks => Vec::new(),
        _ if args.cgroups.is_empty() => vec![cgroup2_root()?],
        _ => args.cgroups.clone(),
    };
    if let Some(addr) = args.metrics
        && !addr.ip().is_loopback()
    {
        warn!("metrics will listen on {addr}, which is not a loopback address");
    }
    if cli_args.check {
        let (allow_n, block_n) = set.counts();
        println!(
            "configuration ok: mode {:?}, {} cgroup(s), {} interface(s), {allow_n} allow and {block_n} block indicators{}",
            start_mode,
            cgroups.len(),
            args.ifaces.len(),
            args.config.as_ref().map(|c| format!(", from {}", c.display())).unwrap_or_default()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (plan, kernel_features) = plan.context("the kernel's features were not probed")?;
    let uninspectable = match args.uninspectable {
        Uninspectable::Allow => UNINSPECTABLE_ALLOW,
        Uninspectable::Block => UNINSPECTABLE_BLOCK,
    };
    // Block mode pins its enforcement so that it outlives the daemon (a crash or an upgrade opens no gap);
    // the next daemon adopts it. Other modes leave nothing behind, and release what a block-mode daemon left.
    let bpffs = kernel::bpffs();
    let pin_dir = match (&args.pin_dir, bpffs) {
        (Some(dir), _) => Some(dir.clone()),
        (None, Ok(fs)) => Some(fs.join("monitor")),
        (None, Err(e)) if mode == MODE_BLOCK => return Err(e),
        (None, Err(_)) => None,
    };
    let mut config = Config::new(mode, uninspectable, 0, hold_millis(args.hold_timeout), random_seed()?);
    let mut adopted = None;
    if let Some(dir) = &pin_dir {
        if mode == MODE_BLOCK {
            if let Some(previous) = Kernel::pinned_config(dir) {
                adopted = Some(dir.display().to_string());
                info!("adopting the enforcement pinned in {}", dir.display());
                // The pinned indicators are keyed by the previous seeds; the generation carries on too.
                config.seed = previous.seed;
                config.generation = previous.generation;
            }
        } else if kernel::has_pins(dir) {
            let released = kernel::detach_pinned(dir)?;
            info!(
                "released the enforcement a block-mode daemon left pinned in {} ({released} links)",
                dir.display()
            );
        }
    }

    let retention = monitor_hunt::Retention { max_age: args.store_max_age, max_bytes: args.store_max_bytes };
    let store = match &args.store {
        None => None,
        Some(path) => {
            let writer = sink::open_store(path, retention)
                .with_context(|| format!("open the event store {}", path.display()))?;
            Some((path.clone(), writer))
        }
    };
    let store_path = store.as_ref().map(|(p, _)| p.clone());
    let device_id = match &args.device_id {
        Some(id) => id.clone(),
        None => sink::machine_id()?,
    };
    let sink = Sink::open(&args.events, store.map(|(_, w)| w), device_id.clone())?;
    // Started once the store exists; it never touches the event path (a thread and runtime of its own).
    let exporter = match (&args.export, &store_path) {
        (Some(options), Some(path)) => {
            info!("exporting events to {} as DeviceId {device_id}", options.nats.servers.join(","));
            Some(
                monitor_fleet::Exporter::start(path, &device_id, options.clone())
                    .context("start the export")?,
            )
        }
        (None, Some(path)) => {
            // No export any more: retention need not spare an export's window or count gaps.
            if let Err(e) = monitor_hunt::Spool::open(path).and_then(|spool| spool.disable_export()) {
                warn!("the store: {e}");
            }
            None
        }
        _ => None,
    };
    let listener = control::bind(&args.control)?;

    let ifaces = if plan.gateway { args.ifaces.clone() } else { Vec::new() };
    let load = LoadOptions {
        config,
        cgroups: &cgroups,
        ifaces: &ifaces,
        domain_capacity,
        net_capacity,
        indicator_counts: (set.domains().count(), set.nets().count()),
        inspection: plan.inspection,
        skb: plan.skb,
        pin_dir: if mode == MODE_BLOCK { pin_dir.as_deref() } else { None },
        ring_buffer_bytes: args.ring_buffer_bytes,
        wire_flows: args.wire_flows,
    };
    // The indicators are in the maps and the programs attached before anything a previous daemon
    // pinned changes (`commit`); a failure before that leaves its enforcement as it was.
    let had_pins = load.pin_dir.is_some_and(kernel::has_pins);
    let (mut kernel, mut policy, applied) = (|| {
        let mut kernel = Kernel::load(&load)?;
        let mut policy = KernelPolicy::take(&mut kernel, config)?;
        let applied = policy.stage(&set).context("load the indicators into the kernel")?;
        kernel.attach(&load)?;
        kernel.commit(|| policy.flip())?;
        anyhow::Ok((kernel, policy, applied))
    })()
    .map_err(|e| if had_pins { kernel::left_as_it_was(e, load.pin_dir) } else { e })?;
    policy.settle().context("settle the indicators in the kernel")?;
    let (allow_n, block_n) = set.counts();
    info!(
        "indicators: {allow_n} allow, {block_n} block ({} map writes in {} ms)",
        applied.writes, applied.millis
    );
    let events = kernel.take_events()?;
    let kernel_logger = kernel.take_logger();
    let socks = kernel.take_socks()?;
    let quic_deny = kernel.take_quic_deny()?;
    let wire_quic = kernel.take_wire_quic()?;
    let deferred = kernel.take_deferred()?;
    for a in &kernel.attachments {
        info!("attached {} to {}", a.program, a.target);
    }
    if let Some(dir) = &kernel.pin_dir {
        info!(
            "enforcement pinned in {} (it stays when the daemon stops; `monitor detach` removes it)",
            dir.display()
        );
    }
    release_freed_memory();
    if kernel.degraded.is_empty() {
        info!("mode {:?}; ready", start_mode);
    } else {
        info!("mode {:?}; ready, degraded (not attached: {})", start_mode, kernel.degraded.join(", "));
    }
    notify_ready();

    let execs = process::ExecCache::default();
    if let Err(e) = process::watch_execs(execs.clone()) {
        // Not in the initial network namespace, or no CONFIG_PROC_EVENTS: only a process still running
        // when its record is read is named in full.
        warn!(
            "no exec events ({e}): a client that exits right after connecting may be named by its comm only"
        );
    }
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("start tokio")?;
    let indicator_files = indicators.paths();
    let (updates, policy_updates) = tokio::sync::mpsc::unbounded_channel();
    let (fleet_applied_tx, fleet_applied) = tokio::sync::mpsc::unbounded_channel();
    let policy = policy_worker::PolicyWorker::spawn(indicators, policy, updates, fleet_applied_tx)?;
    let mut fleet =
        args.policy.as_ref().map(|p| fleet_policy::FleetPolicyStatus::new(&p.nats.servers, &p.groups));
    if let (Some(status), Some(policy)) = (&mut fleet, &fleet_at_start) {
        status.received(policy, monitor_fleet::policy::PolicySource::Disk);
        status.applied(policy.revision, Ok(()));
    }
    if let (Some(status), Some(why)) = (&mut fleet, fleet_block_refused) {
        status.block_refused = Some(format!("running audit: {why}"));
    }
    let can_block = plan.inspection && plan.skb;
    let daemon = Daemon {
        cli_args: cli_args.clone(),
        args: args.clone(),
        kernel,
        policy,
        policy_updates,
        indicator_files,
        sink,
        flows: Flows::new(
            mode,
            uninspectable == UNINSPECTABLE_BLOCK,
            args.hold_timeout,
            std::sync::Arc::new(set),
            execs,
        ),
        socks,
        quic_deny,
        wire_quic,
        deferred,
        reclaim: wire_reclaim::WireReclaim::default(),
        last_sweep: Instant::now(),
        started: Instant::now(),
        store_path,
        exporter,
        kernel_features,
        notes: plan.notes,
        adopted,
        running: (start_mode, args.uninspectable, args.hold_timeout),
        fleet_mode,
        fleet,
        fleet_applied,
        can_block,
        heartbeats: heartbeat::Heartbeats::default(),
    };
    let logger = kernel_logger.map(|logger| runtime.spawn(kernel::forward_logs(logger)));
    let result = runtime.block_on(daemon.serve(events, listener));
    if let Some(logger) = logger {
        logger.abort();
    }
    let _ = std::fs::remove_file(&args.control);
    result.map(|_| ExitCode::SUCCESS)
}

struct Daemon {
    /// The command line, to resolve the configuration again on SIGHUP.
    cli_args: RunArgs,
    args: Settings,
    kernel: Kernel,
    policy: std::sync::mpsc::Sender<policy_worker::Job>,
    policy_updates: tokio::sync::mpsc::UnboundedReceiver<std::sync::Arc<monitor_core::policy::IndicatorSet>>,
    indicator_files: Vec<String>,
    sink: Sink,
    flows: Flows,
    socks: SockHash<MapData, u64>,
    quic_deny: aya::maps::HashMap<MapData, u64, u32>,
    /// Forwarded QUIC flows (TC): denied ones, and ones to forget.
    wire_quic: aya::maps::HashMap<MapData, WireFlowKey, u32>,
    /// User space's answers for connections the kernel left to it.
    deferred: aya::maps::HashMap<MapData, u64, u32>,
    /// The forwarded flows the kernel tracks, reclaimed when no FIN or RST ends them.
    reclaim: wire_reclaim::WireReclaim,
    last_sweep: Instant,
    started: Instant,
    store_path: Option<PathBuf>,
    /// `--export`: reads the store it started with (a new store path takes a restart).
    exporter: Option<monitor_fleet::Exporter>,
    /// What the probe found at start, and what the daemon said about what is missing.
    kernel_features: features::Features,
    notes: Vec<String>,
    /// The pin directory whose enforcement this daemon adopted at start.
    adopted: Option<String>,
    /// The mode, uninspectable choice and hold timeout the kernel runs with now.
    running: (Mode, Uninspectable, std::time::Duration),
    /// `--policy`: the fleet's mode for this agent, and what status shows of the policy.
    fleet_mode: Option<Mode>,
    fleet: Option<fleet_policy::FleetPolicyStatus>,
    /// The policy worker's outcome for each fleet revision.
    fleet_applied: tokio::sync::mpsc::UnboundedReceiver<policy_worker::FleetApplied>,
    /// What was loaded can enforce block mode (a fleet policy may ask for it later).
    can_block: bool,
    /// `--export`: the rate between heartbeats.
    heartbeats: heartbeat::Heartbeats,
}

impl Daemon {
    async fn serve(
        mut self,
        events: RingBuf<MapData>,
        listener: std::os::unix::net::UnixListener,
    ) -> anyhow::Result<()> {
        // SAFETY: the ring buffer owns its fd and keeps it open for as long as the AsyncFd holds it.
        let mut ring = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(|e| anyhow::anyhow!("watch the ring buffer: {e}"))?;
        let (calls_tx, mut calls) = mpsc::channel::<Call>(16);
        // The metrics endpoint asks for the status on a channel of its own: it is no control client.
        let (status_tx, mut status_requests) = mpsc::channel::<tokio::sync::oneshot::Sender<Status>>(16);
        if let Some(addr) = self.args.metrics {
            let metrics = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("listen for metrics on {addr}"))?;
            info!("metrics on http://{addr}/metrics");
            tokio::spawn(metrics::serve(metrics, status_tx));
        }
        tokio::spawn(control::serve(listener, calls_tx));
        let (fleet_tx, mut fleet_events) = mpsc::unbounded_channel();
        if let Some(options) = self.args.policy.clone() {
            tokio::spawn(monitor_fleet::policy::watch(options, fleet_tx));
        } else {
            drop(fleet_tx);
        }
        let mut sigterm = tokio::signal::unix::signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut sigint = tokio::signal::unix::signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let mut sighup = tokio::signal::unix::signal(SignalKind::hangup()).context("SIGHUP handler")?;
        let mut tick = tokio::time::interval(TICK);
        // `--export`: the first heartbeat at once (a new device shows up when it is ready), then every
        // interval.
        let mut heartbeat = tokio::time::interval(
            self.args.export.as_ref().map_or(std::time::Duration::from_secs(3_600), |e| e.heartbeat_interval),
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_poll = Instant::now();
        let mut reported_drops = [0u64; DROP_REASONS as usize];
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard.context("wait on the ring buffer")?;
                    self.drain_ring(guard.get_inner_mut());
                    guard.clear_ready();
                }
                Some(reply) = status_requests.recv() => {
                    let _ = reply.send(self.status());
                }
                Some(call) = calls.recv() => match call.request {
                    Request::Add { list, values } if call.peer_uid == 0 => self.change(&list, &values, true, call.reply),
                    Request::Remove { list, values } if call.peer_uid == 0 => self.change(&list, &values, false, call.reply),
                    request => {
                        let answer = self.handle(request, call.peer_uid);
                        let _ = call.reply.send(answer);
                    }
                },
                _ = tick.tick() => {
                    self.drain_ring(ring.get_mut());
                    self.flows.tick(&mut self.sink);
                    self.release_judged();
                    if self.last_sweep.elapsed() >= wire_reclaim::SWEEP_EVERY {
                        self.last_sweep = Instant::now();
                        self.reclaim_wire_flows();
                    }
                    if last_poll.elapsed() >= DROPS_POLL {
                        last_poll = Instant::now();
                        if let Ok(drops) = self.kernel.drops() {
                            for (i, (&now, seen)) in drops.iter().zip(reported_drops.iter_mut()).enumerate() {
                                if now > *seen {
                                    warn!("kernel dropped {} records ({}); total {now}", now - *seen, drop_reason_name(i as u32));
                                    *seen = now;
                                }
                            }
                        }
                    }
                }
                _ = heartbeat.tick(), if self.exporter.is_some() => {
                    let interval = heartbeat.period();
                    let info = self.heartbeats.next(&self.status(), &self.sink.device_name, interval, Instant::now());
                    if let Some(exporter) = &self.exporter {
                        exporter.heartbeat(info);
                    }
                }
                Some(event) = fleet_events.recv() => self.on_fleet_policy(event),
                Some((revision, outcome)) = self.fleet_applied.recv() => {
                    if let Some(status) = &mut self.fleet {
                        status.applied(revision, outcome);
                    }
                }
                Some(set) = self.policy_updates.recv() => {
                    // The previous set goes here; with a million indicators that is a lot of heap.
                    self.flows.set = set;
                    release_freed_memory();
                }
                _ = sighup.recv() => {
                    info!("SIGHUP: reloading the configuration and the indicators");
                    self.reload_config();
                    let _ = self.policy.send(policy_worker::Job::Reload);
                }
                _ = sigterm.recv() => break,
                _ = sigint.recv() => break,
            }
            self.sink.flush_events();
        }
        info!("stopping: flushing events");
        self.drain_ring(ring.get_mut());
        self.flows.drain(&mut self.sink);
        self.sink.close()?;
        // Dropping `kernel` detaches every program.
        Ok(())
    }

    fn drain_ring(&mut self, ring: &mut RingBuf<MapData>) {
        while let Some(item) = ring.next() {
            self.flows.counters.records += 1;
            let Some(record) = records::decode(&item) else {
                self.flows.counters.undecodable_records += 1;
                continue;
            };
            drop(item);
            match record {
                Record::Process(r) => self.flows.on_process(&r, &mut self.sink),
                Record::Established(r) => self.flows.on_established(&r, &mut self.sink),
                Record::Failed(r) => self.flows.on_failed(&r, &mut self.sink),
                Record::Closed(r) => self.flows.on_closed(&r, &mut self.sink),
                Record::Payload(r) => self.flows.on_payload(&r, &mut self.sink),
                Record::Verdict(r) => self.flows.on_verdict(&r, &mut self.sink),
                Record::Wire(r) => {
                    self.reclaim.on_wire(&r);
                    self.flows.on_wire(&r, &mut self.sink)
                }
                Record::WireVerdict(r) => self.flows.on_wire_verdict(&r, &mut self.sink),
                Record::Reply(r) => self.flows.on_reply(&r, &mut self.sink),
                Record::Quic(r) => self.flows.on_quic(&r, &mut self.sink),
                Record::WireQuic(r) => self.flows.on_wire_quic(&r, &mut self.sink),
                Record::Hold(r) => self.flows.on_hold(&r),
                Record::Defer(r) => self.flows.on_defer(&r),
            }
        }
        self.release_judged();
    }

    /// Sockets the kernel has judged leave SOCKS, so their later sends skip the sk_msg path entirely.
    fn release_judged(&mut self) {
        // First, so that bytes waiting at egress go as soon as TCP sends them again.
        for (cookie, next) in self.flows.deferred_answers.drain(..) {
            if let Err(e) = self.deferred.insert(cookie, next, 0) {
                warn!("could not answer a deferred connection: {e}");
            }
        }
        for cookie in self.flows.judged.drain(..) {
            // Already gone when the socket closed first.
            let _ = self.socks.remove(&cookie);
        }
        for target in self.flows.aborts.drain(..) {
            match abort::abort(target.clone()) {
                Ok(()) => info!(
                    "aborted {}:{} -> {}:{}: {}",
                    target.local.0,
                    target.local.1,
                    target.remote.0,
                    target.remote.1,
                    target.why.describe()
                ),
                // Gone already: the client closed it, or wrote again and the kernel refused it.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => warn!(
                    "could not abort {}:{} -> {}:{} ({}): {e}",
                    target.local.0,
                    target.local.1,
                    target.remote.0,
                    target.remote.1,
                    target.why.describe()
                ),
            }
        }
        for key in self.flows.denied_quic.drain(..) {
            let denied = match key {
                QuicKey::Socket(cookie) => self.quic_deny.insert(cookie, 1, 0),
                QuicKey::Wire(key) => self.wire_quic.insert(key, WIRE_QUIC_DENIED, 0),
            };
            if let Err(e) = denied {
                warn!("could not deny a QUIC flow: {e}");
            }
        }
        for key in std::mem::take(&mut self.flows.refused_wires) {
            match self.kernel.refuse_wire_flow(&key) {
                Ok(true) => info!(
                    "refused forwarded flow {}: a denied target the kernel let through",
                    records::wire_text(&key)
                ),
                Ok(false) => {}
                Err(e) => warn!("could not refuse a forwarded flow: {e:#}"),
            }
        }
        for key in self.flows.expired_wire_quic.drain(..) {
            // Gone already when the table's LRU evicted it.
            let _ = self.wire_quic.remove(&key);
        }
    }

    /// Forwarded flows no FIN or RST removed from the kernel's table: delete what is judged and
    /// reported, refuse what stayed silent too long (block mode).
    fn reclaim_wire_flows(&mut self) {
        let now = flows::clock_ns(libc::CLOCK_MONOTONIC).max(0) as u64;
        let due = self.reclaim.due(now);
        if due.is_empty() {
            return;
        }
        let (block, silent) = (self.running.0 == Mode::Block, self.args.silent_flow_timeout);
        let flows = &self.flows;
        let outcomes = self.kernel.reclaim_wire_flows(&due, |key, state, age| {
            wire_reclaim::decide(state, age, !flows.wire_pending(key), block, silent)
        });
        match outcomes {
            Ok(outcomes) => {
                for (key, outcome) in outcomes {
                    if outcome == Some(wire_reclaim::Reclaim::Refuse) {
                        info!(
                            "refusing forwarded flow {}: silent for {}s after its handshake (--silent-flow-timeout)",
                            records::wire_text(&key),
                            silent.as_secs_f64()
                        );
                    }
                    self.reclaim.settle(&key, outcome);
                }
            }
            Err(e) => warn!("reclaiming forwarded flows: {e:#}"),
        }
    }

    /// SIGHUP: mode, uninspectable policy, hold timeout, indicator files, the events file (reopened, for
    /// rotation) and the store take effect now; what is attached where (cgroups, interfaces, the ring
    /// buffer, sockets, pins) takes a restart, which in block mode opens no gap.
    fn reload_config(&mut self) {
        let new = match Settings::resolve(&self.cli_args) {
            Ok(new) => new,
            Err(e) => {
                error!("configuration rejected, keeping the running one: {e:#}");
                return;
            }
        };
        if (new.allow.as_ref(), new.block.as_ref()) != (self.args.allow.as_ref(), self.args.block.as_ref()) {
            match Indicators::load(new.allow.as_deref(), new.block.as_deref()) {
                Ok(indicators) => {
                    self.indicator_files = indicators.paths();
                    let _ = self.policy.send(policy_worker::Job::Files { indicators });
                }
                Err(e) => {
                    error!("indicator file rejected, keeping the previous set: {e}");
                    return;
                }
            }
        }
        // The events file is opened again even when its path is the same: that is how rotation works.
        match self.sink.reopen_events(&new.events) {
            Ok(()) => info!("events: {} (re)opened", new.events),
            Err(e) => error!("keeping the previous events file: {e:#}"),
        }
        let store_changed = (&new.store, new.store_max_age, new.store_max_bytes)
            != (&self.args.store, self.args.store_max_age, self.args.store_max_bytes);
        if store_changed {
            let retention =
                monitor_hunt::Retention { max_age: new.store_max_age, max_bytes: new.store_max_bytes };
            let opened = match &new.store {
                Some(path) => sink::open_store(path, retention)
                    .with_context(|| format!("open the event store {}", path.display()))
                    .map(Some),
                None => Ok(None),
            };
            match opened.and_then(|store| self.sink.replace_store(store)) {
                Ok(()) => {
                    info!(
                        "event store: {}",
                        new.store.as_ref().map(|p| p.display().to_string()).unwrap_or("none".into())
                    );
                    self.store_path = new.store.clone();
                    self.args.store = new.store.clone();
                    self.args.store_max_age = new.store_max_age;
                    self.args.store_max_bytes = new.store_max_bytes;
                }
                Err(e) => error!("keeping the previous event store: {e:#}"),
            }
        }
        let restart_only = [
            ("cgroups", new.cgroups != self.args.cgroups),
            ("ifaces", new.ifaces != self.args.ifaces),
            ("control", new.control != self.args.control),
            ("pin_dir", new.pin_dir != self.args.pin_dir),
            ("ring_buffer_bytes", new.ring_buffer_bytes != self.args.ring_buffer_bytes),
            ("wire_flows", new.wire_flows != self.args.wire_flows),
            ("metrics", new.metrics != self.args.metrics),
            ("device_id", new.device_id != self.args.device_id),
            ("export", new.export != self.args.export),
            (
                "policy",
                new.policy.as_ref().map(|p| (&p.nats, &p.groups))
                    != self.args.policy.as_ref().map(|p| (&p.nats, &p.groups)),
            ),
            ("store (for the export)", store_changed && self.exporter.is_some()),
        ];
        for (key, changed) in restart_only {
            if changed {
                warn!("{key} changed: it takes effect when the daemon restarts");
            }
        }
        let Settings {
            mode,
            uninspectable,
            allow,
            block,
            hold_timeout,
            events,
            silent_flow_timeout,
            prefer_local_mode,
            mode_given,
            ..
        } = new;
        self.args.prefer_local_mode = prefer_local_mode;
        self.args.mode_given = mode_given;
        self.args.silent_flow_timeout = silent_flow_timeout;
        self.args.events = events;
        self.args.hold_timeout = hold_timeout;
        self.args.mode = mode;
        self.args.uninspectable = uninspectable;
        self.args.allow = allow;
        self.args.block = block;
        self.apply_mode();
    }

    /// The mode the kernel should run: the fleet policy's, unless this configuration sets one and says
    /// that it wins (`prefer_local_mode`); audit where the kernel cannot block.
    fn wanted_mode(&mut self) -> Mode {
        let mode = fleet_policy::choose_mode(
            self.args.mode,
            self.fleet_mode,
            self.args.prefer_local_mode,
            self.args.mode_given,
        );
        let refused = mode == Mode::Block && !self.can_block;
        // The fleet's block, not this host's (whose block would not have started on this kernel).
        let fleets =
            self.fleet_mode == Some(Mode::Block) && !(self.args.prefer_local_mode && self.args.mode_given);
        if let Some(status) = self.fleet.as_mut().filter(|_| fleets || !refused) {
            if !refused {
                status.block_refused = None;
            } else if status.block_refused.is_none() {
                let why = "running audit: this kernel cannot enforce block mode (see the notes in `monitor status`)";
                warn!("fleet policy: block mode asked for; {why}");
                status.block_refused = Some(why.into());
            }
        } else if refused {
            warn!("block mode asked for, but this kernel cannot enforce it: running audit");
        }
        if refused { Mode::Audit } else { mode }
    }

    /// Writes the wanted mode, uninspectable choice and hold timeout to the kernel when they differ from
    /// what it runs.
    fn apply_mode(&mut self) {
        let want = (self.wanted_mode(), self.args.uninspectable, self.args.hold_timeout);
        if want == self.running {
            return;
        }
        let mode = mode_value(want.0);
        let uninspectable = match want.1 {
            Uninspectable::Allow => UNINSPECTABLE_ALLOW,
            Uninspectable::Block => UNINSPECTABLE_BLOCK,
        };
        let (reply, answer) = std::sync::mpsc::channel();
        let hold_timeout_ms = hold_millis(want.2);
        let _ = self.policy.send(policy_worker::Job::Mode { mode, uninspectable, hold_timeout_ms, reply });
        // One map write on the policy thread (after any reload it is busy with): wait for it.
        match answer.recv().unwrap_or_else(|_| Err("the policy thread stopped".into())) {
            Ok(()) => {
                self.flows.set_mode(mode, uninspectable == UNINSPECTABLE_BLOCK, want.2);
                info!("mode now {:?}, uninspectable {:?}, hold timeout {:?}", want.0, want.1, want.2);
                if (want.0 == Mode::Block) != (self.running.0 == Mode::Block) {
                    warn!("pinning of enforcement follows the mode the daemon started in until it restarts");
                }
                self.running = want;
            }
            Err(e) => error!("writing the new mode: {e}"),
        }
    }

    /// `--policy`: what the watcher sends.
    fn on_fleet_policy(&mut self, event: monitor_fleet::policy::PolicyEvent) {
        use monitor_fleet::policy::PolicyEvent;
        let Some(status) = &mut self.fleet else { return };
        match event {
            PolicyEvent::Link { connected, error } => status.link(connected, error),
            PolicyEvent::Apply(policy, source) => {
                status.received(&policy, source);
                self.fleet_mode = policy.mode.map(fleet_policy::mode);
                // The mode first: its one map write is not then queued behind a rewrite of large lists,
                // which the event loop would wait for.
                self.apply_mode();
                let job = policy_worker::Job::Fleet {
                    block: policy.block,
                    allow: policy.allow,
                    revision: policy.revision,
                };
                if self.policy.send(job).is_err()
                    && let Some(status) = &mut self.fleet
                {
                    status.failed("the policy thread stopped".into());
                }
            }
        }
    }

    fn handle(&mut self, request: Request, peer_uid: u32) -> Value {
        let kind = ListKind::from_name;
        match request {
            Request::Status => json!({ "ok": true, "status": self.status() }),
            Request::List { list } => {
                let mut lists = serde_json::Map::new();
                for k in [ListKind::Allow, ListKind::Block] {
                    if list.as_deref().is_some_and(|l| kind(l) != Some(k)) {
                        continue;
                    }
                    let entries: Vec<String> = self.flows.set.list(k).iter().map(|i| i.to_string()).collect();
                    lists.insert(k.to_string(), Value::from(entries));
                }
                json!({ "ok": true, "lists": lists })
            }
            Request::Add { .. } | Request::Remove { .. } if peer_uid != 0 => {
                control::error("only root may change policy")
            }
            // Root's changes are answered by `change`, off the loop.
            Request::Add { .. } | Request::Remove { .. } => {
                control::error("internal: policy change not routed")
            }
        }
    }

    /// `indicators add|remove`: parsed here, applied on the policy thread; the answer comes when the
    /// kernel holds the new set.
    fn change(
        &mut self,
        list: &str,
        values: &[String],
        add: bool,
        reply: tokio::sync::oneshot::Sender<Value>,
    ) {
        let Some(kind) = ListKind::from_name(list) else {
            let _ = reply.send(control::error(&format!("unknown list {list:?} (allow or block)")));
            return;
        };
        let mut indicators = Vec::new();
        for v in values {
            match Indicator::parse(v.trim()) {
                Ok(i) => indicators.push(i),
                Err(reason) => {
                    let _ = reply.send(control::error(&format!("{v:?}: {reason}")));
                    return;
                }
            }
        }
        let (done, answer) = tokio::sync::oneshot::channel();
        if self.policy.send(policy_worker::Job::Change { kind, indicators, add, reply: done }).is_err() {
            let _ = reply.send(control::error("the policy thread stopped"));
            return;
        }
        tokio::spawn(async move {
            let value = match answer.await {
                Ok(Ok(message)) => json!({ "ok": true, "message": message }),
                Ok(Err(e)) => control::error(&e),
                Err(_) => control::error("the policy thread stopped"),
            };
            let _ = reply.send(value);
        });
    }

    fn status(&self) -> Status {
        let kernel_drops =
            self.kernel.drops().ok().map(|d| {
                (0..DROP_REASONS).map(|i| (drop_reason_name(i).to_string(), d[i as usize])).collect()
            });
        let (allow, block) = self.flows.set.counts();
        let (sockets_inspected, forwarded_flows) = self.kernel.flow_entries(&self.socks);
        let uptime = self.started.elapsed().as_secs_f64();
        Status {
            mode: format!("{:?}", self.running.0).to_lowercase(),
            pid: std::process::id(),
            uptime_seconds: uptime,
            attached: self.kernel.attachments.clone(),
            indicators: status::Indicators { allow, block, files: self.indicator_files.clone() },
            events: self.sink.emitted,
            events_per_second: self.sink.emitted as f64 / uptime.max(1e-3),
            write_errors: self.sink.write_errors,
            store: status::Store {
                path: self.store_path.as_ref().map(|p| p.display().to_string()),
                bytes: self.store_path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map(|m| m.len()),
                dropped: self.sink.store().map(|s| s.dropped()),
            },
            flows: self.flows.counters,
            open_flows: self.flows.open_count(),
            kernel_flow_entries: status::KernelFlowEntries {
                sockets_inspected,
                forwarded_flows,
                forwarded_capacity: self.args.wire_flows,
                forwarded_reclaimed: self.reclaim.reclaimed,
                forwarded_silent_refused: self.reclaim.silent_refused,
            },
            pin_dir: self.kernel.pin_dir.as_ref().map(|p| p.display().to_string()),
            adopted_from: self.adopted.clone(),
            degraded: self.kernel.degraded.clone(),
            notes: self.notes.clone(),
            kernel_features: self.kernel_features.clone(),
            kernel_drops,
            device_id: self.sink.device_id.clone(),
            export: self.exporter.as_ref().map(monitor_fleet::Exporter::status),
            fleet_policy: self.fleet.clone(),
        }
    }
}

/// `monitor detach`.
pub fn detach(args: crate::cli::DetachArgs) -> anyhow::Result<ExitCode> {
    if unsafe { libc::geteuid() } != 0 {
        bail!("`monitor detach` must run as root");
    }
    let dir = match args.pin_dir {
        Some(dir) => dir,
        None => kernel::bpffs()?.join("monitor"),
    };
    if !kernel::has_pins(&dir) {
        println!("nothing pinned in {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let released = kernel::detach_pinned(&dir)?;
    println!("detached: {released} links released, maps unpinned in {}", dir.display());
    Ok(ExitCode::SUCCESS)
}
