//! Two hosts on one machine, for `tadpole chaos` and `tadpole demo --cross-host`: two network
//! namespaces joined by a veth pair (or loopback, where they cannot be made), the CURVE keys and
//! configurations of a relay on each, and the relays as child processes. What runs on the hosts
//! besides the relays is the caller's; this module never decides what crosses, only how.

pub mod net;
pub mod process;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ipc_zmq::keys::KeyPair;

pub use net::Net;
pub use process::Proc;

/// The stream relay `a` forwards to relay `b`.
const STREAM: &str = "cross";

/// `args` as the `OsString`s a [`Proc`] is given.
pub fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// `program args` as run inside namespace `ns` (through `ip netns exec`, which execs it: the
/// child's pid is the program's), or as is without one.
pub fn in_namespace(ns: Option<&str>, program: &Path, args: Vec<OsString>) -> (PathBuf, Vec<OsString>) {
    match ns {
        Some(ns) => {
            let mut all = os(&["netns", "exec", ns]);
            all.push(program.into());
            all.extend(args);
            (PathBuf::from("ip"), all)
        }
        None => (program.to_owned(), args),
    }
}

/// One `tadpole relay` process: relay `a` (the sender) or `b` (the receiver).
pub struct RelayProc {
    pub proc: Proc,
    pub which: char,
    /// Where its `/metrics` and `/health` are served (inside its namespace).
    pub health: String,
}

/// The relay on each host: relay `a` forwards ring `from` over ZeroMQ with CURVE (relay `b`'s
/// public key pinned) to relay `b`, which admits only relay `a`'s key and commits what it
/// receives into ring `to` as an envelope route (every record verified as an envelope, message
/// ids deduplicated). Keys, configurations and the relays' logs are in the caller's directory;
/// the relays' checkpoints in /dev/shm, removed on drop. Not started: the caller starts `b` first.
pub struct RelayLink {
    /// `a` then `b`.
    pub relays: Vec<RelayProc>,
    state_files: Vec<PathBuf>,
}

impl RelayLink {
    /// Writes fresh key pairs and both configurations into `dir` (keys as `tadpole keygen` makes
    /// them: the secret files mode 0600), naming the relays `{label}-a` and `{label}-b`.
    pub fn configure(net: &Net, dir: &Path, label: &str, from: &str, to: &str) -> Result<RelayLink> {
        let (a_keys, b_keys) = (KeyPair::generate()?, KeyPair::generate()?);
        a_keys.write_new(&dir.join("a")).context("writing relay a's keys")?;
        b_keys.write_new(&dir.join("b")).context("writing relay b's keys")?;
        // Each relay has a namespace of its own, or they share loopback.
        let (a_health, b_listen, b_health) = if net.is_namespaces() {
            (7401, 7400, 7401)
        } else {
            (net::free_port()?, net::free_port()?, net::free_port()?)
        };
        let (a_host, b_host) = (net.host('a').to_owned(), net.host('b').to_owned());
        let a_config = format!(
            "name = \"{label}-a\"\nkey_file = \"a.key\"\nhealth = \"{a_host}:{a_health}\"\n\n\
             [[route_out]]\nring = \"{from}\"\nconnect = \"tcp://{b_host}:{b_listen}\"\nserver_key = \"{b_pub}\"\nstream = \"{STREAM}\"\n\n\
             [limits]\nrequest_timeout_ms = 1000\nconnect_timeout_ms = 500\n",
            b_pub = b_keys.public(),
        );
        let b_config = format!(
            "name = \"{label}-b\"\nkey_file = \"b.key\"\nlisten = \"tcp://{b_host}:{b_listen}\"\nallow = [\"{a_pub}\"]\n\
             health = \"{b_host}:{b_health}\"\n\n[[route_in]]\nstream = \"{STREAM}\"\nring = \"{to}\"\nenvelopes = true\n",
            a_pub = a_keys.public(),
        );
        let exe = std::env::current_exe().context("finding the tadpole binary")?;
        let shm_dir = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { dir.to_owned() };
        let pid = std::process::id();
        let mut link = RelayLink { relays: Vec::new(), state_files: Vec::new() };
        for (which, config, health) in [('a', a_config, a_health), ('b', b_config, b_health)] {
            let path = dir.join(format!("{which}.toml"));
            std::fs::write(&path, config)?;
            let mut relay_args = vec![OsString::from("relay"), "--config".into(), path.into()];
            // The checkpoint where the relay keeps it by default, in /dev/shm: on a disk file
            // system its rewrite per DATA message can make the receiving relay fall behind.
            let state = shm_dir.join(format!("tadpole-{label}-{pid}-{which}.state"));
            link.state_files.extend([state.clone(), PathBuf::from(format!("{}.origins", state.display()))]);
            relay_args.extend(["--state".into(), state.into()]);
            let (program, args) = in_namespace(net.namespace(which), &exe, relay_args);
            let proc = Proc::new(&format!("relay-{which}"), &program, args, dir);
            link.relays.push(RelayProc { proc, which, health: format!("{}:{health}", net.host(which)) });
        }
        Ok(link)
    }

    /// Relay `i`'s `/metrics` page (read from inside its namespace), if it answers.
    pub fn metrics(&self, net: &Net, i: usize) -> Option<String> {
        let r = &self.relays[i];
        net::http_get(net.namespace(r.which), &r.health, "/metrics")
    }
}

impl Drop for RelayLink {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            // A stopped relay must run again to die of SIGKILL in every case.
            relay.proc.signal(libc::SIGCONT);
            relay.proc.kill_9();
        }
        for file in &self.state_files {
            let _ = std::fs::remove_file(file);
        }
    }
}
