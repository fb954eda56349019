//! llama-perplexity's chunking: the text is tokenised once (BOS first when the
//! tokenizer adds one), cut into non-overlapping chunks of `n_ctx` tokens, each
//! evaluated from an empty cache with its first token replaced by BOS (when BOS
//! is used); positions `n_ctx/2 .. n_ctx-2` are scored, each predicting the token
//! after it, so every scored token has at least half a context before it.

/// Bad evaluation settings or text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("the text has {tokens} tokens, fewer than one chunk of {n_ctx} (use a longer --text or a smaller --ctx)")]
    TextTooShort { tokens: usize, n_ctx: usize },
    #[error(
        "--ctx {n_ctx} is too small: a chunk must have at least 4 tokens to score its second half"
    )]
    ContextTooSmall { n_ctx: usize },
    #[error("--chunks must be at least 1")]
    ZeroChunks,
}

/// The chunks one evaluation runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkPlan {
    pub n_ctx: usize,
    pub n_chunks: usize,
    /// How many whole chunks the text holds (`n_chunks` is at most this).
    pub available: usize,
    /// The token written over each chunk's first position, when the tokenizer adds BOS.
    pub bos: Option<u32>,
}

impl ChunkPlan {
    /// Plans `max_chunks` chunks (all the text holds when `None`, or when fewer are available).
    pub fn new(
        n_tokens: usize,
        n_ctx: usize,
        max_chunks: Option<usize>,
        bos: Option<u32>,
    ) -> Result<ChunkPlan, EvalError> {
        if n_ctx < 4 {
            return Err(EvalError::ContextTooSmall { n_ctx });
        }
        if max_chunks == Some(0) {
            return Err(EvalError::ZeroChunks);
        }
        let available = n_tokens / n_ctx;
        if available == 0 {
            return Err(EvalError::TextTooShort {
                tokens: n_tokens,
                n_ctx,
            });
        }
        let n_chunks = max_chunks.map_or(available, |m| m.min(available));
        Ok(ChunkPlan {
            n_ctx,
            n_chunks,
            available,
            bos,
        })
    }

    /// The first scored position of a chunk (its logits predict token `first + 1`).
    pub fn first_scored(&self) -> usize {
        self.n_ctx / 2
    }

    /// Scored positions per chunk: `first_scored() .. n_ctx - 1`.
    pub fn scored_per_chunk(&self) -> usize {
        self.n_ctx - 1 - self.first_scored()
    }

    pub fn scored_total(&self) -> usize {
        self.scored_per_chunk() * self.n_chunks
    }

    /// The tokens of chunk `i` as the models see them. `tokens` is the whole text
    /// (with the leading BOS when one is used); `i < n_chunks`.
    pub fn chunk(&self, tokens: &[u32], i: usize) -> Vec<u32> {
        let mut c = tokens[i * self.n_ctx..(i + 1) * self.n_ctx].to_vec();
        if let Some(bos) = self.bos {
            c[0] = bos;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_are_non_overlapping_and_second_half_is_scored() {
        let tokens: Vec<u32> = (0..1100).collect();
        let p = ChunkPlan::new(tokens.len(), 512, None, None).unwrap();
        assert_eq!((p.available, p.n_chunks), (2, 2));
        assert_eq!(p.first_scored(), 256);
        assert_eq!(p.scored_per_chunk(), 255);
        assert_eq!(p.scored_total(), 510);
        assert_eq!(p.chunk(&tokens, 1)[0], 512);
        assert_eq!(p.chunk(&tokens, 1)[511], 1023);
    }

    #[test]
    fn bos_replaces_each_chunks_first_token() {
        let tokens: Vec<u32> = (10..30).collect();
        let p = ChunkPlan::new(tokens.len(), 8, Some(5), Some(7)).unwrap();
        assert_eq!(p.n_chunks, 2, "capped at the 2 chunks the text holds");
        assert_eq!(p.chunk(&tokens, 1), vec![7, 19, 20, 21, 22, 23, 24, 25]);
    }

    #[test]
    fn bad_settings() {
        assert_eq!(
            ChunkPlan::new(100, 512, None, None),
            Err(EvalError::TextTooShort {
                tokens: 100,
                n_ctx: 512
            })
        );
        assert_eq!(
            ChunkPlan::new(100, 2, None, None),
            Err(EvalError::ContextTooSmall { n_ctx: 2 })
        );
        assert_eq!(
            ChunkPlan::new(100, 8, Some(0), None),
            Err(EvalError::ZeroChunks)
        );
    }
}
