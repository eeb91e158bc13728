//! The engine over real ZeroMQ sockets (DEALER → ROUTER on TCP 127.0.0.1, no CURVE: that is the
//! security layer's): a stream arrives once and in order, across dropped links, with a hostile
//! peer sending garbage to the same ROUTER.

mod common;

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use common::{drain, fill};
use ipc_core::{RingBuilder, Segment};
use ipc_zmq::engine::{
    self, Backoff, LinkOptions, Receiver, ReceiverConfig, Route, Sender, SenderConfig, recv_message, serve_router,
};

const ROUTE: &str = "ticks";

fn options() -> LinkOptions {
    LinkOptions { io_timeout: Duration::from_millis(1), ..LinkOptions::default() }
}

/// A ROUTER bound to a fresh port and a DEALER connected to it.
fn link(ctx: &zmq::Context) -> (zmq::Socket, zmq::Socket) {
    let router = ctx.socket(zmq::ROUTER).unwrap();
    engine::apply_link_options(&router, &options()).unwrap();
    router.bind("tcp://127.0.0.1:*").unwrap();
    let endpoint = router.get_last_endpoint().unwrap().unwrap();
    let dealer = ctx.socket(zmq::DEALER).unwrap();
    engine::apply_link_options(&dealer, &options()).unwrap();
    dealer.connect(&endpoint).unwrap();
    (router, dealer)
}

fn sender_config() -> SenderConfig {
    let mut c = SenderConfig::new("host-a", ROUTE);
    c.max_batch_records = 128;
    c.max_in_flight_records = 1024;
    c.hello_interval = Duration::from_millis(50);
    c.request_timeout = Duration::from_millis(200);
    c.backoff = Backoff { base: Duration::from_millis(10), factor: 2, max: Duration::from_millis(100) };
    c
}

fn ring() -> Segment {
    RingBuilder::new(1 << 16).create_anonymous().unwrap()
}

/// One turn of a relay pair's event loops in one thread.
fn turn(sender: &mut Sender, dealer: &zmq::Socket, receiver: &mut Receiver, router: &zmq::Socket) {
    let now = Instant::now();
    while let Some(message) = sender.poll(now) {
        // A full pipe (link down) is fine: what is not acknowledged is resent.
        let _ = dealer.send_multipart(message, zmq::DONTWAIT);
    }
    while serve_router(router, receiver, Instant::now()).unwrap() {}
    while let Some(reply) = recv_message(dealer).unwrap() {
        sender.handle(&reply, Instant::now());
    }
}

fn run_until(total: u64, mut step: impl FnMut(usize) -> Vec<u64>) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    loop {
        let seen = step(round);
        if seen.len() as u64 >= total {
            return seen;
        }
        assert!(Instant::now() < deadline, "stalled at {} of {total}", seen.len());
        round += 1;
    }
}

#[test]
fn a_stream_over_tcp_arrives_once_and_in_order() {
    let ctx = zmq::Context::new();
    let (router, dealer) = link(&ctx);
    let (source, dest) = (ring(), ring());
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(sender_config(), source.consumer().unwrap(), None).unwrap();
    let routes = [(ROUTE.to_owned(), Route::new(dest.producer().unwrap()))];
    let mut receiver = Receiver::new(ReceiverConfig::default(), routes, None).unwrap();
    let mut out = dest.consumer().unwrap();
    let (total, mut next, mut seen) = (30_000u64, 0u64, Vec::new());
    let seen = run_until(total, |_| {
        fill(&mut producer, &mut next, total);
        turn(&mut sender, &dealer, &mut receiver, &router);
        drain(&mut out, &mut seen);
        seen.clone()
    });
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
    assert_eq!(receiver.counters().duplicates_dropped.load(Relaxed), 0);
}

fn across_dropped_links(tell_the_sender: bool) {
    let ctx = zmq::Context::new();
    let (mut router, mut dealer) = link(&ctx);
    let (source, dest) = (ring(), ring());
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(sender_config(), source.consumer().unwrap(), None).unwrap();
    let routes = [(ROUTE.to_owned(), Route::new(dest.producer().unwrap()))];
    let mut receiver = Receiver::new(ReceiverConfig::default(), routes, None).unwrap();
    let mut out = dest.consumer().unwrap();
    let (total, mut next, mut seen) = (20_000u64, 0u64, Vec::new());
    let mut drops = 0;
    let seen = run_until(total, |_| {
        fill(&mut producer, &mut next, total);
        // Mid-flight, with DATA and ACKs in the pipes, the link goes: both sockets close (linger
        // 0 drops what they queued) and new ones come up on another port.
        if drops < 3 && seen.len() as u64 > (drops + 1) * total / 4 {
            let _ = sender.poll(Instant::now()).map(|m| dealer.send_multipart(m, zmq::DONTWAIT));
            (router, dealer) = link(&ctx);
            if tell_the_sender {
                sender.on_link_down();
            }
            drops += 1;
        }
        turn(&mut sender, &dealer, &mut receiver, &router);
        drain(&mut out, &mut seen);
        seen.clone()
    });
    assert_eq!(drops, 3);
    let resends = sender.counters().resends.load(Relaxed);
    if tell_the_sender {
        assert!(sender.counters().hellos.load(Relaxed) >= 4, "a HELLO on every link");
    } else {
        assert!(resends >= 1, "the drops cost no resend: they did not happen mid-flight");
    }
    eprintln!(
        "resends {resends}, gaps {}, duplicates dropped {}",
        receiver.counters().gaps.load(Relaxed),
        receiver.counters().duplicates_dropped.load(Relaxed)
    );
    assert_eq!(seen, (0..total).collect::<Vec<_>>(), "lost or duplicated across the drops");
}

#[test]
fn a_dropped_link_loses_and_duplicates_nothing_after_hello_and_welcome() {
    across_dropped_links(true);
}

#[test]
fn a_dropped_link_nobody_reports_is_recovered_by_gap_detection_or_timeout_without_loss() {
    across_dropped_links(false);
}

#[test]
fn garbage_from_another_peer_is_counted_and_the_stream_keeps_flowing() {
    let ctx = zmq::Context::new();
    let (router, dealer) = link(&ctx);
    let rogue = ctx.socket(zmq::DEALER).unwrap();
    engine::apply_link_options(&rogue, &options()).unwrap();
    rogue.connect(&router.get_last_endpoint().unwrap().unwrap()).unwrap();
    let (source, dest) = (ring(), ring());
    let mut producer = source.producer().unwrap();
    let mut sender = Sender::new(sender_config(), source.consumer().unwrap(), None).unwrap();
    let routes = [(ROUTE.to_owned(), Route::new(dest.producer().unwrap()))];
    let mut receiver = Receiver::new(ReceiverConfig::default(), routes, None).unwrap();
    let mut out = dest.consumer().unwrap();
    let (total, mut next, mut seen) = (5_000u64, 0u64, Vec::new());
    let garbage: [&[u8]; 3] = [b"", b"\x01\x03", b"\x01\x01\xff\xff\xff\xff\xff\xff\xff\xff\x40"];
    let seen = run_until(total, |round| {
        rogue.send(garbage[round % 3], zmq::DONTWAIT).unwrap();
        fill(&mut producer, &mut next, total);
        turn(&mut sender, &dealer, &mut receiver, &router);
        drain(&mut out, &mut seen);
        seen.clone()
    });
    assert_eq!(seen, (0..total).collect::<Vec<_>>());
    assert!(receiver.counters().malformed.load(Relaxed) > 0);
    assert!(recv_message(&rogue).unwrap().is_none(), "garbage is never answered");
}

#[test]
fn link_options_set_heartbeats_timeouts_and_linger() {
    let ctx = zmq::Context::new();
    let socket = ctx.socket(zmq::DEALER).unwrap();
    engine::apply_link_options(&socket, &LinkOptions::default()).unwrap();
    assert_eq!(socket.get_linger().unwrap(), 0);
    assert_eq!(socket.get_heartbeat_ivl().unwrap(), 1000);
    assert_eq!(socket.get_heartbeat_timeout().unwrap(), 5000);
    assert_eq!(socket.get_heartbeat_ttl().unwrap(), 30000);
    assert_eq!(socket.get_connect_timeout().unwrap(), 1000);
    assert_eq!(socket.get_rcvtimeo().unwrap(), 100);
}
