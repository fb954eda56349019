//! Push/pull through the library against our server (and docker-registry where
//! it matters): round trips, compression, resumption, and every way pull must
//! refuse (flipped byte, swapped manifest, forged/absent signature, wrong key),
//! writing nothing.

mod common;
use quern_registry::client::{pull, push, Compress, NoProgress, PullOptions, PushOptions};
use quern_registry::signing::keys::Curve;
use quern_registry::signing::SigningKey;
use quern_registry::store::Store;
use quern_registry::{Digest, Reference};
use std::path::{Path, PathBuf};

struct Env {
    dir: tempfile::TempDir,
    key: SigningKey,
}

impl Env {
    fn new() -> Env {
        Env {
            dir: tempfile::tempdir().unwrap(),
            key: SigningKey::generate(Curve::P256),
        }
    }
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
    /// A model folder: a weights file, a config, a tokenizer.
    fn model(&self, name: &str, weights: &[u8]) -> PathBuf {
        let d = self.path(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("model.safetensors"), weights).unwrap();
        std::fs::write(d.join("config.json"), br#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","torch_dtype":"bfloat16"}"#).unwrap();
        std::fs::write(d.join("tokenizer.json"), br#"{"model":{"type":"BPE"}}"#).unwrap();
        d
    }
    fn push(&self, path: &Path, reference: &str, sign: bool) -> quern_registry::client::PushReport {
        let mut o = PushOptions::new(path, Reference::parse(reference).unwrap());
        o.store = Store::new(self.path("push-cache"));
        if sign {
            o.key = Some(SigningKey::from_pem(&self.key.to_pem().unwrap()).unwrap());
        }
        push(&o, &NoProgress).unwrap()
    }
    fn pull_opts(&self, reference: &str, out: &str) -> PullOptions {
        let mut o = PullOptions::new(Reference::parse(reference).unwrap(), &self.path(out));
        o.store = Store::new(self.path(&format!("pull-cache-{out}")));
        o.trust = vec![self.key.verifying_key()];
        o
    }
}

fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn round_trip_signed_folder_our_server() {
    let t = common::ours();
    let e = Env::new();
    let model = e.model("m", &random_bytes(3 << 20, 1));
    let r = format!("{}/ns/model:v1", t.host);
    let rep = e.push(&model, &r, true);
    assert_eq!(rep.uploaded, 3);
    assert!(rep.signature.is_some());
    let got = pull(&e.pull_opts(&r, "out"), &NoProgress).unwrap();
    assert_eq!(got.files.len(), 3);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(model.join(f)).unwrap(),
            std::fs::read(e.path("out").join(f)).unwrap(),
            "{f}"
        );
    }
    // model.sig verifies the pulled folder with our verifier.
    quern_registry::signing::model_sig::verify_folder(
        &e.path("out"),
        &e.path("out/model.sig"),
        &[e.key.verifying_key()],
    )
    .unwrap();
    // A second push sends nothing; a push to another repository mounts.
    let again = e.push(&model, &r, true);
    assert_eq!((again.uploaded, again.existing), (0, 3));
    let other = e.push(&model, &format!("{}/ns/copy:v1", t.host), false);
    assert_eq!(other.mounted, 3, "cross-repository mounts");
    assert_eq!(other.bytes_sent, 0);
    // Pulling again by digest uses the local store only.
    let by_digest = format!("{}/ns/model@{}", t.host, got.manifest_digest);
    let mut o = e.pull_opts(&by_digest, "out2");
    o.store = Store::new(e.path("pull-cache-out"));
    let again = pull(&o, &NoProgress).unwrap();
    assert_eq!((again.bytes_downloaded, again.blobs_cached), (0, 3));
}

#[test]
fn zstd_layers_round_trip() {
    let t = common::ours();
    let e = Env::new();
    let weights: Vec<u8> = (0..4_000_000u32).map(|i| (i % 7) as u8).collect();
    let model = e.model("z", &weights);
    let r = format!("{}/ns/zstd:v1", t.host);
    let mut o = PushOptions::new(&model, Reference::parse(&r).unwrap());
    o.store = Store::new(e.path("zc"));
    o.compress = Compress::Auto;
    o.key = Some(SigningKey::from_pem(&e.key.to_pem().unwrap()).unwrap());
    let rep = push(&o, &NoProgress).unwrap();
    let w = rep
        .layers
        .iter()
        .find(|l| l.annotations["org.cncf.model.filepath"] == "model.safetensors")
        .unwrap();
    assert!(w.media_type.ends_with("+zstd"), "{}", w.media_type);
    assert!(w.size < weights.len() as u64 / 10);
    // The tiny JSON files do not shrink by 10%: stored raw.
    let c = rep
        .layers
        .iter()
        .find(|l| l.annotations["org.cncf.model.filepath"] == "config.json")
        .unwrap();
    assert!(!c.media_type.ends_with("+zstd"));
    pull(&e.pull_opts(&r, "out"), &NoProgress).unwrap();
    assert_eq!(
        std::fs::read(e.path("out/model.safetensors")).unwrap(),
        weights
    );

    // `zstd` compresses every file, worth it or not; pull restores each one.
    let r = format!("{}/ns/zstd:all", t.host);
    let mut o = PushOptions::new(&model, Reference::parse(&r).unwrap());
    o.store = Store::new(e.path("zc"));
    o.compress = Compress::Zstd;
    o.key = Some(SigningKey::from_pem(&e.key.to_pem().unwrap()).unwrap());
    let rep = push(&o, &NoProgress).unwrap();
    assert_eq!(rep.layers.len(), 3);
    for l in &rep.layers {
        assert!(l.media_type.ends_with("+zstd"), "{}", l.media_type);
    }
    let got = pull(&e.pull_opts(&r, "all"), &NoProgress).unwrap();
    assert_eq!(got.files.len(), 3);
    for f in ["model.safetensors", "config.json", "tokenizer.json"] {
        assert_eq!(
            std::fs::read(model.join(f)).unwrap(),
            std::fs::read(e.path("all").join(f)).unwrap(),
            "{f} after zstd"
        );
    }
    // The pulled folder's model.sig names the raw files, as model_signing expects.
    quern_registry::signing::model_sig::verify_folder(
        &e.path("all"),
        &e.path("all/model.sig"),
        &[e.key.verifying_key()],
    )
    .unwrap();
}

fn assert_nothing_written(e: &Env, out: &str) {
    let p = e.path(out);
    let entries: Vec<_> = std::fs::read_dir(&p)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        entries.is_empty(),
        "pull wrote {entries:?} into {}",
        p.display()
    );
}

#[test]
fn flipped_byte_in_stored_blob_is_refused() {
    let t = common::ours();
    let e = Env::new();
    let weights = random_bytes(1 << 20, 2);
    let model = e.model("m", &weights);
    let r = format!("{}/ns/flip:v1", t.host);
    e.push(&model, &r, true);
    let blob = t
        .root
        .join("blobs/sha256")
        .join(Digest::of_bytes(&weights).hex());
    let mut data = std::fs::read(&blob).unwrap();
    data[12345] ^= 0x40;
    std::fs::write(&blob, data).unwrap();
    let err = pull(&e.pull_opts(&r, "out"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    assert_nothing_written(&e, "out");
}

#[test]
fn swapped_manifest_is_refused() {
    let t = common::ours();
    let e = Env::new();
    let a = e.model("a", &random_bytes(100_000, 3));
    let b = e.model("b", &random_bytes(100_000, 4));
    let ra = format!("{}/ns/swap:good", t.host);
    let rb = format!("{}/ns/swap:evil", t.host);
    let good = e.push(&a, &ra, true);
    // The evil manifest is pushed unsigned, then the good tag is pointed at it.
    let evil = e.push(&b, &rb, false);
    let tag = t.root.join("repositories/ns/swap/_tags/good");
    std::fs::write(&tag, evil.manifest_digest.to_string()).unwrap();
    let err = pull(&e.pull_opts(&ra, "out"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no signature"), "{err}");
    assert_nothing_written(&e, "out");
    // By digest, a registry serving other bytes than asked for is caught too.
    std::fs::copy(
        t.root.join("blobs/sha256").join(evil.manifest_digest.hex()),
        t.root.join("blobs/sha256").join(good.manifest_digest.hex()),
    )
    .unwrap();
    let err = pull(
        &e.pull_opts(
            &format!("{}/ns/swap@{}", t.host, good.manifest_digest),
            "out",
        ),
        &NoProgress,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    assert_nothing_written(&e, "out");
}

#[test]
fn absent_forged_or_untrusted_signatures_are_refused() {
    let t = common::ours();
    let e = Env::new();
    let model = e.model("m", &random_bytes(200_000, 5));
    // Absent.
    let r = format!("{}/ns/unsigned:v1", t.host);
    e.push(&model, &r, false);
    let err = pull(&e.pull_opts(&r, "o1"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no signature is attached"), "{err}");
    assert_nothing_written(&e, "o1");
    // No --trust at all.
    let mut o = e.pull_opts(&r, "o1");
    o.trust.clear();
    assert!(pull(&o, &NoProgress)
        .unwrap_err()
        .to_string()
        .contains("no trusted key"));
    // ...unless explicitly skipped.
    let mut o = e.pull_opts(&r, "o1b");
    o.trust.clear();
    o.insecure_skip_signature = true;
    let rep = pull(&o, &NoProgress).unwrap();
    assert!(rep.signed_by.is_none() && !rep.warnings.is_empty());

    // Wrong key.
    let r = format!("{}/ns/signed:v1", t.host);
    e.push(&model, &r, true);
    let mut o = e.pull_opts(&r, "o2");
    o.trust = vec![SigningKey::generate(Curve::P256).verifying_key()];
    let err = pull(&o, &NoProgress).unwrap_err().to_string();
    assert!(err.contains("not trusted"), "{err}");
    assert_nothing_written(&e, "o2");

    // Forged: the bundle's statement altered (claims other file digests) without re-signing.
    let bundles: Vec<PathBuf> = std::fs::read_dir(t.root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|x| x.path())
        .filter(|p| {
            std::fs::read(p).is_ok_and(|b| {
                b.starts_with(b"{") && String::from_utf8_lossy(&b).contains("dsseEnvelope")
            })
        })
        .collect();
    assert_eq!(bundles.len(), 1);
    let mut b: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&bundles[0]).unwrap()).unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let payload = String::from_utf8(
        b64.decode(b["dsseEnvelope"]["payload"].as_str().unwrap())
            .unwrap(),
    )
    .unwrap();
    let forged = payload.replacen("\"name\": \"config.json\"", "\"name\": \"config.jsom\"", 1);
    assert_ne!(forged, payload);
    b["dsseEnvelope"]["payload"] = b64.encode(forged).into();
    // Keep the stored name so the registry still serves it (content no longer matches: caught by digest);
    std::fs::write(&bundles[0], serde_json::to_vec(&b).unwrap()).unwrap();
    let err = pull(&e.pull_opts(&r, "o3"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("signature check failed"), "{err}");
    assert_nothing_written(&e, "o3");
}

#[test]
fn forged_signature_with_valid_digest_is_refused() {
    // A forger who re-uploads the altered bundle under its true digest and
    // points a new referrer at it: the digest checks pass, the signature fails.
    let t = common::ours();
    let e = Env::new();
    let model = e.model("m", &random_bytes(50_000, 6));
    let r = format!("{}/ns/forged:v1", t.host);
    let rep = e.push(&model, &r, false);
    let evil = SigningKey::generate(Curve::P256);
    let scan = quern_registry::artifact::scan(&model).unwrap();
    let mut bundle = quern_registry::client::push::signature_bundle(&scan, &evil).unwrap();
    // Claim the trusted key's identity.
    bundle.verification_material.public_key.hint = e.key.verifying_key().hint();
    let reg = quern_registry::client::Registry::new(&t.host, "ns/forged", true);
    let subject = quern_registry::manifest::Descriptor::new(
        quern_registry::media::OCI_MANIFEST,
        rep.manifest_digest.clone(),
        0,
    );
    let _ = quern_registry::client::referrers::attach(
        &reg,
        &subject,
        quern_registry::media::SIGSTORE_BUNDLE,
        quern_registry::media::SIGSTORE_BUNDLE,
        &bundle.to_json(),
        Default::default(),
    )
    .unwrap();
    let err = pull(&e.pull_opts(&r, "o"), &NoProgress)
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not verify"), "{err}");
    assert_nothing_written(&e, "o");
}

#[test]
fn concurrent_pushes_share_layers_and_store_each_blob_once() {
    let t = common::ours();
    let e = Env::new();
    let shared = random_bytes(2 << 20, 7);
    let models: Vec<PathBuf> = (0..32)
        .map(|i| {
            let d = e.model(&format!("m{i}"), &shared);
            std::fs::write(d.join("README.md"), format!("model {i}")).unwrap();
            d
        })
        .collect();
    std::thread::scope(|s| {
        for (i, m) in models.iter().enumerate() {
            let host = t.host.clone();
            let e = &e;
            s.spawn(move || {
                let mut o = PushOptions::new(
                    m,
                    Reference::parse(&format!("{host}/ns/c{}:v1", i % 4)).unwrap(),
                );
                o.store = Store::new(e.path(&format!("cache{i}")));
                push(&o, &NoProgress).unwrap();
            });
        }
    });
    // Every stored blob hashes to its name; the shared weights are stored once.
    let blobs: Vec<PathBuf> = std::fs::read_dir(t.root.join("blobs/sha256"))
        .unwrap()
        .flatten()
        .map(|x| x.path())
        .collect();
    for b in &blobs {
        let name = b.file_name().unwrap().to_string_lossy().to_string();
        assert_eq!(
            Digest::of_file(b).unwrap().0.hex(),
            name,
            "corrupt blob {name}"
        );
    }
    let w = Digest::of_bytes(&shared);
    assert!(t.root.join("blobs/sha256").join(w.hex()).exists());
    // 1 weights + 1 config.json + 1 tokenizer + 32 READMEs + 32 model configs + 32 manifests.
    assert_eq!(blobs.len(), 3 + 32 + 32 + 32, "each blob exactly once");
    assert!(
        std::fs::read_dir(t.root.join("uploads"))
            .unwrap()
            .next()
            .is_none(),
        "no upload left behind"
    );
}

#[test]
fn invalid_names_and_tags_get_400_with_error_body() {
    let t = common::ours();
    let base = t.base();
    // HTTP clients normalise `..` away, so send that one by hand.
    for path in ["/v2/ns/../etc/tags/list", "/v2/../../x/blobs/uploads/"] {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(&t.host).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            t.host
        )
        .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
        assert!(resp.contains(r#""code":"NAME_INVALID""#), "{path}: {resp}");
    }
    let cases = [
        ("GET", format!("{base}/v2/Upper/tags/list"), "NAME_INVALID"),
        (
            "POST",
            format!("{base}/v2/a..b/blobs/uploads/"),
            "NAME_INVALID",
        ),
        (
            "PUT",
            format!("{base}/v2/ns/ok/manifests/{}", "t".repeat(129)),
            "MANIFEST_INVALID",
        ),
        (
            "PUT",
            format!("{base}/v2/ns/ok/manifests/-bad"),
            "MANIFEST_INVALID",
        ),
        (
            "GET",
            format!("{base}/v2/ns/ok/blobs/sha256:XYZ"),
            "DIGEST_INVALID",
        ),
        (
            "GET",
            format!("{base}/v2/{}/tags/list", "a".repeat(256)),
            "NAME_INVALID",
        ),
    ];
    for (m, url, code) in cases {
        let r = common::http(m, &url, &[], if m == "GET" { None } else { Some(b"{}") });
        assert_eq!(r.status, 400, "{m} {url}");
        assert_eq!(
            r.error_code(),
            code,
            "{m} {url}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["errors"][0]["message"].is_string());
    }
    // Nothing was created outside the storage root.
    assert!(!t.root.join("etc").exists() && !t.root.parent().unwrap().join("etc").exists());
}

#[test]
fn gc_removes_only_unreferenced_blobs() {
    let t = common::ours();
    let e = Env::new();
    let keep = e.model("keep", &random_bytes(100_000, 8));
    let drop_ = e.model("drop", &random_bytes(100_000, 9));
    e.push(&keep, &format!("{}/ns/keep:v1", t.host), true);
    let gone = e.push(&drop_, &format!("{}/ns/drop:v1", t.host), false);
    let r = common::http(
        "DELETE",
        &format!("{}/v2/ns/drop/manifests/{}", t.base(), gone.manifest_digest),
        &[],
        None,
    );
    assert_eq!(r.status, 202);
    let storage = quern_registry::server::Storage::open(&t.root).unwrap();
    let rep = quern_registry::server::gc::collect(&storage, false);
    // The dropped model's weights, its config blob and manifest go; shared JSON files stay.
    assert_eq!(rep.blobs_removed, 3, "{rep:?}");
    let w = Digest::of_file(&drop_.join("model.safetensors")).unwrap().0;
    assert!(!t.root.join("blobs/sha256").join(w.hex()).exists());
    let e2 = Env {
        dir: tempfile::tempdir().unwrap(),
        key: SigningKey::from_pem(&e.key.to_pem().unwrap()).unwrap(),
    };
    pull(
        &e2.pull_opts(&format!("{}/ns/keep:v1", t.host), "out"),
        &NoProgress,
    )
    .unwrap();
}

#[test]
fn round_trip_through_docker_registry_uses_tag_fallback() {
    let Some(t) = common::docker_registry() else {
        return;
    };
    let e = Env::new();
    let model = e.model("m", &random_bytes(1 << 20, 10));
    let r = format!("{}/ns/model:v1", t.host);
    let rep = e.push(&model, &r, true);
    assert_eq!(
        rep.signature.as_ref().map(|s| s.1),
        Some(quern_registry::client::referrers::Via::TagSchema)
    );
    let got = pull(&e.pull_opts(&r, "out"), &NoProgress).unwrap();
    assert_eq!(got.files.len(), 3);
    assert_eq!(
        std::fs::read(model.join("model.safetensors")).unwrap(),
        std::fs::read(e.path("out/model.safetensors")).unwrap()
    );
}

#[test]
fn large_files_hash_while_uploading_and_stop_when_the_blob_exists() {
    let t = common::ours();
    let e = Env::new();
    let big = random_bytes(
        (quern_registry::client::push::STREAM_MIN + (5 << 20)) as usize,
        11,
    );
    let model = e.model("big", &big);
    let r = format!("{}/ns/big:v1", t.host);
    let first = e.push(&model, &r, true);
    assert_eq!(first.uploaded, 3);
    assert!(first.bytes_sent > big.len() as u64, "{first:?}");
    // A fresh client (no digest cache) pushing the same file to another tag:
    // the upload stops once the hash shows the registry has the blob.
    let mut o = PushOptions::new(
        &model,
        Reference::parse(&format!("{}/ns/big:v2", t.host)).unwrap(),
    );
    o.store = Store::new(e.path("fresh-cache"));
    o.chunk_size = 256 << 10;
    let second = push(&o, &NoProgress).unwrap();
    assert_eq!(second.existing, 3, "{second:?}");
    assert_eq!(second.uploaded, 0);
    assert_eq!(second.manifest_digest.to_string().len(), 71);
    // The same client again: the digest cache makes it a pure existence check.
    let third = push(&o, &NoProgress).unwrap();
    assert_eq!((third.existing, third.bytes_sent), (3, 0));
    let got = pull(&e.pull_opts(&r, "out"), &NoProgress).unwrap();
    assert_eq!(got.files.len(), 3);
    assert_eq!(std::fs::read(e.path("out/model.safetensors")).unwrap(), big);
    // Nothing half-uploaded is left behind by the abandoned upload.
    assert!(std::fs::read_dir(t.root.join("uploads"))
        .unwrap()
        .next()
        .is_none());
}
