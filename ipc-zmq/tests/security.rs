//! The CURVE/ZAP layer against hostile peers on real sockets (127.0.0.1, ephemeral ports):
//! each attack delivers nothing, raises a counter, and a legitimate client on the same
//! listener keeps being served.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipc_zmq::config::Limits;
use ipc_zmq::keys::{KeyPair, PublicKey};
use ipc_zmq::security::{
    Allowlist, Connector, HandshakeFailure, LinkState, Listener, Received, SecurityCounters, ZapHandler, ZapStartError,
};

const DOMAIN: &str = "tadpole-test";

struct Server {
    ctx: zmq::Context,
    keys: KeyPair,
    zap: ZapHandler,
    listener: Listener,
    counters: Arc<SecurityCounters>,
    limits: Limits,
}

fn server_with(allowed: &[&KeyPair], limits: Limits) -> Server {
    let ctx = zmq::Context::new();
    let keys = KeyPair::generate().unwrap();
    let counters = Arc::new(SecurityCounters::default());
    let allow: Allowlist = allowed.iter().map(|k| *k.public()).collect();
    let zap = ZapHandler::start(&ctx, DOMAIN, allow, counters.clone()).unwrap();
    let listener = Listener::bind(&zap, &keys, "tcp://127.0.0.1:*", &limits).unwrap();
    listener.socket().set_rcvtimeo(50).unwrap();
    Server { ctx, keys, zap, listener, counters, limits }
}

fn server(allowed: &[&KeyPair]) -> Server {
    server_with(allowed, Limits::default())
}

impl Server {
    fn client(&self, keys: &KeyPair) -> Connector {
        self.client_for(keys, self.keys.public())
    }

    fn client_for(&self, keys: &KeyPair, server_key: &PublicKey) -> Connector {
        let c = Connector::connect(
            &self.ctx,
            keys,
            server_key,
            self.listener.endpoint(),
            &self.limits,
            self.counters.clone(),
        )
        .unwrap();
        c.socket().set_sndtimeo(1000).unwrap();
        c
    }

    fn port(&self) -> u16 {
        self.listener.endpoint().rsplit_once(':').unwrap().1.parse().unwrap()
    }

    /// Everything delivered within `window`: (peer, payload) of admitted messages, and the
    /// number dropped as revoked.
    fn drain(&mut self, window: Duration) -> (Vec<(PublicKey, Vec<u8>)>, usize) {
        let deadline = Instant::now() + window;
        let (mut got, mut dropped) = (Vec::new(), 0);
        while Instant::now() < deadline {
            match self.listener.recv(0) {
                Ok(Received::Message { peer, frames, .. }) => got.push((peer, frames[0].to_vec())),
                Ok(Received::Dropped { .. }) => dropped += 1,
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
        (got, dropped)
    }

    /// Receives until `n` admitted messages from `from` arrived (or panics after 10 s);
    /// messages from anyone else fail the test.
    fn expect_from(&mut self, from: &KeyPair, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = 0;
        while seen < n {
            assert!(Instant::now() < deadline, "only {seen} of {n} messages from the legitimate client arrived");
            match self.listener.recv(0) {
                Ok(Received::Message { peer, .. }) => {
                    assert_eq!(&peer, from.public(), "a message from a refused peer was delivered");
                    seen += 1;
                }
                Ok(Received::Dropped { peer }) => panic!("unexpected drop from {peer:?}"),
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => panic!("recv: {e}"),
            }
        }
    }
}

/// Sends `n` messages from a legitimate client and checks all of them arrive: the listener
/// still serves at full rate (no pacing) whatever the attackers did.
fn legit_traffic_flows(s: &mut Server, client: &KeyPair, conn: &Connector, n: usize) {
    for i in 0..n {
        conn.socket().send(format!("legit {i}").as_bytes(), 0).unwrap();
    }
    s.expect_from(client, n);
}

fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn at_least(counter: &AtomicU64, n: u64) -> bool {
    counter.load(Ordering::Relaxed) >= n
}

fn raw_socket(ctx: &zmq::Context, endpoint: &str, setup: impl FnOnce(&zmq::Socket)) -> zmq::Socket {
    let s = ctx.socket(zmq::DEALER).unwrap();
    s.set_linger(0).unwrap();
    s.set_sndtimeo(100).unwrap();
    setup(&s);
    s.connect(endpoint).unwrap();
    s
}

#[test]
fn unknown_client_key_is_refused_while_an_allowlisted_client_is_served() {
    let (good, stranger) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let mut s = server(&[&good]);
    let intruder = s.client(&stranger);
    for _ in 0..10 {
        let _ = intruder.socket().send("intruder", zmq::DONTWAIT);
    }
    let c = &s.counters;
    wait_for("the unknown key refused by ZAP", Duration::from_secs(5), || {
        at_least(&c.zap_unknown_key, 1) && at_least(&c.server_handshake_failed_auth, 1)
    });
    wait_for("the intruder to see its handshake fail", Duration::from_secs(5), || {
        matches!(intruder.status(), LinkState::Failing { last: HandshakeFailure::Auth, .. })
    });
    let conn = s.client(&good);
    legit_traffic_flows(&mut s, &good, &conn, 10_000);
    assert_eq!(s.drain(Duration::from_millis(300)), (vec![], 0));
    assert_eq!(s.counters.zap_admitted.load(Ordering::Relaxed), 1);
}

#[test]
fn null_and_plain_clients_are_refused() {
    let good = KeyPair::generate().unwrap();
    let mut s = server(&[&good]);
    let ep = s.listener.endpoint().to_owned();
    let null = raw_socket(&s.ctx, &ep, |_| {});
    let plain = raw_socket(&s.ctx, &ep, |so| {
        so.set_plain_username(Some("admin")).unwrap();
        so.set_plain_password(Some("admin")).unwrap();
    });
    for _ in 0..5 {
        let _ = null.send("null", zmq::DONTWAIT);
        let _ = plain.send("plain", zmq::DONTWAIT);
    }
    // A mechanism mismatch fails in the greeting, before ZAP: each attempt is a protocol error.
    wait_for("NULL and PLAIN handshakes to fail", Duration::from_secs(5), || {
        at_least(&s.counters.server_handshake_failed_protocol, 2)
    });
    let conn = s.client(&good);
    legit_traffic_flows(&mut s, &good, &conn, 1000);
    assert_eq!(s.drain(Duration::from_millis(300)), (vec![], 0));
}

#[test]
fn zap_refuses_non_curve_mechanisms_even_on_a_plain_server_in_the_same_context() {
    let good = KeyPair::generate().unwrap();
    let s = server(&[&good]);
    // Any socket of the context with the domain set asks our handler: PLAIN must not pass.
    let plain_server = s.ctx.socket(zmq::ROUTER).unwrap();
    plain_server.set_linger(0).unwrap();
    plain_server.set_plain_server(true).unwrap();
    plain_server.set_zap_domain(DOMAIN).unwrap();
    plain_server.set_rcvtimeo(50).unwrap();
    plain_server.bind("tcp://127.0.0.1:*").unwrap();
    let ep = plain_server.get_last_endpoint().unwrap().unwrap();
    let plain = raw_socket(&s.ctx, &ep, |so| {
        so.set_plain_username(Some("admin")).unwrap();
        so.set_plain_password(Some("admin")).unwrap();
    });
    let _ = plain.send("plain", zmq::DONTWAIT);
    wait_for("ZAP to refuse PLAIN", Duration::from_secs(5), || at_least(&s.counters.zap_wrong_mechanism, 1));
    assert!(plain_server.recv_multipart(0).is_err(), "a PLAIN client was delivered");
}

#[test]
fn a_server_with_another_zap_domain_refuses_even_allowlisted_clients() {
    let good = KeyPair::generate().unwrap();
    let s = server(&[&good]);
    let other = s.ctx.socket(zmq::ROUTER).unwrap();
    other.set_linger(0).unwrap();
    other.set_curve_server(true).unwrap();
    other.set_curve_secretkey(s.keys.secret().as_bytes()).unwrap();
    other.set_zap_domain("another-domain").unwrap();
    other.set_rcvtimeo(50).unwrap();
    other.bind("tcp://127.0.0.1:*").unwrap();
    let ep = other.get_last_endpoint().unwrap().unwrap();
    let conn = Connector::connect(&s.ctx, &good, s.keys.public(), &ep, &s.limits, s.counters.clone()).unwrap();
    let _ = conn.socket().send("hi", zmq::DONTWAIT);
    wait_for("ZAP to refuse the domain", Duration::from_secs(5), || at_least(&s.counters.zap_wrong_domain, 1));
    assert!(other.recv_multipart(0).is_err());
    assert_eq!(s.counters.zap_admitted.load(Ordering::Relaxed), 0);
}

#[test]
fn a_context_takes_only_one_zap_handler() {
    let ctx = zmq::Context::new();
    let counters = Arc::new(SecurityCounters::default());
    let _first = ZapHandler::start(&ctx, DOMAIN, Allowlist::default(), counters.clone()).unwrap();
    let second = ZapHandler::start(&ctx, DOMAIN, Allowlist::default(), counters);
    assert!(matches!(second, Err(ZapStartError::Bind(zmq::Error::EADDRINUSE))));
}

#[test]
fn wrong_server_key_is_counted_on_the_client_backed_off_and_nothing_is_delivered() {
    let good = KeyPair::generate().unwrap();
    let mut s = server(&[&good]);
    let impostor_key = *KeyPair::generate().unwrap().public();
    let mut misled = s.client_for(&good, &impostor_key);
    let status = misled.status_handle();
    for _ in 0..5 {
        let _ = misled.socket().send("lost", zmq::DONTWAIT);
    }
    wait_for("three failed handshakes", Duration::from_secs(10), || status.total_failures() >= 3);
    assert!(matches!(status.state(), LinkState::Failing { failures, .. } if failures >= 3));
    assert!(at_least(&s.counters.client_handshake_failures, 3));
    let before = misled.reconnect_interval_ms();
    let after = misled.back_off().unwrap();
    assert_eq!(after, before * 2, "repeated handshake failures back the reconnects off");
    // Failures keep coming (more slowly): backing off further is capped at reconnect_max_ms.
    for _ in 0..20 {
        let seen = status.total_failures();
        wait_for("another failure", Duration::from_secs(30), || status.total_failures() > seen);
        if misled.back_off().unwrap() == s.limits.reconnect_max_ms {
            break;
        }
        if misled.reconnect_interval_ms() >= 1600 {
            break; // enough to prove growth without waiting for the cap
        }
    }
    assert!(misled.reconnect_interval_ms() >= 1600);
    let conn = s.client(&good);
    legit_traffic_flows(&mut s, &good, &conn, 1000);
    assert_eq!(s.drain(Duration::from_millis(300)), (vec![], 0));
    assert!(matches!(conn.status(), LinkState::Connected));
}

/// Reads until the server closes the connection; true if it did before `deadline`.
fn closed_by_server(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left.min(Duration::from_millis(200)))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return true, // reset
        }
    }
}

#[test]
fn garbage_and_truncated_greetings_are_dropped_and_the_server_keeps_serving() {
    let good = KeyPair::generate().unwrap();
    let mut s = server(&[&good]);
    let port = s.port();
    let mut garbage = TcpStream::connect(("127.0.0.1", port)).unwrap();
    garbage.write_all(&[0x42; 4096]).unwrap();
    // A valid ZMTP 3 signature and version, then silence: the handshake timeout ends it.
    let mut truncated = TcpStream::connect(("127.0.0.1", port)).unwrap();
    truncated.write_all(&[0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0, b'C', b'U']).unwrap();
    // A full CURVE greeting followed by a bogus HELLO command.
    let mut bad_hello = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut greeting = vec![0xff, 0, 0, 0, 0, 0, 0, 0, 1, 0x7f, 3, 0];
    greeting.extend_from_slice(b"CURVE");
    greeting.resize(64, 0);
    greeting.extend_from_slice(&[0x04, 10, 5, b'H', b'E', b'L', b'L', b'O', 1, 2, 3, 4]);
    bad_hello.write_all(&greeting).unwrap();

    let deadline = Instant::now() + Duration::from_secs(10);
    for (name, stream) in [("garbage", &mut garbage), ("truncated", &mut truncated), ("bad HELLO", &mut bad_hello)] {
        assert!(closed_by_server(stream, deadline), "the {name} connection was left open");
    }
    wait_for("three refused connections counted", Duration::from_secs(5), || {
        at_least(&s.counters.server_disconnects, 3)
    });
    let conn = s.client(&good);
    legit_traffic_flows(&mut s, &good, &conn, 1000);
    assert_eq!(s.drain(Duration::from_millis(200)), (vec![], 0));
}

#[test]
fn many_idle_tcp_connections_are_closed_by_the_handshake_timeout_while_a_client_is_served() {
    let good = KeyPair::generate().unwrap();
    let limits = Limits { handshake_timeout_ms: 500, ..Limits::default() };
    let mut s = server_with(&[&good], limits);
    let port = s.port();
    let mut idle: Vec<TcpStream> = (0..200).map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap()).collect();
    let conn = s.client(&good);
    legit_traffic_flows(&mut s, &good, &conn, 5000);
    let deadline = Instant::now() + Duration::from_secs(15);
    for (i, stream) in idle.iter_mut().enumerate() {
        assert!(closed_by_server(stream, deadline), "idle connection {i} still open");
    }
    // The monitor reports asynchronously: the counters may trail the closes by a moment.
    wait_for("200 accepted and closed connections counted", Duration::from_secs(5), || {
        at_least(&s.counters.server_accepted, 201) && at_least(&s.counters.server_disconnects, 200)
    });
    legit_traffic_flows(&mut s, &good, &conn, 1000);
}

#[test]
fn an_oversized_frame_drops_the_connection_and_is_not_delivered() {
    let (big, small) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let limits = Limits { max_frame_bytes: 1024, ..Limits::default() };
    let mut s = server_with(&[&big, &small], limits);
    let sender = s.client(&big);
    let conn = s.client(&small);
    legit_traffic_flows(&mut s, &small, &conn, 100);
    wait_for("the big sender connected", Duration::from_secs(5), || sender.status() == LinkState::Connected);
    let disconnects = s.counters.server_disconnects.load(Ordering::Relaxed);
    sender.socket().send(vec![7u8; 2048], 0).unwrap();
    wait_for("the oversized sender disconnected", Duration::from_secs(5), || {
        at_least(&s.counters.server_disconnects, disconnects + 1)
    });
    legit_traffic_flows(&mut s, &small, &conn, 1000);
    let (got, _) = s.drain(Duration::from_millis(300));
    assert!(got.iter().all(|(_, m)| m.len() <= 1024), "an oversized frame was delivered");
}

#[test]
fn a_revoked_key_is_cut_off_while_other_clients_continue() {
    let (a, b) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let mut s = server(&[&a, &b]);
    let (ca, cb) = (s.client(&a), s.client(&b));
    legit_traffic_flows(&mut s, &a, &ca, 100);
    legit_traffic_flows(&mut s, &b, &cb, 100);

    let revoked = s.zap.reload([*b.public()].into_iter().collect());
    assert_eq!(revoked, vec![*a.public()]);
    // A's connection is still open: its messages arrive but are dropped and counted.
    for _ in 0..10 {
        ca.socket().send("after revocation", 0).unwrap();
    }
    wait_for("A's messages dropped", Duration::from_secs(5), || {
        s.drain(Duration::from_millis(50));
        at_least(&s.counters.revoked_messages_dropped, 10)
    });
    legit_traffic_flows(&mut s, &b, &cb, 1000);

    // Reopening closes every connection; B comes back through ZAP, A is refused.
    let auth_failures = s.counters.server_handshake_failed_auth.load(Ordering::Relaxed);
    s.listener.reopen().unwrap();
    s.listener.socket().set_rcvtimeo(50).unwrap();
    wait_for("A refused on reconnect", Duration::from_secs(10), || {
        at_least(&s.counters.server_handshake_failed_auth, auth_failures + 1)
            && matches!(ca.status(), LinkState::Failing { last: HandshakeFailure::Auth, .. })
    });
    let _ = ca.socket().send("still revoked", zmq::DONTWAIT);
    legit_traffic_flows(&mut s, &b, &cb, 1000);
    assert_eq!(s.drain(Duration::from_millis(300)), (vec![], 0));
    assert_eq!(s.counters.listener_reopened.load(Ordering::Relaxed), 1);
}

#[test]
fn the_zap_handler_answers_every_request_from_the_moment_it_starts() {
    let good = KeyPair::generate().unwrap();
    let ctx = zmq::Context::new();
    let counters = Arc::new(SecurityCounters::default());
    let _zap = ZapHandler::start(&ctx, DOMAIN, [*good.public()].into_iter().collect(), counters.clone()).unwrap();
    let ask = |frames: &[Vec<u8>]| -> Vec<Vec<u8>> {
        let req = ctx.socket(zmq::REQ).unwrap();
        req.set_linger(0).unwrap();
        req.set_rcvtimeo(2000).unwrap();
        req.connect(ipc_zmq::security::ZAP_ENDPOINT).unwrap();
        req.send_multipart(frames, 0).unwrap();
        req.recv_multipart(0).expect("the ZAP handler did not answer")
    };
    // ZAP 1.0: version, request id, domain, address, routing id, mechanism, credentials...
    let request = |version: &str, domain: &str, mechanism: &str, credentials: &[&[u8]]| -> Vec<Vec<u8>> {
        let mut r: Vec<Vec<u8>> =
            [version, "7", domain, "127.0.0.1", "", mechanism].iter().map(|f| f.as_bytes().to_vec()).collect();
        r.extend(credentials.iter().map(|c| c.to_vec()));
        r
    };
    let (good_key, stranger_key) =
        (good.public().as_bytes(), KeyPair::generate().unwrap().public().as_bytes().to_owned());
    let cases = [
        (request("1.0", DOMAIN, "CURVE", &[good_key]), "200", &counters.zap_admitted),
        (request("1.0", DOMAIN, "CURVE", &[&stranger_key]), "400", &counters.zap_unknown_key),
        (request("1.0", "other", "CURVE", &[good_key]), "400", &counters.zap_wrong_domain),
        (request("1.0", DOMAIN, "NULL", &[]), "400", &counters.zap_wrong_mechanism),
        (request("1.0", DOMAIN, "PLAIN", &[b"admin", b"admin"]), "400", &counters.zap_wrong_mechanism),
        (request("1.0", DOMAIN, "CURVE", &[b"short"]), "400", &counters.zap_malformed),
        (request("1.0", DOMAIN, "CURVE", &[good_key, good_key]), "400", &counters.zap_malformed),
        (request("2.0", DOMAIN, "CURVE", &[good_key]), "400", &counters.zap_malformed),
        (vec![b"1.0".to_vec()], "400", &counters.zap_malformed),
    ];
    for (request, status, counter) in cases {
        let before = counter.load(Ordering::Relaxed);
        let reply = ask(&request);
        assert_eq!(reply.len(), 6, "a ZAP reply has six frames");
        assert_eq!(reply[0], b"1.0");
        assert_eq!(reply[2], status.as_bytes(), "{request:?}");
        assert_eq!(counter.load(Ordering::Relaxed), before + 1, "{request:?}");
        let user_id = if status == "200" { good.public().to_z85().into_bytes() } else { vec![] };
        assert_eq!(reply[4], user_id);
    }
}

#[test]
fn replacing_the_allowlist_cuts_revoked_peers_and_keeps_added_and_remaining_ones() {
    let (a, b, c) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    let mut s = server(&[&a, &b]);
    let (mut ca, cb, cc) = (s.client(&a), s.client(&b), s.client(&c));
    legit_traffic_flows(&mut s, &b, &cb, 10);
    wait_for("C refused before it is allowed", Duration::from_secs(5), || {
        matches!(cc.status(), LinkState::Failing { last: HandshakeFailure::Auth, .. })
    });

    // Nothing revoked (C added): no reopen, B's connection is untouched.
    let revoked = s.listener.replace_allowlist([&a, &b, &c].into_iter().map(|k| *k.public()).collect()).unwrap();
    assert!(revoked.is_empty());
    assert_eq!(s.counters.listener_reopened.load(Ordering::Relaxed), 0);
    // libzmq gave up on C after the refusal; back_off reconnects it, and now it passes ZAP.
    let mut cc = cc;
    wait_for("C connected once allowed", Duration::from_secs(10), || {
        cc.back_off().unwrap();
        cc.status() == LinkState::Connected
    });
    legit_traffic_flows(&mut s, &c, &cc, 10);

    let revoked = s.listener.replace_allowlist([&b, &c].into_iter().map(|k| *k.public()).collect()).unwrap();
    assert_eq!(revoked, vec![*a.public()]);
    assert_eq!(s.counters.listener_reopened.load(Ordering::Relaxed), 1);
    s.listener.socket().set_rcvtimeo(50).unwrap();
    // A reconnects by itself after the reopen; `back_off` restarts it should libzmq have given
    // up (as it does after a refused handshake), as the relay's loop does once a second.
    wait_for("A refused after the reopen", Duration::from_secs(20), || {
        ca.back_off().unwrap();
        matches!(ca.status(), LinkState::Failing { last: HandshakeFailure::Auth, .. })
    });
    // A keeps retrying (backed off) and keeps being refused.
    let refused = s.counters.zap_unknown_key.load(Ordering::Relaxed);
    wait_for("A retried and refused again", Duration::from_secs(10), || {
        ca.back_off().unwrap();
        at_least(&s.counters.zap_unknown_key, refused + 1)
    });
    let _ = ca.socket().send("revoked", zmq::DONTWAIT);
    legit_traffic_flows(&mut s, &b, &cb, 100);
    legit_traffic_flows(&mut s, &c, &cc, 100);
    assert_eq!(s.drain(Duration::from_millis(300)), (vec![], 0));
}
