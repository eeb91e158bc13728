//! Sharing a sealed ring over a Unix socket: the creator's memfd travels to each client as an
//! `SCM_RIGHTS` message, so unrelated processes can open a ring by a name (the socket's path)
//! without a `/dev/shm` file anyone could truncate under them.
//!
//! A received descriptor is hostile input like any segment: it must carry the seals
//! [`RING_SEALS`] (its size can never change, so no mapping of it can fault with `SIGBUS`) and
//! then passes the same validation as [`Segment::from_fd`].

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::socket::sockopt::PeerCredentials;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr, getsockopt, recvmsg, sendmsg};
use nix::unistd::geteuid;

use crate::segment::{OpenError, Segment, SegmentFault};
use crate::shm::{Mapping, RING_SEALS};

/// The most descriptors one message can carry on Linux (`SCM_MAX_FD`): the receive buffer holds
/// that many, so a hostile sender can never truncate the control message, which would leave
/// descriptors installed in this process that nobody closes.
const SCM_MAX_FD: usize = 253;

/// Why a segment could not be shared.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// Only sealed segments ([`RingBuilder::create_anonymous`](crate::RingBuilder::create_anonymous))
    /// are shared: a receiver refuses anything else.
    #[error("only a sealed (anonymous memfd) segment can be shared over a socket")]
    NotSealed,
    /// [`SegmentServer::accept`] only: the client runs as another user, so it was sent nothing.
    #[error("refused a client running as uid {uid}: rings are served to their creator's user only")]
    OtherUser {
        /// The client's user id.
        uid: u32,
    },
    /// A socket call failed.
    #[error("sharing segment: {0}")]
    Io(#[from] io::Error),
}

/// Why a segment could not be received.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// Connecting or receiving failed.
    #[error("receiving segment: {0}")]
    Io(#[from] io::Error),
    /// The peer sent no descriptor (it closed the connection), or more than one.
    #[error("expected one file descriptor, received {0}")]
    DescriptorCount(usize),
    /// The descriptor may change size: it is not a memfd sealed with `F_SEAL_SHRINK`,
    /// `F_SEAL_GROW` and `F_SEAL_SEAL`, so a peer could make the mapping fault. `seals` is what it
    /// carries (`None`: it cannot carry seals at all).
    #[error("received descriptor is not sealed against resizing (seals {seals:?})")]
    NotSealed {
        /// The `F_GET_SEALS` bits found.
        seals: Option<u32>,
    },
    /// The segment's contents are not a valid ring.
    #[error("segment refused: {0}")]
    Invalid(#[from] SegmentFault),
    /// [`Segment::connect`] only: the process serving the socket runs as another user (it may
    /// have bound the path first), so nothing was taken from it.
    #[error("refused a ring served by uid {uid}: only a server of this process's user is trusted")]
    ForeignServer {
        /// The server's user id.
        uid: u32,
    },
}

impl Segment {
    /// Sends this segment's descriptor over `stream` (`SCM_RIGHTS`, one byte of payload). The
    /// receiver gets a handle to the same ring: see [`Segment::receive_fd`].
    pub fn send_fd(&self, stream: &UnixStream) -> Result<(), ShareError> {
        let fd = self.sealed_fd()?;
        let fds = [fd.as_raw_fd()];
        sendmsg::<UnixAddr>(
            stream.as_raw_fd(),
            &[IoSlice::new(b"T")],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(io::Error::from)?;
        Ok(())
    }

    /// Receives a segment sent with [`Segment::send_fd`] (or any peer's `SCM_RIGHTS` message)
    /// from `stream`, checks its seals, then validates it as [`Segment::from_fd`] does.
    pub fn receive_fd(stream: &UnixStream) -> Result<Segment, ReceiveError> {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; SCM_MAX_FD]);
        let msg = recvmsg::<UnixAddr>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = cmsg {
                // SAFETY: the kernel installed these descriptors in this process for this
                // message (close-on-exec); nothing else owns them, so each is owned exactly once.
                fds.extend(raw.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        if fds.len() != 1 {
            return Err(ReceiveError::DescriptorCount(fds.len()));
        }
        let fd = fds.pop().expect("one descriptor");
        match Mapping::seals(&fd) {
            Ok(seals) if seals.contains(RING_SEALS) => {}
            Ok(seals) => return Err(ReceiveError::NotSealed { seals: Some(seals.bits() as u32) }),
            Err(_) => return Err(ReceiveError::NotSealed { seals: None }),
        }
        Segment::from_fd(fd).map_err(|e| match e {
            OpenError::Invalid(fault) => ReceiveError::Invalid(fault),
            OpenError::Io(e) => ReceiveError::Io(e),
            other => ReceiveError::Io(io::Error::other(other.to_string())),
        })
    }

    /// Connects to a [`SegmentServer`] listening at `path` and receives its ring.
    ///
    /// The server must run as this process's effective user (checked with `SO_PEERCRED`, the
    /// credentials it had when it listened): whoever binds a path first serves it, and a ring of
    /// another user's making is refused with [`ReceiveError::ForeignServer`].
    ///
    /// ```
    /// use ipc_core::{RingBuilder, Segment, SegmentServer};
    ///
    /// // The creator: a sealed ring, served at a socket path.
    /// let ring = RingBuilder::new(1 << 16).create_anonymous()?;
    /// let path = std::env::temp_dir().join(format!("tadpole-doc-{}.sock", std::process::id()));
    /// let server = SegmentServer::bind(&ring, &path)?;
    /// let serving = std::thread::spawn(move || server.accept().map(|()| server));
    ///
    /// // Another process (here the same one) opens it by that path.
    /// let opened = Segment::connect(&path)?;
    /// let mut producer = ring.producer()?;
    /// producer.try_send(b"sealed")?;
    /// assert_eq!(&*opened.consumer()?.try_recv()?, b"sealed");
    /// drop(serving.join().unwrap()?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect(path: impl AsRef<Path>) -> Result<Segment, ReceiveError> {
        let stream = UnixStream::connect(path)?;
        let server = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        if server.uid() != geteuid().as_raw() {
            return Err(ReceiveError::ForeignServer { uid: server.uid() });
        }
        Segment::receive_fd(&stream)
    }

    /// The descriptor, if it is a memfd carrying [`RING_SEALS`].
    fn sealed_fd(&self) -> Result<std::os::fd::BorrowedFd<'_>, ShareError> {
        let fd = self.as_fd().ok_or(ShareError::NotSealed)?;
        match Mapping::seals(fd) {
            Ok(seals) if seals.contains(RING_SEALS) => Ok(fd),
            _ => Err(ShareError::NotSealed),
        }
    }
}

/// Serves a sealed ring at a Unix socket path: every client that connects (with
/// [`Segment::connect`]) receives the ring's descriptor. The socket file is made mode 0600 (only
/// this user may connect: whoever connects can read and write the ring) and removed on drop;
/// clients of other users are refused in [`accept`](Self::accept) as well.
pub struct SegmentServer {
    segment: Segment,
    listener: UnixListener,
    path: PathBuf,
}

impl SegmentServer {
    /// Listens at `path` for clients of `segment`, which must be sealed (anonymous).
    pub fn bind(segment: &Segment, path: impl AsRef<Path>) -> Result<SegmentServer, ShareError> {
        segment.sealed_fd()?;
        let path = path.as_ref().to_owned();
        let listener = UnixListener::bind(&path)?;
        let server = SegmentServer { segment: segment.clone(), listener, path };
        std::fs::set_permissions(&server.path, std::fs::Permissions::from_mode(0o600))?;
        Ok(server)
    }

    /// Waits for one client and sends it the ring, if it runs as this process's user (checked
    /// with `SO_PEERCRED`: the socket file's mode alone leaves a window between `bind` and
    /// `chmod`). Call it in a loop (on a thread of its own) to serve every client.
    pub fn accept(&self) -> Result<(), ShareError> {
        let (stream, _) = self.listener.accept()?;
        let peer = getsockopt(&stream, PeerCredentials).map_err(io::Error::from)?;
        if peer.uid() != geteuid().as_raw() {
            return Err(ShareError::OtherUser { uid: peer.uid() });
        }
        self.segment.send_fd(&stream)
    }

    /// The socket path clients connect to.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsFd for SegmentServer {
    /// The listening socket, to wait for clients with `poll`.
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

impl Drop for SegmentServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
