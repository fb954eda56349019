//! Times the AWQ scale search for one group of linears of a given shape on
//! random data, to measure how its cost scales with width (BENCHMARKS.md "AWQ
//! calibration"): `cargo run --release -p quern-quant --example awq_search_cost
//! -- ROWS IN [GRID] [awq|q4_k|...]` prints seconds per candidate and GMAC/s
//! (`rows × in²` multiply-adds per candidate, plus the fake quantisation).

use std::time::Instant;

use quern_formats::GgmlType;
use quern_quant::awq::gemm::gram;
use quern_quant::awq::scale::{search_scale, InputStats, Linear, ScaleOptions};
use quern_quant::awq::FakeQuant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(d);
    let (rows, n_in, grid) = (num(1, 1536), num(2, 576), num(3, 4));
    let fq = match args.get(4).map(String::as_str) {
        None | Some("awq") => FakeQuant::Awq4 { group: 64 },
        Some(t) => FakeQuant::Ggml(GgmlType::from_name(t).expect("a ggml type name")),
    };
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let tokens = 512;
    let x: Vec<f32> = (0..tokens * n_in).map(|_| next()).collect();
    let w: Vec<f32> = (0..rows * n_in).map(|_| next() * 0.1).collect();
    let t0 = Instant::now();
    let g = gram(&x, tokens, n_in);
    let gram_s = t0.elapsed().as_secs_f64();
    let mean: Vec<f32> = (0..n_in).map(|j| 0.1 + (j % 7) as f32).collect();
    let stats = InputStats {
        mean_abs: &mean,
        gram: &g,
        tokens,
    };
    let lin = [Linear {
        weight: &w,
        rows,
        importance: None,
        fake_quant: fq,
    }];
    let t0 = Instant::now();
    search_scale(&lin, n_in, &stats, &ScaleOptions { grid, duo: false }).expect("search");
    let secs = t0.elapsed().as_secs_f64();
    // The unscaled weights are one more candidate.
    let per = secs / (grid + 1) as f64;
    let macs = rows as f64 * n_in as f64 * n_in as f64;
    println!(
        "rows {rows} in {n_in} {fq:?}: {per:.3} s per candidate, {:.1} GMAC/s; Gram of {tokens} tokens {gram_s:.3} s",
        macs / per / 1e9
    );
}
