//! A stand-in Kubernetes API server on loopback, so kubectl (a client nobody here wrote) can
//! exec, attach and port-forward into berth's containers the way it does through a real
//! apiserver and kubelet: static discovery documents, pods read from CRI List calls, and for the
//! streaming subresources a fresh CRI Exec/Attach/PortForward whose URL gets the client's own
//! upgrade request, byte for byte except the path and Host, then both directions spliced.
//!
//! The HTTP is written by hand rather than through a client library: kubectl sends
//! `X-Stream-Protocol-Version` once per protocol, and those lines must reach berthd as they
//! were sent (a header map would merge them), just as kubelet's proxy passes them on.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::Channel;

use crate::cri::runtime_service_client::RuntimeServiceClient;
use crate::cri::{self};

/// Request heads larger than this are refused: kubectl's are a few hundred bytes.
const MAX_HEAD: usize = 64 << 10;

/// One upgrade request the stand-in forwarded: what kubectl asked for and how.
#[derive(Debug, Clone)]
pub struct Upgrade {
    pub method: String,
    /// `exec`, `attach` or `portforward`.
    pub subresource: String,
    /// The `Upgrade` header: `SPDY/3.1` or `websocket`.
    pub upgrade: String,
    /// The requested subprotocols (`X-Stream-Protocol-Version` lines or
    /// `Sec-WebSocket-Protocol`), in order.
    pub protocols: Vec<String>,
    /// berthd's answer: its status code and the protocol it chose.
    pub status: u16,
    pub negotiated: String,
}

/// What the stand-in saw: the upgrades it forwarded and the requests it had no answer for.
#[derive(Default)]
struct Record {
    upgrades: Vec<Upgrade>,
    misses: Vec<String>,
}

fn record(rec: &Mutex<Record>) -> std::sync::MutexGuard<'_, Record> {
    rec.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct ApiServer {
    pub port: u16,
    rec: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApiServer {
    /// Listens on a free loopback port; every request is answered from `rt`.
    pub async fn start(rt: RuntimeServiceClient<Channel>) -> std::io::Result<ApiServer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let rec = Arc::new(Mutex::new(Record::default()));
        let shared = rec.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let rt = rt.clone();
                let rec = shared.clone();
                tokio::spawn(async move {
                    let _ = serve(conn, rt, rec, port).await;
                });
            }
        });
        Ok(ApiServer { port, rec, task })
    }

    /// The upgrade requests forwarded so far (and forgets them).
    pub fn take_upgrades(&self) -> Vec<Upgrade> {
        std::mem::take(&mut record(&self.rec).upgrades)
    }

    /// The requests (`METHOD path`) the stand-in had no answer for: a client asking for more
    /// than it serves.
    pub fn take_misses(&self) -> Vec<String> {
        std::mem::take(&mut record(&self.rec).misses)
    }

    /// A kubeconfig for this server over plain http, namespace `ns` by default.
    pub fn kubeconfig(&self, ns: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: http://127.0.0.1:{}\n    insecure-skip-tls-verify: true\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: nobody\n    namespace: {ns}\nusers:\n- name: nobody\n  user: {{}}\ncurrent-context: standin\n",
            self.port
        )
    }
}

struct Head {
    method: String,
    path: String,
    query: String,
    /// Header lines as sent, names and values trimmed, in order, repeated names kept.
    headers: Vec<(String, String)>,
    /// The head as it came, through the blank line.
    raw: Vec<u8>,
}

impl Head {
    fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(',').map(|s| s.trim().to_string()))
            .filter(|s| !s.is_empty())
            .collect()
    }

    fn params(&self) -> Vec<(String, String)> {
        self.query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                (unescape(k), unescape(v))
            })
            .collect()
    }
}

/// Percent-decoding of a query component (`+` is a space, as Go's url.Values encodes it).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => match std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                Some(v) => {
                    out.push(v);
                    i += 2;
                }
                None => out.push(b'%'),
            },
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request head; returns it with whatever bytes came after it.
async fn read_head(conn: &mut TcpStream) -> anyhow::Result<(Head, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
        anyhow::ensure!(buf.len() < MAX_HEAD, "request head too large");
        let n = conn.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "connection closed before the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let text = std::str::from_utf8(&buf[..end])?;
    let mut lines = text.split("\r\n");
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let mut method = parts.next().unwrap_or_default().to_string();
    let mut target = parts.next().unwrap_or_default();
    if method.starts_with("HTTP/") {
        // A response head: keep its status code where a request keeps its method.
        method = target.to_string();
        target = "";
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = buf[end + 4..].to_vec();
    Ok((
        Head {
            method,
            path: path.to_string(),
            query: query.to_string(),
            headers,
            raw: buf[..end + 4].to_vec(),
        },
        rest,
    ))
}

async fn respond(conn: &mut TcpStream, code: u16, body: &Value) -> std::io::Result<()> {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        404 => "Not Found",
        400 => "Bad Request",
        _ => "Error",
    };
    let msg = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(msg.as_bytes()).await?;
    conn.shutdown().await
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// One connection, one request: every answer closes the connection, which keeps this simple
/// and costs kubectl nothing but a reconnect.
async fn serve(
    mut conn: TcpStream,
    mut rt: RuntimeServiceClient<Channel>,
    rec: Arc<Mutex<Record>>,
    port: u16,
) -> anyhow::Result<()> {
    let (head, rest) = read_head(&mut conn).await?;
    let segs: Vec<&str> = head.path.trim_matches('/').split('/').collect();
    let upgrade = head.get("Upgrade").map(str::to_string);
    match (head.method.as_str(), segs.as_slice()) {
        ("GET", ["api"]) => {
            let doc = json!({"kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0",
                                                "serverAddress": format!("127.0.0.1:{port}")}]});
            respond(&mut conn, 200, &doc).await?;
        }
        // kubectl 1.32 asks once per run, for its version skew warning.
        ("GET", ["version"]) => {
            let doc = json!({"major": "1", "minor": "32", "gitVersion": "v1.32.0",
                             "platform": "linux/amd64"});
            respond(&mut conn, 200, &doc).await?;
        }
        ("GET", ["apis"]) => {
            let doc = json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []});
            respond(&mut conn, 200, &doc).await?;
        }
        ("GET", ["api", "v1"]) => respond(&mut conn, 200, &resources()).await?,
        // kubectl asks for the namespace when a pod is not found, to say which is missing.
        ("GET", ["api", "v1", "namespaces", ns]) => {
            let doc = json!({"kind": "Namespace", "apiVersion": "v1", "metadata": {"name": ns},
                             "status": {"phase": "Active"}});
            respond(&mut conn, 200, &doc).await?;
        }
        ("GET", ["api", "v1", "namespaces", ns, "pods", name]) if upgrade.is_none() => {
            match pod(&mut rt, ns, name).await? {
                Some(p) => respond(&mut conn, 200, &p).await?,
                None => {
                    let msg = format!("pods \"{name}\" not found");
                    respond(&mut conn, 404, &status(404, "NotFound", &msg)).await?
                }
            }
        }
        ("GET" | "POST", ["api", "v1", "namespaces", ns, "pods", name, sub])
            if upgrade.is_some() && matches!(*sub, "exec" | "attach" | "portforward") =>
        {
            let sub = sub.to_string();
            let url = match stream_url(&mut rt, ns, name, &sub, &head).await {
                Ok(u) => u,
                Err(e) => {
                    let msg = format!("{e:#}");
                    return Ok(respond(&mut conn, 400, &status(400, "BadRequest", &msg)).await?);
                }
            };
            let protocols = if head.get("Sec-WebSocket-Protocol").is_some() {
                head.all("Sec-WebSocket-Protocol")
            } else {
                head.all("X-Stream-Protocol-Version")
            };
            let up = Upgrade {
                method: head.method.clone(),
                subresource: sub,
                upgrade: upgrade.unwrap_or_default(),
                protocols,
                status: 0,
                negotiated: String::new(),
            };
            forward(conn, &head, &rest, &url, up, &rec).await?;
        }
        _ => {
            let msg = format!("the stand-in serves no {} {}", head.method, head.path);
            record(&rec)
                .misses
                .push(format!("{} {}", head.method, head.path));
            respond(&mut conn, 404, &status(404, "NotFound", &msg)).await?
        }
    }
    Ok(())
}

fn resources() -> Value {
    let r = |name: &str, kind: &str, verbs: &[&str]| json!({"name": name, "singularName": "", "namespaced": true, "kind": kind, "verbs": verbs});
    json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
        r("pods", "Pod", &["get", "list"]),
        r("pods/attach", "PodAttachOptions", &["create", "get"]),
        r("pods/exec", "PodExecOptions", &["create", "get"]),
        r("pods/portforward", "PodPortForwardOptions", &["create", "get"]),
    ]})
}

/// The ready pod sandbox named `name` in namespace `ns`.
async fn find_pod(
    rt: &mut RuntimeServiceClient<Channel>,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<cri::PodSandbox>> {
    let pods = rt
        .list_pod_sandbox(cri::ListPodSandboxRequest::default())
        .await?
        .into_inner()
        .items;
    Ok(pods.into_iter().find(|p| {
        p.state == cri::PodSandboxState::SandboxReady as i32
            && p.metadata
                .as_ref()
                .is_some_and(|m| m.name == name && m.namespace == ns)
    }))
}

/// The running containers of `pod`, with whether each has a terminal.
async fn containers(
    rt: &mut RuntimeServiceClient<Channel>,
    pod: &str,
) -> anyhow::Result<Vec<(cri::Container, bool)>> {
    let list = rt
        .list_containers(cri::ListContainersRequest {
            filter: Some(cri::ContainerFilter {
                pod_sandbox_id: pod.into(),
                state: Some(cri::ContainerStateValue {
                    state: cri::ContainerState::ContainerRunning as i32,
                }),
                ..Default::default()
            }),
        })
        .await?
        .into_inner()
        .containers;
    let mut out = Vec::new();
    for c in list {
        // CRI's Container has no tty flag: read it back from the OCI spec in the verbose status.
        let st = rt
            .container_status(cri::ContainerStatusRequest {
                container_id: c.id.clone(),
                verbose: true,
            })
            .await?
            .into_inner();
        let info: Value = st
            .info
            .get("info")
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        let tty = info["runtimeSpec"]["process"]["terminal"]
            .as_bool()
            .unwrap_or(false);
        out.push((c, tty));
    }
    out.sort_by_key(|(c, _)| c.created_at);
    Ok(out)
}

fn ctr_name(c: &cri::Container) -> String {
    c.metadata
        .as_ref()
        .map(|m| m.name.clone())
        .unwrap_or_default()
}

async fn pod(
    rt: &mut RuntimeServiceClient<Channel>,
    ns: &str,
    name: &str,
) -> anyhow::Result<Option<Value>> {
    let Some(p) = find_pod(rt, ns, name).await? else {
        return Ok(None);
    };
    let ctrs = containers(rt, &p.id).await?;
    let uid = p
        .metadata
        .as_ref()
        .map(|m| m.uid.clone())
        .unwrap_or_default();
    let specs: Vec<Value> = ctrs
        .iter()
        .map(|(c, tty)| {
            let image = c
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default();
            // CRI keeps no stdin flag either; kubectl only checks tty, and a tty container
            // is one that takes input.
            json!({"name": ctr_name(c), "image": image, "tty": tty, "stdin": tty})
        })
        .collect();
    let statuses: Vec<Value> = ctrs
        .iter()
        .map(|(c, _)| {
            json!({"name": ctr_name(c), "ready": true, "restartCount": 0, "image": c.image_ref,
                   "imageID": c.image_ref, "containerID": format!("berth://{}", c.id),
                   "started": true, "state": {"running": {}}})
        })
        .collect();
    Ok(Some(json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": uid},
        "spec": {"containers": specs, "restartPolicy": "Always"},
        "status": {"phase": "Running", "containerStatuses": statuses},
    })))
}

/// A fresh streaming URL for one upgrade request, from its query as kubelet maps it.
async fn stream_url(
    rt: &mut RuntimeServiceClient<Channel>,
    ns: &str,
    name: &str,
    sub: &str,
    head: &Head,
) -> anyhow::Result<String> {
    let p = find_pod(rt, ns, name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("pods \"{name}\" not found"))?;
    let params = head.params();
    let flag = |k: &str| {
        params
            .iter()
            .any(|(n, v)| n == k && (v == "true" || v == "1"))
    };
    if sub == "portforward" {
        // SPDY clients name their ports in the stream headers, not in the URL.
        let port = params
            .iter()
            .filter(|(n, _)| n == "ports")
            .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
            .map(|v| v.trim().parse::<i32>())
            .collect::<Result<Vec<_>, _>>()?;
        let r = rt
            .port_forward(cri::PortForwardRequest {
                pod_sandbox_id: p.id,
                port,
            })
            .await?;
        return Ok(r.into_inner().url);
    }
    let ctrs = containers(rt, &p.id).await?;
    let wanted = params
        .iter()
        .find(|(n, _)| n == "container")
        .map(|(_, v)| v.clone());
    let (c, _) = match &wanted {
        Some(w) => ctrs.iter().find(|(c, _)| &ctr_name(c) == w),
        None => ctrs.first(),
    }
    .ok_or_else(|| anyhow::anyhow!("container {wanted:?} not found in pod {name}"))?;
    let (stdin, stdout, stderr, tty) = (flag("stdin"), flag("stdout"), flag("stderr"), flag("tty"));
    let url = if sub == "exec" {
        let cmd: Vec<String> = params
            .iter()
            .filter(|(n, _)| n == "command")
            .map(|(_, v)| v.clone())
            .collect();
        rt.exec(cri::ExecRequest {
            container_id: c.id.clone(),
            cmd,
            tty,
            stdin,
            stdout,
            stderr,
        })
        .await?
        .into_inner()
        .url
    } else {
        rt.attach(cri::AttachRequest {
            container_id: c.id.clone(),
            stdin,
            tty,
            stdout,
            stderr,
        })
        .await?
        .into_inner()
        .url
    };
    Ok(url)
}

/// Sends the client's request to `url` with only the path and Host changed, then splices both
/// directions until either side closes, and closes both.
async fn forward(
    mut client: TcpStream,
    head: &Head,
    rest: &[u8],
    url: &str,
    mut up: Upgrade,
    rec: &Mutex<Record>,
) -> anyhow::Result<()> {
    let hostpath = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("streaming URL {url} is not plain http"))?;
    let (host, path) = hostpath.split_at(hostpath.find('/').unwrap_or(hostpath.len()));
    let mut upstream = TcpStream::connect(host).await?;
    let mut req = format!("{} {path}", head.method);
    if !head.query.is_empty() {
        req.push('?');
        req.push_str(&head.query);
    }
    req.push_str(" HTTP/1.1\r\n");
    for (n, v) in &head.headers {
        let v = if n.eq_ignore_ascii_case("Host") {
            host
        } else {
            v
        };
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    req.push_str("\r\n");
    upstream.write_all(req.as_bytes()).await?;
    upstream.write_all(rest).await?;
    // berthd's response head passes through unchanged; it is only read to record the answer.
    let (resp, after) = read_head(&mut upstream).await?;
    up.status = resp.method.parse().unwrap_or(0);
    up.negotiated = resp
        .get("X-Stream-Protocol-Version")
        .or(resp.get("Sec-WebSocket-Protocol"))
        .unwrap_or_default()
        .to_string();
    record(rec).upgrades.push(up);
    client.write_all(&resp.raw).await?;
    client.write_all(&after).await?;
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    // Either end closing ends the session: a half-open splice would keep kubectl or berthd's
    // session waiting for a peer that has gone.
    tokio::select! {
        _ = tokio::io::copy(&mut cr, &mut uw) => {}
        _ = tokio::io::copy(&mut ur, &mut cw) => {}
    }
    let _ = cw.shutdown().await;
    let _ = uw.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The query parameters of a request, for tests of the mapping.
    fn query_params(query: &str) -> HashMap<String, Vec<String>> {
        let head = Head {
            method: String::new(),
            path: String::new(),
            query: query.into(),
            headers: Vec::new(),
            raw: Vec::new(),
        };
        let mut m: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in head.params() {
            m.entry(k).or_default().push(v);
        }
        m
    }

    #[test]
    fn query_params_decode_like_go() {
        let m = query_params("command=sh&command=-c&command=echo+a%3Bexit+3&stdout=true&x=%zz");
        assert_eq!(m["command"], ["sh", "-c", "echo a;exit 3"]);
        assert_eq!(m["stdout"], ["true"]);
        assert_eq!(m["x"], ["%zz"]);
    }
}
