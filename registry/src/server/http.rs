//! The distribution API over HTTP/1.1 (tiny_http, a pool of worker threads).

use super::errors::{ApiError, Code};
use super::storage::{Storage, MAX_MANIFEST};
use crate::digest::Digest;
use crate::manifest::Index;
use crate::media;
use crate::reference::{validate_name, validate_tag};
use std::collections::HashMap;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tiny_http::{Header, Method, Request, Response, StatusCode};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {msg}")]
    Bind { addr: String, msg: String },
    #[error(transparent)]
    Storage(#[from] super::storage::StorageError),
    #[error("cannot read token file {path}: {source}")]
    Token { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub root: PathBuf,
    pub addr: String,
    /// When set, every write (POST, PUT, PATCH, DELETE) needs this token, as
    /// `Authorization: Bearer <token>` or as the password of Basic credentials.
    pub token: Option<String>,
    pub threads: usize,
    /// One line per request on stderr.
    pub log: bool,
}

impl ServerConfig {
    pub fn new(root: impl Into<PathBuf>, addr: &str) -> ServerConfig {
        ServerConfig {
            root: root.into(),
            addr: addr.to_string(),
            token: None,
            threads: 16,
            log: false,
        }
    }

    /// Read the token from a file (first line, trimmed).
    pub fn token_file(mut self, path: &std::path::Path) -> Result<ServerConfig, ServerError> {
        let t = std::fs::read_to_string(path).map_err(|source| ServerError::Token {
            path: path.into(),
            source,
        })?;
        self.token = Some(t.lines().next().unwrap_or_default().trim().to_string());
        Ok(self)
    }
}

/// A running server; dropping it stops the workers.
pub struct Server {
    http: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let storage = Arc::new(Storage::open(&config.root)?);
        let http = tiny_http::Server::http(&config.addr).map_err(|e| ServerError::Bind {
            addr: config.addr.clone(),
            msg: e.to_string(),
        })?;
        let addr = http
            .server_addr()
            .to_ip()
            .ok_or_else(|| ServerError::Bind {
                addr: config.addr.clone(),
                msg: "not an IP address".into(),
            })?;
        let http = Arc::new(http);
        let api = Arc::new(Api {
            storage,
            token: config.token.clone(),
            log: config.log,
        });
        let workers = (0..config.threads.max(1))
            .map(|_| {
                let http = http.clone();
                let api = api.clone();
                std::thread::spawn(move || {
                    // recv() fails only once the server is unblocked for shutdown.
                    while let Ok(req) = http.recv() {
                        api.serve(req);
                    }
                })
            })
            .collect();
        Ok(Server {
            http,
            addr,
            workers,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until the process ends.
    pub fn wait(mut self) {
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for _ in &self.workers {
            self.http.unblock();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

struct Api {
    storage: Arc<Storage>,
    token: Option<String>,
    log: bool,
}

/// A response under construction.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// A reader and its length (also what HEAD reports as Content-Length).
    Stream(Box<dyn Read + Send>, u64),
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }
    fn header(mut self, k: &str, v: impl Into<String>) -> Reply {
        self.headers.push((k.to_string(), v.into()));
        self
    }
    fn json(mut self, media_type: &str, body: Vec<u8>) -> Reply {
        self.headers
            .push(("Content-Type".into(), media_type.to_string()));
        self.body = Body::Bytes(body);
        self
    }
    fn error(e: ApiError) -> Reply {
        Reply::new(e.code.status()).json("application/json", e.body())
    }
}

impl From<ApiError> for Reply {
    fn from(e: ApiError) -> Reply {
        Reply::error(e)
    }
}

type ApiResult<T> = std::result::Result<T, ApiError>;

fn header<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).to_string()
}

fn parse_query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .map(|(k, v)| (percent_decode(k), percent_decode(v)))
        .collect()
}

fn parse_digest(s: &str) -> ApiResult<Digest> {
    s.parse::<Digest>()
        .map_err(|e| ApiError::new(Code::DigestInvalid, e.to_string()))
}

fn check_name(name: &str) -> ApiResult<()> {
    validate_name(name).map_err(|e| ApiError::new(Code::NameInvalid, e.to_string()))
}

/// `a-b` (the distribution-spec form) or `bytes a-b/*`: the start offset.
fn content_range_start(v: &str) -> Option<u64> {
    let v = v
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    v.split('-').next()?.trim().parse().ok()
}

/// `bytes=a-b` / `bytes=a-` / `bytes=-n` against a blob of `size` bytes: (start, end inclusive).
fn parse_range(v: &str, size: u64) -> Option<(u64, u64)> {
    let spec = v.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (size.checked_sub(n.min(size))?, size.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, size.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(size.saturating_sub(1)),
        ),
    };
    (start <= end && start < size).then_some((start, end))
}

impl Api {
    fn serve(&self, mut req: Request) {
        let method = req.method().clone();
        let url = req.url().to_string();
        let reply = match self.route(&mut req) {
            Ok(r) => r,
            Err(e) => Reply::error(e),
        };
        if self.log {
            eprintln!("{} {} -> {}", method, url, reply.status);
        }
        if let (Body::Stream(..), Method::Get) = (&reply.body, &method) {
            // Large bodies bypass tiny_http's 8 KiB copy loop: 1 MiB writes.
            let _ = write_stream(req, reply);
            return;
        }
        let mut headers: Vec<Header> = reply
            .headers
            .iter()
            .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
            .collect();
        if let Ok(h) = Header::from_bytes(
            &b"Docker-Distribution-API-Version"[..],
            &b"registry/2.0"[..],
        ) {
            headers.push(h);
        }
        let (reader, len): (Box<dyn Read + Send>, u64) = match reply.body {
            Body::Empty => (Box::new(io::empty()), 0),
            Body::Bytes(b) => {
                let n = b.len() as u64;
                (Box::new(io::Cursor::new(b)), n)
            }
            Body::Stream(r, n) => (Box::new(r), n),
        };
        let reader: Box<dyn Read + Send> = if method == Method::Head {
            Box::new(io::empty())
        } else {
            reader
        };
        // A known length and no chunking, so HEAD reports the blob's size.
        let resp = Response::new(
            StatusCode(reply.status),
            headers,
            reader,
            Some(len as usize),
            None,
        )
        .with_chunked_threshold(usize::MAX);
        let _ = req.respond(resp);
    }

    fn authorized(&self, req: &Request) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let Some(auth) = header(req, "Authorization") else {
            return false;
        };
        if let Some(t) = auth.strip_prefix("Bearer ") {
            return t.trim() == token;
        }
        if let Some(b) = auth.strip_prefix("Basic ") {
            use base64::Engine as _;
            if let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(b.trim()) {
                let s = String::from_utf8_lossy(&raw).to_string();
                return s.split_once(':').is_some_and(|(_, p)| p == token);
            }
        }
        false
    }

    fn route(&self, req: &mut Request) -> ApiResult<Reply> {
        let url = req.url().to_string();
        let (path, query) = url.split_once('?').unwrap_or((&url, ""));
        let q = parse_query(query);
        let method = req.method().clone();
        let writes = matches!(
            method,
            Method::Post | Method::Put | Method::Patch | Method::Delete
        );
        if writes && !self.authorized(req) {
            return Ok(Reply::error(ApiError::new(
                Code::Unauthorized,
                "authentication required to write",
            ))
            .header("WWW-Authenticate", "Basic realm=\"quern registry\""));
        }
        if path == "/v2/" || path == "/v2" {
            return Ok(Reply::new(200).json("application/json", b"{}".to_vec()));
        }
        if path == "/v2/_catalog" {
            return Ok(self.catalog(&q));
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return Err(ApiError::new(
                Code::NameUnknown,
                format!("no such endpoint {path}"),
            ));
        };
        if let Some(name) = rest.strip_suffix("/tags/list") {
            check_name(name)?;
            return self.tags(name, &q);
        }
        if let Some(i) = rest.rfind("/blobs/uploads") {
            let name = &rest[..i];
            check_name(name)?;
            let id = rest[i + "/blobs/uploads".len()..].trim_start_matches('/');
            return self.uploads(req, &method, name, id, &q);
        }
        if let Some(i) = rest.rfind("/blobs/") {
            let name = &rest[..i];
            check_name(name)?;
            let d = parse_digest(&rest[i + "/blobs/".len()..])?;
            return self.blobs(req, &method, name, &d);
        }
        if let Some(i) = rest.rfind("/manifests/") {
            let name = &rest[..i];
            check_name(name)?;
            let reference = &rest[i + "/manifests/".len()..];
            if reference.starts_with("sha256:") || reference.contains(':') {
                parse_digest(reference)?;
            } else {
                validate_tag(reference)
                    .map_err(|e| ApiError::new(Code::ManifestInvalid, e.to_string()))?;
            }
            return self.manifests(req, &method, name, reference);
        }
        if let Some(i) = rest.rfind("/referrers/") {
            let name = &rest[..i];
            check_name(name)?;
            let d = parse_digest(&rest[i + "/referrers/".len()..])?;
            if method != Method::Get {
                return Err(ApiError::new(Code::Unsupported, "referrers: GET only"));
            }
            return Ok(self.referrers(name, &d, q.get("artifactType").map(String::as_str)));
        }
        Err(ApiError::new(
            Code::NameUnknown,
            format!("no such endpoint {path}"),
        ))
    }

    fn uploads(
        &self,
        req: &mut Request,
        method: &Method,
        name: &str,
        id: &str,
        q: &HashMap<String, String>,
    ) -> ApiResult<Reply> {
        let st = &self.storage;
        let location = |id: &str| format!("/v2/{name}/blobs/uploads/{id}");
        let range = |n: u64| format!("0-{}", n.saturating_sub(1));
        match (method, id) {
            (Method::Post, "") => {
                if let (Some(m), Some(from)) = (q.get("mount"), q.get("from")) {
                    let d = parse_digest(m)?;
                    if st.mount(name, from, &d)? {
                        return Ok(Reply::new(201)
                            .header("Location", format!("/v2/{name}/blobs/{d}"))
                            .header("Docker-Content-Digest", d.to_string()));
                    }
                }
                let new_id = st.start_upload(name)?;
                if let Some(d) = q.get("digest") {
                    let d = parse_digest(d)?;
                    st.finish_upload(name, &new_id, &d, req.as_reader())?;
                    return Ok(Reply::new(201)
                        .header("Location", format!("/v2/{name}/blobs/{d}"))
                        .header("Docker-Content-Digest", d.to_string()));
                }
                Ok(Reply::new(202)
                    .header("Location", location(&new_id))
                    .header("Range", "0-0")
                    .header("Docker-Upload-UUID", new_id))
            }
            (Method::Patch, id) if !id.is_empty() => {
                let start = header(req, "Content-Range")
                    .map(|v| {
                        content_range_start(v).ok_or_else(|| {
                            ApiError::new(Code::RangeInvalid, format!("bad Content-Range {v:?}"))
                        })
                    })
                    .transpose()?;
                let size = st.append(name, id, start, req.as_reader())?;
                Ok(Reply::new(202)
                    .header("Location", location(id))
                    .header("Range", range(size))
                    .header("Docker-Upload-UUID", id))
            }
            (Method::Put, id) if !id.is_empty() => {
                let d = parse_digest(q.get("digest").map(String::as_str).unwrap_or(""))?;
                st.finish_upload(name, id, &d, req.as_reader())?;
                Ok(Reply::new(201)
                    .header("Location", format!("/v2/{name}/blobs/{d}"))
                    .header("Docker-Content-Digest", d.to_string()))
            }
            (Method::Get, id) if !id.is_empty() => {
                let size = st.upload_size(name, id)?;
                Ok(Reply::new(204)
                    .header("Location", location(id))
                    .header("Range", range(size))
                    .header("Docker-Upload-UUID", id))
            }
            (Method::Delete, id) if !id.is_empty() => {
                if st.cancel_upload(name, id) {
                    Ok(Reply::new(204))
                } else {
                    Err(ApiError::new(
                        Code::BlobUploadUnknown,
                        format!("upload {id} unknown"),
                    ))
                }
            }
            _ => Err(ApiError::new(
                Code::Unsupported,
                "method not allowed on uploads",
            )),
        }
    }

    fn blobs(&self, req: &Request, method: &Method, name: &str, d: &Digest) -> ApiResult<Reply> {
        match method {
            Method::Get | Method::Head => {
                let (mut f, size) = self.storage.open_blob(name, d)?;
                let base = |r: Reply| {
                    r.header("Docker-Content-Digest", d.to_string())
                        .header("Accept-Ranges", "bytes")
                        .header("Content-Type", "application/octet-stream")
                };
                if let Some(rv) = header(req, "Range") {
                    let Some((start, end)) = parse_range(rv, size) else {
                        return Ok(Reply::error(ApiError::new(
                            Code::RangeInvalid,
                            format!("range {rv:?} not satisfiable for {size} bytes"),
                        ))
                        .header("Content-Range", format!("bytes */{size}")));
                    };
                    use std::io::Seek;
                    f.seek(io::SeekFrom::Start(start))
                        .map_err(|e| ApiError::new(Code::Internal, e.to_string()))?;
                    let n = end - start + 1;
                    let mut r = base(Reply::new(206))
                        .header("Content-Range", format!("bytes {start}-{end}/{size}"));
                    r.body = Body::Stream(
                        Box::new(io::BufReader::with_capacity(1 << 20, f).take(n)),
                        n,
                    );
                    return Ok(r);
                }
                let mut r = base(Reply::new(200));
                r.body = Body::Stream(Box::new(io::BufReader::with_capacity(1 << 20, f)), size);
                Ok(r)
            }
            Method::Delete => {
                self.storage.delete_blob(name, d)?;
                Ok(Reply::new(202))
            }
            _ => Err(ApiError::new(
                Code::Unsupported,
                "method not allowed on blobs",
            )),
        }
    }

    fn manifests(
        &self,
        req: &mut Request,
        method: &Method,
        name: &str,
        reference: &str,
    ) -> ApiResult<Reply> {
        match method {
            Method::Get | Method::Head => {
                let m = self.storage.get_manifest(name, reference)?;
                Ok(Reply::new(200)
                    .header("Docker-Content-Digest", m.digest.to_string())
                    .json(&m.media_type, m.bytes))
            }
            Method::Put => {
                let ct = header(req, "Content-Type").unwrap_or_default().to_string();
                let mut body = Vec::new();
                req.as_reader()
                    .take(MAX_MANIFEST as u64 + 1)
                    .read_to_end(&mut body)
                    .map_err(|e| ApiError::new(Code::ManifestInvalid, e.to_string()))?;
                if body.len() > MAX_MANIFEST {
                    return Err(ApiError::new(
                        Code::TooLarge,
                        format!("manifest larger than {MAX_MANIFEST} bytes"),
                    ));
                }
                let (d, subject) = self.storage.put_manifest(name, reference, &body, &ct)?;
                let mut r = Reply::new(201)
                    .header("Location", format!("/v2/{name}/manifests/{d}"))
                    .header("Docker-Content-Digest", d.to_string());
                if let Some(s) = subject {
                    r = r.header("OCI-Subject", s.to_string());
                }
                Ok(r)
            }
            Method::Delete => {
                self.storage.delete_manifest(name, reference)?;
                Ok(Reply::new(202))
            }
            _ => Err(ApiError::new(
                Code::Unsupported,
                "method not allowed on manifests",
            )),
        }
    }

    fn tags(&self, name: &str, q: &HashMap<String, String>) -> ApiResult<Reply> {
        let tags = self.storage.tags(name)?;
        let (page, next) = paginate(tags, q);
        let body = serde_json::to_vec(&serde_json::json!({"name": name, "tags": page}))
            .unwrap_or_default();
        let mut r = Reply::new(200).json("application/json", body);
        if let Some((n, last)) = next {
            r = r.header(
                "Link",
                format!("</v2/{name}/tags/list?n={n}&last={last}>; rel=\"next\""),
            );
        }
        Ok(r)
    }

    fn catalog(&self, q: &HashMap<String, String>) -> Reply {
        let (page, next) = paginate(self.storage.catalog(), q);
        let body =
            serde_json::to_vec(&serde_json::json!({"repositories": page})).unwrap_or_default();
        let mut r = Reply::new(200).json("application/json", body);
        if let Some((n, last)) = next {
            r = r.header(
                "Link",
                format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\""),
            );
        }
        r
    }

    fn referrers(&self, name: &str, subject: &Digest, artifact_type: Option<&str>) -> Reply {
        let idx = Index::new(self.storage.referrers(name, subject, artifact_type));
        let mut r = Reply::new(200).json(media::OCI_INDEX, idx.to_bytes());
        if artifact_type.is_some() {
            r = r.header("OCI-Filters-Applied", "artifactType");
        }
        r
    }
}

/// Write a whole response with a streamed body straight to the connection.
fn write_stream(req: Request, reply: Reply) -> io::Result<()> {
    use std::io::Write;
    let Body::Stream(mut reader, len) = reply.body else {
        return Ok(());
    };
    let reason = StatusCode(reply.status).default_reason_phrase();
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", reply.status);
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Docker-Distribution-API-Version: registry/2.0\r\nContent-Length: {len}\r\n\r\n"
    ));
    let mut w = req.into_writer();
    w.write_all(head.as_bytes())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = reader.read(&mut buf[..(left.min(1 << 20)) as usize])?;
        if n == 0 {
            // The file shrank under us: the client sees a short body and its digest check fails.
            break;
        }
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()
}

/// `?n=&last=`: the items after `last`, at most `n`, and the next page's cursor.
fn paginate(
    items: Vec<String>,
    q: &HashMap<String, String>,
) -> (Vec<String>, Option<(usize, String)>) {
    let after: Vec<String> = match q.get("last") {
        Some(l) => items.into_iter().filter(|t| t > l).collect(),
        None => items,
    };
    match q.get("n").and_then(|n| n.parse::<usize>().ok()) {
        Some(n) if n < after.len() => {
            let page: Vec<String> = after.into_iter().take(n).collect();
            let last = page.last().cloned().unwrap_or_default();
            (page, (n > 0).then_some((n, last)))
        }
        _ => (after, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=5-2", 100), None);
        assert_eq!(content_range_start("100-199"), Some(100));
        assert_eq!(content_range_start("bytes 5-9/*"), Some(5));
    }

    #[test]
    fn pagination() {
        let items: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let q: HashMap<String, String> = [("n".to_string(), "2".to_string())].into();
        let (p, next) = paginate(items.clone(), &q);
        assert_eq!(p, ["a", "b"]);
        assert_eq!(next, Some((2, "b".to_string())));
        let q: HashMap<String, String> = [
            ("n".to_string(), "2".to_string()),
            ("last".to_string(), "b".to_string()),
        ]
        .into();
        assert_eq!(paginate(items, &q), (vec!["c".to_string()], None));
        assert_eq!(percent_decode("sha256%3Aab"), "sha256:ab");
    }
}
