use std::fmt;

use berth_core::{Digest, ErrorKind, HasKind};

pub const DEFAULT_REGISTRY: &str = "docker.io";
const LEGACY_DEFAULT_REGISTRY: &str = "index.docker.io";
const OFFICIAL_PREFIX: &str = "library/";
const DEFAULT_TAG: &str = "latest";
const MAX_NAME_LEN: usize = 255;
const MAX_TAG_LEN: usize = 128;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {input:?}: {reason}")]
pub struct ReferenceError {
    pub input: String,
    pub reason: String,
}

impl HasKind for ReferenceError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// A fully normalised image reference, as distribution/reference's `ParseDockerRef` produces,
/// except that a reference with both tag and digest keeps the tag (for display; the digest wins
/// when fetching).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(input: &str) -> Result<Self, ReferenceError> {
        let fail = |reason: &str| ReferenceError {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        if input.is_empty() {
            return Err(fail("reference is empty"));
        }
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail("cannot specify 64-byte hexadecimal strings"));
        }

        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                let digest = Digest::parse(d).map_err(|e| ReferenceError {
                    input: input.to_string(),
                    reason: format!("invalid digest: {e}"),
                })?;
                (rest, Some(digest))
            }
            None => (input, None),
        };

        // The first component is a registry only if it looks like a host name; otherwise it is
        // part of a Docker Hub repository (distribution/reference splitDockerDomain).
        let (domain, remainder) = match rest.split_once('/') {
            Some((first, tail))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.to_lowercase() != first =>
            {
                (first, tail)
            }
            _ => (DEFAULT_REGISTRY, rest),
        };
        let (path, tag) = match remainder.split_once(':') {
            Some((p, t)) => (p, Some(t)),
            None => (remainder, None),
        };
        if path.to_lowercase() != path {
            return Err(fail("repository name must be lowercase"));
        }
        if !valid_domain(domain) {
            return Err(fail("invalid registry host"));
        }
        if !path.split('/').all(valid_path_component) {
            return Err(fail("invalid repository name"));
        }
        if let Some(t) = tag {
            if !valid_tag(t) {
                return Err(fail(
                    "invalid tag: must match [A-Za-z0-9_][A-Za-z0-9_.-]* and be at most 128 characters",
                ));
            }
        }

        let registry = if domain == LEGACY_DEFAULT_REGISTRY {
            DEFAULT_REGISTRY
        } else {
            domain
        };
        let repository = if registry == DEFAULT_REGISTRY && !path.contains('/') {
            format!("{OFFICIAL_PREFIX}{path}")
        } else {
            path.to_string()
        };
        if registry.len() + 1 + repository.len() > MAX_NAME_LEN {
            return Err(fail("repository name must not be more than 255 characters"));
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_string()),
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (None, Some(_)) => None,
        };
        Ok(Self {
            registry: registry.to_string(),
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository`, e.g. `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// The path element for the manifest URL; a digest wins over a tag because it is immutable.
    pub fn tag_or_digest(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    pub fn with_digest(&self, digest: Digest) -> Reference {
        Reference {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The short form `docker` prints: `busybox:latest`, `foo/bar:1`, or the full name elsewhere.
    pub fn familiar(&self) -> String {
        let name = if self.registry == DEFAULT_REGISTRY {
            match self.repository.strip_prefix(OFFICIAL_PREFIX) {
                Some(short) if !short.contains('/') => short.to_string(),
                _ => self.repository.clone(),
            }
        } else {
            self.name()
        };
        with_suffix(name, self)
    }
}

fn with_suffix(mut s: String, r: &Reference) -> String {
    if let Some(t) = &r.tag {
        s.push(':');
        s.push_str(t);
    }
    if let Some(d) = &r.digest {
        s.push('@');
        s.push_str(&d.to_string());
    }
    s
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&with_suffix(self.name(), self))
    }
}

impl std::str::FromStr for Reference {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn valid_domain(d: &str) -> bool {
    let port = if let Some(rest) = d.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return false;
        };
        if ip.is_empty() || !ip.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return false;
        }
        match after {
            "" => None,
            a => match a.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        }
    } else {
        let (host, port) = match d.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (d, None),
        };
        if !host.split('.').all(valid_domain_component) {
            return false;
        }
        port
    };
    match port {
        None => true,
        Some(p) => !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()),
    }
}

fn valid_domain_component(c: &str) -> bool {
    let b = c.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        }
        _ => false,
    }
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`
fn valid_path_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        let sep_start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[sep_start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    match b.first() {
        Some(&f) if word(f) => {
            b.len() <= MAX_TAG_LEN && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn docker_hub_names_are_normalised() {
        let r = p("busybox");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.familiar(), "busybox:latest");
        assert_eq!(r.tag_or_digest(), "latest");

        assert_eq!(p("foo/bar").to_string(), "docker.io/foo/bar:latest");
        assert_eq!(p("foo/bar").familiar(), "foo/bar:latest");
        assert_eq!(
            p("busybox:1.36").to_string(),
            "docker.io/library/busybox:1.36"
        );
        assert_eq!(
            p("index.docker.io/library/nginx:1").to_string(),
            "docker.io/library/nginx:1"
        );
        assert_eq!(
            p("docker.io/nginx").to_string(),
            "docker.io/library/nginx:latest"
        );
        assert_eq!(p("index.docker.io/nginx").repository, "library/nginx");
        assert_eq!(p("a/b/c/d").to_string(), "docker.io/a/b/c/d:latest");
    }

    #[test]
    fn registries_with_ports_and_ips() {
        let r = p("localhost:5000/x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost:5000", "x")
        );
        let r = p("localhost/x");
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str()),
            ("localhost", "x")
        );
        let r = p("127.0.0.1:5000/a/b:tag");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.tag.as_deref(), Some("tag"));
        let r = p("[::1]:5000/x");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.to_string(), "[::1]:5000/x:latest");
        assert_eq!(p("[fe80::1]/x").registry, "[fe80::1]");
        assert_eq!(
            p("quay.io/coreos/etcd:v3").to_string(),
            "quay.io/coreos/etcd:v3"
        );
        assert_eq!(
            p("quay.io/coreos/etcd").familiar(),
            "quay.io/coreos/etcd:latest"
        );
        assert_eq!(p("Registry.Example.COM/x").registry, "Registry.Example.COM");
        assert_eq!(
            p("my-reg.example.com:443/a_b/c__d/e-f/g.h/i--j").repository,
            "a_b/c__d/e-f/g.h/i--j"
        );
    }

    #[test]
    fn digests_and_tags() {
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        let r = p(&format!("busybox@sha256:{HEX}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_ref(), Some(&d));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox@sha256:{HEX}")
        );
        assert_eq!(r.tag_or_digest(), format!("sha256:{HEX}"));

        let r = p(&format!("x:tag@sha256:{HEX}"));
        assert_eq!(r.tag.as_deref(), Some("tag"));
        assert_eq!(r.digest.as_ref(), Some(&d));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/x:tag@sha256:{HEX}")
        );
        assert_eq!(r.tag_or_digest(), format!("sha256:{HEX}"));
        assert_eq!(r.familiar(), format!("x:tag@sha256:{HEX}"));

        let w = p("localhost:5000/a:1").with_digest(d.clone());
        assert_eq!(w.to_string(), format!("localhost:5000/a@sha256:{HEX}"));
        assert_eq!(p(&w.to_string()), w);

        let long = "a".repeat(128);
        assert_eq!(p(&format!("x:{long}")).tag.as_deref(), Some(long.as_str()));
        assert_eq!(p("x:_A.b-1").tag.as_deref(), Some("_A.b-1"));
    }

    #[test]
    fn invalid_references_are_refused() {
        let cases = [
            "",
            "Busybox",
            "foo/Bar",
            "docker.io/Foo/bar",
            "x:",
            "x:.tag",
            "x:-tag",
            "x:ta/g",
            "x:ta+g",
            "x/../y",
            "../x",
            "x/./y",
            "x//y",
            "x/",
            "/x",
            "-x",
            "x-",
            "x__.y",
            "x...y",
            "localhost:/x",
            "localhost:abc/x",
            "[::1/x",
            "[zz]:5000/x",
            "-bad.com/x",
            "bad-.com/x",
            "a@",
            "x@sha256:abc",
            "x y",
            "x:tag:tag",
            HEX,
        ];
        for c in cases {
            let e = Reference::parse(c).expect_err(c);
            assert_eq!(e.kind(), ErrorKind::InvalidArgument);
            assert!(e.to_string().contains(&format!("{c:?}")), "{e}");
        }
        let too_long_tag = format!("x:{}", "a".repeat(129));
        assert!(Reference::parse(&too_long_tag).is_err());
        let too_long_name = format!("reg.io/{}", "a".repeat(250));
        assert!(Reference::parse(&too_long_name).is_err());
    }

    #[test]
    fn bad_digests_say_digest() {
        for c in [
            format!("x@sha512:{HEX}"),
            format!("x@sha256:{}", HEX.to_uppercase()),
            format!("x@sha256:{}", &HEX[2..]),
            format!("x:tag@sha256:{HEX}00"),
            "x@md5:abc".to_string(),
        ] {
            let e = Reference::parse(&c).expect_err(&c);
            assert!(e.to_string().contains("digest"), "{e}");
        }
    }
}
