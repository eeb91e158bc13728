//! Retry timing and the circuit breaker, with an injected clock.

use std::time::{Duration, Instant};

use ipc_zmq::engine::{Backoff, Breaker, BreakerConfig, BreakerState, Jitter};

#[test]
fn the_breaker_opens_after_five_consecutive_failures_and_a_success_resets_the_count() {
    let mut b = Breaker::new(BreakerConfig::default());
    let t = Instant::now();
    for _ in 0..4 {
        b.on_failure(t);
    }
    b.on_success();
    for _ in 0..4 {
        b.on_failure(t);
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(b.permits(t));
    }
    b.on_failure(t);
    assert_eq!(b.state(), BreakerState::Open);
    assert!(!b.permits(t + Duration::from_secs(29)));
}

#[test]
fn a_half_open_breaker_allows_three_test_requests_and_closes_after_two_successes() {
    let mut b = Breaker::new(BreakerConfig::default());
    let t = Instant::now();
    for _ in 0..5 {
        b.on_failure(t);
    }
    let later = t + Duration::from_secs(30);
    for _ in 0..3 {
        assert!(b.permits(later));
        b.on_request();
    }
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(!b.permits(later), "a fourth test request is refused");
    b.on_success();
    assert_eq!(b.state(), BreakerState::HalfOpen);
    b.on_success();
    assert_eq!(b.state(), BreakerState::Closed);
    assert!(b.permits(later));
}

#[test]
fn a_failure_while_half_open_opens_the_breaker_for_another_full_period() {
    let cfg =
        BreakerConfig { failure_threshold: 2, open_for: Duration::from_secs(5), half_open_requests: 1, close_after: 1 };
    let mut b = Breaker::new(cfg);
    let t = Instant::now();
    b.on_failure(t);
    b.on_failure(t);
    let t1 = t + Duration::from_secs(5);
    assert!(b.permits(t1));
    b.on_request();
    b.on_failure(t1);
    assert_eq!(b.state(), BreakerState::Open);
    assert!(!b.permits(t1 + Duration::from_millis(4999)));
    assert!(b.permits(t1 + Duration::from_secs(5)));
    b.on_request();
    b.on_success();
    assert_eq!(b.state(), BreakerState::Closed, "configured: one success closes it");
}

#[test]
fn backoff_with_jitter_stays_between_half_and_all_of_the_capped_exponential_delay() {
    let backoff = Backoff::default();
    for seed in 0..200 {
        let mut jitter = Jitter::seeded(seed);
        for attempt in 0..20u32 {
            let full = Duration::from_secs(1u64 << attempt.min(20)).min(Duration::from_secs(10));
            let d = backoff.delay(attempt, &mut jitter);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} outside [{:?}, {full:?}]", full / 2);
        }
    }
    // Reconnects retry forever: a huge attempt number stays capped and does not overflow.
    let mut jitter = Jitter::seeded(3);
    assert!(backoff.delay(u32::MAX, &mut jitter) <= Duration::from_secs(10));
}

#[test]
fn jitter_spreads_the_delays_of_relays_that_failed_together() {
    let backoff = Backoff::default();
    let delays: std::collections::HashSet<Duration> =
        (0..50).map(|seed| backoff.delay(3, &mut Jitter::seeded(seed * 7919 + 1))).collect();
    assert!(delays.len() > 40, "only {} distinct delays out of 50", delays.len());
}
