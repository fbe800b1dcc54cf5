//! A per-source rate limit: one token bucket per source address.
//!
//! # Guarantees
//! - A source may send `burst` deliveries at once, then one per `60 / per_minute` seconds; a
//!   delivery over the limit is answered `429` with `Retry-After` before its body is read or its
//!   signature checked, so a flood costs a hash-map lookup per request.
//! - Sources are keyed by address: IPv4 addresses one by one, IPv6 by their /64 (one host
//!   usually holds a whole /64, so keying by address would let it rotate freely).
//! - Memory is bounded: at most [`MAX_SOURCES`] buckets. When the map is full, buckets that have
//!   refilled (idle sources) are dropped; if none has, new sources share one overflow bucket.
//!
//! # Assumptions
//! - The peer address is the sender's. Behind a reverse proxy every delivery comes from the
//!   proxy and shares its bucket: set the limit for the proxy's total, or limit at the proxy.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most sources tracked at once.
pub const MAX_SOURCES: usize = 16_384;

/// How many deliveries a source may send: `burst` at once, then `per_minute` a minute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Deliveries accepted at once from an idle source (at least 1).
    pub burst: u32,
    /// Sustained deliveries per minute (at least 1).
    pub per_minute: u32,
}

impl Default for RateLimit {
    /// 30 at once, 60 a minute: far above what a forge sends for one state repo, far below a
    /// flood.
    fn default() -> Self {
        Self {
            burst: 30,
            per_minute: 60,
        }
    }
}

/// The key of a source that gave no address, or that overflowed the map.
const SHARED: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Token buckets by source.
#[derive(Debug)]
pub(crate) struct Limiter {
    burst: f64,
    /// Tokens per second.
    rate: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl Limiter {
    pub(crate) fn new(limit: RateLimit) -> Self {
        Self {
            burst: f64::from(limit.burst.max(1)),
            rate: f64::from(limit.per_minute.max(1)) / 60.0,
            buckets: Mutex::default(),
        }
    }

    /// Takes one token of `source`'s bucket at `now`: `Err(wait)` when it is empty, `wait` being
    /// how long until it holds one again.
    pub(crate) fn check(&self, source: Option<IpAddr>, now: Instant) -> Result<(), Duration> {
        let mut key = source.map_or(SHARED, source_key);
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if !buckets.contains_key(&key) && buckets.len() >= MAX_SOURCES {
            let (burst, rate) = (self.burst, self.rate);
            buckets.retain(|k, b| *k == SHARED || refill(b, now, burst, rate) < burst);
            if buckets.len() >= MAX_SOURCES {
                key = SHARED;
            }
        }
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        let tokens = refill(bucket, now, self.burst, self.rate);
        if tokens >= 1.0 {
            *bucket = Bucket {
                tokens: tokens - 1.0,
                at: now,
            };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

/// The tokens of `b` at `now`.
fn refill(b: &Bucket, now: Instant, burst: f64, rate: f64) -> f64 {
    let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
    (b.tokens + elapsed * rate).min(burst)
}

/// The bucket key of an address: itself for IPv4 (and IPv4-mapped IPv6), its /64 for IPv6.
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("address"))
    }

    #[test]
    fn a_burst_then_the_rate_and_other_sources_are_unaffected() {
        let l = Limiter::new(RateLimit {
            burst: 3,
            per_minute: 60,
        });
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(ip("192.0.2.1"), t0), Ok(()));
        }
        let wait = l.check(ip("192.0.2.1"), t0).expect_err("limited");
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(l.check(ip("192.0.2.2"), t0), Ok(()), "another source");
        // One token a second comes back.
        assert!(l
            .check(ip("192.0.2.1"), t0 + Duration::from_millis(500))
            .is_err());
        assert_eq!(
            l.check(ip("192.0.2.1"), t0 + Duration::from_millis(1000)),
            Ok(())
        );
        assert!(l
            .check(ip("192.0.2.1"), t0 + Duration::from_millis(1000))
            .is_err());
        // Idle for long: a full burst again, not more.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(l.check(ip("192.0.2.1"), later), Ok(()));
        }
        assert!(l.check(ip("192.0.2.1"), later).is_err());
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_slash_64() {
        let l = Limiter::new(RateLimit {
            burst: 1,
            per_minute: 1,
        });
        let t0 = Instant::now();
        assert_eq!(l.check(ip("2001:db8:1:2::1"), t0), Ok(()));
        assert!(l.check(ip("2001:db8:1:2:ffff::9"), t0).is_err(), "same /64");
        assert_eq!(l.check(ip("2001:db8:1:3::1"), t0), Ok(()), "another /64");
        assert_eq!(l.check(ip("::ffff:192.0.2.7"), t0), Ok(()));
        assert!(l.check(ip("192.0.2.7"), t0).is_err(), "IPv4-mapped is IPv4");
        let wait = l.check(ip("192.0.2.7"), t0).expect_err("limited");
        assert_eq!(wait, Duration::from_secs(60));
    }

    #[test]
    fn the_map_is_bounded_and_overflow_shares_a_bucket() {
        let l = Limiter::new(RateLimit {
            burst: 2,
            per_minute: 60,
        });
        let t0 = Instant::now();
        for i in 0..MAX_SOURCES {
            let a = Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).expect("small"));
            assert_eq!(l.check(Some(IpAddr::V4(a)), t0), Ok(()));
        }
        // Full, and nobody has refilled: new sources share one bucket of 2.
        assert_eq!(l.check(ip("198.51.100.1"), t0), Ok(()));
        assert_eq!(l.check(ip("198.51.100.2"), t0), Ok(()));
        assert!(l.check(ip("198.51.100.3"), t0).is_err());
        assert!(l.buckets.lock().expect("lock").len() <= MAX_SOURCES + 1);
        // Once the others have refilled, they make room.
        let later = t0 + Duration::from_secs(5);
        assert_eq!(l.check(ip("198.51.100.3"), later), Ok(()));
        assert!(l.buckets.lock().expect("lock").len() < 10);
    }
}
