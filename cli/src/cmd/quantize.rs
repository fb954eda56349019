//! `quern quantize`: GGUF block quantisation with llama.cpp-compatible mixes.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quern_formats::imatrix::Imatrix;
use quern_quant::awq::scale::ScaleOptions;
use quern_quant::awq::FakeQuant;
use quern_quant::mix::Mix;
use quern_quant::pipeline::{
    planned_types, quantize_awq_folded, quantize_folded, AwqOptions, QuantizeOptions,
    QuantizeReport,
};
use quern_quant::GgmlType;
use quern_runtime::awq::{
    calibrate_awq, calibration_tokens, AwqCalibOptions, AwqCalibration, Target,
};
use quern_runtime::{CpuBackend, Model};

use crate::progress::{bytes_bar, BarProgress};

/// Quantise a model to GGUF block formats.
///
/// IN is an F32/F16/BF16 GGUF file or a Hugging Face folder (or hub id), which is
/// converted and quantised in one streaming pass. TYPE is a block type or a mix;
/// mixes choose per-tensor types as llama.cpp's llama-quantize does (embeddings,
/// output, attn_v and ffn_down get more bits in the _M mixes), so files match
/// llama.cpp's in size. Output goes to a temporary name, renamed on success.
#[derive(Args)]
#[command(after_help = mix_help())]
pub struct QuantizeArgs {
    /// GGUF file (F32/F16/BF16) or Hugging Face model folder / hub id.
    pub input: String,
    /// Output GGUF file (for --format awq: output folder).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Block type or mix (see below), e.g. Q4_K_M, Q8_0, IQ4_XS; required for GGUF output.
    #[arg(short, long = "type", value_parser = parse_mix, required_if_eq("format", "gguf"))]
    pub ty: Option<Mix>,
    /// Output format: gguf (llama.cpp, Ollama) or awq (AutoAWQ GEMM 4-bit
    /// safetensors for vLLM and transformers; input must be a Hugging Face folder).
    #[arg(long, default_value = "gguf", value_parser = ["gguf", "awq"])]
    pub format: String,
    /// AWQ: input columns per quantisation group.
    #[arg(long, default_value_t = 128)]
    pub group_size: usize,
    /// Importance matrix (llama.cpp's imatrix GGUF or legacy .dat) weighting the
    /// quantisation error per input column.
    #[arg(long)]
    pub imatrix: Option<PathBuf>,
    /// Calibration text for activation-aware scaling (AWQ). With --format awq it
    /// turns round-to-nearest into AWQ: per block, the input-channel scales and
    /// the per-group clipping that minimise the linears' output error on these
    /// tokens. For GGUF types it needs --awq. Never calibrate on evaluation text.
    #[arg(long, value_name = "FILE")]
    pub calib: Option<PathBuf>,
    /// GGUF types: search AWQ scales with the target block formats as the
    /// quantiser (weighted by --imatrix when given), fold them into the norms
    /// and weights, then quantise as usual: a standard GGUF any llama.cpp runs.
    /// Needs --calib and a Hugging Face folder.
    #[arg(long, requires = "calib")]
    pub awq: bool,
    /// AWQ calibration: samples of --seq-len tokens taken from the start of --calib.
    #[arg(long, default_value_t = 128)]
    pub samples: usize,
    /// AWQ calibration: tokens per sample.
    #[arg(long, default_value_t = 512)]
    pub seq_len: usize,
    /// AWQ calibration: tokens (strided over all samples) the search's loss is
    /// measured on; mean |x| uses every token.
    #[arg(long, default_value_t = 4096)]
    pub loss_tokens: usize,
    /// AWQ: AutoAWQ's "duo" scales, mean|x|^α / mean|w|^(1-α), instead of the
    /// paper's mean|x|^α.
    #[arg(long)]
    pub awq_duo: bool,
    /// AWQ: skip the clipping search (--format awq only).
    #[arg(long)]
    pub no_clip: bool,
    /// Write the AWQ search's per-group results (α, losses) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub awq_report: Option<PathBuf>,
    /// Quantise tensors that are already quantised (loses accuracy; as llama.cpp).
    #[arg(long)]
    pub allow_requantize: bool,
    /// general.name for a Hugging Face input.
    #[arg(long)]
    pub name: Option<String>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// No progress bar or summary.
    #[arg(short, long)]
    pub quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Skip the provenance statement (OUT.provenance.json, or provenance.json in
    /// an AWQ folder: command, parameters, sha256 of every input and of the output).
    #[arg(long)]
    pub no_provenance: bool,
}

fn start_provenance(
    args: &QuantizeArgs,
    input: &std::path::Path,
) -> Option<crate::provenance::Pending> {
    (!args.no_provenance).then(|| {
        let mut params = vec![("format", serde_json::json!(args.format))];
        if let Some(t) = args.ty {
            params.push(("type", serde_json::json!(t.name())));
        }
        if args.format == "awq" {
            params.push(("group_size", serde_json::json!(args.group_size)));
        }
        if args.calib.is_some() {
            params.push((
                "awq",
                serde_json::json!({
                    "samples": args.samples,
                    "seq_len": args.seq_len,
                    "loss_tokens": args.loss_tokens,
                    "duo": args.awq_duo,
                    "clip": args.format == "awq" && !args.no_clip,
                }),
            ));
        }
        if args.allow_requantize {
            params.push(("allow_requantize", serde_json::json!(true)));
        }
        let inputs = args
            .imatrix
            .iter()
            .map(|p| ("imatrix", p.clone()))
            .chain(args.calib.iter().map(|p| ("calib", p.clone())))
            .collect();
        crate::provenance::start("quantize", &args.input, input, params, inputs)
    })
}

fn finish_provenance(
    p: Option<crate::provenance::Pending>,
    output: &std::path::Path,
    sha256: Option<[u8; 32]>,
) -> Result<Option<PathBuf>> {
    p.map(|p| p.finish(output, sha256)).transpose()
}

fn mix_help() -> String {
    let mut s = String::from("Types and mixes:\n");
    for m in Mix::all() {
        s.push_str(&format!("  {:8} {}\n", m.name(), m.describe()));
    }
    s
}

fn parse_mix(s: &str) -> Result<Mix, String> {
    Mix::parse(s).map_err(|e| e.to_string())
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    crate::threads::init(args.threads)?;
    if args.output.is_dir() {
        bail!(
            "{}: is a folder; give a file name for the GGUF output",
            args.output.display()
        );
    }
    let input = crate::model_source::resolve(&args.input)?;
    if args.format == "awq" {
        return run_awq(&args, &input);
    }
    let Some(mix) = args.ty else {
        bail!("--type is required for GGUF output");
    };
    if args.calib.is_some() && !args.awq {
        bail!("--calib for GGUF types needs --awq (AWQ scale search before block quantisation)");
    }
    let imatrix = match &args.imatrix {
        Some(p) => Some(Imatrix::read(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let quiet = args.quiet || args.json;
    let started = Instant::now();
    let options = QuantizeOptions {
        mix,
        allow_requantize: args.allow_requantize,
        model_name: args.name.clone(),
    };
    let provenance = start_provenance(&args, &input);
    let calibration = if args.awq {
        let types: HashMap<String, GgmlType> = planned_types(&input, &options, imatrix.is_some())?
            .into_iter()
            .collect();
        let target = |name: &str| Target {
            fake_quant: FakeQuant::Ggml(types.get(name).copied().unwrap_or(GgmlType::F16)),
            importance: imatrix.as_ref().and_then(|im| im.importance_for(name)),
        };
        Some(run_awq_search(&args, &input, &target, quiet)?)
    } else {
        None
    };
    let bar = bytes_bar(0, "quantizing", quiet);
    let report = quantize_folded(
        &input,
        &args.output,
        &options,
        imatrix.as_ref(),
        calibration.as_ref().map(|c| &c.0.folds),
        &BarProgress(&bar),
    );
    bar.finish_and_clear();
    let report = report?;
    let provenance = finish_provenance(provenance, &report.output, Some(report.output_sha256))?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let mut j = report_json(&report, secs);
        j["provenance"] = serde_json::json!(provenance);
        if let Some((c, timing)) = &calibration {
            j["awq"] = awq_json(c, timing);
        }
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else if !args.quiet {
        if let Some((c, timing)) = &calibration {
            print_awq(c, timing);
        }
        print_report(&report, secs);
        if let Some(p) = provenance {
            eprintln!("  provenance: {}", p.display());
        }
    }
    Ok(())
}

fn run_awq(args: &QuantizeArgs, input: &std::path::Path) -> Result<()> {
    if !input.is_dir() {
        bail!(
            "{}: AWQ output needs a Hugging Face folder as input",
            input.display()
        );
    }
    if args.imatrix.is_some() {
        bail!("--imatrix applies to GGUF block types, not to --format awq");
    }
    if args.awq {
        bail!("--awq is for GGUF types; with --format awq, --calib alone enables the AWQ search");
    }
    let quiet = args.quiet || args.json;
    let started = Instant::now();
    let provenance = start_provenance(args, input);
    let group = args.group_size;
    let calibration = match &args.calib {
        Some(_) => {
            let target = |_: &str| Target {
                fake_quant: FakeQuant::Awq4 { group },
                importance: None,
            };
            Some(run_awq_search(args, input, &target, quiet)?)
        }
        None => None,
    };
    let bar = bytes_bar(0, "quantizing", quiet);
    let report = quantize_awq_folded(
        input,
        &args.output,
        &AwqOptions {
            group_size: args.group_size,
        },
        calibration.as_ref().map(|c| &c.0.folds),
        &BarProgress(&bar),
    );
    bar.finish_and_clear();
    let report = report?;
    let provenance = finish_provenance(provenance, &report.output, None)?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let j = serde_json::json!({
            "provenance": provenance,
            "output": report.output,
            "format": "awq",
            "group_size": args.group_size,
            "quantized_linears": report.quantized_linears,
            "kept_tensors": report.kept_tensors,
            "weights_bytes": report.weights_bytes,
            "seconds": secs,
            "awq": calibration.as_ref().map(|(c, s)| awq_json(c, s)),
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else if !args.quiet {
        if let Some((c, timing)) = &calibration {
            print_awq(c, timing);
        }
        eprintln!(
            "wrote {} (AWQ gemm, 4-bit, group {}{}): {} linears quantised, {} tensors kept in f16, {:.1} MB of weights, {:.2} s",
            report.output.display(),
            args.group_size,
            if calibration.is_some() {
                ", activation-aware"
            } else {
                ", round-to-nearest"
            },
            report.quantized_linears,
            report.kept_tensors,
            report.weights_bytes as f64 / 1e6,
            secs
        );
    }
    Ok(())
}

/// Runs the AWQ calibration pass and search on `input` (a float Hugging Face
/// folder); returns the result and the seconds it took.
fn run_awq_search(
    args: &QuantizeArgs,
    input: &std::path::Path,
    target: &dyn Fn(&str) -> Target,
    quiet: bool,
) -> Result<(AwqCalibration, AwqTiming)> {
    let Some(calib) = &args.calib else {
        bail!("AWQ needs --calib FILE");
    };
    if !input.is_dir() {
        bail!(
            "{}: AWQ calibration needs a Hugging Face folder of float weights",
            input.display()
        );
    }
    let started = Instant::now();
    let model = Model::open(input, Box::new(CpuBackend::new()))
        .with_context(|| format!("{}", input.display()))?;
    if model.source().format() != "safetensors" {
        bail!(
            "{}: AWQ calibration needs float (bf16/f16/f32) weights, not an already quantised {} folder",
            input.display(),
            model.source().format()
        );
    }
    let c = &model.config;
    if args.format == "awq" {
        for (what, width) in [
            ("hidden size", c.n_embd),
            ("attention width", c.n_head * c.head_dim),
            ("ffn width", c.n_ff),
        ] {
            if args.group_size == 0 || !width.is_multiple_of(args.group_size) {
                bail!(
                    "--group-size {} does not divide the {what} {width}; pick one that does (e.g. 64 or 32)",
                    args.group_size
                );
            }
        }
    }
    let text = std::fs::read_to_string(calib)
        .with_context(|| format!("reading calibration text {}", calib.display()))?;
    let samples = calibration_tokens(&model, &text, args.samples, args.seq_len)
        .with_context(|| format!("{}", calib.display()))?;
    let opts = AwqCalibOptions {
        samples: args.samples,
        seq_len: args.seq_len,
        loss_tokens: args.loss_tokens,
        scale: ScaleOptions {
            grid: 20,
            duo: args.awq_duo,
        },
        clip: args.format == "awq" && !args.no_clip,
    };
    let bar = ProgressBar::new(samples.len() as u64);
    if quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{msg:14} [{bar:30}] {pos}/{len} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message("AWQ forward");
    // When the forward pass ended: the report splits the time into the two stages.
    let forward_secs = std::cell::Cell::new(None::<f64>);
    let progress = |stage: &str, done: usize, total: usize| {
        if stage == "search" && bar.message() != "AWQ search" {
            forward_secs.set(Some(started.elapsed().as_secs_f64()));
            bar.set_message("AWQ search");
            bar.set_length(total as u64);
            bar.reset();
        }
        bar.set_position(done as u64);
    };
    let result = calibrate_awq(&model, &samples, &opts, target, &progress);
    bar.finish_and_clear();
    let result = result?;
    let secs = started.elapsed().as_secs_f64();
    let timing = AwqTiming {
        total: secs,
        forward: forward_secs.get().unwrap_or(secs),
    };
    if let Some(path) = &args.awq_report {
        let j = awq_json(&result, &timing);
        std::fs::write(path, serde_json::to_string_pretty(&j)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok((result, timing))
}

/// Seconds of the AWQ calibration: all of it, and the float forward pass that
/// collects the statistics (the rest is the scale and clip search).
#[derive(Debug, Clone, Copy)]
struct AwqTiming {
    total: f64,
    forward: f64,
}

fn awq_json(c: &AwqCalibration, t: &AwqTiming) -> serde_json::Value {
    serde_json::json!({
        "calibration_tokens": c.tokens,
        "search_seconds": t.total,
        "forward_seconds": t.forward,
        "groups": c.groups,
    })
}

fn print_awq(c: &AwqCalibration, t: &AwqTiming) {
    let scaled = c.groups.iter().filter(|g| g.alpha.is_some()).count();
    let gain: f64 = c
        .groups
        .iter()
        .map(|g| g.loss / g.loss_unscaled.max(f64::MIN_POSITIVE))
        .sum::<f64>()
        / c.groups.len().max(1) as f64;
    eprintln!(
        "AWQ: {} calibration tokens, {} of {} groups scaled, mean loss ratio {:.3} (vs unscaled), {:.1} s (forward pass {:.1} s, search {:.1} s)",
        c.tokens,
        scaled,
        c.groups.len(),
        gain,
        t.total,
        t.forward,
        t.total - t.forward
    );
}

/// Tensors and bytes per output type.
fn by_type(report: &QuantizeReport) -> BTreeMap<&'static str, (usize, u64, u64)> {
    let mut m = BTreeMap::new();
    for t in &report.tensors {
        let e = m.entry(t.out_type.name()).or_insert((0usize, 0u64, 0u64));
        e.0 += 1;
        e.1 += t.n_elements();
        e.2 += t.out_bytes();
    }
    m
}

fn report_json(r: &QuantizeReport, secs: f64) -> serde_json::Value {
    serde_json::json!({
        "output": r.output,
        "architecture": r.architecture,
        "type": r.mix.name(),
        "file_type": r.mix.file_type(),
        "parameters": r.n_params,
        "output_bytes": r.output_bytes,
        "bits_per_weight": r.bits_per_weight(),
        "imatrix_tensors": r.weighted_tensors,
        "seconds": secs,
        "types": by_type(r).into_iter().map(|(k, (n, el, b))| (k.to_string(), serde_json::json!({"tensors": n, "elements": el, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
        "tensors": r.tensors.iter().map(|t| serde_json::json!({
            "name": t.gguf_name, "type": t.out_type.name(), "shape": t.shape, "bytes": t.out_bytes(),
            "fallback_from": t.fallback_from.map(|f| f.name()),
        })).collect::<Vec<_>>(),
    })
}

fn print_report(r: &QuantizeReport, secs: f64) {
    eprintln!(
        "wrote {} ({}, {}, {} tensors) in {:.2} s",
        r.output.display(),
        r.architecture,
        r.mix.name(),
        r.tensors.len(),
        secs
    );
    eprintln!(
        "  {:8} {:>7} {:>14} {:>11} {:>6}",
        "type", "tensors", "weights", "MB", "bpw"
    );
    for (ty, (n, el, bytes)) in by_type(r) {
        eprintln!(
            "  {ty:8} {n:7} {el:14} {:11.2} {:6.2}",
            bytes as f64 / 1e6,
            bytes as f64 * 8.0 / el.max(1) as f64
        );
    }
    eprintln!(
        "  file: {:.2} MB, {} parameters, {:.3} bits per weight{}",
        r.output_bytes as f64 / 1e6,
        r.n_params,
        r.bits_per_weight(),
        if r.weighted_tensors > 0 {
            format!(", imatrix used for {} tensors", r.weighted_tensors)
        } else {
            String::new()
        }
    );
    for t in r.tensors.iter().filter(|t| t.fallback_from.is_some()) {
        if let Some(f) = t.fallback_from {
            eprintln!(
                "  note: {}: rows of {} do not fit {f}; written as {}",
                t.gguf_name,
                t.row_len(),
                t.out_type
            );
        }
    }
}
