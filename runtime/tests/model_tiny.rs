//! The forward pass on tiny generated models (Llama, Qwen2 with biases, Qwen3
//! with q/k norms, Llama 3 rope scaling) against a float64 reference written
//! here from the Hugging Face definitions, on the unconverted weights: so the
//! check covers the converter's q/k permutation and our rope mode together.

use std::collections::HashMap;
use std::path::Path;

mod common;

use quern_formats::testutil::TinyModel;
use quern_quant::pipeline::{NoProgress, OutType};
use quern_runtime::{CpuBackend, Model};

struct Reference {
    m: TinyModel,
    w: HashMap<String, Vec<f64>>,
    inv_freq: Vec<f64>,
}

impl Reference {
    fn new(m: &TinyModel) -> Reference {
        let w = m
            .weights()
            .into_iter()
            .map(|(n, _, v)| (n, v.into_iter().map(|x| x as f64).collect()))
            .collect();
        let hd = m.head_dim;
        let mut inv_freq: Vec<f64> = (0..hd / 2)
            .map(|i| 10000f64.powf(-((2 * i) as f64) / hd as f64))
            .collect();
        if m.llama3_rope {
            // transformers' llama3 rule (factor 8, low 1, high 4, original context 64).
            let (factor, low, high, orig) = (8.0, 1.0, 4.0, 64.0);
            for f in inv_freq.iter_mut() {
                let wavelen = 2.0 * std::f64::consts::PI / *f;
                if wavelen > orig / low {
                    *f /= factor;
                } else if wavelen >= orig / high {
                    let smooth = (orig / wavelen - low) / (high - low);
                    *f = (1.0 - smooth) * *f / factor + smooth * *f;
                }
            }
        }
        Reference {
            m: m.clone(),
            w,
            inv_freq,
        }
    }

    fn t(&self, name: &str) -> &[f64] {
        &self.w[name]
    }

    /// y = W x for a row-major `[out, in]` matrix.
    fn linear(&self, name: &str, x: &[f64]) -> Vec<f64> {
        let w = self.t(name);
        w.chunks_exact(x.len())
            .map(|row| row.iter().zip(x).map(|(a, b)| a * b).sum())
            .collect()
    }

    fn rms(x: &[f64], g: &[f64]) -> Vec<f64> {
        let ms = x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64;
        let inv = 1.0 / (ms + 1e-5).sqrt();
        x.iter().zip(g).map(|(a, b)| a * inv * b).collect()
    }

    /// HF rotary embedding: rotate the two halves of each head.
    fn rope(&self, x: &mut [f64], pos: usize) {
        let hd = self.m.head_dim;
        for head in x.chunks_exact_mut(hd) {
            for i in 0..hd / 2 {
                let (s, c) = (pos as f64 * self.inv_freq[i]).sin_cos();
                let (a, b) = (head[i], head[i + hd / 2]);
                head[i] = a * c - b * s;
                head[i + hd / 2] = b * c + a * s;
            }
        }
    }

    /// Logits of every position of `tokens`.
    fn forward(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let m = &self.m;
        let (h, hd) = (m.hidden, m.head_dim);
        let emb = self.t("model.embed_tokens.weight");
        let mut xs: Vec<Vec<f64>> = tokens
            .iter()
            .map(|&t| emb[t as usize * h..(t as usize + 1) * h].to_vec())
            .collect();
        let qwen2 = m.architecture == "Qwen2ForCausalLM";
        let qwen3 = m.architecture == "Qwen3ForCausalLM";
        for l in 0..m.layers {
            let p = format!("model.layers.{l}");
            let (mut ks, mut vs, mut qs) = (vec![], vec![], vec![]);
            for (pos, x) in xs.iter().enumerate() {
                let xn = Self::rms(x, self.t(&format!("{p}.input_layernorm.weight")));
                let mut q = self.linear(&format!("{p}.self_attn.q_proj.weight"), &xn);
                let mut k = self.linear(&format!("{p}.self_attn.k_proj.weight"), &xn);
                let mut v = self.linear(&format!("{p}.self_attn.v_proj.weight"), &xn);
                if qwen2 {
                    for (y, name) in [(&mut q, "q"), (&mut k, "k"), (&mut v, "v")] {
                        let b = self.t(&format!("{p}.self_attn.{name}_proj.bias"));
                        y.iter_mut().zip(b).for_each(|(a, c)| *a += c);
                    }
                }
                if qwen3 {
                    let qn = self.t(&format!("{p}.self_attn.q_norm.weight"));
                    let kn = self.t(&format!("{p}.self_attn.k_norm.weight"));
                    q = q.chunks_exact(hd).flat_map(|c| Self::rms(c, qn)).collect();
                    k = k.chunks_exact(hd).flat_map(|c| Self::rms(c, kn)).collect();
                }
                self.rope(&mut q, pos);
                self.rope(&mut k, pos);
                qs.push(q);
                ks.push(k);
                vs.push(v);
            }
            let group = m.heads / m.kv_heads;
            for (pos, x) in xs.iter_mut().enumerate() {
                let mut attn = vec![0f64; m.heads * hd];
                for head in 0..m.heads {
                    let kvh = head / group;
                    let q = &qs[pos][head * hd..(head + 1) * hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|j| {
                            let k = &ks[j][kvh * hd..(kvh + 1) * hd];
                            q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let max = scores.iter().cloned().fold(f64::MIN, f64::max);
                    let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                    let sum: f64 = e.iter().sum();
                    for (j, ej) in e.iter().enumerate() {
                        for d in 0..hd {
                            attn[head * hd + d] += ej / sum * vs[j][kvh * hd + d];
                        }
                    }
                }
                let o = self.linear(&format!("{p}.self_attn.o_proj.weight"), &attn);
                x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
                let xn = Self::rms(x, self.t(&format!("{p}.post_attention_layernorm.weight")));
                let g = self.linear(&format!("{p}.mlp.gate_proj.weight"), &xn);
                let u = self.linear(&format!("{p}.mlp.up_proj.weight"), &xn);
                let hmid: Vec<f64> = g
                    .iter()
                    .zip(&u)
                    .map(|(g, u)| g / (1.0 + (-g).exp()) * u)
                    .collect();
                let d = self.linear(&format!("{p}.mlp.down_proj.weight"), &hmid);
                x.iter_mut().zip(&d).for_each(|(a, b)| *a += b);
            }
        }
        let head = if m.tied {
            "model.embed_tokens.weight"
        } else {
            "lm_head.weight"
        };
        xs.iter()
            .map(|x| self.linear(head, &Self::rms(x, self.t("model.norm.weight"))))
            .collect()
    }
}

fn convert(m: &TinyModel, dir: &Path, outtype: OutType) -> std::path::PathBuf {
    common::tiny_gguf(m, dir, outtype)
}

fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    let num: f64 = got
        .iter()
        .zip(want)
        .map(|(&a, b)| (a as f64 - b).powi(2))
        .sum();
    let den: f64 = want.iter().map(|b| b * b).sum();
    (num / den).sqrt()
}

/// Prefill of the first five tokens (all logits), then decode of the rest one at a
/// time, each position against the reference.
fn check(m: TinyModel, outtype: OutType, tol: f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = convert(&m, dir.path(), outtype);
    compare(&m, &path, &Reference::new(&m), &format!("{outtype:?}"), tol);
}

/// The Hugging Face folder itself, no conversion: Hugging Face's q/k order and
/// the folder's own dtype.
fn check_folder(m: TinyModel, tol: f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let folder = dir.path().join("hf");
    m.write(&folder).expect("write tiny model");
    compare(
        &m,
        &folder,
        &Reference::new(&m),
        &format!("{} folder", m.dtype),
        tol,
    );
}

fn compare(m: &TinyModel, path: &Path, reference: &Reference, what: &str, tol: f64) {
    let model = Model::open(path, Box::new(CpuBackend::new())).expect("open");
    let tokens: Vec<u32> = vec![5, 77, 260, 3, 131, 19, 200, 42, 9, 64, 128];
    let want = reference.forward(&tokens);
    let vocab = model.config.vocab;
    assert_eq!(vocab, m.vocab_size());
    let mut session = model.session(64);
    let pre = model
        .forward(&mut session, &tokens[..5], true)
        .expect("prefill");
    let mut got: Vec<Vec<f32>> = pre.chunks_exact(vocab).map(|c| c.to_vec()).collect();
    for &t in &tokens[5..] {
        got.push(model.forward(&mut session, &[t], false).expect("decode"));
    }
    for (pos, (g, w)) in got.iter().zip(&want).enumerate() {
        let e = rel_err(g, w);
        assert!(
            e < tol,
            "{} {what} position {pos}: relative error {e}",
            m.architecture
        );
    }
}

#[test]
fn llama_f32_matches_reference() {
    check(
        TinyModel {
            dtype: "f32",
            ..TinyModel::llama()
        },
        OutType::F32,
        1e-4,
    );
}

#[test]
fn llama3_rope_scaling_matches_reference() {
    check(
        TinyModel {
            dtype: "f32",
            llama3_rope: true,
            ..TinyModel::llama()
        },
        OutType::F32,
        1e-4,
    );
}

#[test]
fn qwen2_biases_untied_match_reference() {
    check(
        TinyModel {
            dtype: "f32",
            ..TinyModel::qwen2()
        },
        OutType::F32,
        1e-4,
    );
}

#[test]
fn qwen3_qk_norm_matches_reference() {
    check(
        TinyModel {
            dtype: "f32",
            ..TinyModel::qwen3()
        },
        OutType::F32,
        1e-4,
    );
}

#[test]
fn gqa_with_more_groups() {
    check(
        TinyModel {
            dtype: "f32",
            heads: 8,
            kv_heads: 2,
            head_dim: 8,
            ..TinyModel::qwen3()
        },
        OutType::F32,
        1e-4,
    );
}

#[test]
fn bf16_and_q8_0_weights_stay_close() {
    // bf16 storage of bf16 source weights is exact; Q8_0 weights and activations
    // round to 8 bits, so they get a looser bound.
    check(TinyModel::llama(), OutType::Bf16, 1e-2);
    check(TinyModel::qwen2(), OutType::Q8_0, 5e-2);
}

#[test]
fn safetensors_folders_run_as_they_are() {
    // f32 folders: the same bound as f32 GGUFs. Llama covers the unpermuted
    // q/k rows (NeoX rope), Qwen2 biases and an untied head, Llama 3 the
    // generated rope factors.
    for m in [
        TinyModel::llama(),
        TinyModel::qwen2(),
        TinyModel::qwen3(),
        TinyModel {
            llama3_rope: true,
            ..TinyModel::llama()
        },
    ] {
        check_folder(TinyModel { dtype: "f32", ..m }, 1e-4);
    }
    // bf16 folders are used as stored; the reference holds the unrounded
    // weights, so bf16's rounding of them is what the bound allows for (as for
    // bf16 GGUFs above).
    check_folder(TinyModel::llama(), 1e-2);
}

#[test]
fn awq_folders_match_their_dequantised_weights() {
    use quern_quant::pipeline::{quantize_awq, AwqOptions};
    for m in [TinyModel::llama(), TinyModel::qwen2()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("hf");
        m.write(&folder).expect("write tiny model");
        let awq = dir.path().join("awq");
        quantize_awq(&folder, &awq, &AwqOptions { group_size: 32 }, &NoProgress).expect("awq");
        // The reference runs on the AWQ folder's own weights, dequantised by the
        // formats crate's reader of the published layout.
        let st = quern_formats::safetensors::SafetensorsModel::open(&awq).expect("open awq");
        let mut reference = Reference::new(&m);
        let mut replaced = 0;
        for t in st.tensors() {
            let Some(base) = t.name.strip_suffix(".qweight") else {
                continue;
            };
            let ints = |name: String| -> Vec<i32> {
                let bytes = st.data(st.get(&name).expect("tensor"));
                bytes
                    .chunks_exact(4)
                    .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            let scales = st.get(&format!("{base}.scales")).expect("scales");
            let linear = quern_formats::awq::AwqTensors {
                qweight: ints(format!("{base}.qweight")),
                qzeros: ints(format!("{base}.qzeros")),
                scales: st
                    .data(scales)
                    .chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                    .collect(),
                in_features: t.shape[0] as usize,
                out_features: scales.shape[1] as usize,
                group: 32,
            };
            let w = quern_formats::awq::dequantize_linear(&linear).expect("dequantize");
            reference.w.insert(
                format!("{base}.weight"),
                w.into_iter().map(f64::from).collect(),
            );
            replaced += 1;
        }
        assert_eq!(replaced, 7 * m.layers, "{}", m.architecture);
        // Only the activations' 8-bit rounding separates the two.
        compare(&m, &awq, &reference, "awq", 3e-2);
    }
}

#[test]
fn context_overflow_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = convert(&TinyModel::llama(), dir.path(), OutType::F32);
    let model = Model::open(&path, Box::new(CpuBackend::new())).expect("open");
    let mut session = model.session(4);
    let err = model
        .forward(&mut session, &[1, 2, 3, 4, 5], false)
        .expect_err("too long");
    assert!(err.to_string().contains("context"), "{err}");
    let err = model
        .forward(&mut session, &[100_000], false)
        .expect_err("bad id");
    assert!(err.to_string().contains("100000"), "{err}");
}

/// Records what the forward pass reports.
#[derive(Default)]
struct Recorder {
    /// tensor name → (width of its input, tokens seen)
    inputs: HashMap<String, (usize, usize)>,
    blocks: Vec<(usize, Vec<f32>)>,
}

impl quern_runtime::Observer for Recorder {
    fn linear_input(&mut self, tensors: &[&str], x: &[f32], n_tokens: usize) {
        assert!(x.iter().all(|v| v.is_finite()));
        for t in tensors {
            let e = self.inputs.entry(t.to_string()).or_insert((0, 0));
            e.0 = x.len() / n_tokens;
            e.1 += n_tokens;
        }
    }

    fn block_input(&mut self, layer: usize, x: &[f32], _n_tokens: usize) {
        self.blocks.push((layer, x.to_vec()));
    }
}

#[test]
fn observers_see_every_matrix_input_once_per_token() {
    let m = TinyModel::qwen2();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = convert(&m, dir.path(), OutType::F32);
    let model = Model::open(&path, Box::new(CpuBackend::new())).expect("open");
    let gguf = model.gguf().expect("a GGUF");
    let tokens = [5u32, 77, 260, 3, 131, 19];
    let mut plain_session = model.session(16);
    let plain = model
        .forward(&mut plain_session, &tokens, true)
        .expect("plain");
    let mut rec = Recorder::default();
    let mut session = model.session(16);
    let observed = model
        .forward_observed(&mut session, &tokens, true, &mut rec)
        .expect("observed");
    assert_eq!(plain, observed, "observing changes nothing");

    // Every matrix the model multiplies by (all 2-D tensors but the looked-up
    // embedding), each with an input as wide as its columns, for every token.
    let mut want: Vec<(String, usize)> = gguf
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2 && t.name != "token_embd.weight")
        .map(|t| (t.name.clone(), t.shape[0] as usize))
        .collect();
    want.sort();
    let mut got: Vec<(String, usize)> = rec
        .inputs
        .iter()
        .map(|(n, &(w, seen))| {
            assert_eq!(seen, tokens.len(), "{n}: tokens seen");
            (n.clone(), w)
        })
        .collect();
    got.sort();
    assert_eq!(got, want);

    // Block 0's input is the embedding rows (stored as bf16: within its rounding);
    // one report per block and one after the last.
    let layers: Vec<usize> = rec.blocks.iter().map(|b| b.0).collect();
    assert_eq!(layers, (0..=m.layers).collect::<Vec<_>>());
    let embd = &Reference::new(&m).w["model.embed_tokens.weight"];
    for (t, &id) in tokens.iter().enumerate() {
        let row = &embd[id as usize * m.hidden..][..m.hidden];
        let seen = &rec.blocks[0].1[t * m.hidden..][..m.hidden];
        for (a, b) in seen.iter().zip(row) {
            assert!((*a as f64 - b).abs() <= b.abs() / 256.0, "{a} vs {b}");
        }
    }
}
