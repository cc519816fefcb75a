//! Per-address admission: how many live sessions one client address may hold and how fast it
//! may create them, so that one host cannot take every slot of the server.
//!
//! Sans-IO like the rest of the core: time is an argument. The table is bounded; an IPv6
//! client is counted by its `/64` (one subscriber's prefix), an IPv4 client by its address.
//!
//! ```
//! use browserver_core::{AddressQuota, QuotaConfig, QuotaError};
//! use std::time::{Duration, Instant};
//!
//! let mut quota = AddressQuota::new(QuotaConfig {
//!     max_sessions: 1,
//!     ..QuotaConfig::default()
//! });
//! let (client, now) = ("203.0.113.7".parse().expect("an address"), Instant::now());
//! assert_eq!(quota.try_admit(client, now), Ok(()));
//! assert_eq!(
//!     quota.try_admit(client, now),
//!     Err(QuotaError::TooManySessions { limit: 1 })
//! );
//! quota.release(client, now + Duration::from_secs(1)); // the session ended
//! assert_eq!(quota.try_admit(client, now + Duration::from_secs(1)), Ok(()));
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Limits per client address. `0` disables a limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaConfig {
    /// Live sessions one address may hold; one more is refused with
    /// [`QuotaError::TooManySessions`]. Default 256.
    pub max_sessions: usize,
    /// Sessions one address may create per minute, on average. Default 120.
    pub creations_per_minute: u32,
    /// Creations one address may make in a burst before the rate applies. Default 60.
    pub burst: u32,
    /// Addresses tracked at once; past it, idle entries are forgotten, and if none is idle a
    /// new address is refused with [`QuotaError::TableFull`]. Default 100 000.
    pub max_addresses: usize,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_sessions: 256,
            creations_per_minute: 120,
            burst: 60,
            max_addresses: 100_000,
        }
    }
}

impl QuotaConfig {
    /// No limit at all (for load tests on loopback).
    pub fn unlimited() -> QuotaConfig {
        QuotaConfig {
            max_sessions: 0,
            creations_per_minute: 0,
            burst: 0,
            max_addresses: 0,
        }
    }
}

/// Why a session creation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// The address holds its limit of live sessions (answer 429).
    #[error("too many sessions from this address (limit {limit})")]
    TooManySessions {
        /// The configured limit.
        limit: usize,
    },
    /// The address creates sessions faster than allowed (answer 429 with `Retry-After`).
    #[error("sessions created too fast from this address; retry in {}s", retry_after.as_secs())]
    TooFast {
        /// When the next creation will be allowed.
        retry_after: Duration,
    },
    /// Too many distinct addresses hold sessions (answer 503).
    #[error("too many client addresses")]
    TableFull,
}

/// The unit a limit applies to: an IPv4 address, or an IPv6 `/64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AddressKey {
    /// An IPv4 address.
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl AddressKey {
    /// The key of `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn of(ip: IpAddr) -> AddressKey {
        match ip {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                // The shift leaves 64 bits: the cast keeps them all.
                None => AddressKey::V6((v6.to_bits() >> 64) as u64),
            },
        }
    }
}

/// One creation costs this many milli-tokens.
const TOKEN: u64 = 1000;

#[derive(Debug)]
struct Entry {
    live: usize,
    /// Milli-tokens available at `at`.
    tokens: u64,
    at: Instant,
}

/// Live sessions and creation rate per client address.
///
/// Invariants: at most `max_addresses` entries (when that limit is set); an entry's `live`
/// counts the sessions admitted and not yet released.
#[derive(Debug)]
pub struct AddressQuota {
    config: QuotaConfig,
    table: HashMap<AddressKey, Entry>,
}

impl AddressQuota {
    /// An empty table with these limits.
    pub fn new(config: QuotaConfig) -> AddressQuota {
        AddressQuota {
            config,
            table: HashMap::new(),
        }
    }

    /// Addresses tracked.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no address is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Live sessions counted for `ip`.
    pub fn live(&self, ip: IpAddr) -> usize {
        self.table.get(&AddressKey::of(ip)).map_or(0, |e| e.live)
    }

    fn capacity(&self) -> u64 {
        u64::from(self.config.burst.max(1)).saturating_mul(TOKEN)
    }

    fn refill(&self, entry: &mut Entry, now: Instant) {
        let elapsed = now.saturating_duration_since(entry.at).as_millis();
        let earned = elapsed.saturating_mul(u128::from(self.config.creations_per_minute)) / 60;
        let earned = u64::try_from(earned).unwrap_or(u64::MAX);
        entry.tokens = entry.tokens.saturating_add(earned).min(self.capacity());
        entry.at = now;
    }

    /// Counts a new session for `ip` if its limits allow; call [`release`](Self::release)
    /// once when that session ends.
    pub fn try_admit(&mut self, ip: IpAddr, now: Instant) -> Result<(), QuotaError> {
        let key = AddressKey::of(ip);
        let capacity = self.capacity();
        if !self.table.contains_key(&key) {
            let max = self.config.max_addresses;
            if max > 0 && self.table.len() >= max {
                self.forget_idle(now);
                if self.table.len() >= max {
                    return Err(QuotaError::TableFull);
                }
            }
            self.table.insert(
                key,
                Entry {
                    live: 0,
                    tokens: capacity,
                    at: now,
                },
            );
        }
        let config = self.config.clone();
        let Some(mut entry) = self.table.remove(&key) else {
            return Err(QuotaError::TableFull);
        };
        let verdict = self.charge(&config, &mut entry, now);
        self.table.insert(key, entry);
        verdict
    }

    fn charge(
        &self,
        config: &QuotaConfig,
        entry: &mut Entry,
        now: Instant,
    ) -> Result<(), QuotaError> {
        if config.max_sessions > 0 && entry.live >= config.max_sessions {
            return Err(QuotaError::TooManySessions {
                limit: config.max_sessions,
            });
        }
        if config.creations_per_minute > 0 {
            self.refill(entry, now);
            if entry.tokens < TOKEN {
                let missing = TOKEN - entry.tokens;
                let ms = missing.saturating_mul(60) / u64::from(config.creations_per_minute) + 1;
                return Err(QuotaError::TooFast {
                    retry_after: Duration::from_millis(ms).max(Duration::from_secs(1)),
                });
            }
            entry.tokens -= TOKEN;
        }
        entry.live = entry.live.saturating_add(1);
        Ok(())
    }

    /// A session admitted for `ip` ended. An address with nothing live and a full bucket
    /// (nothing to remember) leaves the table at once.
    pub fn release(&mut self, ip: IpAddr, now: Instant) {
        let key = AddressKey::of(ip);
        let Some(mut entry) = self.table.remove(&key) else {
            return;
        };
        entry.live = entry.live.saturating_sub(1);
        self.refill(&mut entry, now);
        if entry.live > 0 || entry.tokens < self.capacity() {
            self.table.insert(key, entry);
        }
    }

    /// Forgets entries with no live session whose bucket has refilled.
    fn forget_idle(&mut self, now: Instant) {
        let capacity = self.capacity();
        let per_minute = u128::from(self.config.creations_per_minute);
        self.table.retain(|_, e| {
            if e.live > 0 {
                return true;
            }
            let elapsed = now.saturating_duration_since(e.at).as_millis();
            // (Without a rate an idle entry never stays: `release` drops it at once.)
            let tokens = u128::from(e.tokens) + elapsed.saturating_mul(per_minute) / 60;
            tokens < u128::from(capacity)
        });
    }
}

/// An [`AddressQuota`] shared by every transport of a server (cheap to clone; clones share
/// the table), so that an address's sessions count the same whichever transport it uses.
#[derive(Clone, Debug)]
pub struct SharedQuota(std::sync::Arc<std::sync::Mutex<AddressQuota>>);

impl SharedQuota {
    /// A new table with these limits.
    pub fn new(config: QuotaConfig) -> SharedQuota {
        SharedQuota(std::sync::Arc::new(std::sync::Mutex::new(
            AddressQuota::new(config),
        )))
    }

    fn table(&self) -> std::sync::MutexGuard<'_, AddressQuota> {
        // A panic while holding the lock cannot leave a count half-updated; keep serving.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// [`AddressQuota::try_admit`].
    pub fn try_admit(&self, ip: IpAddr, now: Instant) -> Result<(), QuotaError> {
        self.table().try_admit(ip, now)
    }

    /// [`AddressQuota::release`].
    pub fn release(&self, ip: IpAddr, now: Instant) {
        self.table().release(ip, now);
    }
}

impl Default for SharedQuota {
    fn default() -> Self {
        SharedQuota::new(QuotaConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn config(max_sessions: usize, per_minute: u32, burst: u32) -> QuotaConfig {
        QuotaConfig {
            max_sessions,
            creations_per_minute: per_minute,
            burst,
            max_addresses: 10,
        }
    }

    #[test]
    fn an_address_holds_at_most_its_limit_of_live_sessions() {
        let now = Instant::now();
        let mut q = AddressQuota::new(config(3, 0, 0));
        for _ in 0..3 {
            q.try_admit(ip("10.0.0.1"), now).expect("admitted");
        }
        assert_eq!(
            q.try_admit(ip("10.0.0.1"), now),
            Err(QuotaError::TooManySessions { limit: 3 })
        );
        q.try_admit(ip("10.0.0.2"), now)
            .expect("another address is not affected");
        q.release(ip("10.0.0.1"), now);
        q.try_admit(ip("10.0.0.1"), now)
            .expect("a released slot is free again");
    }

    #[test]
    fn creations_beyond_the_burst_wait_for_the_rate() {
        let now = Instant::now();
        let mut q = AddressQuota::new(config(0, 60, 2));
        q.try_admit(ip("10.0.0.1"), now).expect("1");
        q.try_admit(ip("10.0.0.1"), now).expect("2");
        let Err(QuotaError::TooFast { retry_after }) = q.try_admit(ip("10.0.0.1"), now) else {
            panic!("the third in a burst of two is refused")
        };
        assert!(retry_after <= Duration::from_secs(1) + Duration::from_millis(1));
        q.try_admit(ip("10.0.0.1"), now + Duration::from_millis(999))
            .expect_err("not before a second (60 per minute)");
        q.try_admit(ip("10.0.0.1"), now + Duration::from_secs(1))
            .expect("one more after a second");
    }

    #[test]
    fn ipv6_addresses_of_one_prefix_share_a_quota() {
        let now = Instant::now();
        let mut q = AddressQuota::new(config(1, 0, 0));
        q.try_admit(ip("2001:db8::1"), now).expect("first");
        assert!(q.try_admit(ip("2001:db8::2"), now).is_err(), "same /64");
        q.try_admit(ip("2001:db8:0:1::1"), now)
            .expect("another /64");
        q.try_admit(ip("127.0.0.1"), now).expect("v4");
        assert!(
            q.try_admit(ip("::ffff:127.0.0.1"), now).is_err(),
            "mapped = v4"
        );
    }

    #[test]
    fn the_table_is_bounded_and_forgets_idle_addresses_first() {
        let now = Instant::now();
        let mut q = AddressQuota::new(QuotaConfig {
            max_addresses: 2,
            ..config(0, 60, 1)
        });
        q.try_admit(ip("10.0.0.1"), now).expect("a");
        q.try_admit(ip("10.0.0.2"), now).expect("b");
        assert_eq!(q.try_admit(ip("10.0.0.3"), now), Err(QuotaError::TableFull));
        q.release(ip("10.0.0.1"), now);
        // Its bucket is not full yet: it is still remembered.
        assert_eq!(q.try_admit(ip("10.0.0.3"), now), Err(QuotaError::TableFull));
        q.try_admit(ip("10.0.0.3"), now + Duration::from_secs(2))
            .expect("the idle, refilled entry made room");
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn clones_of_a_shared_quota_count_together() {
        let now = Instant::now();
        let a = SharedQuota::new(config(1, 0, 0));
        let b = a.clone();
        a.try_admit(ip("10.0.0.1"), now).expect("first");
        assert!(b.try_admit(ip("10.0.0.1"), now).is_err(), "the same table");
        b.release(ip("10.0.0.1"), now);
        a.try_admit(ip("10.0.0.1"), now)
            .expect("released through the clone");
    }

    #[test]
    fn retry_after_says_when_the_next_creation_is_allowed() {
        let now = Instant::now();
        let mut q = AddressQuota::new(config(0, 6, 1));
        q.try_admit(ip("10.0.0.1"), now).expect("the burst of one");
        // 6 per minute: one every 10 s; after 5 s half a creation has been earned.
        assert_eq!(
            q.try_admit(ip("10.0.0.1"), now + Duration::from_secs(5)),
            Err(QuotaError::TooFast {
                retry_after: Duration::from_millis(5_001)
            })
        );
        q.try_admit(ip("10.0.0.1"), now + Duration::from_secs(10))
            .expect("one more after 10 s");
    }

    #[test]
    fn a_released_address_leaves_the_table_once_it_has_nothing_to_remember() {
        let now = Instant::now();
        let mut q = AddressQuota::new(config(0, 60, 1));
        q.try_admit(ip("10.0.0.1"), now).expect("admitted");
        q.try_admit(ip("10.0.0.2"), now).expect("admitted");
        assert_eq!(q.len(), 2);
        q.release(ip("10.0.0.1"), now);
        assert_eq!(q.len(), 2, "its bucket is not full: the rate still applies");
        q.release(ip("10.0.0.2"), now + Duration::from_secs(1));
        assert_eq!(q.len(), 1, "refilled: forgotten at once");
        assert!(!q.is_empty());
        q.release(ip("10.0.0.9"), now);
        assert_eq!(q.len(), 1, "an unknown address changes nothing");
        let mut unlimited_rate = AddressQuota::new(config(5, 0, 0));
        unlimited_rate.try_admit(ip("10.0.0.1"), now).expect("a");
        unlimited_rate.try_admit(ip("10.0.0.1"), now).expect("b");
        unlimited_rate.release(ip("10.0.0.1"), now);
        assert_eq!(unlimited_rate.live(ip("10.0.0.1")), 1, "one still live");
        unlimited_rate.release(ip("10.0.0.1"), now);
        assert!(unlimited_rate.is_empty());
    }

    #[test]
    fn a_full_table_forgets_exactly_the_refilled_idle_entries() {
        let now = Instant::now();
        let mut q = AddressQuota::new(QuotaConfig {
            max_addresses: 2,
            ..config(0, 60, 1)
        });
        q.try_admit(ip("10.0.0.1"), now)
            .expect("live, refilled later");
        q.try_admit(ip("10.0.0.2"), now)
            .expect("idle, refilled later");
        q.release(ip("10.0.0.2"), now);
        // 999 ms: not yet refilled (60 per minute, one token a second).
        let almost = now + Duration::from_millis(999);
        assert_eq!(
            q.try_admit(ip("10.0.0.3"), almost),
            Err(QuotaError::TableFull)
        );
        // One second: refilled exactly; the idle entry goes, the live one stays.
        q.try_admit(ip("10.0.0.3"), now + Duration::from_secs(1))
            .expect("room made");
        assert_eq!(q.live(ip("10.0.0.1")), 1);
    }

    #[test]
    fn zero_disables_every_limit() {
        let now = Instant::now();
        let mut q = AddressQuota::new(QuotaConfig::unlimited());
        for _ in 0..10_000 {
            q.try_admit(ip("10.0.0.1"), now).expect("admitted");
        }
        assert_eq!(q.live(ip("10.0.0.1")), 10_000);
    }

    #[test]
    fn an_idle_address_whose_bucket_just_refilled_is_forgotten() {
        let config = QuotaConfig {
            creations_per_minute: 60,
            burst: 1,
            ..QuotaConfig::default()
        };
        let mut q = AddressQuota::new(config);
        let now = Instant::now();
        q.try_admit(ip("10.0.0.1"), now).expect("admitted");
        q.release(ip("10.0.0.1"), now);
        assert_eq!(q.len(), 1, "its bucket is not full yet");
        // One token a second: a second later the bucket is full again and the entry goes.
        q.release(ip("10.0.0.9"), now + Duration::from_secs(1));
        q.forget_idle(now + Duration::from_secs(1));
        assert_eq!(q.len(), 0);
    }
}
