//! Helpers shared by the quant integration tests: a seeded generator of test rows and
//! access to the Python reference implementations (`QUERN_PYTHON`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// xorshift64*: deterministic, dependency-free test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Kinds of rows the bit-identity and error tests cover.
#[derive(Debug, Clone, Copy)]
pub enum RowKind {
    Normal,
    Outliers,
    AllEqual,
    ZerosMixed,
    NegativeOnly,
    PositiveOnly,
    Tiny,
}

pub const ROW_KINDS: [RowKind; 7] = [
    RowKind::Normal,
    RowKind::Outliers,
    RowKind::AllEqual,
    RowKind::ZerosMixed,
    RowKind::NegativeOnly,
    RowKind::PositiveOnly,
    RowKind::Tiny,
];

pub fn row(rng: &mut Rng, kind: RowKind, n: usize) -> Vec<f32> {
    let scale = 0.02 * (1.0 + 4.0 * rng.unit() as f32);
    let mut v: Vec<f32> = (0..n).map(|_| rng.normal() * scale).collect();
    match kind {
        RowKind::Normal => {}
        RowKind::Outliers => {
            for _ in 0..(n / 64).max(1) {
                let i = rng.below(n);
                v[i] *= 20.0 + 30.0 * rng.unit() as f32;
            }
        }
        RowKind::AllEqual => {
            let c = rng.normal() * scale;
            v.iter_mut().for_each(|x| *x = c);
        }
        RowKind::ZerosMixed => {
            for x in v.iter_mut() {
                if rng.unit() < 0.3 {
                    *x = 0.0;
                }
            }
        }
        RowKind::NegativeOnly => v.iter_mut().for_each(|x| *x = -x.abs() - 1e-4),
        RowKind::PositiveOnly => v.iter_mut().for_each(|x| *x = x.abs() + 1e-4),
        RowKind::Tiny => v.iter_mut().for_each(|x| *x *= 1e-4),
    }
    v
}

/// Gaussian rows with a heavy-ish tail, like trained weight matrices.
pub fn weight_matrix(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| {
            let x = rng.normal() * 0.02;
            if rng.unit() < 0.002 {
                x * 8.0
            } else {
                x
            }
        })
        .collect()
}

/// A positive importance vector with a wide spread, like squared activations.
pub fn importance(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let a = rng.normal();
            a * a + 0.01
        })
        .collect()
}

/// Byte offsets of the f16 fields in a block, which random bytes must not fill with
/// NaN or infinity (their comparisons would say nothing).
pub fn f16_fields(ty: quern_quant::GgmlType) -> &'static [usize] {
    use quern_quant::GgmlType;
    match ty {
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        _ => &[0],
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The Python interpreter with every module in `modules`, or `None` (with a notice) to
/// skip; panics instead when `QUERN_REQUIRE_PYTHON=1`.
pub fn python_with(modules: &[&str]) -> Option<PathBuf> {
    let py = std::env::var_os("QUERN_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let required = std::env::var("QUERN_REQUIRE_PYTHON").is_ok_and(|v| v == "1");
    let imports = modules
        .iter()
        .map(|m| format!("import {m}"))
        .collect::<Vec<_>>()
        .join("; ");
    let ok = Command::new(&py)
        .args(["-c", &imports])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        return Some(py);
    }
    let msg = format!(
        "Python interpreter {} with modules {:?} not available",
        py.display(),
        modules
    );
    if required {
        panic!("{msg} (QUERN_REQUIRE_PYTHON=1)");
    }
    eprintln!("notice: skipping: {msg}");
    None
}

/// Path of a helper script under `tests/py`.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/py")
        .join(name)
}

/// Runs a Python script, panicking with its stderr when it fails.
pub fn run_python(py: &Path, script: &Path, args: &[&str]) -> String {
    let out = Command::new(py)
        .arg(script)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", py.display()));
    assert!(
        out.status.success(),
        "{} {:?} failed:\n{}",
        script.display(),
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn write_f32(path: &Path, v: &[f32]) {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(path, bytes).expect("writing test data");
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("reading test data");
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// sqrt(Σ w (x - y)² / Σ w x²), in f64.
pub fn rel_rms(x: &[f32], y: &[f32], w: Option<&[f32]>) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        let wi = w.map_or(1.0, |w| w[i % w.len()] as f64);
        num += wi * (a as f64 - b as f64).powi(2);
        den += wi * (a as f64).powi(2);
    }
    (num / den).sqrt()
}
