//! The CURVE bridge between hosts. Empty until the relay issue: nothing here is usable yet.
