//! Login attempt limiting, per user and per client address, shared by every door a
//! password comes through (proxy authentication, captive portal, admin login).
//!
//! An attempt is counted as a failure *before* its password is checked
//! ([`LoginLimiter::begin`]): argon2 takes tens of milliseconds, and checking the
//! counters only afterwards would let any number of parallel attempts pass while
//! the first ones are still being verified. An attempt that turns out right is then
//! forgiven, and only that attempt ([`LoginLimiter::success`]).
//!
//! After `max_failures` failures within `window`, further attempts for that user or
//! from that address are refused until the window has passed since the last failure,
//! whether the password is right or not: guessing stays slow, and a student cannot
//! lock a teacher out for longer than one window. A success clears the user's own
//! counter (they proved their password) but not the address's failures against
//! other names: a student with a valid account cannot wipe their guesses at a
//! teacher's password by logging in as themselves between rounds. Pure bookkeeping:
//! time is an argument, callers audit.

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

/// An attempt counted by [`LoginLimiter::begin`]: hand it back to
/// [`LoginLimiter::success`] or [`LoginLimiter::forgive`] when the password was
/// right or could not be checked; drop it when the password was wrong (it is
/// already counted).
#[must_use = "a right password must be reported with success()"]
#[derive(Debug)]
pub struct Attempt {
    user: String,
    ip: IpAddr,
    /// When it was counted, and the counters' `last` before it (to put back when it
    /// is forgiven and nobody failed since).
    at: Instant,
    user_before: Option<Instant>,
    ip_before: Option<Instant>,
}

/// Both counters under one lock: the check and the count of an attempt are one step.
#[derive(Default)]
struct Counters {
    users: HashMap<String, Failures>,
    ips: HashMap<IpAddr, Failures>,
}

pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    counters: Mutex<Counters>,
}

/// Bound on remembered keys, so a flood of made-up user names cannot grow memory.
const MAX_KEYS: usize = 100_000;

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter {
            max_failures: max_failures.max(1),
            window,
            counters: Mutex::new(Counters::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Counters> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn blocked(&self, f: Option<&Failures>, now: Instant) -> Option<Duration> {
        let f = f?;
        let elapsed = now.saturating_duration_since(f.last);
        (f.count >= self.max_failures && elapsed < self.window).then(|| self.window - elapsed)
    }

    fn wait(&self, c: &Counters, user: &str, ip: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        let wait = [
            self.blocked(c.users.get(user), now),
            self.blocked(c.ips.get(&ip), now),
        ]
        .into_iter()
        .flatten()
        .max();
        match wait {
            Some(d) => Err(RetryAfter(d)),
            None => Ok(()),
        }
    }

    /// Whether an attempt by `user` from `ip` may be checked at all now (without
    /// counting it: see [`LoginLimiter::begin`]).
    pub fn check(&self, user: &str, ip: IpAddr, now: Instant) -> Result<(), RetryAfter> {
        self.wait(&self.lock(), user, ip, now)
    }

    /// Checks and counts an attempt in one step, before its password is verified:
    /// `Err` when the user or the address is locked, else the counted attempt.
    pub fn begin(&self, user: &str, ip: IpAddr, now: Instant) -> Result<Attempt, RetryAfter> {
        let mut c = self.lock();
        self.wait(&c, user, ip, now)?;
        let user_before = self.bump(&mut c.users, user.to_string(), now);
        let ip_before = self.bump(&mut c.ips, ip, now);
        Ok(Attempt {
            user: user.to_string(),
            ip,
            at: now,
            user_before,
            ip_before,
        })
    }

    /// Counts one failure; returns the previous `last` of a live counter.
    fn bump<K: std::hash::Hash + Eq>(
        &self,
        map: &mut HashMap<K, Failures>,
        key: K,
        now: Instant,
    ) -> Option<Instant> {
        if map.len() >= MAX_KEYS {
            let window = self.window;
            map.retain(|_, f| now.saturating_duration_since(f.last) < window);
        }
        let f = map.entry(key).or_insert(Failures {
            count: 0,
            last: now,
        });
        let before = if now.saturating_duration_since(f.last) >= self.window || f.count == 0 {
            f.count = 0;
            None
        } else {
            Some(f.last)
        };
        f.count += 1;
        f.last = now;
        before
    }

    /// Takes one counted attempt back off a counter.
    fn unbump<K: std::hash::Hash + Eq>(
        map: &mut HashMap<K, Failures>,
        key: &K,
        at: Instant,
        before: Option<Instant>,
    ) {
        let Some(f) = map.get_mut(key) else { return };
        f.count = f.count.saturating_sub(1);
        if f.count == 0 {
            map.remove(key);
        } else if f.last == at
            && let Some(b) = before
        {
            // Nobody failed since: the older failures age from their own time.
            f.last = b;
        }
    }

    /// Records a failed attempt (one not counted by [`LoginLimiter::begin`]).
    pub fn failure(&self, user: &str, ip: IpAddr, now: Instant) {
        let mut c = self.lock();
        self.bump(&mut c.users, user.to_string(), now);
        self.bump(&mut c.ips, ip, now);
    }

    /// The attempt's password was right: the user's own failures are wiped, and the
    /// address is forgiven this attempt only (its failures for other names stay).
    pub fn success(&self, attempt: Attempt) {
        let mut c = self.lock();
        c.users.remove(&attempt.user);
        Self::unbump(&mut c.ips, &attempt.ip, attempt.at, attempt.ip_before);
    }

    /// The attempt could not be checked (the directory did not answer): it does not
    /// count against anyone.
    pub fn forgive(&self, attempt: Attempt) {
        let mut c = self.lock();
        Self::unbump(&mut c.users, &attempt.user, attempt.at, attempt.user_before);
        Self::unbump(&mut c.ips, &attempt.ip, attempt.at, attempt.ip_before);
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
    fn success_clears_the_users_own_failures() {
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "::1".parse().unwrap();
        let home: IpAddr = "::2".parse().unwrap();
        drop(l.begin("a", ip, t0).unwrap());
        l.success(l.begin("a", home, t0).unwrap());
        drop(l.begin("a", home, t0).unwrap());
        assert_eq!(l.check("a", home, t0), Ok(()), "a's slate was wiped");
        // The address's failure is still counted: one more and it is locked.
        drop(l.begin("b", ip, t0).unwrap());
        assert!(l.check("c", ip, t0).is_err());
    }

    #[test]
    fn attempts_count_before_they_are_checked() {
        let l = LoginLimiter::new(3, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        // Three attempts in flight at once: the fourth is refused before any of
        // them has an answer.
        let pending: Vec<Attempt> = (0..3).map(|_| l.begin("prof", ip, t0).unwrap()).collect();
        assert!(l.begin("prof", ip, t0).is_err());
        // A right password forgives its own attempt only.
        let mut pending = pending.into_iter();
        l.success(pending.next().unwrap());
        drop(pending);
        assert!(l.begin("eleve", ip, t0).is_ok(), "two failures, one left");
        assert!(l.begin("eleve", ip, t0).is_err());
    }

    #[test]
    fn a_good_login_does_not_wipe_the_addresss_guesses() {
        let l = LoginLimiter::new(20, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let mut guesses = 0;
        // 19 guesses (at as many names, so no user's own lock helps), then the
        // student's own good login, over and over: the address locks after 20
        // guesses all the same.
        'rounds: for round in 0..5 {
            for _ in 0..19 {
                match l.begin(&format!("prof{guesses}"), ip, t0) {
                    Ok(a) => {
                        drop(a);
                        guesses += 1;
                    }
                    Err(_) => break 'rounds,
                }
            }
            match l.begin("eleve", ip, t0) {
                Ok(a) => l.success(a),
                Err(_) => break,
            }
            assert!(round < 2, "still guessing after round {round}");
        }
        assert_eq!(guesses, 20);
        assert!(l.begin("prof-x", ip, t0).is_err());
        assert!(l.begin("eleve", ip, t0).is_err());
    }

    #[test]
    fn an_unchecked_attempt_is_forgiven() {
        let l = LoginLimiter::new(1, Duration::from_secs(60));
        let t0 = Instant::now();
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        l.forgive(l.begin("a", ip, t0).unwrap());
        assert_eq!(l.check("a", ip, t0), Ok(()));
        // Earlier failures keep their own age when a later attempt is forgiven.
        let l = LoginLimiter::new(2, Duration::from_secs(60));
        drop(l.begin("a", ip, t0).unwrap());
        let later = t0 + Duration::from_secs(50);
        l.forgive(l.begin("a", ip, later).unwrap());
        drop(l.begin("a", ip, t0 + Duration::from_secs(70)).unwrap());
        assert_eq!(l.check("a", ip, t0 + Duration::from_secs(70)), Ok(()));
    }
}
