//! Reconnect backoff, shared by the peer dialer, the registry, the DHT
//! channel and the client's peer book.

use std::time::Duration;

/// Delay before retry number `failures` (1-based): doubling from
/// `initial`, capped at `max`, then jittered down by up to half
/// (`jitter` in 0..=1) so peers that failed together do not retry together.
pub fn backoff_delay(failures: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let exp = initial.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(31)));
    let capped = exp.min(max);
    capped.mul_f64(1.0 - 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_jitters_down() {
        let i = Duration::from_millis(500);
        let m = Duration::from_secs(30);
        assert_eq!(backoff_delay(0, i, m, 0.0), Duration::ZERO);
        assert_eq!(backoff_delay(1, i, m, 0.0), i);
        assert_eq!(backoff_delay(2, i, m, 0.0), i * 2);
        assert_eq!(backoff_delay(4, i, m, 0.0), i * 8);
        assert_eq!(backoff_delay(20, i, m, 0.0), m, "capped");
        assert_eq!(backoff_delay(u32::MAX, i, m, 0.0), m, "no overflow");
        assert_eq!(
            backoff_delay(20, i, m, 1.0),
            m / 2,
            "jitter takes at most half"
        );
    }
}
