//! What the relay tests share: key pairs made by the real `tadpole keygen`, and free ports.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Writes `<dir>/<name>.key` and `.pub` with `tadpole keygen`; returns the public key (Z85).
pub fn keygen(dir: &Path, name: &str) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole"))
        .args(["keygen", "--out"])
        .arg(dir.join(name))
        .output()
        .expect("run tadpole keygen");
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(dir.join(format!("{name}.pub"))).unwrap();
    text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).expect("a key line").to_owned()
}

/// A TCP port on 127.0.0.1 free at the time of the call.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
