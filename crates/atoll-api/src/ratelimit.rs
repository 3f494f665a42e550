//! Per-API-key rate limits on `/api`: a token bucket per authenticated key
//! (`burst` tokens, refilled at `per_minute / 60` a second). Past it a
//! request gets 429 with `Retry-After`. Only keys that authenticated get a
//! bucket, and buckets that have refilled to full are dropped (they are
//! the same as a new one), so memory is bounded by the keys active in the
//! last refill period. Toolbox and preview traffic is not limited here, as
//! Daytona limits its API and not the toolbox. Each API process counts on
//! its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A rate: `per_minute` requests a minute on average, `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl RateLimit {
    fn per_sec(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    /// How long an emptied bucket takes to fill again.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(f64::from(self.burst) / self.per_sec())
    }
}

/// One key's bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: &RateLimit, now: Instant) -> Bucket {
        Bucket {
            tokens: f64::from(limit.burst),
            at: now,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_sec()).min(f64::from(limit.burst));
        self.at = now;
    }

    /// Takes a token, or says how long until one is there.
    fn take(&mut self, limit: &RateLimit, now: Instant) -> Result<(), Duration> {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / limit.per_sec(),
            ))
        }
    }
}

/// The buckets of every key seen lately.
pub struct RateLimiter {
    limit: RateLimit,
    state: Mutex<Buckets>,
}

struct Buckets {
    by_key: HashMap<String, Bucket>,
    swept: Instant,
}

/// A request refused by the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until the key may send again (at least 1), for
    /// `Retry-After`.
    pub retry_after_secs: u64,
    pub limit: RateLimit,
}

impl RateLimiter {
    /// A limiter; `None` if `per_minute` or `burst` is 0 (no limit).
    pub fn new(limit: RateLimit) -> Option<RateLimiter> {
        (limit.per_minute > 0 && limit.burst > 0).then(|| RateLimiter {
            limit,
            state: Mutex::new(Buckets {
                by_key: HashMap::new(),
                swept: Instant::now(),
            }),
        })
    }

    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Counts one request of `key` (an API key's id, never the key).
    pub fn check(&self, key: &str) -> Result<(), Limited> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Result<(), Limited> {
        let limit = self.limit;
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if now.saturating_duration_since(state.swept) >= limit.refill_time() {
            state.by_key.retain(|_, b| {
                b.refill(&limit, now);
                b.tokens < f64::from(limit.burst)
            });
            state.swept = now;
        }
        let bucket = match state.by_key.get_mut(key) {
            Some(b) => b,
            None => state
                .by_key
                .entry(key.to_string())
                .or_insert(Bucket::full(&limit, now)),
        };
        bucket.take(&limit, now).map_err(|wait| Limited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            limit,
        })
    }

    /// Buckets held now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit { per_minute, burst }).unwrap()
    }

    #[test]
    fn zero_disables() {
        assert!(RateLimiter::new(RateLimit {
            per_minute: 0,
            burst: 10
        })
        .is_none());
        assert!(RateLimiter::new(RateLimit {
            per_minute: 10,
            burst: 0
        })
        .is_none());
    }

    #[test]
    fn a_burst_passes_then_requests_wait_for_the_refill() {
        let l = limiter(60, 3); // one token a second
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check_at("k", t0), Ok(()));
        }
        let refused = l.check_at("k", t0).unwrap_err();
        assert_eq!(refused.retry_after_secs, 1);
        // Other keys have buckets of their own.
        assert_eq!(l.check_at("other", t0), Ok(()));
        // Half a token is not enough; a whole one is.
        let half = t0 + Duration::from_millis(500);
        assert_eq!(l.check_at("k", half).unwrap_err().retry_after_secs, 1);
        assert_eq!(l.check_at("k", t0 + Duration::from_millis(1000)), Ok(()));
        assert!(l.check_at("k", t0 + Duration::from_millis(1000)).is_err());
        // Idle long enough, the bucket is full again but never more.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check_at("k", later), Ok(()));
        }
        assert!(l.check_at("k", later).is_err());
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        let l = limiter(6, 1); // a token every 10 s
        let t0 = Instant::now();
        assert_eq!(l.check_at("k", t0), Ok(()));
        assert_eq!(l.check_at("k", t0).unwrap_err().retry_after_secs, 10);
        let later = t0 + Duration::from_millis(2500);
        assert_eq!(l.check_at("k", later).unwrap_err().retry_after_secs, 8);
    }

    #[test]
    fn idle_buckets_are_swept() {
        let l = limiter(600, 10); // 10 a second: refills fully in 1 s
        let t0 = Instant::now();
        for i in 0..1000 {
            l.check_at(&format!("key-{i}"), t0).unwrap();
        }
        assert_eq!(l.tracked(), 1000);
        // A second on, every bucket is full again: all go but the one asked for.
        let t1 = t0 + Duration::from_secs(1);
        l.check_at("key-0", t1).unwrap();
        assert_eq!(l.tracked(), 1);
        // A bucket still short of full at a sweep is kept, debt and all.
        let drained = t1 + Duration::from_millis(500);
        for _ in 0..10 {
            l.check_at("busy", drained).unwrap();
        }
        let t2 = t1 + Duration::from_secs(1);
        l.check_at("other", t2).unwrap();
        assert_eq!(l.tracked(), 2, "busy (5 of 10 tokens) and other");
        for _ in 0..5 {
            l.check_at("busy", t2).unwrap();
        }
        assert!(l.check_at("busy", t2).is_err());
    }
}
