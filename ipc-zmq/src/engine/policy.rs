//! Retry timing and the circuit breaker, driven by an injected clock (`now: Instant` arguments)
//! so that they are tested without sleeping.

use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

/// Exponential backoff with jitter: attempt `n` (from 0) waits a uniformly random time in
/// `[d/2, d]`, where `d = min(max, base × factor^n)`. Jitter keeps relays that lost the same link
/// from retrying in lockstep.
///
/// ```
/// use std::time::Duration;
/// use ipc_zmq::engine::{Backoff, Jitter};
/// let backoff = Backoff::default(); // 1 s, ×2, at most 10 s
/// let mut jitter = Jitter::seeded(1);
/// let d = backoff.delay(2, &mut jitter);
/// assert!(d >= Duration::from_secs(2) && d <= Duration::from_secs(4));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// Delay before the first retry (before jitter).
    pub base: Duration,
    /// Growth per attempt.
    pub factor: u32,
    /// Largest delay (before jitter).
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_secs(1), factor: 2, max: Duration::from_secs(10) }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (0 for the first retry).
    pub fn delay(&self, attempt: u32, jitter: &mut Jitter) -> Duration {
        let mut d = self.base;
        for _ in 0..attempt.min(64) {
            d = d.saturating_mul(self.factor.max(1));
            if d >= self.max {
                break;
            }
        }
        let d = d.min(self.max);
        let half = d / 2;
        let spread = (d - half).as_nanos() as u64;
        half + Duration::from_nanos(if spread == 0 { 0 } else { jitter.next_u64() % (spread + 1) })
    }
}

/// A small, fast, non-cryptographic random source for jitter (xorshift64*).
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the process's random hasher keys: differs between relays.
    pub fn new() -> Jitter {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x7ad9_01e5);
        Jitter::seeded(h.finish())
    }

    /// A reproducible sequence (tests).
    pub fn seeded(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// The next pseudo-random word.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Jitter::new()
    }
}

/// When the circuit breaker of an outbound link opens and closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open it (default 5).
    pub failure_threshold: u32,
    /// How long it stays open before letting test requests through (default 30 s).
    pub open_for: Duration,
    /// Requests let through while half-open (default 3).
    pub half_open_requests: u32,
    /// Successes while half-open that close it (default 2).
    pub close_after: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: 5, open_for: Duration::from_secs(30), half_open_requests: 3, close_after: 2 }
    }
}

/// What the breaker lets through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BreakerState {
    /// Everything.
    Closed = 0,
    /// Nothing, until `open_for` has passed.
    Open = 1,
    /// At most `half_open_requests` test requests.
    HalfOpen = 2,
}

#[derive(Clone, Copy, Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { issued: u32, successes: u32 },
}

/// The circuit breaker of one outbound link: after `failure_threshold` consecutive failures
/// (requests not acknowledged in time) it stops sending for `open_for`, then lets a few test
/// requests through; enough successes close it, any failure opens it again.
///
/// ```
/// use std::time::{Duration, Instant};
/// use ipc_zmq::engine::{Breaker, BreakerConfig, BreakerState};
/// let mut breaker = Breaker::new(BreakerConfig::default());
/// let t0 = Instant::now();
/// for _ in 0..5 {
///     breaker.on_failure(t0);
/// }
/// assert_eq!(breaker.state(), BreakerState::Open);
/// assert!(!breaker.permits(t0));
/// assert!(breaker.permits(t0 + Duration::from_secs(30))); // half-open now
/// ```
#[derive(Clone, Debug)]
pub struct Breaker {
    config: BreakerConfig,
    inner: Inner,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Breaker {
        Breaker { config, inner: Inner::Closed { failures: 0 } }
    }

    /// Its state (as of the last call; an open breaker turns half-open in [`permits`](Self::permits)).
    pub fn state(&self) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may be sent now. Does not use up a half-open test request: call
    /// [`on_request`](Self::on_request) when one is actually sent.
    pub fn permits(&mut self, now: Instant) -> bool {
        if let Inner::Open { until } = self.inner {
            if now < until {
                return false;
            }
            self.inner = Inner::HalfOpen { issued: 0, successes: 0 };
        }
        match self.inner {
            Inner::Closed { .. } => true,
            Inner::HalfOpen { issued, .. } => issued < self.config.half_open_requests,
            Inner::Open { .. } => false,
        }
    }

    /// When an open breaker lets test requests through (goes half-open); `None` unless open.
    pub fn half_opens_at(&self) -> Option<Instant> {
        match self.inner {
            Inner::Open { until } => Some(until),
            _ => None,
        }
    }

    /// A request was sent.
    pub fn on_request(&mut self) {
        if let Inner::HalfOpen { issued, .. } = &mut self.inner {
            *issued += 1;
        }
    }

    /// A request succeeded (was acknowledged).
    pub fn on_success(&mut self) {
        match &mut self.inner {
            Inner::Closed { failures } => *failures = 0,
            Inner::HalfOpen { successes, .. } => {
                *successes += 1;
                if *successes >= self.config.close_after {
                    self.inner = Inner::Closed { failures: 0 };
                }
            }
            Inner::Open { .. } => {}
        }
    }

    /// A request failed (timed out).
    pub fn on_failure(&mut self, now: Instant) {
        match &mut self.inner {
            Inner::Closed { failures } => {
                *failures += 1;
                if *failures >= self.config.failure_threshold {
                    self.inner = Inner::Open { until: now + self.config.open_for };
                }
            }
            Inner::HalfOpen { .. } => self.inner = Inner::Open { until: now + self.config.open_for },
            Inner::Open { .. } => {}
        }
    }
}
