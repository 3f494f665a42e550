//! A minimal netlink client: just the rtnetlink calls a network slot needs
//! (veth pairs, links up, addresses, routes) and the nf_tables set-element
//! batches the firewall changes at runtime. Messages are built by hand:
//! a header, a fixed struct, then 4-byte-aligned attributes. No shelling
//! out to `ip` or `nft` on the sandbox create path.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum NetlinkError {
    #[error("netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("netlink {op}: {source}")]
    Kernel {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("netlink {op}: malformed answer")]
    Malformed { op: &'static str },
}

impl NetlinkError {
    /// The errno the kernel answered with, if it answered with one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetlinkError::Kernel { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RTN_UNICAST: u8 = 1;
const RTNH_F_ONLINK: u32 = 4;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_GETTABLE: u16 = 1;
const NFTA_TABLE_NAME: u16 = 1;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_KEY_END: u16 = 10;
const NFTA_DATA_VALUE: u16 = 1;

/// One netlink message under construction.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        Msg {
            buf,
            nests: Vec::new(),
        }
    }

    /// The fixed family header (ifinfomsg, ifaddrmsg, rtmsg, nfgenmsg).
    fn fixed(mut self, bytes: &[u8]) -> Msg {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Msg {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Msg {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        self.attr(ty, &v)
    }

    fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    fn begin(&mut self, ty: u16) -> &mut Msg {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Raw bytes inside a nest (a peer's ifinfomsg).
    fn raw(&mut self, bytes: &[u8]) -> &mut Msg {
        self.buf.extend_from_slice(bytes);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn end(&mut self) -> &mut Msg {
        if let Some(at) = self.nests.pop() {
            let len = (self.buf.len() - at) as u16;
            self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

fn nfgenmsg(family: u8, res_id_be: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[0] = family;
    b[2..4].copy_from_slice(&res_id_be.to_be_bytes());
    b
}

/// A netlink socket, bound to the network namespace of the thread that
/// opened it (for its whole life).
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// NETLINK_ROUTE: links, addresses, routes.
    pub fn route() -> Result<Netlink, NetlinkError> {
        Netlink::open(libc::NETLINK_ROUTE)
    }

    /// NETLINK_NETFILTER: nf_tables.
    pub fn netfilter() -> Result<Netlink, NetlinkError> {
        Netlink::open(libc::NETLINK_NETFILTER)
    }

    fn open(proto: i32) -> Result<Netlink, NetlinkError> {
        // SAFETY: socket(2) with constant arguments; the fd is owned below.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; zeroed is valid (pid 0:
        // the kernel assigns one).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: bind reads exactly size_of::<sockaddr_nl>() bytes of `sa`.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
        }
        Ok(Netlink { fd, seq: 1 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends `bytes` (one message or a batch) and waits for `acks` acks;
    /// the first error the kernel reports is returned.
    fn exchange(
        &mut self,
        op: &'static str,
        bytes: &[u8],
        acks: usize,
    ) -> Result<(), NetlinkError> {
        // SAFETY: send reads `bytes.len()` bytes from a live slice.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len(), 0) };
        if n < 0 {
            return Err(NetlinkError::Kernel {
                op,
                source: std::io::Error::last_os_error(),
            });
        }
        let mut buf = vec![0u8; 8192];
        let mut seen = 0;
        let mut first_err = None;
        while seen < acks {
            // SAFETY: recv writes at most buf.len() bytes into buf.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Kernel { op, source: e });
            }
            let mut at = 0usize;
            let n = n as usize;
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
                let ty = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                if len < 16 || at + len > n {
                    return Err(NetlinkError::Malformed { op });
                }
                if ty == NLMSG_ERROR {
                    if len < 20 {
                        return Err(NetlinkError::Malformed { op });
                    }
                    let code =
                        i32::from_ne_bytes(buf[at + 16..at + 20].try_into().unwrap_or_default());
                    seen += 1;
                    if code != 0 && first_err.is_none() {
                        first_err = Some(NetlinkError::Kernel {
                            op,
                            source: std::io::Error::from_raw_os_error(-code),
                        });
                        // After an error a batch is aborted: no more acks.
                        seen = acks;
                    }
                } else if ty == NLMSG_DONE {
                    seen = acks;
                }
                at += align4(len);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn request(&mut self, op: &'static str, msg: Msg) -> Result<(), NetlinkError> {
        let bytes = msg.finish();
        self.exchange(op, &bytes, 1)
    }

    /// Creates a veth pair: `host` here, `peer` inside the namespace `ns`.
    pub fn add_veth(&mut self, host: &str, peer: &str, ns: &OwnedFd) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut m = Msg::new(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
        )
        .fixed(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, host)
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .begin(IFLA_INFO_DATA)
            .begin(VETH_INFO_PEER)
            .raw(&ifinfomsg(0, 0, 0))
            .attr_str(IFLA_IFNAME, peer)
            .attr_u32(IFLA_NET_NS_FD, ns.as_raw_fd() as u32)
            .end()
            .end()
            .end();
        self.request("creating a veth pair", m)
    }

    /// Deletes the link `name` (for a veth, both ends); a link that is
    /// already gone is not an error.
    pub fn del_link(&mut self, name: &str) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut m =
            Msg::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq).fixed(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, name);
        match self.request("deleting a link", m) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// Brings the link with this index up.
    pub fn link_up(&mut self, index: i32) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let up = libc::IFF_UP as u32;
        let m =
            Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq).fixed(&ifinfomsg(index, up, up));
        self.request("bringing a link up", m)
    }

    /// Adds `addr/prefix` to the link.
    pub fn add_address(
        &mut self,
        index: i32,
        addr: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut fixed = [0u8; 8];
        fixed[0] = libc::AF_INET as u8;
        fixed[1] = prefix;
        fixed[3] = RT_SCOPE_UNIVERSE;
        fixed[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
        let mut m = Msg::new(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
        )
        .fixed(&fixed);
        m.attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        self.request("adding an address", m)
    }

    /// Adds a route to `dst/dst_len` out of link `oif`, through `gateway`
    /// (on-link) when given, else directly on the link.
    pub fn add_route(
        &mut self,
        dst: Ipv4Addr,
        dst_len: u8,
        oif: i32,
        gateway: Option<Ipv4Addr>,
    ) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let mut fixed = [0u8; 12];
        fixed[0] = libc::AF_INET as u8;
        fixed[1] = dst_len;
        fixed[4] = RT_TABLE_MAIN;
        fixed[5] = RTPROT_STATIC;
        fixed[6] = if gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        fixed[7] = RTN_UNICAST;
        let flags = if gateway.is_some() { RTNH_F_ONLINK } else { 0 };
        fixed[8..12].copy_from_slice(&flags.to_ne_bytes());
        let mut m = Msg::new(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            seq,
        )
        .fixed(&fixed);
        if dst_len > 0 {
            m.attr(RTA_DST, &dst.octets());
        }
        m.attr_u32(RTA_OIF, oif as u32);
        if let Some(gw) = gateway {
            m.attr(RTA_GATEWAY, &gw.octets());
        }
        self.request("adding a route", m)
    }

    /// Does the `inet` nf_tables table `name` exist?
    pub fn table_exists(&mut self, name: &str) -> Result<bool, NetlinkError> {
        let seq = self.next_seq();
        let mut m = Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE,
            NLM_F_REQUEST | NLM_F_ACK,
            seq,
        )
        .fixed(&nfgenmsg(NFPROTO_INET, 0));
        m.attr_str(NFTA_TABLE_NAME, name);
        match self.request("looking up a firewall table", m) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Adds (`add`) or deletes elements of an nf_tables set in one atomic
    /// batch. Each element is a key and, for interval sets, an inclusive
    /// end key.
    pub fn set_elements(
        &mut self,
        add: bool,
        table: &str,
        set: &str,
        elements: &[SetElement],
    ) -> Result<(), NetlinkError> {
        if elements.is_empty() {
            return Ok(());
        }
        let mut bytes = Vec::new();
        let begin = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, self.next_seq())
            .fixed(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES));
        bytes.extend(begin.finish());
        let (ty, flags) = if add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        let mut m = Msg::new((NFNL_SUBSYS_NFTABLES << 8) | ty, flags, self.next_seq())
            .fixed(&nfgenmsg(NFPROTO_INET, 0));
        m.attr_str(NFTA_SET_ELEM_LIST_TABLE, table)
            .attr_str(NFTA_SET_ELEM_LIST_SET, set)
            .begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        for e in elements {
            m.begin(NFTA_LIST_ELEM)
                .begin(NFTA_SET_ELEM_KEY)
                .attr(NFTA_DATA_VALUE, &e.key)
                .end();
            if let Some(end) = &e.key_end {
                m.begin(NFTA_SET_ELEM_KEY_END)
                    .attr(NFTA_DATA_VALUE, end)
                    .end();
            }
            m.end();
        }
        m.end();
        bytes.extend(m.finish());
        let end = Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST, self.next_seq())
            .fixed(&nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES));
        bytes.extend(end.finish());
        self.exchange(
            if add {
                "adding firewall set elements"
            } else {
                "deleting firewall set elements"
            },
            &bytes,
            1,
        )
    }
}

/// One nf_tables set element: the key bytes in network order (concatenated
/// fields each padded to 4 bytes) and, for interval sets, the end key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetElement {
    pub key: Vec<u8>,
    pub key_end: Option<Vec<u8>>,
}

/// The index of link `name` in the network namespace of `sock`'s owner
/// (any socket opened in that namespace).
pub fn link_index(sock: &OwnedFd, name: &str) -> Result<i32, NetlinkError> {
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(libc::IFNAMSIZ - 1).enumerate() {
        ifr.ifr_name[i] = b as libc::c_char;
    }
    // SAFETY: SIOCGIFINDEX reads the name and writes the index in our ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFINDEX, &mut ifr) } < 0 {
        return Err(NetlinkError::Kernel {
            op: "looking up a link",
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    Ok(unsafe { ifr.ifr_ifru.ifru_ifindex })
}

/// A datagram socket in the calling thread's network namespace, for
/// `link_index`.
pub fn ioctl_socket() -> Result<OwnedFd, NetlinkError> {
    // SAFETY: socket(2) with constant arguments; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(NetlinkError::Socket(std::io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_aligned_and_nests_measured() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST, 7).fixed(&ifinfomsg(0, 0, 0));
        m.attr_str(IFLA_IFNAME, "abcde")
            .begin(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .end();
        let b = m.finish();
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        assert_eq!(b.len() % 4, 0);
        // ifname attr: 4 + 6 bytes, padded to 12.
        assert_eq!(u16::from_ne_bytes([b[32], b[33]]), 10);
        // linkinfo nest holds one attr of 4 + 5 → 12 bytes, plus its header.
        assert_eq!(u16::from_ne_bytes([b[44], b[45]]), 16);
        assert_eq!(
            u16::from_ne_bytes([b[46], b[47]]),
            IFLA_LINKINFO | NLA_F_NESTED
        );
    }
}
