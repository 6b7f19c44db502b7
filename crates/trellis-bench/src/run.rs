//! The driver: one task that owns the fixed set of connections, the queue of requests that
//! are due but have no connection yet, and every in-flight request (polled together in a
//! `FuturesUnordered`, so a single runtime thread suffices). It turns the ticker's releases
//! into requests, re-opens connections that fail, and fills the `Recorder`.
//!
//! Every connection opens with one unmeasured request (see `client::connect_primed`).
//! HTTP/1.1: a request needs an idle connection; while all are busy it waits in the queue,
//! and that wait is part of its latency. Idle connections are taken in turn, so all of them
//! carry traffic. HTTP/2: requests are spread round-robin over the connections, any number
//! at once.
//!
//! Closed loop (`RunOptions::closed_loop`, `--rate max`) has no timetable: every free
//! connection (HTTP/2: every connection below one request in flight) gets its next request at
//! once, so the run measures the most the target can answer. Latency then runs from when each
//! request is sent; it is not corrected and only the throughput is the measurement.

use crate::client::{self, Conn, Target};
use crate::schedule::{self, LagTracker, Schedule, Tick};
use crate::stats::{Outcome, Recorder, Report};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub url: String,
    pub rate: f64,
    /// As fast as the connections allow (`rate` is ignored).
    pub closed_loop: bool,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub threads: usize,
    pub body_size: Option<usize>,
    /// HTTP/2 with prior knowledge instead of HTTP/1.1.
    pub http2: bool,
    pub grpc: Option<crate::client::Grpc>,
    /// Bound on one request, from when a connection takes it to the end of its body.
    pub timeout: Duration,
}

/// Pause before retrying a connection that could not be opened.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

enum Event {
    Request {
        tick: Tick,
        sent: Instant,
        done: Instant,
        outcome: Outcome,
        body_bytes: u64,
        /// HTTP/1.1: the connection, if it can carry another request.
        conn: Option<Conn>,
    },
    Connected(anyhow::Result<Conn>),
}

type Task = Pin<Box<dyn Future<Output = Event> + Send>>;

struct Driver {
    target: Arc<Target>,
    schedule: Schedule,
    timeout: Duration,
    /// HTTP/1.1: idle connections, used in turn (first in, first out) so that every one of
    /// them carries traffic. HTTP/2: all open connections.
    conns: VecDeque<Conn>,
    next_h2: usize,
    /// Closed loop: how many requests may be in flight (one per connection).
    connections: usize,
    queue: VecDeque<Tick>,
    tasks: FuturesUnordered<Task>,
    in_flight: usize,
    measured_in_flight: u64,
    rec: Recorder,
    lag: LagTracker,
    max_queued: usize,
    connect_errors: u64,
    reconnects: u64,
}

pub async fn run(opts: &RunOptions) -> anyhow::Result<Report> {
    let cpu_start = cpu_time();
    let wall_start = Instant::now();
    let target = Arc::new(Target::new(&opts.url, opts.body_size, opts.http2, Duration::from_secs(5), opts.grpc).await?);

    // Open the connections before the clock starts, so the first requests do not pay for it.
    let mut conns = VecDeque::with_capacity(opts.connections);
    let mut connect_errors = 0;
    let mut last_error = None;
    for _ in 0..opts.connections {
        match client::connect_primed(&target, opts.timeout).await {
            Ok(c) => conns.push_back(c),
            Err(e) => {
                connect_errors += 1;
                last_error = Some(e);
            }
        }
    }
    if conns.is_empty() {
        let e = last_error.unwrap_or_else(|| anyhow::anyhow!("no connection"));
        return Err(e.context(format!("could not open any connection to {}", target.addr)));
    }

    let schedule = Schedule {
        start: Instant::now() + Duration::from_millis(20),
        rate: opts.rate,
        warmup: opts.warmup,
        duration: opts.duration,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let ticker = if opts.closed_loop {
        drop(tx);
        schedule::spawn_phase_markers(schedule)?
    } else {
        schedule::spawn_ticker(schedule, tx)?
    };
    let closed_loop_end = tokio::time::Instant::from_std(schedule.end());

    let mut d = Driver {
        target,
        schedule,
        timeout: opts.timeout,
        conns,
        next_h2: 0,
        connections: opts.connections,
        queue: VecDeque::new(),
        tasks: FuturesUnordered::new(),
        in_flight: 0,
        measured_in_flight: 0,
        rec: Recorder::new(),
        lag: LagTracker::default(),
        max_queued: 0,
        connect_errors,
        reconnects: 0,
    };
    for _ in d.conns.len()..opts.connections {
        d.reconnect(true);
    }

    let mut ticks_done = false;
    let mut deadline = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
    loop {
        if opts.closed_loop && !ticks_done {
            d.fill_closed_loop();
            d.dispatch();
        }
        tokio::select! {
            biased;
            tick = rx.recv(), if !ticks_done && !opts.closed_loop => match tick {
                Some(tick) => {
                    if tick.measured {
                        d.lag.record(Instant::now().saturating_duration_since(tick.intended));
                        d.rec.intended += 1;
                    }
                    d.queue.push_back(tick);
                }
                None => {
                    // Whatever is still queued or in flight gets one request timeout (plus a
                    // reconnect's worth) to finish.
                    ticks_done = true;
                    deadline = tokio::time::Instant::now() + d.timeout + Duration::from_secs(1);
                }
            },
            _ = tokio::time::sleep_until(closed_loop_end), if opts.closed_loop && !ticks_done => {
                ticks_done = true;
                deadline = tokio::time::Instant::now() + d.timeout + Duration::from_secs(1);
            }
            Some(event) = d.tasks.next(), if !d.tasks.is_empty() => d.handle(event, ticks_done),
            _ = tokio::time::sleep_until(deadline), if ticks_done => break,
        }
        d.dispatch();
        if d.queue.back().is_some_and(|t| t.measured) {
            d.max_queued = d.max_queued.max(d.queue.len());
        }
        if ticks_done && d.queue.is_empty() && d.in_flight == 0 {
            break;
        }
    }
    // Past the deadline: what never finished is a timeout.
    let unfinished = d.measured_in_flight + d.queue.iter().filter(|t| t.measured).count() as u64;
    d.rec.timeouts += unfinished;
    let _ = ticker.join();

    let cpu = cpu_time().saturating_sub(cpu_start);
    let wall = wall_start.elapsed();
    let answered = d.rec.ok + d.rec.non_2xx;
    let window = d
        .rec
        .last_done
        .map_or(opts.duration, |t| t.saturating_duration_since(d.schedule.measure_start()).max(opts.duration));
    Ok(Report {
        url: opts.url.clone(),
        method: d.target.method(),
        protocol: if opts.http2 { "HTTP/2" } else { "HTTP/1.1" },
        target_rate: if opts.closed_loop { None } else { Some(opts.rate) },
        duration_s: opts.duration.as_secs_f64(),
        warmup_s: opts.warmup.as_secs_f64(),
        connections: opts.connections,
        threads: opts.threads,
        body_size: opts.body_size.unwrap_or(0),
        intended: d.rec.intended,
        sent: d.rec.sent,
        ok: d.rec.ok,
        errors: d.rec.errors(),
        non_2xx: d.rec.non_2xx,
        io_errors: d.rec.io_errors,
        timeouts: d.rec.timeouts,
        connect_errors: d.connect_errors,
        reconnects: d.reconnects,
        achieved_rate: answered as f64 / window.as_secs_f64(),
        mean_body_bytes: if d.rec.ok > 0 { d.rec.body_bytes as f64 / d.rec.ok as f64 } else { 0.0 },
        latency_ms: d.rec.latency(),
        service_time_ms: d.rec.service_time(),
        lag_ms: crate::stats::Percentiles::of(&d.lag.histogram),
        max_queued: d.max_queued,
        max_lag_ms: d.lag.max.as_secs_f64() * 1000.0,
        late_requests: d.lag.late,
        fell_behind: d.lag.fell_behind(),
        generator_cpu_percent: 100.0 * cpu.as_secs_f64() / wall.as_secs_f64().max(1e-9),
    })
}

impl Driver {
    fn handle(&mut self, event: Event, finishing: bool) {
        match event {
            Event::Request { tick, sent, done, outcome, body_bytes, conn } => {
                self.in_flight -= 1;
                if tick.measured {
                    self.measured_in_flight -= 1;
                    self.rec.record(outcome, tick.intended, Some(sent), done, body_bytes);
                }
                if !self.target.http2 {
                    match conn {
                        Some(c) => self.conns.push_back(c),
                        None => self.reconnect(false),
                    }
                }
            }
            Event::Connected(Ok(c)) => {
                self.reconnects += 1;
                self.conns.push_back(c);
            }
            Event::Connected(Err(_)) => {
                self.connect_errors += 1;
                if !(finishing && self.queue.is_empty()) {
                    self.reconnect(true);
                }
            }
        }
    }

    fn reconnect(&mut self, after_delay: bool) {
        let target = self.target.clone();
        let timeout = self.timeout;
        self.tasks.push(Box::pin(async move {
            if after_delay {
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
            Event::Connected(client::connect_primed(&target, timeout).await)
        }));
    }

    /// A connection for the next request, if one is free.
    fn take_conn(&mut self) -> Option<Conn> {
        loop {
            if self.target.http2 {
                if self.conns.is_empty() {
                    return None;
                }
                let i = self.next_h2 % self.conns.len();
                if self.conns[i].is_closed() {
                    self.conns.remove(i);
                    self.reconnect(false);
                    continue;
                }
                self.next_h2 = self.next_h2.wrapping_add(1);
                if let Conn::H2(s) = &self.conns[i] {
                    return Some(Conn::H2(s.clone()));
                }
                return None;
            }
            let c = self.conns.pop_front()?;
            if c.is_closed() {
                self.reconnect(false);
                continue;
            }
            return Some(c);
        }
    }

    /// Closed loop: one request for every connection that has none in flight, due now.
    fn fill_closed_loop(&mut self) {
        let free = if self.target.http2 { self.connections.saturating_sub(self.in_flight) } else { self.conns.len() };
        let now = Instant::now();
        let measured = now >= self.schedule.measure_start() && now < self.schedule.end();
        for _ in self.queue.len()..free {
            if measured {
                self.rec.intended += 1;
            }
            self.queue.push_back(Tick { intended: now, measured });
        }
    }

    /// Starts as many queued requests as there are free connections.
    fn dispatch(&mut self) {
        while !self.queue.is_empty() {
            let Some(mut conn) = self.take_conn() else { return };
            let Some(tick) = self.queue.pop_front() else { return };
            self.in_flight += 1;
            if tick.measured {
                self.rec.sent += 1;
                self.measured_in_flight += 1;
            }
            let target = self.target.clone();
            let timeout = self.timeout;
            self.tasks.push(Box::pin(async move {
                let sent = Instant::now();
                let result = tokio::time::timeout(timeout, client::send(&mut conn, &target)).await;
                let done = Instant::now();
                let (outcome, body_bytes, reusable) = match result {
                    Ok(Ok((status, bytes))) => (Outcome::Response(status), bytes, true),
                    Ok(Err(_)) => (Outcome::Io, 0, false),
                    Err(_) => (Outcome::Timeout, 0, false),
                };
                let conn = match conn {
                    Conn::H1(_) if reusable && !conn.is_closed() => Some(conn),
                    _ => None,
                };
                Event::Request { tick, sent, done, outcome, body_bytes, conn }
            }));
        }
    }
}

/// CPU time (user + system) this process has used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we hand it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
