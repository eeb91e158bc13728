//! Key files and the strict Z85 codec refuse every malformed or unsafe input with a message
//! that says what to fix.

use std::os::unix::fs::PermissionsExt;

use ipc_zmq::keys::{KeyFileError, KeyPair, PublicKey, SecretKey, Z85Error};

fn key_z85() -> String {
    KeyPair::generate().unwrap().public().to_z85()
}

#[test]
fn z85_refuses_wrong_lengths() {
    let k = key_z85();
    for bad in [&k[..39], &format!("{k}0"), "", &k[..35]] {
        assert!(matches!(PublicKey::from_z85(bad), Err(Z85Error::WrongLength { .. })), "{bad:?}");
    }
    // 40 bytes but not 40 characters: a multi-byte character is not Z85 either.
    let multibyte = format!("é{}", &k[2..]);
    assert!(PublicKey::from_z85(&multibyte).is_err());
}

#[test]
fn z85_refuses_characters_outside_the_alphabet_and_names_them() {
    let k = key_z85();
    for (i, c) in [(0, '~'), (6, '~'), (39, '"'), (10, ' '), (20, '\\'), (3, ',')] {
        let mut bad: Vec<char> = k.chars().collect();
        bad[i] = c;
        let bad: String = bad.into_iter().collect();
        let err = PublicKey::from_z85(&bad).unwrap_err();
        assert_eq!(err, Z85Error::BadCharacter { position: i + 1, found: c });
        assert!(err.to_string().contains(&format!("character {} is {c:?}", i + 1)), "{err}");
        // libzmq's own decoder takes it without a word: that is why we validate ourselves.
        assert!(zmq::z85_decode(&bad).is_ok());
    }
}

#[test]
fn z85_refuses_groups_over_32_bits() {
    // "%nSc0" is 0xffffffff, the largest group; "%nSc1" is one more.
    let ok = "%nSc0".repeat(8);
    assert_eq!(PublicKey::from_z85(&ok).unwrap().as_bytes(), &[0xff; 32]);
    for group in 0..8 {
        let mut bad = ok.clone();
        bad.replace_range(group * 5..group * 5 + 5, "%nSc1");
        assert_eq!(
            PublicKey::from_z85(&bad).unwrap_err(),
            Z85Error::GroupOverflow { first: group * 5 + 1, last: group * 5 + 5 }
        );
        assert!(zmq::z85_decode(&bad).is_ok(), "libzmq wraps the overflow silently");
    }
    assert!(matches!(SecretKey::from_z85(&"#####".repeat(8)), Err(Z85Error::GroupOverflow { .. })));
}

#[test]
fn secret_key_debug_prints_no_key_material() {
    let pair = KeyPair::generate().unwrap();
    let secret_z85 = zmq::z85_encode(pair.secret().as_bytes()).unwrap();
    let shown = format!("{:?} {:?}", pair.secret(), pair);
    assert!(!shown.contains(&secret_z85), "{shown}");
    assert!(shown.contains("redacted"));
    assert!(shown.contains(&pair.public().to_z85()));
}

#[test]
fn derived_public_key_matches_the_generated_one() {
    for _ in 0..10 {
        let pair = KeyPair::generate().unwrap();
        assert_eq!(&pair.secret().public_key(), pair.public());
    }
}

#[test]
fn write_new_creates_a_0600_secret_and_a_loadable_pair() {
    let dir = tempfile::tempdir().unwrap();
    let pair = KeyPair::generate().unwrap();
    let files = pair.write_new(&dir.path().join("host-a")).unwrap();
    assert_eq!(files.secret, dir.path().join("host-a.key"));
    let mode = std::fs::metadata(&files.secret).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let loaded = KeyPair::load(&files.secret).unwrap();
    assert_eq!(loaded.public(), pair.public());
    assert_eq!(loaded.secret().as_bytes(), pair.secret().as_bytes());
    assert_eq!(&PublicKey::load(&files.public).unwrap(), pair.public());
}

#[test]
fn write_new_never_overwrites_either_file() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("k");
    let first = KeyPair::generate().unwrap();
    let files = first.write_new(&prefix).unwrap();
    let before = std::fs::read(&files.secret).unwrap();
    let err = KeyPair::generate().unwrap().write_new(&prefix).unwrap_err();
    assert!(matches!(err, KeyFileError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("never overwrites"), "{err}");
    assert_eq!(std::fs::read(&files.secret).unwrap(), before);

    // Only the public file there: still refused, and no secret file appears.
    let other = dir.path().join("p");
    std::fs::write(dir.path().join("p.pub"), "x").unwrap();
    assert!(matches!(first.write_new(&other), Err(KeyFileError::Exists { .. })));
    assert!(!dir.path().join("p.key").exists());
}

#[test]
fn group_or_other_readable_secret_is_refused_with_the_chmod_command() {
    let dir = tempfile::tempdir().unwrap();
    let files = KeyPair::generate().unwrap().write_new(&dir.path().join("k")).unwrap();
    for mode in [0o640, 0o604, 0o644, 0o660] {
        std::fs::set_permissions(&files.secret, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = KeyPair::load(&files.secret).unwrap_err();
        assert!(matches!(err, KeyFileError::TooOpen { .. }), "{err}");
        assert!(err.to_string().contains(&format!("chmod 600 {}", files.secret.display())), "{err}");
    }
    std::fs::set_permissions(&files.secret, std::fs::Permissions::from_mode(0o400)).unwrap();
    assert!(KeyPair::load(&files.secret).is_ok());
}

fn write_secret(dir: &std::path::Path, text: &str) -> std::path::PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(format!("s{}.key", text.len()));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).unwrap();
    std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
    path
}

#[test]
fn a_public_key_that_does_not_match_its_secret_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let secret = zmq::z85_encode(a.secret().as_bytes()).unwrap();
    let path = write_secret(dir.path(), &format!("public_key = \"{}\"\nsecret_key = \"{secret}\"\n", b.public()));
    let err = KeyPair::load(&path).unwrap_err();
    assert!(matches!(err, KeyFileError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains(&a.public().to_z85()), "the message gives the right public key: {err}");
}

#[test]
fn malformed_secret_files_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let a = KeyPair::generate().unwrap();
    let secret = zmq::z85_encode(a.secret().as_bytes()).unwrap();
    let bad_secret = format!("~{}", &secret[1..]);
    let cases = [
        (format!("public_key = \"{}\"\n", a.public()), "secret_key: missing"),
        (
            format!("public_key = \"{}\"\nsecret_key = \"{bad_secret}\"\n", a.public()),
            "secret_key: not a Z85 key (character 1 is '~')",
        ),
        (
            format!("public_key = \"{}\"\nsecret_key = \"{}\"\n", &a.public().to_z85()[1..], secret),
            "public_key: not a Z85 key (39 characters",
        ),
        (format!("pub = \"{}\"\n", a.public()), "line 1: unknown name"),
        (format!("secret_key = {secret}\n"), "line 1: the key must be in double quotes"),
    ];
    for (text, expect) in cases {
        let path = write_secret(dir.path(), &text);
        let err = KeyPair::load(&path).unwrap_err().to_string();
        assert!(err.contains(expect), "{err:?} should contain {expect:?}");
        assert!(!err.contains(&secret[1..]), "a secret never appears in an error");
    }
}

mod canonical {
    use ipc_zmq::keys::PublicKey;
    use proptest::prelude::*;

    const ALPHABET: &str = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

    proptest! {
        #[test]
        fn every_key_round_trips(bytes in any::<[u8; 32]>()) {
            let key = PublicKey::from_bytes(bytes);
            prop_assert_eq!(PublicKey::from_z85(&key.to_z85()).unwrap(), key);
        }

        /// Every accepted string is the one encoding of its key: no two spellings of a key.
        #[test]
        fn every_accepted_string_is_canonical(s in proptest::collection::vec(0..85usize, 40)) {
            let text: String = s.iter().map(|&i| ALPHABET.as_bytes()[i] as char).collect();
            if let Ok(key) = PublicKey::from_z85(&text) {
                prop_assert_eq!(key.to_z85(), text);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,60}") {
            let _ = PublicKey::from_z85(&text);
        }
    }
}
