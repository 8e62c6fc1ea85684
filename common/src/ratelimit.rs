//! Keyed rate limits (GCRA, from `governor`): per client IP and per device at ingest, per token at
//! query. A limit allows `per_second` on average with bursts of up to `burst`; `per_second = 0` turns
//! it off. Keys that have been idle long enough to be back at a full burst are forgotten by
//! [`Keyed::spawn_cleanup`], so the table's size follows the active clients, not all clients ever seen.

use std::hash::Hash;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::tasks::Tasks;

/// `per_second` on average, bursts of up to `burst` (at least 1); `per_second = 0`: no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const OFF: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };
}

/// A rate limit per key. Cheap to check from many tasks at once (a sharded map of one `u64` per key).
pub struct Keyed<K: Hash + Eq + Clone> {
    limiter: Option<DefaultKeyedRateLimiter<K>>,
    clock: DefaultClock,
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> std::fmt::Debug for Keyed<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed")
            .field("on", &self.limiter.is_some())
            .field("keys", &self.len())
            .finish()
    }
}

impl<K: Hash + Eq + Clone + Send + Sync + 'static> Keyed<K> {
    pub fn new(limit: RateLimit) -> Keyed<K> {
        let limiter = NonZeroU32::new(limit.per_second).map(|rate| {
            let burst = NonZeroU32::new(limit.burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Keyed {
            limiter,
            clock: DefaultClock::default(),
        }
    }

    /// Takes one unit for `key`: `Err(wait)` when the key is over its limit, `wait` being how long
    /// until one unit is available again (for `Retry-After`).
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(l) => l
                .check_key(key)
                .map_err(|not_until| not_until.wait_time_from(self.clock.now())),
        }
    }

    /// Keys currently tracked.
    pub fn len(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets keys that are back at a full burst (their state says nothing any more).
    pub fn forget_idle(&self) {
        if let Some(l) = &self.limiter {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Calls [`Keyed::forget_idle`] every `every`, as one of `tasks` (nothing for an unlimited
    /// table).
    pub fn spawn_cleanup(self: &Arc<Self>, name: &str, every: Duration, tasks: &mut Tasks) {
        if self.limiter.is_none() {
            return;
        }
        let me = Arc::clone(self);
        tasks.spawn_every(name, every, move || {
            me.forget_idle();
            std::future::ready(())
        });
    }
}

/// The client's address for per-client limits and state. `X-Forwarded-For` is read only when the
/// TCP peer is one of `trusted_proxies` (a proxy such as an ingress controller, which appends the
/// address it saw); then, from its last entry backwards, the first address that is not itself a
/// trusted proxy is the client. Anyone else's header is ignored: a client that reaches the service
/// past the proxy cannot name its own address. The address is returned as [`client_key`] keys it.
pub fn client_ip(
    peer: std::net::IpAddr,
    headers: &axum::http::HeaderMap,
    trusted_proxies: &[ipnet::IpNet],
) -> std::net::IpAddr {
    let trusted = |ip: &std::net::IpAddr| trusted_proxies.iter().any(|n| n.contains(ip));
    if !trusted(&peer) {
        return client_key(peer);
    }
    let forwarded: Vec<std::net::IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse::<std::net::IpAddr>().ok())
        .collect();
    let mut client = peer;
    for ip in forwarded.into_iter().rev() {
        client = ip;
        if !trusted(&ip) {
            break;
        }
    }
    client_key(client)
}

/// The key per-client state is held under: an IPv6 address by its /64 prefix (a subscriber's
/// network gets a whole /64, so keying on the /128 would give one client 2^64 budgets), an
/// IPv4-mapped IPv6 address as its IPv4 address, an IPv4 address as itself.
pub fn client_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
        v4 => v4,
    }
}

/// Whole seconds to put in `Retry-After` for a wait (at least 1).
pub fn retry_after_secs(wait: Duration) -> u32 {
    u32::try_from(wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
        .unwrap_or(u32::MAX)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_prefix() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:ffff:eeee:dddd:1".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(client_key(a), client_key(b));
        assert_ne!(client_key(a), client_key(c));
        let mapped: std::net::IpAddr = "::ffff:203.0.113.7".parse().unwrap();
        assert_eq!(
            client_key(mapped),
            "203.0.113.7".parse::<std::net::IpAddr>().unwrap()
        );
    }

    #[test]
    fn allows_the_burst_then_refuses_with_a_wait_per_key() {
        let l = Keyed::<&str>::new(RateLimit {
            per_second: 2,
            burst: 3,
        });
        for _ in 0..3 {
            l.check(&"a").expect("within the burst");
        }
        let wait = l.check(&"a").expect_err("past the burst");
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(retry_after_secs(wait), 1);
        // Another key has its own budget.
        l.check(&"b").expect("other key");
        assert_eq!(l.len(), 2);
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain test: no runtime to block"
        )]
        std::thread::sleep(Duration::from_millis(550));
        l.check(&"a").expect("one unit back after 1/rate");
    }

    #[test]
    fn off_allows_everything_and_tracks_nothing() {
        let l = Keyed::<u32>::new(RateLimit::OFF);
        for i in 0..10_000 {
            l.check(&(i % 3)).unwrap();
        }
        assert!(l.is_empty());
    }

    #[test]
    fn idle_keys_are_forgotten() {
        let l = Keyed::<u32>::new(RateLimit {
            per_second: 1000,
            burst: 1,
        });
        for i in 0..100 {
            l.check(&i).unwrap();
        }
        assert_eq!(l.len(), 100);
        #[expect(
            clippy::disallowed_methods,
            reason = "a plain test: no runtime to block"
        )]
        std::thread::sleep(Duration::from_millis(20));
        l.forget_idle();
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn client_ip_reads_forwarded_for_only_from_trusted_proxies() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer = ip("10.0.0.9");
        let mut h = axum::http::HeaderMap::new();
        assert_eq!(client_ip(peer, &h, &proxies), peer, "no header: the peer");
        h.append("x-forwarded-for", "1.2.3.4, 5.6.7.8".parse().unwrap());
        h.append("x-forwarded-for", "9.9.9.9, not-an-ip".parse().unwrap());
        assert_eq!(
            client_ip(peer, &h, &[]),
            peer,
            "no trusted proxies: the peer"
        );
        assert_eq!(client_ip(peer, &h, &proxies), ip("9.9.9.9"));
        // A peer that is not a trusted proxy names no address, whatever its header says.
        assert_eq!(client_ip(ip("192.0.2.1"), &h, &proxies), ip("192.0.2.1"));
        // Proxies in a chain: skip the trusted hops from the right.
        let mut chain = axum::http::HeaderMap::new();
        chain.append(
            "x-forwarded-for",
            "6.6.6.6, 7.7.7.7, 10.1.1.1".parse().unwrap(),
        );
        assert_eq!(client_ip(peer, &chain, &proxies), ip("7.7.7.7"));
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }
}
