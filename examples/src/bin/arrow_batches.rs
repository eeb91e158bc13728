//! Arrow record batches between two processes: the receiver's arrays point into shared memory
//! and hold their ring space until dropped.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use ipc_core::{PayloadAlign, RingBuilder, Segment};
use schemas::channel::{BatchReceiver, BatchRecvError, BatchSender};
use tadpole_examples::{peer_role, spawn_peer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some((_, ring)) = peer_role() {
        let mut rx = BatchReceiver::new(Segment::open(&ring)?.consumer()?)?;
        loop {
            match rx.recv_timeout(Some(Duration::from_secs(5))) {
                Ok(batch) => {
                    let prices = batch.column(1).as_any().downcast_ref::<Float64Array>().ok_or("not f64")?;
                    println!(
                        "received {} rows; prices read in place at {:p}; sum {}",
                        batch.num_rows(),
                        prices.values().as_ptr(),
                        prices.values().iter().sum::<f64>()
                    );
                }
                Err(BatchRecvError::Disconnected) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    let name = format!("arrow-{}", std::process::id());
    // Arrow buffers need 64-byte alignment: the ring places every payload on a 64-byte boundary.
    let segment = RingBuilder::new(1 << 20).payload_align(PayloadAlign::SixtyFour).create_named(&name)?;
    let mut tx = BatchSender::new(segment.producer()?)?;
    let mut peer = spawn_peer("receive", &name)?;
    for round in 0..3 {
        let symbols: ArrayRef = Arc::new(StringArray::from(vec!["BTC-USD", "ETH-USD", "SOL-USD"]));
        let prices: ArrayRef = Arc::new(Float64Array::from(vec![65_123.5 + f64::from(round), 3_456.25, 142.0]));
        tx.send(&RecordBatch::try_from_iter([("symbol", symbols), ("price", prices)])?)?;
    }
    tx.finish()?;
    drop(tx);
    peer.wait()?;
    Ok(())
}
