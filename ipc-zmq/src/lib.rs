//! The CURVE bridge between hosts. Empty until the relay issue: nothing here is usable yet.

#[cfg(test)]
mod tests {
    #[test]
    fn the_linked_libzmq_has_curve() {
        assert!(zmq::has("curve").unwrap_or(false), "libzmq was built without CURVE");
    }
}
