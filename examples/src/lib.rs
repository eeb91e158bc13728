//! Runnable examples, each two processes talking through shared memory:
//!
//! - `cargo run -p tadpole-examples --bin hello_ring`: raw bytes through a named ring.
//! - `cargo run -p tadpole-examples --bin typed_events`: FlatBuffers envelopes, verified on
//!   arrival, printed as JSON.
//! - `cargo run -p tadpole-examples --bin arrow_batches`: Arrow record batches whose buffers the
//!   receiver reads in place, in shared memory.
//!
//! Each program starts its peer by running itself again with a role argument.

use std::process::{Child, Command};

/// Runs this program again as the other side, with `role` and `ring` as arguments.
pub fn spawn_peer(role: &str, ring: &str) -> std::io::Result<Child> {
    Command::new(std::env::current_exe()?).args([role, ring]).spawn()
}

/// The role and ring name this process was started with, if it is the peer.
pub fn peer_role() -> Option<(String, String)> {
    let mut args = std::env::args().skip(1);
    Some((args.next()?, args.next()?))
}
