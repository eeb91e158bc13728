//! The CURVE bridge between hosts: keys and configuration ([`keys`], [`config`]) and the
//! CURVE/ZAP security layer ([`security`]) of `tadpole relay`.

pub mod config;
pub mod keys;
pub mod security;

#[cfg(test)]
mod tests {
    #[test]
    fn the_linked_libzmq_has_curve() {
        assert!(zmq::has("curve").unwrap_or(false), "libzmq was built without CURVE");
    }
}
