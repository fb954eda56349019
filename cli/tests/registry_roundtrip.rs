//! Round trip through the `quern` binary: keygen, push --key to quern's
//! registry and to Debian's docker-registry, pull --trust elsewhere; files
//! byte-identical; PyPI `model_signing verify key` accepts the pulled folder;
//! skopeo inspects and copies the artifact; provenance travels along.

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

/// The reference model quantised by another test step, else a small generated GGUF.
fn model_gguf(dir: &Path) -> PathBuf {
    let reference =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cache/reference/smollm2-q4_1.gguf");
    let dst = dir.join("smollm2-q4_1.gguf");
    if reference.exists() {
        std::fs::copy(&reference, &dst).expect("copy reference gguf");
        return dst;
    }
    eprintln!(
        "note: {} not built; using a generated GGUF",
        reference.display()
    );
    use quern_formats::gguf::{TensorSpec, Value, Writer};
    let meta = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("general.name".to_string(), Value::String("tiny".into())),
    ];
    let tensors = vec![TensorSpec::new(
        "w",
        vec![256, 64],
        quern_formats::GgmlType::F32,
    )];
    let f = std::fs::File::create(&dst).expect("create gguf");
    let mut w = Writer::new(std::io::BufWriter::new(f), &meta, &tensors).expect("gguf writer");
    let data: Vec<u8> = (0..256 * 64 * 4).map(|i| (i * 7 % 251) as u8).collect();
    w.write_tensor("w", &data).expect("tensor");
    w.finish().expect("finish");
    dst
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

#[test]
fn push_pull_verify_with_model_signing_and_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let key = t.join("key.pem");
    ok(quern(t, &["keygen", "-o", key.to_str().unwrap()]), "keygen");
    let pubkey = t.join("key.pem.pub");
    std::fs::create_dir_all(t.join("model")).unwrap();
    let gguf = model_gguf(&t.join("model"));
    // A provenance sidecar, as `quantize` writes it.
    quern_registry::provenance::ProvenanceBuilder::new("quantize")
        .argv(["quern", "quantize", "in.gguf", "out.gguf", "q4_1"])
        .parameter("type", "q4_1")
        .source("HuggingFaceTB/SmolLM2-135M-Instruct", Some("main"))
        .subject_file("smollm2-q4_1.gguf", &gguf)
        .unwrap()
        .write(&quern_registry::provenance::sidecar_path(&gguf))
        .unwrap();

    let ours = Serve::start(&t.join("root"));
    let docker = DockerRegistry::start().unwrap();
    if docker.is_none() {
        missing("docker-registry (apt-get install docker-registry)");
    }
    let mut hosts = vec![ours.host.clone()];
    hosts.extend(docker.as_ref().map(|d| d.host.clone()));
    for host in &hosts {
        let r = format!("{host}/models/smollm2:q4_1");
        let push = ok(
            quern(
                &t.join("push-cache"),
                &[
                    "push",
                    gguf.to_str().unwrap(),
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
        assert!(rep["signature"].is_array(), "{push}");
        assert!(rep["provenance"].is_array(), "{push}");
        let out = t.join(format!("pulled-{}", host.replace([':', '.'], "_")));
        let pull = ok(
            quern(
                &t.join(format!("pull-cache-{}", host.replace([':', '.'], "_"))),
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
        assert_eq!(
            std::fs::read(&gguf).unwrap(),
            std::fs::read(out.join("smollm2-q4_1.gguf")).unwrap(),
            "byte-identical from {host}"
        );
        assert!(out.join("model.sig").exists());
        assert_eq!(rep["provenance"]["verified"], true, "{pull}");
        assert_eq!(rep["provenance"]["covers_files"], true, "{pull}");
        assert_eq!(rep["provenance"]["summary"]["command"], "quantize");

        // The human-readable pull shows the provenance too.
        let human = ok(
            quern(
                &t.join("pull-cache-h"),
                &[
                    "pull",
                    &r,
                    "-o",
                    t.join("h").to_str().unwrap(),
                    "--trust",
                    pubkey.to_str().unwrap(),
                    "-q",
                ],
            ),
            "pull",
        );
        assert!(human.contains("provenance (signed, verified)"), "{human}");

        // PyPI model-signing accepts the pulled folder with our model.sig.
        let py = python();
        match model_signing(&py) {
            None => missing("PyPI model-signing (pip install model-signing pyopenssl)"),
            Some(ms) => {
                let v = Command::new(&ms)
                    .args(["verify", "key", "--public_key"])
                    .arg(&pubkey)
                    .arg("--signature")
                    .arg(out.join("model.sig"))
                    .arg(&out)
                    .output()
                    .unwrap();
                assert!(
                    v.status.success(),
                    "model_signing verify: {}{}",
                    String::from_utf8_lossy(&v.stdout),
                    String::from_utf8_lossy(&v.stderr)
                );
                // And rejects a changed byte (in a copy: pulled files are links into the store).
                let bad = t.join("tampered");
                std::fs::create_dir_all(&bad).unwrap();
                let mut data = std::fs::read(out.join("smollm2-q4_1.gguf")).unwrap();
                let mid = data.len() / 2;
                data[mid] ^= 1;
                std::fs::write(bad.join("smollm2-q4_1.gguf"), data).unwrap();
                std::fs::copy(out.join("model.sig"), bad.join("model.sig")).unwrap();
                let v = Command::new(&ms)
                    .args(["verify", "key", "--public_key"])
                    .arg(&pubkey)
                    .arg("--signature")
                    .arg(bad.join("model.sig"))
                    .arg(&bad)
                    .output()
                    .unwrap();
                assert!(
                    !v.status.success(),
                    "model_signing accepted a tampered file"
                );
                std::fs::remove_dir_all(&bad).unwrap();
            }
        }
    }

    // skopeo (Debian) inspects and copies the artifact.
    if Command::new("skopeo").arg("--version").output().is_err() {
        missing("skopeo (apt-get install skopeo)");
        return;
    }
    let src = format!("docker://{}/models/smollm2:q4_1", ours.host);
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
    let layout = t.join("oci-layout");
    let cp = Command::new("skopeo")
        .args(["copy", "--src-tls-verify=false", &src])
        .arg(format!("oci:{}:q4_1", layout.display()))
        .output()
        .unwrap();
    assert!(
        cp.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&cp.stderr)
    );
    let layer = m["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    assert_eq!(
        std::fs::read(layout.join("blobs/sha256").join(layer)).unwrap(),
        std::fs::read(&gguf).unwrap(),
        "skopeo copied the weights intact"
    );
    if let Some(d) = &docker {
        let dst = format!("docker://{}/copied/smollm2:q4_1", d.host);
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
        let r = format!("{}/copied/smollm2:q4_1", d.host);
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
