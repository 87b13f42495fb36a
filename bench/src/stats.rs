//! Counters and latency histograms shared by all connection tasks.
//!
//! Connection tasks count into locals while they handle one read's worth of frames
//! and add them here once per read ([`Stats::add`]), so a busy connection touches the
//! shared atomics once per read, not once per delivery. Latencies go to histograms
//! owned by the worker thread that measured them ([`record_latencies`]): uncontended
//! locks, merged only when the progress line or the summary asks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, LazyLock, Mutex};

use hdrhistogram::Histogram;

/// Largest latency the histograms hold, in microseconds (60 s); larger ones count as
/// this.
const MAX_LATENCY_US: u64 = 60_000_000;

/// A histogram of microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts.
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Locks `m`, ignoring poisoning (a panicking connection task must not take the
/// report down with it).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counts of one read's worth of frames, added to [`Stats`] at once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// Stamped deliveries received.
    pub delivered: u64,
    /// Deliveries received inside the measurement window (by receipt time).
    pub in_window: u64,
    /// Deliveries of messages published inside the window (by send time).
    pub measured: u64,
    /// Messages missing between two received sequence numbers of a topic.
    pub gaps: u64,
    /// Deliveries whose sequence was not above the last one seen (duplicates,
    /// reordering).
    pub out_of_order: u64,
    /// Messages without a stamp.
    pub foreign: u64,
    /// Herald `lagged` notices.
    pub lagged_notices: u64,
    /// Sum of their `dropped`.
    pub lagged_dropped: u64,
}

/// Everything the connection tasks, the publisher and the reporter share.
#[derive(Debug)]
pub struct Stats {
    /// Stamped deliveries received so far.
    pub delivered: AtomicU64,
    /// Bytes read off the connections so far.
    pub wire_bytes: AtomicU64,
    /// See [`Counts::in_window`].
    pub in_window: AtomicU64,
    /// See [`Counts::measured`].
    pub measured: AtomicU64,
    /// See [`Counts::gaps`].
    pub gaps: AtomicU64,
    /// See [`Counts::out_of_order`].
    pub out_of_order: AtomicU64,
    /// See [`Counts::foreign`].
    pub foreign: AtomicU64,
    /// See [`Counts::lagged_notices`].
    pub lagged_notices: AtomicU64,
    /// See [`Counts::lagged_dropped`].
    pub lagged_dropped: AtomicU64,
    /// Messages published so far.
    pub published: AtomicU64,
    /// Connections upgraded.
    pub connected: AtomicU64,
    /// Connections whose subscription is in effect.
    pub subscribed: AtomicU64,
    /// Connections that failed before their subscription was in effect.
    pub failed: AtomicU64,
    /// Subscribed connections that ended before the run did.
    pub disconnected: AtomicU64,
    /// Server error messages (Herald `error`, NATS `-ERR`).
    pub server_errors: AtomicU64,
    /// [`crate::clock::now_us`] when the last connection's subscription took effect.
    pub last_subscribed_us: AtomicU64,
    /// Start of the measurement window ([`crate::clock::now_us`]); `u64::MAX` before
    /// the publisher has a plan.
    pub window_start_us: AtomicU64,
    /// End of the measurement window; `u64::MAX` before the publisher has a plan.
    pub window_end_us: AtomicU64,
    /// Failed connections by kind (`refused`, `timeout`, `http_503`, …).
    pub failures: Mutex<BTreeMap<String, u64>>,
    /// Ended connections by kind (`eof`, `close_4009`, `reset`, …).
    pub disconnects: Mutex<BTreeMap<String, u64>>,
    /// The first error message of each failure and disconnect kind, and the first
    /// server error, for the report.
    pub first_errors: Mutex<BTreeMap<String, String>>,
    /// Upgrade latency (TCP connect to `101`), microseconds.
    pub connect_latency: Mutex<Histogram<u64>>,
    /// Subscribers per topic, counted as subscriptions take effect.
    pub topic_subscribers: Vec<AtomicU64>,
}

impl Stats {
    /// Empty statistics for `topics` topics.
    pub fn new(topics: u32) -> Stats {
        Stats {
            delivered: AtomicU64::new(0),
            wire_bytes: AtomicU64::new(0),
            in_window: AtomicU64::new(0),
            measured: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
            out_of_order: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            lagged_notices: AtomicU64::new(0),
            lagged_dropped: AtomicU64::new(0),
            published: AtomicU64::new(0),
            connected: AtomicU64::new(0),
            subscribed: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            disconnected: AtomicU64::new(0),
            server_errors: AtomicU64::new(0),
            last_subscribed_us: AtomicU64::new(0),
            window_start_us: AtomicU64::new(u64::MAX),
            window_end_us: AtomicU64::new(u64::MAX),
            failures: Mutex::new(BTreeMap::new()),
            disconnects: Mutex::new(BTreeMap::new()),
            first_errors: Mutex::new(BTreeMap::new()),
            connect_latency: Mutex::new(histogram()),
            topic_subscribers: (0..topics).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Adds one read's counts.
    pub fn add(&self, c: &Counts) {
        for (total, n) in [
            (&self.delivered, c.delivered),
            (&self.in_window, c.in_window),
            (&self.measured, c.measured),
            (&self.gaps, c.gaps),
            (&self.out_of_order, c.out_of_order),
            (&self.foreign, c.foreign),
            (&self.lagged_notices, c.lagged_notices),
            (&self.lagged_dropped, c.lagged_dropped),
        ] {
            if n > 0 {
                total.fetch_add(n, Relaxed);
            }
        }
    }

    /// The measurement window, `(start, end)` in [`crate::clock::now_us`].
    pub fn window(&self) -> (u64, u64) {
        (
            self.window_start_us.load(Relaxed),
            self.window_end_us.load(Relaxed),
        )
    }

    /// Counts a connection that failed before its subscription took effect.
    pub fn fail(&self, kind: String, message: String) {
        self.failed.fetch_add(1, Relaxed);
        Self::note(&self.failures, &self.first_errors, "connect", kind, message);
    }

    /// Counts a subscribed connection that ended.
    pub fn disconnect(&self, kind: String, message: String) {
        self.disconnected.fetch_add(1, Relaxed);
        Self::note(
            &self.disconnects,
            &self.first_errors,
            "disconnect",
            kind,
            message,
        );
    }

    /// Counts a server error message, keeping the first one.
    pub fn server_error(&self, message: String) {
        if self.server_errors.fetch_add(1, Relaxed) == 0 {
            lock(&self.first_errors).insert("server_error".into(), message);
        }
    }

    fn note(
        counts: &Mutex<BTreeMap<String, u64>>,
        first: &Mutex<BTreeMap<String, String>>,
        what: &str,
        kind: String,
        message: String,
    ) {
        lock(first)
            .entry(format!("{what}_{kind}"))
            .or_insert(message);
        *lock(counts).entry(kind).or_insert(0) += 1;
    }
}

/// The latency histograms of one worker thread.
#[derive(Debug)]
pub struct Latencies {
    /// Messages published inside the measurement window: the reported figures.
    pub measured: Histogram<u64>,
    /// Every delivery since the progress line last asked.
    pub recent: Histogram<u64>,
}

/// Every thread's histograms, for merging.
static ALL: LazyLock<Mutex<Vec<Arc<Mutex<Latencies>>>>> = LazyLock::new(Default::default);

thread_local! {
    /// This thread's histograms, registered in [`ALL`] when first used.
    static LOCAL: Arc<Mutex<Latencies>> = {
        let mine = Arc::new(Mutex::new(Latencies { measured: histogram(), recent: histogram() }));
        lock(&ALL).push(mine.clone());
        mine
    };
}

/// Records latencies (microseconds; `true` for a measured message) into this
/// thread's histograms.
pub fn record_latencies(batch: &[(u64, bool)]) {
    if batch.is_empty() {
        return;
    }
    LOCAL.with(|mine| {
        let mut h = lock(mine);
        for &(us, measured) in batch {
            let us = us.clamp(1, MAX_LATENCY_US);
            h.recent.saturating_record(us);
            if measured {
                h.measured.saturating_record(us);
            }
        }
    });
}

/// Every delivery's latency since the last call, merged over the threads; resets them.
pub fn take_recent() -> Histogram<u64> {
    let mut merged = histogram();
    for h in lock(&ALL).iter() {
        let mut h = lock(h);
        // Same bounds everywhere, so adding cannot fail.
        let _ = merged.add(&h.recent);
        h.recent.reset();
    }
    merged
}

/// The measured latencies, merged over the threads.
pub fn measured() -> Histogram<u64> {
    let mut merged = histogram();
    for h in lock(&ALL).iter() {
        let _ = merged.add(&lock(h).measured);
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_from_several_threads_merge() {
        let threads: Vec<_> = (0..3u64)
            .map(|i| std::thread::spawn(move || record_latencies(&[(100 + i, true), (5, false)])))
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        record_latencies(&[(0, true), (u64::MAX, false)]);
        let m = measured();
        assert!(m.len() >= 4, "{}", m.len());
        assert_eq!(m.min(), 1, "zero latencies count as 1 µs");
        let recent = take_recent();
        assert!(recent.len() >= 8);
        assert!(recent.max() >= MAX_LATENCY_US - MAX_LATENCY_US / 1000);
        assert_eq!(take_recent().len(), 0, "taking resets");
    }

    #[test]
    fn counts_add_up_and_failures_keep_their_first_message() {
        let s = Stats::new(2);
        let c = Counts {
            delivered: 3,
            measured: 2,
            gaps: 1,
            ..Counts::default()
        };
        s.add(&c);
        s.add(&c);
        assert_eq!(s.delivered.load(Relaxed), 6);
        assert_eq!(s.measured.load(Relaxed), 4);
        assert_eq!(s.gaps.load(Relaxed), 2);
        s.fail("refused".into(), "first".into());
        s.fail("refused".into(), "second".into());
        assert_eq!(lock(&s.failures)["refused"], 2);
        assert_eq!(lock(&s.first_errors)["connect_refused"], "first");
        assert_eq!(s.window(), (u64::MAX, u64::MAX));
    }
}
