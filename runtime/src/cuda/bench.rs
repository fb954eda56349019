//! `quern bench --device cuda --kernels`: each format's GEMV time and bandwidth
//! beside the device-to-device copy bandwidth measured in the same run.
//!
//! Method: a CUDA graph of a group of launches, each on a different copy of the
//! weights (enough copies that together they exceed the L2 several times, so every
//! launch reads from device memory), replayed between CUDA events after warm-up;
//! the median over the replays, divided by the launches in a group. For the
//! integer formats each launch includes the kernel that quantises the activations. Bandwidth counts the weight bytes in their file layout (codes and
//! scales), the bytes a product must read.

use cudarc::driver::sys::{CUevent_flags, CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaSlice, DevicePtr};
use quern_formats::GgmlType;

use super::error::DriverContext;
use super::{CudaBackend, CudaError, DeviceWeight};
use crate::backend::WeightView;

/// What to measure.
#[derive(Debug, Clone)]
pub struct KernelBenchConfig {
    pub types: Vec<GgmlType>,
    /// (input features, output features): the product is `out × in` weights.
    pub shapes: Vec<(usize, usize)>,
    pub batches: Vec<usize>,
    /// Timed groups per case (the median is reported).
    pub samples: usize,
    /// Launches per timed group.
    pub group: usize,
    /// Bytes of weight copies to rotate through per case (past the L2).
    pub rotate_bytes: usize,
}

impl Default for KernelBenchConfig {
    fn default() -> Self {
        KernelBenchConfig {
            types: super::supported_types().collect(),
            shapes: vec![(4096, 4096), (4096, 14336), (14336, 4096)],
            batches: vec![1, 4, 16],
            samples: 30,
            group: 20,
            rotate_bytes: 512 << 20,
        }
    }
}

#[derive(Debug, Clone)]
pub struct CopyBandwidth {
    /// Bytes copied per copy (each is read once and written once).
    pub bytes: usize,
    pub us: f64,
    /// (read + written) / time.
    pub gb_s: f64,
}

#[derive(Debug, Clone)]
pub struct KernelResult {
    pub ty: GgmlType,
    pub in_features: usize,
    pub out_features: usize,
    pub batch: usize,
    /// Weight bytes one product reads (file layout: codes and scales).
    pub weight_bytes: usize,
    pub copies: usize,
    pub us_median: f64,
    pub us_min: f64,
    pub gb_s: f64,
}

#[derive(Debug, Clone)]
pub struct KernelBench {
    pub device: String,
    pub arch: String,
    pub driver_version: i32,
    pub copy: CopyBandwidth,
    pub results: Vec<KernelResult>,
}

/// A splitmix64 stream of floats in [-1, 1), never zero.
pub struct Rng(pub u64);
impl Rng {
    pub fn next_f32(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let u = (z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
        if u == 0.0 {
            0.5
        } else {
            u
        }
    }
}

/// `rows × cols` weights of `ty`: `distinct` rows of random values quantised by the
/// quant crate, repeated to fill the matrix (speed does not depend on which rows
/// repeat; quantising every row of a 14336×4096 matrix would take longer than the
/// whole benchmark).
pub fn random_weights(
    ty: GgmlType,
    rows: usize,
    cols: usize,
    distinct: usize,
    seed: u64,
) -> Result<Vec<u8>, crate::RuntimeError> {
    let rb = cols / ty.block_size() * ty.type_size();
    let distinct = distinct.clamp(1, rows.max(1));
    let mut rng = Rng(seed);
    let mut uniq = vec![0u8; rb * distinct];
    let mut row = vec![0f32; cols];
    for d in uniq.chunks_exact_mut(rb) {
        for v in row.iter_mut() {
            *v = rng.next_f32();
        }
        quern_quant::quantize_row(ty, &row, None, d).map_err(|source| {
            crate::RuntimeError::Quant {
                tensor: format!("random {ty} weights"),
                source,
            }
        })?;
    }
    let mut out = Vec::with_capacity(rb * rows);
    for r in 0..rows {
        let i = r % distinct;
        out.extend_from_slice(&uniq[i * rb..(i + 1) * rb]);
    }
    Ok(out)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Times `f` (which enqueues `per_group` operations) between two events, `samples`
/// times after `warm` untimed calls; the median time of one operation in µs, and
/// the fastest.
fn time_groups(
    be: &CudaBackend,
    warm: usize,
    samples: usize,
    per_group: usize,
    mut f: impl FnMut(usize) -> Result<(), CudaError>,
) -> Result<(f64, f64), CudaError> {
    // Warm up for at least 100 ms as well: the SM clock rises from idle only
    // under sustained load, and the cases before left the device idle while the
    // host prepared weights.
    let st = be.stream();
    let t0 = std::time::Instant::now();
    let mut i = 0;
    while i < warm || t0.elapsed() < std::time::Duration::from_millis(100) {
        f(i)?;
        i += 1;
        if i % 8 == 0 {
            st.synchronize().ctx("warming up")?;
        }
    }
    let mut times = Vec::with_capacity(samples);
    for s in 0..samples {
        let a = st
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .ctx("recording an event")?;
        f(i + s)?;
        let b = st
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .ctx("recording an event")?;
        b.synchronize().ctx("waiting for the timed work")?;
        let ms = a.elapsed_ms(&b).ctx("reading an event time")?;
        times.push(ms as f64 * 1e3 / per_group as f64);
    }
    let min = times.iter().cloned().fold(f64::INFINITY, f64::min);
    Ok((median(&mut times), min))
}

/// Device-to-device copy bandwidth, counting bytes read and written.
pub fn copy_bandwidth(be: &CudaBackend, bytes: usize) -> Result<CopyBandwidth, CudaError> {
    let st = be.stream().clone();
    let src: CudaSlice<u8> = st.alloc_zeros(bytes).ctx("allocating the copy source")?;
    let mut dst: CudaSlice<u8> = st.alloc_zeros(bytes).ctx("allocating the copy target")?;
    // Not zeros: fill the source with a pattern first.
    // SAFETY: src holds `bytes` bytes.
    let (sp, _g) = src.device_ptr(&st);
    unsafe { cudarc::driver::result::memset_d8_async(sp, 0x5A, bytes, st.cu_stream()) }
        .ctx("filling the copy source")?;
    let (dp, _g2) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut dst, &st);
    let (us, _) = time_groups(be, 3, 20, 1, |_| {
        // SAFETY: both buffers hold `bytes` bytes.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dp, sp, bytes, st.cu_stream()) }
            .ctx("copying device to device")
    })?;
    Ok(CopyBandwidth {
        bytes,
        us,
        gb_s: 2.0 * bytes as f64 / (us * 1e3),
    })
}

/// Runs every case of `cfg`, calling `each` after each one.
pub fn run(
    be: &CudaBackend,
    cfg: &KernelBenchConfig,
    mut each: impl FnMut(&KernelResult),
) -> Result<KernelBench, crate::RuntimeError> {
    let cuda = |source: CudaError| crate::RuntimeError::Cuda {
        tensor: "kernel benchmark".into(),
        source,
    };
    be.prepare_types(&cfg.types).map_err(cuda)?;
    let copy = copy_bandwidth(be, 1 << 30).map_err(cuda)?;
    let st = be.stream().clone();
    let max_b = cfg.batches.iter().copied().max().unwrap_or(1);
    let mut results = Vec::new();
    for &(k, n) in &cfg.shapes {
        let mut rng = Rng(0x5eed ^ (k as u64) << 20 ^ n as u64);
        let xs: Vec<f32> = (0..max_b * k.div_ceil(8) * 8)
            .map(|_| rng.next_f32())
            .collect();
        let xd = st
            .clone_htod(&xs)
            .ctx("uploading activations")
            .map_err(cuda)?;
        let yd: CudaSlice<f32> = st
            .alloc_zeros(max_b * n)
            .ctx("allocating outputs")
            .map_err(cuda)?;
        for &ty in &cfg.types {
            if k % ty.block_size() != 0 {
                continue;
            }
            let data = random_weights(ty, n, k, 16, 7 + ty.id() as u64)?;
            let view = WeightView {
                name: "bench",
                ty,
                rows: n,
                cols: k,
                data: &data,
            };
            let copies = (cfg.rotate_bytes / data.len()).clamp(2, 64);
            let mut ws: Vec<DeviceWeight> = Vec::with_capacity(copies);
            ws.push(be.upload(&view).map_err(cuda)?);
            for _ in 1..copies {
                ws.push(ws[0].duplicate(&st).map_err(cuda)?);
            }
            drop(data);
            let ptrs: Vec<u64> = ws.iter().map(|w| be.weight_ptr(w)).collect();
            let (xp, _gx) = xd.device_ptr(&st);
            let (yp, _gy) = yd.device_ptr(&st);
            for &b in &cfg.batches {
                let launch = |i: usize| -> Result<(), CudaError> {
                    let i = i % copies;
                    // SAFETY: xd holds max_b * k floats and yd max_b * n.
                    unsafe { be.launch_gemv_raw(&ws[i], ptrs[i], xp, yp, b) }
                };
                // One untimed launch allocates what the kernels need (no allocation
                // may happen while the graph is captured).
                launch(0).map_err(cuda)?;
                st.synchronize().ctx("warm-up").map_err(cuda)?;
                // The group of launches, each on the next copy, as one CUDA graph:
                // its replay runs them back to back, without the host's launch
                // overhead in between (which alone is larger than the small cases).
                st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
                    .ctx("capturing a graph")
                    .map_err(cuda)?;
                let captured = (0..cfg.group).try_for_each(launch);
                let graph = st
                    .end_capture(
                        CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH,
                    )
                    .ctx("instantiating the graph")
                    .map_err(cuda)?;
                captured.map_err(cuda)?;
                let graph = graph
                    .ok_or_else(|| CudaError::Driver {
                        what: "capturing the benchmark graph".into(),
                        detail: "nothing was captured".into(),
                    })
                    .map_err(cuda)?;
                let (us, us_min) = time_groups(be, 3, cfg.samples, cfg.group, |_| {
                    graph.launch().ctx("replaying the graph")
                })
                .map_err(cuda)?;
                let wb = ws[0].file_bytes();
                let r = KernelResult {
                    ty,
                    in_features: k,
                    out_features: n,
                    batch: b,
                    weight_bytes: wb,
                    copies,
                    us_median: us,
                    us_min,
                    gb_s: wb as f64 / (us * 1e3),
                };
                each(&r);
                results.push(r);
            }
        }
    }
    let tc = be.toolchain();
    Ok(KernelBench {
        device: be.device_name().to_string(),
        arch: tc.arch.clone(),
        driver_version: tc.driver_version,
        copy,
        results,
    })
}

/// One weight product of a decode step: (GGUF name, type, input features, output
/// features).
#[derive(Debug, Clone)]
pub struct StackTensor {
    pub name: String,
    pub ty: GgmlType,
    pub in_features: usize,
    pub out_features: usize,
}

/// The weight matrices of a Llama-3-8B-shaped model (4096 hidden, 32 layers, 32
/// query and 8 key/value heads of 128, 14336 feed-forward, `vocab` outputs) with
/// the types llama.cpp's recipe for `mix` gives them (`quern_quant::mix`). The
/// token embedding is left out: decode reads one row of it.
pub fn llama_8b_tensors(
    mix: quern_quant::mix::Mix,
    vocab: usize,
) -> Result<Vec<StackTensor>, crate::RuntimeError> {
    let (layers, hidden, kv, ffn) = (32usize, 4096usize, 1024usize, 14336usize);
    let mut shapes: Vec<(String, usize, usize)> = vec![("token_embd.weight".into(), hidden, vocab)];
    for i in 0..layers {
        for (n, k, o) in [
            ("attn_q", hidden, hidden),
            ("attn_k", hidden, kv),
            ("attn_v", hidden, kv),
            ("attn_output", hidden, hidden),
            ("ffn_gate", hidden, ffn),
            ("ffn_up", hidden, ffn),
            ("ffn_down", ffn, hidden),
        ] {
            shapes.push((format!("blk.{i}.{n}.weight"), k, o));
        }
    }
    shapes.push(("output.weight".into(), hidden, vocab));
    let ctx: Vec<quern_quant::mix::TensorContext> = shapes
        .iter()
        .map(|(name, k, o)| quern_quant::mix::TensorContext {
            name: name.clone(),
            shape: vec![*k as u64, *o as u64],
            n_layers: layers,
            n_heads: 32,
            n_kv_heads: 8,
            arch: "llama".into(),
            n_experts: 0,
            tied_output: false,
        })
        .collect();
    let plan = quern_quant::mix::plan(mix, &ctx);
    let mut out = Vec::new();
    for ((name, k, o), c) in shapes.into_iter().zip(plan) {
        if name == "token_embd.weight" {
            continue;
        }
        if super::format_id(c.ty).is_none() {
            return Err(crate::RuntimeError::Cuda {
                tensor: name,
                source: CudaError::Unsupported(c.ty),
            });
        }
        out.push(StackTensor {
            name,
            ty: c.ty,
            in_features: k,
            out_features: o,
        });
    }
    Ok(out)
}

/// `tensors` with each block's q/k/v and gate/up products joined where their
/// types agree, as the device-resident decode stacks them for single-token
/// steps (`decode::DevLayer::qkv`, `gate_up`): q and k, with v when it shares
/// their type; gate and up.
pub fn stacked(tensors: &[StackTensor]) -> Vec<StackTensor> {
    let part = |t: &StackTensor| {
        ["attn_q", "attn_k", "attn_v", "ffn_gate", "ffn_up"]
            .iter()
            .position(|p| t.name.ends_with(&format!(".{p}.weight")))
    };
    let mut out: Vec<StackTensor> = Vec::with_capacity(tensors.len());
    // The last entry's first member's part, and how many it holds.
    let (mut start, mut members) = (None, 0);
    for t in tensors {
        let this = part(t);
        let next_of = match (start, members) {
            (Some(0), 1) => Some(1),
            (Some(0), 2) => Some(2),
            (Some(3), 1) => Some(4),
            _ => None,
        };
        let joins = this.is_some()
            && this == next_of
            && out.last().is_some_and(|p: &StackTensor| {
                p.ty == t.ty
                    && p.in_features == t.in_features
                    && p.name.split('.').nth(1) == t.name.split('.').nth(1)
            });
        match out.last_mut() {
            Some(prev) if joins => {
                prev.name = format!("{}+{}", prev.name, t.name);
                prev.out_features += t.out_features;
                members += 1;
            }
            _ => {
                out.push(t.clone());
                (start, members) = (this, 1);
            }
        }
    }
    out
}

#[derive(Debug, Clone)]
pub struct StackBench {
    pub device: String,
    pub copy: CopyBandwidth,
    pub batch: usize,
    /// Weight bytes one step reads (file layout).
    pub weight_bytes: usize,
    pub launches: usize,
    /// One step: every product once, as one CUDA graph.
    pub us_median: f64,
    pub us_min: f64,
    /// (bytes of each type, count of matrices) by type.
    pub by_type: Vec<(GgmlType, usize, usize)>,
}

impl StackBench {
    /// Weight bytes over copy bandwidth: the time of one step if every byte moved
    /// at the copy's rate.
    pub fn floor_us(&self) -> f64 {
        self.weight_bytes as f64 / (self.copy.gb_s * 1e3)
    }
}

/// Times every product of `tensors` once per step (each on its own device copy of
/// random weights, `batch` activation rows, the integer formats' activation
/// quantiser included) as one CUDA graph: the weight products of one decode step
/// with nothing else (no attention, norms or host work).
pub fn stack(
    be: &CudaBackend,
    tensors: &[StackTensor],
    batch: usize,
    samples: usize,
) -> Result<StackBench, crate::RuntimeError> {
    let cuda = |source: CudaError| crate::RuntimeError::Cuda {
        tensor: "stack benchmark".into(),
        source,
    };
    let mut types: Vec<GgmlType> = tensors.iter().map(|t| t.ty).collect();
    types.sort_by_key(|t| t.id());
    types.dedup();
    be.prepare_types(&types).map_err(cuda)?;
    let copy = copy_bandwidth(be, 1 << 30).map_err(cuda)?;
    let st = be.stream().clone();
    // One upload per distinct (type, shape), copied on the device for the others.
    let mut first: std::collections::HashMap<(GgmlType, usize, usize), usize> =
        std::collections::HashMap::new();
    let mut ws: Vec<DeviceWeight> = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter().enumerate() {
        let key = (t.ty, t.in_features, t.out_features);
        let w = if let Some(&j) = first.get(&key) {
            ws[j].duplicate(&st).map_err(cuda)?
        } else {
            let data = random_weights(t.ty, t.out_features, t.in_features, 16, 11 + i as u64)?;
            let view = WeightView {
                name: &t.name,
                ty: t.ty,
                rows: t.out_features,
                cols: t.in_features,
                data: &data,
            };
            first.insert(key, i);
            be.upload(&view).map_err(cuda)?
        };
        ws.push(w);
    }
    let max_k = tensors.iter().map(|t| t.in_features).max().unwrap_or(0);
    let max_n = tensors.iter().map(|t| t.out_features).max().unwrap_or(0);
    let mut rng = Rng(0x57ac);
    let xs: Vec<f32> = (0..batch * max_k.div_ceil(8) * 8)
        .map(|_| rng.next_f32())
        .collect();
    let xd = st
        .clone_htod(&xs)
        .ctx("uploading activations")
        .map_err(cuda)?;
    let yd: CudaSlice<f32> = st
        .alloc_zeros(batch * max_n)
        .ctx("allocating outputs")
        .map_err(cuda)?;
    let ptrs: Vec<u64> = ws.iter().map(|w| be.weight_ptr(w)).collect();
    let (xp, _gx) = xd.device_ptr(&st);
    let (yp, _gy) = yd.device_ptr(&st);
    let step = || -> Result<(), CudaError> {
        for (w, &p) in ws.iter().zip(&ptrs) {
            // SAFETY: xd holds batch * max_k floats and yd batch * max_n.
            unsafe { be.launch_gemv_raw(w, p, xp, yp, batch)? };
        }
        Ok(())
    };
    step().map_err(cuda)?;
    st.synchronize().ctx("warm-up").map_err(cuda)?;
    st.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .ctx("capturing a graph")
        .map_err(cuda)?;
    let captured = step();
    let graph = st
        .end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH)
        .ctx("instantiating the graph")
        .map_err(cuda)?;
    captured.map_err(cuda)?;
    let graph = graph
        .ok_or_else(|| CudaError::Driver {
            what: "capturing the stack graph".into(),
            detail: "nothing was captured".into(),
        })
        .map_err(cuda)?;
    let (us, us_min) = time_groups(be, 3, samples, 1, |_| {
        graph.launch().ctx("replaying the graph")
    })
    .map_err(cuda)?;
    let mut by_type: Vec<(GgmlType, usize, usize)> = Vec::new();
    for w in &ws {
        match by_type.iter_mut().find(|e| e.0 == w.ty) {
            Some(e) => {
                e.1 += w.file_bytes();
                e.2 += 1;
            }
            None => by_type.push((w.ty, w.file_bytes(), 1)),
        }
    }
    Ok(StackBench {
        device: be.device_name().to_string(),
        copy,
        batch,
        weight_bytes: ws.iter().map(|w| w.file_bytes()).sum(),
        launches: ws.len(),
        us_median: us,
        us_min,
        by_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q4_K_M's 8B stack: q/k always join, v only where it is Q4_K too, gate and
    /// up always; Q8_0's: every q/k/v and gate/up. No weight byte is lost.
    #[test]
    fn stacking_joins_what_the_decode_joins() {
        let q4km = llama_8b_tensors(quern_quant::mix::Mix::Q4KM, 128_256).expect("tensors");
        let s = stacked(&q4km);
        let v_q6k = q4km
            .iter()
            .filter(|t| t.name.ends_with("attn_v.weight") && t.ty != GgmlType::Q4K)
            .count();
        assert!(v_q6k > 0 && v_q6k < 32, "{v_q6k}");
        // 7 products per block become 4 (q+k+v) or 5, plus the output.
        assert_eq!(s.len(), 32 * 4 + v_q6k + 1);
        assert!(s
            .iter()
            .any(|t| t.name == "blk.0.ffn_gate.weight+blk.0.ffn_up.weight"
                && t.out_features == 2 * 14336));
        for t in &s {
            if t.name.contains("attn_q") {
                assert!(t.name.contains("attn_k"), "{}", t.name);
                assert_eq!(
                    t.out_features,
                    4096 + 1024 * (1 + t.name.contains("attn_v") as usize)
                );
            }
        }
        let bytes = |ts: &[StackTensor]| -> usize {
            ts.iter()
                .map(|t| t.out_features * t.in_features / t.ty.block_size() * t.ty.type_size())
                .sum()
        };
        assert_eq!(bytes(&s), bytes(&q4km));
        let q8 = llama_8b_tensors(quern_quant::mix::Mix::Q8_0, 128_256).expect("tensors");
        // q+k+v, o, gate+up, down per block.
        assert_eq!(stacked(&q8).len(), 32 * 4 + 1);
    }
}
