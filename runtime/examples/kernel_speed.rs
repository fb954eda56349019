//! Kernel throughput on this machine, by thread CPU time (so a busy machine
//! does not distort it much): one thread, each format's decode product (one
//! token) and prefill product (64 tokens) on 1536 × 576, 512 × 2048 and 2048 × 2048 matrices.
//!
//!   cargo run --release -p quern-runtime --example kernel_speed [-- --one-row] [TYPE ...]
//!
//! Prints GB/s of weights (decode) and GMAC/s (prefill) per CPU second, the
//! best of five timings (the least disturbed by other work on the machine).
//! TYPE names (e.g. `q4_k`) restrict it to those formats.

use quern_quant::GgmlType;
use quern_runtime::backend::{Backend, WeightView};
use quern_runtime::CpuBackend;

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    // One thread: the caller alone (no workers), so thread CPU time is the cost.
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build_global()
        .expect("rayon");
    // `--one-row`: the one-row kernels only (no four- or sixteen-row ones), to
    // compare with them. `QUERN_CPU_ISA` and `QUERN_CPU_WIDE=0` apply as well.
    let one_row = std::env::args().any(|a| a == "--one-row");
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.to_ascii_lowercase())
        .collect();
    let mut backend = CpuBackend::new().with_tiles(!one_row);
    if one_row {
        backend = backend.with_wide(false);
    }
    println!("isa {:?}, four-row kernels {}", backend.isa(), !one_row);
    let types = [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q5_0,
        GgmlType::Q4K,
        GgmlType::Q6K,
        GgmlType::Bf16,
    ];
    // 512 x 2048: K-quant rows whose weights stay in L2 (decode compute).
    for (rows, cols) in [(1536usize, 576usize), (512, 2048), (2048, 2048)] {
        for ty in types {
            let name = format!("{ty}").to_ascii_lowercase();
            if cols % ty.block_size() != 0 || (!only.is_empty() && !only.contains(&name)) {
                continue;
            }
            let mut seed = 7u64;
            let mut rnd = || {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            };
            let w: Vec<f32> = (0..rows * cols).map(|_| rnd()).collect();
            let row_bytes = cols / ty.block_size() * ty.type_size();
            let mut data = vec![0u8; rows * row_bytes];
            for (src, dst) in w.chunks_exact(cols).zip(data.chunks_exact_mut(row_bytes)) {
                quern_quant::quantize_row(ty, src, None, dst).expect("quantize");
            }
            let view = WeightView {
                name: "w",
                ty,
                rows,
                cols,
                data: &data,
            };
            for n in [1usize, 64] {
                let x: Vec<f32> = (0..n * cols).map(|_| rnd()).collect();
                let mut out = vec![0f32; n * rows];
                backend.matmul(&view, &x, n, &mut out).expect("matmul");
                let reps = if n == 1 { 400 } else { 20 };
                let mut s = f64::INFINITY;
                for _ in 0..5 {
                    let t = thread_cpu_seconds();
                    for _ in 0..reps {
                        backend.matmul(&view, &x, n, &mut out).expect("matmul");
                    }
                    s = s.min((thread_cpu_seconds() - t) / reps as f64);
                }
                if n == 1 {
                    println!(
                        "{rows}x{cols} {ty:>5} decode : {:7.1} us  {:6.1} GB/s of weights  {:6.1} GMAC/s",
                        s * 1e6,
                        data.len() as f64 / s / 1e9,
                        (rows * cols) as f64 / s / 1e9
                    );
                } else {
                    println!(
                        "{rows}x{cols} {ty:>5} prefill: {:7.1} us  {:6.1} GMAC/s",
                        s * 1e6,
                        (rows * cols * n) as f64 / s / 1e9
                    );
                }
            }
        }
    }
}
