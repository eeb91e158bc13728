//! One-way latency percentiles from an HDR histogram of round-trip times.

use hdrhistogram::Histogram;

/// A histogram of round trips in nanoseconds (1 ns to 10 s, 3 significant digits).
pub fn rtt_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("valid histogram bounds")
}

/// One-way latency (round trip / 2) in nanoseconds.
#[derive(Clone, Copy, Debug, Default)]
pub struct OneWay {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    /// Round trips recorded.
    pub samples: u64,
}

impl OneWay {
    /// Halves the round-trip percentiles of `rtt`.
    pub fn from_rtt(rtt: &Histogram<u64>) -> OneWay {
        Self::scaled(rtt, 0.5)
    }

    /// The percentiles of `samples` as they are: each sample is one whole operation timed on
    /// its own (e.g. one receive), not a round trip.
    pub fn from_samples(samples: &Histogram<u64>) -> OneWay {
        Self::scaled(samples, 1.0)
    }

    fn scaled(h: &Histogram<u64>, by: f64) -> OneWay {
        let at = |ns: u64| ns as f64 * by;
        OneWay {
            p50: at(h.value_at_quantile(0.5)),
            p90: at(h.value_at_quantile(0.9)),
            p99: at(h.value_at_quantile(0.99)),
            p999: at(h.value_at_quantile(0.999)),
            max: at(h.max()),
            mean: h.mean() * by,
            samples: h.len(),
        }
    }
}

impl std::fmt::Display for OneWay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.0} ns, p99 {:.0} ns, p99.9 {:.0} ns (mean {:.0} ns, n={})",
            self.p50, self.p99, self.p999, self.mean, self.samples
        )
    }
}
