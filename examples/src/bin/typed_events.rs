//! FlatBuffers envelopes between two processes: built once in a reused encoder, copied once
//! into the ring, verified on arrival and read in place.

use std::time::Duration;

use ipc_core::{RingBuilder, Segment};
use schemas::channel::{EnvelopeReceiver, EnvelopeRecvError, EnvelopeSender};
use schemas::envelope::{EnvelopeHeader, envelope_to_json};
use schemas::fb;
use tadpole_examples::{peer_role, spawn_peer};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some((_, ring)) = peer_role() {
        let mut rx = EnvelopeReceiver::new(Segment::open(&ring)?.consumer()?);
        loop {
            match rx.recv_timeout(Some(Duration::from_secs(5))) {
                Ok(msg) => println!("{}", serde_json::to_string_pretty(&envelope_to_json(&msg.envelope()))?),
                Err(EnvelopeRecvError::Disconnected) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
    let name = format!("typed-{}", std::process::id());
    let segment = RingBuilder::new(1 << 16).create_named(&name)?;
    let mut tx = EnvelopeSender::new(segment.producer()?);
    let mut peer = spawn_peer("receive", &name)?;
    let header = EnvelopeHeader::new("market-analysis", "risk").with_metadata(&[("desk", "crypto")]);
    tx.send(&header, |fbb| {
        let symbol = fbb.create_string("BTC-USD");
        fb::TradingSignalGenerated::create(
            fbb,
            &fb::TradingSignalGeneratedArgs {
                symbol: Some(symbol),
                side: fb::Side::Buy,
                reference_price_e8: 6_512_345_000_000,
                ..Default::default()
            },
        )
    })?;
    drop(tx);
    peer.wait()?;
    Ok(())
}
