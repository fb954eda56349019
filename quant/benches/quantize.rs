//! Single-thread quantisation throughput of the importance-aware formats, on a
//! 256-row × 4096-column Gaussian matrix with a heavy tail (like trained weights),
//! with and without an importance vector. Throughput is reported in rows of 4096.
//!
//! `cargo bench -p quern-quant --bench quantize`; `benches/llama_cpp_speed.py` times
//! llama.cpp's quantisers on the same kind of matrix for comparison.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use quern_quant::{quantize_row, row_bytes, GgmlType};
use std::hint::black_box;

const ROWS: usize = 256;
const COLS: usize = 4096;

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

fn bench_quantize(c: &mut Criterion) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let src: Vec<f32> = (0..ROWS * COLS)
        .map(|_| {
            let x = rng.normal() * 0.02;
            // A few outliers, as in real weight matrices.
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
    let mut group = c.benchmark_group("quantize_row");
    group.sample_size(10);
    group.throughput(Throughput::Elements(ROWS as u64));
    for ty in [
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Q5K,
        GgmlType::Q3K,
        GgmlType::Q2K,
        GgmlType::Iq4Xs,
        GgmlType::Iq4Nl,
    ] {
        let bytes = row_bytes(ty, COLS).expect("row size");
        let mut dst = vec![0u8; bytes];
        for (label, w) in [("plain", None), ("imatrix", Some(imp.as_slice()))] {
            group.bench_function(BenchmarkId::new(ty.to_string(), label), |b| {
                b.iter(|| {
                    for row in src.chunks_exact(COLS) {
                        quantize_row(ty, black_box(row), w, &mut dst).expect("quantize");
                    }
                    black_box(&dst);
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_quantize);
criterion_main!(benches);
