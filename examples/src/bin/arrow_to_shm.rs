//! Leaves Arrow record batches in a named shared-memory ring for another program (the Python
//! interop test reads them in place with pyarrow). Usage: `arrow_to_shm NAME [BATCHES]`.
//! The ring is kept after this process exits; remove it with `tadpole clean` or by unlinking
//! `/dev/shm/tadpole.NAME`.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use ipc_core::{PayloadAlign, RingBuilder};
use schemas::channel::BatchSender;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or("usage: arrow_to_shm NAME [BATCHES]")?;
    let batches: i64 = args.next().map_or(Ok(3), |n| n.parse())?;
    let segment = RingBuilder::new(1 << 20).payload_align(PayloadAlign::SixtyFour).create_named(&name)?;
    segment.keep();
    let mut tx = BatchSender::new(segment.producer()?)?;
    for b in 0..batches {
        let ids: ArrayRef = Arc::new(Int64Array::from_iter_values((0..1000).map(|i| b * 1000 + i)));
        let prices: ArrayRef = Arc::new(Float64Array::from_iter_values((0..1000).map(|i| f64::from(i) * 0.5)));
        let symbols: ArrayRef = Arc::new(StringArray::from_iter_values((0..1000).map(|i| format!("SYM{}", i % 7))));
        tx.send(&RecordBatch::try_from_iter([("id", ids), ("price", prices), ("symbol", symbols)])?)?;
    }
    tx.finish()?;
    println!("{name}");
    Ok(())
}
