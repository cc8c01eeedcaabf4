//! A read-only client of the OCI distribution API: manifests and blobs by digest or tag,
//! with the anonymous Bearer token flow registries answer 401 with. Plain http for
//! loopback registries (docker's default insecure-registry rule), https otherwise.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Result;
use ureq::http::{Response, StatusCode};

use super::oci::ACCEPT;
use super::reference::Digest;
use crate::error::{Kind, UserError};

/// Manifests are small; a bigger answer is refused.
const MANIFEST_LIMIT: u64 = 4 << 20;

pub struct Registry {
    agent: ureq::Agent,
    /// `http://127.0.0.1:5000` or `https://registry.example`.
    base: String,
    host: String,
    /// Bearer tokens by repository.
    tokens: HashMap<String, String>,
}

/// A registry answer that is not a success.
pub enum Failure {
    NotFound,
    Other(anyhow::Error),
}

impl Registry {
    pub fn new(host: &str) -> Registry {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(120)))
            .user_agent(concat!("imagebuild/", env!("CARGO_PKG_VERSION")));
        if is_loopback(host) {
            config = config.proxy(None);
        }
        let scheme = if is_loopback(host) { "http" } else { "https" };
        Registry {
            agent: config.build().new_agent(),
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            tokens: HashMap::new(),
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// The manifest `reference` (a tag or a digest) of `repo`, as sent.
    pub fn manifest(&mut self, repo: &str, reference: &str) -> Result<Vec<u8>, Failure> {
        let mut resp = self.get(repo, &format!("/v2/{repo}/manifests/{reference}"), true)?;
        resp.body_mut()
            .with_config()
            .limit(MANIFEST_LIMIT)
            .read_to_vec()
            .map_err(|e| Failure::Other(self.net_error(&e.to_string())))
    }

    /// Streams blob `d` of `repo` into `w`.
    pub fn blob(&mut self, repo: &str, d: &Digest, w: &mut dyn Write) -> Result<(), Failure> {
        let mut resp = self.get(repo, &format!("/v2/{repo}/blobs/{d}"), false)?;
        std::io::copy(&mut resp.body_mut().as_reader(), w)
            .map_err(|e| Failure::Other(self.net_error(&format!("reading blob {d}: {e}"))))?;
        Ok(())
    }

    fn get(
        &mut self,
        repo: &str,
        path: &str,
        manifest: bool,
    ) -> Result<Response<ureq::Body>, Failure> {
        let url = format!("{}{path}", self.base);
        let mut retried = false;
        loop {
            let mut req = self.agent.get(&url);
            if manifest {
                req = req.header("Accept", ACCEPT);
            }
            if let Some(t) = self.tokens.get(repo) {
                req = req.header("Authorization", &format!("Bearer {t}"));
            }
            let resp = req
                .call()
                .map_err(|e| Failure::Other(self.net_error(&e.to_string())))?;
            match resp.status() {
                s if s.is_success() => return Ok(resp),
                StatusCode::NOT_FOUND => return Err(Failure::NotFound),
                StatusCode::UNAUTHORIZED if !retried => {
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string();
                    let token = self.token(repo, &challenge).map_err(Failure::Other)?;
                    self.tokens.insert(repo.to_string(), token);
                    retried = true;
                }
                s => {
                    return Err(Failure::Other(
                        UserError::new(
                            Kind::Tool,
                            format!("registry {} answered {s} to GET {path}", self.host),
                        )
                        .hint(
                            "imagebuild pulls anonymously; to use a private image, save it with \
                             `skopeo copy docker://IMAGE oci-archive:FILE` and list FILE in the \
                             stack's `oci-archives`",
                        )
                        .into(),
                    ));
                }
            }
        }
    }

    /// An anonymous token for pulling `repo`, from the realm of a Bearer challenge.
    fn token(&self, repo: &str, challenge: &str) -> Result<String> {
        let params = parse_challenge(challenge).ok_or_else(|| {
            UserError::new(
                Kind::Tool,
                format!(
                    "registry {} wants authentication imagebuild does not do: `{challenge}`",
                    self.host
                ),
            )
        })?;
        let realm = params.get("realm").cloned().unwrap_or_default();
        let mut query = vec![format!(
            "scope={}",
            encode(
                params
                    .get("scope")
                    .map_or(&format!("repository:{repo}:pull"), |s| s)
            )
        )];
        if let Some(service) = params.get("service") {
            query.push(format!("service={}", encode(service)));
        }
        let sep = if realm.contains('?') { '&' } else { '?' };
        let url = format!("{realm}{sep}{}", query.join("&"));
        let mut resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| self.net_error(&e.to_string()))?;
        if !resp.status().is_success() {
            return Err(UserError::new(
                Kind::Tool,
                format!(
                    "registry {}: the token service answered {}",
                    self.host,
                    resp.status()
                ),
            )
            .into());
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MANIFEST_LIMIT)
            .read_to_vec()
            .map_err(|e| self.net_error(&format!("token: {e}")))?;
        let t: Token =
            serde_json::from_slice(&body).map_err(|e| self.net_error(&format!("token: {e}")))?;
        t.token.or(t.access_token).ok_or_else(|| {
            anyhow::anyhow!("registry {}: the token service sent no token", self.host)
        })
    }

    fn net_error(&self, e: &str) -> anyhow::Error {
        UserError::new(Kind::Tool, format!("registry {}: {e}", self.host))
            .hint("check the network, or list a local OCI archive of the image in `oci-archives`")
            .into()
    }
}

/// Loopback hosts: 127.0.0.0/8, ::1 and localhost, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    name == "localhost" || name == "::1" || name.starts_with("127.")
}

/// `Bearer realm="...",service="...",scope="..."` -> its parameters.
pub fn parse_challenge(h: &str) -> Option<HashMap<String, String>> {
    let rest = h.trim().strip_prefix("Bearer ")?;
    let mut out = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (key, after) = s.split_once('=')?;
        let key = key
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        let (value, after) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        out.insert(key, value.to_string());
        s = after.trim_start_matches(',').trim();
    }
    out.contains_key("realm").then_some(out)
}

/// Percent-encodes a query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let p = parse_challenge(
            r#"Bearer realm="https://auth.registry.example/token",service="registry.example",scope="repository:team/app:pull""#,
        )
        .unwrap();
        assert_eq!(p["realm"], "https://auth.registry.example/token");
        assert_eq!(p["service"], "registry.example");
        assert_eq!(p["scope"], "repository:team/app:pull");
        assert!(parse_challenge(r#"Basic realm="x""#).is_none());
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        for h in [
            "127.0.0.1:5000",
            "localhost",
            "localhost:5000",
            "[::1]:5000",
            "127.1.2.3",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry.example", "10.0.0.1:5000", "localhost.example"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
