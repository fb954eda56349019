//! Registry credentials: `QUERN_REGISTRY_TOKEN` (sent as a Bearer token), or
//! `docker login` credentials from `~/.docker/config.json`, answering Basic
//! challenges directly and Bearer challenges through the token service.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    None,
    Token(String),
    Basic { user: String, password: String },
}

impl Credentials {
    /// For registry `host` (`host:port`): env token first, then docker config.
    pub fn for_host(host: &str) -> Credentials {
        if let Ok(t) = std::env::var("QUERN_REGISTRY_TOKEN") {
            if !t.trim().is_empty() {
                return Credentials::Token(t.trim().to_string());
            }
        }
        docker_config_auth(host).unwrap_or(Credentials::None)
    }

    /// Where these credentials came from, for error messages.
    pub fn describe(&self) -> String {
        match self {
            Credentials::None => "no credentials".into(),
            Credentials::Token(_) => "the token (QUERN_REGISTRY_TOKEN or docker config)".into(),
            Credentials::Basic { user, .. } => format!("docker login credentials of {user:?}"),
        }
    }

    /// What to send before any challenge: a static token is sent up front.
    pub fn preemptive_header(&self) -> Option<String> {
        match self {
            Credentials::Token(t) => Some(format!("Bearer {t}")),
            _ => None,
        }
    }

    pub fn basic_header(&self) -> Option<String> {
        match self {
            Credentials::Basic { user, password } => Some(format!(
                "Basic {}",
                B64.encode(format!("{user}:{password}"))
            )),
            // A token doubles as a password (quern's server accepts either form).
            Credentials::Token(t) => Some(format!("Basic {}", B64.encode(format!("token:{t}")))),
            Credentials::None => None,
        }
    }
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

/// `auths[host].auth` (base64 `user:password`) or `username`/`password` fields.
fn docker_config_auth(host: &str) -> Option<Credentials> {
    let text = std::fs::read_to_string(docker_config_path()?).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let auths = v["auths"].as_object()?;
    let entry = auths.iter().find(|(k, _)| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k == host || k.split('/').next() == Some(host)
    })?;
    let e = entry.1;
    if let Some(a) = e["auth"].as_str() {
        let raw = B64.decode(a.trim()).ok()?;
        let s = String::from_utf8(raw).ok()?;
        let (user, password) = s.split_once(':')?;
        return Some(Credentials::Basic {
            user: user.into(),
            password: password.into(),
        });
    }
    if let Some(t) = e["identitytoken"].as_str().or(e["registrytoken"].as_str()) {
        return Some(Credentials::Token(t.to_string()));
    }
    Some(Credentials::Basic {
        user: e["username"].as_str()?.into(),
        password: e["password"].as_str()?.into(),
    })
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub scheme: String,
    pub params: HashMap<String, String>,
}

pub fn parse_challenge(v: &str) -> Option<Challenge> {
    let v = v.trim();
    let (scheme, rest) = v.split_once(' ').unwrap_or((v, ""));
    let mut params = HashMap::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (val, remaining) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(k, val.to_string());
        s = remaining.trim_start().trim_start_matches(',').trim();
    }
    Some(Challenge {
        scheme: scheme.to_ascii_lowercase(),
        params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#).unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.params["realm"], "https://auth.example/token");
        assert_eq!(c.params["scope"], "repository:a/b:pull,push");
        let c = parse_challenge(r#"Basic realm="quern registry""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.params["realm"], "quern registry");
    }
}
