//! Where `tadpole stat` and `tadpole tap` find the ring they read: a name in `/dev/shm`, or the
//! Unix socket of a `SegmentServer` serving a sealed ring. Opening only maps the ring: neither
//! tool ever attaches as its producer or consumer.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ipc_core::Segment;

use crate::sigbus;

/// Where a tool finds the ring it reads.
#[derive(Clone, Debug)]
pub enum RingSource {
    /// `/dev/shm/tadpole.<name>`.
    Named(String),
    /// A sealed ring served at a Unix socket path.
    Socket(PathBuf),
}

impl RingSource {
    /// Opens the ring for reading, refusing a named one whose file has shrunk since it was made.
    pub fn open(&self) -> Result<Segment> {
        let segment = match self {
            RingSource::Named(name) => Segment::open(name)?,
            RingSource::Socket(path) => Segment::connect(path)
                .with_context(|| format!("connecting to the ring server at {}", path.display()))?,
        };
        ensure_intact(&segment)?;
        Ok(segment)
    }

    /// The name, or the socket path, as the user gave it.
    pub fn label(&self) -> String {
        match self {
            RingSource::Named(name) => name.clone(),
            RingSource::Socket(path) => path.display().to_string(),
        }
    }
}

/// Stops before reading a ring whose file another process truncated (see `sigbus`).
pub fn ensure_intact(segment: &Segment) -> Result<()> {
    if sigbus::check_sizes() && segment.is_truncated().context("checking the ring's size")? {
        return Err(sigbus::RingTruncated { how: "found shrunk before a read" }.into());
    }
    Ok(())
}
