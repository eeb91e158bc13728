//! `WaitSet`: one thread waiting on several rings, woken by whichever producer commits first,
//! fair when all are busy, and told of a producer killed without detaching.

use std::io::{BufRead, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipc_core::{RingBuilder, Segment, TryRecvError, WaitSet, WaitStrategy};

const ROLE_ENV: &str = "TADPOLE_WAITSET_ROLE";
const RING_ENV: &str = "TADPOLE_WAITSET_RING";

fn ring() -> Segment {
    RingBuilder::new(1 << 14).create_anonymous().unwrap()
}

/// The child: attach as producer of the named ring, say so, then wait to be killed.
#[test]
fn child_producer_until_killed() {
    let Ok(role) = std::env::var(ROLE_ENV) else { return };
    assert_eq!(role, "hold-producer");
    let segment = Segment::open(&std::env::var(RING_ENV).unwrap()).unwrap();
    let _producer = segment.producer().unwrap();
    std::io::stdout().write_all(b"\n@ready@\n").unwrap();
    std::io::stdout().flush().unwrap();
    let mut never = [0u8; 1];
    let _ = std::io::stdin().read(&mut never);
}

#[test]
fn a_blocking_set_sleeps_until_any_ring_gets_a_record_and_names_that_ring() {
    for strategy in [WaitStrategy::Block, WaitStrategy::SpinThenYield, WaitStrategy::BusySpin] {
        let rings = [ring(), ring(), ring()];
        let mut set = WaitSet::new(strategy).unwrap();
        let keys: Vec<_> = rings.iter().map(|r| set.insert(r.consumer().unwrap())).collect();
        let mut producer = rings[2].producer().unwrap();
        let sender = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            producer.try_send(b"third").unwrap();
            producer
        });
        let started = Instant::now();
        let ready = set.wait(Duration::from_secs(10)).to_vec();
        assert_eq!(ready, [keys[2]], "{strategy:?}");
        assert!(started.elapsed() < Duration::from_secs(5), "{strategy:?}: woke after {:?}", started.elapsed());
        assert_eq!(&set.get_mut(keys[2]).unwrap().try_recv().unwrap()[..], b"third");
        let _producer = sender.join().unwrap();
    }
}

#[test]
fn wait_returns_nothing_once_the_timeout_passes_with_every_ring_quiet() {
    let rings = [ring(), ring()];
    let _producers: Vec<_> = rings.iter().map(|r| r.producer().unwrap()).collect();
    let mut set = WaitSet::new(WaitStrategy::Block).unwrap();
    for r in &rings {
        set.insert(r.consumer().unwrap());
    }
    let started = Instant::now();
    assert!(set.wait(Duration::from_millis(60)).is_empty());
    assert!(started.elapsed() >= Duration::from_millis(60));
    assert!(set.wait(Duration::ZERO).is_empty());
}

#[test]
fn when_every_ring_is_busy_each_comes_first_in_turn() {
    let rings = [ring(), ring(), ring()];
    let mut producers: Vec<_> = rings.iter().map(|r| r.producer().unwrap()).collect();
    let mut set = WaitSet::new(WaitStrategy::Block).unwrap();
    let keys: Vec<_> = rings.iter().map(|r| set.insert(r.consumer().unwrap())).collect();
    let mut first = [0usize; 3];
    for round in 0..300 {
        for p in &mut producers {
            let _ = p.try_send(&[round as u8; 16]);
        }
        let ready = set.wait(Duration::from_secs(5)).to_vec();
        assert_eq!(ready.len(), 3, "every ring has records");
        let i = keys.iter().position(|k| *k == ready[0]).unwrap();
        first[i] += 1;
        // Serve only the first ring: the others keep their records and stay ready.
        drop(set.get_mut(ready[0]).unwrap().try_recv().unwrap());
    }
    assert!(first.iter().all(|&n| n >= 80), "first place went {first:?}");
}

#[test]
fn a_ring_whose_producer_detaches_is_ready_and_says_disconnected_after_its_records() {
    let rings = [ring(), ring()];
    let mut set = WaitSet::new(WaitStrategy::Block).unwrap();
    let keys: Vec<_> = rings.iter().map(|r| set.insert(r.consumer().unwrap())).collect();
    let mut producer = rings[1].producer().unwrap();
    let _quiet = rings[0].producer().unwrap();
    let leaving = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        producer.try_send(b"last words").unwrap();
        drop(producer);
    });
    assert_eq!(set.wait(Duration::from_secs(10)).to_vec(), [keys[1]]);
    leaving.join().unwrap();
    let consumer = set.get_mut(keys[1]).unwrap();
    assert_eq!(&consumer.try_recv().unwrap()[..], b"last words");
    let started = Instant::now();
    loop {
        match consumer.try_recv() {
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => assert!(started.elapsed() < Duration::from_secs(5), "never disconnected"),
            other => panic!("{:?}", other.map(|r| r.len())),
        }
    }
    assert_eq!(set.wait(Duration::from_millis(50)).to_vec(), [keys[1]], "a closed ring stays ready until removed");
    assert!(set.remove(keys[1]).is_some());
    assert!(set.wait(Duration::from_millis(20)).is_empty());
    assert_eq!(set.len(), 1);
}

#[test]
fn a_ring_whose_producer_process_is_killed_is_reported_ready_within_a_second() {
    let name = format!("waitset-kill-{}", std::process::id());
    let _ = Segment::unlink(&name);
    let segment = RingBuilder::new(1 << 14).create_named(&name).unwrap();
    let mut set = WaitSet::new(WaitStrategy::Block).unwrap();
    let key = set.insert(segment.consumer().unwrap());
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_producer_until_killed", "--nocapture", "--test-threads=1"])
        .env(ROLE_ENV, "hold-producer")
        .env(RING_ENV, &name)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("@ready@"))), "the child did not attach");
    assert!(set.wait(Duration::from_millis(100)).is_empty(), "an idle live producer is not news");
    child.kill().unwrap();
    child.wait().unwrap();
    let started = Instant::now();
    let ready = set.wait(Duration::from_secs(10)).to_vec();
    assert_eq!(ready, [key]);
    assert!(started.elapsed() < Duration::from_secs(1), "noticed after {:?}", started.elapsed());
    assert_eq!(set.get_mut(key).unwrap().try_recv().err(), Some(TryRecvError::Disconnected));
    Segment::unlink(&name).unwrap();
}

#[test]
fn a_consumer_taken_out_of_a_set_is_rung_on_its_own_doorbell_again() {
    let segment = ring();
    let mut producer = segment.producer().unwrap();
    let mut consumer = segment.consumer().unwrap();
    let fd = consumer.pollable_doorbell().unwrap();
    let mut set = WaitSet::new(WaitStrategy::Block).unwrap();
    let key = set.insert(consumer);
    producer.try_send(b"in the set").unwrap();
    assert_eq!(set.wait(Duration::from_secs(5)).to_vec(), [key]);
    let mut consumer = set.remove(key).unwrap();
    assert_eq!(&consumer.try_recv().unwrap()[..], b"in the set");
    assert!(consumer.arm_doorbell().unwrap());
    producer.try_send(b"on its own").unwrap();
    let mut pollfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut pollfd, 1, 5000) };
    assert_eq!(n, 1, "the consumer's own doorbell did not ring");
    consumer.disarm_doorbell();
    assert_eq!(&consumer.try_recv().unwrap()[..], b"on its own");
}
