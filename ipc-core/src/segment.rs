//! Segments: create, open and validate the shared memory that holds one ring, and hand out its
//! producer, consumer and observer. A segment from another process is hostile input: every
//! field is copied out once, validated against the mapped size, and never trusted again.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::heartbeat::{self, Beat};
use crate::layout::{self, HEADER_LEN, LAYOUT_VERSION, MAGIC, MAX_CAPACITY, MIN_CAPACITY, SegmentHeader};
use crate::liveness::{self, Identity, ProcessId, Verdict};
use crate::shm::{self, Mapping};
use crate::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Where each payload starts in the ring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PayloadAlign {
    /// 8-byte aligned payloads (the default, least padding).
    #[default]
    Eight,
    /// 64-byte aligned payloads: what Arrow buffers need, and a cache line per payload start.
    SixtyFour,
}

impl PayloadAlign {
    /// The alignment in bytes.
    pub const fn bytes(self) -> u64 {
        match self {
            PayloadAlign::Eight => 8,
            PayloadAlign::SixtyFour => 64,
        }
    }
}

/// Options for a new ring segment.
///
/// ```
/// use ipc_core::{PayloadAlign, RingBuilder};
/// let segment = RingBuilder::new(1 << 16).payload_align(PayloadAlign::SixtyFour).create_anonymous()?;
/// assert_eq!(segment.capacity(), 1 << 16);
/// # Ok::<(), ipc_core::CreateError>(())
/// ```
#[derive(Clone, Debug)]
pub struct RingBuilder {
    capacity: u64,
    max_message_len: Option<u64>,
    payload_align: PayloadAlign,
    heartbeat_timeout: Duration,
}

/// The validated shape of a ring, copied out of shared memory once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RingParams {
    pub capacity: u64,
    pub max_message_len: u32,
    pub payload_align: PayloadAlign,
    pub epoch: u64,
}

/// Why a segment could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    /// Names are 1 to 200 characters of `[A-Za-z0-9._-]`, not starting with a dot.
    #[error("invalid segment name {0:?}: use 1-200 characters of [A-Za-z0-9._-], not starting with '.'")]
    InvalidName(String),
    /// Capacity or maximum message length out of range.
    #[error("invalid ring options: {0}")]
    InvalidOptions(String),
    /// The name is taken. `creator_alive == false` means it is left over and can be reclaimed
    /// with [`Segment::reclaim_if_stale`].
    #[error("segment {name:?} already exists (created by {creator:?}, {})", if *.creator_alive { "alive" } else { "no longer running" })]
    AlreadyExists {
        /// The name asked for.
        name: String,
        /// The process that created it, if its header could be read.
        creator: Option<ProcessId>,
        /// Whether that process still runs.
        creator_alive: bool,
    },
    /// An operating-system call failed.
    #[error("creating segment: {0}")]
    Io(#[from] io::Error),
}

/// Why an existing segment was refused.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// See [`CreateError::InvalidName`].
    #[error("invalid segment name {0:?}")]
    InvalidName(String),
    /// No segment has this name.
    #[error("no segment named {0:?}")]
    NotFound(String),
    /// The segment's contents are not a valid ring.
    #[error("segment refused: {0}")]
    Invalid(#[from] SegmentFault),
    /// An operating-system call failed.
    #[error("opening segment: {0}")]
    Io(io::Error),
}

/// What is wrong with a segment's header. Each variant names the offending values.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SegmentFault {
    /// Smaller than the header page, or than the size the header declares.
    #[error("segment is {actual} bytes, expected {expected}")]
    SizeMismatch {
        /// What the header (or the minimum) requires.
        expected: u64,
        /// The mapped size.
        actual: u64,
    },
    /// The creator has not finished writing the header (or it is not ours).
    #[error("header not initialised (magic is zero); the creator may still be starting")]
    NotInitialized,
    /// Not a Tadpole ring.
    #[error("bad magic {0:#018x}: not a Tadpole ring segment")]
    BadMagic(u64),
    /// Written by another version of the layout.
    #[error("layout version {found}, this build reads version {supported}")]
    UnsupportedVersion {
        /// Version in the header.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },
    /// A field is outside its valid range.
    #[error("invalid header field {field} = {value}")]
    BadField {
        /// The field's name.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// The segment's file was truncated by another process while this one had it mapped: the
    /// mapping now reads as zeros in this process (see [`Segment::was_truncated`]), and nothing
    /// more can pass through this ring here. Recreate the ring.
    #[error("the ring's file was truncated by another process; its mapping here now reads as zeros")]
    Truncated,
    /// Head and tail contradict each other (head past tail, more than a ring apart, unaligned).
    #[error("inconsistent positions: head {head}, tail {tail}, capacity {capacity}")]
    Positions {
        /// Consumer position.
        head: u64,
        /// Producer position.
        tail: u64,
        /// Ring capacity.
        capacity: u64,
    },
}

impl RingBuilder {
    /// A ring with a data region of `capacity` bytes (a power of two, at least 4096).
    pub fn new(capacity: usize) -> RingBuilder {
        RingBuilder {
            capacity: capacity as u64,
            max_message_len: None,
            payload_align: PayloadAlign::Eight,
            heartbeat_timeout: heartbeat::DEFAULT_TIMEOUT,
        }
    }

    /// Largest payload accepted; defaults to (and may not exceed) `capacity / 2 - 128`.
    pub fn max_message_len(mut self, len: usize) -> RingBuilder {
        self.max_message_len = Some(len as u64);
        self
    }

    /// Payload alignment; [`PayloadAlign::Eight`] by default.
    pub fn payload_align(mut self, align: PayloadAlign) -> RingBuilder {
        self.payload_align = align;
        self
    }

    /// How long a process attached to (or that created) this ring may go without refreshing its
    /// heartbeat before a process in another PID namespace judges it dead; 2 s by default,
    /// between 100 ms and 1 hour. Processes that share a PID namespace and a readable `/proc`
    /// check each other's pid instead and never wait for it. A background thread refreshes the
    /// heartbeat every quarter of this, so an idle process still looks alive; a stopped one
    /// (SIGSTOP) does not, and loses its side to a peer in another namespace after the timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// let segment = ipc_core::RingBuilder::new(4096).heartbeat_timeout(Duration::from_millis(500)).create_anonymous()?;
    /// # Ok::<(), ipc_core::CreateError>(())
    /// ```
    pub fn heartbeat_timeout(mut self, timeout: Duration) -> RingBuilder {
        self.heartbeat_timeout = timeout;
        self
    }

    fn params(&self) -> Result<RingParams, CreateError> {
        let timeout = self.heartbeat_timeout;
        if !(heartbeat::MIN_TIMEOUT..=heartbeat::MAX_TIMEOUT).contains(&timeout) {
            return Err(CreateError::InvalidOptions(format!(
                "heartbeat timeout {timeout:?} must be between {:?} and {:?}",
                heartbeat::MIN_TIMEOUT,
                heartbeat::MAX_TIMEOUT
            )));
        }
        let cap = self.capacity;
        if !cap.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&cap) {
            return Err(CreateError::InvalidOptions(format!(
                "capacity {cap} must be a power of two between {MIN_CAPACITY} and {MAX_CAPACITY}"
            )));
        }
        let limit = layout::max_message_len_for(cap);
        let max = self.max_message_len.unwrap_or(limit);
        if max > limit {
            return Err(CreateError::InvalidOptions(format!(
                "max_message_len {max} exceeds {limit}, the most a ring of {cap} bytes can always fit"
            )));
        }
        Ok(RingParams {
            capacity: cap,
            max_message_len: max as u32,
            payload_align: self.payload_align,
            epoch: new_epoch(),
        })
    }

    /// Creates the named segment `/dev/shm/tadpole.<name>` (mode 0600, exclusively). The name
    /// is removed when the last handle of this process drops, unless [`Segment::keep`] is called.
    pub fn create_named(&self, name: &str) -> Result<Segment, CreateError> {
        let params = self.params()?;
        let os_name = shm::os_name(name).ok_or_else(|| CreateError::InvalidName(name.to_owned()))?;
        let map = match Mapping::create_named(&os_name, HEADER_LEN + params.capacity as usize) {
            Ok(map) => map,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let existing = Segment::open(name).ok();
                return Err(CreateError::AlreadyExists {
                    name: name.to_owned(),
                    creator: existing.as_ref().map(Segment::creator),
                    creator_alive: existing.is_none_or(|s| s.creator_alive()),
                });
            }
            Err(e) => return Err(CreateError::Io(e)),
        };
        Ok(Segment::initialize(map, params, self.heartbeat_timeout, Some(name.to_owned())))
    }

    /// Creates a ring in this process's heap, for threads of one process (no shared memory,
    /// no name, no file descriptor). Same protocol and API as the shared variants.
    pub fn create_private(&self) -> Result<Segment, CreateError> {
        let params = self.params()?;
        let map = Mapping::heap(HEADER_LEN + params.capacity as usize)?;
        Ok(Segment::initialize(map, params, self.heartbeat_timeout, None))
    }

    /// Creates an anonymous segment (a sealed memfd): share it with a child through
    /// [`Segment::as_fd`] and [`Segment::from_fd`]. It disappears with its last mapping.
    pub fn create_anonymous(&self) -> Result<Segment, CreateError> {
        let params = self.params()?;
        let map = Mapping::create_memfd(HEADER_LEN + params.capacity as usize)?;
        Ok(Segment::initialize(map, params, self.heartbeat_timeout, None))
    }
}

/// A mapped, validated ring segment. Cheap to clone; the mapping lives while any handle
/// (segment, producer, consumer, observer, lease) does.
#[derive(Clone)]
pub struct Segment {
    /// Set in the process that created the segment: refreshes the creator's heartbeat while any
    /// handle lives.
    creator_beat: Option<Arc<Beat>>,
    pub(crate) map: Arc<Mapping>,
    pub(crate) params: RingParams,
    name: Option<String>,
}

impl std::fmt::Debug for Segment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Segment").field("name", &self.name).field("params", &self.params).finish()
    }
}

/// A random non-zero epoch for a new ring.
fn new_epoch() -> u64 {
    random_nonzero()
}

/// A random non-zero number (the kernel's generator; the clock and pid if it fails).
pub(crate) fn random_nonzero() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is a valid buffer of the length passed; flags 0 (blocking until seeded).
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    let random = if got == 8 {
        u64::from_le_bytes(bytes)
    } else {
        (unix_ns() ^ u64::from(std::process::id()) << 40).wrapping_mul(0x9E37_79B9_7F4A_7C15)
    };
    random.max(1)
}

fn unix_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Segment {
    fn initialize(map: Mapping, params: RingParams, heartbeat_timeout: Duration, name: Option<String>) -> Segment {
        let mut seg = Segment { creator_beat: None, map: Arc::new(map), params, name };
        let d = &seg.header().descriptor;
        let me = Identity::of(ProcessId::current());
        d.layout_version.store(LAYOUT_VERSION, Relaxed);
        d.header_len.store(HEADER_LEN as u32, Relaxed);
        d.capacity.store(params.capacity, Relaxed);
        d.segment_len.store(HEADER_LEN as u64 + params.capacity, Relaxed);
        d.max_message_len.store(params.max_message_len, Relaxed);
        d.payload_align.store(params.payload_align.bytes() as u32, Relaxed);
        d.creator_pid.store(me.pid, Relaxed);
        d.creator_start_time.store(me.start_time, Relaxed);
        d.created_unix_ns.store(unix_ns(), Relaxed);
        d.epoch.store(params.epoch, Relaxed);
        d.heartbeat_timeout_ms.store(heartbeat_timeout.as_millis() as u32, Relaxed);
        d.creator_pid_ns.store(me.pid_ns, Relaxed);
        d.creator_time_ns.store(me.time_ns, Relaxed);
        d.creator_boot_id.store(me.boot_id, Relaxed);
        d.creator_heartbeat_ns.store(liveness::now_ns(), Relaxed);
        d.magic.store(MAGIC, Release);
        seg.creator_beat = Some(Arc::new(heartbeat::register(&seg, heartbeat::Target::Creator)));
        seg
    }

    /// Opens the named segment `/dev/shm/tadpole.<name>` and validates it.
    pub fn open(name: &str) -> Result<Segment, OpenError> {
        let os_name = shm::os_name(name).ok_or_else(|| OpenError::InvalidName(name.to_owned()))?;
        let fd = Mapping::open_named(&os_name).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound(name.to_owned()),
            _ => OpenError::Io(e),
        })?;
        Segment::validate(fd, Some(name.to_owned()))
    }

    /// Maps and validates a segment from a file descriptor (a memfd inherited from a parent).
    pub fn from_fd(fd: OwnedFd) -> Result<Segment, OpenError> {
        Segment::validate(fd, None)
    }

    /// Checks the header through a mapping of the header page alone, then maps (and populates)
    /// the declared size and checks again: a hostile file costs no more than a page to refuse.
    fn validate(fd: OwnedFd, name: Option<String>) -> Result<Segment, OpenError> {
        let actual = Mapping::file_size(&fd).map_err(OpenError::Io)?.len;
        if actual < HEADER_LEN as u64 {
            return Err(SegmentFault::SizeMismatch { expected: HEADER_LEN as u64, actual }.into());
        }
        let probe = Mapping::map_prefix(&fd, HEADER_LEN).map_err(OpenError::Io)?;
        // SAFETY: the probe maps HEADER_LEN page-aligned bytes; SegmentHeader is made only of
        // atomics and padding, valid for any bit pattern.
        let checked = validate_header(unsafe { probe.ptr().cast::<SegmentHeader>().as_ref() }, actual);
        // A file truncated since its size was read faulted, and reads as zeros (see `sigbus`).
        if probe.truncated_after_reads() {
            return Err(SegmentFault::Truncated.into());
        }
        checked?;
        drop(probe);
        let map = Arc::new(Mapping::map_existing(fd, actual as usize).map_err(OpenError::Io)?);
        // SAFETY: as above, on the full mapping of at least HEADER_LEN bytes.
        let checked = validate_header(unsafe { map.ptr().cast::<SegmentHeader>().as_ref() }, actual);
        if map.probe_truncated() {
            return Err(SegmentFault::Truncated.into());
        }
        let params = checked?;
        Ok(Segment { creator_beat: None, map, params, name })
    }

    pub(crate) fn header(&self) -> &SegmentHeader {
        // SAFETY: every Segment's mapping was checked to hold at least HEADER_LEN bytes (or was
        // created with them); page alignment satisfies SegmentHeader's alignment.
        unsafe { self.map.ptr().cast::<SegmentHeader>().as_ref() }
    }

    pub(crate) fn data(&self) -> NonNull<u8> {
        // SAFETY: the mapping is HEADER_LEN + capacity bytes, validated at open.
        unsafe { self.map.ptr().add(HEADER_LEN) }
    }

    /// The name given at creation or open; `None` for anonymous segments.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Bytes in the data region.
    pub fn capacity(&self) -> usize {
        self.params.capacity as usize
    }

    /// Largest payload accepted.
    pub fn max_message_len(&self) -> usize {
        self.params.max_message_len as usize
    }

    /// Payload alignment.
    pub fn payload_align(&self) -> PayloadAlign {
        self.params.payload_align
    }

    /// A random number drawn when the ring was created: a ring recreated under the same name
    /// has another epoch, so `(epoch, position)` names one record for good (what relays and
    /// deduplicating consumers key on).
    pub fn epoch(&self) -> u64 {
        self.params.epoch
    }

    pub(crate) fn record_bounds(&self) -> layout::RecordBounds {
        layout::RecordBounds {
            capacity: self.params.capacity,
            max_message_len: self.params.max_message_len,
            payload_align: self.params.payload_align.bytes(),
        }
    }

    /// The process that created the segment (its pid as seen in its own PID namespace).
    pub fn creator(&self) -> ProcessId {
        creator_in(self.header())
    }

    /// Whether the creator may still run, judged like an attached side (see
    /// [`RingBuilder::heartbeat_timeout`]): by its pid in a shared PID namespace, otherwise by
    /// its heartbeat, which it refreshes while it holds the segment.
    pub(crate) fn creator_alive(&self) -> bool {
        creator_alive_in(self.header())
    }

    /// The heartbeat timeout stored at creation, made safe to use (see `heartbeat::timeout_from_ms`).
    pub(crate) fn heartbeat_timeout(&self) -> Duration {
        heartbeat_timeout_in(self.header())
    }

    /// Keeps the segment's name after this process's last handle drops (the creator unlinks
    /// it by default). No effect on segments this process opened.
    pub fn keep(&self) {
        self.map.keep();
    }

    /// The segment's file descriptor, to pass an anonymous segment to a child process;
    /// `None` for a private (heap) ring.
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.map.fd().map(|fd| fd.as_fd())
    }

    /// Whether the file behind this segment is now shorter than its mapping: another process
    /// truncated it (only a named segment, or an unsealed descriptor, can be). Touching the part
    /// past the new end faults with `SIGBUS`, which this crate catches (see
    /// [`was_truncated`](Self::was_truncated)); this asks the file itself, so it also sees a
    /// shrink that faults nowhere (by less than the last page). Always `false` for sealed and
    /// private rings. Tools call it before reading a ring they do not own; it is a syscall
    /// (`fstat`), so it stays off the fast path.
    pub fn is_truncated(&self) -> io::Result<bool> {
        match self.map.fd() {
            Some(fd) => Ok(Mapping::file_size(fd)?.len < HEADER_LEN as u64 + self.params.capacity),
            None => Ok(false),
        }
    }

    /// Whether the segment's file was truncated under this process's mapping (another process
    /// shrank it), which this process survived: the `SIGBUS` of touching the part that is gone
    /// was caught, and the whole mapping replaced with zeros here, so that nothing faults again.
    /// Producers, consumers, observers and attaches on this segment then return
    /// [`SegmentFault::Truncated`] or [`CorruptReason::Truncated`](crate::CorruptReason::Truncated)
    /// at their next liveness check.
    ///
    /// It first touches the mapping's last byte, so a truncation nothing here has met yet is
    /// found now; and it is ordered after this thread's earlier reads of the ring: `false` means
    /// every byte this thread read from it before the call came from the file, none from zeros a
    /// truncation left. Call it after copying a payload that must be intact. No syscall: one
    /// load of the mapping and one of a flag, behind a fence.
    ///
    /// Unlike [`is_truncated`](Self::is_truncated) (an `fstat`), it says what happened to this
    /// process's mapping, not what the file's size is now; a file shrunk by less than its last
    /// page (which zeroes the end of that page and faults nowhere) is seen only by
    /// `is_truncated`. Always `false` for sealed and private rings, which cannot be truncated.
    /// How it works, and its limits: [the crate docs](crate#truncated-named-rings).
    ///
    /// ```
    /// let segment = ipc_core::RingBuilder::new(4096).create_anonymous()?;
    /// assert!(!segment.was_truncated());
    /// # Ok::<(), ipc_core::CreateError>(())
    /// ```
    pub fn was_truncated(&self) -> bool {
        self.map.truncated_after_reads()
    }

    /// Whether the segment is known truncated, after touching the mapping's last byte so that a
    /// file shrunk below it is found now: for the liveness checks.
    pub(crate) fn probe_truncated(&self) -> bool {
        self.map.probe_truncated()
    }

    /// Removes the named segment `name`; processes that mapped it keep their mapping.
    pub fn unlink(name: &str) -> Result<(), OpenError> {
        let os_name = shm::os_name(name).ok_or_else(|| OpenError::InvalidName(name.to_owned()))?;
        shm::unlink(&os_name).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => OpenError::NotFound(name.to_owned()),
            _ => OpenError::Io(e),
        })
    }

    /// Unlinks the named segment if no process that uses it (creator, producer, consumer) may
    /// still run; returns whether it was removed. See [`Segment::is_reclaimable`] for what
    /// counts as stale.
    pub fn reclaim_if_stale(name: &str) -> Result<bool, OpenError> {
        match Segment::judge_stale(name)? {
            Staleness::InUse => Ok(false),
            Staleness::Unreadable => Segment::unlink(name).map(|()| true),
            Staleness::Stale(opened) => {
                // The name must still be the file we judged: its creator may have unlinked it
                // and another process made a new ring under the same name meanwhile.
                if !opened.as_fd().is_some_and(|fd| same_file_as_name(fd, name)) {
                    return Ok(false);
                }
                Segment::unlink(name).map(|()| true)
            }
        }
    }

    /// Whether [`Segment::reclaim_if_stale`] would remove the named segment now. It never takes
    /// a segment whose users it cannot judge for stale: a process in another PID namespace
    /// counts as alive while its heartbeat is fresh (see [`RingBuilder::heartbeat_timeout`]),
    /// and one whose `/proc` entry cannot be read as alive while `kill` finds its pid. A file
    /// that is not a readable ring (garbage, or caught between its creator's `shm_open` and its
    /// header write) is stale only once it is a minute old; one of another layout version, never.
    pub fn is_reclaimable(name: &str) -> Result<bool, OpenError> {
        Segment::judge_stale(name).map(|s| !matches!(s, Staleness::InUse))
    }

    fn judge_stale(name: &str) -> Result<Staleness, OpenError> {
        match Segment::open(name) {
            Ok(seg) if seg.status().anyone_alive() => Ok(Staleness::InUse),
            Ok(seg) => Ok(Staleness::Stale(seg)),
            Err(OpenError::Invalid(SegmentFault::UnsupportedVersion { .. })) => Ok(Staleness::InUse),
            Err(OpenError::Invalid(_)) if shm_file_age(name).is_some_and(|age| age > UNREADABLE_GRACE) => {
                Ok(Staleness::Unreadable)
            }
            Err(OpenError::Invalid(_)) => Ok(Staleness::InUse),
            Err(e) => Err(e),
        }
    }

    /// Names of the segments in `/dev/shm` that carry the Tadpole prefix.
    pub fn list() -> io::Result<Vec<String>> {
        let mut names: Vec<String> = std::fs::read_dir("/dev/shm")?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_prefix(shm::NAME_PREFIX).map(str::to_owned))
            .collect();
        names.sort();
        Ok(names)
    }

    /// A snapshot of positions, attachments and counters, read without disturbing the hot
    /// path (plain loads of lines the owners write; no stores).
    pub fn status(&self) -> crate::stats::RingStatus {
        crate::stats::RingStatus::read(self, self.header())
    }
}

/// [`Segment::creator`], read from `h` (the mapping, or a copy of it).
pub(crate) fn creator_in(h: &SegmentHeader) -> ProcessId {
    let d = &h.descriptor;
    ProcessId { pid: d.creator_pid.load(Relaxed), start_time: d.creator_start_time.load(Relaxed) }
}

/// [`Segment::creator_alive`], read from `h`.
pub(crate) fn creator_alive_in(h: &SegmentHeader) -> bool {
    let d = &h.descriptor;
    let id = Identity {
        pid: d.creator_pid.load(Relaxed),
        start_time: d.creator_start_time.load(Relaxed),
        pid_ns: d.creator_pid_ns.load(Relaxed),
        time_ns: d.creator_time_ns.load(Relaxed),
        boot_id: d.creator_boot_id.load(Relaxed),
    };
    let verdict = liveness::judge(&id, d.creator_heartbeat_ns.load(Relaxed), heartbeat_timeout_in(h));
    matches!(verdict, Verdict::Alive(_))
}

/// [`Segment::heartbeat_timeout`], read from `h`.
pub(crate) fn heartbeat_timeout_in(h: &SegmentHeader) -> Duration {
    heartbeat::timeout_from_ms(h.descriptor.heartbeat_timeout_ms.load(Relaxed))
}

enum Staleness {
    InUse,
    /// Not a ring, and old.
    Unreadable,
    Stale(Segment),
}

/// How old a segment that is not a readable ring must be before [`Segment::reclaim_if_stale`]
/// takes it for garbage rather than a ring being created.
const UNREADABLE_GRACE: Duration = Duration::from_secs(60);

fn shm_path(name: &str) -> String {
    format!("/dev/shm/{}{name}", shm::NAME_PREFIX)
}

/// Time since the named segment's file was last modified (`ftruncate` by its creator counts).
fn shm_file_age(name: &str) -> Option<Duration> {
    let modified = std::fs::metadata(shm_path(name)).ok()?.modified().ok()?;
    // A modification time in the future is a file we know nothing about: not old.
    Some(SystemTime::now().duration_since(modified).unwrap_or(Duration::ZERO))
}

fn same_file_as_name(fd: BorrowedFd<'_>, name: &str) -> bool {
    shm::names_file(Some(&shm_path(name)), fd)
}

/// Copies every descriptor field out once and checks it against the mapped size.
fn validate_header(h: &SegmentHeader, mapped_len: u64) -> Result<RingParams, SegmentFault> {
    let d = &h.descriptor;
    let magic = d.magic.load(Acquire);
    if magic == 0 {
        return Err(SegmentFault::NotInitialized);
    }
    if magic != MAGIC {
        return Err(SegmentFault::BadMagic(magic));
    }
    let version = d.layout_version.load(Relaxed);
    if version != LAYOUT_VERSION {
        return Err(SegmentFault::UnsupportedVersion { found: version, supported: LAYOUT_VERSION });
    }
    let header_len = d.header_len.load(Relaxed);
    if header_len as usize != HEADER_LEN {
        return Err(SegmentFault::BadField { field: "header_len", value: header_len.into() });
    }
    let capacity = d.capacity.load(Relaxed);
    if !capacity.is_power_of_two() || !(MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity) {
        return Err(SegmentFault::BadField { field: "capacity", value: capacity });
    }
    let segment_len = d.segment_len.load(Relaxed);
    if segment_len != HEADER_LEN as u64 + capacity {
        return Err(SegmentFault::BadField { field: "segment_len", value: segment_len });
    }
    if mapped_len != segment_len {
        return Err(SegmentFault::SizeMismatch { expected: segment_len, actual: mapped_len });
    }
    let max = d.max_message_len.load(Relaxed);
    if u64::from(max) > layout::max_message_len_for(capacity) {
        return Err(SegmentFault::BadField { field: "max_message_len", value: max.into() });
    }
    let payload_align = match d.payload_align.load(Relaxed) {
        8 => PayloadAlign::Eight,
        64 => PayloadAlign::SixtyFour,
        other => {
            return Err(SegmentFault::BadField { field: "payload_align", value: other.into() });
        }
    };
    let epoch = d.epoch.load(Relaxed);
    if epoch == 0 {
        return Err(SegmentFault::BadField { field: "epoch", value: 0 });
    }
    let head = h.consumer_position.position.load(Acquire);
    let tail = h.producer_position.position.load(Acquire);
    check_positions(head, tail, capacity)?;
    Ok(RingParams { capacity, max_message_len: max, payload_align, epoch })
}

/// Positions as stored in the header: record-aligned, below [`layout::MAX_POSITION`], at most a
/// ring apart. The head may be ahead of the stored tail: a producer killed between publishing a
/// record and storing its tail leaves records the consumer may already have read.
pub(crate) fn check_positions(head: u64, tail: u64, capacity: u64) -> Result<(), SegmentFault> {
    if head % 8 != 0
        || tail % 8 != 0
        || head >= layout::MAX_POSITION
        || tail >= layout::MAX_POSITION
        || head.abs_diff(tail) > capacity
    {
        return Err(SegmentFault::Positions { head, tail, capacity });
    }
    Ok(())
}

/// The consumer position as the producer, which knows its own tail exactly, must find it.
pub(crate) fn check_head_behind(head: u64, tail: u64, capacity: u64) -> Result<(), SegmentFault> {
    if head % 8 != 0 || head > tail || tail - head > capacity {
        return Err(SegmentFault::Positions { head, tail, capacity });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_refuses_bad_shapes() {
        assert!(matches!(RingBuilder::new(1000).create_anonymous(), Err(CreateError::InvalidOptions(_))));
        assert!(matches!(RingBuilder::new(2048).create_anonymous(), Err(CreateError::InvalidOptions(_))));
        assert!(matches!(
            RingBuilder::new(4096).max_message_len(4000).create_anonymous(),
            Err(CreateError::InvalidOptions(_))
        ));
        assert!(RingBuilder::new(4096).max_message_len(1000).create_anonymous().is_ok());
    }
}
