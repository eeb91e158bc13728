//! CURVE keys: a strict Z85 codec, key pairs, and the key files `tadpole keygen` writes.
//!
//! `zmq::z85_decode` hands any 5-aligned string to libzmq, which reads characters outside the
//! alphabet as arbitrary digits and wraps groups that overflow 32 bits, so a typo in a config
//! file would silently become a different key. Every key that enters Tadpole goes through
//! [`PublicKey::from_z85`] / [`SecretKey::from_z85`] instead.
//!
//! File formats (both plain text, `#` starts a comment line):
//! - the **secret key file** (`<prefix>.key`, mode 0600) holds two TOML lines,
//!   `public_key = "<z85>"` and `secret_key = "<z85>"`;
//! - the **public key file** (`<prefix>.pub`) holds the public key alone on one line, so that
//!   `cat peer.pub >> allowed.keys` builds an allowlist file (one key per line).

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use zeroize::Zeroize;

/// The length of a CURVE key in bytes.
pub const KEY_BYTES: usize = 32;
/// The length of a CURVE key in Z85 characters.
pub const KEY_Z85_CHARS: usize = 40;

const ALPHABET: &[u8; 85] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

const NOT_Z85: u8 = 0xff;

/// Byte -> Z85 digit, `NOT_Z85` outside the alphabet: the listener decodes a User-Id per message.
const DIGITS: [u8; 256] = {
    let mut table = [NOT_Z85; 256];
    let mut i = 0;
    while i < ALPHABET.len() {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a string is not a Z85-encoded CURVE key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Z85Error {
    /// A key is exactly 40 characters.
    #[error("not a Z85 key ({len} characters, a key has exactly 40)")]
    WrongLength {
        /// The number of characters found.
        len: usize,
    },
    /// A character outside the Z85 alphabet.
    #[error("not a Z85 key (character {position} is {found:?})")]
    BadCharacter {
        /// 1-based position of the character.
        position: usize,
        /// The offending character.
        found: char,
    },
    /// Five characters whose value does not fit in 32 bits.
    #[error("not a Z85 key (characters {first}..{last} encode a value over 2^32-1)")]
    GroupOverflow {
        /// 1-based position of the group's first character.
        first: usize,
        /// 1-based position of the group's last character.
        last: usize,
    },
}

/// Decodes exactly 40 Z85 characters into 32 bytes, refusing everything libzmq would guess at.
fn decode_key(text: &str) -> Result<[u8; KEY_BYTES], Z85Error> {
    let len = text.chars().count();
    if len != KEY_Z85_CHARS || text.len() != KEY_Z85_CHARS {
        return Err(Z85Error::WrongLength { len });
    }
    let mut out = [0u8; KEY_BYTES];
    for (group, chunk) in text.as_bytes().chunks_exact(5).enumerate() {
        let mut value: u64 = 0;
        for (i, &c) in chunk.iter().enumerate() {
            let digit = DIGITS[c as usize];
            if digit == NOT_Z85 {
                return Err(Z85Error::BadCharacter { position: group * 5 + i + 1, found: c as char });
            }
            value = value * 85 + digit as u64;
        }
        let value =
            u32::try_from(value).map_err(|_| Z85Error::GroupOverflow { first: group * 5 + 1, last: group * 5 + 5 })?;
        out[group * 4..group * 4 + 4].copy_from_slice(&value.to_be_bytes());
    }
    Ok(out)
}

fn encode_key(bytes: &[u8; KEY_BYTES]) -> String {
    let mut out = String::with_capacity(KEY_Z85_CHARS);
    for chunk in bytes.chunks_exact(4) {
        let mut value = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        let mut digits = [0u8; 5];
        for d in digits.iter_mut().rev() {
            *d = ALPHABET[(value % 85) as usize];
            value /= 85;
        }
        out.extend(digits.iter().map(|&d| d as char));
    }
    out
}

/// A CURVE public key (32 bytes). Displays as its 40-character Z85 form.
///
/// ```
/// use ipc_zmq::keys::PublicKey;
/// let key = PublicKey::from_z85("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7").unwrap();
/// assert_eq!(key.to_string(), "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7");
/// assert!(PublicKey::from_z85("rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf~").is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey([u8; KEY_BYTES]);

impl PublicKey {
    /// Parses a Z85 key strictly (see [`Z85Error`] for what is refused).
    pub fn from_z85(text: &str) -> Result<Self, Z85Error> {
        decode_key(text).map(Self)
    }

    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes (what `set_curve_serverkey` takes).
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// The 40-character Z85 form.
    pub fn to_z85(&self) -> String {
        encode_key(&self.0)
    }

    /// Reads a public key file: one Z85 key on its own line (comment and blank lines ignored).
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| KeyFileError::io(path, e))?;
        let keys = parse_key_lines(&text).map_err(|(line, reason)| KeyFileError::Invalid {
            path: path.to_owned(),
            what: format!("line {line}"),
            reason,
        })?;
        match keys.as_slice() {
            [key] => Ok(*key),
            _ => Err(KeyFileError::Invalid {
                path: path.to_owned(),
                what: "contents".into(),
                reason: format!("holds {} keys, a public key file holds exactly one", keys.len()),
            }),
        }
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_z85())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_z85())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        PublicKey::from_z85(&text).map_err(serde::de::Error::custom)
    }
}

/// Parses "one key per line" text (allowlist files, public key files): blank lines and lines
/// starting with `#` are skipped. Errors carry the 1-based line number.
pub(crate) fn parse_key_lines(text: &str) -> Result<Vec<PublicKey>, (usize, String)> {
    let mut keys = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        keys.push(PublicKey::from_z85(line).map_err(|e| (i + 1, e.to_string()))?);
    }
    Ok(keys)
}

/// A CURVE secret key (32 bytes). Zeroed when dropped; never printed (Debug shows no bytes,
/// and it has no Display).
#[derive(Clone)]
pub struct SecretKey([u8; KEY_BYTES]);

impl SecretKey {
    /// Parses a Z85 key strictly (see [`Z85Error`]).
    pub fn from_z85(text: &str) -> Result<Self, Z85Error> {
        decode_key(text).map(Self)
    }

    /// The raw key bytes (what `set_curve_secretkey` takes).
    pub fn as_bytes(&self) -> &[u8; KEY_BYTES] {
        &self.0
    }

    /// Derives the public key that belongs to this secret (libzmq's `zmq_curve_public`).
    pub fn public_key(&self) -> PublicKey {
        let mut secret_z85 = [0u8; KEY_Z85_CHARS + 1];
        secret_z85[..KEY_Z85_CHARS].copy_from_slice(encode_key(&self.0).as_bytes());
        let mut public_z85 = [0u8; KEY_Z85_CHARS + 1];
        // SAFETY: zmq_curve_public reads a NUL-terminated 40-character Z85 secret and writes
        // a 40-character Z85 public key plus NUL: both buffers are 41 bytes, the secret buffer
        // is NUL-terminated (zero-initialised, 40 characters copied), and both outlive the call.
        let rc = unsafe { zmq_curve_public(public_z85.as_mut_ptr().cast(), secret_z85.as_ptr().cast()) };
        secret_z85.zeroize();
        // libzmq built with CURVE (checked at link time by the crate's test) only fails here
        // for a malformed secret, which cannot happen: the secret is our own encoding.
        assert_eq!(rc, 0, "zmq_curve_public failed: libzmq without CURVE?");
        let text = std::str::from_utf8(&public_z85[..KEY_Z85_CHARS]).expect("libzmq writes Z85");
        PublicKey::from_z85(text).expect("libzmq writes valid Z85")
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// A CURVE key pair whose public key is known to match its secret.
#[derive(Clone, Debug)]
pub struct KeyPair {
    public: PublicKey,
    secret: SecretKey,
}

/// Why a key file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Opening, reading or writing failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `keygen` never replaces a key: the file is already there.
    #[error("{}: already exists; keygen never overwrites a key (remove it first or pick another --out)", path.display())]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A secret key file that someone else than its owner can access.
    #[error("{}: the secret key file is accessible by group or others (mode {mode:04o}); run `chmod 600 {}`", path.display(), path.display())]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A line or field that is not what the format says.
    #[error("{}: {what}: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Which line or field.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The public key written in the secret key file is not the one its secret derives.
    #[error("{}: public_key does not match secret_key (the secret derives {derived}); fix or regenerate the pair", path.display())]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// The public key the secret really has.
        derived: PublicKey,
    },
}

impl KeyFileError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        KeyFileError::Io { path: path.to_owned(), source }
    }
}

/// The paths [`KeyPair::write_new`] created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyFiles {
    /// `<prefix>.key`, mode 0600: secret and public key.
    pub secret: PathBuf,
    /// `<prefix>.pub`: the public key alone.
    pub public: PathBuf,
}

impl KeyPair {
    /// Generates a fresh key pair with libzmq (libsodium's randomness).
    pub fn generate() -> Result<Self, zmq::Error> {
        let mut pair = zmq::CurveKeyPair::new()?;
        let keys = KeyPair { public: PublicKey(pair.public_key), secret: SecretKey(pair.secret_key) };
        pair.secret_key.zeroize();
        Ok(keys)
    }

    /// Builds the pair belonging to `secret`.
    pub fn from_secret(secret: SecretKey) -> Self {
        KeyPair { public: secret.public_key(), secret }
    }

    /// The public half.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The secret half.
    pub fn secret(&self) -> &SecretKey {
        &self.secret
    }

    /// Reads a secret key file, refusing one that group or others can access, malformed keys,
    /// and a public key that does not match the secret.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let mut file = File::open(path).map_err(|e| KeyFileError::io(path, e))?;
        // The mode is read from the open handle, so the file checked is the file read.
        let mode = file.metadata().map_err(|e| KeyFileError::io(path, e))?.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen { path: path.to_owned(), mode });
        }
        let mut text = String::new();
        file.read_to_string(&mut text).map_err(|e| KeyFileError::io(path, e))?;
        let result = Self::parse_secret_file(path, &text);
        text.zeroize();
        result
    }

    fn parse_secret_file(path: &Path, text: &str) -> Result<Self, KeyFileError> {
        let invalid =
            |what: &str, reason: String| KeyFileError::Invalid { path: path.to_owned(), what: what.to_owned(), reason };
        let (mut public, mut secret) = (None, None);
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let what = format!("line {}", i + 1);
            let (name, value) =
                line.split_once('=').ok_or_else(|| invalid(&what, "expected `name = \"<z85 key>\"`".into()))?;
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .ok_or_else(|| invalid(&what, "the key must be in double quotes".into()))?;
            match name.trim() {
                "public_key" => {
                    public = Some(PublicKey::from_z85(value).map_err(|e| invalid("public_key", e.to_string()))?)
                }
                "secret_key" => {
                    secret = Some(SecretKey::from_z85(value).map_err(|e| invalid("secret_key", e.to_string()))?)
                }
                other => {
                    return Err(invalid(&what, format!("unknown name {other:?} (expected public_key or secret_key)")));
                }
            }
        }
        let secret = secret.ok_or_else(|| invalid("secret_key", "missing".into()))?;
        let public = public.ok_or_else(|| invalid("public_key", "missing".into()))?;
        let pair = KeyPair::from_secret(secret);
        if pair.public != public {
            return Err(KeyFileError::Mismatch { path: path.to_owned(), derived: pair.public });
        }
        Ok(pair)
    }

    /// Writes `<prefix>.key` (secret, created with mode 0600) and `<prefix>.pub`. Never
    /// overwrites: if either file exists nothing is written and [`KeyFileError::Exists`] says
    /// which.
    pub fn write_new(&self, prefix: &Path) -> Result<KeyFiles, KeyFileError> {
        let files = KeyFiles { secret: with_suffix(prefix, ".key"), public: with_suffix(prefix, ".pub") };
        for path in [&files.secret, &files.public] {
            if std::fs::symlink_metadata(path).is_ok() {
                return Err(KeyFileError::Exists { path: path.clone() });
            }
        }
        let mut secret_text = format!(
            "# Tadpole CURVE key pair. Keep this file secret (mode 0600).\npublic_key = \"{}\"\nsecret_key = \"{}\"\n",
            self.public,
            encode_key(&self.secret.0)
        );
        let written = create_new(&files.secret, 0o600, secret_text.as_bytes());
        secret_text.zeroize();
        written?;
        let public_text = format!("# Tadpole CURVE public key\n{}\n", self.public);
        if let Err(e) = create_new(&files.public, 0o644, public_text.as_bytes()) {
            // Leave no half pair behind: a later keygen with the same prefix must work.
            let _ = std::fs::remove_file(&files.secret);
            return Err(e);
        }
        Ok(files)
    }
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// O_CREAT|O_EXCL with the final mode from creation: a secret never exists with wider bits.
fn create_new(path: &Path, mode: u32, contents: &[u8]) -> Result<(), KeyFileError> {
    let mut file =
        OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => KeyFileError::Exists { path: path.to_owned() },
            _ => KeyFileError::io(path, e),
        })?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| KeyFileError::io(path, e))
}

// zmq-sys 0.11 declares `zmq_curve_public` but does not export it, and the `zmq` crate does not
// wrap it; libzmq (>= 4.2) is linked by zmq-sys, so declaring the one function here is enough
// and avoids a second X25519 implementation that could disagree with libzmq's.
unsafe extern "C" {
    fn zmq_curve_public(
        z85_public_key: *mut std::ffi::c_char,
        z85_secret_key: *const std::ffi::c_char,
    ) -> std::ffi::c_int;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z85_round_trips_and_matches_libzmq() {
        let pair = zmq::CurveKeyPair::new().unwrap();
        let ours = encode_key(&pair.public_key);
        assert_eq!(ours, zmq::z85_encode(&pair.public_key).unwrap());
        assert_eq!(decode_key(&ours).unwrap(), pair.public_key);
        assert_eq!(encode_key(&[0xff; 32]), "%nSc0".repeat(8));
    }
}
