//! Abuse limits shared by all sessions: concurrent connections (in total and
//! per client address) and AUTH failures per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts open connections; hands out a [`Slot`] per admitted connection.
#[derive(Debug)]
pub(crate) struct Connections {
    max_total: usize,
    max_per_ip: usize,
    state: Mutex<ConnState>,
}

#[derive(Debug, Default)]
struct ConnState {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// `max_connections` reached.
    Total,
    /// `max_connections_per_ip` reached for this address.
    PerIp,
}

impl Refused {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::Total => "max_connections",
            Refused::PerIp => "max_connections_per_ip",
        }
    }
}

/// One admitted connection; released on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    owner: Arc<Connections>,
    ip: Option<IpAddr>,
}

impl Connections {
    pub(crate) fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Connections {
            max_total,
            max_per_ip,
            state: Mutex::new(ConnState::default()),
        })
    }

    /// Admit a connection (counted in the total only; the client address
    /// may not be known before the PROXY header).
    pub(crate) fn admit(self: &Arc<Self>) -> Result<Slot, Refused> {
        let mut st = self.state.lock().map_err(|_| Refused::Total)?;
        if st.total >= self.max_total {
            return Err(Refused::Total);
        }
        st.total += 1;
        metrics::gauge!("tern_smtp_connections_active").set(st.total as f64);
        Ok(Slot {
            owner: self.clone(),
            ip: None,
        })
    }

    /// Count `slot` against `ip` as well.
    pub(crate) fn bind_ip(&self, slot: &mut Slot, ip: IpAddr) -> Result<(), Refused> {
        let ip = ip.to_canonical();
        let mut st = self.state.lock().map_err(|_| Refused::PerIp)?;
        let n = st.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            if *n == 0 {
                st.per_ip.remove(&ip);
            }
            return Err(Refused::PerIp);
        }
        *n += 1;
        slot.ip = Some(ip);
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Ok(mut st) = self.owner.state.lock() else {
            return;
        };
        st.total = st.total.saturating_sub(1);
        metrics::gauge!("tern_smtp_connections_active").set(st.total as f64);
        if let Some(ip) = self.ip
            && let Some(n) = st.per_ip.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                st.per_ip.remove(&ip);
            }
        }
    }
}

/// AUTH failures per client address within a window.
#[derive(Debug)]
pub(crate) struct AuthFailures {
    max: usize,
    delay: Duration,
    window: Duration,
    state: Mutex<HashMap<IpAddr, (usize, Instant)>>,
}

/// Entries above which expired ones are swept.
const SWEEP_AT: usize = 10_000;

impl AuthFailures {
    pub(crate) fn new(max: usize, delay: Duration, window: Duration) -> Self {
        AuthFailures {
            max,
            delay,
            window,
            state: Mutex::new(HashMap::new()),
        }
    }

    /// Failures counted for `ip` now.
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        let Ok(mut st) = self.state.lock() else {
            return 0;
        };
        match st.get(&ip.to_canonical()) {
            Some((_, since)) if since.elapsed() >= self.window => {
                st.remove(&ip.to_canonical());
                0
            }
            Some((n, _)) => *n,
            None => 0,
        }
    }

    /// `ip` has used up its attempts: refuse AUTH and disconnect.
    pub(crate) fn locked_out(&self, ip: IpAddr) -> bool {
        self.count(ip) >= self.max
    }

    /// Record a failure (a later success does not erase it, or one valid
    /// account would reset the budget between guesses); returns how long to delay the reply and whether
    /// the client has now used up its attempts.
    pub(crate) fn fail(&self, ip: IpAddr) -> (Duration, bool) {
        let ip = ip.to_canonical();
        let Ok(mut st) = self.state.lock() else {
            return (self.delay, true);
        };
        if st.len() >= SWEEP_AT {
            let window = self.window;
            st.retain(|_, (_, since)| since.elapsed() < window);
        }
        let entry = st.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= self.window {
            *entry = (0, Instant::now());
        }
        entry.0 += 1;
        let n = entry.0;
        (self.delay * n.min(10) as u32, n >= self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits() {
        let c = Connections::new(3, 2);
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let mut a = c.admit().expect("a");
        c.bind_ip(&mut a, ip).expect("a ip");
        let mut b = c.admit().expect("b");
        c.bind_ip(&mut b, ip).expect("b ip");
        let mut d = c.admit().expect("d");
        assert_eq!(c.bind_ip(&mut d, ip), Err(Refused::PerIp));
        assert_eq!(c.admit().err(), Some(Refused::Total));
        drop(a);
        c.bind_ip(&mut d, ip).expect("slot freed");
        drop((b, d));
        assert_eq!(c.state.lock().expect("lock").total, 0);
        assert!(c.state.lock().expect("lock").per_ip.is_empty());
    }

    #[test]
    fn auth_failures() {
        let f = AuthFailures::new(3, Duration::from_millis(10), Duration::from_secs(60));
        let ip: IpAddr = "::ffff:192.0.2.1".parse().expect("ip");
        assert_eq!(f.fail(ip), (Duration::from_millis(10), false));
        assert_eq!(f.fail(ip), (Duration::from_millis(20), false));
        assert!(!f.locked_out(ip));
        assert_eq!(f.fail(ip), (Duration::from_millis(30), true));
        assert!(f.locked_out("192.0.2.1".parse().expect("ip")));
        let expired = AuthFailures::new(1, Duration::ZERO, Duration::ZERO);
        expired.fail(ip);
        assert!(!expired.locked_out(ip));
    }
}
