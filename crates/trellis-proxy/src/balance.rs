//! Load balancing: choosing one endpoint of a service (or subset) for each request.
//!
//! Owns the per-endpoint load signals ([`EndpointStats`]: requests in flight and a
//! peak-EWMA of latency), the algorithms that turn them into a choice ([`Balancer`]),
//! and the stable hash used for affinity keys ([`hash_key`]). A `Balancer` is immutable
//! after construction apart from atomics, so it is built once per config version and
//! endpoint set and then shared by every request; `EndpointStats` outlive balancers so a
//! config reload does not forget how loaded or slow an endpoint is.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;

/// How a [`Balancer`] chooses among endpoints: the configuration's own type, so the two
/// cannot drift. Every algorithm honours endpoint weights. The default is peak-EWMA, as in
/// Linkerd: it is the only algorithm that notices an endpoint that is slow rather than
/// busy, and it degrades to least-request when latencies are equal.
pub use trellis_api::Algorithm;

/// Time constant of the latency EWMA (Linkerd's and Finagle's default).
pub const DEFAULT_DECAY: Duration = Duration::from_secs(10);

/// Latency assumed for each outstanding request to an endpoint that has never answered.
/// See [`EndpointStats::ewma_cost`] for why an idle, never-sampled endpoint costs nothing.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// Load observed on one endpoint. Shared across config reloads (the proxy keeps one per
/// endpoint address), so it is `Send + Sync` with interior mutability.
pub struct EndpointStats {
    in_flight: AtomicUsize,
    ewma: Mutex<Ewma>,
    decay_ns: f64,
}

/// Peak-EWMA state. A mutex rather than atomics because an update reads and writes both
/// fields together; it is per endpoint and held for a few arithmetic operations.
#[derive(Clone, Copy, Debug)]
struct Ewma {
    /// Estimated latency in nanoseconds as of `stamp`; `None` until the first sample.
    estimate_ns: Option<f64>,
    stamp: Instant,
}

impl EndpointStats {
    pub fn new() -> Self {
        Self::with_decay(DEFAULT_DECAY)
    }

    /// Like [`new`](Self::new) with another EWMA time constant (clamped to at least 1 ms).
    pub fn with_decay(decay: Duration) -> Self {
        EndpointStats {
            in_flight: AtomicUsize::new(0),
            ewma: Mutex::new(Ewma { estimate_ns: None, stamp: Instant::now() }),
            decay_ns: (decay.as_nanos() as f64).max(1e6),
        }
    }

    /// Marks a request in flight; the guard decrements on drop.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight { stats: Arc::clone(self) }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records a request's latency (time to response headers) into a peak-EWMA: a sample
    /// above the current estimate replaces it at once, so a slowing endpoint is avoided
    /// immediately; a lower sample pulls the estimate toward it with weight
    /// `1 - exp(-elapsed / decay)`, so recovery is believed only gradually.
    pub fn observe_latency(&self, rtt: Duration) {
        self.observe_at(rtt, Instant::now());
    }

    fn observe_at(&self, rtt: Duration, now: Instant) {
        let sample = rtt.as_nanos() as f64;
        let mut ewma = self.lock();
        ewma.estimate_ns = Some(match ewma.estimate_ns {
            // The first sample replaces the default guess outright.
            None => sample,
            Some(estimate) => {
                let w = self.weight_of_past(ewma.stamp, now);
                // Compare with the decayed value, which is what the balancer has been
                // seeing (see `ewma_cost`), so "peak" means "worse than we thought".
                if sample > estimate * w { sample } else { estimate * w + sample * (1.0 - w) }
            }
        });
        ewma.stamp = now;
    }

    /// The latency estimate now, or `None` before the first sample.
    pub fn latency_estimate(&self) -> Option<Duration> {
        self.estimate_at(Instant::now()).map(|ns| Duration::from_nanos(ns as u64))
    }

    fn estimate_at(&self, now: Instant) -> Option<f64> {
        let ewma = *self.lock();
        // Between samples the estimate decays toward zero (Finagle decays on every read;
        // computing it here is the same without writing). An endpoint that was slow once
        // and then got no traffic therefore looks cheap again after a few time constants
        // and is probed, instead of being shunned forever.
        ewma.estimate_ns.map(|e| e * self.weight_of_past(ewma.stamp, now))
    }

    /// Peak-EWMA cost: latency estimate × (requests in flight + 1).
    ///
    /// Before the first sample the cost is [`DEFAULT_RTT`] × in flight: zero while idle, so
    /// a new endpoint wins any comparison and gets tried as soon as it is drawn, yet each
    /// outstanding request counts, so a new endpoint that never answers (black-holed)
    /// cannot soak up traffic while its first requests hang.
    pub fn ewma_cost(&self) -> f64 {
        self.cost_at(Instant::now())
    }

    fn cost_at(&self, now: Instant) -> f64 {
        let in_flight = self.in_flight() as f64;
        match self.estimate_at(now) {
            Some(estimate) => estimate * (in_flight + 1.0),
            None => DEFAULT_RTT.as_nanos() as f64 * in_flight,
        }
    }

    fn weight_of_past(&self, stamp: Instant, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(stamp).as_nanos() as f64;
        (-elapsed / self.decay_ns).exp()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ewma> {
        // Nothing can panic while the lock is held, but never propagate poisoning anyway.
        self.ewma.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for EndpointStats {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for EndpointStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EndpointStats")
            .field("in_flight", &self.in_flight())
            .field("latency_estimate", &self.latency_estimate())
            .finish()
    }
}

/// A request in flight to one endpoint; dropping it ends the request.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<EndpointStats>,
}

impl InFlight {
    pub fn stats(&self) -> &Arc<EndpointStats> {
        &self.stats
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One endpoint as the balancer sees it.
#[derive(Clone, Debug)]
pub struct BalancedEndpoint {
    /// Identifies the endpoint for RingHash and Maglev placement: hashing the address
    /// (not the list position) keeps a key on its endpoint when others come and go, and
    /// on every proxy alike.
    pub address: SocketAddr,
    /// Relative share of traffic, at least 1. Configuration validation already rejects 0;
    /// should one get here anyway it is treated as 1, so the endpoint is still used and
    /// no arithmetic divides by zero.
    pub weight: u32,
    pub stats: Arc<EndpointStats>,
}

impl BalancedEndpoint {
    pub fn new(address: SocketAddr, weight: u32, stats: Arc<EndpointStats>) -> Self {
        BalancedEndpoint { address, weight, stats }
    }
}

/// Maglev table size: a prime, as the permutations require; Google's and Envoy's default.
const MAGLEV_SIZE: usize = 65_537;
/// Ring-hash points per unit of weight.
const RING_POINTS_PER_WEIGHT: u64 = 100;
/// Ring-hash size cap: above it, points are scaled down so building stays cheap.
const RING_MAX: u64 = 100_000;
/// Round-robin cycle length cap; weights are scaled down (approximately) above it.
const ROUND_ROBIN_MAX: u64 = 65_536;
/// Largest turns × endpoints for which the round-robin cycle is built nginx's way.
const SMOOTH_BUDGET: u64 = 1 << 22;
/// Steps to walk past skipped endpoints before checking whether any is left at all.
const WALK_BEFORE_CHECK: usize = 16;
/// Weighted draws tried before falling back to an exact scan of the allowed endpoints.
const FAST_DRAWS: usize = 4;
/// Marks an empty Maglev slot during construction.
const EMPTY: u32 = u32::MAX;

/// Chooses endpoints for one endpoint set under one config version. Built once; picks
/// are concurrent (`&self`).
pub struct Balancer {
    algorithm: Algorithm,
    endpoints: Vec<BalancedEndpoint>,
    /// Weights with 0 replaced by 1.
    weights: Vec<u64>,
    /// `cumulative[i]` = sum of `weights[..=i]`, for weighted draws by binary search.
    cumulative: Vec<u64>,
    total_weight: u64,
    table: Table,
}

enum Table {
    None,
    /// One cycle of smooth weighted round robin, and the shared position in it.
    RoundRobin {
        cycle: Vec<u32>,
        next: AtomicUsize,
    },
    /// Ring points sorted by hash.
    Ring(Vec<(u64, u32)>),
    /// Maglev lookup table of `MAGLEV_SIZE` endpoint indices.
    Maglev(Vec<u32>),
}

impl Balancer {
    pub fn new(algorithm: Algorithm, endpoints: Vec<BalancedEndpoint>) -> Self {
        // Indices are stored as u32 in the tables; no endpoint set comes near that size.
        let mut endpoints = endpoints;
        endpoints.truncate(u32::MAX as usize - 1);
        let weights: Vec<u64> = endpoints.iter().map(|e| u64::from(e.weight.max(1))).collect();
        let cumulative: Vec<u64> = weights
            .iter()
            .scan(0u64, |sum, w| {
                *sum += w;
                Some(*sum)
            })
            .collect();
        let total_weight = cumulative.last().copied().unwrap_or(0);
        let table = if endpoints.is_empty() {
            Table::None
        } else {
            match algorithm {
                Algorithm::RoundRobin => {
                    let cycle = round_robin_cycle(&weights);
                    // Start each balancer at a random place so that proxies (and config
                    // reloads) don't all send their first requests to the same endpoint.
                    let start = rand::rng().random_range(0..cycle.len().max(1));
                    Table::RoundRobin { cycle, next: AtomicUsize::new(start) }
                }
                Algorithm::RingHash => Table::Ring(build_ring(&endpoints, &weights)),
                Algorithm::Maglev => Table::Maglev(build_maglev(&endpoints, &weights)),
                Algorithm::LeastRequest | Algorithm::PeakEwma | Algorithm::Random => Table::None,
            }
        };
        Balancer { algorithm, endpoints, weights, cumulative, total_weight, table }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn endpoints(&self) -> &[BalancedEndpoint] {
        &self.endpoints
    }

    pub fn endpoint(&self, index: usize) -> Option<&BalancedEndpoint> {
        self.endpoints.get(index)
    }

    /// Index of the chosen endpoint. `hash`: the request's hash key (from [`hash_key`])
    /// for RingHash/Maglev; `None` there behaves like Random. `skip(i)` returns true for
    /// endpoints to avoid (one that just failed a retry attempt, an ejected one); if every
    /// endpoint is skipped the pick ignores `skip`, degrading rather than refusing while
    /// endpoints exist. `None` only when there are no endpoints.
    pub fn pick(&self, hash: Option<u64>, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        match self.endpoints.len() {
            0 => None,
            1 => Some(0),
            _ => self.pick_avoiding(hash, skip).or_else(|| self.pick_avoiding(hash, &|_| false)),
        }
    }

    /// A pick among endpoints not skipped; `None` only when all are skipped.
    fn pick_avoiding(&self, hash: Option<u64>, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut rng = rand::rng();
        match (&self.table, hash) {
            (Table::RoundRobin { cycle, next }, _) => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                self.walk(cycle.len(), start, |k| cycle[k] as usize, skip).or_else(|| self.draw(&mut rng, skip))
            }
            (Table::Ring(ring), Some(hash)) => {
                let start = ring.partition_point(|&(point, _)| point < hash);
                self.walk(ring.len(), start, |k| ring[k].1 as usize, skip).or_else(|| self.rendezvous(hash, skip))
            }
            (Table::Maglev(table), Some(hash)) => {
                let start = (hash % table.len().max(1) as u64) as usize;
                self.walk(table.len(), start, |k| table[k] as usize, skip).or_else(|| self.rendezvous(hash, skip))
            }
            _ => match self.algorithm {
                Algorithm::LeastRequest => self.two_choices(&mut rng, skip, |e| e.stats.in_flight() as f64),
                Algorithm::PeakEwma => {
                    let now = Instant::now();
                    self.two_choices(&mut rng, skip, |e| e.stats.cost_at(now))
                }
                _ => self.draw(&mut rng, skip),
            },
        }
    }

    /// The first endpoint not skipped in `len` slots read by `at`, starting at `start`
    /// (wrapping). Gives up early once it is clear every endpoint is skipped.
    fn walk(
        &self,
        len: usize,
        start: usize,
        at: impl Fn(usize) -> usize,
        skip: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        if len == 0 {
            return None;
        }
        for k in 0..len {
            if k == WALK_BEFORE_CHECK && !(0..self.endpoints.len()).any(|i| !skip(i)) {
                return None;
            }
            let i = at((start % len + k) % len);
            if i < self.endpoints.len() && !skip(i) {
                return Some(i);
            }
        }
        None
    }

    /// Power of two choices: two distinct weighted-random candidates, the one with the
    /// lower `load / weight` wins (the first on a tie, so idle sets keep their weights).
    fn two_choices(
        &self,
        rng: &mut impl Rng,
        skip: &dyn Fn(usize) -> bool,
        load: impl Fn(&BalancedEndpoint) -> f64,
    ) -> Option<usize> {
        let a = self.draw(rng, skip)?;
        let Some(b) = self.draw(rng, &|i| i == a || skip(i)) else {
            return Some(a);
        };
        // Cross-multiplied load_a / w_a against load_b / w_b.
        let cost_a = load(&self.endpoints[a]) * self.weights[b] as f64;
        let cost_b = load(&self.endpoints[b]) * self.weights[a] as f64;
        // Only strictly cheaper wins, so a tie (or a NaN, which cannot arise) keeps `a`.
        if cost_b < cost_a { Some(b) } else { Some(a) }
    }

    /// Weighted random among endpoints `avoid` allows; `None` if it allows none.
    fn draw(&self, rng: &mut impl Rng, avoid: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.total_weight == 0 {
            return None;
        }
        // Rejection sampling is exact and cheap while few endpoints are avoided.
        for _ in 0..FAST_DRAWS {
            let r = rng.random_range(0..self.total_weight);
            let i = self.cumulative.partition_point(|&c| c <= r).min(self.endpoints.len() - 1);
            if !avoid(i) {
                return Some(i);
            }
        }
        let allowed: Vec<usize> = (0..self.endpoints.len()).filter(|&i| !avoid(i)).collect();
        let total: u64 = allowed.iter().map(|&i| self.weights[i]).sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.random_range(0..total);
        for &i in &allowed {
            if r < self.weights[i] {
                return Some(i);
            }
            r -= self.weights[i];
        }
        allowed.last().copied()
    }

    /// Deterministic weighted rendezvous hashing among allowed endpoints: the fallback of
    /// the hash algorithms when walking their table finds nothing, which only happens for
    /// endpoints too light to hold any Maglev slot.
    fn rendezvous(&self, hash: u64, skip: &dyn Fn(usize) -> bool) -> Option<usize> {
        let mut best: Option<(f64, usize)> = None;
        for (i, e) in self.endpoints.iter().enumerate() {
            if skip(i) {
                continue;
            }
            let h = mix64(hash ^ address_hash(&e.address, 0));
            // Uniform in (0, 1]; score = -w / ln(u) is the weighted-rendezvous rule.
            let u = ((h >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
            let score = -(self.weights[i] as f64) / u.ln().min(-f64::MIN_POSITIVE);
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let table_len = match &self.table {
            Table::None => 0,
            Table::RoundRobin { cycle, .. } => cycle.len(),
            Table::Ring(ring) => ring.len(),
            Table::Maglev(table) => table.len(),
        };
        f.debug_struct("Balancer")
            .field("algorithm", &self.algorithm)
            .field("endpoints", &self.endpoints)
            .field("table_len", &table_len)
            .finish()
    }
}

/// One cycle of smooth weighted round robin, so that a pick is one atomic increment.
///
/// Computed with nginx's algorithm (each step every endpoint gains its weight, the
/// richest is chosen and pays the total), which interleaves turns evenly: weights 5,1,1
/// give a a b a c a a, not a a a a a b c. That costs O(T·N) for a cycle of T turns over
/// N endpoints, so past `SMOOTH_BUDGET` the cycle is built earliest-deadline-first
/// instead (as Envoy schedules weighted round robin; turn `c` of an endpoint is due at
/// `(c + ½) / weight`), which is as even up to ties and costs O(T log N).
fn round_robin_cycle(weights: &[u64]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = w.iter().sum();
    if total > ROUND_ROBIN_MAX {
        // Scale down: shares stay within one turn per cycle of exact.
        for x in &mut w {
            *x = ((*x as u128 * ROUND_ROBIN_MAX as u128 / total as u128) as u64).max(1);
        }
    }
    let total: u64 = w.iter().sum();
    if total.saturating_mul(w.len() as u64) <= SMOOTH_BUDGET {
        nginx_cycle(&w, total)
    } else {
        deadline_cycle(&w, total)
    }
}

fn nginx_cycle(w: &[u64], total: u64) -> Vec<u32> {
    let mut current = vec![0i64; w.len()];
    let mut cycle = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        cycle.push(best as u32);
    }
    cycle
}

fn deadline_cycle(w: &[u64], total: u64) -> Vec<u32> {
    #[derive(PartialEq, Eq)]
    struct Turn {
        turn: u64,
        weight: u64,
        index: u32,
    }
    impl Ord for Turn {
        fn cmp(&self, other: &Self) -> CmpOrdering {
            // Deadline (2·turn + 1) / (2·weight), earliest first (BinaryHeap is a max-heap),
            // ties to the lower index.
            let mine = (2 * self.turn as u128 + 1) * other.weight as u128;
            let theirs = (2 * other.turn as u128 + 1) * self.weight as u128;
            theirs.cmp(&mine).then_with(|| other.index.cmp(&self.index))
        }
    }
    impl PartialOrd for Turn {
        fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
            Some(self.cmp(other))
        }
    }

    let mut heap: BinaryHeap<Turn> =
        w.iter().enumerate().map(|(i, &weight)| Turn { turn: 0, weight, index: i as u32 }).collect();
    let mut cycle = Vec::with_capacity(total as usize);
    while (cycle.len() as u64) < total {
        let Some(mut t) = heap.pop() else { break };
        cycle.push(t.index);
        t.turn += 1;
        heap.push(t);
    }
    cycle
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Ketama-style ring: `100 × weight` points per endpoint (scaled down so the ring stays
/// under `RING_MAX`), each at the hash of (address, point number), sorted.
fn build_ring(endpoints: &[BalancedEndpoint], weights: &[u64]) -> Vec<(u64, u32)> {
    let desired: u64 = weights.iter().map(|w| w * RING_POINTS_PER_WEIGHT).sum();
    let mut ring = Vec::new();
    for (i, (e, &w)) in endpoints.iter().zip(weights).enumerate() {
        let points = if desired > RING_MAX {
            ((w as u128 * RING_POINTS_PER_WEIGHT as u128 * RING_MAX as u128 / desired as u128) as u64).max(1)
        } else {
            w * RING_POINTS_PER_WEIGHT
        };
        let seed = address_hash(&e.address, 0);
        for p in 0..points {
            ring.push((xxh64(&p.to_le_bytes(), seed), i as u32));
        }
    }
    // Ties (vanishingly rare) are broken by address so every proxy builds the same ring.
    ring.sort_unstable_by(|a, b| {
        a.0.cmp(&b.0).then_with(|| endpoints[a.1 as usize].address.cmp(&endpoints[b.1 as usize].address))
    });
    ring
}

/// Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4) with Envoy's weighting: every
/// endpoint walks its own permutation of the table (offset and skip from two hashes of
/// its address) claiming the next free slot, and an endpoint of weight `w` takes a turn
/// in `w / max_weight` of the rounds.
fn build_maglev(endpoints: &[BalancedEndpoint], weights: &[u64]) -> Vec<u32> {
    let m = MAGLEV_SIZE as u64;
    let max_weight = weights.iter().copied().max().unwrap_or(1).max(1);
    let n = endpoints.len();
    // Sort by address so the table does not depend on the order endpoints are listed.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| endpoints[a].address.cmp(&endpoints[b].address));
    let offset: Vec<u64> = endpoints.iter().map(|e| address_hash(&e.address, 1) % m).collect();
    let skip: Vec<u64> = endpoints.iter().map(|e| address_hash(&e.address, 2) % (m - 1) + 1).collect();
    let mut position = offset.clone();
    let mut target = vec![0u64; n];
    let mut table = vec![EMPTY; MAGLEV_SIZE];
    let mut filled = 0usize;
    let mut round = 0u64;
    // Each round the heaviest endpoints claim a slot, so this ends within `m` rounds.
    'fill: while filled < MAGLEV_SIZE && round <= m {
        for &j in &order {
            if round * weights[j] < target[j] {
                continue;
            }
            target[j] += max_weight;
            // `skip` is in 1..m and m is prime, so the walk visits every slot: it finds
            // a free one within m steps while any is left.
            let mut c = position[j];
            let mut steps = 0;
            while table[c as usize] != EMPTY && steps < m {
                c = (c + skip[j]) % m;
                steps += 1;
            }
            position[j] = (c + skip[j]) % m;
            table[c as usize] = j as u32;
            filled += 1;
            if filled == MAGLEV_SIZE {
                break 'fill;
            }
        }
        round += 1;
    }
    table
}

fn address_hash(address: &SocketAddr, seed: u64) -> u64 {
    // The textual form is stable across processes and platforms.
    xxh64(address.to_string().as_bytes(), seed)
}

/// A stable 64-bit hash for hash keys (header value, cookie, source IP): the same in every
/// process and across restarts (unlike `RandomState`), so every proxy maps a key to the
/// same endpoint. It is XXH64 with seed 0.
pub fn hash_key(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

fn xxh64(input: &[u8], seed: u64) -> u64 {
    fn round(acc: u64, lane: u64) -> u64 {
        acc.wrapping_add(lane.wrapping_mul(P2)).rotate_left(31).wrapping_mul(P1)
    }
    fn merge(acc: u64, v: u64) -> u64 {
        (acc ^ round(0, v)).wrapping_mul(P1).wrapping_add(P4)
    }
    fn u64_at(b: &[u8]) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[..8]);
        u64::from_le_bytes(a)
    }
    fn u32_at(b: &[u8]) -> u64 {
        let mut a = [0u8; 4];
        a.copy_from_slice(&b[..4]);
        u64::from(u32::from_le_bytes(a))
    }

    let mut rest = input;
    let mut h = if input.len() >= 32 {
        let mut v = [seed.wrapping_add(P1).wrapping_add(P2), seed.wrapping_add(P2), seed, seed.wrapping_sub(P1)];
        while rest.len() >= 32 {
            for (k, lane) in v.iter_mut().enumerate() {
                *lane = round(*lane, u64_at(&rest[k * 8..]));
            }
            rest = &rest[32..];
        }
        let mut h = v[0]
            .rotate_left(1)
            .wrapping_add(v[1].rotate_left(7))
            .wrapping_add(v[2].rotate_left(12))
            .wrapping_add(v[3].rotate_left(18));
        for lane in v {
            h = merge(h, lane);
        }
        h
    } else {
        seed.wrapping_add(P5)
    };
    h = h.wrapping_add(input.len() as u64);
    while rest.len() >= 8 {
        h = (h ^ round(0, u64_at(rest))).rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
        rest = &rest[8..];
    }
    if rest.len() >= 4 {
        h = (h ^ u32_at(rest).wrapping_mul(P1)).rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
        rest = &rest[4..];
    }
    for &byte in rest {
        h = (h ^ u64::from(byte).wrapping_mul(P5)).rotate_left(11).wrapping_mul(P1);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(P2);
    h ^= h >> 29;
    h = h.wrapping_mul(P3);
    h ^ (h >> 32)
}

/// SplitMix64's finalizer: spreads a combined hash over all 64 bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: usize) -> SocketAddr {
        SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8 + 1], 8080))
    }

    fn endpoints(weights: &[u32]) -> Vec<BalancedEndpoint> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| BalancedEndpoint::new(addr(i), w, Arc::new(EndpointStats::new())))
            .collect()
    }

    const NO_SKIP: &dyn Fn(usize) -> bool = &|_| false;

    fn shares(b: &Balancer, picks: usize, mut hash: impl FnMut(usize) -> Option<u64>) -> Vec<f64> {
        let mut counts = vec![0usize; b.len()];
        for k in 0..picks {
            counts[b.pick(hash(k), NO_SKIP).unwrap()] += 1;
        }
        counts.iter().map(|&c| c as f64 * 100.0 / picks as f64).collect()
    }

    fn assert_shares(algorithm: Algorithm, got: &[f64], weights: &[u32]) {
        let total: u32 = weights.iter().sum();
        for (i, (&g, &w)) in got.iter().zip(weights).enumerate() {
            let want = w as f64 * 100.0 / total as f64;
            assert!((g - want).abs() <= 3.0, "{algorithm:?}: endpoint {i} got {g:.1}% want {want:.1}% ({got:?})");
        }
    }

    #[test]
    fn every_algorithm_follows_weights() {
        let weights = [1, 2, 3, 4];
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::LeastRequest,
            Algorithm::PeakEwma,
            Algorithm::RingHash,
            Algorithm::Maglev,
        ] {
            let b = Balancer::new(algorithm, endpoints(&weights));
            let got = shares(&b, 40_000, |k| Some(hash_key(format!("user-{k}").as_bytes())));
            assert_shares(algorithm, &got, &weights);
            // Without a key the hash algorithms spread at random, still by weight.
            let got = shares(&b, 40_000, |_| None);
            assert_shares(algorithm, &got, &weights);
        }
    }

    #[test]
    fn round_robin_is_exact_and_smooth() {
        assert_eq!(round_robin_cycle(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(round_robin_cycle(&[20, 4, 4]), [0, 0, 1, 0, 2, 0, 0], "reduced by the gcd");
        assert_eq!(round_robin_cycle(&[1, 1, 1]), [0, 1, 2]);
        // Picks walk the cycle from a random start.
        let b = Balancer::new(Algorithm::RoundRobin, endpoints(&[5, 1, 1]));
        let mut counts = [0; 3];
        for _ in 0..7 {
            counts[b.pick(None, NO_SKIP).unwrap()] += 1;
        }
        assert_eq!(counts, [5, 1, 1]);
        // Large sets take the deadline path, which is just as exact and even.
        let weights: Vec<u64> = (0..3000).map(|i| 1 + i % 3).collect();
        let cycle = round_robin_cycle(&weights);
        assert_eq!(cycle.len(), 6000);
        let mut counts = vec![0u64; 3000];
        cycle.iter().for_each(|&i| counts[i as usize] += 1);
        assert_eq!(counts, weights);
        let heavy_in_first_half = cycle[..3000].iter().filter(|&&i| i % 3 == 2).count();
        assert!((1400..=1600).contains(&heavy_in_first_half), "{heavy_in_first_half}");
    }

    #[test]
    fn round_robin_scales_huge_weights() {
        let cycle = round_robin_cycle(&[10_000, 9_999, 1, 7_000_000]);
        assert!(cycle.len() as u64 <= ROUND_ROBIN_MAX + 4);
        assert!(cycle.contains(&2), "the lightest endpoint keeps a turn");
    }

    #[test]
    fn least_request_prefers_the_less_loaded() {
        let eps = endpoints(&[1, 1]);
        let _busy: Vec<InFlight> = (0..5).map(|_| eps[0].stats.start()).collect();
        let b = Balancer::new(Algorithm::LeastRequest, eps.clone());
        assert!((0..1000).all(|_| b.pick(None, NO_SKIP) == Some(1)));
        assert_eq!(eps[0].stats.in_flight(), 5);
        drop(_busy);
        assert_eq!(eps[0].stats.in_flight(), 0);
        // Among many, P2C sends the loaded endpoint far less than its share.
        let eps = endpoints(&[1; 10]);
        let _busy: Vec<InFlight> = (0..3).map(|_| eps[0].stats.start()).collect();
        let b = Balancer::new(Algorithm::LeastRequest, eps);
        let got = shares(&b, 10_000, |_| None);
        assert!(got[0] < 2.0, "{got:?}");
    }

    #[test]
    fn least_request_counts_load_per_weight() {
        let eps = endpoints(&[4, 1]);
        // 3 in flight on weight 4 is lighter than 1 on weight 1.
        let _a: Vec<InFlight> = (0..3).map(|_| eps[0].stats.start()).collect();
        let _b = eps[1].stats.start();
        let b = Balancer::new(Algorithm::LeastRequest, eps);
        assert!((0..200).all(|_| b.pick(None, NO_SKIP) == Some(0)));
    }

    #[test]
    fn peak_ewma_prefers_the_fast_endpoint() {
        let eps = endpoints(&[1, 1]);
        eps[0].stats.observe_latency(Duration::from_millis(50));
        eps[1].stats.observe_latency(Duration::from_millis(1));
        let b = Balancer::new(Algorithm::PeakEwma, eps.clone());
        // Simulate 8 concurrent requests: each pick stays in flight for 8 more picks.
        let mut window = std::collections::VecDeque::new();
        let mut fast = 0;
        for _ in 0..10_000 {
            let i = b.pick(None, NO_SKIP).unwrap();
            fast += usize::from(i == 1);
            window.push_back(eps[i].stats.start());
            if window.len() > 8 {
                window.pop_front();
            }
        }
        assert!(fast >= 9_000, "fast endpoint got {fast}/10000");
    }

    #[test]
    fn peak_ewma_sheds_to_the_slow_endpoint_under_load() {
        let eps = endpoints(&[1, 1]);
        eps[0].stats.observe_latency(Duration::from_millis(5));
        eps[1].stats.observe_latency(Duration::from_millis(1));
        // 10 in flight on the fast one: cost 11 ms against 5 ms.
        let _busy: Vec<InFlight> = (0..10).map(|_| eps[1].stats.start()).collect();
        let b = Balancer::new(Algorithm::PeakEwma, eps);
        assert_eq!(b.pick(None, NO_SKIP), Some(0));
    }

    #[test]
    fn ewma_peaks_at_once_and_decays_gradually() {
        let s = EndpointStats::new();
        let t0 = Instant::now();
        assert_eq!(s.estimate_at(t0), None);
        s.observe_at(Duration::from_millis(10), t0);
        assert_eq!(s.estimate_at(t0), Some(10e6));
        // A peak replaces the estimate immediately.
        s.observe_at(Duration::from_millis(100), t0);
        assert_eq!(s.estimate_at(t0), Some(100e6));
        // A lower sample one time constant later moves it most of the way, not all.
        let t1 = t0 + DEFAULT_DECAY;
        s.observe_at(Duration::from_millis(10), t1);
        let e = s.estimate_at(t1).unwrap() / 1e6;
        let want = 100.0 * (-1f64).exp() + 10.0 * (1.0 - (-1f64).exp());
        assert!((e - want).abs() < 0.01, "{e} vs {want}");
        // Samples 1 ms apart barely move it.
        s.observe_at(Duration::from_millis(1), t1 + Duration::from_millis(1));
        let e2 = s.estimate_at(t1 + Duration::from_millis(1)).unwrap() / 1e6;
        assert!(e2 > e * 0.99 && e2 < e, "{e2} vs {e}");
        // Idle, it decays toward zero so the endpoint is probed again eventually.
        let idle = s.estimate_at(t1 + DEFAULT_DECAY * 10).unwrap() / 1e6;
        assert!(idle < 0.01, "{idle}");
    }

    #[test]
    fn new_endpoints_are_tried() {
        let eps = endpoints(&[1, 1]);
        eps[0].stats.observe_latency(Duration::from_micros(100));
        let b = Balancer::new(Algorithm::PeakEwma, eps.clone());
        // The never-sampled endpoint is idle, so it costs nothing and wins.
        assert_eq!(b.pick(None, NO_SKIP), Some(1));
        assert_eq!(eps[1].stats.ewma_cost(), 0.0);
        // But its outstanding requests count, so it can't swallow everything.
        let _hung: Vec<InFlight> = (0..3).map(|_| eps[1].stats.start()).collect();
        assert_eq!(b.pick(None, NO_SKIP), Some(0));
    }

    #[test]
    fn hash_algorithms_are_deterministic() {
        for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
            let a = Balancer::new(algorithm, endpoints(&[1, 2, 1, 3]));
            // Built independently (another proxy), and from a reordered list.
            let b = Balancer::new(algorithm, endpoints(&[1, 2, 1, 3]));
            let mut reordered = endpoints(&[1, 2, 1, 3]);
            reordered.reverse();
            let c = Balancer::new(algorithm, reordered);
            for k in 0..2_000 {
                let h = hash_key(format!("session-{k}").as_bytes());
                let x = a.pick(Some(h), NO_SKIP).unwrap();
                assert_eq!(x, a.pick(Some(h), NO_SKIP).unwrap());
                assert_eq!(x, b.pick(Some(h), NO_SKIP).unwrap());
                assert_eq!(a.endpoints[x].address, c.endpoints[c.pick(Some(h), NO_SKIP).unwrap()].address);
            }
        }
    }

    /// Fraction of keys that move when the endpoint at `removed` goes away.
    fn remapped(algorithm: Algorithm, n: usize, removed: usize) -> (f64, f64) {
        let all = endpoints(&vec![1; n]);
        let mut fewer = all.clone();
        fewer.remove(removed);
        let before = Balancer::new(algorithm, all);
        let after = Balancer::new(algorithm, fewer);
        let keys = 20_000;
        let (mut moved, mut moved_needlessly) = (0, 0);
        for k in 0..keys {
            let h = hash_key(format!("k{k}").as_bytes());
            let x = before.endpoints[before.pick(Some(h), NO_SKIP).unwrap()].address;
            let y = after.endpoints[after.pick(Some(h), NO_SKIP).unwrap()].address;
            if x != y {
                moved += 1;
                if x != addr(removed) {
                    moved_needlessly += 1;
                }
            }
        }
        (moved as f64 / keys as f64, moved_needlessly as f64 / keys as f64)
    }

    #[test]
    fn removing_an_endpoint_remaps_few_keys() {
        let n = 10;
        let (moved, needless) = remapped(Algorithm::RingHash, n, 3);
        assert!((moved - 1.0 / n as f64).abs() < 0.05, "ring moved {moved}");
        assert_eq!(needless, 0.0, "a ring only moves the removed endpoint's keys");
        let (moved, needless) = remapped(Algorithm::Maglev, n, 3);
        assert!((moved - 1.0 / n as f64).abs() < 0.05, "maglev moved {moved}");
        assert!(needless < 0.03, "maglev moved {needless} needlessly");
    }

    #[test]
    fn skip_is_honoured_and_degrades_when_all_skipped() {
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::Random,
            Algorithm::LeastRequest,
            Algorithm::PeakEwma,
            Algorithm::RingHash,
            Algorithm::Maglev,
        ] {
            let b = Balancer::new(algorithm, endpoints(&[5, 1, 1, 1]));
            for k in 0..500 {
                let h = Some(hash_key(&(k as u64).to_le_bytes()));
                let i = b.pick(h, &|i| i != 2).unwrap();
                assert_eq!(i, 2, "{algorithm:?}");
                let i = b.pick(h, &|i| i == 0).unwrap();
                assert_ne!(i, 0, "{algorithm:?}");
                assert!(b.pick(h, &|_| true).is_some(), "{algorithm:?}");
            }
        }
    }

    #[test]
    fn hash_skip_walks_forward_deterministically() {
        for algorithm in [Algorithm::RingHash, Algorithm::Maglev] {
            let b = Balancer::new(algorithm, endpoints(&[1; 5]));
            for k in 0..200 {
                let h = hash_key(format!("{k}").as_bytes());
                let first = b.pick(Some(h), NO_SKIP).unwrap();
                let second = b.pick(Some(h), &|i| i == first).unwrap();
                assert_ne!(second, first);
                assert_eq!(second, b.pick(Some(h), &|i| i == first).unwrap());
            }
        }
    }

    #[test]
    fn empty_and_single() {
        for algorithm in [Algorithm::RoundRobin, Algorithm::PeakEwma, Algorithm::RingHash, Algorithm::Maglev] {
            let b = Balancer::new(algorithm, Vec::new());
            assert!(b.is_empty());
            assert_eq!(b.pick(Some(1), NO_SKIP), None);
            let b = Balancer::new(algorithm, endpoints(&[7]));
            assert_eq!(b.pick(Some(1), &|_| true), Some(0));
        }
    }

    #[test]
    fn weight_zero_counts_as_one() {
        for algorithm in [Algorithm::RoundRobin, Algorithm::Random, Algorithm::RingHash, Algorithm::Maglev] {
            let b = Balancer::new(algorithm, endpoints(&[0, 1]));
            let got = shares(&b, 20_000, |k| Some(hash_key(format!("{k}").as_bytes())));
            assert!((got[0] - 50.0).abs() < 5.0, "{algorithm:?} {got:?}");
        }
    }

    #[test]
    fn extreme_weights_and_sizes_do_not_panic() {
        for algorithm in
            [Algorithm::RoundRobin, Algorithm::Random, Algorithm::PeakEwma, Algorithm::RingHash, Algorithm::Maglev]
        {
            let b = Balancer::new(algorithm, endpoints(&[u32::MAX, 1, u32::MAX]));
            for k in 0..100u64 {
                b.pick(Some(k), NO_SKIP).unwrap();
                b.pick(Some(u64::MAX - k), &|i| i != 1).unwrap();
            }
        }
        // More endpoints than Maglev slots for the light ones: those fall back.
        let mut weights = vec![10_000; 20];
        weights.extend(vec![1; 200]);
        let b = Balancer::new(Algorithm::Maglev, endpoints(&weights));
        for k in 0..100u64 {
            let i = b.pick(Some(k), &|i| i < 20).unwrap();
            assert!(i >= 20);
        }
    }

    #[test]
    fn hash_key_is_xxh64() {
        assert_eq!(hash_key(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(hash_key(b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(hash_key(b"abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(hash_key(b"Nobody inspects the spammish repetition"), 0xFBCE_A83C_8A37_8BF1);
        let bytes: Vec<u8> = (0..100).collect();
        assert_eq!(hash_key(&bytes), 0x6AC1_E580_3216_6597);
        assert_eq!(xxh64(b"abc", 1), 0xBEA9_CA81_9932_8908);
    }
}
