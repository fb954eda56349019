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
