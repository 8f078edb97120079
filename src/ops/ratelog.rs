//! Rate-limited logging: a flood of identical problems (a garbage-spewing
//! source, MISP down) must not flood the journal. Each kind of message is
//! logged at most `burst` times per window; the first one after the window
//! says how many were held back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimitedLog {
    window: Duration,
    burst: u32,
    state: Mutex<HashMap<&'static str, Slot>>,
}

struct Slot {
    window_start: Instant,
    logged: u32,
    suppressed: u64,
}

impl RateLimitedLog {
    pub fn new(window: Duration, burst: u32) -> Self {
        RateLimitedLog {
            window,
            burst,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Calls `emit(suppressed)` if this kind may be logged now, where
    /// `suppressed` is how many were held back since the last one logged.
    pub fn log(&self, kind: &'static str, emit: impl FnOnce(u64)) {
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let slot = state.entry(kind).or_insert(Slot {
            window_start: now,
            logged: 0,
            suppressed: 0,
        });
        if now.duration_since(slot.window_start) >= self.window {
            slot.window_start = now;
            slot.logged = 0;
        }
        if slot.logged < self.burst {
            slot.logged += 1;
            let suppressed = std::mem::take(&mut slot.suppressed);
            drop(state);
            if suppressed > 0 {
                tracing::warn!(
                    kind,
                    suppressed,
                    "{suppressed} more like this in the last minute"
                );
            }
            emit(suppressed);
        } else {
            slot.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_after_burst_and_reports_count() {
        let log = RateLimitedLog::new(Duration::from_millis(0), 1);
        let mut seen = Vec::new();
        log.log("a", |n| seen.push(n));
        assert_eq!(seen, [0]);
        let log = RateLimitedLog::new(Duration::from_secs(3600), 2);
        let mut seen = Vec::new();
        for _ in 0..5 {
            log.log("a", |n| seen.push(n));
        }
        log.log("b", |n| seen.push(n));
        assert_eq!(seen, [0, 0, 0]);
    }
}
