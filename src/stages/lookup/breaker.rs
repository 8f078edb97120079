//! Circuit breaker: after `threshold` consecutive failures MISP is left
//! alone except for one probe every `probe_interval`. Lookups wait while it
//! is open; they are never dropped (alerts.json is the buffer).
//!
//! It also carries the "not before" time a 429 asks for, so that one rate
//! limit answer slows every request down, not just the one that got it.

use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

pub struct Breaker {
    threshold: std::sync::atomic::AtomicU32,
    probe_interval: Duration,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Debug)]
struct State {
    failures: u32,
    open: bool,
    probing: bool,
    next_probe: Instant,
    hold_until: Option<Instant>,
    failing_since: Option<std::time::SystemTime>,
    last_error: Option<LastError>,
}

/// The most recent failure, for the integration's error events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// One of `auth`, `unreachable`, `rate_limited`, `server`.
    pub kind: &'static str,
    pub message: String,
}

/// What a caller may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Normal,
    /// The one request allowed through an open breaker.
    Probe,
}

impl Breaker {
    pub fn new(threshold: u32, probe_interval: Duration) -> Self {
        Breaker {
            threshold: std::sync::atomic::AtomicU32::new(threshold.max(1)),
            probe_interval,
            state: Mutex::new(State {
                failures: 0,
                open: false,
                probing: false,
                next_probe: Instant::now(),
                hold_until: None,
                failing_since: None,
                last_error: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `misp.breaker_failures`, changed by a reload.
    pub fn set_threshold(&self, threshold: u32) {
        self.threshold
            .store(threshold.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    pub fn threshold(&self) -> u32 {
        self.threshold.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn probe_interval(&self) -> Duration {
        self.probe_interval
    }

    pub fn is_open(&self) -> bool {
        self.lock().open
    }

    /// Since when MISP has been failing, and how, if it is.
    pub fn failing(&self) -> Option<(std::time::SystemTime, LastError)> {
        let s = self.lock();
        Some((s.failing_since?, s.last_error.clone()?))
    }

    /// Waits until a request may go out.
    pub async fn pass(&self) -> Pass {
        loop {
            let notified = self.changed.notified();
            let wait_until = {
                let mut s = self.lock();
                let now = Instant::now();
                match s.hold_until {
                    Some(t) if t > now => t,
                    _ if !s.open => return Pass::Normal,
                    _ if !s.probing && now >= s.next_probe => {
                        s.probing = true;
                        return Pass::Probe;
                    }
                    _ if s.probing => now + self.probe_interval,
                    _ => s.next_probe,
                }
            };
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wait_until) => {}
            }
        }
    }

    pub fn success(&self) {
        let mut s = self.lock();
        let was_open = s.open;
        s.failures = 0;
        s.open = false;
        s.probing = false;
        s.failing_since = None;
        s.last_error = None;
        drop(s);
        if was_open {
            tracing::info!("MISP answers again; circuit breaker closed");
        }
        self.changed.notify_waiters();
    }

    pub fn failure(&self, pass: Pass, error: LastError) {
        let mut s = self.lock();
        s.failures += 1;
        s.failing_since
            .get_or_insert_with(std::time::SystemTime::now);
        s.last_error = Some(error);
        if pass == Pass::Probe {
            s.probing = false;
        }
        if s.failures >= self.threshold.load(std::sync::atomic::Ordering::Relaxed) {
            if !s.open {
                tracing::warn!(
                    failures = s.failures,
                    probe_every_secs = self.probe_interval.as_secs_f32(),
                    "MISP keeps failing; circuit breaker open, lookups wait for it"
                );
            }
            s.open = true;
            s.next_probe = Instant::now() + self.probe_interval;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// A request failed in a way that says nothing about MISP as a whole
    /// (one value isolated from its batch keeps failing): hands back a
    /// probe, without counting towards opening.
    pub fn neutral(&self, pass: Pass) {
        if pass != Pass::Probe {
            return;
        }
        let mut s = self.lock();
        s.probing = false;
        if s.open {
            s.next_probe = Instant::now() + self.probe_interval;
        }
        drop(s);
        self.changed.notify_waiters();
    }

    /// A 429: nobody sends before `until`.
    pub fn hold(&self, d: Duration, error: LastError) {
        let mut s = self.lock();
        s.failing_since
            .get_or_insert_with(std::time::SystemTime::now);
        s.last_error = Some(error);
        let until = Instant::now() + d;
        s.hold_until = Some(s.hold_until.map_or(until, |t| t.max(until)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_threshold_and_probes() {
        let b = Breaker::new(2, Duration::from_secs(5));
        assert_eq!(b.pass().await, Pass::Normal);
        let e = || LastError {
            kind: "server",
            message: "HTTP 500".into(),
        };
        b.failure(Pass::Normal, e());
        assert!(!b.is_open());
        b.failure(Pass::Normal, e());
        assert_eq!(b.failing().unwrap().1, e());
        assert!(b.is_open());
        let t0 = Instant::now();
        assert_eq!(b.pass().await, Pass::Probe);
        assert!(Instant::now() - t0 >= Duration::from_secs(5));
        b.success();
        assert!(b.failing().is_none());
        assert_eq!(b.pass().await, Pass::Normal);
    }
}
