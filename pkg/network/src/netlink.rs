//! A small synchronous netlink client: a `netlink-sys` socket carrying `netlink-packet-core`
//! frames, with rtnetlink requests built from `netlink-packet-route` message types.
//!
//! berth needs a handful of rtnetlink requests (create bridge/veth, add address, set up, add
//! route, delete link, dump routes/addresses) on a path that already runs on a blocking thread,
//! so the socket stays a plain blocking one: no async runtime, one socket per call. A socket
//! talks to the network namespace of the thread that created it, so callers inside `in_netns`
//! get a view of the pod's namespace. The nftables module sends its batches over the same
//! [`Socket`].

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use ipnet::Ipv4Net;
use netlink_packet_core::{
    NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

/// Large enough for one datagram of any dump (the kernel fills at most 32 KiB per recv).
const RECV_BUF: usize = 64 * 1024;

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

fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

/// A blocking netlink socket of one protocol with its own sequence numbers.
pub(crate) struct Socket {
    sock: netlink_sys::Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    /// Opens and binds (kernel-assigned port) a socket of `protocol` in the calling thread's
    /// network namespace.
    pub fn open(protocol: isize) -> io::Result<Self> {
        let mut sock = netlink_sys::Socket::new(protocol)?;
        sock.bind_auto()?;
        Ok(Self {
            sock,
            seq: 0,
            buf: Vec::with_capacity(RECV_BUF),
        })
    }

    /// Frames `msgs` into one datagram (one send: nfnetlink batches must arrive whole), each
    /// with the next sequence number. Returns the first and last sequence numbers used.
    pub fn send<I: NetlinkSerializable>(
        &mut self,
        msgs: impl IntoIterator<Item = (u16, I)>,
    ) -> io::Result<(u32, u32)> {
        let mut data = Vec::new();
        let first = self.seq.wrapping_add(1);
        for (flags, inner) in msgs {
            self.seq = self.seq.wrapping_add(1);
            let mut header = NetlinkHeader::default();
            header.flags = flags;
            header.sequence_number = self.seq;
            let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(inner));
            m.finalize();
            let start = data.len();
            data.resize(start + m.buffer_len(), 0);
            m.serialize(&mut data[start..]);
        }
        self.sock.send(&data, 0)?;
        Ok((first, self.seq))
    }

    /// Reads replies until the ack, error or NLMSG_DONE of `seq`, handing every other message
    /// (inner messages and errors of any sequence number, acks excluded) to `each`. An error of
    /// `seq` itself is returned.
    pub fn receive<I: NetlinkDeserializable>(
        &mut self,
        seq: u32,
        mut each: impl FnMut(u32, NetlinkPayload<I>),
    ) -> io::Result<()> {
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut rest = &self.buf[..];
            while !rest.is_empty() {
                let len = NetlinkBuffer::new_checked(rest).map_err(invalid)?.length() as usize;
                let frame = &rest[..len];
                rest = &rest[((len + 3) & !3).min(rest.len())..];
                let msg = match NetlinkMessage::<I>::deserialize(frame) {
                    Ok(m) => m,
                    Err(e) => {
                        // A dump entry this crate version cannot parse (a newer kernel
                        // attribute it rejects) is skipped rather than failing the dump.
                        tracing::debug!(error = %e, "skipping an unparsable netlink message");
                        continue;
                    }
                };
                let mseq = msg.header.sequence_number;
                match msg.payload {
                    NetlinkPayload::Done(_) if mseq == seq => return Ok(()),
                    NetlinkPayload::Error(e) if mseq == seq => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        };
                    }
                    NetlinkPayload::Error(e) if e.code.is_none() => {}
                    p => each(mseq, p),
                }
            }
        }
    }
}

/// rtnetlink requests on a `NETLINK_ROUTE` socket.
pub(crate) struct Netlink {
    sock: Socket,
}

impl Netlink {
    /// Opens a rtnetlink socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            sock: Socket::open(netlink_sys::protocols::NETLINK_ROUTE)?,
        })
    }

    /// Sends one request and collects every reply until the ack, the error or (for dumps)
    /// NLMSG_DONE.
    fn transact(
        &mut self,
        flags: u16,
        msg: RouteNetlinkMessage,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        let (seq, _) = self.sock.send([(flags, msg)])?;
        let mut out = Vec::new();
        self.sock.receive(seq, |s, p| {
            if let (true, NetlinkPayload::InnerMessage(m)) = (s == seq, p) {
                out.push(m);
            }
        })?;
        Ok(out)
    }

    fn request(&mut self, flags: u16, msg: RouteNetlinkMessage) -> io::Result<()> {
        self.transact(NLM_F_REQUEST | NLM_F_ACK | flags, msg)
            .map(|_| ())
    }

    /// Interface index by name; `None` when there is no such link.
    pub fn link_index(&mut self, name: &str) -> io::Result<Option<u32>> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        match self.transact(NLM_F_REQUEST | NLM_F_ACK, RouteNetlinkMessage::GetLink(m)) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l.header.index),
                _ => None,
            })),
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a bridge; an existing link of that name is left alone.
    pub fn create_bridge(&mut self, name: &str, mtu: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes = vec![
            LinkAttribute::IfName(name.into()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge)]),
        ];
        match self.request(NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewLink(m)) {
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
        let mut p = LinkMessage::default();
        p.attributes = vec![
            LinkAttribute::IfName(peer.into()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::NetNsFd(peer_netns),
        ];
        let mut m = LinkMessage::default();
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        m.attributes = vec![
            LinkAttribute::IfName(host.into()),
            LinkAttribute::Mtu(mtu),
            LinkAttribute::Controller(master),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
            ]),
        ];
        self.request(NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewLink(m))
    }

    pub fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m.header.flags = LinkFlags::Up;
        m.header.change_mask = LinkFlags::Up;
        self.request(0, RouteNetlinkMessage::NewLink(m))
    }

    /// Adds an IPv4 address; an identical existing address is fine (idempotent init).
    pub fn add_addr(&mut self, index: u32, addr: Ipv4Net) -> io::Result<()> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = addr.prefix_len();
        m.header.scope = AddressScope::Universe;
        m.header.index = index;
        let ip = IpAddr::V4(addr.addr());
        m.attributes = vec![AddressAttribute::Local(ip), AddressAttribute::Address(ip)];
        match self.request(
            NLM_F_CREATE | NLM_F_EXCL,
            RouteNetlinkMessage::NewAddress(m),
        ) {
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
            r => r,
        }
    }

    /// Adds a default route via `gw` out of `oif` in the main table.
    pub fn add_default_route(&mut self, gw: Ipv4Addr, oif: u32) -> io::Result<()> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        m.header.table = RouteHeader::RT_TABLE_MAIN;
        m.header.protocol = RouteProtocol::Boot;
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::Unicast;
        m.attributes = vec![
            RouteAttribute::Gateway(RouteAddress::Inet(gw)),
            RouteAttribute::Oif(oif),
        ];
        self.request(NLM_F_CREATE | NLM_F_EXCL, RouteNetlinkMessage::NewRoute(m))
    }

    /// Deletes a link by name; a missing link is not an error (teardown is idempotent).
    pub fn delete_link(&mut self, name: &str) -> io::Result<()> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        match self.request(0, RouteNetlinkMessage::DelLink(m)) {
            Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(()),
            r => r,
        }
    }

    /// IPv4 routes of the main table.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut m = RouteMessage::default();
        m.header.address_family = AddressFamily::Inet;
        let replies =
            self.transact(NLM_F_REQUEST | NLM_F_DUMP, RouteNetlinkMessage::GetRoute(m))?;
        Ok(replies.into_iter().filter_map(route_of).collect())
    }

    /// IPv4 addresses of every interface.
    pub fn addrs(&mut self) -> io::Result<Vec<Addr>> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        let replies = self.transact(
            NLM_F_REQUEST | NLM_F_DUMP,
            RouteNetlinkMessage::GetAddress(m),
        )?;
        Ok(replies.into_iter().filter_map(addr_of).collect())
    }
}

fn route_of(r: RouteNetlinkMessage) -> Option<Route> {
    let RouteNetlinkMessage::NewRoute(r) = r else {
        return None;
    };
    if r.header.address_family != AddressFamily::Inet {
        return None;
    }
    let mut table = u32::from(r.header.table);
    let mut dst = Ipv4Addr::UNSPECIFIED;
    let mut gateway = None;
    let mut oif = None;
    for a in r.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => dst = d,
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => gateway = Some(g),
            RouteAttribute::Oif(i) => oif = Some(i),
            // The header's table is a u8; tables above 255 only appear here.
            RouteAttribute::Table(t) => table = t,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let dst = Ipv4Net::new(dst, r.header.destination_prefix_length).ok()?;
    Some(Route { dst, gateway, oif })
}

fn addr_of(a: RouteNetlinkMessage) -> Option<Addr> {
    let RouteNetlinkMessage::NewAddress(a) = a else {
        return None;
    };
    // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer on point-to-point links
    // and equal to it otherwise.
    let mut addr = None;
    for attr in a.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(ip)) => addr = Some(ip),
            AddressAttribute::Address(IpAddr::V4(ip)) if addr.is_none() => addr = Some(ip),
            _ => {}
        }
    }
    let addr = Ipv4Net::new(addr?, a.header.prefix_len).ok()?;
    Some(Addr {
        index: a.header.index,
        addr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_request_nests_the_peer_inside_linkinfo_data() {
        // The layout the kernel expects (and `ip link add … type veth peer …` sends):
        // IFLA_LINKINFO { IFLA_INFO_KIND "veth", IFLA_INFO_DATA { VETH_INFO_PEER { ifinfomsg,
        // IFLA_IFNAME, … } } }.
        let mut p = LinkMessage::default();
        p.attributes = vec![LinkAttribute::IfName("eth0".into())];
        let mut m = LinkMessage::default();
        m.attributes = vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ])];
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut msg = NetlinkMessage::new(
            header,
            NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)),
        );
        msg.finalize();
        let mut buf = vec![0; msg.buffer_len()];
        msg.serialize(&mut buf);
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), libc::RTM_NEWLINK);
        assert_eq!(
            u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize,
            buf.len()
        );
        // After nlmsghdr (16) and ifinfomsg (16): IFLA_LINKINFO, nested.
        let attr = &buf[32..];
        let ty = u16::from_ne_bytes([attr[2], attr[3]]);
        assert_eq!(ty & 0x3fff, libc::IFLA_LINKINFO);
        let back = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf).unwrap();
        let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) = back.payload else {
            panic!("not a link message");
        };
        let peer = l.attributes.iter().find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            }),
            _ => None,
        });
        assert_eq!(
            peer.unwrap().attributes,
            vec![LinkAttribute::IfName("eth0".into())]
        );
    }

    #[test]
    fn route_dump_works_without_privileges() {
        let mut nl = Netlink::open().unwrap();
        // The main table may be empty in a bare netns, so only check that the dump completes.
        nl.routes().unwrap();
        nl.addrs().unwrap();
        assert!(nl.link_index("lo").unwrap().is_some());
        assert!(nl.link_index("bnx-none").unwrap().is_none());
    }
}
