//! The device-resident forward pass (`quern_runtime::cuda::decode`) on tiny
//! generated models against the CPU backend's `Model::forward`: a prefill of
//! five tokens (every token's logits), then single-token decode steps (the CUDA
//! graph), the same steps without the graph, greedy argmax on the device, and a
//! prefill longer than one device batch. Every activation buffer and the KV
//! cache are poisoned with NaN beforehand (the backend's poison switch), so an
//! element a kernel skips shows as a non-finite logit. Without a CUDA device
//! the tests print why and pass, unless `QUERN_REQUIRE_CUDA=1`.

mod common;

use std::path::{Path, PathBuf};

use quern_formats::testutil::TinyModel;
use quern_quant::mix::Mix;
use quern_quant::pipeline::{quantize, NoProgress, OutType, QuantizeOptions};
use quern_runtime::cuda::decode::{DeviceModel, Fuse, MIN_PREFILL_BATCH};
use quern_runtime::cuda::l2hint::L2Budget;
use quern_runtime::sampler::argmax;
use quern_runtime::{CpuBackend, Model};

const TOKENS: [u32; 11] = [5, 77, 260, 3, 131, 19, 200, 42, 9, 64, 128];

/// Prefill of 5 (all logits), then one token at a time.
fn cpu_logits(model: &Model, tokens: &[u32]) -> Vec<Vec<f32>> {
    let vocab = model.config.vocab;
    let mut s = model.session(128);
    let pre = model.forward(&mut s, &tokens[..5], true).expect("prefill");
    let mut out: Vec<Vec<f32>> = pre.chunks_exact(vocab).map(|c| c.to_vec()).collect();
    for &t in &tokens[5..] {
        out.push(model.forward(&mut s, &[t], false).expect("decode"));
    }
    out
}

fn device_logits(dm: &mut DeviceModel<'_>, vocab: usize, tokens: &[u32]) -> Vec<Vec<f32>> {
    dm.clear();
    let pre = dm.forward(&tokens[..5], true).expect("device prefill");
    assert_eq!(pre.len(), 5 * vocab);
    let mut out: Vec<Vec<f32>> = pre.chunks_exact(vocab).map(|c| c.to_vec()).collect();
    for &t in &tokens[5..] {
        out.push(dm.forward(&[t], false).expect("device decode"));
    }
    assert_eq!(dm.n_past(), tokens.len());
    out
}

fn compare(what: &str, g: &[Vec<f32>], c: &[Vec<f32>], tol: f64) {
    assert_eq!(g.len(), c.len());
    let mut largest = 0f64;
    for (pos, (g, c)) in g.iter().zip(c).enumerate() {
        assert_eq!(g.len(), c.len(), "{what} position {pos}: logits length");
        assert!(
            g.iter().all(|v| v.is_finite()),
            "{what} position {pos}: non-finite logits (an unwritten element?)"
        );
        let e = common::rel_err(g, c);
        assert!(
            e < tol,
            "{what} position {pos}: device vs cpu relative error {e} (tolerance {tol})"
        );
        largest = largest.max(e);
    }
    eprintln!("{what}: largest device vs cpu relative error {largest:.3e} (tolerance {tol:.0e})");
}

/// The tolerance of the 4- and 5-bit formats against the CPU: at 8-bit
/// activation codes a float-order difference can flip a code (a whole step),
/// at 16 bits (`QUERN_ACT_BITS=16`, both backends) a step is 256 times smaller.
fn low_bit_tol() -> f64 {
    match quern_runtime::precision::act_bits() {
        quern_runtime::precision::ActBits::Sixteen => 2e-3,
        quern_runtime::precision::ActBits::Eight => 3e-2,
    }
}

fn check(what: &str, path: &Path, tol: f64) {
    check_on(what, path, tol, false);
}

/// [`check`], with Q5_0 matrices in the compact 4-bit layout where they fit
/// when `compact` (and then at least one must).
fn check_on(what: &str, path: &Path, tol: f64, compact: bool) {
    let Some(be) = common::cuda_backend() else {
        return;
    };
    be.set_compact_q5_0(compact);
    let gpu = Model::open(path, Box::new(be)).expect("open on cuda");
    let cpu = Model::open(path, Box::new(CpuBackend::new())).expect("open on cpu");
    let vocab = cpu.config.vocab;
    let want = cpu_logits(&cpu, &TOKENS);

    let mut dm = DeviceModel::new(&gpu, 128).expect("device model");
    if compact {
        let be = quern_runtime::cuda::decode::cuda_backend(&gpu).expect("cuda backend");
        assert!(
            be.compact_uploads() > 0,
            "{what}: no matrix took the compact layout"
        );
        // 4-bit codes and a word per group read fewer bytes than Q5_0's
        // repacked layout (codes, high bits and d: 24 bytes per 32 weights).
        let Some(plain_be) = common::cuda_backend() else {
            return;
        };
        plain_be.set_compact_q5_0(false);
        let plain = Model::open(path, Box::new(plain_be)).expect("open on cuda");
        let repacked = DeviceModel::new(&plain, 128).expect("device model");
        assert!(
            dm.weight_bytes_read() < repacked.weight_bytes_read(),
            "{what}: the compact layout reads {} bytes per token, the repacked one {}",
            dm.weight_bytes_read(),
            repacked.weight_bytes_read()
        );
    }
    assert!(dm.uses_graph() || std::env::var("QUERN_CUDA_GRAPH").as_deref() == Ok("0"));
    let graphed = device_logits(&mut dm, vocab, &TOKENS);
    compare(&format!("{what} (graph)"), &graphed, &want, tol);
    // A second conversation on the same cache: clear() must reset it fully.
    let again = device_logits(&mut dm, vocab, &TOKENS);
    compare(&format!("{what} (second run)"), &again, &want, tol);

    // The same kernels launched one by one give the same numbers.
    let mut eager = DeviceModel::new(&gpu, 128).expect("device model");
    eager.set_graph(false);
    let direct = device_logits(&mut eager, vocab, &TOKENS);
    for (pos, (a, b)) in direct.iter().zip(&graphed).enumerate() {
        let e = common::rel_err(a, b);
        assert!(
            e < 1e-6,
            "{what} position {pos}: graph vs direct launches differ by {e}"
        );
    }

    // The activation quantisers fused into the kernels before the products
    // make the codes the separate quantiser launches make, bit for bit: one
    // token at a time (GEMV kernels only, deterministic) the logits with every
    // quantiser fused, with the default choice and with none are identical;
    // the prefill of 5 (tensor-core kernels, whose split products add their
    // parts atomically, in no fixed order) within 1e-6, as graph against direct
    // launches above.
    let steps = |m: &mut DeviceModel<'_>| -> Vec<Vec<f32>> {
        m.clear();
        TOKENS
            .iter()
            .map(|&t| m.forward(&[t], false).expect("device step"))
            .collect()
    };
    let mut plain = DeviceModel::new(&gpu, 128).expect("device model");
    plain.set_fuse(Fuse::Off);
    let separate = steps(&mut plain);
    for f in [Fuse::All, Fuse::Default] {
        let mut fused = DeviceModel::new(&gpu, 128).expect("device model");
        fused.set_fuse(f);
        for (pos, (a, b)) in steps(&mut fused).iter().zip(&separate).enumerate() {
            assert!(
                a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
                "{what} position {pos}: quantisers fused ({f:?}) and separate differ (max {})",
                a.iter()
                    .zip(b)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0f32, f32::max)
            );
        }
    }
    // Single-token steps multiply q/k/v and gate/up as stacked matrices, one
    // launch each where their types agree; launched one matrix at a time over
    // the same memory (views of the stacked upload) the logits are the same,
    // bit for bit: each row's sum is made the same way in either launch.
    let mut apart = DeviceModel::new(&gpu, 128).expect("device model");
    apart.set_stack(false);
    let one_by_one = steps(&mut apart);
    let mut together = DeviceModel::new(&gpu, 128).expect("device model");
    for (pos, (a, b)) in steps(&mut together).iter().zip(&one_by_one).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what} position {pos}: stacked and separate products differ (max {})",
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0f32, f32::max)
        );
    }
    // L2 hints (cuda/l2hint.rs) change when weights leave DRAM, not a value:
    // single-token steps with and without them agree bit for bit, and with
    // them the kernels between the products asked L2 for bytes.
    let mut unhinted = DeviceModel::new(&gpu, 128).expect("device model");
    unhinted.set_l2_hints(L2Budget::OFF);
    let without_hints = steps(&mut unhinted);
    assert_eq!(unhinted.l2_hinted_bytes(), 0, "{what}: hints off asked L2");
    let mut hinted = DeviceModel::new(&gpu, 128).expect("device model");
    hinted.set_l2_hints(L2Budget::ON);
    let with_hints = steps(&mut hinted);
    assert!(
        hinted.l2_hinted_bytes() > 0,
        "{what}: no L2 hint in a single-token step"
    );
    assert!(
        hinted.l2_hints_in_order(),
        "{what}: the products ran in another order than the hints took"
    );
    for (pos, (a, b)) in with_hints.iter().zip(&without_hints).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what} position {pos}: L2 hints changed the logits"
        );
    }
    // Single-token steps fold each RMSNorm into the products that read it
    // where they take it (cuda/fold.rs): every norm of the repacked formats'
    // models here, none of the float ones. Against the norms' own kernels the logits
    // differ by rounding only (the norm's scale meets the sums after the
    // product), and the fold's sums run in a fixed order: two runs agree bit
    // for bit.
    let folded_norms = together.folded_norms();
    // Every site: two per layer and the output's.
    let sites = gpu.config.n_layer * 2 + 1;
    eprintln!("{what}: {folded_norms} of {sites} norms folded");
    if what.contains("F32") || what.contains("BF16") {
        assert_eq!(folded_norms, 0, "{what}: float products take no fold");
    } else if what.contains("Q4_K_S") {
        // Its Q5_K matrices stay on the older kernels.
        assert!(folded_norms > 0, "{what}: no norm folded");
    } else {
        // Every norm, but the output's where the output matrix is not a
        // repacked format (AWQ folders keep it in float).
        assert!(
            folded_norms + 1 >= sites,
            "{what}: {folded_norms} of {sites} norms folded"
        );
    }
    let mut unfolded = DeviceModel::new(&gpu, 128).expect("device model");
    unfolded.set_fold(false);
    assert_eq!(unfolded.folded_norms(), 0);
    let norms_apart = steps(&mut unfolded);
    let folded = steps(&mut together);
    for (pos, (a, b)) in folded.iter().zip(&one_by_one).enumerate() {
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "{what} position {pos}: a second run with the norms folded differs"
        );
    }
    compare(
        &format!("{what} (norms folded, against their own kernels)"),
        &folded,
        &norms_apart,
        tol,
    );
    if folded_norms > 0 {
        // The fold changes the numbers by rounding, not to nothing: the
        // comparison above saw two different computations.
        assert!(
            folded
                .iter()
                .zip(&norms_apart)
                .any(|(a, b)| a.iter().zip(b).any(|(x, y)| x.to_bits() != y.to_bits())),
            "{what}: folded and unfolded norms gave identical logits"
        );
    }
    let mut all = DeviceModel::new(&gpu, 128).expect("device model");
    all.set_fuse(Fuse::All);
    let fused_all = device_logits(&mut all, vocab, &TOKENS);
    let unfused = device_logits(&mut plain, vocab, &TOKENS);
    compare(
        &format!("{what} (quantisers not fused)"),
        &unfused,
        &want,
        tol,
    );
    for (pos, (a, b)) in unfused.iter().zip(&fused_all).enumerate() {
        let e = common::rel_err(a, b);
        assert!(
            e < 1e-6,
            "{what} position {pos}: fused and separate quantisers differ by {e}"
        );
    }

    // Greedy decoding on the device picks the argmax of the device's logits.
    eager.clear();
    eager.forward(&TOKENS[..5], false).expect("prefill");
    for (i, &t) in TOKENS[5..].iter().enumerate() {
        let best = eager.forward_argmax(t).expect("argmax step");
        assert_eq!(
            best,
            argmax(&graphed[5 + i]),
            "{what}: device argmax at position {}",
            5 + i
        );
    }

    // A prompt of 73 tokens: one device batch (the default holds it; the
    // repacked formats' products on the tensor-core kernels), then batches of
    // 16 (five passes: 16 rows and 9 on the tensor-core kernels), then of 4 (the
    // GEMV kernels), last logits only.
    let long: Vec<u32> = (0..MIN_PREFILL_BATCH + 9)
        .map(|i| ((i * 37 + 11) % vocab) as u32)
        .collect();
    let mut s = cpu.session(128);
    let c = cpu.forward(&mut s, &long, false).expect("cpu long prefill");
    dm.clear();
    assert!(dm.prefill_batch() >= long.len());
    let g = dm.forward(&long, false).expect("long prefill");
    compare(
        &format!("{what} (long prefill)"),
        &[g],
        std::slice::from_ref(&c),
        tol,
    );
    for batch in [16, 4] {
        let mut small = DeviceModel::with_batch(&gpu, 128, Some(batch)).expect("device model");
        assert_eq!(small.prefill_batch(), batch);
        let g = small.forward(&long, false).expect("long prefill");
        compare(
            &format!("{what} (long prefill, batches of {batch})"),
            &[g],
            std::slice::from_ref(&c),
            tol,
        );
    }
}

fn hf_to_gguf(m: &TinyModel, dir: &Path, outtype: OutType) -> PathBuf {
    common::tiny_gguf(m, dir, outtype)
}

/// A 256-wide model (K-quant blocks need rows of 256), GQA 4 over 2 heads.
fn wide(base: TinyModel) -> TinyModel {
    TinyModel {
        hidden: 256,
        intermediate: 512,
        heads: 4,
        kv_heads: 2,
        head_dim: 64,
        dtype: "f32",
        ..base
    }
}

#[test]
fn llama_f32_device_decode_matches_cpu() {
    // f32 weights and activations on both sides: rounding and summation order.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hf_to_gguf(&TinyModel::llama(), dir.path(), OutType::F32);
    check("llama F32 (GQA 4/2, tied)", &path, 1e-4);
}

#[test]
fn llama3_rope_f32_device_decode_matches_cpu() {
    let m = TinyModel {
        llama3_rope: true,
        kv_heads: 1,
        seed: 9,
        ..TinyModel::llama()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hf_to_gguf(&m, dir.path(), OutType::F32);
    check(
        "llama F32 (Llama 3 rope, 4 heads on 1 KV head)",
        &path,
        1e-4,
    );
}

/// Three query heads per KV head, as SmolLM2-135M has (9 over 3): the
/// prefill attention's 64-row blocks then hold 21 tokens and a row of padding.
#[test]
fn three_heads_per_kv_head_device_decode_matches_cpu() {
    let m = TinyModel {
        heads: 6,
        kv_heads: 2,
        seed: 13,
        ..TinyModel::llama()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hf_to_gguf(&m, dir.path(), OutType::F32);
    check("llama F32 (6 heads on 2 KV heads)", &path, 1e-4);
}

#[test]
fn qwen2_biases_and_qwen3_norms_device_decode_match_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hf_to_gguf(&TinyModel::qwen2(), dir.path(), OutType::F32);
    check("qwen2 F32 (biases, neox rope)", &path, 1e-4);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hf_to_gguf(&TinyModel::qwen3(), dir.path(), OutType::Bf16);
    check("qwen3 BF16 (q/k norms)", &path, 1e-4);
}

#[test]
fn llama_q8_0_device_decode_is_close_to_cpu() {
    // Both multiply Q8_0 by 16-bit activation codes (unless QUERN_CUDA_Q8_ACT=8).
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hf_to_gguf(&TinyModel::llama(), dir.path(), OutType::Q8_0);
    check("llama Q8_0", &path, 3e-2);
}

#[test]
fn q4_k_device_decode_is_close_to_cpu() {
    // Q4_K_M (Q4_K and Q6_K): both sides multiply by the same activation codes,
    // 8-bit per 256, or 16-bit per 32 under QUERN_ACT_BITS=16; the difference is
    // the order of the float sums, through the codes' rounding. Q4_K_S also has
    // Q5_K layers, which stay on 8-bit codes in either setting and in blocks of
    // 256 on the CPU but 32 on the GPU: the looser bound always.
    for base in [TinyModel::llama(), TinyModel::qwen2()] {
        let m = wide(base);
        let dir = tempfile::tempdir().expect("tempdir");
        let f32_path = hf_to_gguf(&m, dir.path(), OutType::F32);
        for (mix, tol) in [("Q4_K_M", low_bit_tol()), ("Q4_K_S", 3e-2)] {
            let q = dir.path().join(format!("{mix}.gguf"));
            quantize(
                &f32_path,
                &q,
                &QuantizeOptions {
                    mix: Mix::parse(mix).expect("mix"),
                    allow_requantize: false,
                    model_name: None,
                },
                None,
                &NoProgress,
            )
            .expect("quantize");
            check(&format!("{} {mix}", m.architecture), &q, tol);
        }
    }
}

#[test]
fn awq_folders_run_on_the_device() {
    // AutoAWQ folders: the loader repacks each 4-bit linear into Q5_0 blocks
    // exactly (source.rs), so on the GPU they take the repacked Q5_0 kernels
    // (the tensor-core ones for the 73-token prefill). Both sides multiply by
    // 8-bit activation codes per 32 and form the same integer sums.
    use quern_quant::pipeline::{quantize_awq, AwqOptions};
    for m in [TinyModel::llama(), TinyModel::qwen2()] {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("hf");
        m.write(&folder).expect("write tiny model");
        let awq = dir.path().join("awq");
        quantize_awq(&folder, &awq, &AwqOptions { group_size: 32 }, &NoProgress).expect("awq");
        check(
            &format!("{} AWQ (group 32)", m.architecture),
            &awq,
            low_bit_tol(),
        );
    }
}

#[test]
fn awq_folders_in_the_compact_layout_match_the_cpu() {
    // The same folders with the loader's Q5_0 blocks in the compact 4-bit
    // layout on the device (each group's d and zero point, cuda/packed.rs):
    // the same values bit for bit, so the same bounds against the CPU, through
    // every kernel family check() runs (GEMV, stacked, folded, tensor-core
    // prefill). Groups of 32 (one block) and of 128 (four).
    use quern_quant::pipeline::{quantize_awq, AwqOptions};
    for (m, group) in [(TinyModel::llama(), 32), (wide(TinyModel::llama()), 128)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let folder = dir.path().join("hf");
        m.write(&folder).expect("write tiny model");
        let awq = dir.path().join("awq");
        quantize_awq(
            &folder,
            &awq,
            &AwqOptions { group_size: group },
            &NoProgress,
        )
        .expect("awq");
        check_on(
            &format!("{} AWQ (group {group}, compact)", m.architecture),
            &awq,
            low_bit_tol(),
            true,
        );
    }
}

#[test]
fn greedy_generation_on_the_device_matches_the_cpu() {
    // `quern run --device cuda` drives DeviceModel through generate_with: the
    // same greedy tokens as the CPU model (f32 weights, so no near-tie flips).
    let Some(be) = common::cuda_backend() else {
        return;
    };
    use quern_runtime::generate::{generate_with, HostDecoder};
    use quern_runtime::{Sampler, SamplerConfig};
    let dir = tempfile::tempdir().expect("tempdir");
    let path = hf_to_gguf(&TinyModel::qwen2(), dir.path(), OutType::F32);
    let gpu = Model::open(&path, Box::new(be)).expect("open on cuda");
    let cpu = Model::open(&path, Box::new(CpuBackend::new())).expect("open on cpu");
    let greedy = || {
        Sampler::new(SamplerConfig {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 1,
        })
    };
    let prompt = &TOKENS[..6];
    let mut on_gpu = Vec::new();
    let mut dm = DeviceModel::new(&gpu, 64).expect("device model");
    let n = generate_with(
        &mut dm,
        prompt,
        20,
        &mut greedy(),
        |_| false,
        |id| {
            on_gpu.push(id);
            true
        },
    )
    .expect("generate on the device");
    assert_eq!(n, 20);
    let mut on_cpu = Vec::new();
    let mut s = cpu.session(64);
    let mut host = HostDecoder {
        model: &cpu,
        session: &mut s,
    };
    generate_with(
        &mut host,
        prompt,
        20,
        &mut greedy(),
        |_| false,
        |id| {
            on_cpu.push(id);
            true
        },
    )
    .expect("generate on the cpu");
    assert_eq!(on_gpu, on_cpu);
}
