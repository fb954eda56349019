//! Finds the Python interpreter for cross-check tests (`QUERN_PYTHON`, default
//! `<workspace>/.venv/bin/python`). A missing interpreter or package skips the test
//! with a notice, unless `QUERN_REQUIRE_PYTHON=1`.

use std::path::PathBuf;
use std::process::Command;

/// The interpreter, if it exists and imports every module in `modules`.
pub fn python(modules: &[&str]) -> Option<PathBuf> {
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
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
    if require {
        panic!("QUERN_REQUIRE_PYTHON=1 but {msg}");
    }
    eprintln!("notice: skipping Python cross-check: {msg}");
    None
}
