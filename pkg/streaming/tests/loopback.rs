//! Client ↔ server over loopback with a backend that runs local processes and dials local
//! ports: the protocols end to end, and the limits.

use std::sync::Arc;
use std::time::Duration;

use berth_streaming::client::{self, PortForwarder, Transport};
use berth_streaming::{
    AttachRequest, Backend, BackendError, Config, ExecRequest, PortForwardRequest, Server, Stdio,
};
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

struct Local;

async fn run(cmd: Vec<String>, mut io: Stdio) -> Result<i32, BackendError> {
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| BackendError(e.to_string()))?;
    let mut cin = child.stdin.take().unwrap();
    let cout = child.stdout.take().unwrap();
    let cerr = child.stderr.take().unwrap();
    let stdin = io.stdin.take();
    tokio::spawn(async move {
        if let Some(mut rx) = stdin {
            while let Some(b) = rx.recv().await {
                if cin.write_all(&b).await.is_err() {
                    break;
                }
            }
        }
    });
    let pump = |mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                tx: Option<tokio::sync::mpsc::Sender<Bytes>>| async move {
        let mut buf = vec![0u8; 32 << 10];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if let Some(tx) = &tx {
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
    };
    let o = tokio::spawn(pump(Box::new(cout), io.stdout.take()));
    let e = tokio::spawn(pump(Box::new(cerr), io.stderr.take()));
    let _ = tokio::join!(o, e);
    let st = child
        .wait()
        .await
        .map_err(|e| BackendError(e.to_string()))?;
    Ok(st.code().unwrap_or(255))
}

impl Backend for Local {
    fn exec(&self, req: ExecRequest, io: Stdio) -> BoxFuture<'static, Result<i32, BackendError>> {
        Box::pin(run(req.cmd, io))
    }
    fn attach(&self, _: AttachRequest, io: Stdio) -> BoxFuture<'static, Result<(), BackendError>> {
        Box::pin(async move {
            if let Some(tx) = io.stdout {
                let _ = tx.send(Bytes::from_static(b"attached\n")).await;
            }
            Ok(())
        })
    }
    fn port_forward(
        &self,
        _pod: &str,
        port: u16,
    ) -> BoxFuture<'static, Result<TcpStream, BackendError>> {
        Box::pin(async move {
            TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|e| BackendError(e.to_string()))
        })
    }
}

static ANY: client::Trust = client::Trust::AnyCertificate;

fn plain(url: &str) -> client::Url<'_> {
    client::Url { url, trust: &ANY }
}

async fn server() -> Server {
    server_with(Config::default()).await
}

async fn server_with(cfg: Config) -> Server {
    Server::start(cfg, Arc::new(Local)).await.unwrap()
}

fn exec_req(cmd: &[&str], stdin: bool) -> ExecRequest {
    ExecRequest {
        container_id: "c".into(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin,
        stdout: true,
        stderr: true,
    }
}

/// A writer whose bytes the test reads back.
fn sink() -> (client::Output, tokio::io::DuplexStream) {
    let (a, b) = tokio::io::duplex(64 << 20);
    (Box::new(a), b)
}

async fn exec(
    srv: &Server,
    t: Transport,
    cmd: &[&str],
    stdin: Option<Vec<u8>>,
) -> (i32, Vec<u8>, Vec<u8>) {
    try_exec(srv, &ANY, t, cmd, stdin).await.unwrap()
}

async fn try_exec(
    srv: &Server,
    trust: &client::Trust,
    t: Transport,
    cmd: &[&str],
    stdin: Option<Vec<u8>>,
) -> Result<(i32, Vec<u8>, Vec<u8>), berth_streaming::Error> {
    let url = srv.get_exec(exec_req(cmd, stdin.is_some())).unwrap();
    let (out, mut out_r) = sink();
    let (err, mut err_r) = sink();
    let io = client::Io {
        stdin: stdin.map(|d| Box::new(std::io::Cursor::new(d)) as client::Input),
        stdout: Some(out),
        stderr: Some(err),
        tty: false,
        resize: None,
    };
    let reader = tokio::spawn(async move {
        let mut o = Vec::new();
        let mut e = Vec::new();
        let _ = tokio::join!(out_r.read_to_end(&mut o), err_r.read_to_end(&mut e));
        (o, e)
    });
    let url = client::Url { url: &url, trust };
    let code = tokio::time::timeout(Duration::from_secs(20), client::remote_command(url, t, io))
        .await
        .expect("exec timed out")?;
    let (o, e) = reader.await.unwrap();
    Ok((code, o, e))
}

/// A CA, a server certificate for 127.0.0.1 it signed, and a self-signed one, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: std::path::PathBuf,
    signed: berth_streaming::TlsFiles,
    self_signed: berth_streaming::TlsFiles,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let host = || rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let signed = host().signed_by(&key, &ca, &ca_key).unwrap();
    let other_key = rcgen::KeyPair::generate().unwrap();
    let other = host().self_signed(&other_key).unwrap();
    Pki {
        ca: write("ca.pem", ca.pem()),
        signed: berth_streaming::TlsFiles {
            cert: write("signed.pem", signed.pem()),
            key: write("signed.key", key.serialize_pem()),
        },
        self_signed: berth_streaming::TlsFiles {
            cert: write("self.pem", other.pem()),
            key: write("self.key", other_key.serialize_pem()),
        },
        _dir: dir,
    }
}

async fn tls_server(files: &berth_streaming::TlsFiles) -> Server {
    server_with(Config {
        tls: Some(files.clone()),
        ..Config::default()
    })
    .await
}

#[tokio::test]
async fn https_streaming_trusts_any_certificate_or_only_a_given_ca() {
    let pki = pki();
    let signed = tls_server(&pki.signed).await;
    let self_signed = tls_server(&pki.self_signed).await;
    let ca = client::Trust::CaFile(pki.ca.clone());
    let echo = ["sh", "-c", "echo hi; exit 4"];
    for t in [Transport::Spdy, Transport::WebSocket] {
        for (srv, trust) in [(&signed, &ANY), (&self_signed, &ANY), (&signed, &ca)] {
            let (code, out, _) = try_exec(srv, trust, t, &echo, None).await.unwrap();
            assert_eq!((code, out.as_slice()), (4, &b"hi\n"[..]), "{t:?} {trust:?}");
        }
        let err = try_exec(&self_signed, &ca, t, &echo, None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, berth_streaming::Error::Tls(_)),
            "{t:?}: {err}"
        );
        let url = signed
            .get_port_forward(PortForwardRequest {
                pod_id: "p".into(),
                ports: vec![],
            })
            .unwrap();
        assert!(url.starts_with("https://127.0.0.1:"), "{url}");
        let url = client::Url {
            url: &url,
            trust: &ca,
        };
        let pf = PortForwarder::connect(url, t).await.unwrap();
        let port = echo_server().await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (theirs, _) = l.accept().await.unwrap();
        let fwd = tokio::spawn(async move { pf.forward(port, theirs).await });
        c.write_all(b"through tls").await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"through tls");
        fwd.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn exec_output_and_exit_codes_over_both_transports() {
    let srv = server().await;
    for t in [Transport::Spdy, Transport::WebSocket] {
        let (code, out, err) = exec(
            &srv,
            t,
            &["sh", "-c", "echo hi; echo oops >&2; exit 3"],
            None,
        )
        .await;
        assert_eq!(code, 3, "{t:?}");
        assert_eq!(out, b"hi\n", "{t:?}");
        assert_eq!(err, b"oops\n", "{t:?}");
        let (code, out, _) = exec(&srv, t, &["echo", "ok"], None).await;
        assert_eq!((code, out.as_slice()), (0, &b"ok\n"[..]), "{t:?}");
    }
}

#[tokio::test]
async fn stdin_round_trips_megabytes_over_both_transports() {
    let srv = server().await;
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for t in [Transport::Spdy, Transport::WebSocket] {
        let (code, out, _) = exec(&srv, t, &["cat"], Some(data.clone())).await;
        assert_eq!(code, 0);
        assert_eq!(out.len(), data.len(), "{t:?}");
        assert!(out == data, "{t:?}: data differs");
    }
}

#[tokio::test]
async fn missing_binary_is_a_failure_not_a_hang() {
    let srv = server().await;
    for t in [Transport::Spdy, Transport::WebSocket] {
        let url = srv.get_exec(exec_req(&["/no/such/binary"], false)).unwrap();
        let io = client::Io {
            stdin: None,
            stdout: Some(Box::new(tokio::io::sink())),
            stderr: Some(Box::new(tokio::io::sink())),
            tty: false,
            resize: None,
        };
        let err = client::remote_command(plain(&url), t, io)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("No such file"), "{t:?}: {err}");
    }
}

#[tokio::test]
async fn attach_streams_backend_output() {
    let srv = server().await;
    for t in [Transport::Spdy, Transport::WebSocket] {
        let url = srv
            .get_attach(AttachRequest {
                container_id: "c".into(),
                tty: false,
                stdin: false,
                stdout: true,
                stderr: false,
            })
            .unwrap();
        let (out, mut r) = sink();
        let io = client::Io {
            stdin: None,
            stdout: Some(out),
            stderr: None,
            tty: false,
            resize: None,
        };
        assert_eq!(client::remote_command(plain(&url), t, io).await.unwrap(), 0);
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"attached\n");
    }
}

async fn echo_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    port
}

#[tokio::test]
async fn port_forward_over_spdy_and_tunnel_two_ports() {
    let srv = server().await;
    let (p1, p2) = (echo_server().await, echo_server().await);
    for t in [Transport::Spdy, Transport::WebSocket] {
        let url = srv
            .get_port_forward(PortForwardRequest {
                pod_id: "p".into(),
                ports: vec![],
            })
            .unwrap();
        let pf = Arc::new(PortForwarder::connect(plain(&url), t).await.unwrap());
        let mut joins = Vec::new();
        for port in [p1, p2] {
            let pf = pf.clone();
            joins.push(tokio::spawn(async move {
                let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = l.local_addr().unwrap();
                let fwd = tokio::spawn(async move {
                    let (c, _) = l.accept().await.unwrap();
                    pf.forward(port, c).await
                });
                let mut c = TcpStream::connect(addr).await.unwrap();
                let payload = vec![7u8; 1 << 20];
                c.write_all(&payload).await.unwrap();
                c.shutdown().await.unwrap();
                let mut back = Vec::new();
                c.read_to_end(&mut back).await.unwrap();
                assert_eq!(back.len(), payload.len());
                fwd.await.unwrap().unwrap();
            }));
        }
        for j in joins {
            j.await.unwrap();
        }
        // Nothing listening: the server's error comes back on the error stream.
        let dead = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap().port()
        };
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let _c = TcpStream::connect(addr).await.unwrap();
        let (c, _) = l.accept().await.unwrap();
        let err = pf.forward(dead, c).await.unwrap_err();
        assert!(err.to_string().contains("error forwarding port"), "{err}");
        pf.close().await;
    }
}

async fn raw_request(srv: &Server, path: &str, extra: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(srv.addr()).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n{extra}\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    (String::from_utf8_lossy(&buf[..n]).into_owned(), s)
}

fn path_of(url: &str) -> String {
    url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap()
}

#[tokio::test]
async fn bad_reused_and_expired_tokens_are_404() {
    let srv = server_with(Config {
        token_ttl: Duration::from_millis(200),
        ..Config::default()
    })
    .await;
    let (resp, _) = raw_request(&srv, "/exec/nonsense", "").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
    let url = srv.get_exec(exec_req(&["true"], false)).unwrap();
    let (resp, _s) = raw_request(&srv, &path_of(&url), "").await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let (resp, _) = raw_request(&srv, &path_of(&url), "").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "reused: {resp}");
    let url = srv.get_exec(exec_req(&["true"], false)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (resp, _) = raw_request(&srv, &path_of(&url), "").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "expired: {resp}");
    // A token is for its own kind of request only.
    let url = srv.get_exec(exec_req(&["true"], false)).unwrap();
    let path = path_of(&url).replace("/exec/", "/attach/");
    let (resp, _) = raw_request(&srv, &path, "").await;
    assert!(resp.starts_with("HTTP/1.1 404"), "{resp}");
}

/// Reads until the server closes; fails the test if it does not within a few seconds.
async fn assert_closed(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 << 10];
    let res = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(res.is_ok(), "server kept the connection open");
}

#[tokio::test]
async fn spdy_settings_bomb_closes_the_connection() {
    let srv = server().await;
    let url = srv.get_exec(exec_req(&["sleep", "30"], false)).unwrap();
    let (resp, mut s) = raw_request(&srv, &path_of(&url), "").await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    // SETTINGS announcing 2^20 entries in a 16 MiB frame: refused from its header.
    let mut f = vec![0x80, 3, 0, 4, 0, 0xff, 0xff, 0xff];
    f.extend_from_slice(&(1u32 << 20).to_be_bytes());
    f.extend_from_slice(&[0u8; 4096]);
    let _ = s.write_all(&f).await;
    assert_closed(s).await;
}

#[tokio::test]
async fn oversized_websocket_frame_closes_the_connection() {
    let srv = server().await;
    let url = srv.get_exec(exec_req(&["cat"], true)).unwrap();
    let mut s = TcpStream::connect(srv.addr()).await.unwrap();
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: v5.channel.k8s.io\r\n\r\n",
        path_of(&url)
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 101"));
    // A masked binary frame announcing 1 GiB.
    let mut f = vec![0x82u8, 0xff];
    f.extend_from_slice(&(1u64 << 30).to_be_bytes());
    f.extend_from_slice(&[1, 2, 3, 4]);
    f.extend_from_slice(&[0u8; 4096]);
    let _ = s.write_all(&f).await;
    assert_closed(s).await;
}

#[tokio::test]
async fn a_client_that_creates_no_streams_is_dropped() {
    let srv = server_with(Config {
        stream_creation_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let url = srv.get_exec(exec_req(&["true"], false)).unwrap();
    let (resp, s) = raw_request(&srv, &path_of(&url), "").await;
    assert!(resp.starts_with("HTTP/1.1 101"), "{resp}");
    let start = std::time::Instant::now();
    assert_closed(s).await;
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "closed too soon"
    );
}

#[tokio::test]
async fn an_idle_session_is_closed_and_a_busy_one_is_not() {
    let srv = server_with(Config {
        idle_timeout: Duration::from_millis(500),
        ..Config::default()
    })
    .await;
    for t in [Transport::Spdy, Transport::WebSocket] {
        // Output every 100 ms keeps the connection alive past the idle timeout.
        let busy = [
            "sh",
            "-c",
            "for i in 1 2 3 4 5 6 7 8 9 10; do echo $i; sleep 0.1; done",
        ];
        let (code, out, _) = exec(&srv, t, &busy, None).await;
        assert_eq!(code, 0, "{t:?}");
        assert_eq!(out.split(|b| *b == b'\n').count(), 11, "{t:?}");
        // Silent for 3 s: the connection goes after 0.5 s and the session fails.
        let start = std::time::Instant::now();
        let r = try_exec(&srv, &ANY, t, &["sleep", "3"], None).await;
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{t:?}: idle session lasted {:?} ({r:?})",
            start.elapsed()
        );
    }
}
