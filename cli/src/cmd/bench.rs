//! `quern bench`: prefill and decode speed of a model on the CPU or the GPU.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use quern_runtime::cuda::bench::copy_bandwidth;
use quern_runtime::cuda::decode::{cuda_backend, DeviceModel};
use quern_runtime::generate::{bench, bench_with, Stats};
use quern_runtime::synthetic::{self, Shape, Weights};
use quern_runtime::{CpuBackend, Model};
use serde_json::json;

/// Measure prompt processing (pp: one batch of -p tokens) and text generation
/// (tg: -n tokens one at a time) in tokens per second, each from an empty
/// context, as llama-bench does; mean ± standard deviation over repetitions.
#[derive(Args)]
pub struct BenchArgs {
    /// A GGUF file, a Hugging Face safetensors folder (bf16/f16/f32) or an AutoAWQ
    /// folder, of the llama, mistral, qwen2 or qwen3 architecture; not needed with
    /// --kernels or --synthetic.
    #[arg(required_unless_present_any = ["kernels", "synthetic"], conflicts_with = "synthetic")]
    pub artifact: Option<PathBuf>,
    /// Prompt tokens for the prefill test (0 skips it).
    #[arg(short = 'p', long = "n-prompt", default_value_t = 128)]
    pub n_prompt: usize,
    /// Tokens for the generation test (0 skips it).
    #[arg(short = 'n', long = "n-gen", default_value_t = 64)]
    pub n_gen: usize,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long, default_value_t = 5)]
    pub repetitions: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Skip measuring the memory read bandwidth (the CPU's decode floor).
    #[arg(long)]
    pub no_floor: bool,
    /// Where the model runs (cuda: the whole forward pass on the first GPU).
    #[arg(long, value_enum, default_value_t = crate::device::Device::Cpu)]
    pub device: crate::device::Device,
    /// Activation codes of the 4- and 5-bit formats' integer products (Q4_0,
    /// Q4_1, Q5_0, Q5_1, Q4_K, Q6_K): 8 bits (fastest) or 16 (as Q8_0 always
    /// has; slower, closer to the float product, and far less sensitive to
    /// the order of float sums, so --device cuda and the CPU agree closely).
    /// Default: QUERN_ACT_BITS, else 8.
    #[arg(long, value_name = "8|16", value_parser = crate::device::parse_act_bits)]
    pub act_bits: Option<quern_runtime::precision::ActBits>,
    /// Instead of a model: time each format's GEMV kernel (4096x4096, 4096x14336,
    /// 14336x4096; batch 1, 4, 16) against the device's copy bandwidth (needs
    /// --device cuda).
    #[arg(long)]
    pub kernels: bool,
    /// With --kernels: only these formats (comma-separated ggml names, e.g.
    /// Q4_0,Q4_K); default all the CUDA backend multiplies.
    #[arg(long, value_delimiter = ',', requires = "kernels")]
    pub types: Vec<String>,
    /// With --kernels: only these batch sizes (comma-separated, 1..=16; default
    /// 1,4,16).
    #[arg(long, value_delimiter = ',', requires = "kernels")]
    pub batches: Vec<usize>,
    /// With --kernels: only these shapes, INxOUT (comma-separated, e.g.
    /// 4096x14336; default 4096x4096,4096x14336,14336x4096).
    #[arg(long, value_delimiter = ',', requires = "kernels")]
    pub shapes: Vec<String>,
    /// With --kernels: instead of single products, time the weight products of one
    /// decode step of a model shape (`llama-8b`: Llama-3-8B, 128256 outputs) as
    /// one CUDA graph, typed by the quantisation mix given with --types (one name,
    /// e.g. Q4_K_M), against the floor (weight bytes over copy bandwidth). As
    /// in the decode, q/k/v and gate/up are one product each where their types
    /// agree (QUERN_CUDA_STACK=0: one per matrix).
    #[arg(long, requires = "kernels")]
    pub stack: Option<String>,
    /// Instead of a model file: a model of this shape (`llama-8b`: Llama-3-8B,
    /// 128256 tokens) with random weights typed by --type, written to a
    /// temporary GGUF file (16 quantised random rows per matrix, repeated) and
    /// removed afterwards.
    #[arg(long, conflicts_with = "kernels")]
    pub synthetic: Option<String>,
    /// With --synthetic: the quantisation (a block type or mix, e.g. Q4_K_M, Q8_0,
    /// F16), or AWQ (AutoAWQ GEMM 4-bit, group 128; AWQ-G64 for group 64): the
    /// block linears as the runtime holds a loaded AWQ folder's, embeddings and
    /// output in F16.
    #[arg(long = "type", requires = "synthetic", default_value = "Q4_K_M")]
    pub ty: String,
    /// With --synthetic: where the temporary file goes (default: the system's
    /// temporary directory).
    #[arg(long, requires = "synthetic")]
    pub synthetic_dir: Option<PathBuf>,
}

/// Removes the synthetic model's file when the benchmark ends, however it ends.
struct RemoveOnDrop(PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub fn run(args: BenchArgs) -> Result<()> {
    crate::device::apply_act_bits(args.act_bits);
    if args.kernels {
        return super::bench_kernels::run(&args);
    }
    crate::threads::init(args.threads)?;
    if args.repetitions == 0 {
        bail!("--repetitions must be at least 1");
    }
    if args.n_prompt == 0 && args.n_gen == 0 {
        bail!("nothing to measure: -p and -n are both 0");
    }
    // First, so that a missing GPU fails before a synthetic model is written.
    let backend = crate::device::backend(args.device)?;
    let mut _cleanup = None;
    let artifact = match &args.synthetic {
        Some(name) => {
            let shape = Shape::named(name).with_context(|| {
                format!(
                    "--synthetic: {name:?} is not one of {}",
                    Shape::names().join(", ")
                )
            })?;
            let weights = Weights::parse(&args.ty).map_err(|e| anyhow::anyhow!("--type: {e}"))?;
            let dir = args
                .synthetic_dir
                .clone()
                .unwrap_or_else(std::env::temp_dir);
            let path = dir.join(format!(
                "quern-synthetic-{}-{}-{}.gguf",
                shape.name,
                weights.name(),
                std::process::id()
            ));
            _cleanup = Some(RemoveOnDrop(path.clone()));
            let t = std::time::Instant::now();
            let bytes = synthetic::write_model(&shape, weights, &path)
                .with_context(|| format!("cannot write {}", path.display()))?;
            if !args.json {
                println!(
                    "synthetic {} {}: {:.2} GB written to {} in {:.1} s",
                    shape.name,
                    weights.name(),
                    bytes as f64 / 1e9,
                    path.display(),
                    t.elapsed().as_secs_f64()
                );
            }
            path
        }
        None => args.artifact.clone().context("a model is needed")?,
    };
    let isa = match args.device {
        crate::device::Device::Cpu => format!("{:?}", quern_runtime::cpu::detect()).to_lowercase(),
        crate::device::Device::Cuda => "cuda".to_string(),
    };
    let model = Model::open(&artifact, backend)
        .with_context(|| format!("cannot load {}", artifact.display()))?;
    let cpu = args.device == crate::device::Device::Cpu;
    let n_ctx = args.n_prompt.max(args.n_gen).max(1);
    let mut upload_s = None;
    // On the GPU: the bytes a decode step reads in the device's layout.
    let mut device_bytes = None;
    // And the bytes its kernels between products ask L2 for ahead of them.
    let mut l2_hinted = None;
    let report = if cpu {
        bench(&model, args.n_prompt, args.n_gen, args.repetitions)?
    } else {
        // The whole forward pass on the GPU; the weights' upload is timed apart.
        let t = std::time::Instant::now();
        let mut dm = DeviceModel::new(&model, n_ctx)?;
        upload_s = Some(t.elapsed().as_secs_f64());
        device_bytes = Some(dm.weight_bytes_read());
        let r = bench_with(&mut dm, args.n_prompt, args.n_gen, args.repetitions)?;
        l2_hinted = Some(dm.l2_hinted_bytes());
        r
    };
    let threads = rayon::current_num_threads();
    let size = model.weight_bytes();
    // The decode floor: every weight read once per token at the memory's read
    // bandwidth (measured after the runs, so it does not warm or cool them); on
    // the GPU the device-to-device copy bandwidth (bytes read + written).
    let bandwidth = if args.no_floor || args.n_gen == 0 {
        None
    } else if cpu {
        // The larger of a fresh buffer's read rate and that of the mapped
        // weights themselves (their pages can be the faster to read).
        let be = CpuBackend::new();
        Some(
            be.read_bandwidth(3)
                .max(be.read_bandwidth_of(&model.weight_slices(), 3)),
        )
    } else {
        let be = cuda_backend(&model).context("the model is not on the GPU")?;
        let copy = copy_bandwidth(be, 1 << 30).map_err(quern_runtime::RuntimeError::CudaForward)?;
        Some(copy.gb_s * 1e9)
    };
    let floor = bandwidth.map(|bw| bw / size as f64);
    // Where the device reads other bytes than the file's blocks (Q5_0 of AWQ
    // folders in the compact layout, repacking's row padding).
    let device_floor = bandwidth.zip(device_bytes).map(|(bw, b)| bw / b as f64);
    if args.json {
        let stat =
            |s: Option<Stats>| s.map(|s| json!({"mean": s.mean, "sd": s.sd, "samples": s.samples}));
        let v = json!({
            "model": artifact.display().to_string(),
            "arch": model.config.arch.name(),
            "backend": args.device.name(),
            "act_bits": quern_runtime::precision::act_bits().bits(),
            "isa": isa,
            "threads": threads,
            "weight_bytes_per_token": size,
            "pp_tokens": report.pp_tokens,
            "tg_tokens": report.tg_tokens,
            "pp_tokens_per_s": stat(report.pp),
            "tg_tokens_per_s": stat(report.tg),
            "read_bandwidth_bytes_per_s": bandwidth,
            "tg_floor_tokens_per_s": floor,
            "tg_share_of_floor": floor.zip(report.tg).map(|(f, s)| s.mean / f),
            "device_weight_bytes_per_token": device_bytes,
            "tg_device_floor_tokens_per_s": device_floor,
            "tg_share_of_device_floor": device_floor.zip(report.tg).map(|(f, s)| s.mean / f),
            "l2_hinted_bytes_per_token": l2_hinted,
            "synthetic": args.synthetic.as_ref().map(|s| format!("{s} {}", args.ty)),
            "upload_s": upload_s,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "model {} ({}, {:.1} MB of weights per token), {}/{isa}, {threads} threads",
        artifact.display(),
        model.config.arch.name(),
        size as f64 / 1e6,
        args.device.name()
    );
    if let Some(u) = upload_s {
        println!("weights uploaded and device buffers allocated in {u:.2} s");
    }
    if let Some(b) = l2_hinted.filter(|&b| b > 0 && report.tg.is_some()) {
        println!(
            "L2 hints: {:.1} MB per token asked for ahead of the products",
            b as f64 / 1e6
        );
    }
    println!("{:>8}  {:>20}", "test", "tokens/s");
    if let Some(s) = report.pp {
        println!(
            "{:>8}  {:>12.2} ± {:<6.2}",
            format!("pp{}", report.pp_tokens),
            s.mean,
            s.sd
        );
    }
    if let Some(s) = report.tg {
        println!(
            "{:>8}  {:>12.2} ± {:<6.2}",
            format!("tg{}", report.tg_tokens),
            s.mean,
            s.sd
        );
    }
    // ", tg at N% of it" for a floor of f tokens/s.
    let share_of = |f: f64| {
        report
            .tg
            .map(|s| format!(", tg at {:.0}% of it", 100.0 * s.mean / f))
            .unwrap_or_default()
    };
    if let (Some(bw), Some(floor)) = (bandwidth, floor) {
        let share = share_of(floor);
        if cpu {
            println!(
                "floor: {:.1} GB/s memory read with {threads} threads / {:.1} MB per token = {floor:.1} tokens/s{share}",
                bw / 1e9,
                size as f64 / 1e6
            );
        } else {
            println!(
                "floor: {:.1} GB/s device copy (read + write) / {:.1} MB per token = {floor:.1} tokens/s{share}",
                bw / 1e9,
                size as f64 / 1e6
            );
            if let (Some(b), Some(f)) = (device_bytes, device_floor) {
                println!(
                    "device floor: {:.1} MB read per token in the device's layout = {f:.1} tokens/s{}",
                    b as f64 / 1e6,
                    share_of(f)
                );
            }
        }
    }
    Ok(())
}
