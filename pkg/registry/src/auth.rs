//! Registry authentication: `WWW-Authenticate` challenges, credentials and bearer tokens.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_core::Digest;
use serde::Deserialize;

use crate::error::{chain, RegistryError};

/// Registries may omit `expires_in`; the token spec says to assume 60 seconds.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(60);
/// Renew slightly early so a token does not expire between the check and the request.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);
const MAX_TOKEN_RESPONSE_BYTES: usize = 1 << 20;
const OAUTH_CLIENT_ID: &str = "berth";

/// One challenge from a `WWW-Authenticate` header. The scheme and parameter names are
/// lower-cased; values are unquoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

impl Challenge {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Parses every challenge in a `WWW-Authenticate` value, e.g.
/// `Bearer realm="https://auth.docker.io/token",service="registry.docker.io", Basic realm="x"`.
pub fn parse_challenges(header: &str) -> Vec<Challenge> {
    let b = header.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let mut current: Option<Challenge> = None;
    let is_sep = |c: u8| c == b',' || c.is_ascii_whitespace();
    while i < b.len() {
        while i < b.len() && is_sep(b[i]) {
            i += 1;
        }
        let start = i;
        while i < b.len() && !is_sep(b[i]) && b[i] != b'=' {
            i += 1;
        }
        let token = &header[start..i];
        if token.is_empty() {
            // A stray '=': skip it and carry on.
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j < b.len() && b[j] == b'=' {
            i = j + 1;
            while i < b.len() && b[i].is_ascii_whitespace() {
                i += 1;
            }
            let value = if i < b.len() && b[i] == b'"' {
                let (v, next) = read_quoted(header, i + 1);
                i = next;
                v
            } else {
                let vs = i;
                while i < b.len() && !is_sep(b[i]) {
                    i += 1;
                }
                header[vs..i].to_string()
            };
            if let Some(c) = current.as_mut() {
                c.params.insert(token.to_ascii_lowercase(), value);
            }
        } else {
            if let Some(c) = current.take() {
                out.push(c);
            }
            current = Some(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: HashMap::new(),
            });
        }
    }
    out.extend(current);
    out
}

/// Reads a quoted-string body starting after the opening quote; returns the value and the index
/// after the closing quote.
fn read_quoted(s: &str, mut i: usize) -> (String, usize) {
    let mut out = String::new();
    let mut chars = s[i..].chars();
    while let Some(c) = chars.next() {
        i += c.len_utf8();
        match c {
            '"' => return (out, i),
            '\\' => {
                if let Some(n) = chars.next() {
                    i += n.len_utf8();
                    out.push(n);
                }
            }
            _ => out.push(c),
        }
    }
    (out, i)
}

/// Registry credentials, mirroring CRI's `AuthConfig` (`server_address` is not needed: the
/// kubelet already picked credentials for this registry).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// base64 of `user:password`; used when `username` is empty.
    pub auth: String,
    /// An OAuth2 refresh token, exchanged at the token endpoint.
    pub identity_token: String,
    /// A bearer token sent to the registry as is.
    pub registry_token: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |s: &str| if s.is_empty() { "" } else { "<redacted>" };
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &set(&self.password))
            .field("auth", &set(&self.auth))
            .field("identity_token", &set(&self.identity_token))
            .field("registry_token", &set(&self.registry_token))
            .finish()
    }
}

impl Credentials {
    /// The user name and password, from the explicit fields or else decoded from `auth`.
    pub fn user_pass(&self) -> Option<(String, String)> {
        if !self.username.is_empty() {
            return Some((self.username.clone(), self.password.clone()));
        }
        if self.auth.is_empty() {
            return None;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(self.auth.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let (u, p) = text.split_once(':')?;
        if u.is_empty() {
            return None;
        }
        Some((u.to_string(), p.trim_matches('\0').to_string()))
    }

    pub(crate) fn basic_header(&self) -> Option<String> {
        let (u, p) = self.user_pass()?;
        Some(basic(&u, &p))
    }

    /// Distinguishes cached tokens obtained with different credentials without keeping the
    /// secrets themselves in the cache key.
    pub(crate) fn fingerprint(&self) -> Digest {
        let (u, p) = self.user_pass().unwrap_or_default();
        Digest::of_bytes(format!("{u}\0{p}\0{}", self.identity_token).as_bytes())
    }
}

fn basic(user: &str, pass: &str) -> String {
    let enc = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!("Basic {enc}")
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TokenKey {
    realm: String,
    service: String,
    scope: String,
    creds: Option<Digest>,
}

struct CachedToken {
    token: String,
    expires: Instant,
}

/// Bearer tokens per (realm, service, scope, credentials), shared by every clone of a client.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: Mutex<HashMap<TokenKey, CachedToken>>,
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenCache {
    /// Returns an `Authorization` value for a bearer challenge, from the cache unless `refresh`.
    pub(crate) async fn bearer(
        &self,
        http: &reqwest::Client,
        challenge: &Challenge,
        scope: &str,
        creds: Option<&Credentials>,
        timeout: Duration,
        refresh: bool,
    ) -> Result<String, RegistryError> {
        let realm = challenge.param("realm").unwrap_or_default().to_string();
        let service = challenge.param("service").unwrap_or_default().to_string();
        let mut scopes = vec![scope.to_string()];
        if let Some(s) = challenge.param("scope") {
            for extra in s.split(' ').filter(|x| !x.is_empty()) {
                if !scopes.iter().any(|x| x == extra) {
                    scopes.push(extra.to_string());
                }
            }
        }
        let key = TokenKey {
            realm: realm.clone(),
            service: service.clone(),
            scope: scopes.join(" "),
            creds: creds.map(Credentials::fingerprint),
        };
        if !refresh {
            let cache = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = cache.get(&key).filter(|t| t.expires > Instant::now()) {
                return Ok(format!("Bearer {}", t.token));
            }
        }
        let (token, lifetime) =
            fetch_token(http, &realm, &service, &scopes, creds, timeout).await?;
        let lifetime = lifetime.max(DEFAULT_TOKEN_LIFETIME);
        let expires = Instant::now() + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN);
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                key,
                CachedToken {
                    token: token.clone(),
                    expires,
                },
            );
        Ok(format!("Bearer {token}"))
    }
}

/// Fetches a token as docker does: an OAuth2 refresh-token POST when an identity token is set,
/// otherwise a GET with basic credentials (or none, for anonymous pulls).
async fn fetch_token(
    http: &reqwest::Client,
    realm: &str,
    service: &str,
    scopes: &[String],
    creds: Option<&Credentials>,
    timeout: Duration,
) -> Result<(String, Duration), RegistryError> {
    let fail = |status: Option<u16>, reason: String| RegistryError::Token {
        realm: realm.to_string(),
        status,
        reason,
    };
    let url = reqwest::Url::parse(realm).map_err(|e| fail(None, format!("invalid realm: {e}")))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(fail(None, "realm must be an http or https url".to_string()));
    }
    // An explicit user name wins over an identity token, as in containerd's ParseAuth.
    let identity = creds
        .filter(|c| c.username.is_empty())
        .map(|c| c.identity_token.as_str())
        .filter(|t| !t.is_empty());
    let request = match identity {
        Some(refresh_token) => {
            let mut form: Vec<(&str, &str)> = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh_token),
                ("client_id", OAUTH_CLIENT_ID),
            ];
            if !service.is_empty() {
                form.push(("service", service));
            }
            form.extend(scopes.iter().map(|s| ("scope", s.as_str())));
            let body: String = form
                .iter()
                .map(|(k, v)| format!("{k}={}", form_encode(v)))
                .collect::<Vec<_>>()
                .join("&");
            http.post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(body)
        }
        None => {
            let mut url = url;
            {
                let mut q = url.query_pairs_mut();
                if !service.is_empty() {
                    q.append_pair("service", service);
                }
                for s in scopes {
                    q.append_pair("scope", s);
                }
            }
            let mut req = http.get(url);
            if let Some(h) = creds.and_then(Credentials::basic_header) {
                req = req.header("authorization", h);
            }
            req
        }
    };
    let resp = request
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| fail(None, chain(&e)))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| fail(None, chain(&e)))?;
    if !status.is_success() {
        let snippet = String::from_utf8_lossy(&body[..body.len().min(200)])
            .trim()
            .to_string();
        return Err(fail(
            Some(status.as_u16()),
            format!("status {status}: {snippet}"),
        ));
    }
    if body.len() > MAX_TOKEN_RESPONSE_BYTES {
        return Err(fail(None, "token response too large".to_string()));
    }
    let parsed: TokenResponse = serde_json::from_slice(&body)
        .map_err(|e| fail(None, format!("invalid token response: {e}")))?;
    let token = if parsed.token.is_empty() {
        parsed.access_token
    } else {
        parsed.token
    };
    if token.is_empty() {
        return Err(fail(None, "token response has no token".to_string()));
    }
    let lifetime = parsed
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_LIFETIME);
    Ok((token, lifetime))
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenge_with_quoted_commas() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c[0].param("service"), Some("registry.docker.io"));
        assert_eq!(
            c[0].param("scope"),
            Some("repository:samalba/my-app:pull,push")
        );
    }

    #[test]
    fn multiple_challenges_and_odd_spacing() {
        let c = parse_challenges(
            r#"Basic realm="Registry Realm", Bearer  realm = "https://a/t" , service=reg,error="invalid_token", Negotiate"#,
        );
        let schemes: Vec<&str> = c.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("realm"), Some("https://a/t"));
        assert_eq!(c[1].param("service"), Some("reg"));
        assert_eq!(c[1].param("error"), Some("invalid_token"));
        assert!(c[2].params.is_empty());
    }

    #[test]
    fn escapes_case_and_garbage() {
        let c = parse_challenges(r#"BASIC Realm="a \"quoted\" \\ realm""#);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some(r#"a "quoted" \ realm"#));
        assert!(parse_challenges("").is_empty());
        assert!(parse_challenges(" , ,").is_empty());
        let c = parse_challenges(r#"Bearer realm="unterminated"#);
        assert_eq!(c[0].param("realm"), Some("unterminated"));
        let c = parse_challenges("=x, Bearer =,realm=r");
        assert_eq!(c.last().and_then(|c| c.param("realm")), Some("r"));
    }

    #[test]
    fn credentials_decode_auth() {
        let c = Credentials {
            auth: base64::engine::general_purpose::STANDARD.encode("bob:pa:ss"),
            ..Default::default()
        };
        assert_eq!(c.user_pass(), Some(("bob".into(), "pa:ss".into())));
        let c = Credentials {
            username: "u".into(),
            password: "p".into(),
            auth: "ignored".into(),
            ..Default::default()
        };
        assert_eq!(c.basic_header().as_deref(), Some("Basic dTpw"));
        assert_eq!(Credentials::default().user_pass(), None);
        let bad = Credentials {
            auth: "!!!".into(),
            ..Default::default()
        };
        assert_eq!(bad.user_pass(), None);
        assert!(!format!("{c:?}").contains("\"p\""));
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            form_encode("repository:a/b:pull"),
            "repository%3Aa%2Fb%3Apull"
        );
        assert_eq!(form_encode("a b~"), "a+b~");
    }
}
