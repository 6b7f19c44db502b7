//! The open-loop schedule: request `i` is *intended* to start at `start + i/rate`, whatever
//! happened to earlier requests. Owns the arithmetic (how many requests, when each is due,
//! which are warm-up) and the ticker thread that releases each request at its intended time.
//!
//! The ticker is a plain OS thread rather than a tokio timer because tokio's timers have
//! millisecond granularity, which at 1,000 req/s would add up to a millisecond of the
//! generator's own error to every latency; `nanosleep` with a minimal timer slack is accurate
//! to a few microseconds. It only sleeps and sends, so it costs almost no CPU.

use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// The fixed timetable of one run: warm-up then the measured window.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub start: Instant,
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
}

/// One request released by the ticker (or, in closed loop, by a free connection).
#[derive(Clone, Copy, Debug)]
pub struct Tick {
    pub intended: Instant,
    /// Inside the measured window (not warm-up).
    pub measured: bool,
}

impl Schedule {
    /// Offset of request `i` from the start. Computed from `i` each time (never by adding up
    /// intervals), so rounding never accumulates into drift.
    pub fn offset(&self, i: u64) -> Duration {
        Duration::from_nanos((i as f64 * 1e9 / self.rate).round() as u64)
    }

    pub fn intended(&self, i: u64) -> Instant {
        self.start + self.offset(i)
    }

    /// Requests whose intended start falls before `offset` (`i/rate < offset`).
    fn count_before(&self, offset: Duration) -> u64 {
        (offset.as_secs_f64() * self.rate).ceil() as u64
    }

    /// Index of the first measured request; those before it are warm-up.
    pub fn first_measured(&self) -> u64 {
        self.count_before(self.warmup)
    }

    /// Total number of requests, warm-up included.
    pub fn total(&self) -> u64 {
        self.count_before(self.warmup + self.duration)
    }

    /// Requests in the measured window.
    #[cfg(test)]
    pub fn measured(&self) -> u64 {
        self.total() - self.first_measured()
    }

    #[cfg(test)]
    pub fn is_measured(&self, index: u64) -> bool {
        index >= self.first_measured()
    }

    pub fn measure_start(&self) -> Instant {
        self.start + self.warmup
    }

    pub fn end(&self) -> Instant {
        self.start + self.warmup + self.duration
    }
}

/// Releases every request at its intended time on `tx`, from a thread of its own. A request
/// whose time has already passed (the thread woke late) is released at once: the schedule
/// never slips, lateness shows up as latency and as lag. Writes `trellis-bench: measuring`
/// and `trellis-bench: schedule done` to stderr at the start and end of the measured window,
/// so a script can sample other processes at those moments.
pub fn spawn_ticker(schedule: Schedule, tx: UnboundedSender<Tick>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("trellis-bench-ticker".into()).spawn(move || {
        // The default 50 µs timer slack would make every wake-up up to 50 µs late.
        // SAFETY: prctl with PR_SET_TIMERSLACK only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
        }
        let first_measured = schedule.first_measured();
        for index in 0..schedule.total() {
            let intended = schedule.intended(index);
            sleep_until(intended);
            if index == first_measured {
                eprintln!("trellis-bench: measuring");
            }
            if tx.send(Tick { intended, measured: index >= first_measured }).is_err() {
                return;
            }
        }
        sleep_until(schedule.end());
        eprintln!("trellis-bench: schedule done");
    })
}

/// Closed loop has no timetable, only phases: writes the same `measuring` and `schedule done`
/// lines as the ticker at the start and end of the measured window.
pub fn spawn_phase_markers(schedule: Schedule) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("trellis-bench-phases".into()).spawn(move || {
        sleep_until(schedule.measure_start());
        eprintln!("trellis-bench: measuring");
        sleep_until(schedule.end());
        eprintln!("trellis-bench: schedule done");
    })
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// How late the generator itself was: the time between a request's intended start and the
/// moment the generator's event loop picked it up (before any wait for a connection, which is
/// the system under test's doing and belongs in the latency).
#[derive(Clone, Debug)]
pub struct LagTracker {
    pub max: Duration,
    /// Requests picked up more than `FELL_BEHIND` late.
    pub late: u64,
    /// Every lag, in µs.
    pub histogram: hdrhistogram::Histogram<u64>,
}

impl Default for LagTracker {
    fn default() -> Self {
        LagTracker { max: Duration::ZERO, late: 0, histogram: crate::stats::histogram() }
    }
}

/// Lag beyond which the generator is said to have fallen behind its schedule.
pub const FELL_BEHIND: Duration = Duration::from_millis(10);

impl LagTracker {
    pub fn record(&mut self, lag: Duration) {
        self.max = self.max.max(lag);
        self.histogram.saturating_record(crate::stats::micros(lag));
        if lag > FELL_BEHIND {
            self.late += 1;
        }
    }

    pub fn fell_behind(&self) -> bool {
        self.late > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(rate: f64, warmup_ms: u64, duration_ms: u64) -> Schedule {
        Schedule {
            start: Instant::now(),
            rate,
            warmup: Duration::from_millis(warmup_ms),
            duration: Duration::from_millis(duration_ms),
        }
    }

    #[test]
    fn intended_starts_are_evenly_spaced_without_drift() {
        let s = schedule(1000.0, 5_000, 30_000);
        assert_eq!(s.offset(0), Duration::ZERO);
        assert_eq!(s.offset(1), Duration::from_millis(1));
        assert_eq!(s.offset(30_000), Duration::from_secs(30));
        // A rate whose interval is not a whole number of nanoseconds still lands exactly.
        let s = schedule(3.0, 0, 10_000);
        assert_eq!(s.offset(1), Duration::from_nanos(333_333_333));
        assert_eq!(s.offset(3_000_000), Duration::from_secs(1_000_000));
    }

    #[test]
    fn warmup_requests_are_counted_apart() {
        let s = schedule(1000.0, 5_000, 30_000);
        assert_eq!(s.total(), 35_000);
        assert_eq!(s.first_measured(), 5_000);
        assert_eq!(s.measured(), 30_000);
        assert!(!s.is_measured(4_999));
        assert!(s.is_measured(5_000));
        assert_eq!(s.intended(5_000), s.measure_start());
        assert!(s.intended(s.total() - 1) < s.end());
        // 2.5 req/s for 1 s: requests at 0 s and 0.4 s and 0.8 s.
        let s = schedule(2.5, 0, 1_000);
        assert_eq!(s.total(), 3);
        // No warm-up: everything is measured.
        assert_eq!(s.first_measured(), 0);
    }

    #[test]
    fn lag_beyond_ten_ms_means_the_generator_fell_behind() {
        let mut lag = LagTracker::default();
        lag.record(Duration::from_micros(30));
        lag.record(Duration::from_millis(10));
        assert!(!lag.fell_behind());
        lag.record(Duration::from_millis(11));
        assert!(lag.fell_behind());
        assert_eq!((lag.late, lag.max), (1, Duration::from_millis(11)));
        assert_eq!(lag.histogram.len(), 3);
    }
}
