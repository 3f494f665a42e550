//! Per-sandbox networking: every sandbox gets its own network namespace
//! with loopback and one veth pair routed by the host (a /32 per sandbox,
//! the instance's gateway address on every host-side veth, NAT for egress).
//! There is no shared bridge: sandboxes share no L2 segment, so one cannot
//! ARP-spoof or even see another.
//!
//! Policy lives on the host side, in one nftables table per runner
//! instance (`inet atoll_<instance>`), where root in a sandbox cannot touch
//! it: nothing but replies enters a sandbox; nothing from a sandbox reaches
//! the host itself on any of its addresses or ports (API, runner, database,
//! SSH, DNAT'd ports), link-local addresses (169.254.169.254), loopback or
//! multicast; private ranges (RFC 1918, 100.64/10) stay closed unless the
//! operator opens them; spoofed sources are dropped; each sandbox has a cap
//! on its tracked connections; and per-sandbox policy (`networkBlockAll`,
//! `networkAllowList`) is membership in the table's sets, changed live over
//! netlink.
//!
//! Network slots (namespace + veth pair + addresses + routes) are prepared
//! ahead of time by a background thread, so a create only takes one. An
//! unused slot lives only as a namespace descriptor held by this process:
//! if the runner dies, the kernel removes it. A used slot lives exactly as
//! long as its sandbox's processes.

use crate::netlink::{self, Netlink, NetlinkError, SetElement};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("network block {0} is in use by another atoll server on this host")]
    BlockInUse(Cidr),
    #[error(
        "no free network block of /{prefix} left in {range}: give this server a block with --network <CIDR>"
    )]
    NoBlock { range: Cidr, prefix: u8 },
    #[error(
        "the sandbox network is full: all {capacity} addresses of {block} are taken by running sandboxes; \
         stop or delete some, or give the server a larger block (--network)"
    )]
    Full { block: Cidr, capacity: u32 },
    #[error("network block {0} is too small: use /28 or larger")]
    BlockTooSmall(Cidr),
    #[error("loading the firewall ruleset with nft: {0}")]
    Nft(String),
    #[error("preparing a network namespace: {0}")]
    Namespace(std::io::Error),
}

fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Io {
        what,
        path: path.into(),
        source,
    }
}

pub use atoll_runtime_api::net::{
    ranges, Cidr, NetworkPolicy, PolicyError, MAX_ALLOW_LIST, NEVER_REACHABLE, PRIVATE_RANGES,
};

/// A sandbox's place on the network: its address and host-side veth.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Lease {
    pub ip: Ipv4Addr,
    pub host_if: String,
    #[serde(default)]
    pub policy: NetworkPolicy,
}

/// A prepared slot: a namespace with its veth pair, addresses and routes.
pub struct Slot {
    pub ns: OwnedFd,
    pub ip: Ipv4Addr,
    pub host_if: String,
}

#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// The addresses this runner gives sandboxes; `None` picks a free
    /// /`AUTO_PREFIX` of `AUTO_RANGE`.
    pub block: Option<Cidr>,
    /// Where block locks live (`/run/atoll/net`): a block belongs to the
    /// runner holding its lock.
    pub lock_dir: PathBuf,
    /// Slots kept ready.
    pub pool_size: usize,
    /// Let sandboxes reach `PRIVATE_RANGES`. The host itself, the
    /// never-reachable ranges and other sandboxes stay closed.
    pub allow_private: bool,
    /// Most connections one sandbox may have in the host's connection
    /// tracking table at once (new ones past it are refused); 0: no cap.
    pub max_connections: u32,
}

/// Most tracked connections per sandbox unless configured.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 4096;

/// Where automatically chosen blocks come from, and their size: a /20
/// holds 4,093 sandboxes (network, gateway and broadcast addresses aside),
/// and the /12 holds 256 such blocks for runners sharing a host.
pub const AUTO_RANGE: &str = "10.208.0.0/12";
pub const AUTO_PREFIX: u8 = 20;
/// Every host-side veth of every instance starts with this.
pub const IF_PREFIX: &str = "atl";

/// Which offsets of the block are taken. Offsets never handed out are
/// implied by a cursor, so a block of any size costs memory only for the
/// addresses in use and those given back.
struct Addresses {
    /// The next never-used offset: every offset from here to `end` is free
    /// unless `used` has it (sandboxes adopted at start).
    next: u32,
    /// One past the last usable offset (the broadcast address's).
    end: u32,
    /// Offsets given back, oldest first. They are reused only once no
    /// never-used offset is left, and then oldest first: a stopped
    /// sandbox's address rests as long as possible.
    released: VecDeque<u32>,
    used: HashSet<u32>,
}

impl Addresses {
    /// Offset 0 is the network, 1 the gateway, the last the broadcast.
    fn new(block: Cidr, used: HashSet<u32>) -> Addresses {
        Addresses {
            next: 2,
            end: (block.size() - 1) as u32,
            released: VecDeque::new(),
            used,
        }
    }

    fn capacity(&self) -> u32 {
        self.end.saturating_sub(2)
    }

    fn take(&mut self) -> Option<u32> {
        while self.next < self.end {
            let off = self.next;
            self.next += 1;
            if self.used.insert(off) {
                return Some(off);
            }
        }
        let off = self.released.pop_front()?;
        self.used.insert(off);
        Some(off)
    }

    fn give_back(&mut self, off: u32) {
        if self.used.remove(&off) {
            self.released.push_back(off);
        }
    }

    fn any_free(&self) -> bool {
        !self.released.is_empty() || (self.next..self.end).any(|o| !self.used.contains(&o))
    }
}

/// What the firewall lets sandboxes reach beyond per-sandbox policy.
#[derive(Debug, Clone)]
struct Egress {
    allow_private: bool,
    max_connections: u32,
    /// The resolvers of the sandboxes' `/etc/resolv.conf`: reachable on
    /// port 53 even inside a closed range (a cloud VPC's resolver often
    /// is private).
    resolvers: Vec<Ipv4Addr>,
}

struct Inner {
    block: Cidr,
    gateway: Ipv4Addr,
    table: String,
    if_prefix: String,
    egress: Egress,
    addresses: Mutex<Addresses>,
    /// Elements currently in the firewall sets, per sandbox address.
    rules: Mutex<HashMap<Ipv4Addr, NetworkPolicy>>,
    host: Mutex<(Netlink, OwnedFd)>,
    nft: Mutex<Netlink>,
    pool: Mutex<Vec<Slot>>,
    wake: Condvar,
    /// Slots the filler is building now (each holds an address).
    building: std::sync::atomic::AtomicUsize,
    /// Signalled (with `pool`) when the filler finishes a slot, or fails to.
    built: Condvar,
    want: usize,
    _lock: File,
}

/// The runner's network: address block, slot pool and firewall.
#[derive(Clone)]
pub struct Network {
    inner: Arc<Inner>,
}

impl Network {
    /// Claims an address block, installs the firewall (re-adding the rules
    /// of `live` sandboxes, which keep their addresses) and starts filling
    /// the slot pool.
    pub fn start(
        cfg: &NetworkConfig,
        instance: &str,
        state_dir: &Path,
        live: &[Lease],
    ) -> Result<Network, NetworkError> {
        let if_prefix = format!("{IF_PREFIX}{}", &instance[..instance.len().min(6)]);
        let (block, lock) = claim_block(cfg, instance, state_dir, &if_prefix, live)?;
        if block.prefix > 28 {
            return Err(NetworkError::BlockTooSmall(block));
        }
        let gateway = Ipv4Addr::from(block.first() + 1);
        let mut used = HashSet::new();
        let mut rules = HashMap::new();
        for l in live {
            if block.contains(l.ip) {
                used.insert(u32::from(l.ip) - block.first());
                rules.insert(l.ip, l.policy.clone());
            }
        }
        let table = format!("atoll_{instance}");
        let egress = Egress {
            allow_private: cfg.allow_private,
            max_connections: cfg.max_connections,
            resolvers: ipv4_nameservers(sandbox_resolv_conf()),
        };
        write_sysctl("/proc/sys/net/ipv4/ip_forward", "1")?;
        load_ruleset(&ruleset(&table, &if_prefix, block, &egress, &rules))?;
        remove_stale_tables(instance, &cfg.lock_dir);
        let host = (Netlink::route()?, netlink::ioctl_socket()?);
        let inner = Arc::new(Inner {
            block,
            gateway,
            table,
            if_prefix,
            egress,
            addresses: Mutex::new(Addresses::new(block, used)),
            rules: Mutex::new(rules),
            host: Mutex::new(host),
            nft: Mutex::new(Netlink::netfilter()?),
            pool: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            building: std::sync::atomic::AtomicUsize::new(0),
            built: Condvar::new(),
            want: cfg.pool_size,
            _lock: lock,
        });
        let filler = Arc::downgrade(&inner);
        let spawned = std::thread::Builder::new()
            .name("atoll-net-pool".into())
            .spawn(move || fill_pool(filler));
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no network pool thread; slots are made on demand");
        }
        tracing::info!(
            block = %block,
            gateway = %gateway,
            allow_private = cfg.allow_private,
            max_connections = cfg.max_connections,
            "sandbox network ready"
        );
        Ok(Network { inner })
    }

    /// Fails at once with `NetworkError::Full` when no address is left (no
    /// ready slot, no free address), so a create can be refused before it
    /// prepares anything.
    pub fn check_capacity(&self) -> Result<(), NetworkError> {
        if !lock(&self.inner.pool).is_empty() || self.inner.is_building() {
            return Ok(());
        }
        let a = lock(&self.inner.addresses);
        if a.any_free() {
            return Ok(());
        }
        Err(NetworkError::Full {
            block: self.inner.block,
            capacity: a.capacity(),
        })
    }

    /// How many sandboxes the block holds at once.
    pub fn slots(&self) -> u32 {
        lock(&self.inner.addresses).capacity()
    }

    /// A ready slot from the pool, or a fresh one if the pool is empty.
    /// When the only free addresses are held by slots the filler is
    /// building, waits for those slots rather than calling the network
    /// full.
    pub fn take(&self) -> Result<Slot, NetworkError> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let ready = lock(&self.inner.pool).pop();
            self.inner.wake.notify_one();
            if let Some(s) = ready {
                return Ok(s);
            }
            match self.inner.make_slot() {
                Err(NetworkError::Full { .. })
                    if self.inner.is_building() && std::time::Instant::now() < deadline =>
                {
                    let g = lock(&self.inner.pool);
                    if g.is_empty() && self.inner.is_building() {
                        let _ = self
                            .inner
                            .built
                            .wait_timeout(g, std::time::Duration::from_millis(500));
                    }
                }
                other => return other,
            }
        }
    }

    /// Applies `policy` to the sandbox at `ip`, replacing what it had.
    pub fn apply(&self, ip: Ipv4Addr, policy: &NetworkPolicy) -> Result<(), NetworkError> {
        let mut rules = lock(&self.inner.rules);
        let old = rules.get(&ip).cloned().unwrap_or_default();
        if &old == policy {
            return Ok(());
        }
        let mut want = rules.clone();
        if policy == &NetworkPolicy::default() {
            want.remove(&ip);
        } else {
            want.insert(ip, policy.clone());
        }
        if let Err(e) = self.write_elements(ip, &old, policy) {
            // The table was changed or removed behind our back (`nft flush
            // ruleset`): rebuild it whole from what we know.
            tracing::warn!(error = %e, "firewall update failed; reloading the whole table");
            self.inner.reload(&want)?;
        }
        *rules = want;
        Ok(())
    }

    /// The set elements that take `ip` from `old` to `new`: new
    /// restrictions first, then the old ones dropped.
    fn write_elements(
        &self,
        ip: Ipv4Addr,
        old: &NetworkPolicy,
        new: &NetworkPolicy,
    ) -> Result<(), NetworkError> {
        let (old_el, new_el) = (elements(ip, old), elements(ip, new));
        let mut nft = lock(&self.inner.nft);
        for (set, add) in only_in(&new_el, &old_el) {
            nft.set_elements(true, &self.inner.table, set, &add)?;
        }
        for (set, del) in only_in(&old_el, &new_el) {
            nft.set_elements(false, &self.inner.table, set, &del)?;
        }
        Ok(())
    }

    /// Gives a sandbox's address back (its namespace is gone or going) and
    /// clears its rules first, so the next holder starts clean; if they
    /// cannot be cleared the address stays taken. The host end of its veth
    /// is deleted now (taking the peer with it) rather than when the kernel
    /// gets round to the dying namespace, so the address is reusable at once.
    pub fn release(&self, ip: Ipv4Addr) -> Result<(), NetworkError> {
        self.apply(ip, &NetworkPolicy::default())?;
        let block = self.inner.block;
        if block.contains(ip) {
            let off = u32::from(ip) - block.first();
            let name = self.inner.if_name(off);
            if let Err(e) = lock(&self.inner.host).0.del_link(&name) {
                tracing::warn!(error = %e, veth = %name, "deleting a stopped sandbox's veth failed");
            }
            lock(&self.inner.addresses).give_back(off);
            self.inner.wake.notify_one();
        }
        Ok(())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Elements = HashMap<&'static str, Vec<SetElement>>;

/// Per set, the elements of `a` that `b` lacks.
fn only_in(a: &Elements, b: &Elements) -> Vec<(&'static str, Vec<SetElement>)> {
    a.iter()
        .map(|(set, els)| {
            let lacking = els
                .iter()
                .filter(|e| !b.get(set).is_some_and(|o| o.contains(e)))
                .cloned()
                .collect();
            (*set, lacking)
        })
        .collect()
}

/// The firewall set elements a policy needs, per set.
fn elements(ip: Ipv4Addr, p: &NetworkPolicy) -> Elements {
    let mut out = Elements::new();
    let key = ip.octets().to_vec();
    if p.block_all {
        out.entry("blocked")
            .or_default()
            .push(SetElement { key, key_end: None });
    } else if let Some(list) = &p.allow_list {
        out.entry("limited").or_default().push(SetElement {
            key: key.clone(),
            key_end: None,
        });
        for c in list {
            let mut start = key.clone();
            start.extend(Ipv4Addr::from(c.first()).octets());
            let mut end = key.clone();
            end.extend(Ipv4Addr::from(c.last()).octets());
            out.entry("allowed").or_default().push(SetElement {
                key: start,
                key_end: Some(end),
            });
        }
    }
    out
}

/// The instance's nftables table, rebuilt whole at start.
///
/// - `prerouting` (before any DNAT of the host's): a new connection from
///   any sandbox to an address of the host (any interface's, not just the
///   gateway) is dropped, so a port the host DNATs elsewhere is closed too;
/// - `input`: from sandbox veths only replies reach the host;
/// - `forward`: nothing but replies enters a sandbox (any instance's), and
///   this instance's sandboxes go through `egress`: spoofed sources, IPv6,
///   `blocked` sources, allow lists (`limited` sources pass only to
///   `allowed`), the resolvers on port 53, never-reachable ranges and the
///   sandbox block, private ranges unless opened; what passes goes to
///   `admit`, which caps each source's tracked connections.
fn ruleset(
    table: &str,
    if_prefix: &str,
    block: Cidr,
    egress: &Egress,
    rules: &HashMap<Ipv4Addr, NetworkPolicy>,
) -> String {
    let mut blocked = Vec::new();
    let mut limited = Vec::new();
    let mut allowed = Vec::new();
    let mut ips: Vec<&Ipv4Addr> = rules.keys().collect();
    ips.sort();
    for ip in ips {
        let p = &rules[ip];
        if p.block_all {
            blocked.push(ip.to_string());
        } else if let Some(list) = &p.allow_list {
            limited.push(ip.to_string());
            for c in list {
                allowed.push(format!("{ip} . {c}"));
            }
        }
    }
    let els = |v: &[String]| {
        if v.is_empty() {
            String::new()
        } else {
            format!(" elements = {{ {} }};", v.join(", "))
        }
    };
    let (b, l, a) = (els(&blocked), els(&limited), els(&allowed));
    let resolvers: Vec<String> = egress.resolvers.iter().map(|r| r.to_string()).collect();
    let r = els(&resolvers);
    let cidrs = |list: &[(&str, &str)]| list.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ");
    let never = cidrs(&NEVER_REACHABLE);
    let private = if egress.allow_private {
        String::new()
    } else {
        format!("\n    ip daddr {{ {} }} drop", cidrs(&PRIVATE_RANGES))
    };
    let cap = match egress.max_connections {
        0 => String::new(),
        n => format!(
            "\n    meta l4proto tcp add @connections {{ ip saddr ct count over {n} }} reject with tcp reset\
             \n    meta l4proto != tcp add @connections {{ ip saddr ct count over {n} }} reject"
        ),
    };
    format!(
        r#"table inet {table}
delete table inet {table}
table inet {table} {{
  set blocked {{ type ipv4_addr;{b} }}
  set limited {{ type ipv4_addr;{l} }}
  set allowed {{ type ipv4_addr . ipv4_addr; flags interval;{a} }}
  set resolvers {{ type ipv4_addr;{r} }}
  set connections {{ type ipv4_addr; size 65535; flags dynamic; }}
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    iifname "{IF_PREFIX}*" ct state != {{ established, related }} fib daddr type local drop
  }}
  chain input {{
    type filter hook input priority filter - 10; policy accept;
    iifname "{IF_PREFIX}*" ct state established,related accept
    iifname "{IF_PREFIX}*" drop
  }}
  chain forward {{
    type filter hook forward priority filter - 10; policy accept;
    oifname "{if_prefix}*" ip daddr @blocked drop
    oifname "{IF_PREFIX}*" ct state established,related accept
    oifname "{IF_PREFIX}*" drop
    iifname "{if_prefix}*" jump egress
  }}
  chain egress {{
    meta nfproto != ipv4 drop
    fib saddr . iif oif missing drop
    ip saddr != {block} drop
    ip saddr @blocked drop
    ip saddr @limited ip saddr . ip daddr != @allowed drop
    ip daddr @resolvers meta l4proto {{ tcp, udp }} th dport 53 goto admit
    ip daddr {{ {never}, {block} }} drop{private}
    goto admit
  }}
  chain admit {{
    ct state != new accept{cap}
    accept
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    iifname "{if_prefix}*" oifname != "{IF_PREFIX}*" masquerade
  }}
}}
"#
    )
}

fn load_ruleset(text: &str) -> Result<(), NetworkError> {
    let nft = ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| NetworkError::Nft("nft not found (install the nftables package)".into()))?;
    let mut child = std::process::Command::new(nft)
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| NetworkError::Nft(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| NetworkError::Nft(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| NetworkError::Nft(e.to_string()))?;
    if !out.status.success() {
        return Err(NetworkError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(())
}

/// Takes an exclusive `flock` on `f` without waiting; true if taken.
fn flock_nb(f: &File) -> bool {
    // SAFETY: flock on a descriptor we own; no memory is passed.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Instances whose runner holds its block lock right now (the lock file
/// names its holder).
fn lock_holders(lock_dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(lock_dir).into_iter().flatten().flatten() {
        let Ok(f) = File::open(e.path()) else {
            continue;
        };
        if flock_nb(&f) {
            // Nobody holds it; ours is released when `f` closes.
            continue;
        }
        if let Ok(name) = std::fs::read_to_string(e.path()) {
            out.push(name.trim().to_string());
        }
    }
    out
}

/// Removes the tables of runners that are gone: a table is stale when its
/// runner holds no block lock and no host interface carries its instance's
/// prefix (a running sandbox outlives its runner, and keeps its veth). A
/// runner killed while nothing was running leaves its table behind;
/// without this, every one of them would stay hooked into every packet's
/// path.
fn remove_stale_tables(instance: &str, lock_dir: &Path) {
    let Ok(out) = std::process::Command::new(
        ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or("nft"),
    )
    .args(["list", "tables", "inet"])
    .output() else {
        return;
    };
    let links: Vec<String> = std::fs::read_dir("/sys/class/net")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let holders = lock_holders(lock_dir);
    let listing = String::from_utf8_lossy(&out.stdout);
    for other in stale_tables(&listing, instance, &links)
        .into_iter()
        .filter(|x| !holders.contains(x))
    {
        tracing::info!(table = %format!("atoll_{other}"), "removing the firewall table of a runner that is gone");
        drop_table(&other);
    }
}

/// The instances among `nft list tables` whose table is stale (see
/// `remove_stale_tables`).
fn stale_tables(listing: &str, instance: &str, links: &[String]) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.trim().strip_prefix("table inet atoll_"))
        .map(str::trim)
        .filter(|x| x.len() == 12 && x.bytes().all(|b| b.is_ascii_hexdigit()))
        .filter(|x| *x != instance)
        .filter(|x| {
            let prefix = format!("{IF_PREFIX}{}", &x[..6]);
            !links.iter().any(|l| l.starts_with(&prefix))
        })
        .map(str::to_string)
        .collect()
}

/// Removes the instance's table (a runner that turns networking off, and
/// tests).
pub fn drop_table(instance: &str) {
    let t = format!("atoll_{instance}");
    let _ = load_ruleset(&format!("table inet {t}\ndelete table inet {t}\n"));
}

fn write_sysctl(path: &str, value: &str) -> Result<(), NetworkError> {
    let p = Path::new(path);
    if std::fs::read_to_string(p).is_ok_and(|v| v.trim() == value) {
        return Ok(());
    }
    std::fs::write(p, value).map_err(io_err("writing", p))
}

/// Picks this runner's address block and takes its lock: the configured
/// one, else the one it had before, else the first free block of
/// `AUTO_RANGE` that no other runner holds and no host route overlaps. A
/// block counts as held when any held lock names a block overlapping it,
/// so runners with different block sizes (or an explicit `--network`
/// inside the automatic range) never share addresses.
fn claim_block(
    cfg: &NetworkConfig,
    instance: &str,
    state_dir: &Path,
    if_prefix: &str,
    live: &[Lease],
) -> Result<(Cidr, File), NetworkError> {
    std::fs::create_dir_all(&cfg.lock_dir).map_err(io_err("creating", &cfg.lock_dir))?;
    let remembered_path = state_dir.join("network-block");
    let remembered = std::fs::read_to_string(&remembered_path)
        .ok()
        .and_then(|s| Cidr::parse(&s).ok());
    let try_lock = |c: Cidr| -> Result<Option<File>, NetworkError> {
        let path = cfg.lock_dir.join(format!("{}-{}.lock", c.addr, c.prefix));
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        if !flock_nb(&f) || overlapping_lock_held(&cfg.lock_dir, c, &path) {
            return Ok(None);
        }
        // Who holds it: a starting runner keeps this holder's table.
        let mut named = &f;
        let _ = f.set_len(0);
        let _ = named.write_all(instance.as_bytes());
        Ok(Some(f))
    };
    let remember = |c: Cidr| -> Result<(), NetworkError> {
        std::fs::write(&remembered_path, c.to_string()).map_err(io_err("writing", &remembered_path))
    };
    if let Some(c) = cfg.block {
        let f = try_lock(c)?.ok_or(NetworkError::BlockInUse(c))?;
        remember(c)?;
        return Ok((c, f));
    }
    if let Some(c) = remembered.or_else(|| live.first().map(|l| Cidr::new(l.ip, AUTO_PREFIX))) {
        if let Some(f) = try_lock(c)? {
            return Ok((c, f));
        }
    }
    let range = Cidr::parse(AUTO_RANGE)?;
    let routes = host_routes();
    let step = 1u32 << (32 - u32::from(AUTO_PREFIX));
    let mut start = range.first();
    while start <= range.last() {
        let c = Cidr::new(Ipv4Addr::from(start), AUTO_PREFIX);
        // Another runner's sandboxes (which outlive it), or a network the
        // host reaches through some interface: addresses there are taken.
        let busy = routes.iter().any(|(dst, ifname)| {
            dst.prefix > 0 && dst.overlaps(&c) && !ifname.starts_with(if_prefix)
        });
        if !busy {
            if let Some(f) = try_lock(c)? {
                remember(c)?;
                return Ok((c, f));
            }
        }
        start += step;
    }
    Err(NetworkError::NoBlock {
        range,
        prefix: AUTO_PREFIX,
    })
}

/// Is a lock other than `own` held that names a block overlapping `c`?
/// (Probing a lock takes it for an instant, as `lock_holders` does.)
fn overlapping_lock_held(lock_dir: &Path, c: Cidr, own: &Path) -> bool {
    std::fs::read_dir(lock_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path() != own)
        .filter(|e| {
            lock_file_block(&e.file_name().to_string_lossy()).is_some_and(|b| b.overlaps(&c))
        })
        .any(|e| File::open(e.path()).is_ok_and(|f| !flock_nb(&f)))
}

/// The block a lock file is named for (`10.213.0.0-20.lock`).
fn lock_file_block(name: &str) -> Option<Cidr> {
    let (addr, prefix) = name.strip_suffix(".lock")?.rsplit_once('-')?;
    Cidr::parse(&format!("{addr}/{prefix}")).ok()
}

/// Destinations and interfaces of the host's IPv4 routes.
fn host_routes() -> Vec<(Cidr, String)> {
    parse_routes(&std::fs::read_to_string("/proc/net/route").unwrap_or_default())
}

/// `/proc/net/route`: a header line, then `Iface Destination Gateway Flags
/// RefCnt Use Metric Mask …` with destination and mask as native-endian
/// hex u32s.
fn parse_routes(text: &str) -> Vec<(Cidr, String)> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let hex = |i: usize| -> Option<Ipv4Addr> {
                let v = u32::from_str_radix(f.get(i)?, 16).ok()?;
                Some(Ipv4Addr::from(v.to_le_bytes()))
            };
            let (dst, mask) = (hex(1)?, hex(7)?);
            let prefix = u32::from(mask).leading_ones() as u8;
            Some((Cidr::new(dst, prefix), f.first()?.to_string()))
        })
        .collect()
}

impl Inner {
    fn reload(&self, rules: &HashMap<Ipv4Addr, NetworkPolicy>) -> Result<(), NetworkError> {
        load_ruleset(&ruleset(
            &self.table,
            &self.if_prefix,
            self.block,
            &self.egress,
            rules,
        ))
    }

    /// The host end of the veth of the sandbox at offset `off`.
    fn if_name(&self, off: u32) -> String {
        format!("{}{off:04x}", self.if_prefix)
    }

    /// Puts the table back if something removed it: without it, nothing
    /// isolates the sandboxes.
    fn check_table(&self) {
        let present = lock(&self.nft).table_exists(&self.table);
        if let Ok(false) = present {
            tracing::error!(table = %self.table, "the firewall table was removed; reloading it");
            let rules = lock(&self.rules).clone();
            if let Err(e) = self.reload(&rules) {
                tracing::error!(error = %e, "reloading the firewall table failed");
            }
        }
    }

    fn allocate(&self) -> Result<u32, NetworkError> {
        let mut a = lock(&self.addresses);
        a.take().ok_or(NetworkError::Full {
            block: self.block,
            capacity: a.capacity(),
        })
    }

    fn unallocate(&self, off: u32) {
        lock(&self.addresses).give_back(off);
    }

    fn make_slot(&self) -> Result<Slot, NetworkError> {
        // A leftover veth of a dying namespace can still hold a name for a
        // moment: skip such addresses (they go to the back of the queue).
        let mut last = None;
        for _ in 0..8 {
            let off = self.allocate()?;
            match self.build_slot(off) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    self.unallocate(off);
                    let exists =
                        matches!(&e, NetworkError::Netlink(n) if n.errno() == Some(libc::EEXIST));
                    if !exists {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or(NetworkError::Full {
            block: self.block,
            capacity: lock(&self.addresses).capacity(),
        }))
    }

    fn build_slot(&self, off: u32) -> Result<Slot, NetworkError> {
        let ip = Ipv4Addr::from(self.block.first() + off);
        let host_if = self.if_name(off);
        // A fresh namespace, made by a short-lived thread so this one stays
        // where it is; sockets opened there stay bound to it.
        let made = std::thread::scope(|s| {
            s.spawn(|| -> Result<(OwnedFd, Netlink, OwnedFd), NetworkError> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| NetworkError::Namespace(e.into()))?;
                // No IPv6 inside (sandboxes get IPv4 egress only): links
                // made in or moved into this namespace inherit "default".
                let _ = std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1");
                let f = File::open("/proc/thread-self/ns/net").map_err(NetworkError::Namespace)?;
                Ok((
                    OwnedFd::from(f),
                    Netlink::route()?,
                    netlink::ioctl_socket()?,
                ))
            })
            .join()
        });
        let (ns, mut inner_nl, inner_sock) = match made {
            Ok(r) => r?,
            Err(_) => {
                return Err(NetworkError::Namespace(std::io::Error::other(
                    "namespace thread panicked",
                )))
            }
        };
        {
            let mut host = lock(&self.host);
            let (nl, sock) = &mut *host;
            nl.add_veth(&host_if, "eth0", &ns)?;
            // Nor on the host end: nothing a sandbox sends (a router
            // advertisement, say) is ever processed as IPv6 by the host.
            let _ = std::fs::write(
                format!("/proc/sys/net/ipv6/conf/{host_if}/disable_ipv6"),
                "1",
            );
            let idx = netlink::link_index(sock, &host_if)?;
            nl.add_address(idx, self.gateway, 32)?;
            nl.link_up(idx)?;
            nl.add_route(ip, 32, idx, None)?;
        }
        let lo = netlink::link_index(&inner_sock, "lo")?;
        let eth = netlink::link_index(&inner_sock, "eth0")?;
        inner_nl.link_up(lo)?;
        inner_nl.add_address(eth, ip, 32)?;
        inner_nl.link_up(eth)?;
        inner_nl.add_route(Ipv4Addr::UNSPECIFIED, 0, eth, Some(self.gateway))?;
        Ok(Slot { ns, ip, host_if })
    }
}

impl Inner {
    fn is_building(&self) -> bool {
        self.building.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

fn fill_pool(inner: std::sync::Weak<Inner>) {
    use std::sync::atomic::Ordering;
    loop {
        let Some(me) = inner.upgrade() else { return };
        let short = lock(&me.pool).len() < me.want;
        if short {
            me.building.fetch_add(1, Ordering::SeqCst);
            let made = me.make_slot();
            // Pushed (or given up) and counted down under the pool's lock,
            // so a waiting `take` sees one or the other.
            let mut pool = lock(&me.pool);
            let failed = match made {
                Ok(s) => {
                    pool.push(s);
                    None
                }
                Err(e) => Some(e),
            };
            me.building.fetch_sub(1, Ordering::SeqCst);
            me.built.notify_all();
            if let Some(e) = failed {
                if matches!(e, NetworkError::Full { .. }) {
                    // Not a fault: a release wakes us.
                    tracing::debug!(error = %e, "no address for a ready network slot");
                } else {
                    tracing::warn!(error = %e, "preparing a network slot failed");
                }
                let _ = me
                    .wake
                    .wait_timeout(pool, std::time::Duration::from_secs(5));
            }
            continue;
        }
        let g = lock(&me.pool);
        // Wake up now and then to notice the runtime is gone, or the
        // firewall table removed.
        let _ = me.wake.wait_timeout(g, std::time::Duration::from_secs(2));
        if Arc::strong_count(&me) == 1 {
            // The network was dropped while we waited: its table is not
            // ours to put back.
            return;
        }
        me.check_table();
    }
}

/// A sandbox's `/etc/resolv.conf`: the host's resolvers, except loopback
/// ones (a sandbox cannot reach the host's own ports); with
/// systemd-resolved's stub on the host, its upstream list. Read once.
pub fn sandbox_resolv_conf() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        for path in ["/etc/resolv.conf", "/run/systemd/resolve/resolv.conf"] {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let usable = resolv_conf_without_loopback(&text);
            if usable.lines().any(|l| l.starts_with("nameserver")) {
                return usable;
            }
        }
        String::new()
    })
}

/// The IPv4 `nameserver`s of a resolv.conf.
fn ipv4_nameservers(text: &str) -> Vec<Ipv4Addr> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next() == Some("nameserver")).then_some(())?;
            f.next()?.parse().ok()
        })
        .collect()
}

fn resolv_conf_without_loopback(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        if f.next() == Some("nameserver") {
            let loopback = match f.next().map(str::parse::<std::net::IpAddr>) {
                Some(Ok(a)) => a.is_loopback(),
                _ => true,
            };
            if loopback {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_parse_and_normalise() {
        let c = Cidr::parse("192.168.1.0/16").unwrap();
        assert_eq!(c.to_string(), "192.168.0.0/16");
        assert_eq!(Cidr::parse("1.2.3.4").unwrap().to_string(), "1.2.3.4/32");
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().last(), u32::MAX);
        for bad in ["", "1.2.3.4/33", "1.2.3/8", "x/8", "1.2.3.4/-1", "::1/128"] {
            assert!(Cidr::parse(bad).is_err(), "{bad:?}");
        }
        assert!(c.contains("192.168.255.1".parse().unwrap()));
        assert!(!c.contains("192.169.0.1".parse().unwrap()));
    }

    #[test]
    fn allow_lists_are_deduplicated_and_nested_ranges_merged() {
        let l = NetworkPolicy::parse_allow_list(" 10.0.0.0/8, 10.1.0.0/16 ,1.2.3.4,,1.2.3.4/32")
            .unwrap()
            .unwrap();
        let s: Vec<String> = l.iter().map(|c| c.to_string()).collect();
        assert_eq!(s, ["1.2.3.4/32", "10.0.0.0/8"]);
        assert_eq!(NetworkPolicy::parse_allow_list(" , ").unwrap(), None);
        assert!(NetworkPolicy::parse_allow_list("10.0.0.0/8,nope").is_err());
    }

    #[test]
    fn policies_become_set_elements() {
        let ip: Ipv4Addr = "10.213.0.5".parse().unwrap();
        let p = NetworkPolicy {
            block_all: false,
            allow_list: Some(vec![Cidr::parse("198.51.100.0/24").unwrap()]),
        };
        let e = elements(ip, &p);
        assert_eq!(e["limited"][0].key, vec![10, 213, 0, 5]);
        assert_eq!(e["allowed"][0].key, vec![10, 213, 0, 5, 198, 51, 100, 0]);
        assert_eq!(
            e["allowed"][0].key_end,
            Some(vec![10, 213, 0, 5, 198, 51, 100, 255])
        );
        let b = elements(
            ip,
            &NetworkPolicy {
                block_all: true,
                allow_list: p.allow_list,
            },
        );
        assert_eq!(b.len(), 1);
        assert!(elements(ip, &NetworkPolicy::default()).is_empty());
    }

    #[test]
    fn the_ruleset_carries_live_policies() {
        let mut rules = HashMap::new();
        rules.insert(
            "10.213.0.2".parse().unwrap(),
            NetworkPolicy {
                block_all: true,
                allow_list: None,
            },
        );
        rules.insert(
            "10.213.0.3".parse().unwrap(),
            NetworkPolicy {
                block_all: false,
                allow_list: Some(vec![Cidr::parse("1.2.3.0/24").unwrap()]),
            },
        );
        let egress = Egress {
            allow_private: false,
            max_connections: 0,
            resolvers: vec![],
        };
        let text = ruleset(
            "atoll_x",
            "atlabc",
            Cidr::parse("10.213.0.0/22").unwrap(),
            &egress,
            &rules,
        );
        assert!(text.contains("set blocked { type ipv4_addr; elements = { 10.213.0.2 }; }"));
        assert!(text.contains("elements = { 10.213.0.3 . 1.2.3.0/24 }"));
        assert!(text.contains("ip saddr != 10.213.0.0/22 drop"));
    }

    #[test]
    fn only_tables_without_live_veths_are_stale() {
        let listing = "table inet atoll_aaaaaa000001\ntable inet atoll_bbbbbb000002\n\
                       table inet atoll_cccccc000003\ntable inet filter\ntable inet atoll_nothex\n";
        let links = ["lo".to_string(), "eth0".into(), "atlbbbbbb0002".into()];
        assert_eq!(
            stale_tables(listing, "cccccc000003", &links),
            ["aaaaaa000001"]
        );
    }

    #[test]
    fn loopback_resolvers_are_left_out() {
        let t = "# generated\nnameserver 127.0.0.53\nnameserver 10.0.0.2\nnameserver ::1\noptions edns0\nsearch lan\n";
        assert_eq!(
            resolv_conf_without_loopback(t),
            "# generated\nnameserver 10.0.0.2\noptions edns0\nsearch lan\n"
        );
    }

    #[test]
    fn host_routes_decode_proc_net_route() {
        let text = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\n\
                    atlab0002\t0200D50A\t00000000\t0001\t0\t0\t0\tFFFFFFFF\n\
                    eth1\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\n";
        let r = parse_routes(text);
        assert_eq!(
            r[0],
            (Cidr::parse("0.0.0.0/0").unwrap(), "eth0".to_string())
        );
        assert_eq!(
            r[1],
            (
                Cidr::parse("10.213.0.2/32").unwrap(),
                "atlab0002".to_string()
            )
        );
        assert_eq!(
            r[2],
            (Cidr::parse("10.0.0.0/8").unwrap(), "eth1".to_string())
        );
        assert_eq!(
            lock_file_block("10.213.16.0-20.lock"),
            Some(Cidr::parse("10.213.16.0/20").unwrap())
        );
        assert_eq!(lock_file_block("junk.lock"), None);
    }

    #[test]
    fn overlap_and_containment() {
        let c = |s| Cidr::parse(s).unwrap();
        assert!(c("10.213.4.0/22").within(&c("10.213.0.0/20")));
        assert!(!c("10.213.0.0/20").within(&c("10.213.4.0/22")));
        assert!(c("10.213.0.0/20").overlaps(&c("10.213.4.0/22")));
        assert!(c("10.213.4.0/22").overlaps(&c("10.213.0.0/20")));
        assert!(!c("10.213.16.0/20").overlaps(&c("10.213.0.0/20")));
        assert!(c("0.0.0.0/0").overlaps(&c("1.2.3.4/32")));
    }

    #[test]
    fn addresses_hand_out_never_used_ones_first_and_reuse_oldest_released() {
        let block = Cidr::parse("10.0.0.0/29").unwrap();
        // Offset 3 belongs to a sandbox adopted at start.
        let mut a = Addresses::new(block, HashSet::from([3]));
        assert_eq!(a.capacity(), 5);
        let got: Vec<u32> = std::iter::from_fn(|| a.take()).collect();
        assert_eq!(got, [2, 4, 5, 6]);
        assert!(!a.any_free());
        a.give_back(5);
        a.give_back(3);
        a.give_back(3); // twice is once
        a.give_back(7); // never handed out: ignored
        assert!(a.any_free());
        assert_eq!((a.take(), a.take(), a.take()), (Some(5), Some(3), None));
        // A /8 costs nothing up front.
        let big = Addresses::new(Cidr::parse("10.0.0.0/8").unwrap(), HashSet::new());
        assert_eq!(big.capacity(), (1 << 24) - 3);
        assert!(big.released.is_empty() && big.used.is_empty());
    }

    #[test]
    fn allow_lists_cannot_name_closed_ranges() {
        let list = |s| NetworkPolicy::parse_allow_list(s).unwrap().unwrap();
        for open in ["198.51.100.0/24", "0.0.0.0/0", "8.0.0.0/5", "1.2.3.4"] {
            NetworkPolicy::check_reachable(&list(open), false).unwrap();
        }
        for private in [
            "10.1.0.0/16",
            "172.20.0.1",
            "192.168.0.0/16",
            "100.100.0.0/16",
        ] {
            let e = NetworkPolicy::check_reachable(&list(private), false).unwrap_err();
            assert!(
                matches!(e, PolicyError::PrivateClosed { .. }),
                "{private}: {e}"
            );
            assert!(e.to_string().contains("--egress-allow-private"), "{e}");
            NetworkPolicy::check_reachable(&list(private), true).unwrap();
        }
        for never in ["169.254.169.254", "127.0.0.0/8", "224.0.0.1", "0.0.0.0/8"] {
            for allow_private in [false, true] {
                let e = NetworkPolicy::check_reachable(&list(never), allow_private).unwrap_err();
                assert!(
                    matches!(e, PolicyError::NeverReachable { .. }),
                    "{never}: {e}"
                );
            }
        }
    }

    #[test]
    fn closed_ranges_and_the_connection_cap_are_in_the_ruleset() {
        let block = Cidr::parse("10.213.0.0/20").unwrap();
        let mut egress = Egress {
            allow_private: false,
            max_connections: 4096,
            resolvers: vec!["10.255.255.53".parse().unwrap()],
        };
        let text = ruleset("atoll_x", "atlabc", block, &egress, &HashMap::new());
        assert!(text.contains(
            "ip daddr { 0.0.0.0/8, 127.0.0.0/8, 169.254.0.0/16, 224.0.0.0/3, 10.213.0.0/20 } drop"
        ));
        assert!(text.contains(
            "ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 } drop"
        ));
        assert!(text.contains("set resolvers { type ipv4_addr; elements = { 10.255.255.53 }; }"));
        assert!(text.contains("ct count over 4096 } reject with tcp reset"));
        assert!(text.contains("fib daddr type local drop"));
        egress.allow_private = true;
        egress.max_connections = 0;
        let text = ruleset("atoll_x", "atlabc", block, &egress, &HashMap::new());
        assert!(!text.contains("192.168.0.0/16"));
        assert!(!text.contains("ct count"));
        assert!(text.contains("169.254.0.0/16"));
        assert_eq!(
            ipv4_nameservers("nameserver 10.0.0.2\nnameserver ::1\n# x\nnameserver 1.1.1.1\n"),
            [
                "10.0.0.2".parse::<Ipv4Addr>().unwrap(),
                "1.1.1.1".parse().unwrap()
            ]
        );
    }
}
