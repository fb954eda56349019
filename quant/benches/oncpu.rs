//! Single-thread quantisation throughput measured in on-CPU time of the thread
//! (`/proc/thread-self/schedstat`), so that other work on a shared machine inflates
//! the figures less than wall time does; same matrix as `benches/quantize.rs`.
//! Compare with `benches/llama_cpp_speed.py`, which also reports on-CPU time.
//!
//! `cargo bench -p quern-quant --bench oncpu [-- TYPE...]`

use quern_quant::{quantize_row, row_bytes, GgmlType};
use std::hint::black_box;

const ROWS: usize = 256;
const COLS: usize = 4096;
const REPEATS: usize = 5;

/// Nanoseconds this thread has spent on a CPU (Linux); wall time elsewhere.
fn on_cpu_ns(start: std::time::Instant) -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| start.elapsed().as_nanos() as u64)
}

/// xorshift64*, so the bench needs no RNG crate.
struct Rng(u64);

impl Rng {
    fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f32 {
        let (u1, u2) = (self.unit().max(1e-300), self.unit());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

fn main() {
    let wanted: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .map(|a| a.to_lowercase())
        .collect();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let src: Vec<f32> = (0..ROWS * COLS)
        .map(|_| {
            let x = rng.normal() * 0.02;
            if rng.unit() < 0.002 {
                x * 8.0
            } else {
                x
            }
        })
        .collect();
    let imp: Vec<f32> = (0..COLS)
        .map(|_| {
            let a = rng.normal();
            a * a + 0.01
        })
        .collect();
    let clock = std::time::Instant::now();
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q5K,
        GgmlType::Q3K,
        GgmlType::Q2K,
        GgmlType::Iq4Xs,
        GgmlType::Iq4Nl,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
    ] {
        if !wanted.is_empty() && !wanted.contains(&ty.to_string().to_lowercase()) {
            continue;
        }
        let mut dst = vec![0u8; row_bytes(ty, COLS).expect("row size")];
        // The 32-value formats are fast: several passes per timing, so the
        // scheduler's on-CPU clock (updated at context switches) advances.
        let passes = if ty.block_size() == 32 { 40 } else { 1 };
        for (label, w) in [("plain", None), ("imatrix", Some(imp.as_slice()))] {
            let mut best = u64::MAX;
            for _ in 0..REPEATS {
                let t = on_cpu_ns(clock);
                for _ in 0..passes {
                    for row in src.chunks_exact(COLS) {
                        quantize_row(ty, black_box(row), w, &mut dst).expect("quantize");
                    }
                }
                black_box(&dst);
                best = best.min(on_cpu_ns(clock) - t);
            }
            let secs = best as f64 * 1e-9;
            println!(
                "{:7} {label:8} {:9.0} rows/s  {:6.1} Mvalues/s",
                ty.to_string(),
                (ROWS * passes) as f64 / secs,
                (ROWS * COLS * passes) as f64 / secs / 1e6
            );
        }
    }
}
