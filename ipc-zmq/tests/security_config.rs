//! Two relays built from their `relay.toml` files alone (as `tadpole relay` will): records go
//! both ways, and a third relay not in the allowlists is refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ipc_zmq::config::RelayConfig;
use ipc_zmq::keys::KeyPair;
use ipc_zmq::security::{Connector, Listener, Received, SecurityCounters, ZapHandler};

struct Relay {
    config: RelayConfig,
    _zap: ZapHandler,
    listener: Listener,
    counters: Arc<SecurityCounters>,
    ctx: zmq::Context,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(path: &std::path::Path) -> Relay {
    let config = RelayConfig::load(path).unwrap();
    let ctx = zmq::Context::new();
    let counters = Arc::new(SecurityCounters::default());
    let zap = ZapHandler::start(&ctx, "tadpole", config.allowlist.clone(), counters.clone()).unwrap();
    let listener = Listener::bind(&zap, &config.keys, config.listen.as_deref().unwrap(), &config.limits).unwrap();
    listener.socket().set_rcvtimeo(50).unwrap();
    Relay { config, _zap: zap, listener, counters, ctx }
}

impl Relay {
    fn connect_routes(&self) -> Vec<Connector> {
        self.config
            .routes_out
            .iter()
            .map(|r| {
                Connector::connect(
                    &self.ctx,
                    &self.config.keys,
                    &r.server_key,
                    &r.connect,
                    &self.config.limits,
                    self.counters.clone(),
                )
                .unwrap()
            })
            .collect()
    }

    fn receive(&mut self, deadline: Instant) -> Option<(String, Vec<u8>)> {
        while Instant::now() < deadline {
            match self.listener.recv(0) {
                Ok(Received::Message { peer, frames, .. }) => return Some((peer.to_z85(), frames[0].to_vec())),
                Ok(Received::Dropped { .. }) | Err(zmq::Error::EAGAIN) => {}
                Err(e) => panic!("{e}"),
            }
        }
        None
    }
}

#[test]
fn two_relays_configured_from_files_exchange_records_and_refuse_a_third() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (KeyPair::generate().unwrap(), KeyPair::generate().unwrap(), KeyPair::generate().unwrap());
    for (name, keys) in [("host-a", &a), ("host-b", &b), ("host-c", &c)] {
        keys.write_new(&dir.path().join(name)).unwrap();
    }
    let (port_a, port_b) = (free_port(), free_port());
    let config = |name: &str, port: u16, peer: &KeyPair, peer_port: u16, out: &str, inbound: &str| {
        let text = format!(
            "name = \"{name}\"\nkey_file = \"{name}.key\"\nlisten = \"tcp://127.0.0.1:{port}\"\nallow = [\"{peer}\"]\n\
             [[route_out]]\nring = \"{out}\"\nconnect = \"tcp://127.0.0.1:{peer_port}\"\nserver_key = \"{peer}\"\n\
             [[route_in]]\nstream = \"{inbound}\"\n",
            peer = peer.public()
        );
        let path = dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut relay_a = start(&config("host-a", port_a, &b, port_b, "orders", "fills"));
    let mut relay_b = start(&config("host-b", port_b, &a, port_a, "fills", "orders"));
    // Host C pretends to be a peer of A, with A's real public key pinned, but A does not allow it.
    let path_c = config("host-c", free_port(), &a, port_a, "orders", "fills");
    let relay_c = start(&path_c);

    let (out_a, out_b, out_c) = (relay_a.connect_routes(), relay_b.connect_routes(), relay_c.connect_routes());
    out_a[0].socket().send("order 1", 0).unwrap();
    out_b[0].socket().send("fill 1", 0).unwrap();
    let _ = out_c[0].socket().send("forged", zmq::DONTWAIT);
    let deadline = Instant::now() + Duration::from_secs(10);
    assert_eq!(relay_b.receive(deadline), Some((a.public().to_z85(), b"order 1".to_vec())));
    assert_eq!(relay_a.receive(deadline), Some((b.public().to_z85(), b"fill 1".to_vec())));
    assert_eq!(relay_a.receive(Instant::now() + Duration::from_millis(500)), None, "host C was admitted");
    assert!(relay_a.counters.zap_unknown_key.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}
