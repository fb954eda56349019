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
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scripts/llama_ref.py");
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "llama_ref.py {args:?} failed: {}",
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
