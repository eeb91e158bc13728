//! A doorbell an event loop can poll: a file descriptor that turns readable when the ring gains
//! a record while its consumer sleeps in `poll`/`epoll`/`zmq::poll` (or an asyncio loop) with
//! other sources, instead of on the ring's futex.
//!
//! The descriptor is an unbound-peer `AF_UNIX` datagram socket the consumer binds to an address
//! in the abstract namespace, `"\0tadpole-bell-<id>"`, with a random 64-bit id it publishes in
//! the consumer's doorbell block. The producer, when the Dekker handshake of `wait.rs` finds the
//! consumer armed (`sleeping == SLEEPING_ON_FD`), sends one byte there from a socket of its own;
//! that is the only syscall, and it happens only on the slow path, exactly where a futex wake
//! would. Abstract addresses need no file and vanish with the socket, so nothing is left behind
//! by a crash. They belong to a network namespace: a producer in another network namespace
//! (sharing only `/dev/shm`) cannot reach the bell, and the consumer learns of its records only
//! when its poll times out — the waiting side should always poll with a timeout.
//!
//! Datagrams from anyone else who guesses the address only cause a spurious wake-up: the
//! consumer re-checks the ring after every wake and drains the socket.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

/// The abstract socket address of bell `id`.
fn address(id: u64) -> nix::Result<UnixAddr> {
    UnixAddr::new_abstract(format!("tadpole-bell-{id:016x}").as_bytes())
}

fn datagram_socket() -> nix::Result<OwnedFd> {
    socket::socket(AddressFamily::Unix, SockType::Datagram, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)
}

/// The consumer's end: the bound socket and its id.
#[derive(Debug)]
pub(crate) struct BellListener {
    fd: OwnedFd,
    id: u64,
}

impl BellListener {
    /// Binds a fresh bell under a random id (retrying on the rare collision).
    pub(crate) fn bind() -> std::io::Result<BellListener> {
        let mut last = std::io::Error::from(std::io::ErrorKind::AddrInUse);
        for _ in 0..8 {
            let id = crate::segment::random_nonzero();
            let fd = datagram_socket()?;
            match socket::bind(fd.as_raw_fd(), &address(id)?) {
                Ok(()) => return Ok(BellListener { fd, id }),
                Err(nix::errno::Errno::EADDRINUSE) => last = std::io::Error::from(std::io::ErrorKind::AddrInUse),
                Err(e) => return Err(e.into()),
            }
        }
        Err(last)
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads every datagram waiting (non-blocking), so the descriptor is quiet until the next
    /// ring.
    pub(crate) fn drain(&self) {
        let mut buf = [0u8; 16];
        while socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT).is_ok() {}
    }
}

/// The producer's end: a socket to send from, made on the first ring and kept.
#[derive(Debug, Default)]
pub(crate) struct BellRinger {
    fd: Option<OwnedFd>,
}

impl BellRinger {
    /// Sends one byte to bell `id`. Failures are ignored: a full socket buffer means the bell
    /// already rang; a missing listener (the consumer closed it, or it lives in another network
    /// namespace) leaves the consumer to its poll timeout.
    #[cold]
    pub(crate) fn ring(&mut self, id: u64) {
        if self.fd.is_none() {
            self.fd = datagram_socket().ok();
        }
        let (Some(fd), Ok(addr)) = (&self.fd, address(id)) else { return };
        let _ = socket::sendto(fd.as_raw_fd(), &[1], &addr, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL);
    }
}
