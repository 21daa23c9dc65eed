//! A node-wide budget for log lines that remote peers cause (refusals, bad
//! input, closes): a token bucket of `remote_log_lines_per_sec` with bursts
//! of ten times that. Lines over it are dropped and counted; the next line
//! let through is preceded by one that says how many were dropped. So an
//! attacker opening connections by the thousand cannot fill the disk, and
//! the operator still sees that it happens.
//!
//! Use `remote_log!(info, ...)` (any tracing level) for such lines.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

struct Bucket {
    rate: f64,
    tokens: f64,
    refilled: Option<Instant>,
}

static BUCKET: Mutex<Bucket> = Mutex::new(Bucket {
    rate: 20.0,
    tokens: 200.0,
    refilled: None,
});
static SUPPRESSED: AtomicU64 = AtomicU64::new(0);

/// Sets the node's rate (lines per second); bursts are ten times it.
pub fn configure(lines_per_sec: u32) {
    let mut b = BUCKET.lock().expect("log bucket");
    b.rate = f64::from(lines_per_sec.max(1));
    b.tokens = b.rate * 10.0;
    b.refilled = None;
}

/// Whether a remote-caused line may be logged now. When lines were
/// dropped before it, says so first.
pub fn allow() -> bool {
    let now = Instant::now();
    let mut b = BUCKET.lock().expect("log bucket");
    let elapsed = b
        .refilled
        .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64());
    b.tokens = (b.tokens + elapsed * b.rate).min(b.rate * 10.0);
    b.refilled = Some(now);
    if b.tokens < 1.0 {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return false;
    }
    b.tokens -= 1.0;
    drop(b);
    let dropped = SUPPRESSED.swap(0, Ordering::Relaxed);
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "log lines caused by remote peers were dropped (over remote_log_lines_per_sec)"
        );
    }
    true
}

/// `tracing::$level!(...)` within the node's budget for remote-caused lines.
#[macro_export]
macro_rules! remote_log {
    ($level:ident, $($arg:tt)+) => {
        if $crate::log_limit::allow() {
            ::tracing::$level!($($arg)+);
        }
    };
}
