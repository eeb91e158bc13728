//! Surviving a named ring's file being truncated under its mappings.
//!
//! Any process that can open `/dev/shm/tadpole.<name>` for writing can shrink it. Every page of
//! a mapping past the new end of the file then faults with `SIGBUS`, whose default action kills
//! the process: the creator (its heartbeat thread writes into the header page), the producer
//! and the consumer. Sealed memfd rings ([`RingBuilder::create_anonymous`]) cannot shrink;
//! named ones can, so this module makes the fault survivable, the way Wayland compositors
//! survive a client truncating a `wl_shm` pool (libwayland-server's `wl_shm.c`):
//!
//! - Every mapping of a file that this crate makes is registered here: its address range and a
//!   truncation state, in a slot of a lock-free registry (see [`FIRST`] below).
//! - A process-wide `SIGBUS` handler, installed once, on the first registration, looks up the
//!   faulting address (`si_addr`, for a fault the kernel raised past a file's end:
//!   `BUS_ADRERR`). Inside a registered mapping, it maps zero-filled anonymous memory over the
//!   *whole* mapping with one `mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS)` (a plain syscall,
//!   async-signal-safe), records the truncation, and returns: the faulting access runs again,
//!   on the zeros. The whole mapping, not the faulting page: this process must then see one
//!   consistent image (all zeros), not a header from the file beside a data region of zeros.
//! - The ring code reads the truncation state (one relaxed load) where it already looks at the
//!   peer's liveness, and reports it as an ordinary error: `SegmentFault::Truncated` for the
//!   producer and attaching, `CorruptReason::Truncated` for the consumer, `ObserveError::Truncated`
//!   for observers. A header of zeros is refused by the checks every reader already makes of
//!   hostile memory (a zero record header is "nothing published"), so nothing read after the
//!   remap is ever handed out as a record.
//! - The liveness check also reads the last byte of the mapping ([`Guard::probe`]): a file cut
//!   to any size more than a page short faults there, so a process that never touches the part
//!   that is gone (a consumer waiting at a position in the first half of a ring cut to half)
//!   still learns of the truncation within the liveness schedule. The heartbeat thread probes
//!   too, every quarter of the heartbeat timeout, and stops refreshing a truncated segment.
//!
//! Any other `SIGBUS` goes to the action that was installed before ours: the default (restored,
//! so the fault repeats and ends the process as before), `SIG_IGN`, or a handler (Rust's own
//! stack-overflow handler, a tool's), called as its flags say (`SA_SIGINFO`, `SA_RESETHAND`).
//!
//! Limits:
//! - A program that installs its own `SIGBUS` handler *after* this crate mapped a named ring
//!   must chain to the one it replaces (the `oldact` of its `sigaction` call), as we chain to
//!   ours, or truncation kills it again.
//! - Messages a producer commits into the zeros, and a payload read while the remap happens, are
//!   lost: a [`ReadGuard`](crate::ReadGuard) whose bytes were read (or copied) before
//!   [`Segment::was_truncated`] said `false` is intact; after a `true`, they may be zeros.
//! - A file shrunk by less than a page past its last page does not fault at all: the kernel
//!   zeroes the tail of that page, which is no different from a hostile process writing zeros
//!   there, and is refused like it.
//! - A file truncated and grown back before this process touched it reads as zeros without any
//!   fault: hostile memory again, refused by the same checks, not reported as a truncation.
//! - Under Miri, nothing is installed (no signals there); rings under Miri live in the heap.
//!
//! [`RingBuilder::create_anonymous`]: crate::RingBuilder::create_anonymous
//! [`Segment::was_truncated`]: crate::Segment::was_truncated

use std::ptr;
use std::sync::Once;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicUsize, Ordering::*};

/// Slots per chunk of the registry.
const CHUNK_SLOTS: usize = 64;

// Slot states.
const FREE: u32 = 0;
/// Being filled in by a registration; not looked at by the handler.
const CLAIMED: u32 = 1;
const LIVE: u32 = 2;
/// Unregistering: the handler no longer acts on it; waits for handlers already inside.
const DYING: u32 = 3;

// Truncation states of a live slot.
const INTACT: u32 = 0;
/// A handler is mapping the zeros (set before the `mmap`, so any zero read after the remap
/// happens after it).
const REMAPPING: u32 = 1;
const REMAPPED: u32 = 2;
/// The `mmap` failed: the fault is treated as not ours, and ends the process as before.
const REMAP_FAILED: u32 = 3;

/// One registered mapping.
pub(crate) struct Slot {
    state: AtomicU32,
    /// Handlers inside this slot right now; unregistering waits for none.
    users: AtomicU32,
    start: AtomicUsize,
    len: AtomicUsize,
    truncation: AtomicU32,
}

impl Slot {
    const fn new() -> Slot {
        Slot {
            state: AtomicU32::new(FREE),
            users: AtomicU32::new(0),
            start: AtomicUsize::new(0),
            len: AtomicUsize::new(0),
            truncation: AtomicU32::new(INTACT),
        }
    }

    fn covers(&self, addr: usize) -> bool {
        let start = self.start.load(Relaxed);
        addr.wrapping_sub(start) < self.len.load(Relaxed)
    }
}

/// A fixed block of slots; blocks are linked, allocated outside the handler and never freed, so
/// the handler walks them with loads only.
struct Chunk {
    slots: [Slot; CHUNK_SLOTS],
    next: AtomicPtr<Chunk>,
}

impl Chunk {
    const fn new() -> Chunk {
        Chunk { slots: [const { Slot::new() }; CHUNK_SLOTS], next: AtomicPtr::new(ptr::null_mut()) }
    }

    fn iter() -> impl Iterator<Item = &'static Chunk> {
        std::iter::successors(Some(&FIRST), |chunk| {
            // SAFETY: `next` is null or a chunk leaked by `register`, never freed.
            unsafe { chunk.next.load(Acquire).as_ref() }
        })
    }
}

/// The registry: a linked list of chunks, the first one static. It grows by a chunk when every
/// slot is taken, so it never refuses a mapping (a registry of fixed size would leave the
/// mappings past its size unprotected); it never shrinks, which costs one chunk (about 2 KiB)
/// per 64 file mappings held at the same time, at most.
static FIRST: Chunk = Chunk::new();

/// The action `SIGBUS` had before ours, for the faults that are not ours: a leaked box, set
/// before our handler is installed, never freed.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(ptr::null_mut());

/// Whether our handler is installed (false under Miri, or if `sigaction` failed).
static INSTALLED: AtomicU32 = AtomicU32::new(0);

static INSTALL: Once = Once::new();

/// A mapping's registration: unregisters when dropped, which must happen before the mapping is
/// unmapped.
pub(crate) struct Guard {
    slot: &'static Slot,
}

impl Guard {
    /// Whether the handler found this mapping's file truncated and mapped zeros over it. One
    /// relaxed load; a caller that must know that bytes it read were not zeros a truncation
    /// left uses [`Guard::truncated_after_reads`].
    pub(crate) fn truncated(&self) -> bool {
        self.slot.truncation.load(Relaxed) != INTACT
    }

    /// [`probe`](Self::probe), ordered after every load this thread made of the mapping before
    /// it: `false` means none of them read zeros that a truncation put there. Two ways zeros
    /// appear: the remap (its state is set before it), and the kernel zeroing the tail of the
    /// page the file now ends in, which it does only after unmapping every page past that one,
    /// so the probe of the last byte then faults. (A file shrunk by less than its last page
    /// faults nowhere; see the module docs.)
    pub(crate) fn truncated_after_reads(&self) -> bool {
        std::sync::atomic::fence(SeqCst);
        self.probe()
    }

    /// Reads the mapping's last byte, so that a file shrunk below it faults now and the handler
    /// records it, then returns [`truncated`](Self::truncated). For the liveness checks: one
    /// load of a line nobody else is likely to write, no syscall.
    pub(crate) fn probe(&self) -> bool {
        if self.truncated() {
            return true;
        }
        let last = self.slot.start.load(Relaxed) + self.slot.len.load(Relaxed) - 1;
        // SAFETY: `last` is the last byte of this live registration's mapping, which stays
        // mapped while the guard (owned by the mapping) lives; an atomic load of shared memory
        // another process may write is a race on the value only. A fault here is ours to handle:
        // the guard exists only while our handler is installed.
        let byte = unsafe { std::sync::atomic::AtomicU8::from_ptr(last as *mut u8) }.load(Relaxed);
        // The value is unused: this keeps the load from being optimised away.
        std::hint::black_box(byte);
        self.truncated()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let slot = self.slot;
        // Handlers that already saw the slot live finish first: the range may be unmapped (and
        // reused by another mapping) only once no handler can still map zeros over it. A handler
        // runs only while a thread faults inside the mapping, which a thread about to unmap it
        // cannot be doing, so this wait is for a handler already past its last instruction.
        slot.state.store(DYING, SeqCst);
        while slot.users.load(SeqCst) != 0 {
            std::hint::spin_loop();
        }
        slot.state.store(FREE, Release);
    }
}

/// Registers the mapping `[start, start + len)` (of a file, `len > 0`), installing the handler on
/// first use. `None` when no handler could be installed: the mapping works, unprotected.
pub(crate) fn register(start: *mut u8, len: usize) -> Option<Guard> {
    if cfg!(miri) || len == 0 {
        return None;
    }
    INSTALL.call_once(install);
    if INSTALLED.load(Acquire) == 0 {
        return None;
    }
    let mut chunk = &FIRST;
    loop {
        for slot in &chunk.slots {
            if slot.state.compare_exchange(FREE, CLAIMED, Acquire, Relaxed).is_ok() {
                slot.start.store(start as usize, Relaxed);
                slot.len.store(len, Relaxed);
                slot.truncation.store(INTACT, Relaxed);
                // Publishes the range with the state (the handler acquires the state first).
                slot.state.store(LIVE, SeqCst);
                return Some(Guard { slot });
            }
        }
        // SAFETY: `next` is null or a leaked chunk, never freed.
        chunk = match unsafe { chunk.next.load(Acquire).as_ref() } {
            Some(next) => next,
            None => {
                let fresh = Box::into_raw(Box::new(Chunk::new()));
                match chunk.next.compare_exchange(ptr::null_mut(), fresh, AcqRel, Acquire) {
                    // SAFETY: just published; leaked for good.
                    Ok(_) => unsafe { &*fresh },
                    Err(theirs) => {
                        // SAFETY: `fresh` was never published; this thread owns it alone.
                        drop(unsafe { Box::from_raw(fresh) });
                        // SAFETY: `theirs` is a leaked chunk, never freed.
                        unsafe { &*theirs }
                    }
                }
            }
        };
    }
}

/// Installs [`on_sigbus`], keeping the action it replaces for [`chain`].
fn install() {
    // SAFETY: all-zero is a valid `sigaction` (SIG_DFL, empty mask, no flags).
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: queries the current action into a valid out-parameter.
    if unsafe { libc::sigaction(libc::SIGBUS, ptr::null(), &mut old) } != 0 {
        return;
    }
    // Published before our handler can run.
    PREVIOUS.store(Box::into_raw(Box::new(old)), Release);
    // SAFETY: as above.
    let mut ours: libc::sigaction = unsafe { std::mem::zeroed() };
    ours.sa_sigaction = on_sigbus as *const () as usize;
    // SA_NODEFER: a fault inside a chained handler must not meet a blocked SIGBUS (the kernel
    // would kill the process at once). SA_ONSTACK: Rust's stack-overflow handler, which we chain
    // to, expects the alternate stack.
    ours.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_ONSTACK;
    // SAFETY: `ours.sa_mask` is a valid set to empty.
    unsafe { libc::sigemptyset(&mut ours.sa_mask) };
    let mut replaced: libc::sigaction = old;
    // SAFETY: installs a handler that does only async-signal-safe things (atomics, mmap,
    // sigaction, raise, and the previous handler); both arguments are valid.
    if unsafe { libc::sigaction(libc::SIGBUS, &ours, &mut replaced) } != 0 {
        return;
    }
    if replaced.sa_sigaction != old.sa_sigaction || replaced.sa_flags != old.sa_flags {
        // Another thread installed an action between our query and our install: that is the one
        // to chain to. (The first box stays leaked: a handler may be reading it.)
        PREVIOUS.store(Box::into_raw(Box::new(replaced)), Release);
    }
    INSTALLED.store(1, Release);
}

/// The handler. Async-signal-safe: atomics, `mmap`, `sigaction`, `raise`, the previous handler.
extern "C" fn on_sigbus(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: errno is thread-local; the handler must leave it as the interrupted code had it.
    let errno = unsafe { *libc::__errno_location() };
    // SAFETY: the kernel passes a valid siginfo_t to an SA_SIGINFO handler (checked for null
    // anyway: a handler called by hand may pass none).
    let fault_addr = unsafe { info.as_ref() }
        .filter(|i| i.si_code == libc::BUS_ADRERR)
        // SAFETY: for a SIGBUS fault the kernel fills `si_addr`.
        .map(|i| unsafe { i.si_addr() } as usize);
    if fault_addr.is_some_and(remap_if_ours) {
        // SAFETY: as above.
        unsafe { *libc::__errno_location() = errno };
        return;
    }
    // SAFETY: `info` and `context` are what the kernel passed us.
    unsafe { chain(signal, info, context) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// If `addr` lies in a registered mapping: maps zeros over the whole of it (once) and returns
/// true, so the faulting access runs again on them.
fn remap_if_ours(addr: usize) -> bool {
    for chunk in Chunk::iter() {
        for slot in &chunk.slots {
            if slot.state.load(Acquire) != LIVE || !slot.covers(addr) {
                continue;
            }
            // Entered before the state is looked at again: an unregistration that marked the slot
            // dying after this waits for us to leave; one that did before is seen here.
            slot.users.fetch_add(1, SeqCst);
            let ours = slot.state.load(SeqCst) == LIVE && slot.covers(addr);
            let handled = ours && remap(slot);
            slot.users.fetch_sub(1, SeqCst);
            if ours {
                return handled;
            }
        }
    }
    false
}

/// Maps zeros over `slot`'s mapping, unless another thread did (or is doing it: returning
/// re-runs the access, which faults again until that thread is done).
fn remap(slot: &Slot) -> bool {
    match slot.truncation.compare_exchange(INTACT, REMAPPING, SeqCst, SeqCst) {
        Ok(_) => {
            let (start, len) = (slot.start.load(Relaxed), slot.len.load(Relaxed));
            let flags = libc::MAP_FIXED | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
            // SAFETY: replaces exactly the registered mapping (live, and kept mapped while a
            // thread faults in it) with private zeros of the same size and protection. Every
            // Rust view of it is of atomics or of bytes valid as zeros; the values change, as
            // shared memory's may at any time.
            let got = unsafe {
                libc::mmap(start as *mut libc::c_void, len, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0)
            };
            let ok = got as usize == start;
            slot.truncation.store(if ok { REMAPPED } else { REMAP_FAILED }, SeqCst);
            ok
        }
        Err(REMAP_FAILED) => false,
        Err(_) => true,
    }
}

/// Hands a `SIGBUS` that is not ours to the action installed before ours.
///
/// # Safety
///
/// `info` and `context` are what the kernel passed to [`on_sigbus`].
unsafe fn chain(signal: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // A fault the kernel raised (positive code) repeats when the handler returns; a signal sent
    // by a process (kill, sigqueue, tgkill: zero or negative) does not.
    // SAFETY: as in `on_sigbus`.
    let raised_by_fault = unsafe { info.as_ref() }.is_some_and(|i| i.si_code > 0);
    // SAFETY: null or a leaked box, never freed.
    let previous = unsafe { PREVIOUS.load(Acquire).as_ref() };
    let handler = previous.map_or(libc::SIG_DFL, |p| p.sa_sigaction);
    // The kernel never lets a fault be ignored: an ignored SIGBUS fault kills as the default.
    if handler == libc::SIG_DFL || (handler == libc::SIG_IGN && raised_by_fault) {
        restore_default();
        if !raised_by_fault {
            // SAFETY: raise is async-signal-safe; SIGBUS is not blocked here (SA_NODEFER).
            unsafe { libc::raise(libc::SIGBUS) };
        }
        return;
    }
    if handler == libc::SIG_IGN {
        return;
    }
    let Some(previous) = previous else { return };
    if previous.sa_flags & libc::SA_RESETHAND != 0 {
        // What the kernel would have done before calling it: it may rely on returning into the
        // default action (the tools' handler does).
        restore_default();
    }
    if previous.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: an SA_SIGINFO action's `sa_sigaction` is a three-argument handler, called here
        // as the kernel would have called it.
        let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
            unsafe { std::mem::transmute(handler) };
        f(signal, info, context);
    } else {
        // SAFETY: otherwise it is a one-argument `sa_handler`.
        let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(handler) };
        f(signal);
    }
}

/// Gives `SIGBUS` its default action back (the process is about to die of it).
fn restore_default() {
    // SAFETY: all-zero is SIG_DFL with an empty mask and no flags.
    let default: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: sigaction is async-signal-safe; the argument is valid.
    unsafe { libc::sigaction(libc::SIGBUS, &default, ptr::null_mut()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_grows_past_a_chunk_and_reuses_freed_slots() {
        // Ranges nothing is mapped at: registering them only fills slots.
        let guards: Vec<Guard> = (0..CHUNK_SLOTS * 2 + 3)
            .map(|i| register((0x1000 * (i + 1)) as *mut u8, 0x1000).expect("handler installed"))
            .collect();
        assert!(Chunk::iter().count() >= 3);
        assert!(guards.iter().all(|g| g.slot.state.load(Relaxed) == LIVE && !g.truncated()));
        drop(guards);
        let chunks = Chunk::iter().count();
        let again: Vec<Guard> =
            (0..CHUNK_SLOTS).map(|i| register((0x1000 * (i + 1)) as *mut u8, 0x1000).unwrap()).collect();
        assert_eq!(Chunk::iter().count(), chunks, "freed slots are reused before the registry grows");
        assert!(!remap_if_ours(0x10), "an address in no registered mapping is not ours");
        drop(again);
    }
}
