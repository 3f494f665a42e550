//! Network policy as the control plane states it: IPv4 networks, a
//! sandbox's egress policy, and the ranges no allow list may name. Pure
//! data and checks; enforcement (nftables, netlink) is the runner's.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use thiserror::Error;

/// A policy that cannot be enforced as written (a 400 at the API).
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("invalid CIDR {0:?}: expected a.b.c.d/n with n from 0 to 32")]
    BadCidr(String),
    #[error("{count} entries (at most {MAX_ALLOW_LIST})")]
    TooMany { count: usize },
    #[error("{entry} lies inside {range} ({kind}), which sandboxes never reach")]
    NeverReachable {
        entry: Cidr,
        range: Cidr,
        kind: &'static str,
    },
    #[error(
        "{entry} lies inside {range} ({kind}), which this server keeps sandboxes out of \
         (the operator opens private ranges with --egress-allow-private)"
    )]
    PrivateClosed {
        entry: Cidr,
        range: Cidr,
        kind: &'static str,
    },
}

/// An IPv4 network, normalised (host bits cleared).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Cidr {
        let mask = Cidr::mask_of(prefix);
        Cidr {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            prefix,
        }
    }

    fn mask_of(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        }
    }

    /// `a.b.c.d/n`, or a bare address (a /32). Host bits are cleared, as
    /// Daytona's own examples (`192.168.1.0/16`) need.
    pub fn parse(s: &str) -> Result<Cidr, PolicyError> {
        let s = s.trim();
        let bad = || PolicyError::BadCidr(s.to_string());
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, p.parse::<u8>().map_err(|_| bad())?),
            None => (s, 32),
        };
        if p > 32 {
            return Err(bad());
        }
        let addr: Ipv4Addr = a.parse().map_err(|_| bad())?;
        Ok(Cidr::new(addr, p))
    }

    pub fn first(&self) -> u32 {
        u32::from(self.addr)
    }

    pub fn last(&self) -> u32 {
        self.first() | !Cidr::mask_of(self.prefix)
    }

    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.prefix))
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Cidr::mask_of(self.prefix) == self.first()
    }

    /// Does every address of `self` lie in `other`?
    pub fn within(&self, other: &Cidr) -> bool {
        self.prefix >= other.prefix && other.contains(self.addr)
    }

    /// Do the two networks share any address?
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.within(other) || other.within(self)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl TryFrom<String> for Cidr {
    type Error = PolicyError;
    fn try_from(s: String) -> Result<Cidr, PolicyError> {
        Cidr::parse(&s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        c.to_string()
    }
}

/// Most CIDRs one allow list may hold.
pub const MAX_ALLOW_LIST: usize = 256;

/// Destinations no sandbox ever reaches, whatever its policy or the
/// operator's flags (besides the host's own addresses, the sandbox block
/// and other sandboxes, which are closed by their own rules).
pub const NEVER_REACHABLE: [(&str, &str); 4] = [
    ("0.0.0.0/8", "\"this\" network"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local, the cloud metadata address"),
    ("224.0.0.0/3", "multicast, reserved and broadcast"),
];

/// Private ranges: closed to sandboxes unless the operator opens them. An
/// allow list cannot open them: it only narrows what the operator allows.
pub const PRIVATE_RANGES: [(&str, &str); 4] = [
    ("10.0.0.0/8", "private, RFC 1918"),
    ("172.16.0.0/12", "private, RFC 1918"),
    ("192.168.0.0/16", "private, RFC 1918"),
    ("100.64.0.0/10", "shared address space, CGNAT"),
];

/// The networks of one of the tables above, with what each is.
pub fn ranges(
    list: &'static [(&'static str, &'static str)],
) -> impl Iterator<Item = (Cidr, &'static str)> {
    list.iter()
        .filter_map(|(c, kind)| Cidr::parse(c).ok().map(|c| (c, *kind)))
}

/// What a sandbox may reach beyond its own loopback.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicy {
    /// Nothing but loopback.
    #[serde(default)]
    pub block_all: bool,
    /// Egress only to these networks (when `Some`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_list: Option<Vec<Cidr>>,
}

impl NetworkPolicy {
    /// Refuses an allow list with an entry that no sandbox on this server
    /// could ever reach through it: one wholly inside a never-reachable
    /// range, or inside a private range while those are closed. (An entry
    /// that only overlaps one, like `0.0.0.0/0`, is fine: the closed part
    /// stays closed.)
    pub fn check_reachable(list: &[Cidr], allow_private: bool) -> Result<(), PolicyError> {
        for entry in list {
            if let Some((range, kind)) = ranges(&NEVER_REACHABLE).find(|(r, _)| entry.within(r)) {
                return Err(PolicyError::NeverReachable {
                    entry: *entry,
                    range,
                    kind,
                });
            }
            if allow_private {
                continue;
            }
            if let Some((range, kind)) = ranges(&PRIVATE_RANGES).find(|(r, _)| entry.within(r)) {
                return Err(PolicyError::PrivateClosed {
                    entry: *entry,
                    range,
                    kind,
                });
            }
        }
        Ok(())
    }

    /// Parses Daytona's comma-separated allow list (`"10.0.0.0/8,1.2.3.4"`).
    /// An empty or blank list means no allow list.
    pub fn parse_allow_list(s: &str) -> Result<Option<Vec<Cidr>>, PolicyError> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .collect();
        if items.is_empty() {
            return Ok(None);
        }
        if items.len() > MAX_ALLOW_LIST {
            return Err(PolicyError::TooMany { count: items.len() });
        }
        let mut out: Vec<Cidr> = items
            .into_iter()
            .map(Cidr::parse)
            .collect::<Result<_, _>>()?;
        out.sort_by_key(|c| (c.first(), c.prefix));
        out.dedup();
        // Overlapping intervals cannot share an interval set: keep the
        // widest of any nested pair.
        let mut merged: Vec<Cidr> = Vec::new();
        for c in out {
            match merged.last() {
                Some(m) if m.contains(c.addr) => {}
                _ => merged.push(c),
            }
        }
        Ok(Some(merged))
    }
}
