//! Round trip through the `quern` binary: quantize the reference model (a
//! Q4_K_M GGUF and an AWQ folder, with their provenance), keygen, push --key to
//! quern's registry and to Debian's docker-registry, pull --trust elsewhere;
//! files byte-identical; PyPI `model_signing verify key` accepts the pulled
//! folders; skopeo inspects and copies the artifacts; the provenance referrer
//! travels along and pull shows it.

use quern_registry::testing::{missing, DockerRegistry};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const QUERN: &str = env!("CARGO_BIN_EXE_quern");

/// `quern registry serve` on an ephemeral port, killed on drop.
struct Serve {
    child: Child,
    host: String,
}

impl Serve {
    fn start(root: &Path) -> Serve {
        let mut child = Command::new(QUERN)
            .args(["registry", "serve", "--addr", "127.0.0.1:0", "--root"])
            .arg(root)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn quern registry serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read listening line");
        let host = line
            .trim()
            .strip_prefix("listening on ")
            .expect("listening line")
            .to_string();
        Serve { child, host }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn quern(cache: &Path, args: &[&str]) -> Output {
    let out = Command::new(QUERN)
        .args(args)
        .env("QUERN_CACHE_DIR", cache)
        .env_remove("QUERN_REGISTRY_TOKEN")
        .output()
        .expect("run quern");
    out
}

fn ok(o: Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The model the round trip converts and quantises: the SmolLM2-135M reference
/// folder (`testdata/reference-model.sh`), else (skip notice, or failure under
/// QUERN_REQUIRE_EXTERNAL=1) a tiny generated Llama folder.
fn source_model(t: &Path) -> (PathBuf, usize) {
    let reference = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/reference/smollm2-135m");
    if reference.join("model.safetensors").is_file() {
        let n = std::fs::read_dir(&reference).unwrap().count();
        return (reference, n);
    }
    missing("the reference model .cache/reference/smollm2-135m (testdata/reference-model.sh)");
    let folder = t.join("tiny-llama");
    quern_formats::testutil::TinyModel {
        hidden: 128,
        intermediate: 256,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        ..quern_formats::testutil::TinyModel::llama()
    }
    .write(&folder)
    .unwrap();
    let n = std::fs::read_dir(&folder).unwrap().count();
    (folder, n)
}

fn model_signing(python: &Path) -> Option<PathBuf> {
    let bin = python.parent()?.join("model_signing");
    let ok = Command::new(python)
        .args(["-c", "import model_signing"])
        .output()
        .is_ok_and(|o| o.status.success());
    (ok && bin.exists()).then_some(bin)
}

fn python() -> PathBuf {
    std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"))
}

/// Every file under `dir`, relative, `/`-separated, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, d: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).unwrap();
                out.push(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// One artifact of the round trip.
struct Artifact {
    tag: &'static str,
    /// What is pushed: a GGUF file or a folder.
    path: PathBuf,
    /// The provenance statement `quantize` wrote.
    provenance: PathBuf,
    /// (file name, path) of every file a pull must reproduce.
    files: Vec<(String, PathBuf)>,
    /// A parameter the provenance must record, and its value.
    parameter: (&'static str, serde_json::Value),
}

fn model_signing_verify(ms: &Path, pubkey: &Path, dir: &Path) -> Output {
    Command::new(ms)
        .args(["verify", "key", "--public_key"])
        .arg(pubkey)
        .arg("--signature")
        .arg(dir.join("model.sig"))
        .arg(dir)
        .output()
        .unwrap()
}

#[test]
fn push_pull_verify_with_model_signing_and_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let key = t.join("key.pem");
    ok(quern(t, &["keygen", "-o", key.to_str().unwrap()]), "keygen");
    let pubkey = t.join("key.pem.pub");

    // Convert + quantise with quern: a Q4_K_M GGUF and an AWQ folder, each
    // with the provenance statement quantize records.
    let (source, source_files) = source_model(t);
    std::fs::create_dir_all(t.join("gguf")).unwrap();
    let gguf = t.join("gguf/smollm2-q4_k_m.gguf");
    let q = ok(
        quern(
            t,
            &[
                "quantize",
                source.to_str().unwrap(),
                "-o",
                gguf.to_str().unwrap(),
                "--type",
                "Q4_K_M",
                "--json",
            ],
        ),
        "quantize Q4_K_M",
    );
    let q: serde_json::Value = serde_json::from_str(&q).unwrap();
    let gguf_prov = PathBuf::from(q["provenance"].as_str().expect("provenance path"));
    let awq = t.join("smollm2-awq");
    let q = ok(
        quern(
            t,
            &[
                "quantize",
                source.to_str().unwrap(),
                "-o",
                awq.to_str().unwrap(),
                "--format",
                "awq",
                "--group-size",
                "64",
                "--json",
            ],
        ),
        "quantize AWQ",
    );
    let q: serde_json::Value = serde_json::from_str(&q).unwrap();
    let awq_prov = PathBuf::from(q["provenance"].as_str().expect("provenance path"));
    assert_eq!(awq_prov, awq.join("provenance.json"));
    let awq_files: Vec<(String, PathBuf)> = files_under(&awq)
        .into_iter()
        .map(|n| (n.clone(), awq.join(&n)))
        .collect();
    assert!(
        awq_files.iter().any(|(n, _)| n == "model.safetensors")
            && awq_files.iter().any(|(n, _)| n == "config.json")
            && awq_files.iter().any(|(n, _)| n == "tokenizer.json"),
        "{awq_files:?}"
    );
    let artifacts = [
        Artifact {
            tag: "q4_k_m",
            path: gguf.clone(),
            provenance: gguf_prov.clone(),
            files: vec![("smollm2-q4_k_m.gguf".into(), gguf.clone())],
            parameter: ("type", serde_json::json!("Q4_K_M")),
        },
        Artifact {
            tag: "awq",
            path: awq.clone(),
            provenance: awq_prov,
            files: awq_files,
            parameter: ("group_size", serde_json::json!(64)),
        },
    ];

    let ours = Serve::start(&t.join("root"));
    let docker = DockerRegistry::start().unwrap();
    if docker.is_none() {
        missing("docker-registry (apt-get install docker-registry)");
    }
    let ms = model_signing(&python());
    if ms.is_none() {
        missing("PyPI model-signing (pip install model-signing pyopenssl)");
    }
    let mut hosts = vec![ours.host.clone()];
    hosts.extend(docker.as_ref().map(|d| d.host.clone()));
    for (h, host) in hosts.iter().enumerate() {
        // Ours has the referrers API; docker-registry needs the tag schema fallback.
        let via = if h == 0 { "ReferrersApi" } else { "TagSchema" };
        for a in &artifacts {
            let r = format!("{host}/models/smollm2:{}", a.tag);
            let push = ok(
                quern(
                    &t.join("push-cache"),
                    &[
                        "push",
                        a.path.to_str().unwrap(),
                        &r,
                        "--key",
                        key.to_str().unwrap(),
                        "--json",
                        "-q",
                    ],
                ),
                "push",
            );
            let rep: serde_json::Value = serde_json::from_str(&push).unwrap();
            assert_eq!(rep["signature"][1], via, "{push}");
            assert_eq!(rep["provenance"][1], via, "{push}");
            let out = t.join(format!("pulled-{h}-{}", a.tag));
            let pull = ok(
                quern(
                    &t.join(format!("pull-cache-{h}")),
                    &[
                        "pull",
                        &r,
                        "-o",
                        out.to_str().unwrap(),
                        "--trust",
                        pubkey.to_str().unwrap(),
                        "--json",
                        "-q",
                    ],
                ),
                "pull",
            );
            let rep: serde_json::Value = serde_json::from_str(&pull).unwrap();
            for (name, original) in &a.files {
                assert_eq!(
                    std::fs::read(original).unwrap(),
                    std::fs::read(out.join(name)).unwrap(),
                    "{name} byte-identical from {host}"
                );
            }
            let mut expected: Vec<String> = a.files.iter().map(|(n, _)| n.clone()).collect();
            expected.push("model.sig".into());
            if a.path.is_file() {
                expected.push("smollm2-q4_k_m.gguf.provenance.json".into());
            }
            expected.sort();
            assert_eq!(files_under(&out), expected, "pulled files from {host}");
            assert_eq!(rep["signature_via"], via, "{pull}");

            // The provenance referrer: signed by our key, naming the pulled
            // files, recording the command, its parameters and every source file.
            let p = &rep["provenance"];
            assert_eq!(p["verified"], true, "{pull}");
            assert_eq!(p["covers_files"], true, "{pull}");
            assert_eq!(p["via"], via, "{pull}");
            assert_eq!(p["summary"]["command"], "quantize", "{pull}");
            let src = p["summary"]["source"].as_str().unwrap_or_default();
            assert!(
                src.contains(source.file_name().unwrap().to_str().unwrap()),
                "{pull}"
            );
            assert!(
                p["summary"]["dependencies"].as_u64().unwrap() >= source_files as u64,
                "every source file hashed: {pull}"
            );
            let statement = std::fs::read(&a.provenance).unwrap();
            let pulled_statement = if a.path.is_file() {
                std::fs::read(p["written_to"].as_str().unwrap()).unwrap()
            } else {
                std::fs::read(out.join("provenance.json")).unwrap()
            };
            assert_eq!(pulled_statement, statement, "provenance statement");
            let v: serde_json::Value = serde_json::from_slice(&statement).unwrap();
            let ext = &v["predicate"]["buildDefinition"]["externalParameters"];
            assert_eq!(ext["parameters"][a.parameter.0], a.parameter.1, "{ext}");
            let deps = v["predicate"]["buildDefinition"]["resolvedDependencies"]
                .as_array()
                .unwrap();
            for name in files_under(&source) {
                let (d, _) = quern_registry::Digest::of_file(&source.join(&name)).unwrap();
                assert!(
                    deps.iter()
                        .any(|x| x["name"] == name.as_str() && x["digest"]["sha256"] == d.hex()),
                    "source file {name} with its sha256 in the provenance"
                );
            }

            // PyPI model-signing accepts the pulled folder with our model.sig.
            if let Some(ms) = &ms {
                let v = model_signing_verify(ms, &pubkey, &out);
                assert!(
                    v.status.success(),
                    "model_signing verify of {} from {host}: {}{}",
                    a.tag,
                    String::from_utf8_lossy(&v.stdout),
                    String::from_utf8_lossy(&v.stderr)
                );
            }
        }

        // The human-readable pull shows the provenance too.
        let human = ok(
            quern(
                &t.join("pull-cache-h"),
                &[
                    "pull",
                    &format!("{host}/models/smollm2:q4_k_m"),
                    "-o",
                    t.join(format!("h{h}")).to_str().unwrap(),
                    "--trust",
                    pubkey.to_str().unwrap(),
                    "-q",
                ],
            ),
            "pull",
        );
        assert!(
            human.contains("provenance (signed, verified): quern")
                && human.contains("quantize")
                && human.contains("covers these files"),
            "{human}"
        );
    }

    // model_signing rejects a changed byte (in a copy: pulled files are links into the store).
    if let Some(ms) = &ms {
        let out = t.join("pulled-0-awq");
        let bad = t.join("tampered");
        std::fs::create_dir_all(&bad).unwrap();
        for n in files_under(&out) {
            let mut data = std::fs::read(out.join(&n)).unwrap();
            if n == "model.safetensors" {
                let mid = data.len() / 2;
                data[mid] ^= 1;
            }
            std::fs::write(bad.join(&n), data).unwrap();
        }
        let v = model_signing_verify(ms, &pubkey, &bad);
        assert!(
            !v.status.success(),
            "model_signing accepted a tampered file"
        );
    }

    // skopeo (Debian) inspects and copies both artifacts.
    if Command::new("skopeo").arg("--version").output().is_err() {
        missing("skopeo (apt-get install skopeo)");
        return;
    }
    let layout = t.join("oci-layout");
    for a in &artifacts {
        let src = format!("docker://{}/models/smollm2:{}", ours.host, a.tag);
        let raw = Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false", &src])
            .output()
            .unwrap();
        assert!(
            raw.status.success(),
            "skopeo inspect --raw: {}",
            String::from_utf8_lossy(&raw.stderr)
        );
        let m: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
        assert_eq!(m["artifactType"], quern_registry::media::MODEL_ARTIFACT);
        let cp = Command::new("skopeo")
            .args(["copy", "--src-tls-verify=false", &src])
            .arg(format!("oci:{}:{}", layout.display(), a.tag))
            .output()
            .unwrap();
        assert!(
            cp.status.success(),
            "skopeo copy: {}",
            String::from_utf8_lossy(&cp.stderr)
        );
        // Every layer arrived intact, under the digest of the file it names.
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), a.files.len());
        for l in layers {
            let name = l["annotations"]["org.cncf.model.filepath"]
                .as_str()
                .unwrap();
            let (_, original) = a.files.iter().find(|(n, _)| n == name).unwrap();
            let hex = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
            assert_eq!(
                std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap(),
                std::fs::read(original).unwrap(),
                "skopeo copied {name} intact"
            );
        }
    }
    if let Some(d) = &docker {
        let src = format!("docker://{}/models/smollm2:q4_k_m", ours.host);
        let dst = format!("docker://{}/copied/smollm2:q4_k_m", d.host);
        let cp = Command::new("skopeo")
            .args([
                "copy",
                "--src-tls-verify=false",
                "--dest-tls-verify=false",
                &src,
                &dst,
            ])
            .output()
            .unwrap();
        assert!(
            cp.status.success(),
            "skopeo copy to docker-registry: {}",
            String::from_utf8_lossy(&cp.stderr)
        );
        // The copy has no signature attached: pull refuses unless told otherwise.
        let r = format!("{}/copied/smollm2:q4_k_m", d.host);
        let refused = quern(
            &t.join("c1"),
            &[
                "pull",
                &r,
                "-o",
                t.join("c1out").to_str().unwrap(),
                "--trust",
                pubkey.to_str().unwrap(),
                "-q",
            ],
        );
        assert!(!refused.status.success());
        assert!(
            String::from_utf8_lossy(&refused.stderr).contains("no signature is attached"),
            "{}",
            String::from_utf8_lossy(&refused.stderr)
        );
        assert!(!t.join("c1out").exists());
        // With the opt-out it pulls, and says loudly that nothing was verified.
        let loud = quern(
            &t.join("c2"),
            &[
                "pull",
                &r,
                "-o",
                t.join("c2out").to_str().unwrap(),
                "--insecure-skip-signature",
                "-q",
            ],
        );
        let stderr = String::from_utf8_lossy(&loud.stderr);
        assert!(loud.status.success(), "{stderr}");
        assert!(
            stderr.contains("WARNING") && stderr.contains("NOT verified"),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read(t.join("c2out/smollm2-q4_k_m.gguf")).unwrap(),
            std::fs::read(&gguf).unwrap()
        );
        assert!(!t.join("c2out/model.sig").exists());
    }
}

#[test]
fn sign_command_interoperates_with_model_signing() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let model = t.join("model");
    std::fs::create_dir_all(model.join("sub")).unwrap();
    std::fs::write(model.join("config.json"), b"{}").unwrap();
    std::fs::write(model.join("sub/weights.bin"), vec![7u8; 10000]).unwrap();
    let key = t.join("k.pem");
    ok(
        quern(
            t,
            &["keygen", "-o", key.to_str().unwrap(), "--curve", "p384"],
        ),
        "keygen",
    );
    let pubkey = t.join("k.pem.pub");
    ok(
        quern(
            t,
            &[
                "sign",
                model.to_str().unwrap(),
                "--key",
                key.to_str().unwrap(),
            ],
        ),
        "sign",
    );
    ok(
        quern(
            t,
            &[
                "sign",
                model.to_str().unwrap(),
                "--verify",
                pubkey.to_str().unwrap(),
            ],
        ),
        "sign --verify",
    );
    let Some(ms) = model_signing(&python()) else {
        missing("PyPI model-signing (pip install model-signing pyopenssl)");
        return;
    };
    let v = Command::new(&ms)
        .args(["verify", "key", "--public_key"])
        .arg(&pubkey)
        .arg("--signature")
        .arg(model.join("model.sig"))
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "model_signing verify of quern's P-384 signature: {}",
        String::from_utf8_lossy(&v.stderr)
    );
    // The other way: model_signing signs with our key, quern verifies.
    let s = Command::new(&ms)
        .args(["sign", "key", "--private_key"])
        .arg(&key)
        .arg("--signature")
        .arg(model.join("model.sig"))
        .arg(&model)
        .output()
        .unwrap();
    assert!(
        s.status.success(),
        "model_signing sign: {}",
        String::from_utf8_lossy(&s.stderr)
    );
    ok(
        quern(
            t,
            &[
                "sign",
                model.to_str().unwrap(),
                "--verify",
                pubkey.to_str().unwrap(),
            ],
        ),
        "quern verifies model_signing's signature",
    );
    std::fs::write(model.join("sub/weights.bin"), vec![8u8; 10000]).unwrap();
    let bad = quern(
        t,
        &[
            "sign",
            model.to_str().unwrap(),
            "--verify",
            pubkey.to_str().unwrap(),
        ],
    );
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("hash mismatch for sub/weights.bin"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
