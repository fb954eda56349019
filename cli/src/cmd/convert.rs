//! `quern convert`: Hugging Face safetensors to GGUF.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use quern_quant::pipeline::{convert_hf_folder, ConvertOptions, OutType};

use crate::progress::{bytes_bar, BarProgress};

/// Convert a Hugging Face model (folder or hub id) to a GGUF file that llama.cpp runs.
///
/// Tensors are mapped and permuted exactly as llama.cpp's converter does, converted
/// in parallel straight from the memory-mapped safetensors, and written to a
/// temporary name that becomes OUT only when everything succeeded.
#[derive(Args)]
pub struct ConvertArgs {
    /// A Hugging Face model folder (config.json, *.safetensors, tokenizer.json),
    /// or a hub id ORG/NAME[@REV] resolved through the HF cache
    /// (HF_HOME, HF_HUB_CACHE, HF_HUB_OFFLINE, HF_TOKEN).
    pub model: String,
    /// Output GGUF file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Weight type of 2-D tensors: f32, f16, bf16, q8_0, or auto (keep the source dtype).
    /// Norms and biases stay F32 as in llama.cpp.
    #[arg(long, default_value = "auto", value_parser = parse_outtype)]
    pub outtype: OutType,
    /// general.name (default: the model folder's name).
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
    /// Skip the provenance statement (OUT.provenance.json: command, parameters,
    /// sha256 of every source file and of the output), which costs one read of each.
    #[arg(long)]
    pub no_provenance: bool,
}

fn parse_outtype(s: &str) -> Result<OutType, String> {
    OutType::parse(s).ok_or_else(|| {
        format!(
            "unknown output type '{s}'; valid: {}",
            OutType::NAMES.join(", ")
        )
    })
}

pub fn run(args: ConvertArgs) -> Result<()> {
    crate::threads::init(args.threads)?;
    if args.output.is_dir() {
        bail!(
            "{}: is a folder; give a file name for the GGUF output",
            args.output.display()
        );
    }
    let folder = crate::model_source::resolve(&args.model)?;
    let quiet = args.quiet || args.json;
    let started = Instant::now();
    let bar = bytes_bar(0, "converting", quiet);
    let options = ConvertOptions {
        outtype: args.outtype,
        model_name: args.name.clone(),
    };
    let provenance = (!args.no_provenance).then(|| {
        crate::provenance::start(
            "convert",
            &args.model,
            &folder,
            vec![(
                "outtype",
                serde_json::json!(format!("{:?}", args.outtype).to_lowercase()),
            )],
            vec![],
        )
    });
    let report = convert_hf_folder(&folder, &args.output, &options, &BarProgress(&bar));
    bar.finish_and_clear();
    let report = report?;
    let provenance = match provenance {
        Some(p) => Some(p.finish(&report.output, Some(report.output_sha256))?),
        None => None,
    };
    let secs = started.elapsed().as_secs_f64();

    let mut by_type = std::collections::BTreeMap::<String, (usize, u64)>::new();
    for t in &report.tensors {
        let e = by_type.entry(t.out_type.name().to_string()).or_default();
        e.0 += 1;
        e.1 += t.out_bytes();
    }
    let fallbacks: Vec<_> = report
        .tensors
        .iter()
        .filter_map(|t| {
            t.fallback_from
                .map(|f| (t.gguf_name.clone(), f, t.out_type))
        })
        .collect();

    if args.json {
        let json = serde_json::json!({
            "output": report.output,
            "architecture": report.architecture,
            "file_type": report.file_type,
            "tensors": report.tensors.len(),
            "input_bytes": report.input_bytes,
            "output_bytes": report.output_bytes,
            "provenance": provenance,
            "seconds": secs,
            "types": by_type.iter().map(|(k, (n, b))| (k.clone(), serde_json::json!({"tensors": n, "bytes": b}))).collect::<serde_json::Map<_, _>>(),
            "fallbacks": fallbacks.iter().map(|(n, f, t)| serde_json::json!({"tensor": n, "wanted": f.name(), "written": t.name()})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json)?);
    } else if !args.quiet {
        eprintln!(
            "wrote {} ({}, {} tensors, {:.1} MB) in {:.2} s ({:.0} MB/s)",
            report.output.display(),
            report.architecture,
            report.tensors.len(),
            report.output_bytes as f64 / 1e6,
            secs,
            report.output_bytes as f64 / 1e6 / secs.max(1e-9),
        );
        for (ty, (n, bytes)) in &by_type {
            eprintln!("  {ty:>6}: {n:4} tensors, {:9.1} MB", *bytes as f64 / 1e6);
        }
        if let Some(p) = &provenance {
            eprintln!("  provenance: {}", p.display());
        }
        for (name, wanted, written) in &fallbacks {
            eprintln!("  note: {name}: row length does not fit {wanted}; written as {written}");
        }
    }
    Ok(())
}
