//! Token auth on quern's server and the client's credential sources. One test
//! in its own binary, since it sets process-wide environment variables.

mod common;
use quern_registry::client::{push, NoProgress, PushOptions};
use quern_registry::store::Store;
use quern_registry::Reference;

#[test]
fn writes_need_the_token_from_env_or_docker_config() {
    let t = common::ours_with(Some("s3cret"));
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("w.gguf");
    std::fs::write(&model, b"weights").unwrap();
    let reference = Reference::parse(&format!("{}/ns/auth:v1", t.host)).unwrap();
    let attempt = || {
        let mut o = PushOptions::new(&model, reference.clone());
        o.store = Store::new(dir.path().join("cache"));
        push(&o, &NoProgress)
    };
    std::env::remove_var("QUERN_REGISTRY_TOKEN");
    std::env::set_var("DOCKER_CONFIG", dir.path().join("no-docker"));

    // Anonymous: reads are open, writes get 401 with the spec's error body and a challenge.
    assert_eq!(
        common::http("GET", &format!("{}/v2/", t.base()), &[], None).status,
        200
    );
    let r = common::http(
        "POST",
        &format!("{}/v2/ns/auth/blobs/uploads/", t.base()),
        &[],
        Some(b""),
    );
    assert_eq!((r.status, r.error_code().as_str()), (401, "UNAUTHORIZED"));
    assert!(r
        .header("WWW-Authenticate")
        .is_some_and(|h| h.starts_with("Basic ")));
    let err = attempt().unwrap_err().to_string();
    assert!(err.contains("QUERN_REGISTRY_TOKEN"), "{err}");

    // A wrong token is refused.
    std::env::set_var("QUERN_REGISTRY_TOKEN", "wrong");
    let err = attempt().unwrap_err().to_string();
    assert!(err.contains("401") || err.contains("rejected"), "{err}");

    // The right token, as a Bearer token from the environment.
    std::env::set_var("QUERN_REGISTRY_TOKEN", "s3cret");
    attempt().unwrap();

    // The right token as the password of `docker login` credentials.
    std::env::remove_var("QUERN_REGISTRY_TOKEN");
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    std::fs::write(
        docker.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, t.host),
    )
    .unwrap();
    std::env::set_var("DOCKER_CONFIG", &docker);
    std::fs::write(&model, b"other weights").unwrap();
    attempt().unwrap();
}
