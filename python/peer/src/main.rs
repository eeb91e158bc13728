//! The Rust side of `python/tests`: produces or consumes numbered, checksummed messages on a
//! named ring, so a Python process on the other end can prove nothing was lost, reordered or
//! damaged.
//!
//! A message is `[seq: u64 LE][filler][crc32 of everything before: u32 LE]`, 12 + `seq % 48`
//! bytes long, filler byte `i` being `(seq + i) & 0xFF` (`python/tests/framing.py` mirrors it).
//!
//! ```text
//! tadpole-py-peer produce NAME COUNT [--retry-disconnected]   # prints "sent COUNT"
//! tadpole-py-peer consume NAME COUNT [--retry-disconnected]   # prints "received COUNT"
//! tadpole-py-peer echo PING PONG    # sends back every message of ring PING on ring PONG (the
//!                                   # Rust side of python/bench/pingpong.py), until PING's
//!                                   # producer leaves
//! ```

use std::process::ExitCode;
use std::time::Duration;

use ipc_core::{Segment, SendError};

fn crc32(bytes: &[u8]) -> u32 {
    // Bitwise CRC-32 (IEEE, as zlib.crc32): slow but tiny, and these messages are short.
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

fn message(seq: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&seq.to_le_bytes());
    let filler = (seq % 48) as usize;
    out.extend((0..filler).map(|i| (seq as usize + i) as u8));
    let crc = crc32(out);
    out.extend_from_slice(&crc.to_le_bytes());
}

fn check(seq: u64, got: &[u8], scratch: &mut Vec<u8>) -> Result<(), String> {
    message(seq, scratch);
    if got == scratch.as_slice() {
        return Ok(());
    }
    let got_seq = got.get(..8).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])));
    Err(format!(
        "message {seq}: got {} bytes starting with seq {got_seq:?}, expected {} bytes",
        got.len(),
        scratch.len()
    ))
}

fn open(name: &str) -> Result<Segment, String> {
    // The Python side creates the ring; it may not be there the instant we start.
    for _ in 0..500 {
        match Segment::open(name) {
            Ok(s) => return Ok(s),
            Err(ipc_core::OpenError::NotFound(_)) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err(format!("no ring named {name:?} after 5 s"))
}

fn produce(name: &str, count: u64, retry_disconnected: bool) -> Result<(), String> {
    let segment = open(name)?;
    let mut producer = segment.producer().map_err(|e| e.to_string())?;
    let first = producer.frontier().messages;
    let mut buf = Vec::with_capacity(64);
    for seq in first..count {
        message(seq, &mut buf);
        loop {
            match producer.send(&buf) {
                Ok(()) => break,
                // A consumer that was killed: wait for its replacement.
                Err(SendError::Disconnected) if retry_disconnected => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(format!("message {seq}: {e}")),
            }
        }
    }
    println!("sent {count}");
    Ok(())
}

fn consume(name: &str, count: u64, retry_disconnected: bool) -> Result<(), String> {
    let segment = open(name)?;
    let mut consumer = segment.consumer().map_err(|e| e.to_string())?;
    let mut scratch = Vec::with_capacity(64);
    for seq in 0..count {
        loop {
            match consumer.recv_timeout(Duration::from_secs(30)) {
                Ok(msg) => {
                    check(seq, &msg, &mut scratch)?;
                    break;
                }
                // A producer that was killed: wait for its replacement.
                Err(ipc_core::RecvTimeoutError::Disconnected) if retry_disconnected => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(e) => return Err(format!("message {seq}: {e}")),
            }
        }
    }
    println!("received {count}");
    Ok(())
}

fn echo(ping: &str, pong: &str) -> Result<(), String> {
    let mut consumer = open(ping)?.consumer().map_err(|e| e.to_string())?;
    let mut producer = open(pong)?.producer().map_err(|e| e.to_string())?;
    consumer.set_wait_strategy(ipc_core::WaitStrategy::BusySpin);
    producer.set_wait_strategy(ipc_core::WaitStrategy::BusySpin);
    loop {
        match consumer.recv() {
            Ok(msg) => producer.send(&msg).map_err(|e| e.to_string())?,
            Err(ipc_core::RecvError::Disconnected) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["produce", name, count, rest @ ..] => match count.parse() {
            Ok(n) => produce(name, n, rest.contains(&"--retry-disconnected")),
            Err(e) => Err(format!("COUNT: {e}")),
        },
        ["consume", name, count, rest @ ..] => match count.parse() {
            Ok(n) => consume(name, n, rest.contains(&"--retry-disconnected")),
            Err(e) => Err(format!("COUNT: {e}")),
        },
        ["echo", ping, pong] => echo(ping, pong),
        _ => Err(
            "usage: tadpole-py-peer produce NAME COUNT [--retry-disconnected] | consume NAME COUNT [--retry-disconnected] | echo PING PONG"
                .into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tadpole-py-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
