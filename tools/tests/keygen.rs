//! `tadpole keygen` as an operator runs it.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use ipc_zmq::keys::{KeyPair, PublicKey};

fn tadpole(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tadpole")).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn keygen_writes_a_0600_pair_prints_the_public_key_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("host-a");
    let prefix = prefix.to_str().unwrap();
    let (ok, stdout, stderr) = tadpole(&["keygen", "--out", prefix]);
    assert!(ok, "{stderr}");
    let printed = PublicKey::from_z85(stdout.trim()).unwrap();
    let secret = dir.path().join("host-a.key");
    assert_eq!(std::fs::metadata(&secret).unwrap().permissions().mode() & 0o777, 0o600);
    let pair = KeyPair::load(&secret).unwrap();
    assert_eq!(pair.public(), &printed);
    assert_eq!(PublicKey::load(&dir.path().join("host-a.pub")).unwrap(), printed);

    let before = std::fs::read(&secret).unwrap();
    let (ok, _, stderr) = tadpole(&["keygen", "--out", prefix]);
    assert!(!ok);
    assert!(stderr.contains("never overwrites"), "{stderr}");
    assert_eq!(std::fs::read(&secret).unwrap(), before);
}

#[test]
fn keygen_check_takes_keys_beginning_with_a_dash_and_refuses_bad_ones() {
    let key = loop {
        let k = KeyPair::generate().unwrap().public().to_z85();
        if k.starts_with('-') {
            break k;
        }
    };
    for args in
        [vec!["keygen".to_owned(), format!("--check={key}")], vec!["keygen".into(), "--check".into(), key.clone()]]
    {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, stdout, stderr) = tadpole(&args);
        assert!(ok, "{args:?}: {stderr}");
        assert_eq!(stdout.trim(), key);
    }
    let bad = format!("{}~", &key[..39]);
    let (ok, _, stderr) = tadpole(&["keygen", &format!("--check={bad}")]);
    assert!(!ok);
    assert!(stderr.contains("character 40 is '~'"), "{stderr}");
}
