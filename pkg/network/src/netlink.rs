//! A minimal rtnetlink client over a raw `NETLINK_ROUTE` socket.
//!
//! berth needs a handful of requests (create bridge/veth, add address, set up, add route, delete
//! link, dump routes/addresses). Hand-building them keeps the setup path free of an async runtime
//! and of a large dependency whose API changes every release, and costs one socket per call.
//! A socket talks to the network namespace of the thread that created it, so callers inside
//! `in_netns` get a view of the pod's namespace.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use ipnet::Ipv4Net;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_GETROUTE: u16 = 26;

const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_MASTER: u16 = 10;
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
const RTA_TABLE: u16 = 15;

const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

const NLA_F_NESTED: u16 = 0x8000;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFT_MSG_GETGEN: u16 = 16;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
const NFTA_DATA_VALUE: u16 = 1;

/// One element change of an nf_tables map, with key and data already in register layout
/// (every concatenated field padded to 4 bytes, ports big-endian).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SetElemOp {
    pub add: bool,
    pub table: String,
    pub set: String,
    pub key: Vec<u8>,
    pub data: Option<Vec<u8>>,
    pub comment: Option<String>,
}

/// One IPv4 route of the main table, as far as berth cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Route {
    pub dst: Ipv4Net,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
}

/// One IPv4 address on an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Addr {
    pub index: u32,
    pub addr: Ipv4Net,
}

/// Builds one netlink message: header placeholder, fixed struct, attributes.
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        let mut buf = vec![0u8; NLMSG_HDRLEN];
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        Self {
            buf,
            nests: Vec::new(),
        }
    }

    fn raw(&mut self, data: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(data);
        self.align();
        self
    }

    fn align(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = (4 + data.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.align();
        self
    }

    fn attr_str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut data = s.as_bytes().to_vec();
        data.push(0);
        self.attr(ty, &data)
    }

    fn attr_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_ne_bytes())
    }

    fn nest(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.attr(ty | NLA_F_NESTED, &[])
    }

    fn end(&mut self) -> &mut Self {
        if let Some(start) = self.nests.pop() {
            let len = (self.buf.len() - start) as u16;
            self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        }
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg`.
fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = libc::AF_UNSPEC as u8;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// Parses a run of `rtattr`s into (type without flags, payload).
fn attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 4 {
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff;
        if len < 4 || len > data.len() {
            break;
        }
        out.push((ty, &data[4..len]));
        let adv = (len + 3) & !3;
        data = &data[adv.min(data.len())..];
    }
    out
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = data.get(..4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.get(..4)?.try_into().ok()?))
}

pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    /// Opens a rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_ROUTE)
    }

    /// Opens a nfnetlink socket (nf_tables batches).
    pub fn open_netfilter() -> io::Result<Self> {
        Self::open_protocol(libc::NETLINK_NETFILTER)
    }

    fn open_protocol(protocol: libc::c_int) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; zeroed means "kernel assigns the port id".
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request and collects the payloads of every reply message until the ack, the
    /// error or (for dumps) NLMSG_DONE.
    fn transact(&mut self, msg: Msg) -> io::Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.send(&msg.finish(seq))?;
        self.receive(seq, |_, _| Ok(()))
    }

    fn send(&self, data: &[u8]) -> io::Result<()> {
        // SAFETY: data is a valid buffer of data.len() bytes for the duration of the call.
        let n = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                data.as_ptr() as *const libc::c_void,
                data.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads replies until the ack/error/done of `seq`, collecting its payloads. Errors with
    /// another sequence number are handed to `other` (used for batch members).
    fn receive(
        &self,
        seq: u32,
        mut other: impl FnMut(u32, i32) -> io::Result<()>,
    ) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is a writable buffer of buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            let mut rest = &buf[..n as usize];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let ty = u16::from_ne_bytes([rest[4], rest[5]]);
                let mseq = u32::from_ne_bytes([rest[8], rest[9], rest[10], rest[11]]);
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "truncated netlink message",
                    ));
                }
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                if mseq != seq {
                    if ty == NLMSG_ERROR {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        other(mseq, code)?;
                    }
                    continue;
                }
                match ty {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EIO);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    _ => out.push(payload.to_vec()),
                }
            }
        }
    }

    /// Sends an nf_tables batch of set element changes in one datagram, then a GETGEN request as a
    /// barrier: its ack arrives after every reply of the batch, so the first batch error (if
    /// any) is known once it is read. The batch is atomic: on error nothing of it applies.
    pub fn nft_setelem_batch(&mut self, ops: &[SetElemOp]) -> io::Result<()> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut data = Vec::new();
        let first = self.seq.wrapping_add(1);
        let mut push = |nl: &mut Self, m: Msg| {
            nl.seq = nl.seq.wrapping_add(1);
            data.extend_from_slice(&m.finish(nl.seq));
        };
        let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
        let batch_hdr = [libc::AF_UNSPEC as u8, 0, subsys[0], subsys[1]];
        let mut begin = Msg::new(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST);
        begin.raw(&batch_hdr);
        push(self, begin);
        for op in ops {
            let (ty, flags) = if op.add {
                (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK)
            } else {
                (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
            };
            let mut m = Msg::new((NFNL_SUBSYS_NFTABLES << 8) | ty, flags);
            m.raw(&[libc::AF_INET as u8, 0, 0, 0])
                .attr_str(NFTA_SET_ELEM_LIST_TABLE, &op.table)
                .attr_str(NFTA_SET_ELEM_LIST_SET, &op.set)
                .nest(NFTA_SET_ELEM_LIST_ELEMENTS)
                .nest(NFTA_LIST_ELEM)
                .nest(NFTA_SET_ELEM_KEY)
                .attr(NFTA_DATA_VALUE, &op.key)
                .end();
            if let Some(d) = &op.data {
                m.nest(NFTA_SET_ELEM_DATA).attr(NFTA_DATA_VALUE, d).end();
            }
            if let Some(c) = &op.comment {
                // libnftnl's udata TLV: type NFTNL_UDATA_SET_ELEM_COMMENT (0), length, NUL-ended text.
                let mut text = c.as_bytes()[..c.len().min(200)].to_vec();
                text.push(0);
                let mut ud = vec![0u8, text.len() as u8];
                ud.extend_from_slice(&text);
                m.attr(NFTA_SET_ELEM_USERDATA, &ud);
            }
            m.end().end();
            push(self, m);
        }
        let mut end = Msg::new(NFNL_MSG_BATCH_END, NLM_F_REQUEST);
        end.raw(&batch_hdr);
        push(self, end);
        let last = self.seq;
        self.send(&data)?;
        self.seq = self.seq.wrapping_add(1);
        let barrier = self.seq;
        let mut getgen = Msg::new(
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETGEN,
            NLM_F_REQUEST | NLM_F_ACK,
        );
        getgen.raw(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        self.send(&getgen.finish(barrier))?;
        let mut first_err = None;
        self.receive(barrier, |seq, code| {
            let in_batch = seq.wrapping_sub(first) <= last.wrapping_sub(first);
            if in_batch && code != 0 && first_err.is_none() {
                first_err = Some(io::Error::from_raw_os_error(-code));
            }
            Ok(())
        })?;
        first_err.map_or(Ok(()), Err)
    }

    fn request(&mut self, msg: Msg) -> io::Result<()> {
        self.transact(msg).map(|_| ())
    }

    /// Interface index by name; `None` when there is no such link.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut m = Msg::new(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK);
        m.raw(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, name);
        match self.transact(m) {
            Ok(replies) => Ok(replies.first().and_then(|p| {
                p.get(4..8)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u32)
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge; an existing link of that name is left alone.
    pub fn create_bridge(&mut self, name: &str, mtu: u32) -> io::Result<()> {
        let mut m = Msg::new(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        );
        m.raw(&ifinfomsg(0, 0, 0))
            .attr_str(IFLA_IFNAME, name)
            .attr_u32(IFLA_MTU, mtu)
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "bridge")
            .end();
        match self.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Creates a veth pair whose host end is attached to `master` and up, and whose peer is
    /// created directly inside the namespace `peer_netns` (saves a separate move request).
    pub fn create_veth(
        &mut self,
        host: &str,
        peer: &str,
        peer_netns: RawFd,
        master: u32,
        mtu: u32,
    ) -> io::Result<()> {
        let mut m = Msg::new(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        );
        let up = libc::IFF_UP as u32;
        m.raw(&ifinfomsg(0, up, up))
            .attr_str(IFLA_IFNAME, host)
            .attr_u32(IFLA_MTU, mtu)
            .attr_u32(IFLA_MASTER, master)
            .nest(IFLA_LINKINFO)
            .attr_str(IFLA_INFO_KIND, "veth")
            .nest(IFLA_INFO_DATA)
            .nest(VETH_INFO_PEER)
            .raw(&ifinfomsg(0, 0, 0))
            .attr_str(IFLA_IFNAME, peer)
            .attr_u32(IFLA_MTU, mtu)
            .attr_u32(IFLA_NET_NS_FD, peer_netns as u32)
            .end()
            .end()
            .end();
        self.request(m)
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let up = libc::IFF_UP as u32;
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK);
        m.raw(&ifinfomsg(index as i32, up, up));
        self.request(m)
    }

    /// Adds an IPv4 address; an identical existing address is fine (idempotent init).
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Net) -> io::Result<()> {
        let mut m = Msg::new(
            RTM_NEWADDR,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        );
        let mut ifa = [0u8; 8];
        ifa[0] = libc::AF_INET as u8;
        ifa[1] = addr.prefix_len();
        ifa[3] = RT_SCOPE_UNIVERSE;
        ifa[4..8].copy_from_slice(&index.to_ne_bytes());
        let ip = addr.addr().octets();
        m.raw(&ifa).attr(IFA_LOCAL, &ip).attr(IFA_ADDRESS, &ip);
        match self.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Adds a default route via `gw` out of `oif` in the main table.
    pub fn add_default_route(&mut self, gw: Ipv4Addr, oif: u32) -> io::Result<()> {
        let mut m = Msg::new(
            RTM_NEWROUTE,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        );
        let rtm = [
            libc::AF_INET as u8,
            0,
            0,
            0,
            RT_TABLE_MAIN,
            RTPROT_BOOT,
            RT_SCOPE_UNIVERSE,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        m.raw(&rtm)
            .attr(RTA_GATEWAY, &gw.octets())
            .attr_u32(RTA_OIF, oif);
        self.request(m)
    }

    /// Deletes a link by name; a missing link is not an error (teardown is idempotent).
    pub fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut m = Msg::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK);
        m.raw(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, name);
        match self.request(m) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r,
        }
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut m = Msg::new(RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP);
        let mut rtm = [0u8; 12];
        rtm[0] = libc::AF_INET as u8;
        m.raw(&rtm);
        let mut out = Vec::new();
        for p in self.transact(m)? {
            if p.len() < 12 {
                continue;
            }
            let dst_len = p[1];
            let mut table = u32::from(p[4]);
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut gateway = None;
            let mut oif = None;
            for (ty, data) in attrs(&p[12..]) {
                match ty {
                    RTA_DST => dst = ipv4(data).unwrap_or(dst),
                    RTA_GATEWAY => gateway = ipv4(data),
                    RTA_OIF => oif = u32_of(data),
                    RTA_TABLE => table = u32_of(data).unwrap_or(table),
                    _ => {}
                }
            }
            if table != u32::from(RT_TABLE_MAIN) {
                continue;
            }
            if let Ok(dst) = Ipv4Net::new(dst, dst_len) {
                out.push(Route { dst, gateway, oif });
            }
        }
        Ok(out)
    }

    /// IPv4 addresses of every interface.
    pub fn addrs(&mut self) -> io::Result<Vec<Addr>> {
        let mut m = Msg::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP);
        let mut ifa = [0u8; 8];
        ifa[0] = libc::AF_INET as u8;
        m.raw(&ifa);
        let mut out = Vec::new();
        for p in self.transact(m)? {
            if p.len() < 8 {
                continue;
            }
            let prefix = p[1];
            let index = u32::from_ne_bytes([p[4], p[5], p[6], p[7]]);
            let mut addr = None;
            for (ty, data) in attrs(&p[8..]) {
                if ty == IFA_LOCAL || (ty == IFA_ADDRESS && addr.is_none()) {
                    addr = ipv4(data);
                }
            }
            if let Some(a) = addr.and_then(|a| Ipv4Net::new(a, prefix).ok()) {
                out.push(Addr { index, addr: a });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_attributes_have_their_full_length() {
        let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST);
        m.nest(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "veth").end();
        let buf = m.finish(7);
        let parsed = attrs(&buf[NLMSG_HDRLEN..]);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0, IFLA_LINKINFO);
        let inner = attrs(parsed[0].1);
        assert_eq!(inner, vec![(IFLA_INFO_KIND, &b"veth\0"[..])]);
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize,
            buf.len()
        );
    }

    #[test]
    fn route_dump_works_without_privileges() {
        let mut nl = Netlink::open().unwrap();
        // Every Linux host has at least the local/loopback view; the main table may be empty in
        // a bare netns, so only check that the dump completes.
        nl.routes().unwrap();
        assert!(nl.link_index("lo").unwrap().is_some());
        assert!(nl.link_index("bnx-none").unwrap().is_none());
    }
}
