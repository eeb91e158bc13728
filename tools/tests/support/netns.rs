#![allow(dead_code)]
//! Two hosts on one machine: network namespaces joined by a veth pair, made (and removed) by the
//! test itself. Needs root (CI runs as root); `NetPair::create` returns `None`, with the reason
//! printed, where namespaces cannot be made, so callers can skip with a clear message.

use std::process::{Command, Output, Stdio};

/// Two namespaces, `a` at 10.<n>.0.1 and `b` at 10.<n>.0.2, linked by `veth-<tag>a`/`veth-<tag>b`.
pub struct NetPair {
    pub a: String,
    pub b: String,
    pub a_ip: String,
    pub b_ip: String,
    veth_a: String,
}

fn ip(args: &[&str]) -> Result<Output, String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl NetPair {
    /// Makes the pair; `None` (with the reason on stderr) where this machine cannot.
    pub fn create(tag: &str) -> Option<NetPair> {
        // Short names: interface names are at most 15 bytes.
        let n = (std::process::id() % 200 + 20) as u8;
        let tag = format!("{tag}{n}");
        let pair = NetPair {
            a: format!("tp-{tag}-a"),
            b: format!("tp-{tag}-b"),
            a_ip: format!("10.{n}.0.1"),
            b_ip: format!("10.{n}.0.2"),
            veth_a: format!("v{tag}a"),
        };
        let veth_b = format!("v{tag}b");
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), pair.a.clone()],
            vec!["netns".into(), "add".into(), pair.b.clone()],
            vec![
                "link".into(),
                "add".into(),
                pair.veth_a.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                veth_b.clone(),
            ],
            vec!["link".into(), "set".into(), pair.veth_a.clone(), "netns".into(), pair.a.clone()],
            vec!["link".into(), "set".into(), veth_b.clone(), "netns".into(), pair.b.clone()],
            vec![
                "-n".into(),
                pair.a.clone(),
                "addr".into(),
                "add".into(),
                format!("{}/24", pair.a_ip),
                "dev".into(),
                pair.veth_a.clone(),
            ],
            vec![
                "-n".into(),
                pair.b.clone(),
                "addr".into(),
                "add".into(),
                format!("{}/24", pair.b_ip),
                "dev".into(),
                veth_b.clone(),
            ],
            vec!["-n".into(), pair.a.clone(), "link".into(), "set".into(), pair.veth_a.clone(), "up".into()],
            vec!["-n".into(), pair.b.clone(), "link".into(), "set".into(), veth_b.clone(), "up".into()],
            vec!["-n".into(), pair.a.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
            vec!["-n".into(), pair.b.clone(), "link".into(), "set".into(), "lo".into(), "up".into()],
        ];
        for step in &steps {
            let args: Vec<&str> = step.iter().map(String::as_str).collect();
            if let Err(e) = ip(&args) {
                eprintln!("SKIPPED: cannot make network namespaces here: {e}");
                return None;
            }
        }
        Some(pair)
    }

    /// `program args...` run inside namespace `ns` (one of `a`, `b`).
    pub fn command(&self, ns: &str, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, program]);
        cmd
    }

    /// Takes the link down (a partition) or up again.
    pub fn set_link(&self, up: bool) {
        ip(&["-n", &self.a, "link", "set", &self.veth_a, if up { "up" } else { "down" }]).expect("set link");
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair.
        let _ = ip(&["netns", "del", &self.a]);
        let _ = ip(&["netns", "del", &self.b]);
    }
}
