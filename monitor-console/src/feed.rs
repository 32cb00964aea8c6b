//! New events without a reload. One poller per console (however many pages are open) reads the newest
//! events of the last [`WINDOW`] every [`POLL`] while a page listens, and sends each event it has not
//! sent before to every page (server-sent events). An event that reaches the store late (an agent's
//! export catching up) is still new if its time is within the window.

use std::collections::HashMap;
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

/// The events already sent, by key, with their time; forgotten once older than the window.
#[derive(Debug, Default)]
pub struct Seen {
    keys: HashMap<String, i64>,
}

impl Seen {
    /// The events of `read` not seen before, oldest first; all of them are seen afterwards.
    pub fn fresh(&mut self, read: Vec<TimelineEvent>, now: i64) -> Vec<TimelineEvent> {
        let mut fresh: Vec<TimelineEvent> =
            read.into_iter().filter(|e| self.keys.insert(event_key(e), e.timestamp).is_none()).collect();
        fresh.sort_by_key(|e| (e.timestamp, e.seq));
        let horizon = now.saturating_sub(i64::try_from(WINDOW.as_micros()).unwrap_or(i64::MAX) * 2);
        self.keys.retain(|_, at| *at >= horizon);
        fresh
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
                reader.events(None, &filter, now)
            })
            .await;
            let events = match read {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    let _ = self.sender.send(FeedMessage::Error(Arc::new(format!("{e:#}"))));
                    continue;
                }
                Err(e) => {
                    let _ = self.sender.send(FeedMessage::Error(Arc::new(format!("the reader failed: {e}"))));
                    continue;
                }
            };
            let fresh = seen.fresh(events, now);
            if !self.primed.load(Ordering::SeqCst) {
                // What is there now is in the lists a page loads on Ready.
                self.primed.store(true, Ordering::SeqCst);
                let _ = self.sender.send(FeedMessage::Ready);
                continue;
            }
            for event in fresh {
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
        let first = seen.fresh(vec![event(2, now - 10), event(1, now - 20)], now);
        assert_eq!(first.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![Some(1), Some(2)]);
        // The next read sees them again, a new one, and one stored late with an older time.
        let second = seen.fresh(vec![event(3, now), event(2, now - 10), event(9, now - 1_000_000)], now);
        assert_eq!(second.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![Some(9), Some(3)]);
        assert!(seen.fresh(vec![event(3, now)], now).is_empty());
    }

    #[test]
    fn old_keys_are_forgotten() {
        let now = 10_000_000_000;
        let mut seen = Seen::default();
        seen.fresh(vec![event(1, now - 3 * WINDOW.as_micros() as i64), event(2, now)], now);
        assert_eq!(seen.len(), 1, "only the recent key is kept");
    }
}
