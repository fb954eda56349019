//! `--device cuda` and `bench --kernels` from the command line: without a GPU a
//! one-line error and a failing exit status, never a panic; the flag checks hold
//! on any machine.

use std::process::{Command, Output};

fn quern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quern"))
        .args(args)
        .output()
        .expect("run quern")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn kernels_needs_the_cuda_device_and_no_model() {
    let o = quern(&["bench", "--kernels"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--device cuda"), "{}", stderr(&o));
    let o = quern(&["bench", "--kernels", "--device", "cuda", "model.gguf"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no model file"), "{}", stderr(&o));
    let o = quern(&["bench", "--types", "Q4_0", "model.gguf"]);
    assert!(!o.status.success(), "--types without --kernels is refused");
}

#[test]
fn cuda_without_a_gpu_is_a_one_line_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.gguf");
    let missing = missing.to_str().expect("utf-8 path");
    let text = dir.path().join("calib.txt");
    std::fs::write(&text, "some calibration text").expect("write text");
    let text = text.to_str().expect("utf-8 path");
    let imatrix = dir.path().join("out.imatrix.gguf");
    let imatrix = imatrix.to_str().expect("utf-8 path");
    for args in [
        vec!["run", "--device", "cuda", "-p", "hi", missing],
        vec![
            "calibrate",
            missing,
            "-f",
            text,
            "-o",
            imatrix,
            "--device",
            "cuda",
        ],
        vec!["verify", missing, "-r", missing, "--device", "cuda"],
    ] {
        let o = quern(&args);
        assert!(!o.status.success(), "{args:?}");
        let err = stderr(&o);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        if err.contains("--device cuda") {
            // No GPU here: the reason, on one line.
            assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        } else {
            // A GPU: the missing file is what fails.
            assert!(err.contains("missing.gguf"), "{args:?}: {err}");
        }
    }
    assert!(
        !std::path::Path::new(imatrix).exists(),
        "no importance matrix is written"
    );
}

#[test]
fn synthetic_bench_checks_its_arguments_before_writing_anything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let o = quern(&["bench", "--synthetic", "llama-9b", "--synthetic-dir", d]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(err.contains("llama-8b"), "{err}");
    let o = quern(&[
        "bench",
        "--synthetic",
        "llama-8b",
        "--type",
        "Q9_X",
        "--synthetic-dir",
        d,
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--type"), "{}", stderr(&o));
    // --type belongs to --synthetic; a model file and --synthetic exclude each other.
    let o = quern(&["bench", "--type", "Q4_0", "model.gguf"]);
    assert!(!o.status.success());
    let o = quern(&["bench", "--synthetic", "llama-8b", "model.gguf"]);
    assert!(!o.status.success());
    assert_eq!(
        std::fs::read_dir(dir.path()).expect("list").count(),
        0,
        "nothing is written when the arguments are wrong"
    );
}
