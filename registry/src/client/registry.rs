//! One repository of one registry: the distribution API calls quern makes.

use super::auth::{parse_challenge, Credentials};
use super::error::ClientError;
use crate::digest::Digest;
use crate::manifest::Index;
use crate::media;
use std::io::Read;
use std::sync::Mutex;
use std::time::Duration;

/// Largest manifest or small JSON blob read into memory.
const MAX_DOC: u64 = 8 << 20;

pub struct Registry {
    agent: ureq::Agent,
    base: String,
    pub host: String,
    pub name: String,
    creds: Credentials,
    /// The Authorization header that last worked.
    auth: Mutex<Option<String>>,
}

/// A request body that can be replayed after an auth challenge, or a stream that cannot.
pub enum Body<'a> {
    None,
    Bytes(&'a [u8]),
    Stream(&'a mut dyn Read, u64),
}

/// Response status, headers we use, and the response for reading the body.
pub struct Resp {
    pub status: u16,
    pub inner: ureq::Response,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.inner.header(name).map(str::to_string)
    }
}

impl Registry {
    /// `plain_http` forces http; loopback hosts use http as docker does.
    pub fn new(host: &str, name: &str, plain_http: bool) -> Registry {
        let loopback =
            host.starts_with("localhost") || host.starts_with("127.") || host.starts_with("[::1]");
        let scheme = if plain_http || loopback {
            "http"
        } else {
            "https"
        };
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(15))
            .timeout_read(Duration::from_secs(120))
            .timeout_write(Duration::from_secs(120))
            .max_idle_connections_per_host(16)
            .redirects(5)
            .build();
        Registry {
            agent,
            base: format!("{scheme}://{host}"),
            host: host.to_string(),
            name: name.to_string(),
            creds: Credentials::for_host(host),
            auth: Mutex::new(None),
        }
    }

    /// The same registry, another repository (for mounts), sharing connections.
    pub fn with_name(&self, name: &str) -> Registry {
        Registry {
            agent: self.agent.clone(),
            base: self.base.clone(),
            host: self.host.clone(),
            name: name.to_string(),
            creds: self.creds.clone(),
            auth: Mutex::new(self.auth.lock().ok().and_then(|a| a.clone())),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{}", self.base, self.name, path)
    }

    /// Resolve a `Location` header (absolute or relative to the registry).
    pub fn absolute(&self, location: &str) -> String {
        if location.starts_with("http://") || location.starts_with("https://") {
            location.to_string()
        } else {
            format!("{}{}", self.base, location)
        }
    }

    fn auth_header(&self) -> Option<String> {
        self.auth
            .lock()
            .ok()
            .and_then(|a| a.clone())
            .or_else(|| self.creds.preemptive_header())
    }

    /// Send a request; every HTTP status comes back as `Ok` for the caller to judge.
    /// A 401 is answered once from the challenge when the body can be replayed.
    pub fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        mut body: Body<'_>,
    ) -> Result<Resp, ClientError> {
        for attempt in 0..2 {
            let mut req = self.agent.request(method, url);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if let Some(a) = self.auth_header() {
                req = req.set("Authorization", &a);
            }
            let replayable = !matches!(body, Body::Stream(..));
            let result = match &mut body {
                Body::None => req.call(),
                Body::Bytes(b) => req.send_bytes(b),
                Body::Stream(r, n) => req
                    .set("Content-Length", &n.to_string())
                    .send(&mut (*r).take(*n)),
            };
            let resp = match result {
                Ok(r) => r,
                Err(ureq::Error::Status(_, r)) => r,
                Err(ureq::Error::Transport(t)) => {
                    return Err(ClientError::Transport {
                        method: method.into(),
                        url: url.into(),
                        msg: t.to_string(),
                    });
                }
            };
            let status = resp.status();
            if status == 401 && attempt == 0 && replayable {
                let challenge = resp
                    .header("WWW-Authenticate")
                    .unwrap_or_default()
                    .to_string();
                if self.answer_challenge(url, &challenge)? {
                    continue;
                }
            }
            if status == 401 && attempt == 1 {
                // The challenge was answered and the registry still refuses.
                let mut text = String::new();
                let _ = resp.into_reader().take(64 << 10).read_to_string(&mut text);
                let said = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_string))
                    .map(|m| format!(" ({m})"))
                    .unwrap_or_default();
                return Err(ClientError::Auth {
                    url: url.into(),
                    msg: format!(
                        "HTTP 401{said} with {}; set QUERN_REGISTRY_TOKEN or run docker login with credentials allowed to {method} here",
                        self.creds.describe()
                    ),
                });
            }
            return Ok(Resp {
                status,
                inner: resp,
            });
        }
        Err(ClientError::Auth {
            url: url.into(),
            msg: "credentials rejected".into(),
        })
    }

    /// Turn a challenge into an Authorization header; false when we have nothing to offer.
    fn answer_challenge(&self, url: &str, challenge: &str) -> Result<bool, ClientError> {
        let Some(c) = parse_challenge(challenge) else {
            return Ok(false);
        };
        let header = match c.scheme.as_str() {
            "basic" => self.creds.basic_header(),
            "bearer" => {
                let Some(realm) = c.params.get("realm") else {
                    return Ok(false);
                };
                let mut token_url = format!("{realm}?");
                if let Some(s) = c.params.get("service") {
                    token_url.push_str(&format!("service={}&", encode(s)));
                }
                let scope = c
                    .params
                    .get("scope")
                    .cloned()
                    .unwrap_or_else(|| format!("repository:{}:pull,push", self.name));
                token_url.push_str(&format!("scope={}", encode(&scope)));
                let mut req = self.agent.get(&token_url);
                if let Some(b) = self.creds.basic_header() {
                    req = req.set("Authorization", &b);
                }
                let resp = req.call().map_err(|e| ClientError::Auth {
                    url: token_url.clone(),
                    msg: e.to_string(),
                })?;
                let v: serde_json::Value =
                    serde_json::from_reader(resp.into_reader().take(MAX_DOC)).map_err(|e| {
                        ClientError::Auth {
                            url: token_url.clone(),
                            msg: e.to_string(),
                        }
                    })?;
                let t = v["token"]
                    .as_str()
                    .or(v["access_token"].as_str())
                    .ok_or_else(|| ClientError::Auth {
                        url: token_url.clone(),
                        msg: "no token in response".into(),
                    })?;
                Some(format!("Bearer {t}"))
            }
            _ => None,
        };
        let Some(h) = header else {
            return Err(ClientError::Auth {
                url: url.into(),
                msg: "registry requires credentials: set QUERN_REGISTRY_TOKEN or run docker login"
                    .into(),
            });
        };
        if let Ok(mut a) = self.auth.lock() {
            *a = Some(h);
        }
        Ok(true)
    }

    /// Fail with the registry's own error message unless `status` is expected.
    pub fn expect(
        &self,
        method: &str,
        url: &str,
        resp: Resp,
        ok: &[u16],
    ) -> Result<Resp, ClientError> {
        if ok.contains(&resp.status) {
            return Ok(resp);
        }
        let status = resp.status;
        let mut text = String::new();
        let _ = resp
            .inner
            .into_reader()
            .take(64 << 10)
            .read_to_string(&mut text);
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                let e = &v["errors"][0];
                Some(format!(
                    "{} {}",
                    e["code"].as_str()?,
                    e["message"].as_str().unwrap_or_default()
                ))
            })
            .unwrap_or_else(|| text.chars().take(200).collect());
        Err(ClientError::Status {
            method: method.into(),
            url: url.into(),
            status,
            message,
        })
    }

    /// `GET /v2/` to learn the auth scheme before streaming bodies.
    pub fn ping(&self) -> Result<(), ClientError> {
        let url = format!("{}/v2/", self.base);
        let r = self.send("GET", &url, &[], Body::None)?;
        self.expect("GET", &url, r, &[200]).map(|_| ())
    }

    /// Size of a blob in this repository, or None.
    pub fn blob_exists(&self, d: &Digest) -> Result<Option<u64>, ClientError> {
        let url = self.url(&format!("blobs/{d}"));
        let r = self.send("HEAD", &url, &[], Body::None)?;
        match r.status {
            200 => Ok(Some(
                r.header("Content-Length")
                    .and_then(|l| l.parse().ok())
                    .unwrap_or(0),
            )),
            404 => Ok(None),
            _ => self.expect("HEAD", &url, r, &[]).map(|_| None),
        }
    }

    /// Start an upload, trying a cross-repository mount from `from` first.
    /// Returns None when mounted, else the upload's location.
    pub fn start_upload(
        &self,
        mount: Option<(&Digest, &str)>,
    ) -> Result<Option<String>, ClientError> {
        let mut url = self.url("blobs/uploads/");
        if let Some((d, from)) = mount {
            url.push_str(&format!(
                "?mount={}&from={}",
                encode(&d.to_string()),
                encode(from)
            ));
        }
        let r = self.send("POST", &url, &[("Content-Length", "0")], Body::None)?;
        let r = self.expect("POST", &url, r, &[201, 202])?;
        if r.status == 201 {
            return Ok(None);
        }
        let loc = r
            .header("Location")
            .ok_or_else(|| ClientError::Invalid(format!("POST {url}: no Location header")))?;
        Ok(Some(self.absolute(&loc)))
    }

    /// Bytes an upload holds (from its `Range` header), or None when the upload is gone.
    pub fn upload_status(&self, location: &str) -> Result<Option<(String, u64)>, ClientError> {
        let r = self.send("GET", location, &[], Body::None)?;
        if r.status != 204 && r.status != 200 {
            return Ok(None);
        }
        let loc = r
            .header("Location")
            .map(|l| self.absolute(&l))
            .unwrap_or_else(|| location.to_string());
        Ok(Some((loc, range_end(r.header("Range").as_deref()))))
    }

    /// Send `len` bytes at `offset`; returns the next location and the bytes held.
    pub fn patch(
        &self,
        location: &str,
        offset: u64,
        body: &mut dyn Read,
        len: u64,
    ) -> Result<(String, u64), ClientError> {
        let range = format!("{}-{}", offset, offset + len - 1);
        let r = self.send(
            "PATCH",
            location,
            &[
                ("Content-Range", &range),
                ("Content-Type", "application/octet-stream"),
            ],
            Body::Stream(body, len),
        )?;
        let r = self.expect("PATCH", location, r, &[202, 204])?;
        let loc = r
            .header("Location")
            .map(|l| self.absolute(&l))
            .unwrap_or_else(|| location.to_string());
        let held = r
            .header("Range")
            .map(|v| range_end(Some(&v)))
            .unwrap_or(offset + len);
        Ok((loc, held))
    }

    /// Abandon an upload (best effort: the registry expires it anyway).
    pub fn cancel_upload(&self, location: &str) {
        let _ = self.send("DELETE", location, &[], Body::None);
    }

    /// Close an upload with its digest (no body).
    pub fn finish_upload(&self, location: &str, d: &Digest) -> Result<(), ClientError> {
        let sep = if location.contains('?') { '&' } else { '?' };
        let url = format!("{location}{sep}digest={}", encode(&d.to_string()));
        let r = self.send("PUT", &url, &[("Content-Length", "0")], Body::None)?;
        self.expect("PUT", &url, r, &[201, 204]).map(|_| ())
    }

    /// POST + PUT of a small blob held in memory.
    pub fn put_small_blob(&self, data: &[u8]) -> Result<Digest, ClientError> {
        let d = Digest::of_bytes(data);
        if self.blob_exists(&d)?.is_some() {
            return Ok(d);
        }
        let Some(loc) = self.start_upload(None)? else {
            return Ok(d);
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let url = format!("{loc}{sep}digest={}", encode(&d.to_string()));
        let r = self.send(
            "PUT",
            &url,
            &[("Content-Type", "application/octet-stream")],
            Body::Bytes(data),
        )?;
        self.expect("PUT", &url, r, &[201, 204])?;
        Ok(d)
    }

    /// GET a small blob and check its digest.
    pub fn get_small_blob(&self, d: &Digest) -> Result<Vec<u8>, ClientError> {
        let url = self.url(&format!("blobs/{d}"));
        let r = self.send("GET", &url, &[], Body::None)?;
        let r = self.expect("GET", &url, r, &[200])?;
        let mut buf = Vec::new();
        r.inner
            .into_reader()
            .take(MAX_DOC)
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::Transport {
                method: "GET".into(),
                url: url.clone(),
                msg: e.to_string(),
            })?;
        let actual = Digest::of_bytes(&buf);
        if &actual != d {
            return Err(ClientError::DigestMismatch {
                what: url,
                expected: d.clone(),
                actual,
            });
        }
        Ok(buf)
    }

    /// Open a blob from `offset` (Range request when > 0). Returns the
    /// response and whether the registry honoured the range.
    pub fn get_blob(&self, d: &Digest, offset: u64) -> Result<(Resp, bool), ClientError> {
        let url = self.url(&format!("blobs/{d}"));
        let range = format!("bytes={offset}-");
        let headers: Vec<(&str, &str)> = if offset > 0 {
            vec![("Range", &range)]
        } else {
            vec![]
        };
        let r = self.send("GET", &url, &headers, Body::None)?;
        let r = self.expect("GET", &url, r, &[200, 206])?;
        let ranged = r.status == 206;
        Ok((r, ranged))
    }

    /// GET a manifest: bytes, media type, and the registry's digest header.
    pub fn get_manifest(&self, reference: &str) -> Result<Option<ManifestReply>, ClientError> {
        let url = self.url(&format!("manifests/{reference}"));
        let accept = [
            media::OCI_MANIFEST,
            media::OCI_INDEX,
            media::DOCKER_MANIFEST,
        ]
        .join(", ");
        let r = self.send("GET", &url, &[("Accept", &accept)], Body::None)?;
        if r.status == 404 {
            return Ok(None);
        }
        let r = self.expect("GET", &url, r, &[200])?;
        let mt = r.header("Content-Type").unwrap_or_default();
        let dh = r.header("Docker-Content-Digest");
        let mut buf = Vec::new();
        r.inner
            .into_reader()
            .take(MAX_DOC)
            .read_to_end(&mut buf)
            .map_err(|e| ClientError::Transport {
                method: "GET".into(),
                url: url.clone(),
                msg: e.to_string(),
            })?;
        Ok(Some((buf, mt, dh)))
    }

    /// PUT a manifest; returns its digest and whether the registry processed its
    /// `subject` (the `OCI-Subject` header of OCI 1.1 registries).
    pub fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(Digest, bool), ClientError> {
        let url = self.url(&format!("manifests/{reference}"));
        let r = self.send(
            "PUT",
            &url,
            &[("Content-Type", media_type)],
            Body::Bytes(bytes),
        )?;
        let r = self.expect("PUT", &url, r, &[201])?;
        let d = Digest::of_bytes(bytes);
        if let Some(h) = r.header("Docker-Content-Digest") {
            if h != d.to_string() {
                return Err(ClientError::Invalid(format!(
                    "PUT {url}: registry reports digest {h}, content is {d}"
                )));
            }
        }
        Ok((d, r.header("OCI-Subject").is_some()))
    }

    /// The referrers API; None when the registry does not have it (404).
    pub fn referrers(
        &self,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Option<Index>, ClientError> {
        let mut url = self.url(&format!("referrers/{subject}"));
        if let Some(a) = artifact_type {
            url.push_str(&format!("?artifactType={}", encode(a)));
        }
        let r = self.send("GET", &url, &[("Accept", media::OCI_INDEX)], Body::None)?;
        if r.status == 404 || r.status == 405 || r.status == 400 {
            return Ok(None);
        }
        let r = self.expect("GET", &url, r, &[200])?;
        let is_index = r
            .header("Content-Type")
            .is_some_and(|c| c.starts_with(media::OCI_INDEX));
        if !is_index {
            return Ok(None);
        }
        let idx: Index = serde_json::from_reader(r.inner.into_reader().take(MAX_DOC))
            .map_err(|e| ClientError::Invalid(format!("GET {url}: bad referrers index: {e}")))?;
        Ok(Some(idx))
    }
}

/// The end offset + 1 from a `Range: 0-<last>` header (`0-0` is taken as empty,
/// as CNCF distribution reports a fresh upload).
pub fn range_end(v: Option<&str>) -> u64 {
    let Some(v) = v else { return 0 };
    let v = v.trim().trim_start_matches("bytes=");
    match v
        .split_once('-')
        .and_then(|(_, b)| b.trim().parse::<u64>().ok())
    {
        Some(0) | None => 0,
        Some(end) => end + 1,
    }
}

/// A fetched manifest: bytes, `Content-Type`, `Docker-Content-Digest`.
pub type ManifestReply = (Vec<u8>, String, Option<String>);

/// Percent-encode a query value.
pub fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
