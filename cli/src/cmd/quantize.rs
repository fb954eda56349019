//! `quern quantize`: GGUF block quantisation with llama.cpp-compatible mixes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use quern_formats::imatrix::Imatrix;
use quern_quant::mix::Mix;
use quern_quant::pipeline::{quantize, quantize_awq, AwqOptions, QuantizeOptions, QuantizeReport};

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
        if args.allow_requantize {
            params.push(("allow_requantize", serde_json::json!(true)));
        }
        let inputs = args
            .imatrix
            .iter()
            .map(|p| ("imatrix", p.clone()))
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
    let imatrix = match &args.imatrix {
        Some(p) => Some(Imatrix::read(p).with_context(|| format!("{}", p.display()))?),
        None => None,
    };
    let quiet = args.quiet || args.json;
    let started = Instant::now();
    let bar = bytes_bar(0, "quantizing", quiet);
    let options = QuantizeOptions {
        mix,
        allow_requantize: args.allow_requantize,
        model_name: args.name.clone(),
    };
    let provenance = start_provenance(&args, &input);
    let report = quantize(
        &input,
        &args.output,
        &options,
        imatrix.as_ref(),
        &BarProgress(&bar),
    );
    bar.finish_and_clear();
    let report = report?;
    let provenance = finish_provenance(provenance, &report.output, Some(report.output_sha256))?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        let mut j = report_json(&report, secs);
        j["provenance"] = serde_json::json!(provenance);
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else if !args.quiet {
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
    let quiet = args.quiet || args.json;
    let started = Instant::now();
    let bar = bytes_bar(0, "quantizing", quiet);
    let provenance = start_provenance(args, input);
    let report = quantize_awq(
        input,
        &args.output,
        &AwqOptions {
            group_size: args.group_size,
        },
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
        });
        println!("{}", serde_json::to_string_pretty(&j)?);
    } else if !args.quiet {
        eprintln!(
            "wrote {} (AWQ gemm, 4-bit, group {}): {} linears quantised, {} tensors kept in f16, {:.1} MB of weights, {:.2} s",
            report.output.display(),
            args.group_size,
            report.quantized_linears,
            report.kept_tensors,
            report.weights_bytes as f64 / 1e6,
            secs
        );
    }
    Ok(())
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
