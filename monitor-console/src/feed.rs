//! New events without a reload. One poller per console (however many pages are open) reads the newest
//! events of the last [`WINDOW`] every [`POLL`] while a page listens, and sends each event it has not
//! sent before to every page (server-sent events). An event that reaches the store late (an agent's
//! export catching up) is still new if its time is within the window.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use monitor_hunt::{TimelineEvent, TimelineFilter};
use tokio::sync::broadcast;

use crate::render::event_key;
use crate::source::Source;

/// How often the store is read while a page listens.
pub const POLL: Duration = Duration::from_millis(500);
/// How far back each read looks: events stored later than this after their time are not pushed (a
/// page that reconnects reloads its lists anyway).
pub const WINDOW: Duration = Duration::from_secs(600);
/// At most this many events per read.
pub const READ_LIMIT: usize = 2_000;

/// What the pages receive.
#[derive(Debug, Clone)]
pub enum FeedMessage {
    /// The poller knows what is already there: a page loads its lists now and gets everything newer.
    Ready,
    /// A new event (its JSON).
    Event(Arc<String>),
    /// The store could not be read (the text says why); the poller tries again.
    Error(Arc<String>),
}

/// The keys of the events of the last read. A read takes the newest events, so an event of an earlier
/// read that is not in this one is older than all of it and can never come back: these keys are all that
/// must be remembered (at most [`READ_LIMIT`]).
#[derive(Debug, Default)]
pub struct Seen {
    keys: HashSet<String>,
}

/// What a read brought.
#[derive(Debug, Default)]
pub struct Fresh {
    /// The events not seen before, oldest first.
    pub events: Vec<TimelineEvent>,
    /// Every event of a full read was new: older new ones may lie beyond it, so the pages reload.
    pub overflowed: bool,
}

impl Seen {
    /// The events of `read` (the newest, at most `limit`) not seen before; `read` is what is seen after.
    pub fn fresh(&mut self, read: Vec<TimelineEvent>, limit: usize) -> Fresh {
        let keys: HashSet<String> = read.iter().map(event_key).collect();
        let full = read.len() >= limit;
        let mut events: Vec<TimelineEvent> =
            read.into_iter().filter(|e| !self.keys.contains(&event_key(e))).collect();
        let overflowed = full && events.len() == keys.len() && !self.keys.is_empty();
        events.sort_by_key(|e| (e.timestamp, e.seq));
        self.keys = keys;
        Fresh { events, overflowed }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// The feed the pages subscribe to.
#[derive(Clone)]
pub struct Feed {
    sender: broadcast::Sender<FeedMessage>,
    primed: Arc<AtomicBool>,
}

impl Feed {
    /// Starts the poller over `source`; it reads only while someone listens.
    pub fn start(source: Arc<Source>, poll: Duration) -> Feed {
        let (sender, _) = broadcast::channel(1_024);
        let feed = Feed { sender, primed: Arc::new(AtomicBool::new(false)) };
        let poller = feed.clone();
        tokio::spawn(async move { poller.run(source, poll).await });
        feed
    }

    /// A page's subscription, and whether the feed is ready already (else a Ready message comes).
    pub fn subscribe(&self) -> (broadcast::Receiver<FeedMessage>, bool) {
        let receiver = self.sender.subscribe();
        (receiver, self.primed.load(Ordering::SeqCst))
    }

    async fn run(self, source: Arc<Source>, poll: Duration) {
        let mut seen = Seen::default();
        let mut failing = false;
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if self.sender.receiver_count() == 0 {
                if self.primed.swap(false, Ordering::SeqCst) {
                    seen = Seen::default();
                }
                continue;
            }
            let reader = Arc::clone(&source);
            let now = monitor_hunt::time::now_micros();
            let read = tokio::task::spawn_blocking(move || {
                let filter = TimelineFilter {
                    since: Some(WINDOW),
                    limit: Some(READ_LIMIT),
                    ..TimelineFilter::default()
                };
                reader.events(&filter, now)
            })
            .await;
            let events = match read {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    failing = true;
                    let _ = self.sender.send(FeedMessage::Error(Arc::new(format!("{e:#}"))));
                    continue;
                }
                Err(e) => {
                    failing = true;
                    let _ = self.sender.send(FeedMessage::Error(Arc::new(format!("the reader failed: {e}"))));
                    continue;
                }
            };
            let fresh = seen.fresh(events, READ_LIMIT);
            // First read, back after a failure, or more new events than a read holds: what is there now
            // is in the lists a page loads on Ready.
            if !self.primed.load(Ordering::SeqCst) || failing || fresh.overflowed {
                failing = false;
                self.primed.store(true, Ordering::SeqCst);
                let _ = self.sender.send(FeedMessage::Ready);
                continue;
            }
            for event in fresh.events {
                let json = crate::render::event(&event).to_string();
                let _ = self.sender.send(FeedMessage::Event(Arc::new(json)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::render::sample as event;

    #[test]
    fn each_event_once_oldest_first_late_ones_too() {
        let now = 10_000_000_000;
        let mut seen = Seen::default();
        let first = seen.fresh(vec![event(2, now - 10), event(1, now - 20)], 10);
        assert_eq!(first.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![Some(1), Some(2)]);
        // The next read sees them again, a new one, and one stored late with an older time.
        let second = seen.fresh(vec![event(3, now), event(2, now - 10), event(9, now - 1_000_000)], 10);
        assert_eq!(second.events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![Some(9), Some(3)]);
        assert!(!second.overflowed);
        assert!(seen.fresh(vec![event(3, now)], 10).events.is_empty());
        assert_eq!(seen.len(), 1, "only the last read's keys are kept");
    }

    #[test]
    fn a_full_read_of_new_events_asks_for_a_reload() {
        let now = 10_000_000_000;
        let mut seen = Seen::default();
        seen.fresh(vec![event(1, now - 10)], 2);
        let burst = seen.fresh(vec![event(5, now), event(4, now - 1)], 2);
        assert!(burst.overflowed, "events 2 and 3 may be beyond the read");
        let next = seen.fresh(vec![event(6, now + 1), event(5, now)], 2);
        assert!(!next.overflowed, "the read reaches what was seen");
    }
}
