use std::io::{self, BufReader, Read};

/// Read buffer in front of a decompressor. Registry streams arrive in small chunks; a large buffer
/// lets the decoder work on big slices, which is where zlib-rs and zstd are fast.
const DECODER_BUFFER: usize = 256 * 1024;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The compression of an OCI or Docker layer media type, or `None` when the media type is not
    /// a layer type we can unpack (for example an encrypted or an unknown artifact layer).
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        // Parameters such as `; charset=` are not used by registries for layers, but cost nothing
        // to tolerate.
        let media_type = media_type.split(';').next().unwrap_or("").trim();
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Guesses the compression from the first bytes of a blob; anything that is neither gzip nor
    /// zstd is taken to be a plain tar.
    pub fn detect(magic: &[u8]) -> Compression {
        if magic.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Wraps `compressed` in the matching decoder. Concatenated gzip members and zstd frames are
    /// all decoded, as `gzip -d` and `zstd -d` do, so the whole blob is consumed.
    pub fn decoder<'a, R: Read + 'a>(self, compressed: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(compressed),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(
                BufReader::with_capacity(DECODER_BUFFER, compressed),
            )),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(
                BufReader::with_capacity(DECODER_BUFFER, compressed),
            )?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn media_types_map_to_compression() {
        let cases = [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
                Compression::Gzip,
            ),
        ];
        for (mt, want) in cases {
            assert_eq!(Compression::from_media_type(mt), Some(want), "{mt}");
        }
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.config.v1+json"),
            None
        );
        assert_eq!(
            Compression::from_media_type("application/vnd.oci.image.layer.v1.tar+encrypted"),
            None
        );
    }

    #[test]
    fn detect_and_decode_round_trip() {
        let data = b"hello layer".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zst = zstd::encode_all(&data[..], 1).unwrap();
        for (blob, want) in [
            (gz, Compression::Gzip),
            (zst, Compression::Zstd),
            (data.clone(), Compression::None),
        ] {
            assert_eq!(Compression::detect(&blob), want);
            let mut out = Vec::new();
            want.decoder(&blob[..])
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, data);
        }
    }

    #[test]
    fn concatenated_gzip_members_are_all_decoded() {
        let mut blob = Vec::new();
        for part in [&b"first "[..], b"second"] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(part).unwrap();
            blob.extend(gz.finish().unwrap());
        }
        let mut out = Vec::new();
        Compression::Gzip
            .decoder(&blob[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, b"first second");
    }
}
