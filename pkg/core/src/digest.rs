use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// A validated `sha256:<64 lower-case hex>` content digest.
///
/// Only sha256 is accepted: it is the only algorithm registries use in practice, and refusing the
/// rest keeps every digest safe to use as a path component and in a URL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected the form sha256:<64 hex characters>")]
    Format(String),
    #[error("unsupported digest algorithm {algorithm:?} in {digest:?}: only sha256 is supported")]
    Algorithm { algorithm: String, digest: String },
    #[error("invalid digest {0:?}: the sha256 hex part must be 64 lower-case hex characters")]
    Encoding(String),
}

impl Digest {
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let Some((algorithm, hex)) = s.split_once(':') else {
            return Err(DigestError::Format(s.to_string()));
        };
        if algorithm != "sha256" {
            let valid_algorithm = !algorithm.is_empty()
                && algorithm
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
            if !valid_algorithm {
                return Err(DigestError::Format(s.to_string()));
            }
            return Err(DigestError::Algorithm {
                algorithm: algorithm.to_string(),
                digest: s.to_string(),
            });
        }
        Self::from_hex(hex).map_err(|_| DigestError::Encoding(s.to_string()))
    }

    /// Builds a digest from the bare 64-character hex part.
    pub fn from_hex(hex: &str) -> Result<Self, DigestError> {
        let ok = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        if !ok {
            return Err(DigestError::Encoding(hex.to_string()));
        }
        Ok(Self {
            hex: hex.to_string(),
        })
    }

    pub fn of_bytes(data: &[u8]) -> Self {
        Self::from_sha256(Sha256::digest(data).into())
    }

    pub fn from_sha256(raw: [u8; 32]) -> Self {
        Self {
            hex: hex::encode(raw),
        }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    pub fn algorithm(&self) -> &'static str {
        "sha256"
    }

    /// The first 12 hex characters, as `docker images` and crictl print image IDs.
    pub fn short(&self) -> &str {
        &self.hex[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Hashes everything written through it; used to compute digests while streaming.
#[derive(Default, Clone)]
pub struct Sha256Writer {
    hasher: Sha256,
    written: u64,
}

impl Sha256Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
        self.written += data.len() as u64;
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn finish(self) -> Digest {
        Digest::from_sha256(self.hasher.finalize().into())
    }
}

impl std::io::Write for Sha256Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn valid_digest_round_trips() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(d.to_string(), format!("sha256:{HEX}"));
        assert_eq!(d, Digest::of_bytes(b""));
    }

    #[test]
    fn bad_digests_are_refused() {
        assert!(matches!(
            Digest::parse(&format!("sha512:{HEX}")),
            Err(DigestError::Algorithm { .. })
        ));
        assert!(Digest::parse(&format!("sha256:{}", HEX.to_uppercase())).is_err());
        assert!(Digest::parse(&format!("sha256:{}", &HEX[1..])).is_err());
        assert!(Digest::parse("sha256:../../etc/passwd").is_err());
        assert!(Digest::parse(HEX).is_err());
        assert!(Digest::parse("../x:abc").is_err());
    }

    #[test]
    fn streaming_hash_matches_one_shot() {
        let mut w = Sha256Writer::new();
        w.update(b"hello ");
        w.update(b"world");
        assert_eq!(w.written(), 11);
        assert_eq!(w.finish(), Digest::of_bytes(b"hello world"));
    }
}
