//! Single-core SHA-256 throughput of the implementations quern could use,
//! by thread CPU time (robust on a busy machine):
//! `cargo run --release -p quern-registry --example hash_speed [MiB]`.
//! (On SHA-NI CPUs all of them run the same instructions and measure alike.)

use sha2::Digest as _;

fn thread_cpu_s() -> f64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

fn measure(name: &str, data: &[u8], f: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let mut best = f64::MAX;
    let mut out = Vec::new();
    for _ in 0..3 {
        let t0 = thread_cpu_s();
        out = f(data);
        best = best.min(thread_cpu_s() - t0);
    }
    println!(
        "{name:>22}: {:.3} s CPU for {} MiB = {:.2} GB/s",
        best,
        data.len() >> 20,
        data.len() as f64 / best / 1e9
    );
    out
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| (i as u32).wrapping_mul(2654435761) as u8)
        .collect();
    let a = measure("sha2 0.10", &data, |d| {
        let mut h = sha2::Sha256::new();
        for c in d.chunks(1 << 20) {
            h.update(c);
        }
        h.finalize().to_vec()
    });
    let b = measure("ring 0.17", &data, |d| {
        let mut h = ring::digest::Context::new(&ring::digest::SHA256);
        for c in d.chunks(1 << 20) {
            h.update(c);
        }
        h.finish().as_ref().to_vec()
    });
    let c = measure("quern_registry::digest", &data, |d| {
        quern_registry::Digest::of_bytes(d)
            .hex()
            .as_bytes()
            .to_vec()
    });
    assert_eq!(a, b, "implementations disagree");
    assert_eq!(hex::encode(&a).as_bytes(), &c[..], "Digest disagrees");
}
