//! Statistics over samples: sorted copies, medians, percentiles.

pub(crate) fn sorted(samples: &[u64]) -> Vec<u64> {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    sorted
}

pub(crate) fn median(samples: &[u64]) -> f64 {
    let s = sorted(samples);
    let mid = s.len() / 2;
    if s.len().is_multiple_of(2) {
        (s[mid - 1] + s[mid]) as f64 / 2.0
    } else {
        s[mid] as f64
    }
}

/// Median of ns samples, in ms.
pub(crate) fn median_ms(samples: &[u64]) -> f64 {
    median(samples) / 1e6
}

/// 99th percentile (nearest rank) of ns samples, in ms.
pub(crate) fn p99_ms(samples: &[u64]) -> f64 {
    let s = sorted(samples);
    let rank = ((s.len() as f64) * 0.99).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1] as f64 / 1e6
}
