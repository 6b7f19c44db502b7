//! Bookkeeping of the measured window: outcome counters, latency histograms (µs, three
//! significant digits) and the final `Report`, rendered as JSON or text.
//!
//! Latency is measured from the request's *intended* start (coordinated-omission correction),
//! so time spent waiting for a free connection or behind a slow response counts. The service
//! time (from the moment the request was handed to a connection) is kept too, for comparison.
//! Only 2xx responses enter the histograms; everything else is counted as an error.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::time::{Duration, Instant};

/// Largest latency a histogram holds: one hour. Longer values are clamped to it.
const MAX_MICROS: u64 = 3_600_000_000;

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A response with this status whose body was read to the end.
    Response(u16),
    /// The connection failed while the request was in flight (reset, protocol error).
    Io,
    /// No complete response within the request timeout, or still unanswered when the run
    /// ended.
    Timeout,
}

/// Counters and histograms for the requests of the measured window.
pub struct Recorder {
    latency: Histogram<u64>,
    service: Histogram<u64>,
    pub intended: u64,
    pub sent: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub io_errors: u64,
    pub timeouts: u64,
    pub body_bytes: u64,
    /// When the last measured response arrived; the achieved rate runs up to it.
    pub last_done: Option<Instant>,
}

impl Default for Recorder {
    fn default() -> Self {
        Self::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            latency: histogram(),
            service: histogram(),
            intended: 0,
            sent: 0,
            ok: 0,
            non_2xx: 0,
            io_errors: 0,
            timeouts: 0,
            body_bytes: 0,
            last_done: None,
        }
    }

    /// Records a finished request: `intended` is its scheduled start, `sent` when a
    /// connection took it (None if it never got one), `done` when it ended.
    pub fn record(
        &mut self,
        outcome: Outcome,
        intended: Instant,
        sent: Option<Instant>,
        done: Instant,
        body_bytes: u64,
    ) {
        match outcome {
            Outcome::Response(status) if (200..300).contains(&status) => {
                self.ok += 1;
                self.body_bytes += body_bytes;
                self.latency.saturating_record(micros(done.saturating_duration_since(intended)));
                if let Some(sent) = sent {
                    self.service.saturating_record(micros(done.saturating_duration_since(sent)));
                }
                self.last_done = Some(self.last_done.map_or(done, |t| t.max(done)));
            }
            Outcome::Response(_) => {
                self.non_2xx += 1;
                self.last_done = Some(self.last_done.map_or(done, |t| t.max(done)));
            }
            Outcome::Io => self.io_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    pub fn errors(&self) -> u64 {
        self.non_2xx + self.io_errors + self.timeouts
    }

    pub fn latency(&self) -> Percentiles {
        Percentiles::of(&self.latency)
    }

    pub fn service_time(&self) -> Percentiles {
        Percentiles::of(&self.service)
    }
}

/// An empty histogram of microseconds, 1 µs to one hour, three significant digits.
pub fn histogram() -> Histogram<u64> {
    // Both bounds are constants that satisfy the crate's rules (low >= 1, high >= 2 * low).
    Histogram::new_with_bounds(1, MAX_MICROS, 3).unwrap_or_else(|_| unreachable!())
}

pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Latency percentiles in milliseconds; all `None` when nothing was recorded.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub max: Option<f64>,
    pub mean: Option<f64>,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| Some(us as f64 / 1000.0);
        Percentiles {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: Some(h.mean().round() / 1000.0),
        }
    }
}

/// Everything one run found, as printed with `--output json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub url: String,
    pub method: &'static str,
    pub protocol: &'static str,
    /// The open-loop rate; `None` in closed loop (`--rate max`).
    pub target_rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub connections: usize,
    pub threads: usize,
    pub body_size: usize,
    /// Requests scheduled in the measured window.
    pub intended: u64,
    /// Of those, requests that got a connection and were sent.
    pub sent: u64,
    pub ok: u64,
    pub errors: u64,
    pub non_2xx: u64,
    pub io_errors: u64,
    pub timeouts: u64,
    /// Failed connection attempts during the whole run (warm-up included).
    pub connect_errors: u64,
    /// Connections re-established after one closed or failed (warm-up included).
    pub reconnects: u64,
    /// Answered requests (any status) per second, from the start of the measured window to
    /// the last answer.
    pub achieved_rate: f64,
    pub mean_body_bytes: f64,
    /// From the intended start: what a user would see.
    pub latency_ms: Percentiles,
    /// From the moment a connection took the request.
    pub service_time_ms: Percentiles,
    /// How late the generator picked requests up after their intended start (its own error,
    /// included in `latency_ms`).
    pub lag_ms: Percentiles,
    /// Most requests waiting for a free connection at once.
    pub max_queued: usize,
    pub max_lag_ms: f64,
    /// Requests the generator picked up more than 10 ms after their intended start.
    pub late_requests: u64,
    pub fell_behind: bool,
    /// The generator's own CPU time over the whole run, as a percentage of one core.
    pub generator_cpu_percent: f64,
}

impl Report {
    pub fn text(&self) -> String {
        let p = |x: Option<f64>| x.map_or("-".to_string(), |v| format!("{v:.3}"));
        let line = |name: &str, q: &Percentiles| {
            format!(
                "{name}: p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  mean {}\n",
                p(q.p50),
                p(q.p90),
                p(q.p99),
                p(q.p999),
                p(q.max),
                p(q.mean)
            )
        };
        let mut s = format!(
            "{} {} at {} for {}s (warm-up {}s excluded), {} {} connection(s), {} thread(s)\n",
            self.method,
            self.url,
            self.target_rate
                .map_or("the most the connections allow (closed loop)".to_string(), |r| format!("{r} req/s")),
            self.duration_s,
            self.warmup_s,
            self.connections,
            self.protocol,
            self.threads
        );
        s += &format!(
            "requests: intended {}, sent {}, ok {}, errors {} (non-2xx {}, io {}, timeout {}); connect errors {}, reconnects {}\n",
            self.intended,
            self.sent,
            self.ok,
            self.errors,
            self.non_2xx,
            self.io_errors,
            self.timeouts,
            self.connect_errors,
            self.reconnects
        );
        s += &format!("achieved rate: {:.1} req/s; mean body {:.0} bytes\n", self.achieved_rate, self.mean_body_bytes);
        s += &line("latency ms (from intended start)", &self.latency_ms);
        s += &line("service time ms (from send)    ", &self.service_time_ms);
        s += &line("generator lag ms (own delay)    ", &self.lag_ms);
        s += &format!(
            "generator: max lag {:.3} ms, {} request(s) more than 10 ms late, at most {} waiting for a connection, CPU {:.1}% of a core\n",
            self.max_lag_ms, self.late_requests, self.max_queued, self.generator_cpu_percent
        );
        if self.fell_behind {
            s += "WARNING: the generator fell behind its schedule (lag > 10 ms); latencies include its own delay\n";
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_counts_from_the_intended_start() {
        let mut r = Recorder::new();
        let t0 = Instant::now();
        // 1,000 requests with latencies 1..=1000 µs, each sent 1 µs after its intended start
        // except one that waited 100 ms for a connection.
        for us in 1..=1000u64 {
            let intended = t0 + Duration::from_millis(us);
            let sent = intended + if us == 1000 { Duration::from_millis(100) } else { Duration::from_micros(1) };
            let done = intended + Duration::from_micros(if us == 1000 { 100_500 } else { us });
            r.record(Outcome::Response(200), intended, Some(sent), done, 1024);
        }
        let l = r.latency();
        assert_eq!(l.p50, Some(0.5));
        assert_eq!(l.p90, Some(0.9));
        assert_eq!(l.p99, Some(0.99));
        assert_eq!(l.p999, Some(0.999));
        // The one that waited shows its full 100.5 ms (to 3 significant digits).
        assert!((l.max.unwrap() - 100.5).abs() < 0.1, "{l:?}");
        // The service time does not include the wait.
        let s = r.service_time();
        assert!(s.max.unwrap() < 1.0, "{s:?}");
        assert_eq!((r.ok, r.errors(), r.body_bytes), (1000, 0, 1000 * 1024));
    }

    #[test]
    fn errors_are_counted_not_recorded() {
        let mut r = Recorder::new();
        let t0 = Instant::now();
        r.record(Outcome::Response(503), t0, Some(t0), t0 + Duration::from_millis(1), 0);
        r.record(Outcome::Io, t0, Some(t0), t0, 0);
        r.record(Outcome::Timeout, t0, None, t0 + Duration::from_secs(10), 0);
        assert_eq!((r.ok, r.non_2xx, r.io_errors, r.timeouts, r.errors()), (0, 1, 1, 1, 3));
        assert_eq!(r.latency(), Percentiles::default());
        // A non-2xx answer still counts towards the achieved rate.
        assert_eq!(r.last_done, Some(t0 + Duration::from_millis(1)));
    }

    #[test]
    fn huge_latencies_are_clamped_not_lost() {
        let mut r = Recorder::new();
        let t0 = Instant::now();
        r.record(Outcome::Response(204), t0, Some(t0), t0 + Duration::from_secs(7200), 0);
        assert_eq!(r.ok, 1);
        assert!(r.latency().max.unwrap() >= 3_599_000.0);
    }
}
