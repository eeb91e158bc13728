//! The CURVE bridge between hosts: what `tadpole relay` is made of.

pub mod http;

#[cfg(test)]
mod tests {
    #[test]
    fn the_linked_libzmq_has_curve() {
        assert!(zmq::has("curve").unwrap_or(false), "libzmq was built without CURVE");
    }
}
