//! Interruptions: kill -9 of the client mid-push and mid-pull, kill -9 of the
//! server mid-upload. A slow loopback proxy makes "mid-transfer" predictable.
//! After each, a rerun completes by resuming, and nothing partial or corrupt
//! ever carries a final name.

use quern_registry::client::{pull, push, NoProgress, PullOptions, PushOptions};
use quern_registry::server::{Server, ServerConfig};
use quern_registry::signing::keys::Curve;
use quern_registry::signing::SigningKey;
use quern_registry::store::Store;
use quern_registry::testing::{free_port, wait_ready, SlowProxy};
use quern_registry::{Digest, Reference};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const QUERN: &str = env!("CARGO_BIN_EXE_quern");
const SIZE: usize = 16 << 20;
const SLOW: u64 = 2 << 20;
const FAST: u64 = 1 << 34;

fn random_file(path: &Path, size: usize) -> Digest {
    let mut x: u64 = 0x9E3779B97F4A7C15;
    let data: Vec<u8> = (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, &data).unwrap();
    Digest::of_bytes(&data)
}

/// Bytes held by uploads in progress under a registry root.
fn upload_bytes(root: &Path) -> u64 {
    std::fs::read_dir(root.join("uploads"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::metadata(e.path().join("data")).ok())
        .map(|m| m.len())
        .sum()
}

/// Wait (bounded) until `f` says enough has been transferred.
fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every blob in a registry root hashes to its name.
fn assert_store_sound(root: &Path) {
    for e in std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        assert_eq!(
            Digest::of_file(&e.path()).unwrap().0.hex(),
            name,
            "corrupt blob under its final name"
        );
    }
}

fn kill9(mut c: Child) {
    // Child::kill is SIGKILL on Unix.
    c.kill().unwrap();
    let _ = c.wait();
}

fn quern_cmd(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(QUERN);
    c.args(args)
        .env("QUERN_CACHE_DIR", cache)
        .env_remove("QUERN_REGISTRY_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn json_of(c: &mut Command) -> serde_json::Value {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn client_killed_mid_push_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let srv = Server::start(ServerConfig::new(&root, "127.0.0.1:0")).unwrap();
    let proxy = SlowProxy::start(&srv.addr().to_string(), SLOW).unwrap();
    // Above STREAM_MIN: hashed while it uploads, resumed by file identity.
    let big = 40 << 20;
    let file = t.join("m/w.gguf");
    let d = random_file(&file, big);
    let r = format!("{}/ns/killpush:v1", proxy.addr);
    let args = [
        "push",
        file.to_str().unwrap(),
        &r,
        "--chunk-mib",
        "1",
        "-q",
        "--json",
    ];
    let child = quern_cmd(&t.join("cache"), &args).spawn().unwrap();
    wait_until("3 MiB uploaded", || upload_bytes(&root) >= 3 << 20);
    kill9(child);
    assert!(
        !root.join("blobs/sha256").join(d.hex()).exists(),
        "blob published before the upload finished"
    );
    assert_store_sound(&root);

    proxy.set_rate(FAST);
    let rep = json_of(&mut quern_cmd(&t.join("cache"), &args));
    let sent = rep["bytes_sent"].as_u64().unwrap();
    assert!(
        sent > 0 && sent < big as u64 - (2 << 20),
        "resumed: sent {sent} of {big}"
    );
    assert_eq!(
        Digest::of_file(&root.join("blobs/sha256").join(d.hex()))
            .unwrap()
            .0,
        d
    );
    assert_store_sound(&root);
}

#[test]
fn client_killed_mid_pull_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let srv = Server::start(ServerConfig::new(&root, "127.0.0.1:0")).unwrap();
    let file = t.join("m/w.gguf");
    let d = random_file(&file, SIZE);
    let key = SigningKey::generate(Curve::P256);
    let pubkey = t.join("k.pub");
    std::fs::write(&pubkey, key.verifying_key().to_pem().unwrap()).unwrap();
    let mut o = PushOptions::new(
        &file,
        Reference::parse(&format!("{}/ns/killpull:v1", srv.addr())).unwrap(),
    );
    o.store = Store::new(t.join("push-cache"));
    o.key = Some(key);
    push(&o, &NoProgress).unwrap();

    let proxy = SlowProxy::start(&srv.addr().to_string(), SLOW).unwrap();
    let cache = t.join("cache");
    let out = t.join("out");
    let r = format!("{}/ns/killpull:v1", proxy.addr);
    let args = [
        "pull",
        &r,
        "-o",
        out.to_str().unwrap(),
        "--trust",
        pubkey.to_str().unwrap(),
        "-q",
        "--json",
    ];
    let child = quern_cmd(&cache, &args).spawn().unwrap();
    let partial = cache
        .join("blobs/sha256")
        .join(format!("{}.partial", d.hex()));
    wait_until("3 MiB downloaded", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() >= 3 << 20)
    });
    kill9(child);
    assert!(
        !out.join("w.gguf").exists(),
        "partial file under its final name"
    );
    assert!(
        !cache.join("blobs/sha256").join(d.hex()).exists(),
        "unverified blob under its digest"
    );

    proxy.set_rate(FAST);
    let rep = json_of(&mut quern_cmd(&cache, &args));
    let got = rep["bytes_downloaded"].as_u64().unwrap();
    assert!(
        got < SIZE as u64 - (2 << 20),
        "resumed with a Range request: fetched {got} of {SIZE}"
    );
    assert_eq!(
        std::fs::read(out.join("w.gguf")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    assert!(!partial.exists());
}

/// `quern registry serve` on a fixed port, as a process to kill.
fn serve(root: &Path, port: u16) -> Child {
    let c = Command::new(QUERN)
        .args([
            "registry",
            "serve",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "--root",
        ])
        .arg(root)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_ready(&format!("127.0.0.1:{port}")),
        "server did not start"
    );
    c
}

#[test]
fn server_killed_mid_upload_serves_nothing_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let root = t.join("root");
    let port = free_port().unwrap();
    let server = serve(&root, port);
    let proxy = SlowProxy::start(&format!("127.0.0.1:{port}"), SLOW).unwrap();
    let file = t.join("m/w.gguf");
    let d = random_file(&file, SIZE);
    let key_pem = SigningKey::generate(Curve::P256).to_pem().unwrap();
    let opts = |cache: &PathBuf| {
        let mut o = PushOptions::new(
            &file,
            Reference::parse(&format!("{}/ns/killserver:v1", proxy.addr)).unwrap(),
        );
        o.store = Store::new(cache);
        o.chunk_size = 1 << 20;
        o.key = SigningKey::from_pem(&key_pem);
        o
    };
    let cache = t.join("cache");
    let first = std::thread::scope(|s| {
        let h = s.spawn(|| push(&opts(&cache), &NoProgress));
        wait_until("3 MiB uploaded", || upload_bytes(&root) >= 3 << 20);
        kill9(server);
        h.join().unwrap()
    });
    assert!(first.is_err(), "push should fail when the server dies");
    assert!(!root.join("blobs/sha256").join(d.hex()).exists());
    assert_store_sound(&root);

    let server = serve(&root, port);
    let reg =
        quern_registry::client::Registry::new(&format!("127.0.0.1:{port}"), "ns/killserver", true);
    assert_eq!(
        reg.blob_exists(&d).unwrap(),
        None,
        "unfinished blob must not be served"
    );
    proxy.set_rate(FAST);
    let rep = push(&opts(&cache), &NoProgress).unwrap();
    assert!(
        rep.bytes_sent < SIZE as u64 - (2 << 20),
        "resumed the upload the server kept: sent {}",
        rep.bytes_sent
    );
    assert_store_sound(&root);
    let mut p = PullOptions::new(
        Reference::parse(&format!("127.0.0.1:{port}/ns/killserver:v1")).unwrap(),
        &t.join("out"),
    );
    p.store = Store::new(t.join("pull-cache"));
    p.trust = vec![SigningKey::from_pem(&key_pem).unwrap().verifying_key()];
    pull(&p, &NoProgress).unwrap();
    assert_eq!(
        std::fs::read(t.join("out/w.gguf")).unwrap(),
        std::fs::read(&file).unwrap()
    );
    kill9(server);
}
