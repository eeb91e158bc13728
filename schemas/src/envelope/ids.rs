//! Message ids, timestamps and the schema version: the small value types
//! every envelope header carries.

use std::cell::Cell;
use std::fmt;
use std::sync::Once;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::fb;

/// A message id: a UUID in the version 4 layout (122 pseudo-random bits). A
/// correlation id is the [`MessageId`] of the request a message answers, so
/// one type serves both fields.
///
/// ```
/// use schemas::envelope::MessageId;
/// let a = MessageId::new_v4();
/// assert_ne!(a, MessageId::new_v4());
/// assert_eq!(MessageId::from_wire(&a.to_wire()), a);
/// assert_eq!(a.as_uuid().get_version_num(), 4);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct MessageId(uuid::Uuid);

impl MessageId {
    /// The all-zero id, used where a received envelope carries no id.
    pub const NIL: Self = Self(uuid::Uuid::nil());

    /// A fresh id, unique: receivers deduplicate on it. It is the next value
    /// of this thread's id stream: a random start and key
    /// drawn once per thread (and again in a forked child) from `rand`'s
    /// CSPRNG, then a counter through a bijection, so one stream never
    /// repeats an id and two streams collide as rarely as random v4 ids do.
    /// About 40 instructions, no system call, no random draw per id.
    ///
    /// The ids look random but are not secret: do not use one as an
    /// unguessable token.
    #[inline]
    pub fn new_v4() -> Self {
        Self(uuid::Uuid::from_u128(IdStream::next_id()))
    }

    /// Wraps an existing UUID.
    pub const fn from_uuid(uuid: uuid::Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID inside.
    pub const fn as_uuid(&self) -> &uuid::Uuid {
        &self.0
    }

    /// Reads the wire struct (`hi` = bytes 0..8 big-endian, `lo` = 8..16).
    pub fn from_wire(wire: &fb::Uuid) -> Self {
        Self(uuid::Uuid::from_u64_pair(wire.hi(), wire.lo()))
    }

    /// Converts to the wire struct.
    pub fn to_wire(self) -> fb::Uuid {
        let (hi, lo) = self.0.as_u64_pair();
        fb::Uuid::new(hi, lo)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The per-thread source of [`MessageId::new_v4`]: `start` and `key` are
/// random 122-bit values, `count` is how many ids the stream has given out.
/// Id `n` is `permute(permute((start + n) mod 2^122) ^ key)`, spread into the
/// v4 layout ([`IdStream::v4_layout`]). `permute` is a bijection of the
/// 122-bit values (xor-shifts and odd multiplications mod 2^122 are each
/// invertible; `tests::id_permutation_is_a_bijection` inverts it), so the ids
/// of one stream are distinct for 2^122 ids; the random key makes the ids of
/// two streams unrelated, so they collide as rarely as random v4 ids.
///
/// Restarts and threads each draw a new stream. A forked child would inherit
/// its parent's stream and repeat its ids: a `pthread_atfork` child handler,
/// registered before the first stream is drawn, counts forks, and a stream
/// drawn before the last fork is drawn again.
#[derive(Clone, Copy)]
pub(crate) struct IdStream {
    start: u128,
    key: u128,
    count: u128,
    /// [`FORKS`] when the stream was drawn; `u64::MAX`: not drawn yet.
    forks: u64,
}

/// Forks this process has seen since the id streams' fork handler was
/// registered (in the child: including the fork that made it).
static FORKS: AtomicU64 = AtomicU64::new(0);
static FORK_HANDLER: Once = Once::new();

extern "C" fn count_fork_in_child() {
    // Async-signal-safe: one atomic add.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

const ID_BITS_MASK: u128 = (1 << 122) - 1;

thread_local! {
    static ID_STREAM: Cell<IdStream> =
        const { Cell::new(IdStream { start: 0, key: 0, count: 0, forks: u64::MAX }) };
}

impl IdStream {
    /// The next id of this thread's stream, as the UUID's 128 bits.
    #[inline]
    fn next_id() -> u128 {
        ID_STREAM.with(|cell| {
            let mut stream = cell.get();
            if stream.forks != FORKS.load(Ordering::Relaxed) {
                stream = Self::draw();
            }
            let id = stream.id(stream.count);
            stream.count = stream.count.wrapping_add(1);
            cell.set(stream);
            id
        })
    }

    /// A new stream from the thread-local CSPRNG, after making sure forks are
    /// counted from now on.
    #[cold]
    fn draw() -> Self {
        FORK_HANDLER.call_once(|| {
            // SAFETY: `count_fork_in_child` is an `extern "C" fn()` that
            // lives for the whole program and only does an atomic add,
            // which is allowed in a child after fork. If registration fails
            // (ENOMEM) forks are not counted, as before this stream existed.
            unsafe {
                libc::pthread_atfork(None, None, Some(count_fork_in_child));
            }
        });
        // Read before drawing: a fork after this read but before the stream
        // is stored makes the child draw again.
        let forks = FORKS.load(Ordering::Relaxed);
        let mut bits = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut bits);
        let (start, key) = bits.split_at(16);
        let word = |b: &[u8]| u128::from_le_bytes(b.try_into().unwrap_or([0; 16])) & ID_BITS_MASK;
        Self { start: word(start), key: word(key), count: 0, forks }
    }

    /// Id number `n` of this stream.
    #[inline]
    fn id(&self, n: u128) -> u128 {
        let x = self.start.wrapping_add(n) & ID_BITS_MASK;
        Self::v4_layout(permute_id_bits(permute_id_bits(x) ^ self.key))
    }

    /// Spreads 122 bits around the version (4) and variant (`10`) bits of a
    /// v4 UUID read as a big-endian `u128`: bits 127..80, version 79..76,
    /// 75..64, variant 63..62, 61..0. Injective.
    #[inline]
    pub(crate) fn v4_layout(bits: u128) -> u128 {
        let low = bits & ((1 << 62) - 1);
        let middle = (bits >> 62) & 0xFFF;
        let high = bits >> 74;
        (high << 80) | (0x4 << 76) | (middle << 64) | (0b10 << 62) | low
    }
}

/// Odd multipliers of [`permute_id_bits`] (from splitmix64 and a 128-bit
/// LCG, made odd).
pub(crate) const ID_MULTIPLIERS: [u128; 2] =
    [0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835, 0x2360_ED05_1FC6_5DA4_4385_DF64_9FCC_F645];

/// A bijection of the 122-bit values that mixes every input bit into every
/// output bit: xor-shift, multiply, xor-shift, multiply, xor-shift, each step
/// invertible modulo 2^122.
#[inline]
pub(crate) fn permute_id_bits(mut x: u128) -> u128 {
    debug_assert!(x <= ID_BITS_MASK);
    x ^= x >> 61;
    x = x.wrapping_mul(ID_MULTIPLIERS[0]) & ID_BITS_MASK;
    x ^= x >> 59;
    x = x.wrapping_mul(ID_MULTIPLIERS[1]) & ID_BITS_MASK;
    x ^ (x >> 61)
}

/// Nanoseconds since the Unix epoch, as stored in `Envelope.timestamp_ns`.
/// Saturates instead of wrapping; a clock before 1970 reads as 0.
///
/// ```
/// let t = schemas::envelope::now_unix_ns();
/// assert!(t > 1_600_000_000_000_000_000); // after September 2020
/// ```
#[inline]
pub fn now_unix_ns() -> u64 {
    // `CLOCK_REALTIME`, the clock `SystemTime::now` reads, without its
    // `Duration` arithmetic (~40 instructions of the ~90 per stamp; the read
    // itself, through the vDSO, is the ~20 ns).
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable `timespec` for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) } != 0 {
        return 0;
    }
    match (u64::try_from(now.tv_sec), u64::try_from(now.tv_nsec)) {
        (Ok(secs), Ok(nanos)) => secs.saturating_mul(1_000_000_000).saturating_add(nanos),
        // Before 1970 (a negative second count).
        _ => 0,
    }
}

/// The semantic version of the schema a message was written with.
///
/// Bump `minor` whenever fields or union members are appended to the `.fbs`
/// files; `major` only for an incompatible change (which the evolution rules
/// forbid).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct SchemaVersion {
    /// Incompatible changes.
    pub major: u16,
    /// Appended fields or union members.
    pub minor: u16,
    /// Comment/documentation-only changes.
    pub patch: u16,
}

impl SchemaVersion {
    /// The version of `fbs/envelope.fbs` this crate was built with.
    /// 1.0.0 is the frozen copy in `testdata/evolution/v1`.
    pub const CURRENT: Self = Self { major: 1, minor: 1, patch: 0 };

    /// Reads the wire struct.
    pub fn from_wire(wire: &fb::SchemaVersion) -> Self {
        Self { major: wire.major(), minor: wire.minor(), patch: wire.patch() }
    }

    /// Converts to the wire struct.
    pub fn to_wire(self) -> fb::SchemaVersion {
        fb::SchemaVersion::new(self.major, self.minor, self.patch)
    }
}

impl fmt::Display for SchemaVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}
