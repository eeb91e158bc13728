//! Raw bytes through a named shared-memory ring: this process produces, a second one consumes.

use std::time::Duration;

use ipc_core::{RecvTimeoutError, RingBuilder, Segment};
use tadpole_examples::{peer_role, spawn_peer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some((_, ring)) = peer_role() {
        // The consumer: open the ring by name, print what arrives until the producer leaves.
        let mut consumer = Segment::open(&ring)?.consumer()?;
        loop {
            match consumer.recv_timeout(Duration::from_secs(5)) {
                Ok(msg) => println!("consumer got type {} : {}", msg.message_type(), String::from_utf8_lossy(&msg)),
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    let name = format!("hello-{}", std::process::id());
    let segment = RingBuilder::new(1 << 16).create_named(&name)?;
    let mut producer = segment.producer()?;
    let mut peer = spawn_peer("consume", &name)?;
    for i in 0..5u16 {
        // Build the message in place, in shared memory, then publish it with one store.
        let text = format!("hello #{i}");
        let mut grant = producer.reserve(text.len())?;
        grant.copy_from_slice(text.as_bytes());
        grant.set_message_type(i);
        grant.commit();
    }
    drop(producer); // the consumer drains, then sees Disconnected
    peer.wait()?;
    Ok(())
}
