//! Egress identity: the source addresses and EHLO name a delivery process
//! sends from. An operator with several sending IPs runs one delivery
//! Deployment per pool, each with its own `TERN_DELIVERY_POOL`,
//! `TERN_DELIVERY_SOURCE_ADDRESSES` and `TERN_DELIVERY_EHLO_NAME` (the EHLO
//! name should match the PTR record of the source address).

use std::net::IpAddr;

use tern_runtime::config::ConfigValue;

/// A list of IP addresses (`192.0.2.10, 2001:db8::10`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpList(pub Vec<IpAddr>);

impl ConfigValue for IpList {
    const EXPECTED: &'static str = "comma-separated IP addresses";
    fn parse_value(s: &str) -> Option<Self> {
        s.split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(|i| i.parse().ok())
            .collect::<Option<Vec<_>>>()
            .map(IpList)
    }
}

/// Who this process is on the wire.
#[derive(Debug, Clone)]
pub struct Egress {
    /// Pool name (part of the connection-reuse key and in logs).
    pub name: String,
    /// Source addresses; empty means the kernel's choice.
    pub sources: Vec<IpAddr>,
    /// The EHLO name.
    pub ehlo_name: String,
}

impl Egress {
    /// The source address for connecting to `dest`: `Ok(None)` to let the
    /// kernel choose (no sources configured), `Err(())` when sources are
    /// configured but none of `dest`'s family, so the address is skipped
    /// rather than sent from an unintended IP.
    #[allow(clippy::result_unit_err)]
    pub fn source_for(&self, dest: IpAddr) -> Result<Option<IpAddr>, ()> {
        if self.sources.is_empty() {
            return Ok(None);
        }
        self.sources
            .iter()
            .find(|s| s.is_ipv4() == dest.is_ipv4())
            .copied()
            .map(Some)
            .ok_or(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn source_address_matches_the_destination_family() {
        let e = Egress {
            name: "p".into(),
            sources: IpList::parse_value("192.0.2.10, 2001:db8::10").unwrap().0,
            ehlo_name: "out.test".into(),
        };
        let v4: IpAddr = "198.51.100.1".parse().unwrap();
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(e.source_for(v4), Ok(Some("192.0.2.10".parse().unwrap())));
        assert_eq!(e.source_for(v6), Ok(Some("2001:db8::10".parse().unwrap())));
        let only4 = Egress {
            sources: vec!["192.0.2.10".parse().unwrap()],
            ..e.clone()
        };
        // Never from an unintended address: the IPv6 MX address is skipped.
        assert_eq!(only4.source_for(v6), Err(()));
        let none = Egress {
            sources: vec![],
            ..e
        };
        assert_eq!(none.source_for(v6), Ok(None));
        assert!(IpList::parse_value("192.0.2.300").is_none());
    }
}
