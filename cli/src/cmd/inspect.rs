//! `quern inspect`: metadata and tensor table of a GGUF file or a safetensors model.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;
use quern_formats::gguf::{GgufFile, Value};
use quern_formats::safetensors::SafetensorsModel;
use serde_json::{json, Map};

/// Show a model file's metadata and tensors (name, type, shape, bytes).
///
/// FILE may be a GGUF file, a .safetensors file, or a Hugging Face folder.
/// With --json, arrays longer than 64 items are summarised as
/// {"array_of": TYPE, "len": N} unless --full is given.
#[derive(Args)]
pub struct InspectArgs {
    /// GGUF file, .safetensors file, or model folder.
    pub path: PathBuf,
    /// Machine-readable output on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print arrays in full (tokenizer vocabularies can be large).
    #[arg(long)]
    pub full: bool,
}

const SHORT_ARRAY: usize = 64;

pub fn run(args: InspectArgs) -> Result<()> {
    let path = &args.path;
    let is_gguf = path.is_file() && has_gguf_magic(path)?;
    if is_gguf {
        let file = GgufFile::open(path)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&gguf_json(&file, args.full))?
            );
        } else {
            print_gguf(&file);
        }
    } else {
        let model = SafetensorsModel::open(path)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&safetensors_json(path, &model))?
            );
        } else {
            print_safetensors(path, &model);
        }
    }
    Ok(())
}

fn has_gguf_magic(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let n = f
        .read(&mut magic)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    Ok(n == 4 && &magic == b"GGUF")
}

fn value_json(v: &Value, full: bool) -> serde_json::Value {
    match v {
        Value::U8(x) => json!(x),
        Value::I8(x) => json!(x),
        Value::U16(x) => json!(x),
        Value::I16(x) => json!(x),
        Value::U32(x) => json!(x),
        Value::I32(x) => json!(x),
        Value::U64(x) => json!(x),
        Value::I64(x) => json!(x),
        Value::F32(x) => json!(x),
        Value::F64(x) => json!(x),
        Value::Bool(x) => json!(x),
        Value::String(s) => json!(s),
        Value::Array(ty, items) => {
            if !full && items.len() > SHORT_ARRAY {
                json!({"array_of": format!("{ty:?}"), "len": items.len()})
            } else {
                serde_json::Value::Array(items.iter().map(|i| value_json(i, full)).collect())
            }
        }
    }
}

fn gguf_json(file: &GgufFile, full: bool) -> serde_json::Value {
    let metadata: Map<String, serde_json::Value> = file
        .metadata()
        .iter()
        .map(|(k, v)| (k.clone(), value_json(v, full)))
        .collect();
    let tensors: Vec<_> = file
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.ggml_type.name(),
                "shape": t.shape,
                "bytes": t.n_bytes(),
                "offset": file.data_offset() + t.offset,
            })
        })
        .collect();
    json!({
        "format": "gguf",
        "path": file.path(),
        "version": file.version(),
        "alignment": file.alignment(),
        "metadata": metadata,
        "tensors": tensors,
        "total_tensor_bytes": file.tensors().iter().map(|t| t.n_bytes()).sum::<u64>(),
    })
}

fn print_gguf(file: &GgufFile) {
    println!(
        "{}: GGUF v{}, alignment {}, {} metadata keys, {} tensors",
        file.path().display(),
        file.version(),
        file.alignment(),
        file.metadata().len(),
        file.tensors().len()
    );
    println!();
    for (k, v) in file.metadata() {
        let mut text = v.to_string();
        if text.len() > 100 {
            let cut = (0..=100)
                .rev()
                .find(|&i| text.is_char_boundary(i))
                .unwrap_or(0);
            text.truncate(cut);
            text.push('…');
        }
        println!("  {k:48} {}", text.replace('\n', "\\n"));
    }
    println!();
    let rows: Vec<[String; 4]> = file
        .tensors()
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.ggml_type.name().to_string(),
                format!("{:?}", t.shape),
                t.n_bytes().to_string(),
            ]
        })
        .collect();
    print_table(["tensor", "type", "shape (ggml order)", "bytes"], &rows);
    let total: u64 = file.tensors().iter().map(|t| t.n_bytes()).sum();
    println!("total tensor bytes: {total} ({:.1} MB)", total as f64 / 1e6);
}

fn safetensors_json(path: &Path, model: &SafetensorsModel) -> serde_json::Value {
    let config = std::fs::read_to_string(path.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok());
    let tensors: Vec<_> = model
        .tensors()
        .iter()
        .map(|t| {
            json!({
                "name": t.name,
                "type": t.dtype.to_string(),
                "shape": t.shape,
                "bytes": t.end - t.start,
                "file": model.file_path(t).file_name().map(|n| n.to_string_lossy().into_owned()),
            })
        })
        .collect();
    json!({
        "format": "safetensors",
        "path": path,
        "files": model.files(),
        "config": config,
        "tensors": tensors,
        "total_tensor_bytes": model.total_bytes(),
    })
}

fn print_safetensors(path: &Path, model: &SafetensorsModel) {
    println!(
        "{}: safetensors, {} file(s), {} tensors",
        path.display(),
        model.files().len(),
        model.tensors().len()
    );
    if let Some(arch) = std::fs::read_to_string(path.join("config.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
        .and_then(|c| {
            c["architectures"]
                .get(0)
                .and_then(|a| a.as_str())
                .map(String::from)
        })
    {
        println!("architecture: {arch}");
    }
    println!();
    let rows: Vec<[String; 4]> = model
        .tensors()
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.dtype.to_string(),
                format!("{:?}", t.shape),
                (t.end - t.start).to_string(),
            ]
        })
        .collect();
    print_table(["tensor", "dtype", "shape", "bytes"], &rows);
    println!(
        "total tensor bytes: {} ({:.1} MB)",
        model.total_bytes(),
        model.total_bytes() as f64 / 1e6
    );
}

fn print_table(header: [&str; 4], rows: &[[String; 4]]) {
    let mut width = header.map(str::len);
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    println!(
        "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}",
        header[0],
        header[1],
        header[2],
        header[3],
        w0 = width[0],
        w1 = width[1],
        w2 = width[2],
        w3 = width[3]
    );
    for r in rows {
        println!(
            "{:<w0$}  {:<w1$}  {:<w2$}  {:>w3$}",
            r[0],
            r[1],
            r[2],
            r[3],
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        );
    }
}
