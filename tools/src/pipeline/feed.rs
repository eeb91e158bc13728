//! The synthetic market data feed: ticks for each configured symbol (a random walk of its mid
//! price) as Arrow record batches, one row per tick, into market analysis' ring.
//!
//! A tick's id is `(nonce, seq)` as the two halves of a UUID (`tick_id_hi`, `tick_id_lo`):
//! market analysis makes it the signal's `correlation_id`, and every envelope after it keeps it,
//! so the collector knows which tick a fill answers without a lookup table.

use std::sync::Arc;
use std::time::Duration;

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use schemas::channel::{BatchSendError, BatchSender};
use schemas::envelope::MessageId;
use schemas::fb;

use super::config::MarketConfig;

/// The tick batch's columns.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("tick_id_hi", DataType::UInt64, false),
        Field::new("tick_id_lo", DataType::UInt64, false),
        Field::new("symbol", DataType::Utf8, false),
        Field::new("bid_e8", DataType::Int64, false),
        Field::new("ask_e8", DataType::Int64, false),
        // When the tick was meant to be sent (CLOCK_MONOTONIC ns): latency counts from here.
        Field::new("intended_ns", DataType::UInt64, false),
    ]))
}

pub struct Feed {
    tx: BatchSender,
    schema: SchemaRef,
    symbols: Vec<String>,
    mids_e8: Vec<i64>,
}

impl Feed {
    pub fn new(tx: BatchSender, market: &MarketConfig) -> Feed {
        let mid = (market.start_price * 1e8) as i64;
        Feed { tx, schema: schema(), symbols: market.symbols.clone(), mids_e8: vec![mid; market.symbols.len()] }
    }

    fn batch(&mut self, nonce: u64, first: u64, rows: u64, intended: impl Fn(u64) -> u64) -> RecordBatch {
        let seqs: Vec<u64> = (first..first + rows).collect();
        let (mut symbol, mut bid, mut ask) = (Vec::new(), Vec::new(), Vec::new());
        for &seq in &seqs {
            let s = (seq % self.symbols.len() as u64) as usize;
            // A deterministic random walk: ±10 bp steps.
            let step = ((seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 2001) as i64 - 1000;
            let mid = &mut self.mids_e8[s];
            *mid = (*mid + *mid / 1_000_000 * step / 10).max(1_000_000);
            let spread = (*mid / 10_000).max(1);
            symbol.push(self.symbols[s].as_str());
            bid.push(*mid - spread);
            ask.push(*mid + spread);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(vec![nonce; seqs.len()])),
            Arc::new(UInt64Array::from(seqs.clone())),
            Arc::new(StringArray::from(symbol)),
            Arc::new(Int64Array::from(bid)),
            Arc::new(Int64Array::from(ask)),
            Arc::new(UInt64Array::from(seqs.iter().map(|&s| intended(s)).collect::<Vec<_>>())),
        ];
        // The columns match the schema by construction.
        RecordBatch::try_new(self.schema.clone(), columns).expect("tick batch matches its schema")
    }

    /// Sends ticks `first..first + rows`, waiting up to `timeout` for room.
    pub fn send(
        &mut self,
        nonce: u64,
        first: u64,
        rows: u64,
        intended: impl Fn(u64) -> u64,
        timeout: Option<Duration>,
    ) -> Result<(), BatchSendError> {
        let batch = self.batch(nonce, first, rows, intended);
        self.tx.send_timeout(&batch, timeout)?;
        log_sent(nonce, first, rows);
        Ok(())
    }

    /// Sends ticks `first..first + rows` if there is room now; `false` if not.
    pub fn try_send(
        &mut self,
        nonce: u64,
        first: u64,
        rows: u64,
        intended: impl Fn(u64) -> u64,
    ) -> Result<bool, BatchSendError> {
        let batch = self.batch(nonce, first, rows, intended);
        match self.tx.try_send(&batch) {
            Ok(_) => {
                log_sent(nonce, first, rows);
                Ok(true)
            }
            Err(BatchSendError::Full) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// A debug event per tick sent, with its id: `RUST_LOG=debug` follows a tick to its fill.
fn log_sent(nonce: u64, first: u64, rows: u64) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        for seq in first..first + rows {
            let id = MessageId::from_wire(&fb::Uuid::new(nonce, seq));
            tracing::debug!(event = "tick_sent", correlation_id = %id, "tick sent");
        }
    }
}
