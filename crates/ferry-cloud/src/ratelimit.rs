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
//! Where the counters live:
//! - admin sign-ins: in the store ([`RateLimiter::check_shared`] and
//!   friends), so several instances behind a balancer share one count
//!   (a guesser gains nothing by spreading attempts over instances). A
//!   sign-in costs an argon2 hash anyway, so one more row read is nothing;
//! - Connect Keys and bearer tokens: in the process. They are 256-bit
//!   random, so the limit is a brake on noise, not a defence against
//!   guessing, and counting every unknown token in the database would turn
//!   a flood of junk requests into a flood of database writes. With N
//!   instances the effective limit is N times the one configured.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::store::{FailureCount, Store, StoreResult};

/// One limiter, for one kind of attempt.
#[derive(Debug)]
pub struct RateLimiter {
    max_failures: u32,
    base_delay_ms: i64,
    max_delay_ms: i64,
    entries: Mutex<HashMap<String, Entry>>,
}

type Entry = FailureCount;

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
        wait_of(entries.get(key), now)
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
        let next = self.after_failure(entries.get(key).copied(), now);
        entries.insert(key.to_owned(), next);
    }

    /// The counters after one more failure.
    fn after_failure(&self, previous: Option<Entry>, now: i64) -> Entry {
        let fresh = Entry {
            failures: 0,
            last_failure: now,
            until: now,
        };
        let mut e = previous.unwrap_or(fresh);
        if now >= e.until && now - e.last_failure.max(e.until) >= self.max_delay_ms {
            e = fresh;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        if e.failures >= self.max_failures {
            let doublings = (e.failures - self.max_failures).min(40);
            let delay = self.base_delay_ms.saturating_mul(1 << doublings).min(self.max_delay_ms);
            e.until = now + delay;
        }
        e
    }

    /// [`RateLimiter::check`] with the counters in the store, shared by every instance.
    pub async fn check_shared(&self, store: &Store, key: &str, now: i64) -> StoreResult<Result<(), Limited>> {
        let mut tx = store.begin().await?;
        let entry = tx.sign_in_failures(&shared_key(key)).await?;
        Ok(wait_of(entry.as_ref(), now))
    }

    /// [`RateLimiter::fail`] with the counters in the store. Two instances
    /// failing the same key at the same moment may count once: a brake
    /// that slips by one attempt is still a brake.
    pub async fn fail_shared(&self, store: &Store, key: &str, now: i64) -> StoreResult<()> {
        let hash = shared_key(key);
        let mut tx = store.begin().await?;
        let previous = tx.sign_in_failures(&hash).await?;
        tx.put_sign_in_failures(&hash, self.after_failure(previous, now))
            .await?;
        tx.commit().await
    }

    /// [`RateLimiter::reset`] with the counters in the store.
    pub async fn reset_shared(&self, store: &Store, key: &str) -> StoreResult<()> {
        let mut tx = store.begin().await?;
        tx.clear_sign_in_failures(&shared_key(key)).await?;
        tx.commit().await
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

/// Refused while the key waits.
fn wait_of(entry: Option<&Entry>, now: i64) -> Result<(), Limited> {
    match entry {
        Some(e) if now < e.until => Err(Limited {
            retry_after_secs: u64::try_from((e.until - now + 999) / 1000).unwrap_or(1).max(1),
        }),
        _ => Ok(()),
    }
}

/// Keys name an address and an account: the store keeps their hash only.
fn shared_key(key: &str) -> String {
    hex::encode(Sha256::digest(format!("ferry-limiter:{key}").as_bytes()))
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
