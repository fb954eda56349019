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
    let tc = be.toolchain().clone();
    let geo = be.geometry();
    if !args.json {
        println!(
            "device {} ({}, driver {}, NVRTC {}.{}); {} warps per block, rows per warp {:?} for batches 1, 2, 4, 8, 16; weights rotated over {} MiB of copies, median of {} graph replays of {} launches",
            be.device_name(),
            tc.arch,
            tc.driver_version,
            tc.nvrtc_version.0,
            tc.nvrtc_version.1,
            geo.warps,
            geo.rows_per_warp,
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
            "geometry": {"warps_per_block": geo.warps, "rows_per_warp": geo.rows_per_warp},
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
