//! SentencePiece-style BPE over a GGUF `llama` vocabulary (tokens and scores),
//! as llama.cpp tokenises such models: spaces become "▁", a "▁" is put before
//! each run of text between special tokens (when the vocabulary asks for it),
//! then adjacent pieces are merged, the highest-scoring merge
//! that forms a vocabulary token first (the leftmost on ties), and what is still
//! not a token falls back to its bytes (`<0xXX>` tokens).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

pub struct Spm {
    ids: HashMap<String, u32>,
    scores: Vec<f32>,
    /// `<0xXX>` token of each byte, where the vocabulary has one.
    bytes: [Option<u32>; 256],
    unk: Option<u32>,
    add_space_prefix: bool,
}

/// A candidate merge of the symbols at `left` and its right neighbour.
struct Bigram {
    score: f32,
    left: usize,
    /// The merged text's length, to notice a symbol that changed since.
    len: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Higher score first, then the leftmost.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score
            .total_cmp(&o.score)
            .then_with(|| o.left.cmp(&self.left))
    }
}

/// A run of the text: bytes `start..start + len`, linked to its neighbours.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

impl Spm {
    pub fn new(
        tokens: &[String],
        scores: Vec<f32>,
        unk: Option<u32>,
        add_space_prefix: bool,
    ) -> Spm {
        let mut ids = HashMap::with_capacity(tokens.len());
        let mut bytes = [None; 256];
        for (i, t) in tokens.iter().enumerate() {
            ids.entry(t.clone()).or_insert(i as u32);
            if let Some(b) = byte_token(t) {
                bytes[b as usize].get_or_insert(i as u32);
            }
        }
        Spm {
            ids,
            scores,
            bytes,
            unk,
            add_space_prefix,
        }
    }

    /// Appends the ids of plain `text` (no special tokens in it).
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let mut s = String::with_capacity(text.len() + 3);
        if self.add_space_prefix {
            s.push('\u{2581}');
        }
        for ch in text.chars() {
            s.push(if ch == ' ' { '\u{2581}' } else { ch });
        }
        if s.is_empty() {
            return;
        }
        let mut syms: Vec<Symbol> = Vec::new();
        for (i, (start, ch)) in s.char_indices().enumerate() {
            syms.push(Symbol {
                start,
                len: ch.len_utf8(),
                prev: i.checked_sub(1),
                next: Some(i + 1),
            });
        }
        let n = syms.len();
        syms[n - 1].next = None;
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            self.push_bigram(&s, &syms, i, &mut heap);
        }
        while let Some(b) = heap.pop() {
            let l = syms[b.left];
            let Some(r) = l.next else { continue };
            // Stale: one side was merged away or grew since the bigram was made.
            if l.len == 0 || syms[r].len == 0 || l.len + syms[r].len != b.len {
                continue;
            }
            syms[b.left].len += syms[r].len;
            syms[b.left].next = syms[r].next;
            syms[r].len = 0;
            if let Some(nn) = syms[r].next {
                syms[nn].prev = Some(b.left);
            }
            if let Some(p) = syms[b.left].prev {
                self.push_bigram(&s, &syms, p, &mut heap);
            }
            self.push_bigram(&s, &syms, b.left, &mut heap);
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let sym = syms[k];
            let piece = &s[sym.start..sym.start + sym.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &byte in piece.as_bytes() {
                        if let Some(id) = self.bytes[byte as usize].or(self.unk) {
                            out.push(id);
                        }
                    }
                }
            }
            i = sym.next;
        }
    }

    fn push_bigram(&self, s: &str, syms: &[Symbol], left: usize, heap: &mut BinaryHeap<Bigram>) {
        let l = syms[left];
        let Some(r) = l.next else { return };
        let r = syms[r];
        let text = &s[l.start..r.start + r.len];
        if let Some(&id) = self.ids.get(text) {
            heap.push(Bigram {
                score: self.scores.get(id as usize).copied().unwrap_or(0.0),
                left,
                len: text.len(),
            });
        }
    }
}

/// The byte a `<0xXX>` token stands for.
pub fn byte_token(t: &str) -> Option<u8> {
    let hex = t.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The bytes a vocabulary piece stands for ("▁" is a space).
pub fn piece_bytes(t: &str) -> Vec<u8> {
    match byte_token(t) {
        Some(b) => vec![b],
        None => t.replace('\u{2581}', " ").into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab() -> Spm {
        let toks: Vec<String> = [
            "<unk>",
            "\u{2581}",
            "a",
            "b",
            "ab",
            "\u{2581}ab",
            "<0x63>",
            "bb",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let scores = vec![0.0, -1.0, -2.0, -2.0, -0.5, -0.1, 0.0, -0.2];
        Spm::new(&toks, scores, Some(0), true)
    }

    #[test]
    fn merges_best_score_first_and_falls_back_to_bytes() {
        let v = vocab();
        let mut out = Vec::new();
        v.encode_into("ab c", &mut out);
        // "▁ab" (▁ + ab), "▁" (the space), "c" → <0x63>.
        assert_eq!(out, vec![5, 1, 6]);
        out.clear();
        // "▁abb": "bb" (-0.2) outscores "ab" (-0.5), so b+b merges first and
        // "a" + "bb" forms no token; "▁" + "a" is none either.
        v.encode_into("abb", &mut out);
        assert_eq!(out, vec![1, 2, 7]);
        out.clear();
        // A character with no token and no byte token: <unk> per byte (after
        // the "▁" prefix).
        v.encode_into("é", &mut out);
        assert_eq!(out, vec![1, 0, 0]);
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(byte_token("<0x0A>"), Some(10));
        assert_eq!(byte_token("<0x0>"), None);
        assert_eq!(piece_bytes("\u{2581}the"), b" the".to_vec());
    }
}
