//! `tadpole clean`: removes the rings in `/dev/shm` whose processes are all gone, and says, ring
//! by ring, what it removed and why it kept the rest.
//!
//! The library decides (`Segment::reclaim_if_stale`, which re-checks that the name is still the
//! file it judged); this module only explains. It must never remove a ring that a process that
//! may still run uses: "cannot tell" keeps the ring.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use ipc_core::{OpenError, PeerState, Segment, SegmentFault};

use crate::exit;
use crate::stat::peer_words;

const AFTER_HELP: &str = "\
Examples:
  tadpole clean --dry-run     what would be removed, and why each other ring stays
  tadpole clean               remove rings whose creator, producer and consumer are all gone
  tadpole clean --prefix md-  only rings whose names start with `md-`

Every ring gets one line: `removed NAME: why`, `would remove NAME: why` or `kept NAME: why`.
A ring is kept while any of its processes may still run, including one in another PID namespace
whose heartbeat is fresh, and while a file that is not a readable ring is under a minute old (it
may still be being created). A ring of another layout version is never removed.";

/// `tadpole clean`'s arguments.
#[derive(clap::Args)]
#[command(after_help = format!("{AFTER_HELP}\n\n{}", exit::EXIT_STATUS_HELP))]
pub struct CleanArgs {
    /// Only print what would be removed.
    #[arg(long)]
    dry_run: bool,
    /// Only consider rings whose names start with this (e.g. one application's rings).
    #[arg(long, value_name = "PREFIX")]
    prefix: Option<String>,
}

/// What the library will be asked to do with a ring, and why.
enum Judgement {
    Removable(String),
    Kept(String),
    /// Vanished since it was listed.
    Gone,
}

/// How long a file that is not a readable ring is left alone (the library's rule).
const UNREADABLE_GRACE: Duration = Duration::from_secs(60);

/// Runs `tadpole clean`.
pub fn run(args: &CleanArgs) -> Result<()> {
    let mut out = io::stdout().lock();
    let (mut removed, mut kept, mut failed) = (0, 0, 0);
    let names = Segment::list().context("listing the rings in /dev/shm")?;
    for name in names.into_iter().filter(|n| args.prefix.as_deref().is_none_or(|p| n.starts_with(p))) {
        let why = match judge(&name) {
            Judgement::Gone => continue,
            Judgement::Kept(why) => {
                kept += 1;
                writeln!(out, "kept {name}: {why}")?;
                continue;
            }
            Judgement::Removable(why) => why,
        };
        let outcome = if args.dry_run { Segment::is_reclaimable(&name) } else { Segment::reclaim_if_stale(&name) };
        match outcome {
            Ok(true) if args.dry_run => {
                removed += 1;
                writeln!(out, "would remove {name}: {why}")?;
            }
            Ok(true) => {
                removed += 1;
                writeln!(out, "removed {name}: {why}")?;
            }
            Ok(false) => {
                kept += 1;
                writeln!(out, "kept {name}: it changed while being judged (a process attached, or it was made again)")?;
            }
            Err(OpenError::NotFound(_)) => {}
            Err(e) => {
                failed += 1;
                writeln!(out, "kept {name}: removing it failed: {e}")?;
            }
        }
    }
    let verb = if args.dry_run { "would remove" } else { "removed" };
    writeln!(out, "{verb} {removed} ring(s), kept {kept}")?;
    if failed > 0 {
        bail!("{failed} ring(s) could not be removed (see above); run as their owner (or root)");
    }
    Ok(())
}

fn judge(name: &str) -> Judgement {
    let segment = match Segment::open(name) {
        Ok(segment) => segment,
        Err(OpenError::NotFound(_)) => return Judgement::Gone,
        Err(OpenError::Invalid(SegmentFault::UnsupportedVersion { .. })) => {
            return Judgement::Kept(format!(
                "made by another Tadpole version ({}); never removed automatically: \
                 remove /dev/shm/{}{name} by hand once nobody uses it",
                Segment::open(name).err().map_or_else(String::new, |e| e.to_string()),
                ipc_core::NAME_PREFIX
            ));
        }
        Err(e @ OpenError::Invalid(_)) => {
            let age = std::fs::metadata(format!("/dev/shm/{}{name}", ipc_core::NAME_PREFIX))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            return match age {
                Some(age) if age > UNREADABLE_GRACE => {
                    Judgement::Removable(format!("not a readable ring ({e}) and {} s old", age.as_secs()))
                }
                _ => Judgement::Kept(format!(
                    "not a readable ring yet ({e}): it may still be being created; removed once a minute old"
                )),
            };
        }
        Err(e) => return Judgement::Kept(format!("cannot be opened: {e}")),
    };
    let s = segment.status();
    let creator = format!("creator pid {} {}", s.creator.pid, if s.creator_alive { "running" } else { "gone" });
    let sides = format!("producer {}, consumer {}", peer_words(s.producer), peer_words(s.consumer));
    if s.anyone_alive() {
        let mut alive = Vec::new();
        if s.creator_alive {
            alive.push(format!("creator pid {} running", s.creator.pid));
        }
        for (side, state) in [("producer", s.producer), ("consumer", s.consumer)] {
            if let PeerState::Attached(id) = state {
                alive.push(format!("{side} pid {} running", id.pid));
            }
        }
        Judgement::Kept(format!("in use: {}", alive.join(", ")))
    } else {
        Judgement::Removable(format!("every process is gone ({creator}, {sides})"))
    }
}
