//! Failed-attempt limiting for guessable secrets (admin passwords, Connect
//! Keys, bearer tokens): after `max_failures` failures within a window, a
//! key (client address, account) is refused until the window has passed.
//!
//! Counters live in the process. With several cloud instances behind a
//! balancer the effective limit is per instance; the secrets guarded here
//! are either slow-hashed (passwords) or 256-bit random (keys, tokens), so
//! the limit is a brake on noise and a signal, not the only defence.

use std::collections::HashMap;
use std::sync::Mutex;

/// One limiter, for one kind of attempt.
#[derive(Debug)]
pub struct RateLimiter {
    max_failures: u32,
    window_ms: i64,
    entries: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    started: i64,
    failures: u32,
}

/// Refused: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Seconds until the window ends.
    pub retry_after_secs: u64,
}

const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    /// A limiter allowing `max_failures` per `window_ms`.
    pub fn new(max_failures: u32, window_ms: i64) -> Self {
        RateLimiter {
            max_failures,
            window_ms,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may try now.
    pub fn check(&self, key: &str, now: i64) -> Result<(), Limited> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some(w) if now - w.started < self.window_ms && w.failures >= self.max_failures => Err(Limited {
                retry_after_secs: u64::try_from((w.started + self.window_ms - now + 999) / 1000).unwrap_or(1),
            }),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt by `key`.
    pub fn fail(&self, key: &str, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_KEYS {
            let window = self.window_ms;
            entries.retain(|_, w| now - w.started < window);
        }
        let w = entries.entry(key.to_owned()).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now - w.started >= self.window_ms {
            *w = Window {
                started: now,
                failures: 0,
            };
        }
        w.failures += 1;
    }

    /// Forgets `key` (after a success).
    pub fn reset(&self, key: &str) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_after_max_failures_until_the_window_ends() {
        let l = RateLimiter::new(3, 60_000);
        for _ in 0..3 {
            assert!(l.check("ip", 1_000).is_ok());
            l.fail("ip", 1_000);
        }
        assert_eq!(l.check("ip", 2_000), Err(Limited { retry_after_secs: 59 }));
        assert!(l.check("other", 2_000).is_ok());
        assert!(l.check("ip", 61_000).is_ok());
        l.fail("ip", 61_000);
        assert!(l.check("ip", 61_001).is_ok());
        l.reset("ip");
        assert!(l.check("ip", 61_002).is_ok());
    }
}
