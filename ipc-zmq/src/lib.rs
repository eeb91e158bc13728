//! The CURVE bridge between hosts: a relay drains local rings and forwards their records over
//! ZeroMQ to a relay on another host, which commits them into its local rings.
//!
//! - [`keys`], [`config`]: CURVE key pairs (strict Z85) and `relay.toml`.
//! - [`security`]: the ZAP handler, the CURVE server (ROUTER) and client (DEALER) sockets.
//! - [`wire`]: the versioned frames (`PROTOCOL.md` describes every byte).
//! - [`engine`]: at-least-once delivery with deduplication, socket-agnostic.
//! - [`http`]: `/metrics`, `/health` and `/ready`.

pub mod config;
pub mod engine;
pub mod http;
pub mod keys;
pub mod security;
pub mod wire;

#[cfg(test)]
mod tests {
    #[test]
    fn the_linked_libzmq_has_curve() {
        assert!(zmq::has("curve").unwrap_or(false), "libzmq was built without CURVE");
    }
}
