//! `quern bench --device cuda --kernels`: per-format GEMV time and bandwidth on the
//! GPU beside the copy bandwidth measured in the same run.

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quern_formats::GgmlType;
use quern_runtime::cuda::bench::{run as run_bench, KernelBenchConfig, KernelResult};
use quern_runtime::cuda::supported_types;
use serde_json::json;

use super::bench::BenchArgs;
use crate::device::{cuda, Device};

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.device != Device::Cuda {
        bail!("--kernels times the GPU kernels: add --device cuda");
    }
    if args.artifact.is_some() {
        bail!("--kernels uses random weights of each format: give no model file");
    }
    let be = cuda()?;
    if let Some(shape) = &args.stack {
        return stack(&be, shape, args);
    }
    let mut cfg = KernelBenchConfig::default();
    if !args.types.is_empty() {
        cfg.types = args
            .types
            .iter()
            .map(|n| {
                GgmlType::from_name(n.trim())
                    .filter(|t| supported_types().any(|s| s == *t))
                    .with_context(|| {
                        let all: Vec<&str> = supported_types().map(|t| t.name()).collect();
                        format!("--types: {n:?} is not one of {}", all.join(", "))
                    })
            })
            .collect::<Result<_>>()?;
    }
    if !args.shapes.is_empty() {
        cfg.shapes = args
            .shapes
            .iter()
            .map(|v| {
                v.trim()
                    .split_once('x')
                    .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
                    .filter(|&(a, b)| a > 0 && b > 0)
                    .with_context(|| format!("--shapes: {v:?} is not INxOUT"))
            })
            .collect::<Result<_>>()?;
    }
    if !args.batches.is_empty() {
        if let Some(b) = args.batches.iter().find(|b| !(1..=512).contains(*b)) {
            bail!("--batches: {b} is not in 1..=512");
        }
        cfg.batches = args.batches.clone();
    }
    let tc = be.toolchain().clone();
    let geo = be.geometry();
    if !args.json {
        println!(
            "device {} ({}, driver {}, NVRTC {}.{}); {} warps per block, rows per warp {:?} for batches 1, 2, 4, 8, 16 (repacked formats: {:?} kernels; block kernels: rows per block {:?}, {} units per step; warp kernels: {} warps per block, rows per warp {}, units per lane {}, fused quantisation {}, blocks per SM {}); weights rotated over {} MiB of copies, median of {} graph replays of {} launches",
            be.device_name(),
            tc.arch,
            tc.driver_version,
            tc.nvrtc_version.0,
            tc.nvrtc_version.1,
            geo.warps,
            geo.rows_per_warp,
            geo.packed_kernel,
            geo.mmv_rows,
            geo.mmv_unroll
                .map_or("per format".to_string(), |u| u.to_string()),
            geo.mmw_warps,
            geo.mmw_rows
                .map_or("per format".to_string(), |r| format!("{r:?}")),
            geo.mmw_units
                .map_or("per format".to_string(), |r| format!("{r:?}")),
            if geo.mmw_fuse { "on" } else { "off" },
            geo.mmw_blocks_per_sm
                .map_or("as many as fit".to_string(), |r| r.to_string()),
            cfg.rotate_bytes >> 20,
            cfg.samples,
            cfg.group
        );
        println!(
            "{:>7} {:>12} {:>5} {:>10} {:>9} {:>8}",
            "type", "in x out", "batch", "time µs", "GB/s", "% copy"
        );
    }
    let total = cfg.types.len() * cfg.shapes.len() * cfg.batches.len();
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:28} [{bar:30}] {pos}/{len} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    // Stderr only, so --json output stays clean.
    bar.set_draw_target(ProgressDrawTarget::stderr());
    let report = run_bench(&be, &cfg, |r: &KernelResult| {
        bar.set_message(format!(
            "{} {}x{} b{}",
            r.ty.name(),
            r.in_features,
            r.out_features,
            r.batch
        ));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    let copy = report.copy.gb_s;
    if args.json {
        let rows: Vec<_> = report
            .results
            .iter()
            .map(|r| {
                json!({
                    "type": r.ty.name(),
                    "in_features": r.in_features,
                    "out_features": r.out_features,
                    "batch": r.batch,
                    "weight_bytes": r.weight_bytes,
                    "weight_copies": r.copies,
                    "us_median": r.us_median,
                    "us_min": r.us_min,
                    "gb_s": r.gb_s,
                    "fraction_of_copy": r.gb_s / copy,
                })
            })
            .collect();
        let v = json!({
            "device": report.device,
            "arch": report.arch,
            "driver_version": report.driver_version,
            "nvrtc_version": format!("{}.{}", tc.nvrtc_version.0, tc.nvrtc_version.1),
            "act_bits": quern_runtime::precision::act_bits().bits(),
            "geometry": {
                "warps_per_block": geo.warps,
                "rows_per_warp": geo.rows_per_warp,
                "packed_rows_per_block": geo.mmv_rows,
                "packed_unroll": geo.mmv_unroll,
                "packed_warps": geo.mmv_warps,
                "packed_kernel": format!("{:?}", geo.packed_kernel),
                "warp_kernel_warps": geo.mmw_warps,
                "warp_kernel_rows": geo.mmw_rows,
                "warp_kernel_units": geo.mmw_units,
                "warp_kernel_fused": geo.mmw_fuse,
                "warp_kernel_blocks_per_sm": geo.mmw_blocks_per_sm,
            },
            "copy": {"bytes": report.copy.bytes, "us": report.copy.us, "gb_s": copy},
            "method": {
                "timer": "CUDA events around replays of a CUDA graph of a group of launches (rotating weight copies), median over replays",
                "samples": cfg.samples,
                "launches_per_group": cfg.group,
                "rotate_bytes": cfg.rotate_bytes,
                "bytes_counted": "weights in their file layout (codes and scales)",
            },
            "results": rows,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    for r in &report.results {
        println!(
            "{:>7} {:>12} {:>5} {:>10.2} {:>9.0} {:>7.1}%",
            r.ty.name(),
            format!("{}x{}", r.in_features, r.out_features),
            r.batch,
            r.us_median,
            r.gb_s,
            100.0 * r.gb_s / copy
        );
    }
    println!(
        "device-to-device copy: {:.0} GB/s (read + write, {} MiB buffer, {:.1} µs)",
        copy,
        report.copy.bytes >> 20,
        report.copy.us
    );
    Ok(())
}

/// `--stack llama-8b --types MIX`: the weight products of one decode step.
fn stack(be: &quern_runtime::cuda::CudaBackend, shape: &str, args: &BenchArgs) -> Result<()> {
    use quern_runtime::cuda::bench::{llama_8b_tensors, stack as run_stack, stacked};
    if shape != "llama-8b" {
        bail!("--stack: {shape:?} is not a known shape (llama-8b)");
    }
    let [mix] = args.types.as_slice() else {
        bail!("--stack needs one quantisation mix in --types, e.g. --types Q4_K_M");
    };
    let mix = quern_quant::mix::Mix::parse(mix)?;
    let vocab = 128_256;
    let mut tensors = llama_8b_tensors(mix, vocab)?;
    // As the decode multiplies them: q/k/v and gate/up stacked where their
    // types agree, unless QUERN_CUDA_STACK=0.
    if std::env::var("QUERN_CUDA_STACK").as_deref() != Ok("0") {
        tensors = stacked(&tensors);
    }
    let r = run_stack(be, &tensors, 1, 30)?;
    let floor = r.floor_us();
    let by_type: Vec<_> = r
        .by_type
        .iter()
        .map(|(t, b, n)| json!({"type": t.name(), "bytes": b, "matrices": n}))
        .collect();
    if args.json {
        let v = json!({
            "device": r.device,
            "shape": shape,
            "vocab": vocab,
            "mix": mix.name(),
            "batch": r.batch,
            "launches": r.launches,
            "weight_bytes": r.weight_bytes,
            "by_type": by_type,
            "copy_gb_s": r.copy.gb_s,
            "us_median": r.us_median,
            "us_min": r.us_min,
            "tokens_per_s": 1e6 / r.us_median,
            "floor_us": floor,
            "floor_tokens_per_s": 1e6 / floor,
            "fraction_of_floor": floor / r.us_median,
            "what": "the weight products of one decode step only (every matrix once, its activation quantiser included), as one CUDA graph; no attention, norms or host work",
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{shape} {} (vocab {vocab}), {} products, {:.2} GB of weights per step; copy {:.0} GB/s",
        mix.name(),
        r.launches,
        r.weight_bytes as f64 / 1e9,
        r.copy.gb_s
    );
    println!(
        "weight products of one step: {:.1} µs (min {:.1}) = {:.0} tok/s; floor {:.1} µs = {:.0} tok/s; {:.1}% of the floor",
        r.us_median,
        r.us_min,
        1e6 / r.us_median,
        floor,
        1e6 / floor,
        100.0 * floor / r.us_median
    );
    Ok(())
}
