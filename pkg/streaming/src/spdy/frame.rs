//! SPDY/3 frames (draft 3, the subset Kubernetes' httpstream uses) with every length a peer
//! controls checked before it is trusted: frame size, header count and size, SETTINGS entries
//! and the inflated size of a compressed header block.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::Error;

/// The zlib dictionary SPDY/3 header blocks are compressed with (spec section 2.6.10.1).
const DICTIONARY: &[u8] = include_bytes!("dictionary.bin");

pub const VERSION: u16 = 3;
pub const FLAG_FIN: u8 = 0x01;
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;

const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_SETTINGS: u16 = 4;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
const TYPE_WINDOW_UPDATE: u16 = 9;

pub const RST_PROTOCOL_ERROR: u32 = 1;
pub const RST_REFUSED_STREAM: u32 = 3;
pub const RST_CANCEL: u32 = 5;

/// What one connection accepts from its peer. client-go writes data frames of at most 32 KiB
/// (io.Copy's buffer) and header blocks of a few dozen bytes, so these leave wide margins.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_data_frame: usize,
    pub max_control_frame: usize,
    pub max_headers: usize,
    pub max_header_block: usize,
    pub max_settings: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_data_frame: 1 << 20,
            max_control_frame: 16 << 10,
            max_headers: 64,
            max_header_block: 16 << 10,
            max_settings: 16,
        }
    }
}

/// The 8 bytes before a data frame's payload of `len` bytes.
pub fn encode_data_header(stream: u32, flags: u8, len: usize, out: &mut BytesMut) {
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u32(((flags as u32) << 24) | (len as u32 & 0x00ff_ffff));
}

/// Header names are lower-case on the wire; values of a repeated name are NUL-separated.
pub type Headers = Vec<(String, String)>;

pub fn header<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        flags: u8,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        flags: u8,
        headers: Headers,
    },
    SynReply {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Settings {
        entries: Vec<(u32, u32)>,
    },
    Ping {
        id: u32,
    },
    GoAway {
        last_stream: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        flags: u8,
        headers: Headers,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame of a type this implementation ignores (the spec says to).
    Unknown,
}

/// Splits frames off a byte buffer. Owns the connection's inflate state, which spans frames.
pub struct Decoder {
    limits: Limits,
    inflate: Decompress,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            inflate: Decompress::new(true),
        }
    }

    /// How many bytes the frame at the start of `buf` needs, once its 8-byte header is there;
    /// a length over the limits is refused before any of the payload is buffered.
    pub fn needed(&self, buf: &[u8]) -> Result<Option<usize>, Error> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let len = (u32::from_be_bytes([0, buf[5], buf[6], buf[7]])) as usize;
        let control = buf[0] & 0x80 != 0;
        let max = if control {
            self.limits.max_control_frame
        } else {
            self.limits.max_data_frame
        };
        if len > max {
            return Err(Error::Protocol(format!(
                "{} frame of {len} bytes exceeds the limit of {max}",
                if control { "control" } else { "data" }
            )));
        }
        Ok(Some(8 + len))
    }

    /// Decodes one frame from `buf` if it holds a whole one.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(total) = self.needed(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            return Ok(None);
        }
        let mut frame = buf.split_to(total).freeze();
        let first = frame.get_u32();
        let flags_len = frame.get_u32();
        let flags = (flags_len >> 24) as u8;
        if first & 0x8000_0000 == 0 {
            return Ok(Some(Frame::Data {
                stream: first & 0x7fff_ffff,
                flags,
                data: frame,
            }));
        }
        let version = ((first >> 16) & 0x7fff) as u16;
        if version != VERSION {
            return Err(Error::Protocol(format!(
                "unsupported SPDY version {version}"
            )));
        }
        let kind = (first & 0xffff) as u16;
        let short = |need: usize, f: &Bytes| {
            if f.len() < need {
                Err(Error::Protocol(format!(
                    "control frame type {kind} too short ({} bytes)",
                    f.len()
                )))
            } else {
                Ok(())
            }
        };
        let out = match kind {
            TYPE_SYN_STREAM => {
                short(10, &frame)?;
                let stream = frame.get_u32() & 0x7fff_ffff;
                let associated = frame.get_u32() & 0x7fff_ffff;
                let priority = frame.get_u8() >> 5;
                let _slot = frame.get_u8();
                let headers = self.headers(&frame)?;
                Frame::SynStream {
                    stream,
                    associated,
                    priority,
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY | TYPE_HEADERS => {
                short(4, &frame)?;
                let stream = frame.get_u32() & 0x7fff_ffff;
                let headers = self.headers(&frame)?;
                if kind == TYPE_SYN_REPLY {
                    Frame::SynReply {
                        stream,
                        flags,
                        headers,
                    }
                } else {
                    Frame::Headers {
                        stream,
                        flags,
                        headers,
                    }
                }
            }
            TYPE_RST_STREAM => {
                short(8, &frame)?;
                Frame::RstStream {
                    stream: frame.get_u32() & 0x7fff_ffff,
                    status: frame.get_u32(),
                }
            }
            TYPE_SETTINGS => {
                short(4, &frame)?;
                let n = frame.get_u32() as usize;
                if n > self.limits.max_settings {
                    return Err(Error::Protocol(format!(
                        "SETTINGS with {n} entries exceeds the limit of {}",
                        self.limits.max_settings
                    )));
                }
                if frame.len() != n * 8 {
                    return Err(Error::Protocol(format!(
                        "SETTINGS announces {n} entries but carries {} bytes",
                        frame.len()
                    )));
                }
                let entries = (0..n)
                    .map(|_| (frame.get_u32() & 0x00ff_ffff, frame.get_u32()))
                    .collect();
                Frame::Settings { entries }
            }
            TYPE_PING => {
                short(4, &frame)?;
                Frame::Ping {
                    id: frame.get_u32(),
                }
            }
            TYPE_GOAWAY => {
                short(4, &frame)?;
                let last_stream = frame.get_u32() & 0x7fff_ffff;
                let status = if frame.len() >= 4 { frame.get_u32() } else { 0 };
                Frame::GoAway {
                    last_stream,
                    status,
                }
            }
            TYPE_WINDOW_UPDATE => {
                short(8, &frame)?;
                Frame::WindowUpdate {
                    stream: frame.get_u32() & 0x7fff_ffff,
                    delta: frame.get_u32() & 0x7fff_ffff,
                }
            }
            _ => Frame::Unknown,
        };
        Ok(Some(out))
    }

    /// Inflates one header block (the zlib stream continues across blocks) into at most
    /// `max_header_block` bytes and parses it.
    fn headers(&mut self, compressed: &[u8]) -> Result<Headers, Error> {
        let max = self.limits.max_header_block;
        let too_big = || Error::Protocol(format!("header block inflates past {max} bytes"));
        let mut out = Vec::new();
        let mut input = compressed;
        loop {
            if out.len() > max {
                return Err(too_big());
            }
            out.reserve(4096.min(max + 1 - out.len()));
            let (in0, out0) = (self.inflate.total_in(), self.inflate.total_out());
            let res = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = (self.inflate.total_in() - in0) as usize;
            let produced = self.inflate.total_out() - out0;
            input = &input[consumed.min(input.len())..];
            match res {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Protocol(format!("header dictionary: {e}")))?;
                }
                Err(e) => return Err(Error::Protocol(format!("header block: {e}"))),
                Ok(Status::StreamEnd) => break,
                Ok(_) => {
                    if input.is_empty() && out.len() < out.capacity() {
                        break;
                    }
                    if consumed == 0 && produced == 0 && out.len() < out.capacity() {
                        return Err(Error::Protocol("header block is truncated".into()));
                    }
                }
            }
        }
        if out.len() > max {
            return Err(too_big());
        }
        parse_headers(&out, self.limits.max_headers)
    }
}

fn parse_headers(mut b: &[u8], max: usize) -> Result<Headers, Error> {
    let bad = |what: &str| Error::Protocol(format!("malformed header block: {what}"));
    if b.len() < 4 {
        return Err(bad("no count"));
    }
    let n = b.get_u32() as usize;
    if n > max {
        return Err(Error::Protocol(format!(
            "{n} headers exceed the limit of {max}"
        )));
    }
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let field = |b: &mut &[u8]| -> Result<String, Error> {
            if b.len() < 4 {
                return Err(bad("truncated length"));
            }
            let len = b.get_u32() as usize;
            if b.len() < len {
                return Err(bad("truncated field"));
            }
            let s = String::from_utf8_lossy(&b[..len]).into_owned();
            b.advance(len);
            Ok(s)
        };
        let name = field(&mut b)?;
        let value = field(&mut b)?;
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(out)
}

/// Serialises frames. Owns the connection's deflate state.
pub struct Encoder {
    deflate: Compress,
}

impl Default for Encoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Encoder {
    pub fn new() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // A fresh zlib stream takes a preset dictionary before its first byte.
        let _ = deflate.set_dictionary(DICTIONARY);
        Self { deflate }
    }

    pub fn encode(&mut self, frame: &Frame, out: &mut BytesMut) {
        match frame {
            Frame::Data {
                stream,
                flags,
                data,
            } => {
                encode_data_header(*stream, *flags, data.len(), out);
                out.put_slice(data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                flags,
                headers,
            } => {
                let block = self.header_block(headers);
                control(out, TYPE_SYN_STREAM, *flags, 10 + block.len());
                out.put_u32(*stream);
                out.put_u32(*associated);
                out.put_u8(priority << 5);
                out.put_u8(0);
                out.put_slice(&block);
            }
            Frame::SynReply {
                stream,
                flags,
                headers,
            }
            | Frame::Headers {
                stream,
                flags,
                headers,
            } => {
                let kind = if matches!(frame, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let block = self.header_block(headers);
                control(out, kind, *flags, 4 + block.len());
                out.put_u32(*stream);
                out.put_slice(&block);
            }
            Frame::RstStream { stream, status } => {
                control(out, TYPE_RST_STREAM, 0, 8);
                out.put_u32(*stream);
                out.put_u32(*status);
            }
            Frame::Settings { entries } => {
                control(out, TYPE_SETTINGS, 0, 4 + 8 * entries.len());
                out.put_u32(entries.len() as u32);
                for (id, value) in entries {
                    out.put_u32(id & 0x00ff_ffff);
                    out.put_u32(*value);
                }
            }
            Frame::Ping { id } => {
                control(out, TYPE_PING, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway {
                last_stream,
                status,
            } => {
                control(out, TYPE_GOAWAY, 0, 8);
                out.put_u32(*last_stream);
                out.put_u32(*status);
            }
            Frame::WindowUpdate { stream, delta } => {
                control(out, TYPE_WINDOW_UPDATE, 0, 8);
                out.put_u32(*stream);
                out.put_u32(*delta);
            }
            Frame::Unknown => {}
        }
    }

    fn header_block(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.len() as u32);
        for (k, v) in headers {
            raw.put_u32(k.len() as u32);
            raw.put_slice(k.to_ascii_lowercase().as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input: &[u8] = &raw;
        loop {
            out.reserve(raw.len() + 64);
            let before = self.deflate.total_in();
            let _ = self
                .deflate
                .compress_vec(input, &mut out, FlushCompress::Sync);
            let used = (self.deflate.total_in() - before) as usize;
            input = &input[used..];
            // A sync flush is complete once the output was not filled to capacity.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        out
    }
}

fn control(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | (len as u32 & 0x00ff_ffff));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(frames: &[Frame]) -> Vec<Frame> {
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        for f in frames {
            enc.encode(f, &mut buf);
        }
        let mut dec = Decoder::new(Limits::default());
        let mut out = Vec::new();
        while let Some(f) = dec.decode(&mut buf).unwrap() {
            out.push(f);
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn frames_roundtrip_with_shared_compression_state() {
        let h = |t: &str| vec![("streamtype".to_string(), t.to_string())];
        let frames = vec![
            Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers: h("error"),
            },
            Frame::SynStream {
                stream: 3,
                associated: 0,
                priority: 0,
                flags: FLAG_FIN,
                headers: h("stdout"),
            },
            Frame::SynReply {
                stream: 3,
                flags: 0,
                headers: vec![],
            },
            Frame::Data {
                stream: 3,
                flags: FLAG_FIN,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Ping { id: 7 },
            Frame::Settings {
                entries: vec![(7, 65536)],
            },
            Frame::GoAway {
                last_stream: 3,
                status: 0,
            },
            Frame::RstStream {
                stream: 5,
                status: RST_CANCEL,
            },
            Frame::WindowUpdate {
                stream: 1,
                delta: 100,
            },
        ];
        assert_eq!(roundtrip(&frames), frames);
    }

    #[test]
    fn oversized_frames_are_refused_from_the_header_alone() {
        let mut dec = Decoder::new(Limits::default());
        let mut buf = BytesMut::from(&[0x00, 0, 0, 1, 0, 0xff, 0xff, 0xff][..]);
        assert!(dec.decode(&mut buf).is_err());
        let mut buf = BytesMut::from(&[0x80, 3, 0, 1, 0, 0x01, 0x00, 0x00][..]);
        assert!(dec.decode(&mut buf).is_err());
    }

    #[test]
    fn settings_bomb_is_refused() {
        let mut buf = BytesMut::new();
        control(&mut buf, TYPE_SETTINGS, 0, 4 + 8 * 1000);
        buf.put_u32(1000);
        buf.put_bytes(0, 8 * 1000);
        let limits = Limits {
            max_control_frame: 1 << 20,
            ..Limits::default()
        };
        assert!(Decoder::new(limits).decode(&mut buf).is_err());
    }

    #[test]
    fn header_block_inflating_past_the_limit_is_refused() {
        // A small compressed block of one huge header value: a zip bomb in miniature.
        let headers = vec![("x".to_string(), "a".repeat(1 << 20))];
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        enc.encode(
            &Frame::SynStream {
                stream: 1,
                associated: 0,
                priority: 0,
                flags: 0,
                headers,
            },
            &mut buf,
        );
        assert!(buf.len() < 16 << 10, "compressed to {}", buf.len());
        let err = Decoder::new(Limits::default())
            .decode(&mut buf)
            .unwrap_err();
        assert!(err.to_string().contains("inflates past"), "{err}");
    }

    #[test]
    fn header_count_is_bounded() {
        let headers: Headers = (0..100).map(|i| (format!("h{i}"), String::new())).collect();
        let mut enc = Encoder::new();
        let mut buf = BytesMut::new();
        enc.encode(
            &Frame::SynReply {
                stream: 1,
                flags: 0,
                headers,
            },
            &mut buf,
        );
        let err = Decoder::new(Limits::default())
            .decode(&mut buf)
            .unwrap_err();
        assert!(err.to_string().contains("exceed the limit"), "{err}");
    }
}
