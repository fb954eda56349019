//! One planned output tensor: its GGUF name, shape, type and where its data comes from.

use quern_formats::GgmlType;

/// Where an output tensor's values come from.
#[derive(Debug, Clone)]
pub enum TensorSource {
    /// A tensor of the input, by index into its tensor list; `permute_heads` is
    /// `Some(n_head)` when llama.cpp's q/k row permutation applies.
    Input {
        index: usize,
        permute_heads: Option<usize>,
    },
    /// Values computed by the converter (e.g. `rope_freqs` for Llama 3 rope scaling).
    Computed(Vec<f32>),
}

/// One tensor of the output file.
#[derive(Debug, Clone)]
pub struct TensorPlan {
    pub gguf_name: String,
    /// ggml order: `shape[0]` is the row length.
    pub shape: Vec<u64>,
    pub out_type: GgmlType,
    /// The type asked for when the row length forced another (reported to the user).
    pub fallback_from: Option<GgmlType>,
    pub source: TensorSource,
}

impl TensorPlan {
    pub fn n_elements(&self) -> u64 {
        self.shape.iter().product()
    }

    pub fn row_len(&self) -> usize {
        self.shape.first().copied().unwrap_or(1) as usize
    }

    /// Output bytes; the plan was built so the row length fits the type's block.
    pub fn out_bytes(&self) -> u64 {
        self.out_type.bytes_for(self.n_elements()).unwrap_or(0)
    }
}

/// The order llama.cpp's files use and our runtime reads best: embeddings, then
/// blocks in numeric order, then the output head.
pub fn sort_key(gguf_name: &str) -> (u8, u64, String) {
    if let Some(rest) = gguf_name.strip_prefix("blk.") {
        let layer = rest
            .split('.')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(u64::MAX);
        return (1, layer, gguf_name.to_string());
    }
    let group = if gguf_name.starts_with("output") {
        2
    } else {
        0
    };
    (group, 0, gguf_name.to_string())
}
