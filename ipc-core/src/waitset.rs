//! Waiting on several rings from one thread: spinning, yielding or asleep on one doorbell that
//! every member ring's producer rings.

use std::time::{Duration, Instant};

use crate::consumer::Consumer;
use crate::pollable::BellListener;
use crate::wait::{LIVENESS_INTERVAL, MAX_SLEEP, WaitStrategy};

/// Names a ring in a [`WaitSet`] (stable until the ring is removed).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RingKey(usize);

/// Consumers of several rings, and one wait for whichever has something first.
///
/// [`wait`](Self::wait) returns the keys of every ring with something for its consumer — a
/// record, or a producer that is gone (its `try_recv` then drains and says `Disconnected`) —
/// starting one further along at each call, so a busy ring cannot starve the others when the
/// caller takes one record from each ready ring per round. With
/// [`WaitStrategy::Block`] it spins briefly, then sleeps on a single doorbell (an abstract
/// `AF_UNIX` datagram socket, see [`Consumer::pollable_doorbell`]) that the producer of any
/// member ring rings when it commits into an armed ring: one syscall on the producer's slow
/// path, none while the set is spinning. [`fd`](Self::fd) lets an outer event loop wait on the
/// set too.
///
/// A producer killed without detaching rings nothing: the set looks at the producers' liveness
/// every 10 ms while it waits, and reports such a ring ready.
///
/// ```
/// use std::time::Duration;
/// use ipc_core::{RingBuilder, WaitSet, WaitStrategy};
/// let (quotes, orders) = (RingBuilder::new(1 << 12).create_anonymous()?, RingBuilder::new(1 << 12).create_anonymous()?);
/// let mut set = WaitSet::new(WaitStrategy::Block)?;
/// let quotes_key = set.insert(quotes.consumer()?);
/// let orders_key = set.insert(orders.consumer()?);
/// orders.producer()?.try_send(b"buy")?;
/// let ready = set.wait(Duration::from_secs(1)).to_vec();
/// assert_eq!(ready, [orders_key]);
/// let consumer = set.get_mut(orders_key).unwrap();
/// assert_eq!(&consumer.try_recv()?[..], b"buy");
/// # let _ = quotes_key;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct WaitSet {
    bell: BellListener,
    members: Vec<Option<Consumer>>,
    /// Members whose producer was found gone at the last liveness look.
    gone: Vec<bool>,
    ready: Vec<RingKey>,
    /// Where the next scan starts (rotates for fairness).
    start: usize,
    /// When the producers' liveness was last looked at.
    last_look: Option<Instant>,
    strategy: WaitStrategy,
}

/// Polls between looks at the clock while spinning.
const SPINS_PER_CLOCK: u32 = 64;

impl WaitSet {
    /// An empty set waiting with `strategy`. Fails only if the doorbell socket cannot be made.
    pub fn new(strategy: WaitStrategy) -> std::io::Result<WaitSet> {
        Ok(WaitSet {
            bell: BellListener::bind()?,
            members: Vec::new(),
            gone: Vec::new(),
            ready: Vec::new(),
            start: 0,
            last_look: None,
            strategy,
        })
    }

    /// Adds a ring's consumer; the set owns it until [`remove`](Self::remove). Don't call the
    /// consumer's own [`arm_doorbell`](Consumer::arm_doorbell) while it is in a set: the set
    /// arms it for its own doorbell.
    pub fn insert(&mut self, consumer: Consumer) -> RingKey {
        let slot = self.members.iter().position(Option::is_none).unwrap_or(self.members.len());
        if slot == self.members.len() {
            self.members.push(None);
            self.gone.push(false);
        }
        self.members[slot] = Some(consumer);
        self.gone[slot] = false;
        RingKey(slot)
    }

    /// Takes a ring's consumer out of the set.
    pub fn remove(&mut self, key: RingKey) -> Option<Consumer> {
        let mut consumer = self.members.get_mut(key.0)?.take()?;
        consumer.leave_set();
        Some(consumer)
    }

    /// The consumer of a ring in the set.
    pub fn get_mut(&mut self, key: RingKey) -> Option<&mut Consumer> {
        self.members.get_mut(key.0)?.as_mut()
    }

    /// Rings in the set.
    pub fn len(&self) -> usize {
        self.members.iter().flatten().count()
    }

    /// Whether the set has no ring.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The set's doorbell descriptor, readable after a member's producer rang it while the set
    /// slept in [`wait`](Self::wait) (for an outer event loop: poll it, then call `wait` with a
    /// zero timeout).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.bell.raw_fd()
    }

    /// Waits up to `timeout` until a member ring has something for its consumer; returns the
    /// keys of all that do (empty: timed out), fairly ordered. No allocation once the set has
    /// seen its largest ready list.
    pub fn wait(&mut self, timeout: Duration) -> &[RingKey] {
        // The busy case first, without reading the clock.
        if self.collect() {
            self.start = (self.start + 1) % self.members.len();
            return &self.ready;
        }
        let started = Instant::now();
        let deadline = started.checked_add(timeout);
        // The first quiet turn looks at the producers unless a look is recent (a caller polling
        // with zero timeouts must learn of a death too, without a look per call).
        let mut next_liveness = self.last_look.map_or(started, |t| t + LIVENESS_INTERVAL);
        let backoff = crossbeam_utils::Backoff::new();
        let mut spins = 0u32;
        loop {
            if self.collect() {
                break;
            }
            spins = spins.wrapping_add(1);
            let sleepy = self.strategy == WaitStrategy::Block && backoff.is_completed();
            if sleepy || spins % SPINS_PER_CLOCK == 0 {
                let now = Instant::now();
                if now >= next_liveness {
                    next_liveness = now + LIVENESS_INTERVAL;
                    self.last_look = Some(now);
                    if self.look_for_gone_producers() {
                        continue;
                    }
                }
                let left = deadline.map_or(MAX_SLEEP, |d| d.saturating_duration_since(now));
                if left.is_zero() {
                    break;
                }
                if sleepy {
                    self.sleep(left.min(MAX_SLEEP).min(LIVENESS_INTERVAL));
                    continue;
                }
            }
            match self.strategy {
                WaitStrategy::BusySpin => {}
                WaitStrategy::SpinThenYield | WaitStrategy::Block => backoff.snooze(),
            }
        }
        if !self.ready.is_empty() && !self.members.is_empty() {
            self.start = (self.start + 1) % self.members.len();
        }
        &self.ready
    }

    /// Fills `ready` with every member that has news, scanning from `start`.
    fn collect(&mut self) -> bool {
        self.ready.clear();
        let n = self.members.len();
        for i in (self.start..n).chain(0..self.start) {
            if let Some(consumer) = &mut self.members[i] {
                if self.gone[i] && !consumer.producer_is_gone() {
                    // Replaced by a new producer since.
                    self.gone[i] = false;
                }
                if self.gone[i] || consumer.has_news() {
                    self.ready.push(RingKey(i));
                }
            }
        }
        !self.ready.is_empty()
    }

    /// Marks members whose producer is gone; whether any is.
    fn look_for_gone_producers(&mut self) -> bool {
        let mut any = false;
        for (consumer, gone) in self.members.iter_mut().zip(self.gone.iter_mut()) {
            if let Some(consumer) = consumer {
                *gone = consumer.producer_is_gone();
                any |= *gone;
            }
        }
        any
    }

    /// Arms every member for the set's doorbell and sleeps on it, unless one has news already.
    fn sleep(&mut self, slice: Duration) {
        let id = self.bell.id();
        let mut quiet = true;
        for consumer in self.members.iter_mut().flatten() {
            quiet &= consumer.arm_for(Some(id));
        }
        if quiet {
            let mut pollfd = libc::pollfd { fd: self.bell.raw_fd(), events: libc::POLLIN, revents: 0 };
            let ms = slice.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one valid, initialised pollfd that outlives the call.
            unsafe { libc::poll(&mut pollfd, 1, ms) };
        }
        for consumer in self.members.iter_mut().flatten() {
            consumer.disarm_for_set();
        }
        self.bell.drain();
    }
}

impl Drop for WaitSet {
    fn drop(&mut self) {
        for consumer in self.members.iter_mut().flatten() {
            consumer.disarm_for_set();
        }
    }
}

impl std::fmt::Debug for WaitSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitSet").field("rings", &self.len()).field("strategy", &self.strategy).finish()
    }
}
