//! Reclaiming the kernel's forwarded-flow table (`WIRE_FLOWS`). The kernel removes a flow's entry when
//! it sees the client's FIN or RST; this removes the rest: flows judged and reported that stay open,
//! handshakes that never completed, refused flows that went quiet. The table is a plain hash map (an LRU
//! would let a flood of SYNs evict a flow still to be judged), so what is left here would fill it.
//!
//! What may go and when is [`decide`]: pure, so the rules are unit-tested. The one rule that costs a
//! user something: in block mode a flow that stays silent past `--silent-flow-timeout` after its
//! handshake is not kept for judging forever: it is reset at its next segment.

use std::{collections::HashMap, time::Duration};

use monitor_common::record::{
    PHASE_BLOCKED, PHASE_DONE, PHASE_REFUSE, WireFlowKey, WireFlowState, WireRecord,
};

use super::records::{wire_ends, wire_key, wire_opens};

/// How often the tracked flows are looked at.
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A judged flow's entry is looked at again this often until user space has reported it.
const RECHECK: Duration = Duration::from_secs(2);
/// A refused flow's entry stays this long: a retransmit of its denied bytes meets it and is dropped.
pub const REFUSED_KEEP: Duration = Duration::from_secs(30);
/// A handshake that never completed is forgotten after this: far past SYN retries and SYN cookies.
pub const HANDSHAKE_KEEP: Duration = Duration::from_secs(600);
/// A silent flow reset at its next segment that never sends again (its client is gone) is forgotten
/// this long after it was marked.
pub const SILENT_REFUSED_KEEP: Duration = Duration::from_secs(86_400);

/// What to do with one kernel entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reclaim {
    /// Look again at the given age of the flow.
    Keep { until: Duration },
    /// Delete the entry: the flow's later segments pass untracked, which is what a judged flow's do.
    Remove,
    /// Block mode, silent too long: mark the flow refused (its next segment becomes resets).
    Refuse,
}

/// The fate of a flow's entry `age` after its SYN. `reported`: user space has written the flow's event
/// (so no late verdict can still need the entry).
pub fn decide(
    state: &WireFlowState,
    age: Duration,
    reported: bool,
    block: bool,
    silent_timeout: Duration,
) -> Reclaim {
    let keep = |until: Duration| Reclaim::Keep { until: until.max(age + SWEEP_EVERY) };
    match state.phase {
        PHASE_DONE if reported => Reclaim::Remove,
        PHASE_DONE => keep(age + RECHECK),
        PHASE_BLOCKED if age >= REFUSED_KEEP => Reclaim::Remove,
        PHASE_BLOCKED => keep(REFUSED_KEEP),
        PHASE_REFUSE if age >= silent_timeout + SILENT_REFUSED_KEEP => Reclaim::Remove,
        PHASE_REFUSE => keep(silent_timeout + SILENT_REFUSED_KEEP),
        // Still to be judged (or, outside block mode, still silent).
        _ if state.established == 0 && age >= HANDSHAKE_KEEP => Reclaim::Remove,
        _ if !block && age >= HANDSHAKE_KEEP => Reclaim::Remove,
        _ if !block => keep(HANDSHAKE_KEEP),
        _ if state.established != 0 && age >= silent_timeout => Reclaim::Refuse,
        _ if state.established != 0 => keep(silent_timeout),
        _ if age < silent_timeout => keep(silent_timeout.min(HANDSHAKE_KEEP)),
        // A handshake still not complete past the timeout: refused if it completes, forgotten if not.
        _ => keep(HANDSHAKE_KEEP),
    }
}

/// One flow the kernel has an entry for, as far as user space knows.
#[derive(Debug, Clone, Copy)]
struct Tracked {
    /// The SYN's kernel time (CLOCK_MONOTONIC, ns).
    syn_ns: u64,
    /// When to look at it next, as an age of the flow.
    next: Duration,
}

/// The forwarded flows user space saw open and has not seen end.
#[derive(Debug, Default)]
pub struct WireReclaim {
    tracked: HashMap<WireFlowKey, Tracked>,
    /// Entries deleted here, and silent flows marked refused.
    pub reclaimed: u64,
    pub silent_refused: u64,
}

impl WireReclaim {
    /// A forwarded flow's segment, as the kernel reported it.
    pub fn on_wire(&mut self, rec: &WireRecord) {
        self.on_segment(wire_key(&rec.endpoints), wire_opens(rec), wire_ends(rec), rec.header.ktime_ns);
    }

    /// A SYN opened the flow (its retransmits keep the first time); a FIN or RST ended it, and the
    /// kernel removed its entry.
    pub fn on_segment(&mut self, key: WireFlowKey, opened: bool, ended: bool, ktime_ns: u64) {
        if ended {
            self.tracked.remove(&key);
        } else if opened {
            self.tracked.entry(key).or_insert(Tracked { syn_ns: ktime_ns, next: Duration::ZERO });
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tracked.len()
    }

    /// The flows due a look at `now_ns`, with their age.
    pub fn due(&self, now_ns: u64) -> Vec<(WireFlowKey, Duration)> {
        self.tracked
            .iter()
            .filter_map(|(k, t)| {
                let age = Duration::from_nanos(now_ns.saturating_sub(t.syn_ns));
                (age >= t.next).then_some((*k, age))
            })
            .collect()
    }

    /// What happened to a flow looked at: `None` when the kernel no longer has it.
    pub fn settle(&mut self, key: &WireFlowKey, outcome: Option<Reclaim>) {
        match outcome {
            None => {
                self.tracked.remove(key);
            }
            Some(Reclaim::Remove) => {
                self.tracked.remove(key);
                self.reclaimed += 1;
            }
            // Looked at again by the next sweep, where `decide` keeps the refused entry its while.
            Some(Reclaim::Refuse) => self.silent_refused += 1,
            Some(Reclaim::Keep { until }) => {
                if let Some(t) = self.tracked.get_mut(key) {
                    t.next = until;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use monitor_common::record::{PHASE_FIRST, PHASE_TUNNEL};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn state(phase: u32, established: bool) -> WireFlowState {
        WireFlowState { phase, established: established as u32, ..Default::default() }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_judged_flow_goes_once_reported() {
        let done = state(PHASE_DONE, true);
        assert_eq!(decide(&done, secs(1), true, true, HOUR), Reclaim::Remove);
        assert_eq!(decide(&done, secs(1), true, false, HOUR), Reclaim::Remove, "audit mode alike");
        // Not reported yet: a late verdict may still need the entry.
        assert_eq!(decide(&done, secs(1), false, true, HOUR), Reclaim::Keep { until: secs(3) });
    }

    #[test]
    fn a_refused_flow_stays_for_its_retransmits() {
        let blocked = state(PHASE_BLOCKED, true);
        assert_eq!(decide(&blocked, secs(5), true, true, HOUR), Reclaim::Keep { until: REFUSED_KEEP });
        assert_eq!(decide(&blocked, REFUSED_KEEP, true, true, HOUR), Reclaim::Remove);
    }

    #[test]
    fn a_flow_still_to_be_judged_is_never_simply_dropped_in_block_mode() {
        // Established and silent: kept until the timeout, then refused, not removed (removing it would let
        // its first bytes pass unjudged).
        for phase in [PHASE_FIRST, PHASE_TUNNEL, 16, 17] {
            let open = state(phase, true);
            assert_eq!(decide(&open, secs(10), false, true, HOUR), Reclaim::Keep { until: HOUR });
            assert_eq!(decide(&open, secs(700), true, true, HOUR), Reclaim::Keep { until: HOUR });
            assert_eq!(decide(&open, HOUR, true, true, HOUR), Reclaim::Refuse, "phase {phase}");
        }
        let short = secs(2);
        assert_eq!(
            decide(&state(PHASE_FIRST, true), secs(1), false, true, short),
            Reclaim::Keep { until: short }
        );
        assert_eq!(decide(&state(PHASE_FIRST, true), short, false, true, short), Reclaim::Refuse);
        // Refused and never heard from again: forgotten a day later.
        let refused = state(PHASE_REFUSE, true);
        assert_eq!(
            decide(&refused, HOUR + secs(1), true, true, HOUR),
            Reclaim::Keep { until: HOUR + SILENT_REFUSED_KEEP }
        );
        assert_eq!(decide(&refused, HOUR + SILENT_REFUSED_KEEP, true, true, HOUR), Reclaim::Remove);
    }

    #[test]
    fn handshakes_that_never_completed_are_forgotten() {
        let syn = state(PHASE_FIRST, false);
        assert_eq!(decide(&syn, secs(30), false, true, secs(2)), Reclaim::Keep { until: HANDSHAKE_KEEP });
        assert_eq!(decide(&syn, HANDSHAKE_KEEP, false, true, secs(2)), Reclaim::Remove);
        assert_eq!(decide(&syn, secs(1), false, true, HOUR), Reclaim::Keep { until: HANDSHAKE_KEEP });
        // One that completes late is refused once it is established past the timeout.
        assert_eq!(decide(&state(PHASE_FIRST, true), secs(700), false, true, secs(2)), Reclaim::Refuse);
        // Audit mode judges nothing: a silent flow is only forgotten.
        let silent = state(PHASE_FIRST, true);
        assert_eq!(decide(&silent, HOUR, false, false, secs(2)), Reclaim::Remove);
    }

    #[test]
    fn the_tracker_follows_syn_and_fin_and_looks_when_due() {
        let key = WireFlowKey { family: 2, client_port: 1, server_port: 443, ..Default::default() };
        let mut r = WireReclaim::default();
        r.on_segment(key, true, false, 1_000);
        r.on_segment(key, true, false, 9_000_000_000); // a retransmitted SYN keeps the first time
        assert_eq!(r.due(2_000_000_000), vec![(key, Duration::from_nanos(1_999_999_000))]);
        r.settle(&key, Some(Reclaim::Keep { until: secs(10) }));
        assert!(r.due(5_000_000_000).is_empty(), "not due before its time");
        assert_eq!(r.due(10_000_001_000).len(), 1);
        r.settle(&key, Some(Reclaim::Remove));
        assert_eq!((r.len(), r.reclaimed), (0, 1));
        r.on_segment(key, true, false, 1_000);
        r.on_segment(key, false, true, 2_000);
        assert_eq!(r.len(), 0, "a FIN ends the tracking");
    }
}
