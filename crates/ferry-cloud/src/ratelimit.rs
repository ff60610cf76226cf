//! Failed-attempt limiting for guessable secrets (admin passwords, Connect
//! Keys, bearer tokens), with exponential backoff instead of a lockout.
//!
//! Failures are counted per key: the client's address together with what
//! was tried (the account for a password, the kind of token or key), so one
//! noisy client never stops another, nor another account. The
//! `max_failures`-th failure makes the key wait `base_delay_ms`, and each
//! later one twice as long as the one before (at most `max_delay_ms`).
//! A key that stays quiet for `max_delay_ms` after its wait starts afresh.
//!
//! Callers decide what waiting means: a credential that is cheap to check
//! and impossible to guess (a 256-bit token or Connect Key) is always
//! checked, so a valid one always passes and only failures answer 429; a
//! password is not checked while its (address, account) waits.
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
    base_delay_ms: i64,
    max_delay_ms: i64,
    entries: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: i64,
    /// No attempt before this time (unix ms).
    until: i64,
}

/// Refused: retry after this many seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Seconds until the key may try again.
    pub retry_after_secs: u64,
}

const MAX_KEYS: usize = 100_000;

impl RateLimiter {
    /// A limiter whose keys wait after `max_failures` failures, from
    /// `base_delay_ms`, doubling up to `max_delay_ms`.
    pub fn new(max_failures: u32, base_delay_ms: i64, max_delay_ms: i64) -> Self {
        RateLimiter {
            max_failures: max_failures.max(1),
            base_delay_ms: base_delay_ms.max(1),
            max_delay_ms: max_delay_ms.max(1),
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may try now.
    pub fn check(&self, key: &str, now: i64) -> Result<(), Limited> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key) {
            Some(e) if now < e.until => Err(Limited {
                retry_after_secs: u64::try_from((e.until - now + 999) / 1000).unwrap_or(1).max(1),
            }),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt by `key`.
    pub fn fail(&self, key: &str, now: i64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_KEYS {
            // Bounded memory under a flood of distinct keys: forget the quiet
            // ones, then those not waiting, then (a flood of waiting keys)
            // everything; the limiter is a brake, not the only defence.
            let quiet = self.max_delay_ms;
            entries.retain(|_, e| now < e.until || now - e.last_failure < quiet);
            if entries.len() >= MAX_KEYS {
                entries.retain(|_, e| now < e.until);
            }
            if entries.len() >= MAX_KEYS {
                entries.clear();
            }
        }
        let e = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            until: now,
        });
        if now >= e.until && now - e.last_failure.max(e.until) >= self.max_delay_ms {
            *e = Entry {
                failures: 0,
                last_failure: now,
                until: now,
            };
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        if e.failures >= self.max_failures {
            let doublings = (e.failures - self.max_failures).min(40);
            let delay = self.base_delay_ms.saturating_mul(1 << doublings).min(self.max_delay_ms);
            e.until = now + delay;
        }
    }

    /// A failed attempt by `key`: `Some` (answer 429) while the key waits,
    /// without counting it; otherwise counted, and `None`.
    pub fn refuse(&self, key: &str, now: i64) -> Option<Limited> {
        if let Err(l) = self.check(key, now) {
            return Some(l);
        }
        self.fail(key, now);
        None
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
    fn waits_double_after_max_failures_then_start_afresh() {
        let l = RateLimiter::new(3, 1_000, 8_000);
        for _ in 0..2 {
            assert!(l.check("ip", 0).is_ok());
            l.fail("ip", 0);
        }
        assert!(l.check("ip", 0).is_ok(), "two failures cost nothing");
        l.fail("ip", 0);
        assert_eq!(l.check("ip", 0), Err(Limited { retry_after_secs: 1 }));
        assert!(l.check("other", 0).is_ok());
        assert!(l.check("ip", 1_000).is_ok(), "a wait, not a lockout");
        l.fail("ip", 1_000);
        assert_eq!(l.check("ip", 1_000), Err(Limited { retry_after_secs: 2 }));
        l.fail("ip", 3_000);
        assert_eq!(l.check("ip", 3_000), Err(Limited { retry_after_secs: 4 }));
        l.fail("ip", 7_000);
        l.fail("ip", 15_000);
        assert_eq!(l.check("ip", 15_000), Err(Limited { retry_after_secs: 8 }), "capped");
        // Quiet for the longest wait after the last one ended: afresh.
        l.fail("ip", 23_000 + 8_000);
        assert!(l.check("ip", 31_000).is_ok());
        l.reset("ip");
        assert!(l.check("ip", 31_001).is_ok());
    }

    #[test]
    fn a_flood_of_keys_stays_bounded() {
        let l = RateLimiter::new(1, 1_000, 60_000);
        for i in 0..(MAX_KEYS * 2) {
            l.fail(&i.to_string(), 0);
        }
        let n = l.entries.lock().map(|e| e.len()).unwrap_or(usize::MAX);
        assert!(n <= MAX_KEYS, "{n} keys");
    }

    #[test]
    fn refusals_while_waiting_do_not_lengthen_the_wait() {
        let l = RateLimiter::new(1, 1_000, 60_000);
        assert_eq!(l.refuse("k", 0), None);
        for t in 1..100 {
            assert!(l.refuse("k", t).is_some());
        }
        assert_eq!(l.check("k", 1_000), Ok(()));
    }
}
