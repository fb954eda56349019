//! Registries for the integration tests: ours in-process, Debian's
//! `docker-registry` as a child process, both on ephemeral loopback ports.
#![allow(dead_code)]

use quern_registry::server::{Server, ServerConfig};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `QUERN_REQUIRE_EXTERNAL=1` (set by CI) turns a missing external tool into a failure.
#[allow(unused_imports)]
pub use quern_registry::testing::{missing, require_external};

/// A registry under test.
pub struct Target {
    pub kind: &'static str,
    /// `127.0.0.1:PORT`
    pub host: String,
    pub root: PathBuf,
    _tmp: tempfile::TempDir,
    server: Option<Server>,
    child: Option<quern_registry::testing::DockerRegistry>,
}

impl Target {
    pub fn base(&self) -> String {
        format!("http://{}", self.host)
    }

    pub fn is_ours(&self) -> bool {
        self.kind == "quern"
    }

    /// Stop the server (in-process: drop it; child: kill -9).
    pub fn stop(&mut self) {
        self.server = None;
        self.child = None;
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn ours() -> Target {
    ours_with(None)
}

pub fn ours_with(token: Option<&str>) -> Target {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let mut cfg = ServerConfig::new(&root, "127.0.0.1:0");
    cfg.token = token.map(str::to_string);
    let server = Server::start(cfg).expect("start quern registry");
    let host = server.addr().to_string();
    Target {
        kind: "quern",
        host,
        root,
        _tmp: tmp,
        server: Some(server),
        child: None,
    }
}

/// Debian's docker-registry on a free loopback port; None (skip notice) when not installed.
pub fn docker_registry() -> Option<Target> {
    match quern_registry::testing::DockerRegistry::start().expect("start docker-registry") {
        None => {
            missing("docker-registry (apt-get install docker-registry)");
            None
        }
        Some(d) => {
            let tmp = tempfile::tempdir().expect("tempdir");
            Some(Target {
                kind: "docker-registry",
                host: d.host.clone(),
                root: d.storage.clone(),
                _tmp: tmp,
                server: None,
                child: Some(d),
            })
        }
    }
}

/// A minimal HTTP response for assertions.
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The first error code of a distribution-spec error body.
    pub fn error_code(&self) -> String {
        self.json()["errors"][0]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// One request, any status returned as a reply.
pub fn http(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
    let agent = ureq::AgentBuilder::new()
        .redirects(0)
        .timeout(Duration::from_secs(60))
        .build();
    let mut req = agent.request(method, url);
    for (k, v) in headers {
        req = req.set(k, v);
    }
    let res = match body {
        Some(b) => req.send_bytes(b),
        None => req.call(),
    };
    let resp = match res {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let status = resp.status();
    let headers = resp
        .headers_names()
        .into_iter()
        .map(|n| {
            let v = resp.header(&n).unwrap_or_default().to_string();
            (n, v)
        })
        .collect();
    let mut body = Vec::new();
    if method != "HEAD" {
        let _ = resp.into_reader().take(64 << 20).read_to_end(&mut body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

/// Resolve a Location header against the registry base.
pub fn abs(base: &str, loc: &str) -> String {
    if loc.starts_with("http") {
        loc.to_string()
    } else {
        format!("{base}{loc}")
    }
}

/// Upload a blob with POST + PUT; returns its digest string.
pub fn put_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let d = quern_registry::Digest::of_bytes(data).to_string();
    let r = http(
        "POST",
        &format!("{base}/v2/{repo}/blobs/uploads/"),
        &[],
        Some(b""),
    );
    assert_eq!(
        r.status,
        202,
        "POST upload: {}",
        String::from_utf8_lossy(&r.body)
    );
    let loc = abs(base, r.header("Location").expect("Location"));
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = http(
        "PUT",
        &format!("{loc}{sep}digest={d}"),
        &[("Content-Type", "application/octet-stream")],
        Some(data),
    );
    assert_eq!(
        r.status,
        201,
        "PUT blob: {}",
        String::from_utf8_lossy(&r.body)
    );
    d
}

/// A quern binary built by cargo for the CLI tests, if one is around.
pub fn quern_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?.parent()?;
    let p = dir.join("quern");
    p.exists().then_some(p)
}

pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("QUERN_PYTHON") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python")
}
