//! What a model is (name, architecture, format, size, precision, quantisation),
//! read from a GGUF header or a Hugging Face folder, for the ModelPack config.

use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelInfo {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// `gguf` or `safetensors`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameters: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
}

/// ModelPack `paramSize`: a count with at most one decimal and a scale letter.
pub fn param_size(n: u64) -> String {
    let (div, unit) = match n {
        n if n >= 1_000_000_000_000 => (1e12, "T"),
        n if n >= 1_000_000_000 => (1e9, "B"),
        n if n >= 1_000_000 => (1e6, "M"),
        n if n >= 1_000 => (1e3, "K"),
        _ => return n.to_string(),
    };
    let v = n as f64 / div;
    let s = format!("{v:.1}");
    format!("{}{unit}", s.strip_suffix(".0").unwrap_or(&s))
}

/// Describe a GGUF file from its header; `None` fields where it does not say.
pub fn describe_gguf(path: &Path, name: &str) -> ModelInfo {
    let mut info = ModelInfo {
        name: name.to_string(),
        format: Some("gguf".into()),
        ..Default::default()
    };
    let Ok(g) = quern_formats::gguf::GgufFile::open(path) else {
        return info;
    };
    let s = |k: &str| g.get(k).and_then(|v| v.as_str()).map(str::to_string);
    info.architecture = s("general.architecture");
    info.family = info.architecture.clone();
    if let Some(n) = s("general.name") {
        info.name = n;
    }
    info.parameters = Some(g.tensors().iter().map(|t| t.n_elements()).sum());
    let file_type = g.get("general.file_type").and_then(|v| v.as_u64());
    let (precision, quant) = gguf_file_type(file_type, &g);
    info.precision = precision;
    info.quantization = quant;
    info
}

/// llama.cpp's `general.file_type` ids for the types quern writes; else the
/// most common tensor type decides.
fn gguf_file_type(
    id: Option<u64>,
    g: &quern_formats::gguf::GgufFile,
) -> (Option<String>, Option<String>) {
    let named = match id {
        Some(0) => Some("F32"),
        Some(1) => Some("F16"),
        Some(2) => Some("Q4_0"),
        Some(3) => Some("Q4_1"),
        Some(7) => Some("Q8_0"),
        Some(8) => Some("Q5_0"),
        Some(9) => Some("Q5_1"),
        Some(10) => Some("Q2_K"),
        Some(11) => Some("Q3_K_S"),
        Some(12) => Some("Q3_K_M"),
        Some(13) => Some("Q3_K_L"),
        Some(14) => Some("Q4_K_S"),
        Some(15) => Some("Q4_K_M"),
        Some(16) => Some("Q5_K_S"),
        Some(17) => Some("Q5_K_M"),
        Some(18) => Some("Q6_K"),
        Some(32) => Some("BF16"),
        _ => None,
    };
    let name = named.map(str::to_string).or_else(|| {
        let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
        for t in g.tensors() {
            *counts.entry(t.ggml_type.name().to_string()).or_default() += t.n_elements();
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(k, _)| k.to_uppercase())
    });
    match name.as_deref() {
        Some("F32") => (Some("fp32".into()), None),
        Some("F16") => (Some("fp16".into()), None),
        Some("BF16") => (Some("bf16".into()), None),
        Some(q) => (Some("mixed".into()), Some(q.to_string())),
        None => (None, None),
    }
}

/// Describe a Hugging Face style folder (config.json, *.safetensors).
pub fn describe_folder(dir: &Path, name: &str, files: &[String]) -> ModelInfo {
    let mut info = ModelInfo {
        name: name.to_string(),
        ..Default::default()
    };
    if files.iter().any(|f| f.ends_with(".gguf")) {
        if let Some(f) = files.iter().find(|f| f.ends_with(".gguf")) {
            let mut g = describe_gguf(&dir.join(f), name);
            g.name = name.to_string();
            return g;
        }
    }
    if files.iter().any(|f| f.ends_with(".safetensors")) {
        info.format = Some("safetensors".into());
        let params: u64 = files
            .iter()
            .filter(|f| f.ends_with(".safetensors"))
            .filter_map(|f| safetensors_elements(&dir.join(f)))
            .sum();
        info.parameters = (params > 0).then_some(params);
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("config.json")) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            info.architecture = v["architectures"][0].as_str().map(str::to_string);
            info.family = v["model_type"].as_str().map(str::to_string);
            info.precision = v["torch_dtype"]
                .as_str()
                .or(v["dtype"].as_str())
                .map(|d| match d {
                    "float16" => "fp16".to_string(),
                    "bfloat16" => "bf16".to_string(),
                    "float32" => "fp32".to_string(),
                    other => other.to_string(),
                });
            if let Some(q) = v["quantization_config"]["quant_method"].as_str() {
                let bits = v["quantization_config"]["bits"]
                    .as_u64()
                    .or(v["quantization_config"]["w_bit"].as_u64());
                info.quantization = Some(q.to_string());
                info.precision = bits.map(|b| format!("int{b}")).or(info.precision);
            }
        }
    }
    info
}

/// Elements stored in a safetensors file, from its JSON header (packed
/// quantised tensors count their storage elements, not logical weights).
fn safetensors_elements(path: &Path) -> Option<u64> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return None;
    }
    let mut hdr = vec![0u8; n as usize];
    f.read_exact(&mut hdr).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&hdr).ok()?;
    let total = v
        .as_object()?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .map(|(_, t)| {
            t["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(|d| d.as_u64()).product::<u64>())
                .unwrap_or(0)
        })
        .sum();
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn param_sizes() {
        assert_eq!(param_size(134_515_008), "134.5M");
        assert_eq!(param_size(7_000_000_000), "7B");
        assert_eq!(param_size(999), "999");
    }
}
