//! The client against canned HTTP/1.1 servers on loopback. The servers answer a TLS ClientHello
//! with a plain-HTTP 400, as real HTTP servers do, so these also exercise the localhost http
//! fallback.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::manifest::OCI_MANIFEST;

#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Send only this many body bytes, then go silent.
    stall_after: Option<usize>,
}

fn reply(status: u16, body: &[u8]) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body: body.to_vec(),
        stall_after: None,
    }
}

impl Reply {
    fn with(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.to_string(), v.to_string()));
        self
    }
}

type Handler = dyn Fn(&Req, SocketAddr) -> Reply + Send + Sync;

struct Server {
    addr: SocketAddr,
    reqs: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn registry(&self) -> String {
        self.addr.to_string()
    }
    fn requests(&self) -> Vec<Req> {
        self.reqs.lock().unwrap().clone()
    }
}

async fn serve(handler: impl Fn(&Req, SocketAddr) -> Reply + Send + Sync + 'static) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let reqs = Arc::new(Mutex::new(Vec::new()));
    let handler: Arc<Handler> = Arc::new(handler);
    let log = reqs.clone();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(connection(sock, addr, handler.clone(), log.clone()));
        }
    });
    Server { addr, reqs }
}

async fn connection(
    mut sock: TcpStream,
    addr: SocketAddr,
    handler: Arc<Handler>,
    log: Arc<Mutex<Vec<Req>>>,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf[0] == 0x16 {
            let _ = sock
                .write_all(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )
                .await;
            return;
        }
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let path = first.next().unwrap_or("").to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let Ok(n) = sock.read(&mut chunk).await else {
            return;
        };
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    let req = Req {
        method,
        path,
        headers,
        body,
    };
    let r = handler(&req, addr);
    log.lock().unwrap().push(req);
    let mut out = format!(
        "HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
        r.status,
        r.body.len()
    );
    for (k, v) in &r.headers {
        out.push_str(&format!("{k}: {v}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    let sent = r.stall_after.unwrap_or(r.body.len());
    bytes.extend_from_slice(&r.body[..sent]);
    let _ = sock.write_all(&bytes).await;
    if r.stall_after.is_some() {
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let _ = sock.shutdown().await;
}

fn opts() -> ClientOptions {
    ClientOptions {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        progress_timeout: Duration::from_millis(300),
        use_env_proxy: false,
        ..Default::default()
    }
}

fn client() -> RegistryClient {
    RegistryClient::new(PathBuf::from("/nonexistent/berth-test-certs.d"), opts())
}

fn manifest_body() -> Vec<u8> {
    let d = Digest::of_bytes(b"config");
    format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{d}","size":6}},"layers":[]}}"#
    )
    .into_bytes()
}

fn creds() -> Credentials {
    Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
        ..Default::default()
    }
}

fn basic_value() -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("alice:s3cret")
    )
}

fn reference(server: &Server, rest: &str) -> Reference {
    Reference::parse(&format!("{}/{rest}", server.registry())).unwrap()
}

#[tokio::test]
async fn anonymous_resolve_by_tag() {
    let body = manifest_body();
    let served = body.clone();
    let s = serve(move |req, _| match req.path.as_str() {
        "/v2/library/app/manifests/1.0" => {
            reply(200, &served).with("Content-Type", OCI_MANIFEST).with(
                "Docker-Content-Digest",
                &Digest::of_bytes(&served).to_string(),
            )
        }
        _ => reply(404, b""),
    })
    .await;
    let r = reference(&s, "library/app:1.0");
    let got = client().resolve(&r, None).await.unwrap();
    assert_eq!(got.digest, Digest::of_bytes(&body));
    assert_eq!(got.media_type, OCI_MANIFEST);
    assert_eq!(&got.body[..], &body[..]);
    assert_eq!(got.host.host, s.registry());
    assert_eq!(got.host.scheme, "http");
    let reqs = s.requests();
    let accept = reqs[0].header("accept").unwrap_or_default();
    for t in MANIFEST_ACCEPT {
        assert!(accept.contains(t), "{accept}");
    }
    assert!(reqs[0].header("authorization").is_none());

    let by_digest = client()
        .fetch_manifest(&r, &got.digest, None)
        .await
        .unwrap_err();
    assert_eq!(by_digest.kind(), ErrorKind::NotFound);
    assert!(by_digest.to_string().contains("not found"), "{by_digest}");
}

#[tokio::test]
async fn bearer_token_flow_with_basic_credentials_and_cache() {
    let body = manifest_body();
    let served = body.clone();
    let s = serve(move |req, addr| {
        if req.path.starts_with("/token?") {
            if req.header("authorization") != Some(basic_value().as_str()) {
                return reply(401, b"");
            }
            return reply(200, br#"{"token":"tok123","expires_in":300}"#);
        }
        if req.header("authorization") != Some("Bearer tok123") {
            let challenge = format!(
                r#"Bearer realm="http://{addr}/token",service="test-reg",scope="repository:team/app:pull""#
            );
            return reply(401, b"").with("WWW-Authenticate", &challenge);
        }
        match req.path.as_str() {
            "/v2/team/app/manifests/v1" => reply(200, &served).with("Content-Type", OCI_MANIFEST),
            _ => reply(404, b""),
        }
    })
    .await;
    let c = client();
    let r = reference(&s, "team/app:v1");
    let got = c.resolve(&r, Some(&creds())).await.unwrap();
    assert_eq!(got.digest, Digest::of_bytes(&body));
    // The token is cached: the second resolve sends it up front.
    c.resolve(&r, Some(&creds())).await.unwrap();

    let reqs = s.requests();
    let tokens: Vec<&Req> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    assert_eq!(tokens.len(), 1, "{reqs:?}");
    assert!(tokens[0].path.contains("service=test-reg"));
    assert!(tokens[0]
        .path
        .contains("scope=repository%3Ateam%2Fapp%3Apull"));
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    assert_eq!(reqs[3].header("authorization"), Some("Bearer tok123"));

    // Wrong credentials fail at the token endpoint as unauthenticated.
    let bad = Credentials {
        username: "alice".into(),
        password: "wrong".into(),
        ..Default::default()
    };
    let e = client().resolve(&r, Some(&bad)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated, "{e}");
}

#[tokio::test]
async fn identity_token_is_exchanged_with_a_post() {
    let body = manifest_body();
    let s = serve(move |req, addr| {
        if req.path == "/oauth" {
            let form = String::from_utf8_lossy(&req.body);
            if req.method == "POST"
                && form.contains("grant_type=refresh_token")
                && form.contains("refresh_token=idtok")
            {
                return reply(200, br#"{"access_token":"acc"}"#);
            }
            return reply(400, b"");
        }
        if req.header("authorization") != Some("Bearer acc") {
            let challenge = format!(r#"Bearer realm="http://{addr}/oauth",service="svc""#);
            return reply(401, b"").with("WWW-Authenticate", &challenge);
        }
        reply(200, &body).with("Content-Type", OCI_MANIFEST)
    })
    .await;
    let creds = Credentials {
        identity_token: "idtok".into(),
        ..Default::default()
    };
    client()
        .resolve(&reference(&s, "a:b"), Some(&creds))
        .await
        .unwrap();
}

#[tokio::test]
async fn registry_token_is_sent_as_bearer() {
    let body = manifest_body();
    let s = serve(move |req, _| match req.header("authorization") {
        Some("Bearer given") => reply(200, &body).with("Content-Type", OCI_MANIFEST),
        _ => reply(401, b"").with("WWW-Authenticate", "Basic realm=x"),
    })
    .await;
    let creds = Credentials {
        registry_token: "given".into(),
        ..Default::default()
    };
    client()
        .resolve(&reference(&s, "a:b"), Some(&creds))
        .await
        .unwrap();
    assert_eq!(s.requests().len(), 1);
}

#[tokio::test]
async fn basic_auth_challenge() {
    let body = manifest_body();
    let s = serve(move |req, _| {
        if req.header("authorization") != Some(basic_value().as_str()) {
            return reply(401, b"").with("WWW-Authenticate", r#"Basic realm="Registry Realm""#);
        }
        reply(200, &body).with("Content-Type", "application/json")
    })
    .await;
    let r = reference(&s, "private/app:1");
    let got = client().resolve(&r, Some(&creds())).await.unwrap();
    assert_eq!(got.media_type, OCI_MANIFEST);

    let e = client().resolve(&r, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthenticated);
    assert!(e.to_string().contains(&s.registry()), "{e}");
    assert!(e.to_string().contains("private/app"), "{e}");
}

#[tokio::test]
async fn forbidden_is_permission_denied() {
    let s = serve(|_, _| reply(403, b"")).await;
    let e = client()
        .resolve(&reference(&s, "a:b"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied);
}

#[tokio::test]
async fn blob_redirect_to_another_host_drops_authorization() {
    let blob = b"layer data".to_vec();
    let digest = Digest::of_bytes(&blob);
    let cdn = serve(move |_, _| reply(200, &blob)).await;
    let cdn_addr = cdn.addr;
    let reg = serve(move |req, _| {
        if req.header("authorization") != Some(basic_value().as_str()) {
            return reply(401, b"").with("WWW-Authenticate", r#"Basic realm="r""#);
        }
        reply(307, b"").with("Location", &format!("http://{cdn_addr}/storage/blob?sig=1"))
    })
    .await;
    let r = reference(&reg, "team/app:1");
    let got = client()
        .fetch_blob_bytes(&r, &digest, 1024, Some(&creds()))
        .await
        .unwrap();
    assert_eq!(&got[..], b"layer data");
    let cdn_reqs = cdn.requests();
    assert_eq!(cdn_reqs.len(), 1);
    assert_eq!(cdn_reqs[0].path, "/storage/blob?sig=1");
    assert!(
        cdn_reqs[0].header("authorization").is_none(),
        "{cdn_reqs:?}"
    );
    let reg_reqs = reg.requests();
    assert_eq!(
        reg_reqs.last().unwrap().path,
        format!("/v2/team/app/blobs/{digest}")
    );

    // A wrong blob is detected, and a too small cap refused.
    let other = Digest::of_bytes(b"other");
    let e = client()
        .fetch_blob_bytes(&r, &other, 1024, Some(&creds()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DataLoss, "{e}");
    assert!(!e.to_string().contains("sig=1"), "{e}");
    let e = client()
        .fetch_blob_bytes(&r, &digest, 4, Some(&creds()))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
}

async fn collect(mut s: BlobStream) -> Result<Vec<u8>, RegistryError> {
    let mut out = Vec::new();
    while let Some(c) = s.next_chunk().await? {
        out.extend_from_slice(&c);
    }
    Ok(out)
}

#[tokio::test]
async fn range_resume_and_servers_that_ignore_it() {
    let blob = b"0123456789".to_vec();
    let honoured = Digest::of_bytes(&blob);
    let ignored = Digest::of_bytes(b"ignored");
    let (h, i) = (honoured.clone(), ignored.clone());
    let s = serve(move |req, _| {
        let range_start = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|r| r.parse::<usize>().ok());
        if req.path.ends_with(&h.to_string()) {
            if let Some(start) = range_start {
                return reply(206, &blob[start..])
                    .with("Content-Range", &format!("bytes {start}-9/10"));
            }
            return reply(200, &blob);
        }
        if req.path.ends_with(&i.to_string()) {
            return reply(200, &blob);
        }
        reply(404, b"")
    })
    .await;
    let r = reference(&s, "a:b");
    let c = client();
    let stream = c.fetch_blob(&r, &honoured, 4, None).await.unwrap();
    assert_eq!((stream.offset, stream.total), (4, Some(10)));
    assert_eq!(collect(stream).await.unwrap(), b"456789");
    assert_eq!(s.requests()[0].header("range"), Some("bytes=4-"));

    let stream = c.fetch_blob(&r, &ignored, 4, None).await.unwrap();
    assert_eq!((stream.offset, stream.total), (0, Some(10)));
    assert_eq!(collect(stream).await.unwrap(), b"0123456789");

    let stream = c.fetch_blob(&r, &honoured, 0, None).await.unwrap();
    assert_eq!(stream.offset, 0);
    assert!(s.requests()[2].header("range").is_none());

    let e = c
        .fetch_blob(&r, &Digest::of_bytes(b"missing"), 0, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn stalled_blob_stream_times_out() {
    let s = serve(|_, _| {
        let mut r = reply(200, &[7u8; 100]);
        r.stall_after = Some(10);
        r
    })
    .await;
    let start = std::time::Instant::now();
    let stream = client()
        .fetch_blob(&reference(&s, "a:b"), &Digest::of_bytes(b"x"), 0, None)
        .await
        .unwrap();
    let e = collect(stream).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DeadlineExceeded);
    assert!(
        e.to_string().starts_with("no data for 300ms from http://"),
        "{e}"
    );
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn manifest_digest_mismatch_is_data_loss() {
    let s = serve(|_, _| reply(200, &manifest_body()).with("Content-Type", OCI_MANIFEST)).await;
    let wrong = Digest::of_bytes(b"something else");
    let r = reference(&s, &format!("a@{wrong}"));
    let e = client().resolve(&r, None).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DataLoss);
    assert!(e.to_string().contains("manifest digest mismatch"), "{e}");
    let e = client()
        .fetch_manifest(&reference(&s, "a:b"), &wrong, None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::DataLoss);
}

#[tokio::test]
async fn oversized_manifest_is_refused() {
    let s = serve(|_, _| reply(200, &vec![b' '; MAX_MANIFEST_BYTES + 1])).await;
    let e = client()
        .resolve(&reference(&s, "a:b"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ResourceExhausted, "{e}");
}

#[tokio::test]
async fn mirror_misses_fall_through_to_the_server() {
    let body = manifest_body();
    let served = body.clone();
    let upstream = serve(move |_, _| reply(200, &served).with("Content-Type", OCI_MANIFEST)).await;
    let mirror = serve(|_, _| reply(404, b"")).await;
    let dead = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(upstream.registry());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n\n[host.\"http://{dead_addr}\"]\ncapabilities = [\"pull\", \"resolve\"]\n\n[host.\"http://{}/prefix\"]\ncapabilities = [\"pull\", \"resolve\"]\noverride_path = true\n",
            upstream.registry(),
            mirror.registry()
        ),
    )
    .unwrap();
    let c = RegistryClient::new(tmp.path().to_path_buf(), opts());
    let got = c.resolve(&reference(&upstream, "a:b"), None).await.unwrap();
    assert_eq!(got.host.host, upstream.registry());
    assert_eq!(got.host.scheme, "http");
    assert_eq!(mirror.requests()[0].path, "/prefix/a/manifests/b");

    // All hosts failing reports the server's "not found" over the dead mirror.
    let dir = tmp.path().join(mirror.registry());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n[host.\"http://{dead_addr}\"]\n",
            mirror.registry()
        ),
    )
    .unwrap();
    let e = c
        .resolve(&reference(&mirror, "a:b"), None)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn pull_only_mirrors_serve_digests_but_not_tags() {
    let body = manifest_body();
    let digest = Digest::of_bytes(&body);
    let served = body.clone();
    let upstream = serve(move |_, _| reply(200, &served).with("Content-Type", OCI_MANIFEST)).await;
    let served = body.clone();
    let mirror = serve(move |_, _| reply(200, &served).with("Content-Type", OCI_MANIFEST)).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(upstream.registry());
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{}\"\n[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n",
            upstream.registry(),
            mirror.registry()
        ),
    )
    .unwrap();
    let c = RegistryClient::new(tmp.path().to_path_buf(), opts());
    let r = reference(&upstream, "a:b");
    let by_tag = c.resolve(&r, None).await.unwrap();
    assert_eq!(by_tag.host.host, upstream.registry());
    let by_digest = c.fetch_manifest(&r, &digest, None).await.unwrap();
    assert_eq!(by_digest.host.host, mirror.registry());
    assert_eq!(mirror.requests().len(), 1);
}
