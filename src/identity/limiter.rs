//! Login attempt limiting, per user and per client address, shared by every door a
//! password comes through (proxy authentication, captive portal, admin login).
//!
//! After `max_failures` failures within `window`, further attempts for that user or
//! from that address are refused until the window has passed since the last failure,
//! whether the password is right or not: guessing stays slow, and a student cannot
//! lock a teacher out for longer than one window. A success clears the user's and
//! the address's counters. Pure bookkeeping: time is an argument, callers audit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Refused: try again after this long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryAfter(pub Duration);

pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    users: Mutex<HashMap<String, Failures>>,
    ips: Mutex<HashMap<IpAddr, Failures>>,
}

/// Bound on remembered keys, so a flood of made-up user names cannot grow memory.
const MAX_KEYS: usize = 100_000;

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter {
            max_failures: max_failures.max(1),
            window,
            users: Mutex::new(HashMap::new()),
            ips: Mutex::new(HashMap::new()),
        }
    }

    fn blocked<K: std::hash::Hash + Eq>(
        &self,
        map: &Mutex<HashMap<K, Failures>>,
        key: &K,
        now: Instant,
    ) -> Option<Duration> {
        let map = map.lock().ok()?;
        let f = map.get(key)?;
        let elapsed = now.saturating_duration_since(f.last);
        (f.count >= self.max_failures && elapsed < self.window).then(|| self.window - elapsed)
    }

    /// Whether an attempt by `user` from `ip` may be checked at all now.
    pub fn check(&self, user: &str, ip: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        let wait = [
            self.blocked(&self.users, &user.to_string(), now),
            self.blocked(&self.ips, &ip, now),
        ]
        .into_iter()
        .flatten()
        .max();
        match wait {
            Some(d) => Err(RetryAfter(d)),
            None => Ok(()),
        }
    }

    fn bump<K: std::hash::Hash + Eq>(
        &self,
        map: &Mutex<HashMap<K, Failures>>,
        key: K,
        now: Instant,
    ) {
        let Ok(mut map) = map.lock() else { return };
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, f| now.saturating_duration_since(f.last) < window);
        }
        let f = map.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.saturating_duration_since(f.last) >= self.window {
            f.count = 0;
        }
        f.count += 1;
        f.last = now;
    }

    /// Records a failed attempt.
    pub fn failure(&self, user: &str, ip: IpAddr, now: Instant) {
        self.bump(&self.users, user.to_string(), now);
        self.bump(&self.ips, ip, now);
    }

    /// Records a success: the user's and the address's slates are wiped.
    pub fn success(&self, user: &str, ip: IpAddr) {
        if let Ok(mut m) = self.users.lock() {
            m.remove(user);
        }
        if let Ok(mut m) = self.ips.lock() {
            m.remove(&ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_failures_then_recovers() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let other: IpAddr = "10.1.2.4".parse().unwrap();
        for i in 0..3 {
            assert_eq!(l.check("prof", ip, t0), Ok(()), "attempt {i}");
            l.failure("prof", ip, t0);
        }
        assert_eq!(
            l.check("prof", ip, t0),
            Err(RetryAfter(Duration::from_secs(60)))
        );
        // Locked per user (from anywhere) and per address (for anyone).
        assert!(l.check("prof", other, t0).is_err());
        assert!(l.check("eleve", ip, t0).is_err());
        assert_eq!(l.check("eleve", other, t0), Ok(()));
        // The lock lasts one window after the last failure.
        assert_eq!(
            l.check("prof", ip, t0 + Duration::from_secs(45)),
            Err(RetryAfter(Duration::from_secs(15)))
        );
        assert_eq!(l.check("prof", ip, t0 + Duration::from_secs(60)), Ok(()));
        // Old failures are forgotten: one new failure does not relock.
        l.failure("prof", ip, t0 + Duration::from_secs(61));
        assert_eq!(l.check("prof", ip, t0 + Duration::from_secs(61)), Ok(()));
    }

    #[test]
    fn success_clears() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "::1".parse().unwrap();
        l.failure("a", ip, t0);
        l.success("a", ip);
        l.failure("a", ip, t0);
        assert_eq!(l.check("a", ip, t0), Ok(()));
    }
}
