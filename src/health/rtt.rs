//! [`RttEstimator`]: smoothed RTT, its variance, and a bounded ring of recent samples
//! of one upstream.
//!
//! - SRTT is an EWMA with a configurable gain (`ewma_alpha`, 0.2 by default);
//!   RTTVAR and the RTO follow RFC 6298 section 2 (beta = 1/4, RTO = SRTT + 4 RTTVAR,
//!   first sample: SRTT = R, RTTVAR = R/2), without its 1s floor, which is a TCP
//!   choice: the caller clamps.
//! - The ring keeps the last [`RTT_SAMPLES`] samples in microseconds (saturating at
//!   `u32::MAX`, about 71 minutes) for quantiles. Fixed size, no allocation.

use std::time::Duration;

/// RTT samples kept per upstream for quantiles.
pub const RTT_SAMPLES: usize = 64;

const RTTVAR_BETA: f64 = 0.25;

/// RTT statistics of one upstream.
#[derive(Debug, Clone)]
pub(crate) struct RttEstimator {
    /// Smoothed RTT in microseconds; `None` before the first sample.
    srtt: Option<f64>,
    /// RTT variation in microseconds.
    rttvar: f64,
    ring: [u32; RTT_SAMPLES],
    len: usize,
    pos: usize,
}

impl Default for RttEstimator {
    fn default() -> Self {
        Self {
            srtt: None,
            rttvar: 0.0,
            ring: [0; RTT_SAMPLES],
            len: 0,
            pos: 0,
        }
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

fn from_micros(us: f64) -> Duration {
    // Saturating: huge values clamp to an hour, negative and NaN to zero.
    let us = if us.is_nan() {
        0.0
    } else {
        us.clamp(0.0, 3.6e9)
    };
    Duration::from_micros(us.round() as u64)
}

impl RttEstimator {
    /// Adds one sample with EWMA gain `alpha`.
    pub(crate) fn record(&mut self, rtt: Duration, alpha: f64) {
        let us = micros(rtt);
        let r = f64::from(us);
        match self.srtt {
            None => {
                self.srtt = Some(r);
                self.rttvar = r / 2.0;
            }
            Some(s) => {
                self.rttvar = (1.0 - RTTVAR_BETA) * self.rttvar + RTTVAR_BETA * (s - r).abs();
                self.srtt = Some((1.0 - alpha) * s + alpha * r);
            }
        }
        if let Some(slot) = self.ring.get_mut(self.pos) {
            *slot = us;
        }
        self.pos = (self.pos + 1) % RTT_SAMPLES;
        self.len = (self.len + 1).min(RTT_SAMPLES);
    }

    /// Smoothed RTT in microseconds, if any sample was seen.
    pub(crate) fn srtt_micros(&self) -> Option<f64> {
        self.srtt
    }

    /// Smoothed RTT.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt.map(from_micros)
    }

    /// Retransmission-style timeout: SRTT + 4 RTTVAR.
    pub(crate) fn rto(&self) -> Option<Duration> {
        self.srtt.map(|s| from_micros(s + 4.0 * self.rttvar))
    }

    /// The recent samples, in microseconds, in no particular order.
    pub(crate) fn samples(&self) -> &[u32] {
        self.ring.get(..self.len).unwrap_or(&[])
    }
}

/// Nearest-rank `q`-quantile of `samples` (sorted in place), in microseconds.
pub(crate) fn quantile_micros(samples: &mut [u32], q: f64) -> Option<u32> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let n = samples.len();
    let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
    let rank = (q * n as f64).ceil() as usize;
    samples.get(rank.clamp(1, n) - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ewma_and_rto_follow_the_formulas() {
        let mut e = RttEstimator::default();
        assert_eq!(e.srtt(), None);
        e.record(100 * MS, 0.2);
        assert_eq!(e.srtt(), Some(100 * MS));
        assert_eq!(e.rto(), Some(300 * MS)); // 100 + 4 * 50
        e.record(50 * MS, 0.2);
        // srtt = 0.8 * 100 + 0.2 * 50 = 90; rttvar = 0.75 * 50 + 0.25 * 50 = 50.
        assert_eq!(e.srtt(), Some(90 * MS));
        assert_eq!(e.rto(), Some(290 * MS));
        e.record(90 * MS, 0.5);
        // rttvar = 0.75 * 50 + 0 = 37.5; srtt unchanged.
        assert_eq!(e.srtt(), Some(90 * MS));
        assert_eq!(e.rto(), Some(240 * MS));
    }

    #[test]
    fn ring_keeps_only_the_last_samples_and_saturates() {
        let mut e = RttEstimator::default();
        for ms in 0..(RTT_SAMPLES as u64 + 10) {
            e.record(Duration::from_millis(ms), 0.2);
        }
        let mut s = e.samples().to_vec();
        s.sort_unstable();
        assert_eq!(s.len(), RTT_SAMPLES);
        assert_eq!(s[0], 10_000);
        e.record(Duration::from_secs(1 << 40), 0.2);
        assert!(e.samples().contains(&u32::MAX));
        assert!(e.rto().is_some_and(|d| d <= Duration::from_secs(3600)));
    }

    #[test]
    fn nearest_rank_quantile() {
        assert_eq!(quantile_micros(&mut [], 0.9), None);
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(quantile_micros(&mut v, 0.95), Some(95));
        assert_eq!(quantile_micros(&mut v, 0.0), Some(1));
        assert_eq!(quantile_micros(&mut v, 1.0), Some(100));
        assert_eq!(quantile_micros(&mut v, f64::NAN), Some(100));
        assert_eq!(quantile_micros(&mut [7], 0.5), Some(7));
    }
}
