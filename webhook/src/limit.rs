//! A per-source rate limit: one token bucket per source address.
//!
//! # Guarantees
//! - A source may send `burst` deliveries at once, then one per `60 / per_minute` seconds; a
//!   delivery over the limit is answered `429` with `Retry-After` before its body is read or its
//!   signature checked, so a flood costs a hash-map lookup per request.
//! - Sources are keyed by address: IPv4 addresses one by one, IPv6 by their /64 (one host
//!   usually holds a whole /64, so keying by address would let it rotate freely).
//! - Memory is bounded: at most [`MAX_SOURCES`] buckets (and one shared). When the map is
//!   full, buckets that have refilled (idle sources) are dropped; if none has, every source
//!   shares one overflow bucket until some have.
//! - The buckets are governor's (GCRA, the same as a token bucket of `burst` refilled at
//!   `per_minute`); this module only chooses the key.
//!
//! # Assumptions
//! - The peer address is the sender's. Behind a reverse proxy every delivery comes from the
//!   proxy and shares its bucket: set the limit for the proxy's total, or limit at the proxy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

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

/// Token buckets by source (governor's GCRA, one cell per request): the webhook's, and the
/// edge front door's in `cplane serve`.
pub struct Limiter<C: Clock = DefaultClock> {
    buckets: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
}

impl<C: Clock> std::fmt::Debug for Limiter<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("sources", &self.buckets.len())
            .finish()
    }
}

impl Limiter {
    /// A limiter of `limit` per source, on the system's monotonic clock.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_clock(limit, DefaultClock::default())
    }
}

impl<C: Clock + Clone> Limiter<C> {
    /// A limiter of `limit` per source, on `clock` (tests use governor's fake clock).
    pub fn with_clock(limit: RateLimit, clock: C) -> Self {
        let at_least_one = |n: u32| NonZeroU32::new(n.max(1)).expect("at least 1");
        let quota = Quota::per_minute(at_least_one(limit.per_minute))
            .allow_burst(at_least_one(limit.burst));
        Self {
            buckets: RateLimiter::new(quota, HashMapStateStore::default(), clock.clone()),
            clock,
        }
    }

    /// Takes one delivery of `source`'s allowance: `Err(wait)` when it has none left, `wait`
    /// being how long until it has one again.
    pub fn check(&self, source: Option<IpAddr>) -> Result<(), Duration> {
        let mut key = source.map_or(SHARED, source_key);
        if self.buckets.len() >= MAX_SOURCES {
            // Forget the sources that have refilled (idle); if the map is still full, every
            // source shares one allowance until some have (a flood from that many addresses
            // is throttled as one).
            self.buckets.retain_recent();
            if self.buckets.len() >= MAX_SOURCES {
                key = SHARED;
            }
        }
        self.buckets
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
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
    use governor::clock::FakeRelativeClock;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("address"))
    }

    fn limiter(burst: u32, per_minute: u32) -> (Limiter<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        let l = Limiter::with_clock(RateLimit { burst, per_minute }, clock.clone());
        (l, clock)
    }

    #[test]
    fn a_burst_then_the_rate_and_other_sources_are_unaffected() {
        let (l, clock) = limiter(3, 60);
        for _ in 0..3 {
            assert_eq!(l.check(ip("192.0.2.1")), Ok(()));
        }
        let wait = l.check(ip("192.0.2.1")).expect_err("limited");
        assert_eq!(wait, Duration::from_secs(1));
        assert_eq!(l.check(ip("192.0.2.2")), Ok(()), "another source");
        // One delivery a second comes back.
        clock.advance(Duration::from_millis(500));
        assert!(l.check(ip("192.0.2.1")).is_err());
        clock.advance(Duration::from_millis(500));
        assert_eq!(l.check(ip("192.0.2.1")), Ok(()));
        assert!(l.check(ip("192.0.2.1")).is_err());
        // Idle for long: a full burst again, not more.
        clock.advance(Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(l.check(ip("192.0.2.1")), Ok(()));
        }
        assert!(l.check(ip("192.0.2.1")).is_err());
    }

    #[test]
    fn ipv6_sources_are_keyed_by_their_slash_64() {
        let (l, _clock) = limiter(1, 1);
        assert_eq!(l.check(ip("2001:db8:1:2::1")), Ok(()));
        assert!(l.check(ip("2001:db8:1:2:ffff::9")).is_err(), "same /64");
        assert_eq!(l.check(ip("2001:db8:1:3::1")), Ok(()), "another /64");
        assert_eq!(l.check(ip("::ffff:192.0.2.7")), Ok(()));
        assert!(l.check(ip("192.0.2.7")).is_err(), "IPv4-mapped is IPv4");
        let wait = l.check(ip("192.0.2.7")).expect_err("limited");
        assert_eq!(wait, Duration::from_secs(60));
    }

    #[test]
    fn the_map_is_bounded_and_overflow_shares_a_bucket() {
        let (l, clock) = limiter(2, 60);
        for i in 0..MAX_SOURCES {
            let a = Ipv4Addr::from(0x0a00_0000 + u32::try_from(i).expect("small"));
            assert_eq!(l.check(Some(IpAddr::V4(a))), Ok(()));
        }
        // Full, and nobody has refilled: sources share one bucket of 2.
        assert_eq!(l.check(ip("198.51.100.1")), Ok(()));
        assert_eq!(l.check(ip("198.51.100.2")), Ok(()));
        assert!(l.check(ip("198.51.100.3")).is_err());
        assert!(l.buckets.len() <= MAX_SOURCES + 1);
        // Once the others have refilled, they make room.
        clock.advance(Duration::from_secs(5));
        assert_eq!(l.check(ip("198.51.100.3")), Ok(()));
        assert!(l.buckets.len() < 10, "{}", l.buckets.len());
    }
}
