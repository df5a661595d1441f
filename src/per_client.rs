//! How many connections each client holds, for the caps that keep one device (or
//! one attacker) from taking every place a listener has: the proxy's
//! `max_connections_per_client` and the DNS TCP transport's per-client limit.
//! It only counts; who a client is (an address) and what to do past the cap are
//! the listeners' business.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Connections open per client.
#[derive(Debug, Default)]
pub struct PerClient {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// `client` already holds its cap.
#[derive(Debug, PartialEq, Eq)]
pub struct Full;

impl PerClient {
    /// A place for `client` if it holds fewer than `max` (0: no cap, nothing
    /// counted).
    pub fn enter(self: &Arc<Self>, client: IpAddr, max: usize) -> Result<Option<ClientSlot>, Full> {
        if max == 0 {
            return Ok(None);
        }
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(client).or_insert(0);
        if *n >= max {
            return Err(Full);
        }
        *n += 1;
        Ok(Some(ClientSlot {
            table: self.clone(),
            client,
        }))
    }

    #[cfg(test)]
    fn held(&self, client: IpAddr) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(&client).copied().unwrap_or(0)
    }
}

/// One connection's place in [`PerClient`], given back on drop.
#[derive(Debug)]
pub struct ClientSlot {
    table: Arc<PerClient>,
    client: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self
            .table
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_places_are_counted_and_given_back() {
        let t = Arc::new(PerClient::default());
        let a: IpAddr = "10.1.2.3".parse().unwrap();
        let b: IpAddr = "10.1.2.4".parse().unwrap();
        let first = t.enter(a, 2).unwrap();
        let second = t.enter(a, 2).unwrap();
        assert!(t.enter(a, 2).is_err(), "a third place for the same address");
        assert!(
            t.enter(b, 2).unwrap().is_some(),
            "another address is not held back"
        );
        assert_eq!(t.held(a), 2);
        drop(first);
        assert_eq!(t.held(a), 1);
        let again = t.enter(a, 2).unwrap();
        drop((second, again));
        assert_eq!(t.held(a), 0);
        assert!(t.counts.lock().unwrap().is_empty(), "no entry left behind");
        assert!(
            t.enter(a, 0).unwrap().is_none(),
            "0: no cap, nothing counted"
        );
    }
}
