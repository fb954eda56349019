//! `quern verify` end to end on tiny generated models: a model against itself,
//! quantised artifacts against their reference (GGUF, AWQ and safetensors
//! folders), the exit codes of the thresholds, the JSON report against its
//! schema, and every bad input the issue lists.
//!
//! Until the runtime loads Hugging Face folders, the output comparison runs with
//! an F32 GGUF conversion of the reference folder as the reference; the weight
//! comparison runs against the folder itself.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quern_formats::testutil::TinyModel;
use serde_json::Value;

fn quern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(args)
        .output()
        .expect("run quern")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Hidden and intermediate sizes that AWQ's 128-column groups divide.
fn model() -> TinyModel {
    TinyModel {
        hidden: 128,
        intermediate: 256,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        ..TinyModel::llama()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    hf: PathBuf,
    f32: PathBuf,
}

impl Fixture {
    fn new(m: &TinyModel) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let hf = root.join("hf");
        m.write(&hf).unwrap();
        let f32 = root.join("ref-f32.gguf");
        let o = quern(&[
            "convert",
            s(&hf),
            "-o",
            s(&f32),
            "--outtype",
            "f32",
            "--quiet",
            "--no-provenance",
        ]);
        assert!(o.status.success(), "convert: {}", stderr(&o));
        Fixture {
            _dir: dir,
            root,
            hf,
            f32,
        }
    }

    fn quantize(&self, ty: &str) -> PathBuf {
        let out = self.root.join(format!("{ty}.gguf"));
        let o = quern(&[
            "quantize",
            s(&self.hf),
            "-o",
            s(&out),
            "--type",
            ty,
            "--quiet",
            "--no-provenance",
        ]);
        assert!(o.status.success(), "quantize {ty}: {}", stderr(&o));
        out
    }

    fn awq(&self) -> PathBuf {
        let out = self.root.join("awq");
        let o = quern(&[
            "quantize",
            s(&self.hf),
            "--format",
            "awq",
            "-o",
            s(&out),
            "--quiet",
            "--no-provenance",
        ]);
        assert!(o.status.success(), "quantize awq: {}", stderr(&o));
        out
    }

    /// Runs verify with `--json`; the exit code and the report.
    fn verify(&self, artifact: &Path, reference: &Path, extra: &[&str]) -> (i32, Value) {
        let json = self.root.join("report.json");
        let _ = std::fs::remove_file(&json);
        let mut args = vec![
            "verify",
            s(artifact),
            "--reference",
            s(reference),
            "--json",
            s(&json),
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = quern(&args);
        let code = o.status.code().unwrap_or(-1);
        assert!(
            code == 0 || code == 1,
            "verify failed ({code}): {}",
            stderr(&o)
        );
        let text = std::fs::read_to_string(&json).expect("report written");
        (code, serde_json::from_str(&text).expect("report is JSON"))
    }
}

/// Chunks the tiny models can run (their training context is 256).
const EVAL: [&str; 4] = ["--ctx", "64", "--chunks", "3"];

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn a_model_against_itself_is_exact() {
    let fx = Fixture::new(&model());
    let (code, r) = fx.verify(
        &fx.f32,
        &fx.f32,
        &[
            &EVAL[..],
            &["--max-kld", "0", "--min-top1", "1", "--max-ppl-ratio", "1"],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{r:#}");
    let o = &r["outputs"];
    assert_eq!(f(&o["kld"]["mean"]), 0.0);
    assert_eq!(f(&o["kld"]["max"]), 0.0);
    assert_eq!(f(&o["top1_agreement"]["value"]), 1.0);
    assert_eq!(f(&o["ppl_ratio"]), 1.0);
    assert_eq!(o["scored_tokens"], 3 * 31);
    assert_eq!(r["weights"]["rel_rms_error"], 0.0);
    assert!(r["weights"]["snr_db"].is_null(), "no error: infinite SNR");
    assert_eq!(r["passed"], true);
    assert_eq!(r["artifact"]["sha256"], r["reference"]["sha256"]);
}

#[test]
fn gguf_against_its_hf_folder_maps_names_and_unpermutes_qk() {
    let fx = Fixture::new(&model());
    // bf16 -> f32 is exact: every tensor, q/k included, must match to the bit.
    let (code, r) = fx.verify(&fx.f32, &fx.hf, &["--weights-only"]);
    assert_eq!(code, 0);
    let tensors = r["weights"]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), model().tensor_shapes().len());
    for t in tensors {
        assert_eq!(t["rel_rms_error"], 0.0, "{t}");
    }
    assert!(tensors.iter().any(|t| t["tensor"] == "blk.1.attn_q.weight"
        && t["reference_name"] == "model.layers.1.self_attn.q_proj.weight"));
    assert!(r["outputs"].is_null());
    assert_eq!(r["reference"]["format"], "safetensors");

    // Quantised: errors of the size the block formats give, and the q/k rows line up
    // (a wrong permutation would give relative errors near sqrt(2)).
    for (ty, max_rel) in [("Q8_0", 0.01), ("Q4_0", 0.2)] {
        let q = fx.quantize(ty);
        let (_, r) = fx.verify(&q, &fx.hf, &["--weights-only"]);
        for t in r["weights"]["tensors"].as_array().unwrap() {
            let rel = f(&t["rel_rms_error"]);
            assert!(rel < max_rel, "{ty}: {t}");
            assert!(f(&t["cosine"]) > 0.97, "{ty}: {t}");
        }
        let by_type = r["weights"]["by_type"].as_array().unwrap();
        assert!(by_type.iter().any(|t| t["type"] == ty), "{by_type:?}");
        assert!(
            by_type.iter().any(|t| t["type"] == "F32"),
            "norms stay F32: {by_type:?}"
        );
    }
}

#[test]
fn awq_and_safetensors_folders_as_artifacts() {
    let fx = Fixture::new(&model());
    let awq = fx.awq();
    let (code, r) = fx.verify(&awq, &fx.hf, &["--weights-only"]);
    assert_eq!(code, 0);
    assert_eq!(r["artifact"]["format"], "awq");
    let tensors = r["weights"]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), model().tensor_shapes().len());
    for t in tensors {
        let rel = f(&t["rel_rms_error"]);
        if t["artifact_type"] == "AWQ4_G128" {
            assert!(rel > 0.0 && rel < 0.2, "{t}");
        } else {
            // Embeddings and norms are stored as F16: bf16 values of this size fit it.
            assert!(rel < 1e-6, "unquantised tensors: {t}");
        }
    }
    assert!(
        tensors
            .iter()
            .filter(|t| t["artifact_type"] == "AWQ4_G128")
            .count()
            == 2 * 7
    );

    let (code, r) = fx.verify(&fx.hf, &fx.hf, &["--weights-only"]);
    assert_eq!(code, 0);
    assert_eq!(r["weights"]["rel_rms_error"], 0.0);
    assert_eq!(r["artifact"]["format"], "safetensors");
}

#[test]
fn thresholds_set_the_exit_code() {
    let fx = Fixture::new(&model());
    let q4 = fx.quantize("Q4_0");
    let (code, r) = fx.verify(&q4, &fx.f32, &EVAL);
    assert_eq!(code, 0, "no thresholds, no failure");
    let o = &r["outputs"];
    let kld = f(&o["kld"]["mean"]);
    let top1 = f(&o["top1_agreement"]["value"]);
    let ratio = f(&o["ppl_ratio"]);
    assert!(kld > 0.0 && top1 < 1.0, "{o:#}");

    let pass = [
        format!("{}", kld * 1.01),
        format!("{}", top1 * 0.99),
        format!("{}", ratio * 1.01),
    ];
    let (code, r) = fx.verify(
        &q4,
        &fx.f32,
        &[
            &EVAL[..],
            &[
                "--max-kld",
                &pass[0],
                "--min-top1",
                &pass[1],
                "--max-ppl-ratio",
                &pass[2],
            ],
        ]
        .concat(),
    );
    assert_eq!(code, 0, "{:#}", r["violations"]);
    assert_eq!(r["passed"], true);

    for (flag, value, name) in [
        ("--max-kld", format!("{}", kld * 0.99), "max_kld"),
        (
            "--min-top1",
            format!("{}", (top1 * 1.01).min(1.0)),
            "min_top1",
        ),
        (
            "--max-ppl-ratio",
            format!("{}", ratio.min(1.0) * 0.99),
            "max_ppl_ratio",
        ),
    ] {
        let (code, r) = fx.verify(&q4, &fx.f32, &[&EVAL[..], &[flag, &value]].concat());
        assert_eq!(code, 1, "{flag} {value}");
        assert_eq!(r["passed"], false);
        assert_eq!(r["violations"][0]["threshold"], name);
    }
}

#[test]
fn human_table_and_json_on_stdout() {
    let fx = Fixture::new(&model());
    let q8 = fx.quantize("Q8_0");
    let o = quern(&[
        "verify",
        s(&q8),
        "-r",
        s(&fx.f32),
        "--quiet",
        "--ctx",
        "64",
        "--chunks",
        "1",
        "--max-kld",
        "100",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "weights:",
        "Q8_0",
        "worst tensors:",
        "PPL reference",
        "KLD mean",
        "top-1 agreement",
        "PASS",
    ] {
        assert!(out.contains(needle), "{needle:?} missing from:\n{out}");
    }
    let o = quern(&[
        "verify",
        s(&q8),
        "-r",
        s(&fx.f32),
        "--quiet",
        "--ctx",
        "64",
        "--chunks",
        "1",
        "--json",
        "-",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).expect("stdout is the JSON report alone");
    assert_eq!(v["schema"], "quern-verify-report/1");
}

/// The test interpreter, or None (skip) unless QUERN_REQUIRE_PYTHON=1.
fn python(modules: &str) -> Option<PathBuf> {
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let ok = Command::new(&py)
        .args(["-c", &format!("import {modules}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    assert!(
        !std::env::var("QUERN_REQUIRE_PYTHON").is_ok_and(|v| v == "1"),
        "QUERN_REQUIRE_PYTHON=1 but {} cannot import {modules}",
        py.display()
    );
    eprintln!(
        "notice: skipping the jsonschema check: {} cannot import {modules}",
        py.display()
    );
    None
}

#[test]
fn reports_validate_against_the_schema() {
    let fx = Fixture::new(&model());
    let q4 = fx.quantize("Q4_0");
    let schema =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../runtime/src/verify/report.schema.json");
    let mut reports = Vec::new();
    for (name, art, reference, extra) in [
        ("outputs", &q4, &fx.f32, &EVAL[..]),
        ("weights-only", &q4, &fx.hf, &["--weights-only"][..]),
        (
            "failed",
            &q4,
            &fx.f32,
            &[&EVAL[..], &["--max-kld", "0"]].concat()[..],
        ),
    ] {
        let (_, r) = fx.verify(art, reference, extra);
        let p = fx.root.join(format!("{name}.json"));
        std::fs::write(&p, serde_json::to_string(&r).unwrap()).unwrap();
        reports.push(p);
    }
    // A check that does not need Python: the schema's top-level required keys.
    let sch: Value = serde_json::from_str(&std::fs::read_to_string(&schema).unwrap()).unwrap();
    for p in &reports {
        let r: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        for k in sch["required"].as_array().unwrap() {
            assert!(
                r.get(k.as_str().unwrap()).is_some(),
                "{}: {k} missing",
                p.display()
            );
        }
    }
    let Some(py) = python("jsonschema") else {
        return;
    };
    let script = "import json, sys, jsonschema\n\
        schema = json.load(open(sys.argv[1]))\n\
        jsonschema.Draft202012Validator.check_schema(schema)\n\
        v = jsonschema.Draft202012Validator(schema)\n\
        for p in sys.argv[2:]:\n    v.validate(json.load(open(p)))\n\
        bad = json.load(open(sys.argv[2])); bad['weights']['snr_db'] = 'high'\n\
        assert not v.is_valid(bad), 'the schema must reject a string SNR'\n";
    let o = Command::new(py)
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .args(&reports)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "jsonschema: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// An error: exit 2, one line naming `needle`, no panic, no report written.
fn assert_error(fx: &Fixture, args: &[&str], needle: &str) {
    let json = fx.root.join("error.json");
    let mut all = vec!["verify"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--json", s(&json), "--quiet"]);
    let o = quern(&all);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {needle:?} not in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!json.exists(), "no report after an error");
}

#[test]
fn bad_input() {
    let fx = Fixture::new(&model());
    let (art, hf, f32) = (fx.f32.clone(), fx.hf.clone(), fx.f32.clone());

    // A different architecture.
    let qwen = fx.root.join("qwen");
    TinyModel {
        architecture: "Qwen2ForCausalLM",
        ..model()
    }
    .write(&qwen)
    .unwrap();
    assert_error(&fx, &[s(&art), "-r", s(&qwen)], "architecture mismatch");

    // A different shape: the first mismatching tensor in the reference's order
    // (safetensors headers list names sorted) is named, with both shapes.
    let wide = fx.root.join("wide");
    TinyModel {
        intermediate: 384,
        ..model()
    }
    .write(&wide)
    .unwrap();
    assert_error(
        &fx,
        &[s(&art), "-r", s(&wide)],
        "shape mismatch at blk.0.ffn_down.weight: the reference's \
         model.layers.0.mlp.down_proj.weight is [128, 384], the artifact's \
         blk.0.ffn_down.weight is [128, 256]",
    );

    // More layers in the reference: the artifact lacks a tensor.
    let deep = fx.root.join("deep");
    TinyModel {
        layers: 3,
        ..model()
    }
    .write(&deep)
    .unwrap();
    assert_error(&fx, &[s(&art), "-r", s(&deep)], "lacks blk.2.");

    // A text too short for one chunk.
    let short = fx.root.join("short.txt");
    std::fs::write(&short, "Too short.").unwrap();
    assert_error(
        &fx,
        &[s(&art), "-r", s(&f32), "--text", s(&short), "--ctx", "64"],
        "fewer than one chunk",
    );

    // Thresholds that make no sense.
    assert_error(
        &fx,
        &[s(&art), "-r", s(&f32), "--max-kld", "-0.5"],
        "--max-kld -0.5",
    );
    assert_error(
        &fx,
        &[s(&art), "-r", s(&f32), "--min-top1", "1.5"],
        "--min-top1 1.5",
    );
    assert_error(
        &fx,
        &[s(&art), "-r", s(&f32), "--max-ppl-ratio", "-1"],
        "--max-ppl-ratio -1",
    );
    assert_error(
        &fx,
        &[s(&art), "-r", s(&hf), "--weights-only", "--max-kld", "1"],
        "--weights-only",
    );

    // A reference folder without weights.
    let empty = fx.root.join("no-weights");
    std::fs::create_dir(&empty).unwrap();
    std::fs::copy(hf.join("config.json"), empty.join("config.json")).unwrap();
    std::fs::copy(hf.join("tokenizer.json"), empty.join("tokenizer.json")).unwrap();
    assert_error(&fx, &[s(&art), "-r", s(&empty)], "has no weights");

    // Not a model at all.
    assert_error(&fx, &[s(&short), "-r", s(&hf)], "not a GGUF file");
    assert_error(
        &fx,
        &[s(&fx.root.join("missing.gguf")), "-r", s(&hf)],
        "missing.gguf",
    );
}

/// `--reference-cache`: the second run reads the reference's logits from the
/// cache (identical figures), a doctored entry is what it reads (so the
/// reference really did not run), and another text or reference misses.
#[test]
fn reference_cache_is_reused_and_keyed() {
    let fx = Fixture::new(&model());
    let q8 = fx.quantize("Q8_0");
    let cache = fx.root.join("ref-cache");
    let args = [&EVAL[..], &["--reference-cache", s(&cache)]].concat();
    let (_, first) = fx.verify(&q8, &fx.f32, &args);
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(entries.len(), 3, "one entry per chunk");
    let (_, second) = fx.verify(&q8, &fx.f32, &args);
    assert_eq!(first["outputs"], second["outputs"]);

    // Zeroed reference logits give a uniform reference: another KLD.
    for e in &entries {
        let len = std::fs::metadata(e).unwrap().len() as usize;
        std::fs::write(e, vec![0u8; len]).unwrap();
    }
    let (_, doctored) = fx.verify(&q8, &fx.f32, &args);
    assert_ne!(
        f(&doctored["outputs"]["kld"]["mean"]),
        f(&first["outputs"]["kld"]["mean"])
    );
    // A truncated entry is not trusted: recomputed, and the figures are back.
    for e in &entries {
        std::fs::write(e, b"short").unwrap();
    }
    let (_, redone) = fx.verify(&q8, &fx.f32, &args);
    assert_eq!(first["outputs"], redone["outputs"]);

    // Another context (so other chunks) or another reference: new entries.
    let other = [
        &["--ctx", "32", "--chunks", "2"][..],
        &["--reference-cache", s(&cache)],
    ]
    .concat();
    fx.verify(&q8, &fx.f32, &other);
    fx.verify(&q8, &fx.hf, &args);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3 + 2 + 3);
    // Another activation code width: a quantised reference's logits change.
    fx.verify(&q8, &fx.f32, &[&args[..], &["--act-bits", "16"]].concat());
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 3 + 2 + 3 + 3);
}

/// `--act-bits`: the setting reaches the report, 16-bit activation codes bring a
/// 4-bit artifact closer to its float reference (only the weights' rounding is
/// left), and any other width is refused before anything runs.
#[test]
fn act_bits_reach_the_report_and_the_products() {
    let fx = Fixture::new(&model());
    let q = fx.quantize("Q4_0");
    let mut kld = Vec::new();
    for bits in ["8", "16"] {
        let (code, r) = fx.verify(&q, &fx.f32, &[&EVAL[..], &["--act-bits", bits]].concat());
        assert_eq!(code, 0, "{r:#}");
        assert_eq!(r["settings"]["act_bits"].to_string(), bits);
        kld.push(f(&r["outputs"]["kld"]["mean"]));
    }
    eprintln!(
        "Q4_0 against F32: KLD {} at 8 bits, {} at 16",
        kld[0], kld[1]
    );
    assert!(kld[1] > 0.0 && kld[1] < kld[0], "{kld:?}");
    let o = quern(&[
        "verify",
        s(&q),
        "--reference",
        s(&fx.f32),
        "--act-bits",
        "12",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("8 or 16"), "{}", stderr(&o));
}
