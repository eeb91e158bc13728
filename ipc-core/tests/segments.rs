//! Hostile and broken segments: sealed rings handed over a Unix socket (`SCM_RIGHTS`), what a
//! receiver refuses, truncated named segments, and sparse files that must not be populated.
//! Real processes (one of them another user), real sockets, real `/dev/shm`.

use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::Command;

use ipc_core::layout::HEADER_LEN;
use ipc_core::{ReceiveError, RingBuilder, Segment, SegmentFault, SegmentServer, ShareError};
use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, UnixAddr, sendmsg};
use nix::unistd::ftruncate;

const ROLE_ENV: &str = "TADPOLE_SEGMENTS_ROLE";
const PATH_ENV: &str = "TADPOLE_SEGMENTS_PATH";

fn unique(tag: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("segments-{tag}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn socket_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("tadpole-{}.sock", unique(tag)))
}

/// Unlinks a named segment when dropped, whatever happened.
struct Unlink(String);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = Segment::unlink(&self.0);
    }
}

fn child(role: &str, path: &std::path::Path) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_process_entry_point", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, role)
        .env(PATH_ENV, path);
    cmd
}

/// The child side of the tests; does nothing when run as an ordinary test.
#[test]
fn child_process_entry_point() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    let path = std::env::var(PATH_ENV).unwrap();
    match role.as_str() {
        // Connects, consumes 1000 numbered messages, checks each.
        "consume" => {
            let segment = Segment::connect(&path).expect("connect to the ring's socket");
            assert!(!segment.is_truncated().unwrap());
            let mut consumer = segment.consumer().unwrap();
            for seq in 0..1000u64 {
                let msg = consumer.recv_timeout(std::time::Duration::from_secs(20)).unwrap();
                assert_eq!(&*msg, &seq.to_le_bytes());
            }
        }
        // Becomes another user (after exec, so the binary's own permissions do not matter),
        // then connects: the server must send it nothing.
        "other-user" => {
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).unwrap();
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).unwrap();
            // The client refuses root's server as well, before it would read anything.
            match Segment::connect(&path) {
                Err(ReceiveError::ForeignServer { uid: 0 }) => {}
                other => panic!("another user got {other:?}"),
            }
        }
        // Becomes another user, serves a ring of its own at the path, says so on stdout, and
        // waits for one client (which must not be sent it either: the client is root).
        "serve-as-other-user" => {
            nix::unistd::setgid(nix::unistd::Gid::from_raw(65534)).unwrap();
            nix::unistd::setuid(nix::unistd::Uid::from_raw(65534)).unwrap();
            let ring = RingBuilder::new(4096).create_anonymous().unwrap();
            let server = SegmentServer::bind(&ring, &path).unwrap();
            println!("ready");
            assert!(matches!(server.accept(), Err(ShareError::OtherUser { uid: 0 })));
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn a_sealed_ring_served_at_a_socket_path_carries_messages_to_another_process() {
    let ring = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let path = socket_path("serve");
    let server = SegmentServer::bind(&ring, &path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let mut consumer_process = child("consume", &path).spawn().unwrap();
    server.accept().unwrap();
    let mut producer = ring.producer().unwrap();
    for seq in 0..1000u64 {
        producer.send_timeout(&seq.to_le_bytes(), std::time::Duration::from_secs(20)).unwrap();
    }
    assert!(consumer_process.wait().unwrap().success());
    assert_eq!(ring.status().consumed.messages, 1000);
    drop(server);
    assert!(!path.exists(), "the server removes its socket file");
}

#[test]
fn a_client_running_as_another_user_is_sent_nothing() {
    let ring = RingBuilder::new(4096).create_anonymous().unwrap();
    let path = socket_path("other-user");
    let server = SegmentServer::bind(&ring, &path).unwrap();
    // As if the client connected in the window before the mode was set, or through a
    // permissive directory: the credentials check still refuses it.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let mut nobody = child("other-user", &path).spawn().unwrap();
    assert!(matches!(server.accept(), Err(ShareError::OtherUser { uid: 65534 })));
    assert!(nobody.wait().unwrap().success());
}

#[test]
fn connect_refuses_a_ring_served_by_another_user() {
    use std::io::BufRead;
    assert!(nix::unistd::geteuid().is_root(), "this test needs root to become another user");
    let path = socket_path("foreign-server");
    let mut server = child("serve-as-other-user", &path).stdout(std::process::Stdio::piped()).spawn().unwrap();
    // The test harness prints its own lines first; the reader stays open until the child ends.
    let mut said = std::io::BufReader::new(server.stdout.take().unwrap()).lines();
    assert!(said.by_ref().map_while(Result::ok).any(|line| line.ends_with("ready")), "the server never got ready");
    assert!(matches!(Segment::connect(&path), Err(ReceiveError::ForeignServer { uid: 65534 })));
    assert!(server.wait().unwrap().success());
    drop(said);
}

#[test]
fn only_sealed_segments_are_shared() {
    let name = unique("named");
    let _unlink = Unlink(name.clone());
    let named = RingBuilder::new(4096).create_named(&name).unwrap();
    let private = RingBuilder::new(4096).create_private().unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    for segment in [&named, &private] {
        assert!(matches!(segment.send_fd(&a), Err(ShareError::NotSealed)));
        assert!(matches!(SegmentServer::bind(segment, socket_path("refused")), Err(ShareError::NotSealed)));
    }
}

fn send_raw(stream: &UnixStream, fds: &[std::os::fd::RawFd]) {
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsgs };
    sendmsg::<UnixAddr>(stream.as_raw_fd(), &[IoSlice::new(b"T")], cmsgs, MsgFlags::empty(), None).unwrap();
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

fn memfd(len: i64, seals: SealFlag) -> OwnedFd {
    let fd = memfd_create(c"test", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
    ftruncate(&fd, len).unwrap();
    if !seals.is_empty() {
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
    }
    fd
}

#[test]
fn a_received_descriptor_that_can_change_size_is_refused() {
    let name = unique("unsealed");
    let _unlink = Unlink(name.clone());
    let named = RingBuilder::new(4096).create_named(&name).unwrap();
    let ring_len = (HEADER_LEN + 4096) as i64;
    let (pipe_r, _pipe_w) = nix::unistd::pipe().unwrap();
    let cases: Vec<(OwnedFd, Option<u32>)> = vec![
        // A /dev/shm file: tmpfs reports F_SEAL_SEAL (no seals may be added), nothing else.
        (named.as_fd().unwrap().try_clone_to_owned().unwrap(), Some(SealFlag::F_SEAL_SEAL.bits() as u32)),
        (memfd(ring_len, SealFlag::empty()), Some(0)),
        (memfd(ring_len, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW), Some(6)),
        // Not a file that can carry seals at all.
        (pipe_r, None),
    ];
    for (fd, seals) in cases {
        let (a, b) = UnixStream::pair().unwrap();
        send_raw(&a, &[fd.as_raw_fd()]);
        match Segment::receive_fd(&b) {
            Err(ReceiveError::NotSealed { seals: found }) => assert_eq!(found, seals),
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn a_peer_sending_no_descriptor_or_several_is_refused_and_nothing_leaks() {
    let ring = RingBuilder::new(4096).create_anonymous().unwrap();
    let fd = ring.as_fd().unwrap().as_raw_fd();
    let before = open_fds();
    for count in [0usize, 2, 200] {
        let (a, b) = UnixStream::pair().unwrap();
        send_raw(&a, &vec![fd; count]);
        match Segment::receive_fd(&b) {
            Err(ReceiveError::DescriptorCount(n)) => assert_eq!(n, count),
            other => panic!("{other:?}"),
        }
    }
    let (a, b) = UnixStream::pair().unwrap();
    drop(a);
    assert!(matches!(Segment::receive_fd(&b), Err(ReceiveError::DescriptorCount(0))));
    // Other tests open descriptors concurrently; a leak here would be 202 of them.
    let after = open_fds();
    assert!(after < before + 50, "{} descriptors leaked", after - before);
}

#[test]
fn a_sealed_descriptor_with_an_invalid_header_is_refused_as_such() {
    let fd = memfd((HEADER_LEN + 4096) as i64, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL);
    let (a, b) = UnixStream::pair().unwrap();
    send_raw(&a, &[fd.as_raw_fd()]);
    assert!(matches!(Segment::receive_fd(&b), Err(ReceiveError::Invalid(SegmentFault::NotInitialized))));
}

#[test]
fn a_named_segment_reports_truncation_and_a_sealed_one_cannot_be_truncated() {
    let name = unique("truncated");
    let _unlink = Unlink(name.clone());
    let named = RingBuilder::new(1 << 16).create_named(&name).unwrap();
    assert!(!named.is_truncated().unwrap());
    let file = std::fs::OpenOptions::new().write(true).open(format!("/dev/shm/tadpole.{name}")).unwrap();
    file.set_len(HEADER_LEN as u64).unwrap();
    assert!(named.is_truncated().unwrap());

    let sealed = RingBuilder::new(1 << 16).create_anonymous().unwrap();
    let fd = sealed.as_fd().unwrap();
    assert_eq!(ftruncate(fd, HEADER_LEN as i64), Err(nix::errno::Errno::EPERM));
    assert!(!sealed.is_truncated().unwrap());
    assert!(!RingBuilder::new(4096).create_private().unwrap().is_truncated().unwrap());
}

/// A valid header declaring 1 GiB on a sparse file: opening it maps it but must not allocate it.
#[test]
fn opening_a_sparse_segment_with_a_valid_header_does_not_allocate_it() {
    let name = unique("sparse");
    let _unlink = Unlink(name.clone());
    let donor = unique("donor");
    let header = {
        let _unlink = Unlink(donor.clone());
        // The header a creator of a 1 GiB ring writes, taken from a small named one and resized.
        let small = RingBuilder::new(4096).create_named(&donor).unwrap();
        let mut page = vec![0u8; HEADER_LEN];
        std::fs::File::open(format!("/dev/shm/tadpole.{donor}")).unwrap().read_exact_at(&mut page, 0).unwrap();
        drop(small);
        page[16..24].copy_from_slice(&(1u64 << 30).to_le_bytes());
        page[24..32].copy_from_slice(&(HEADER_LEN as u64 + (1 << 30)).to_le_bytes());
        page[32..36].copy_from_slice(&1024u32.to_le_bytes());
        page
    };
    let path = format!("/dev/shm/tadpole.{name}");
    let file = std::fs::File::create(&path).unwrap();
    file.set_len(HEADER_LEN as u64 + (1 << 30)).unwrap();
    file.write_all_at(&header, 0).unwrap();
    let before = file.metadata().unwrap().blocks() * 512;
    let segment = Segment::open(&name).expect("a valid header");
    assert_eq!(segment.capacity(), 1 << 30);
    let _ = segment.status();
    let after = file.metadata().unwrap().blocks() * 512;
    assert!(after <= before + (1 << 20), "opening allocated {} bytes of /dev/shm", after - before);
}
