use std::collections::HashMap;

use berth_core::Digest;
use serde::de::IgnoredAny;
use serde::{Deserialize, Deserializer, Serialize};

use crate::error::RegistryError;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDISTRIBUTABLE_TAR_GZIP: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER_TAR_GZIP: &str =
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
pub const DOCKER_SCHEMA1_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v1+json";
pub const DOCKER_SCHEMA1_SIGNED_MANIFEST: &str =
    "application/vnd.docker.distribution.manifest.v1+prettyjws";

/// The manifest types sent in `Accept` when resolving.
pub const MANIFEST_ACCEPT: [&str; 4] = [
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
];

pub const MAX_MANIFEST_BYTES: usize = 4 << 20;
pub const MAX_CONFIG_BYTES: usize = 8 << 20;

const ATTESTATION_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn two() -> u32 {
    2
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    #[serde(deserialize_with = "null_default", default)]
    pub os: String,
    #[serde(deserialize_with = "null_default", default)]
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(
        rename = "os.version",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    #[serde(
        rename = "os.features",
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub os_features: Vec<String>,
}

impl Platform {
    pub fn new(os: &str, architecture: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_string(),
            architecture: architecture.to_string(),
            variant: variant.map(str::to_string),
            os_version: None,
            os_features: Vec::new(),
        }
    }

    /// This machine, named as Go's GOOS/GOARCH (the names image indexes use).
    pub fn host() -> Self {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "powerpc64" => ("ppc64", None),
            "loongarch64" => ("loong64", None),
            "mips64" if cfg!(target_endian = "little") => ("mips64le", None),
            other => (other, None),
        };
        Self::new("linux", arch, variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) if !v.is_empty() => write!(f, "/{v}"),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    #[serde(default = "two")]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    #[serde(default, deserialize_with = "null_default")]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<HashMap<String, String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    #[serde(default = "two")]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub manifests: Vec<Descriptor>,
}

// Unboxed so callers can match and move out directly; one value exists per pull, so the size
// difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestKind {
    Image(ImageManifest),
    Index(ImageIndex),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Image,
    Index,
    Schema1,
}

fn kind_of(media_type: &str) -> Option<Kind> {
    match media_type {
        OCI_MANIFEST | DOCKER_MANIFEST => Some(Kind::Image),
        OCI_INDEX | DOCKER_MANIFEST_LIST => Some(Kind::Index),
        DOCKER_SCHEMA1_MANIFEST | DOCKER_SCHEMA1_SIGNED_MANIFEST => Some(Kind::Schema1),
        _ => None,
    }
}

/// The bare media type of a `Content-Type` header value.
pub(crate) fn bare_content_type(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    config: Option<IgnoredAny>,
    fs_layers: Option<IgnoredAny>,
}

fn invalid(reason: impl Into<String>) -> RegistryError {
    RegistryError::InvalidContent {
        what: "manifest",
        reason: reason.into(),
    }
}

/// Parses an image manifest or index. The kind comes from the JSON `mediaType` or the
/// `Content-Type`, which must agree, else from the shape of the document, as containerd does for
/// registries that serve `application/json`.
pub fn parse_manifest(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<ManifestKind, RegistryError> {
    let probe: Probe = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    let from_ct = content_type
        .map(bare_content_type)
        .as_deref()
        .and_then(kind_of);
    let from_json = probe.media_type.as_deref().and_then(kind_of);
    if probe.schema_version == Some(1)
        || probe.fs_layers.is_some()
        || from_ct == Some(Kind::Schema1)
        || from_json == Some(Kind::Schema1)
    {
        return Err(RegistryError::UnsupportedManifest {
            reason: "docker image manifest schema 1 is deprecated and not supported; push the \
                     image again with a current client"
                .to_string(),
        });
    }
    if let Some(v) = probe.schema_version.filter(|v| *v != 2) {
        return Err(invalid(format!("unsupported schemaVersion {v}")));
    }
    let kind = match (from_json, from_ct) {
        (Some(j), Some(c)) if j != c => {
            return Err(invalid(format!(
                "mediaType {:?} does not match content type {:?}",
                probe.media_type.unwrap_or_default(),
                content_type.unwrap_or_default()
            )))
        }
        (Some(k), _) | (None, Some(k)) => k,
        (None, None) => match (probe.manifests.is_some(), probe.config.is_some()) {
            (true, false) => Kind::Index,
            (false, true) => Kind::Image,
            _ => {
                return Err(invalid(
                    "cannot tell whether the document is a manifest or an index",
                ))
            }
        },
    };
    match kind {
        Kind::Index => {
            if probe.config.is_some() {
                return Err(invalid("index has a config field"));
            }
            serde_json::from_slice(body)
                .map(ManifestKind::Index)
                .map_err(|e| invalid(e.to_string()))
        }
        _ => {
            if probe.manifests.is_some() {
                return Err(invalid("image manifest has a manifests field"));
            }
            serde_json::from_slice(body)
                .map(ManifestKind::Image)
                .map_err(|e| invalid(e.to_string()))
        }
    }
}

/// Best-effort media type of a fetched manifest, for reporting: the `Content-Type` when it names
/// a manifest type, else the document's own `mediaType`, else its shape.
pub(crate) fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> String {
    let ct = content_type.map(bare_content_type);
    if let Some(ct) = ct.as_deref().filter(|c| kind_of(c).is_some()) {
        return ct.to_string();
    }
    match parse_manifest(content_type, body) {
        Ok(ManifestKind::Index(i)) => i.media_type.unwrap_or_else(|| OCI_INDEX.to_string()),
        Ok(ManifestKind::Image(m)) => m.media_type.unwrap_or_else(|| OCI_MANIFEST.to_string()),
        Err(_) => ct.unwrap_or_default(),
    }
}

struct Normalized {
    os: String,
    arch: String,
    variant: String,
}

/// containerd's platforms.Normalize: one spelling per architecture and variant.
fn normalize(p: &Platform) -> Normalized {
    let os = p.os.to_ascii_lowercase();
    let arch = p.architecture.to_ascii_lowercase();
    let variant = p.variant.as_deref().unwrap_or("").to_ascii_lowercase();
    let (arch, variant) = match arch.as_str() {
        "i386" => ("386".to_string(), String::new()),
        "x86_64" | "x86-64" | "amd64" => (
            "amd64".to_string(),
            if variant == "v1" {
                String::new()
            } else {
                variant
            },
        ),
        "aarch64" | "arm64" => (
            "arm64".to_string(),
            match variant.as_str() {
                "8" | "v8" | "v8.0" => String::new(),
                _ => variant,
            },
        ),
        "armhf" => ("arm".to_string(), "v7".to_string()),
        "armel" => ("arm".to_string(), "v6".to_string()),
        "arm" => (
            "arm".to_string(),
            match variant.as_str() {
                "" | "7" => "v7".to_string(),
                "5" | "6" | "8" => format!("v{variant}"),
                _ => variant,
            },
        ),
        _ => (arch, variant),
    };
    Normalized { os, arch, variant }
}

/// Variants `want` can run, best first (containerd's platformVector, without cross-architecture
/// fallbacks such as amd64 → 386).
fn acceptable_variants(want: &Normalized) -> Vec<String> {
    let numeric = want
        .variant
        .strip_prefix('v')
        .and_then(|n| n.parse::<u32>().ok());
    match (want.arch.as_str(), numeric) {
        ("amd64", Some(n)) if n > 1 => {
            let mut v: Vec<String> = (2..=n).rev().map(|i| format!("v{i}")).collect();
            v.push(String::new());
            v
        }
        ("arm", Some(n)) if n >= 5 => (5..=n).rev().map(|i| format!("v{i}")).collect(),
        ("arm64", _) if !want.variant.is_empty() => vec![want.variant.clone(), String::new()],
        _ => vec![want.variant.clone()],
    }
}

fn is_attestation(d: &Descriptor) -> bool {
    let annotated = d
        .annotations
        .as_ref()
        .and_then(|a| a.get(ATTESTATION_TYPE_ANNOTATION))
        .is_some_and(|t| t == "attestation-manifest");
    let unknown = d
        .platform
        .as_ref()
        .is_some_and(|p| p.os == "unknown" && p.architecture == "unknown");
    annotated || unknown
}

/// Picks the manifest of `index` to run on `want`: OS and architecture must match, and among the
/// compatible variants the closest wins; ties go to the first entry, as in containerd.
pub fn select_platform<'a>(index: &'a ImageIndex, want: &Platform) -> Option<&'a Descriptor> {
    let want = normalize(want);
    let variants = acceptable_variants(&want);
    index
        .manifests
        .iter()
        .filter(|d| !is_attestation(d))
        .filter_map(|d| {
            let p = normalize(d.platform.as_ref()?);
            if p.os != want.os || p.arch != want.arch {
                return None;
            }
            let rank = variants.iter().position(|v| *v == p.variant)?;
            Some((rank, d))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, d)| d)
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    #[serde(default, deserialize_with = "null_default")]
    pub architecture: String,
    #[serde(default, deserialize_with = "null_default")]
    pub os: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub config: ContainerConfig,
    #[serde(default, deserialize_with = "null_default")]
    pub rootfs: RootFs,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub history: Vec<History>,
}

/// The `config` object of an image config: the defaults a container inherits.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "HashMap::is_empty"
    )]
    pub labels: HashMap<String, String>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "HashMap::is_empty"
    )]
    pub exposed_ports: HashMap<String, serde_json::Value>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "HashMap::is_empty"
    )]
    pub volumes: HashMap<String, serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default, deserialize_with = "null_default")]
    pub fs_type: String,
    #[serde(default, deserialize_with = "null_default")]
    pub diff_ids: Vec<Digest>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub empty_layer: bool,
}

impl ImageConfig {
    pub fn parse(body: &[u8]) -> Result<Self, RegistryError> {
        serde_json::from_slice(body).map_err(|e| RegistryError::InvalidContent {
            what: "image config",
            reason: e.to_string(),
        })
    }
}

/// OCI layer chain IDs: each names a layer together with everything below it.
pub fn chain_ids(diff_ids: &[Digest]) -> Vec<Digest> {
    let mut out: Vec<Digest> = Vec::with_capacity(diff_ids.len());
    for d in diff_ids {
        let next = match out.last() {
            None => d.clone(),
            Some(prev) => Digest::of_bytes(format!("{prev} {d}").as_bytes()),
        };
        out.push(next);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dg(n: u8) -> Digest {
        Digest::of_bytes(&[n])
    }

    fn desc(platform: Option<Platform>, n: u8) -> Descriptor {
        Descriptor {
            media_type: OCI_MANIFEST.to_string(),
            digest: dg(n),
            size: 100,
            platform,
            annotations: None,
            urls: None,
        }
    }

    fn index() -> ImageIndex {
        let mut att = desc(Some(Platform::new("unknown", "unknown", None)), 9);
        att.annotations = Some(HashMap::from([(
            ATTESTATION_TYPE_ANNOTATION.to_string(),
            "attestation-manifest".to_string(),
        )]));
        let mut att_linux = desc(Some(Platform::new("linux", "amd64", None)), 8);
        att_linux.annotations = att.annotations.clone();
        ImageIndex {
            schema_version: 2,
            media_type: Some(OCI_INDEX.to_string()),
            manifests: vec![
                att_linux,
                att,
                desc(None, 7),
                desc(Some(Platform::new("linux", "amd64", None)), 1),
                desc(Some(Platform::new("linux", "arm64", Some("v8"))), 2),
                desc(Some(Platform::new("linux", "arm", Some("v6"))), 3),
                desc(Some(Platform::new("linux", "arm", Some("v7"))), 4),
                desc(Some(Platform::new("windows", "amd64", None)), 5),
                desc(Some(Platform::new("linux", "amd64", Some("v3"))), 6),
            ],
        }
    }

    fn pick(want: Platform) -> Option<Digest> {
        let idx = index();
        select_platform(&idx, &want).map(|d| d.digest.clone())
    }

    #[test]
    fn platform_selection_follows_containerd() {
        assert_eq!(pick(Platform::new("linux", "amd64", None)), Some(dg(1)));
        assert_eq!(pick(Platform::new("linux", "x86_64", None)), Some(dg(1)));
        assert_eq!(
            pick(Platform::new("linux", "amd64", Some("v3"))),
            Some(dg(6))
        );
        assert_eq!(
            pick(Platform::new("linux", "amd64", Some("v2"))),
            Some(dg(1))
        );
        assert_eq!(pick(Platform::new("linux", "arm64", None)), Some(dg(2)));
        assert_eq!(
            pick(Platform::new("linux", "arm64", Some("v8"))),
            Some(dg(2))
        );
        assert_eq!(pick(Platform::new("linux", "aarch64", None)), Some(dg(2)));
        assert_eq!(pick(Platform::new("linux", "arm", Some("v7"))), Some(dg(4)));
        assert_eq!(pick(Platform::new("linux", "arm", None)), Some(dg(4)));
        assert_eq!(pick(Platform::new("linux", "arm", Some("v6"))), Some(dg(3)));
        assert_eq!(pick(Platform::new("linux", "arm", Some("v5"))), None);
        assert_eq!(pick(Platform::new("linux", "s390x", None)), None);
        assert_eq!(pick(Platform::new("windows", "amd64", None)), Some(dg(5)));
        assert_eq!(pick(Platform::new("unknown", "unknown", None)), None);

        // arm64 images that spell out the v8 variant match a host that does not, and vice versa.
        let mut idx = index();
        idx.manifests.retain(|d| d.digest != dg(2));
        idx.manifests
            .push(desc(Some(Platform::new("linux", "arm64", None)), 10));
        let got = select_platform(&idx, &Platform::new("linux", "arm64", Some("v8")));
        assert_eq!(got.map(|d| d.digest.clone()), Some(dg(10)));

        let h = Platform::host();
        assert_eq!(h.os, "linux");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h.architecture, "amd64");
        }
    }

    const INDEX_JSON: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json",
         "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
         "size": 7, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8",
         "os.version": "1", "os.features": ["x"]}}
      ]}"#;

    const MANIFEST_JSON: &str = r#"{
      "schemaVersion": 2,
      "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": 3,
        "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
      "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 4,
        "digest": "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "urls": ["https://example.com/l"]}]
    }"#;

    #[test]
    fn manifests_are_parsed_by_type_or_shape() {
        let ManifestKind::Index(i) = parse_manifest(None, INDEX_JSON.as_bytes()).unwrap() else {
            panic!("expected index");
        };
        let p = i.manifests[0].platform.as_ref().unwrap();
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.os_version.as_deref(), Some("1"));
        assert_eq!(p.os_features, vec!["x".to_string()]);

        let m = parse_manifest(
            Some("application/json; charset=utf-8"),
            MANIFEST_JSON.as_bytes(),
        );
        let ManifestKind::Image(m) = m.unwrap() else {
            panic!("expected image manifest");
        };
        assert_eq!(m.layers.len(), 1);
        assert_eq!(m.config.media_type, DOCKER_CONFIG);
        assert!(matches!(
            parse_manifest(Some(DOCKER_MANIFEST), MANIFEST_JSON.as_bytes()),
            Ok(ManifestKind::Image(_))
        ));
        // Content type and document disagree.
        assert!(parse_manifest(Some(OCI_MANIFEST), INDEX_JSON.as_bytes()).is_err());
        assert!(parse_manifest(Some(OCI_INDEX), MANIFEST_JSON.as_bytes()).is_err());
        assert!(parse_manifest(None, b"{}").is_err());
        assert!(parse_manifest(None, b"not json").is_err());
        assert_eq!(
            manifest_media_type(Some("text/plain"), MANIFEST_JSON.as_bytes()),
            OCI_MANIFEST
        );
        assert_eq!(
            manifest_media_type(Some(DOCKER_MANIFEST), MANIFEST_JSON.as_bytes()),
            DOCKER_MANIFEST
        );
    }

    #[test]
    fn schema1_is_refused_clearly() {
        let body = br#"{"schemaVersion": 1, "name": "x", "tag": "y", "fsLayers": []}"#;
        let e = parse_manifest(None, body).unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
        let e = parse_manifest(Some(DOCKER_SCHEMA1_SIGNED_MANIFEST), body).unwrap_err();
        assert!(e.to_string().contains("schema 1"), "{e}");
    }

    #[test]
    fn image_config_tolerates_nulls() {
        let body = br#"{
          "architecture": "amd64", "os": "linux", "created": "2024-01-01T00:00:00Z",
          "config": {"User": "1000", "Env": ["PATH=/bin"], "Entrypoint": null, "Cmd": ["sh"],
            "WorkingDir": "/w", "Labels": null, "ExposedPorts": {"80/tcp": {}},
            "Volumes": {"/data": {}}, "StopSignal": "SIGTERM"},
          "rootfs": {"type": "layers", "diff_ids": [
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]},
          "history": [{"created_by": "x", "empty_layer": true}, {"created": null}]
        }"#;
        let c = ImageConfig::parse(body).unwrap();
        assert_eq!(c.config.user.as_deref(), Some("1000"));
        assert_eq!(c.config.entrypoint, None);
        assert_eq!(c.config.cmd, Some(vec!["sh".to_string()]));
        assert!(c.config.labels.is_empty());
        assert!(c.config.exposed_ports.contains_key("80/tcp"));
        assert_eq!(c.rootfs.diff_ids.len(), 1);
        assert!(c.history[0].empty_layer);

        let minimal = ImageConfig::parse(br#"{"config": null, "rootfs": null, "history": null}"#);
        assert_eq!(minimal.unwrap(), ImageConfig::default());
        assert!(ImageConfig::parse(br#"{"rootfs": {"diff_ids": ["md5:x"]}}"#).is_err());
    }

    #[test]
    fn chain_ids_follow_the_oci_definition() {
        let d: Vec<Digest> = (1..=3).map(dg).collect();
        let c1 =
            Digest::of_bytes(format!("sha256:{} sha256:{}", d[0].hex(), d[1].hex()).as_bytes());
        let c2 = Digest::of_bytes(format!("sha256:{} sha256:{}", c1.hex(), d[2].hex()).as_bytes());
        assert_eq!(chain_ids(&d), vec![d[0].clone(), c1, c2]);
        assert!(chain_ids(&[]).is_empty());
        // Computed independently with `printf '%s %s' "$a" "$a" | sha256sum`.
        let a = Digest::of_bytes(b"");
        let ids = chain_ids(&[a.clone(), a]);
        assert_eq!(
            ids[1].hex(),
            "de9d9016b852e46e9f3973e20d3a6d17e120f7144931d50cd6e2a8ad53e81960"
        );
    }
}
