//! Helpers shared by the runtime's integration tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The interpreter (`QUERN_PYTHON`, default `<root>/.venv/bin/python`) if it imports
/// `modules`; otherwise a notice and `None`, or a panic under `QUERN_REQUIRE_PYTHON=1`.
pub fn python(modules: &[&str]) -> Option<PathBuf> {
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let require = std::env::var("QUERN_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let import = format!("import {}", modules.join(", "));
    let ok = Command::new(&py)
        .args(["-c", &import])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let msg = format!("{} cannot `{import}`", py.display());
    assert!(!require, "QUERN_REQUIRE_PYTHON=1 but {msg}");
    eprintln!("notice: skipping Python cross-check: {msg}");
    None
}

/// The reference model folder, or a notice and `None` when it has not been built.
pub fn reference_folder() -> Option<PathBuf> {
    let p = workspace_root().join(".cache/reference/smollm2-135m");
    if p.join("config.json").is_file() {
        return Some(p);
    }
    let require = std::env::var("QUERN_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    assert!(
        !require,
        "QUERN_REQUIRE_PYTHON=1 but the reference model {} is missing",
        p.display()
    );
    eprintln!(
        "notice: skipping: reference model {} not built",
        p.display()
    );
    None
}

pub fn run_llama_ref(py: &Path, args: &[&str]) {
    run_script(py, "llama_ref.py", args)
}

/// Runs `tests/scripts/NAME` with `args`; panics with its stderr on failure.
pub fn run_script(py: &Path, name: &str, args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scripts")
        .join(name);
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{name} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn write_u32(path: &Path, v: &[u32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("write u32 file");
}

pub fn read_u32(path: &Path) -> Vec<u32> {
    std::fs::read(path)
        .expect("read u32 file")
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    std::fs::read(path)
        .expect("read f32 file")
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn read_f64(path: &Path) -> Vec<f64> {
    std::fs::read(path)
        .expect("read f64 file")
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect()
}

/// `ln softmax(logits)` in float64.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    logits.iter().map(|&v| v as f64 - lse).collect()
}

/// KL(p || q) of two distributions given as log-probabilities.
pub fn kl(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&a, &b)| a.exp() * (a - b))
        .sum()
}

/// The first `n` tokens of WikiText-2's test text (after its heading), tokenised
/// by `model`'s tokenizer.
pub fn wiki_tokens(model: &quern_runtime::Model, n: usize) -> Option<Vec<u32>> {
    let p = workspace_root().join("../shared/data/wikitext-2-raw/wiki.test.raw");
    let Ok(text) = std::fs::read_to_string(&p) else {
        let require = std::env::var("QUERN_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
        assert!(
            !require,
            "QUERN_REQUIRE_PYTHON=1 but {} is missing",
            p.display()
        );
        eprintln!("notice: skipping: {} is missing", p.display());
        return None;
    };
    let text: String = text.chars().take(n * 8).collect();
    let ids = model
        .tokenizer()
        .expect("tokenizer")
        .encode(&text, false)
        .expect("encode");
    assert!(ids.len() >= n, "{} tokens of text, wanted {n}", ids.len());
    Some(ids[..n].to_vec())
}

/// The first GPU's backend with outputs poisoned before each product, or a
/// notice and `None` without one (a panic under `QUERN_REQUIRE_CUDA=1`).
pub fn cuda_backend() -> Option<quern_runtime::cuda::CudaBackend> {
    match quern_runtime::cuda::CudaBackend::new(0) {
        Ok(b) => {
            b.set_poison(true);
            Some(b)
        }
        Err(e) => {
            if std::env::var("QUERN_REQUIRE_CUDA").as_deref() == Ok("1") {
                panic!("QUERN_REQUIRE_CUDA=1 but the CUDA backend cannot start: {e}");
            }
            eprintln!("skipped: {e}");
            None
        }
    }
}

/// `m` written as a Hugging Face folder under `dir/hf` and converted to
/// `dir/model.gguf` in `outtype`.
pub fn tiny_gguf(
    m: &quern_formats::testutil::TinyModel,
    dir: &Path,
    outtype: quern_quant::pipeline::OutType,
) -> PathBuf {
    use quern_quant::pipeline::{convert_hf_folder, ConvertOptions, NoProgress};
    let folder = dir.join("hf");
    m.write(&folder).expect("write tiny model");
    let out = dir.join("model.gguf");
    let opts = ConvertOptions {
        outtype,
        model_name: None,
    };
    convert_hf_folder(&folder, &out, &opts, &NoProgress).expect("convert");
    out
}

/// `‖a − b‖ / ‖b‖` in f64.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (num / den).sqrt()
}
