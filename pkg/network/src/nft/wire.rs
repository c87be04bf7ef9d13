//! The nf_tables wire format berth sends: set element changes in nfnetlink batches.
//!
//! The only netlink nftables crate is GPL-3.0, so the message layout is berth's own, but small:
//! an `nfgenmsg` and attributes, framed by `netlink-packet-core` (headers, lengths, padding,
//! sequence numbers, error decoding) and sent over the shared [`Socket`]. Key and data bytes
//! are in nft's register layout; the root test `nft_elements_match_nfts_own_view` checks the
//! result against `nft -j list map`.

use std::io;

use netlink_packet_core::{
    DecodeError, Emitable, NetlinkDeserializable, NetlinkHeader, NetlinkPayload,
    NetlinkSerializable, Nla, NLA_F_NESTED, NLM_F_ACK, NLM_F_CREATE, NLM_F_REQUEST,
};

use crate::netlink::Socket;

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
/// libnftnl's udata TLV type for an element comment.
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
/// nft's own limit on comment length.
const COMMENT_MAX: usize = 128;

/// Largest batch datagram berth sends. A datagram must fit the socket's send buffer
/// (`net.core.wmem_default`, 208 KiB by default, tunable down), and the kernel applies one
/// datagram as one transaction; 32 KiB is ~200 hostPort elements, far from any default limit.
pub(crate) const BATCH_MAX: usize = 32 * 1024;

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

/// A netlink attribute of an nf_tables message.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Attr {
    Bytes(u16, Vec<u8>),
    /// NUL-terminated, as the kernel's `nla_strcmp` of names expects.
    Str(u16, String),
    Nested(u16, Vec<Attr>),
}

impl Nla for Attr {
    fn value_len(&self) -> usize {
        match self {
            Attr::Bytes(_, b) => b.len(),
            Attr::Str(_, s) => s.len() + 1,
            Attr::Nested(_, a) => a.as_slice().buffer_len(),
        }
    }

    fn kind(&self) -> u16 {
        match self {
            Attr::Bytes(k, _) | Attr::Str(k, _) => *k,
            Attr::Nested(k, _) => *k | NLA_F_NESTED,
        }
    }

    fn emit_value(&self, buffer: &mut [u8]) {
        match self {
            Attr::Bytes(_, b) => buffer[..b.len()].copy_from_slice(b),
            Attr::Str(_, s) => {
                buffer[..s.len()].copy_from_slice(s.as_bytes());
                buffer[s.len()] = 0;
            }
            Attr::Nested(_, a) => a.as_slice().emit(buffer),
        }
    }
}

/// An nfnetlink message: `struct nfgenmsg` (family, version 0, big-endian resource id) and
/// attributes. Replies are only decoded as far as the framing needs (acks and errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NfMessage {
    ty: u16,
    family: u8,
    res_id: u16,
    attrs: Vec<Attr>,
}

impl NfMessage {
    fn nft(ty: u16, family: u8, attrs: Vec<Attr>) -> Self {
        Self {
            ty: (NFNL_SUBSYS_NFTABLES << 8) | ty,
            family,
            res_id: 0,
            attrs,
        }
    }

    /// Batch delimiters carry the subsystem in `res_id`, no subsystem in their type.
    fn batch(ty: u16) -> Self {
        Self {
            ty,
            family: libc::AF_UNSPEC as u8,
            res_id: NFNL_SUBSYS_NFTABLES,
            attrs: Vec::new(),
        }
    }

    /// Bytes of the framed message, header included.
    fn framed_len(&self) -> usize {
        16 + self.buffer_len()
    }
}

impl NetlinkSerializable for NfMessage {
    fn message_type(&self) -> u16 {
        self.ty
    }

    fn buffer_len(&self) -> usize {
        4 + self.attrs.as_slice().buffer_len()
    }

    fn serialize(&self, buffer: &mut [u8]) {
        buffer[0] = self.family;
        buffer[1] = 0;
        buffer[2..4].copy_from_slice(&self.res_id.to_be_bytes());
        self.attrs.as_slice().emit(&mut buffer[4..]);
    }
}

impl NetlinkDeserializable for NfMessage {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        let hdr = payload
            .get(..4)
            .ok_or_else(|| DecodeError::from("nfgenmsg too short"))?;
        Ok(Self {
            ty: header.message_type,
            family: hdr[0],
            res_id: u16::from_be_bytes([hdr[2], hdr[3]]),
            attrs: Vec::new(),
        })
    }
}

/// The NEWSETELEM / DELSETELEM message of one op: one element in the list.
fn setelem_message(op: &SetElemOp) -> NfMessage {
    let mut elem = vec![Attr::Nested(
        NFTA_SET_ELEM_KEY,
        vec![Attr::Bytes(NFTA_DATA_VALUE, op.key.clone())],
    )];
    if let Some(d) = &op.data {
        elem.push(Attr::Nested(
            NFTA_SET_ELEM_DATA,
            vec![Attr::Bytes(NFTA_DATA_VALUE, d.clone())],
        ));
    }
    if let Some(c) = &op.comment {
        // libnftnl's udata TLV: type, length, NUL-terminated text (what `nft` parses back).
        let mut text = c.as_bytes()[..c.len().min(COMMENT_MAX - 1)].to_vec();
        text.push(0);
        let mut ud = vec![NFTNL_UDATA_SET_ELEM_COMMENT, text.len() as u8];
        ud.extend_from_slice(&text);
        elem.push(Attr::Bytes(NFTA_SET_ELEM_USERDATA, ud));
    }
    NfMessage::nft(
        if op.add {
            NFT_MSG_NEWSETELEM
        } else {
            NFT_MSG_DELSETELEM
        },
        libc::AF_INET as u8,
        vec![
            Attr::Str(NFTA_SET_ELEM_LIST_TABLE, op.table.clone()),
            Attr::Str(NFTA_SET_ELEM_LIST_SET, op.set.clone()),
            Attr::Nested(
                NFTA_SET_ELEM_LIST_ELEMENTS,
                vec![Attr::Nested(NFTA_LIST_ELEM, elem)],
            ),
        ],
    )
}

/// Splits `ops` into consecutive ranges whose batches (with begin and end) each fit in
/// `max` bytes. An op too large alone still gets a batch of its own.
pub(crate) fn chunks(ops: &[SetElemOp], max: usize) -> Vec<std::ops::Range<usize>> {
    let frame = 2 * NfMessage::batch(NFNL_MSG_BATCH_BEGIN).framed_len();
    let mut out = Vec::new();
    let mut start = 0;
    let mut size = frame;
    for (i, op) in ops.iter().enumerate() {
        let len = setelem_message(op).framed_len();
        if i > start && size + len > max {
            out.push(start..i);
            start = i;
            size = frame;
        }
        size += len;
    }
    if start < ops.len() {
        out.push(start..ops.len());
    }
    out
}

/// Why a batch failed: the kernel's error and, when the reply named one, the index of the op
/// it refused.
#[derive(Debug)]
pub(crate) struct BatchError {
    pub op: Option<usize>,
    pub source: io::Error,
}

/// Sends `ops` as one nf_tables transaction (atomic: on error nothing of it applies), then a
/// GETGEN request as a barrier: its ack arrives after every reply of the batch, so the first
/// error (if any) is known once it is read. Element messages ask for no ack: a successful batch
/// sends nothing back, so a big one cannot overflow the receive buffer.
pub(crate) fn apply(sock: &mut Socket, ops: &[SetElemOp]) -> Result<(), BatchError> {
    if ops.is_empty() {
        return Ok(());
    }
    let err = |source| BatchError { op: None, source };
    let mut msgs = Vec::with_capacity(ops.len() + 2);
    msgs.push((NLM_F_REQUEST, NfMessage::batch(NFNL_MSG_BATCH_BEGIN)));
    for op in ops {
        let flags = if op.add {
            NLM_F_REQUEST | NLM_F_CREATE
        } else {
            NLM_F_REQUEST
        };
        msgs.push((flags, setelem_message(op)));
    }
    msgs.push((NLM_F_REQUEST, NfMessage::batch(NFNL_MSG_BATCH_END)));
    let (begin, end) = sock.send(msgs).map_err(err)?;
    let getgen = NfMessage::nft(NFT_MSG_GETGEN, libc::AF_UNSPEC as u8, Vec::new());
    let (barrier, _) = sock
        .send([(NLM_F_REQUEST | NLM_F_ACK, getgen)])
        .map_err(err)?;
    let mut first: Option<BatchError> = None;
    sock.receive::<NfMessage>(barrier, |seq, payload| {
        let NetlinkPayload::Error(e) = payload else {
            return;
        };
        let (Some(code), None) = (e.code, first.as_ref()) else {
            return;
        };
        // Ops are numbered begin+1..end-1 in the batch.
        let in_batch = seq.wrapping_sub(begin) <= end.wrapping_sub(begin);
        if in_batch {
            let idx = seq.wrapping_sub(begin).wrapping_sub(1) as usize;
            first = Some(BatchError {
                op: (idx < ops.len()).then_some(idx),
                source: io::Error::from_raw_os_error(-code.get()),
            });
        }
    })
    .map_err(err)?;
    first.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use netlink_packet_core::NetlinkMessage;

    use super::*;

    fn op(comment: &str) -> SetElemOp {
        SetElemOp {
            add: true,
            table: "berth".into(),
            set: "hp_any".into(),
            key: vec![6, 0, 0, 0, 0x1f, 0x90, 0, 0],
            data: Some(vec![10, 88, 0, 5, 0, 80, 0, 0]),
            comment: Some(comment.into()),
        }
    }

    #[test]
    fn setelem_message_has_libnftnls_layout() {
        let mut m = NetlinkMessage::new(
            NetlinkHeader::default(),
            NetlinkPayload::InnerMessage(setelem_message(&op("pod a"))),
        );
        m.finalize();
        let mut buf = vec![0; m.buffer_len()];
        m.serialize(&mut buf);
        // What libnftnl emits for `nft add element ip berth hp_any { tcp . 8080 comment
        // "pod a" : 10.88.0.5 . 80 }` (without the flags attribute nft adds).
        #[rustfmt::skip]
        let want: Vec<u8> = [
            &[96u8, 0, 0, 0][..], &[12, 10], &[0, 0], &[0; 8],  // nlmsghdr: len, NEWSETELEM
            &[2, 0, 0, 0],                                     // nfgenmsg: AF_INET, v0, res 0
            &[10, 0, 1, 0], b"berth\0", &[0, 0],               // LIST_TABLE
            &[11, 0, 2, 0], b"hp_any\0", &[0],                 // LIST_SET
            &[52, 0, 3, 0x80],                                 // LIST_ELEMENTS (nested)
            &[48, 0, 1, 0x80],                                 //   LIST_ELEM (nested)
            &[16, 0, 1, 0x80], &[12, 0, 1, 0], &[6, 0, 0, 0, 0x1f, 0x90, 0, 0], // KEY
            &[16, 0, 2, 0x80], &[12, 0, 1, 0], &[10, 88, 0, 5, 0, 80, 0, 0],    // DATA
            &[12, 0, 6, 0], &[0, 6], b"pod a\0",               // USERDATA: comment TLV
        ]
        .concat();
        assert_eq!(buf, want);
        let back = NetlinkMessage::<NfMessage>::deserialize(&buf).unwrap();
        assert_eq!(back.header.message_type, (10 << 8) | 12);
    }

    #[test]
    fn chunks_keep_every_batch_under_the_limit_and_cover_all_ops() {
        let ops: Vec<SetElemOp> = (0..500).map(|i| op(&format!("pod {i:064}"))).collect();
        let one = setelem_message(&ops[0]).framed_len();
        let frame = 2 * NfMessage::batch(NFNL_MSG_BATCH_BEGIN).framed_len();
        let ranges = chunks(&ops, BATCH_MAX);
        assert!(ranges.len() > 1, "500 elements need several batches");
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, ops.len());
        for w in ranges.windows(2) {
            assert_eq!(w[0].end, w[1].start);
        }
        for r in &ranges {
            assert!(frame + r.len() * one <= BATCH_MAX, "{r:?}");
        }
        assert_eq!(
            chunks(&ops[..1], 1),
            vec![0..1],
            "an oversized op still gets a batch"
        );
        assert!(chunks(&[], BATCH_MAX).is_empty());
    }
}
