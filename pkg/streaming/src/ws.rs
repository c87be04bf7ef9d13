//! WebSocket (RFC 6455) framing, both ends, with a bound on every message a peer sends. The
//! handshake lives with the HTTP code (server) and [`crate::client`].

use base64::Engine;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Error;

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// The largest message accepted from a peer. kubectl sends stdin and port-forward data in
/// pieces of at most 32 KiB; a tunneled SPDY frame is one message per write.
pub const MAX_MESSAGE: usize = 1 << 20;

const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub fn accept_key(key: &str) -> String {
    let mut s = key.trim().as_bytes().to_vec();
    s.extend_from_slice(GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(crate::sha1::digest(&s))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    Close,
}

pub struct Reader<R> {
    r: R,
    buf: BytesMut,
    max: usize,
    /// A fragmented message being joined; control frames may come between its fragments.
    partial: Option<(u8, BytesMut)>,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(r: R, leftover: BytesMut, max: usize) -> Self {
        Self {
            r,
            buf: leftover,
            max,
            partial: None,
        }
    }

    async fn fill(&mut self, n: usize) -> Result<bool, Error> {
        while self.buf.len() < n {
            self.buf.reserve(n - self.buf.len());
            if self.r.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The next whole message (fragments joined); `None` at end of stream. A frame or message
    /// over the limit is an error before its payload is read.
    pub async fn next(&mut self) -> Result<Option<Message>, Error> {
        loop {
            if !self.fill(2).await? {
                return Ok(None);
            }
            let b0 = self.buf[0];
            let b1 = self.buf[1];
            let fin = b0 & 0x80 != 0;
            let op = b0 & 0x0f;
            let masked = b1 & 0x80 != 0;
            let (len, hdr) = match b1 & 0x7f {
                126 => {
                    if !self.fill(4).await? {
                        return Ok(None);
                    }
                    (u16::from_be_bytes([self.buf[2], self.buf[3]]) as u64, 4)
                }
                127 => {
                    if !self.fill(10).await? {
                        return Ok(None);
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&self.buf[2..10]);
                    (u64::from_be_bytes(b), 10)
                }
                n => (n as u64, 2),
            };
            let so_far = self.partial.as_ref().map_or(0, |(_, p)| p.len()) as u64;
            if len + so_far > self.max as u64 {
                return Err(Error::Protocol(format!(
                    "websocket message over {} bytes",
                    self.max
                )));
            }
            if op >= 0x8 && (len > 125 || !fin) {
                return Err(Error::Protocol("malformed control frame".into()));
            }
            let len = len as usize;
            let total = hdr + if masked { 4 } else { 0 } + len;
            if !self.fill(total).await? {
                return Ok(None);
            }
            self.buf.advance(hdr);
            let mask = if masked {
                let m = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
                self.buf.advance(4);
                Some(m)
            } else {
                None
            };
            let mut payload = self.buf.split_to(len);
            if let Some(m) = mask {
                for (i, b) in payload.iter_mut().enumerate() {
                    *b ^= m[i % 4];
                }
            }
            match op {
                OP_PING => return Ok(Some(Message::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Message::Pong(payload.freeze()))),
                OP_CLOSE => return Ok(Some(Message::Close)),
                OP_TEXT | OP_BINARY if self.partial.is_none() => {
                    if fin {
                        let p = payload.freeze();
                        return Ok(Some(if op == OP_TEXT {
                            Message::Text(p)
                        } else {
                            Message::Binary(p)
                        }));
                    }
                    self.partial = Some((op, payload));
                }
                OP_CONT if self.partial.is_some() => {
                    let Some((op, mut acc)) = self.partial.take() else {
                        continue;
                    };
                    acc.extend_from_slice(&payload);
                    if fin {
                        let p = acc.freeze();
                        return Ok(Some(if op == OP_TEXT {
                            Message::Text(p)
                        } else {
                            Message::Binary(p)
                        }));
                    }
                    self.partial = Some((op, acc));
                }
                _ => return Err(Error::Protocol(format!("unexpected websocket opcode {op}"))),
            }
        }
    }
}

/// Encodes one frame; a client masks what it sends (RFC 6455 5.3), a server must not.
pub fn encode(op: u8, payload: &[u8], mask: bool, out: &mut BytesMut) {
    out.put_u8(0x80 | op);
    let m = if mask { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.put_u8(m | n as u8),
        n if n <= 0xffff => {
            out.put_u8(m | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(m | 127);
            out.put_u64(n as u64);
        }
    }
    if mask {
        let key: [u8; 4] = rand::random();
        out.put_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.put_slice(payload);
    }
}

pub struct Writer<W> {
    w: W,
    mask: bool,
    buf: BytesMut,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(w: W, mask: bool) -> Self {
        Self {
            w,
            mask,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, op: u8, payload: &[u8]) -> Result<(), Error> {
        self.buf.clear();
        encode(op, payload, self.mask, &mut self.buf);
        self.w.write_all(&self.buf).await?;
        self.w.flush().await?;
        Ok(())
    }

    /// A normal-closure close frame, then the end of our side.
    pub async fn close(&mut self) {
        let _ = self.send(OP_CLOSE, &1000u16.to_be_bytes()).await;
        let _ = self.w.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn masked_fragmented_messages_are_joined() {
        let mut wire = BytesMut::new();
        // "hel" + "lo" as a fragmented masked binary message, a ping between.
        let mut f = BytesMut::new();
        encode(OP_BINARY, b"hel", true, &mut f);
        f[0] &= 0x7f; // not FIN
        wire.extend_from_slice(&f);
        encode(OP_PING, b"p", true, &mut wire);
        encode(OP_CONT, b"lo", true, &mut wire);
        let mut r = Reader::new(&wire[..], BytesMut::new(), MAX_MESSAGE);
        assert_eq!(
            r.next().await.unwrap(),
            Some(Message::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            r.next().await.unwrap(),
            Some(Message::Binary(Bytes::from_static(b"hello")))
        );
        assert_eq!(r.next().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading_it() {
        // Announces 1 GiB and sends nothing more: refused from the header alone.
        let wire = [0x82u8, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0, 1, 2, 3, 4];
        let mut r = Reader::new(&wire[..], BytesMut::new(), MAX_MESSAGE);
        assert!(r.next().await.is_err());
    }
}
