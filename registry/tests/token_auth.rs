//! The Docker token-auth flow and Basic challenges, end to end: a gateway in
//! front of quern's server answers 401 with `WWW-Authenticate: Bearer
//! realm=…,service=…,scope=…` (or `Basic realm=…`); a token service written
//! here issues scoped tokens for Basic credentials; the client finds its
//! credentials in a docker config file (`$DOCKER_CONFIG`, `$HOME/.docker`) or
//! in `QUERN_REGISTRY_TOKEN`. One test in its own binary, since it sets
//! process-wide environment variables.

mod common;
use base64::Engine as _;
use quern_registry::client::{pull, push, NoProgress, PullOptions, PushOptions};
use quern_registry::signing::keys::Curve;
use quern_registry::signing::SigningKey;
use quern_registry::store::Store;
use quern_registry::Reference;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SERVICE: &str = "quern-test";
const USER: (&str, &str) = ("alice", "wonderland");

/// What a token grants: one repository, some actions.
#[derive(Debug, Clone)]
struct Grant {
    repo: String,
    actions: Vec<String>,
}

/// A token request as the service saw it.
#[derive(Debug, Clone)]
struct TokenRequest {
    user: Option<String>,
    service: String,
    scope: String,
}

#[derive(Default)]
struct Tokens {
    issued: Mutex<HashMap<String, Grant>>,
    requests: Mutex<Vec<TokenRequest>>,
    next: AtomicUsize,
}

fn query_param(url: &str, key: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| percent_decode(v))
    })
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
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
    String::from_utf8_lossy(&out).into_owned()
}

fn header(req: &tiny_http::Request, name: &str) -> Option<String> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str().to_string())
}

fn respond_json(req: tiny_http::Request, status: u16, extra: &[(&str, String)], body: String) {
    let mut r = tiny_http::Response::from_string(body).with_status_code(status);
    r.add_header(tiny_http::Header::from_bytes("Content-Type", "application/json").unwrap());
    for (k, v) in extra {
        r.add_header(tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap());
    }
    let _ = req.respond(r);
}

/// `GET /token?service=…&scope=repository:NAME:ACTIONS`: alice gets what she
/// asks for, anonymous callers get pull only, wrong passwords get 401.
fn start_token_service(tokens: Arc<Tokens>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap().to_string();
    std::thread::spawn(move || {
        for req in server.incoming_requests() {
            let url = req.url().to_string();
            let service = query_param(&url, "service").unwrap_or_default();
            let scope = query_param(&url, "scope").unwrap_or_default();
            let user = match header(&req, "Authorization") {
                None => None,
                Some(a) => {
                    let decoded = a
                        .strip_prefix("Basic ")
                        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                        .and_then(|b| String::from_utf8(b).ok());
                    if decoded.as_deref() != Some(&format!("{}:{}", USER.0, USER.1)) {
                        respond_json(
                            req,
                            401,
                            &[],
                            r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#
                                .into(),
                        );
                        continue;
                    }
                    Some(USER.0.to_string())
                }
            };
            tokens.requests.lock().unwrap().push(TokenRequest {
                user: user.clone(),
                service: service.clone(),
                scope: scope.clone(),
            });
            if service != SERVICE || !url.starts_with("/token?") {
                respond_json(req, 400, &[], r#"{"details":"unknown service"}"#.into());
                continue;
            }
            let parts: Vec<&str> = scope.split(':').collect();
            let (repo, asked) = match parts.as_slice() {
                ["repository", repo, actions] => (repo.to_string(), actions.split(',')),
                _ => {
                    respond_json(req, 400, &[], r#"{"details":"bad scope"}"#.into());
                    continue;
                }
            };
            let actions = asked
                .filter(|a| user.is_some() || *a == "pull")
                .map(str::to_string)
                .collect();
            let token = format!("tok-{}", tokens.next.fetch_add(1, Ordering::Relaxed));
            tokens
                .issued
                .lock()
                .unwrap()
                .insert(token.clone(), Grant { repo, actions });
            respond_json(
                req,
                200,
                &[],
                format!(r#"{{"token":"{token}","expires_in":300}}"#),
            );
        }
    });
    addr
}

#[derive(Clone)]
enum Mode {
    /// Bearer tokens from the service at this realm.
    Bearer(String),
    /// Basic credentials checked by the gateway itself.
    Basic,
}

/// The repository a `/v2/<name>/{blobs,manifests,tags,referrers}/…` path names.
fn repo_of(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    let rest = rest.split('?').next()?;
    ["/blobs/", "/manifests/", "/tags/", "/referrers/"]
        .iter()
        .filter_map(|k| rest.find(k))
        .min()
        .map(|i| rest[..i].to_string())
}

/// A gateway that demands credentials, then forwards to `backend`.
fn start_gateway(backend: String, mode: Mode, tokens: Arc<Tokens>) -> String {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let addr = server.server_addr().to_ip().unwrap().to_string();
    let agent = ureq::AgentBuilder::new().redirects(0).build();
    let me = addr.clone();
    std::thread::spawn(move || {
        for mut req in server.incoming_requests() {
            let url = req.url().to_string();
            let method = req.method().as_str().to_string();
            let repo = repo_of(&url);
            let action = if method == "GET" || method == "HEAD" {
                "pull"
            } else {
                "push"
            };
            let auth = header(&req, "Authorization").unwrap_or_default();
            let allowed = match &mode {
                Mode::Basic => {
                    auth == format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD
                            .encode(format!("{}:{}", USER.0, USER.1))
                    )
                }
                Mode::Bearer(_) => auth
                    .strip_prefix("Bearer ")
                    .and_then(|t| tokens.issued.lock().unwrap().get(t).cloned())
                    .is_some_and(|g| match &repo {
                        // /v2/ itself: any valid token.
                        None => true,
                        Some(r) => &g.repo == r && g.actions.iter().any(|a| a == action),
                    }),
            };
            if !allowed {
                let challenge = match (&mode, &repo) {
                    (Mode::Basic, _) => r#"Basic realm="quern test gateway""#.to_string(),
                    (Mode::Bearer(realm), None) => {
                        format!(r#"Bearer realm="{realm}",service="{SERVICE}""#)
                    }
                    (Mode::Bearer(realm), Some(r)) => {
                        let actions = if action == "pull" {
                            "pull"
                        } else {
                            "pull,push"
                        };
                        format!(
                            r#"Bearer realm="{realm}",service="{SERVICE}",scope="repository:{r}:{actions}""#
                        )
                    }
                };
                respond_json(
                    req,
                    401,
                    &[("WWW-Authenticate", challenge)],
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#.into(),
                );
                continue;
            }
            // Forward: the body in memory (the test's files are small).
            let mut body = Vec::new();
            let _ = req.as_reader().read_to_end(&mut body);
            let mut fwd = agent.request(&method, &format!("http://{backend}{url}"));
            for h in req.headers() {
                let name = h.field.as_str().as_str();
                if ["host", "authorization", "content-length", "connection"]
                    .contains(&name.to_ascii_lowercase().as_str())
                {
                    continue;
                }
                fwd = fwd.set(name, h.value.as_str());
            }
            let res = if body.is_empty() && method != "PUT" && method != "PATCH" {
                fwd.call()
            } else {
                fwd.send_bytes(&body)
            };
            let resp = match res {
                Ok(r) | Err(ureq::Error::Status(_, r)) => r,
                Err(e) => {
                    respond_json(req, 502, &[], format!(r#"{{"error":"{e}"}}"#));
                    continue;
                }
            };
            let status = resp.status();
            let mut headers = Vec::new();
            let mut len = None;
            for name in resp.headers_names() {
                let v = resp
                    .header(&name)
                    .unwrap_or_default()
                    .replace(&backend, &me);
                if name.eq_ignore_ascii_case("content-length") {
                    len = v.parse::<usize>().ok();
                    continue;
                }
                if name.eq_ignore_ascii_case("transfer-encoding")
                    || name.eq_ignore_ascii_case("connection")
                {
                    continue;
                }
                headers.push(tiny_http::Header::from_bytes(name.as_bytes(), v.as_bytes()).unwrap());
            }
            let mut data = Vec::new();
            if method != "HEAD" {
                let _ = resp.into_reader().read_to_end(&mut data);
                len = Some(data.len());
            }
            let r = tiny_http::Response::new(
                tiny_http::StatusCode(status),
                headers,
                std::io::Cursor::new(data),
                len,
                None,
            )
            .with_chunked_threshold(usize::MAX);
            let _ = req.respond(r);
        }
    });
    addr
}

fn docker_config(dir: &Path, host: &str, user: &str, password: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    std::fs::write(
        dir.join("config.json"),
        format!(r#"{{"auths":{{"http://{host}":{{"auth":"{auth}"}}}}}}"#),
    )
    .unwrap();
}

struct Case {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Case {
    fn push(&self, host: &str, repo: &str, content: &[u8]) -> Result<(), String> {
        let model = self
            .dir
            .path()
            .join(format!("{}.gguf", repo.replace('/', "_")));
        std::fs::write(&model, content).unwrap();
        let mut o = PushOptions::new(
            &model,
            Reference::parse(&format!("{host}/{repo}:v1")).unwrap(),
        );
        o.store = Store::new(self.dir.path().join("push-cache"));
        o.key = Some(SigningKey::from_pem(&self.key.to_pem().unwrap()).unwrap());
        push(&o, &NoProgress).map(|_| ()).map_err(|e| e.to_string())
    }
    fn pull(&self, host: &str, repo: &str, out: &str) -> Result<Vec<u8>, String> {
        let out = self.dir.path().join(out);
        let mut o = PullOptions::new(
            Reference::parse(&format!("{host}/{repo}:v1")).unwrap(),
            &out,
        );
        o.store = Store::new(self.dir.path().join(format!("pull-cache-{repo}")));
        o.trust = vec![self.key.verifying_key()];
        let rep = pull(&o, &NoProgress).map_err(|e| e.to_string())?;
        Ok(std::fs::read(&rep.files[0].path).unwrap())
    }
}

#[test]
fn bearer_token_flow_and_basic_challenges() {
    let backend = common::ours();
    let tokens = Arc::new(Tokens::default());
    let realm = format!("http://{}/token", start_token_service(tokens.clone()));
    let bearer = start_gateway(
        backend.host.clone(),
        Mode::Bearer(realm.clone()),
        tokens.clone(),
    );
    let basic = start_gateway(backend.host.clone(), Mode::Basic, tokens.clone());
    let c = Case {
        dir: tempfile::tempdir().unwrap(),
        key: SigningKey::generate(Curve::P256),
    };
    let t = c.dir.path();
    std::env::remove_var("QUERN_REGISTRY_TOKEN");
    std::env::set_var("HOME", t.join("empty-home"));
    std::env::set_var("DOCKER_CONFIG", t.join("no-docker"));

    // The gateway really demands a token: the spec's 401 with the challenge.
    let r = common::http(
        "GET",
        &format!("http://{bearer}/v2/ns/a/tags/list"),
        &[],
        None,
    );
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some(
            format!(r#"Bearer realm="{realm}",service="{SERVICE}",scope="repository:ns/a:pull""#)
                .as_str()
        )
    );

    // No credentials: the token service grants anonymous pull only, so the push
    // fails on the first write with a message that says what to do.
    let err = c.push(&bearer, "ns/a", b"weights a").unwrap_err();
    assert!(
        err.contains("401") && err.contains("docker login"),
        "anonymous push: {err}"
    );
    {
        let reqs = tokens.requests.lock().unwrap();
        assert!(!reqs.is_empty(), "the client never asked the token service");
        assert!(reqs
            .iter()
            .all(|r| r.user.is_none() && r.service == SERVICE));
        assert!(
            reqs.iter().any(|r| r.scope == "repository:ns/a:pull,push"),
            "{reqs:?}"
        );
    }

    // docker login credentials in $DOCKER_CONFIG/config.json: Basic to the token
    // service, the Bearer token to the registry; push and pull both work.
    docker_config(&t.join("docker"), &bearer, USER.0, USER.1);
    std::env::set_var("DOCKER_CONFIG", t.join("docker"));
    tokens.requests.lock().unwrap().clear();
    c.push(&bearer, "ns/a", b"weights a").unwrap();
    assert_eq!(c.pull(&bearer, "ns/a", "a").unwrap(), b"weights a");
    {
        let reqs = tokens.requests.lock().unwrap();
        assert!(!reqs.is_empty());
        assert!(
            reqs.iter().all(|r| r.user.as_deref() == Some(USER.0)),
            "{reqs:?}"
        );
    }

    // The same file found through $HOME/.docker/config.json.
    std::env::remove_var("DOCKER_CONFIG");
    std::env::set_var("HOME", t.join("home"));
    docker_config(&t.join("home/.docker"), &bearer, USER.0, USER.1);
    c.push(&bearer, "ns/b", b"weights b").unwrap();
    assert_eq!(c.pull(&bearer, "ns/b", "b").unwrap(), b"weights b");

    // A wrong password: the token service refuses, and the error names the URL.
    docker_config(&t.join("home/.docker"), &bearer, USER.0, "wrong");
    let err = c.push(&bearer, "ns/c", b"weights c").unwrap_err();
    assert!(
        err.contains("authentication failed") && err.contains("/token"),
        "wrong password: {err}"
    );

    // QUERN_REGISTRY_TOKEN holding a token the service issued: sent as the
    // Bearer token up front, without asking the token service again.
    let token = {
        let issued = tokens.issued.lock().unwrap();
        issued
            .iter()
            .find(|(_, g)| g.repo == "ns/b" && g.actions.iter().any(|a| a == "push"))
            .map(|(t, _)| t.clone())
            .expect("a push token for ns/b")
    };
    std::env::set_var("HOME", t.join("empty-home"));
    std::env::set_var("QUERN_REGISTRY_TOKEN", &token);
    let before = tokens.requests.lock().unwrap().len();
    c.push(&bearer, "ns/b", b"weights b2").unwrap();
    assert_eq!(
        tokens.requests.lock().unwrap().len(),
        before,
        "a static token needs no token service"
    );
    // That token is scoped to ns/b: another repository is refused.
    let err = c.push(&bearer, "ns/d", b"weights d").unwrap_err();
    assert!(err.contains("401"), "out-of-scope token: {err}");
    std::env::remove_var("QUERN_REGISTRY_TOKEN");

    // Basic challenges answered from the docker config; refused without it.
    let err = c.push(&basic, "ns/e", b"weights e").unwrap_err();
    assert!(err.contains("docker login"), "no credentials: {err}");
    docker_config(&t.join("basic-docker"), &basic, USER.0, USER.1);
    std::env::set_var("DOCKER_CONFIG", t.join("basic-docker"));
    c.push(&basic, "ns/e", b"weights e").unwrap();
    assert_eq!(c.pull(&basic, "ns/e", "e").unwrap(), b"weights e");
    docker_config(&t.join("basic-docker"), &basic, USER.0, "wrong");
    let err = c.pull(&basic, "ns/e", "e2").unwrap_err();
    assert!(err.contains("401"), "wrong Basic password: {err}");
}
