//! Failed logins slow down the next attempts from the same address: without it one client
//! on loopback tried 369 passwords a second. After a failure, each new attempt from that
//! address waits its turn, and turns are spaced by a penalty that doubles with every
//! failure (25 ms, 50 ms, ... up to 2 s); concurrent attempts queue behind each other, so
//! opening more connections does not buy more guesses. A success, or a minute without
//! failures, forgets the address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

const FIRST_PENALTY: Duration = Duration::from_millis(25);
const MAX_PENALTY: Duration = Duration::from_secs(2);
/// Failures older than this are forgiven.
const MEMORY: Duration = Duration::from_secs(60);
/// Addresses remembered at most (older entries are dropped first when full).
const MAX_ADDRESSES: usize = 10_000;

/// Counters for `/metrics`.
pub static LOGIN_FAILURES: AtomicU64 = AtomicU64::new(0);
/// Attempts from an address with failures on record (each waits for its turn).
pub static LOGINS_THROTTLED: AtomicU64 = AtomicU64::new(0);
pub static LOGIN_DELAY_MS: AtomicU64 = AtomicU64::new(0);

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    /// When the next attempt from the address may proceed.
    next_turn: Instant,
}

#[derive(Debug, Default)]
pub struct LoginThrottle {
    addresses: Mutex<HashMap<IpAddr, Failures>>,
}

fn penalty(failures: u32) -> Duration {
    FIRST_PENALTY.saturating_mul(1u32 << failures.saturating_sub(1).min(16)).min(MAX_PENALTY)
}

impl LoginThrottle {
    /// Wait until an attempt from `ip` may proceed.
    pub async fn wait_turn(&self, ip: IpAddr) {
        let Some(turn) = self.reserve_turn(ip, Instant::now()) else { return };
        LOGINS_THROTTLED.fetch_add(1, Ordering::Relaxed);
        let wait = turn.saturating_duration_since(Instant::now());
        LOGIN_DELAY_MS.fetch_add(wait.as_millis() as u64, Ordering::Relaxed);
        tokio::time::sleep_until(turn).await;
    }

    /// The turn of an attempt from `ip` arriving at `now`, if the address has failures on
    /// record; the turn after it is one penalty later.
    fn reserve_turn(&self, ip: IpAddr, now: Instant) -> Option<Instant> {
        let mut addresses = self.addresses.lock().expect("login throttle lock");
        let f = addresses.get_mut(&ip)?;
        if now.saturating_duration_since(f.last) >= MEMORY {
            addresses.remove(&ip);
            return None;
        }
        let turn = f.next_turn.max(now);
        f.next_turn = turn + penalty(f.count);
        Some(turn)
    }

    pub fn failed(&self, ip: IpAddr) {
        LOGIN_FAILURES.fetch_add(1, Ordering::Relaxed);
        self.failed_at(ip, Instant::now());
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        let mut addresses = self.addresses.lock().expect("login throttle lock");
        if addresses.len() >= MAX_ADDRESSES && !addresses.contains_key(&ip) {
            addresses.retain(|_, f| now.saturating_duration_since(f.last) < MEMORY);
            if addresses.len() >= MAX_ADDRESSES
                && let Some(oldest) = addresses.iter().min_by_key(|(_, f)| f.last).map(|(ip, _)| *ip)
            {
                addresses.remove(&oldest);
            }
        }
        let f = addresses.entry(ip).or_insert(Failures { count: 0, last: now, next_turn: now });
        f.count = f.count.saturating_add(1);
        f.last = now;
        f.next_turn = f.next_turn.max(now + penalty(f.count));
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.addresses.lock().expect("login throttle lock").remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalties_double_up_to_the_cap() {
        assert_eq!(penalty(1), Duration::from_millis(25));
        assert_eq!(penalty(2), Duration::from_millis(50));
        assert_eq!(penalty(5), Duration::from_millis(400));
        assert_eq!(penalty(8), MAX_PENALTY);
        assert_eq!(penalty(u32::MAX), MAX_PENALTY);
    }

    #[test]
    fn attempts_after_failures_queue_one_penalty_apart() {
        let throttle = LoginThrottle::default();
        let (ip, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        assert_eq!(throttle.reserve_turn(ip, t0), None, "no failures: no wait");
        throttle.failed_at(ip, t0);
        throttle.failed_at(ip, t0);
        // Two failures: turns 50 ms apart, starting 50 ms after the last failure; three
        // attempts arriving at once queue behind each other.
        let ms = Duration::from_millis;
        let turns: Vec<_> = (0..3).map(|_| throttle.reserve_turn(ip, t0).unwrap()).collect();
        assert_eq!(turns, vec![t0 + ms(50), t0 + ms(100), t0 + ms(150)]);
        assert_eq!(throttle.reserve_turn(other, t0), None, "other addresses do not wait");
        // An attempt long after the queue drained goes at once.
        assert_eq!(throttle.reserve_turn(ip, t0 + ms(1000)), Some(t0 + ms(1000)));
        // A minute without failures, or a success, forgets the address.
        assert_eq!(throttle.reserve_turn(ip, t0 + MEMORY), None);
        throttle.failed_at(ip, t0);
        throttle.succeeded(ip);
        assert_eq!(throttle.reserve_turn(ip, t0), None);
    }
}
