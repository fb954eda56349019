//! `quern run` and `quern bench` end to end on a tiny converted model.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quern_formats::testutil::TinyModel;

fn quern() -> Command {
    Command::new(env!("CARGO_BIN_EXE_quern"))
}

fn tiny(dir: &Path) -> PathBuf {
    let folder = dir.join("hf");
    TinyModel::qwen2().write(&folder).expect("write tiny model");
    let out = dir.join("tiny.gguf");
    let o = quern()
        .arg("convert")
        .arg(&folder)
        .arg("-o")
        .arg(&out)
        .args(["--outtype", "q8_0", "--quiet"])
        .output()
        .expect("run quern convert");
    assert!(
        o.status.success(),
        "convert: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn run(args: &[&str], model: &Path) -> Output {
    quern()
        .arg(args[0])
        .arg(model)
        .args(&args[1..])
        .output()
        .expect("run quern")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn run_streams_and_is_reproducible() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny(dir.path());
    let greedy = run(
        &["run", "-p", "the cat", "-n", "12", "--threads", "1"],
        &model,
    );
    assert!(greedy.status.success(), "{}", text(&greedy.stderr));
    let out = text(&greedy.stdout);
    assert!(
        out.starts_with("the cat") && out.len() > "the cat".len(),
        "{out:?}"
    );
    // Greedy output does not depend on the thread count.
    let again = run(
        &["run", "-p", "the cat", "-n", "12", "--threads", "2"],
        &model,
    );
    assert_eq!(text(&again.stdout), out);
    let sample = |seed: &str| {
        let o = run(
            &[
                "run", "-p", "the cat", "-n", "24", "--temp", "1.5", "--top-k", "0", "--top-p",
                "1", "--seed", seed,
            ],
            &model,
        );
        assert!(o.status.success(), "{}", text(&o.stderr));
        text(&o.stdout)
    };
    assert_eq!(sample("5"), sample("5"));
    assert_ne!(sample("5"), sample("6"));
    let chat = run(&["run", "-p", "hi", "-n", "4", "--chat"], &model);
    assert!(chat.status.success(), "{}", text(&chat.stderr));
}

#[test]
fn run_rejects_bad_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny(dir.path());
    let o = run(&["run", "-p", "x", "--threads", "0"], &model);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--threads"), "{}", text(&o.stderr));
    let long = "a ".repeat(300);
    let o = run(&["run", "-p", &long], &model);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        text(&o.stderr).contains("longer than the context"),
        "{}",
        text(&o.stderr)
    );
    let missing = dir.path().join("nope.gguf");
    let o = run(&["run", "-p", "x"], &missing);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("nope.gguf"), "{}", text(&o.stderr));
}

#[test]
fn bench_reports_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let model = tiny(dir.path());
    let o = run(
        &[
            "bench",
            "-p",
            "16",
            "-n",
            "8",
            "-r",
            "2",
            "--threads",
            "1",
            "--json",
        ],
        &model,
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["threads"], 1);
    for key in ["pp_tokens_per_s", "tg_tokens_per_s"] {
        let mean = v[key]["mean"].as_f64().expect("mean");
        assert!(mean > 0.0 && mean.is_finite(), "{key}: {v}");
        assert_eq!(v[key]["samples"], 2);
    }
    let o = run(&["bench", "--threads", "0"], &model);
    assert_eq!(o.status.code(), Some(2));
    let table = run(&["bench", "-p", "8", "-n", "4", "-r", "1"], &model);
    assert!(
        text(&table.stdout).contains("tg4"),
        "{}",
        text(&table.stdout)
    );
}
