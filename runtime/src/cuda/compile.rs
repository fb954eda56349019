//! NVRTC compilation of the kernels on first use, with an on-disk cache of the
//! machine code keyed by the source's hash, the GPU architecture, the driver and
//! the NVRTC version.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};

use cudarc::nvrtc::{result as nvrtc, sys as nvrtc_sys};

use super::error::CudaError;

/// What the compiled code depends on besides its source.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// `sm_XY` of the device.
    pub arch: String,
    /// `cuDriverGetVersion`, e.g. 13000.
    pub driver_version: i32,
    /// NVRTC's major and minor version.
    pub nvrtc_version: (i32, i32),
    /// CUDA headers, when a toolkit's include directory exists.
    pub include: Option<PathBuf>,
}

/// The toolkit's include directory: `$CUDA_HOME/include`, `$CUDA_PATH/include`, or
/// `/usr/local/cuda/include`, the first that exists. Our kernels need no header;
/// the path is passed so that a kernel that does include one compiles.
pub fn cuda_include_dir() -> Option<PathBuf> {
    let candidates = ["CUDA_HOME", "CUDA_PATH"]
        .iter()
        .filter_map(std::env::var_os)
        .map(|p| PathBuf::from(p).join("include"))
        .chain(std::iter::once(PathBuf::from("/usr/local/cuda/include")));
    candidates.into_iter().find(|p| p.is_dir())
}

/// `$QUERN_CUDA_CACHE`, else `$XDG_CACHE_HOME/quern/cuda`, else `~/.cache/quern/cuda`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QUERN_CUDA_CACHE") {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(p).join("quern").join("cuda"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache").join("quern").join("cuda"))
}

/// FNV-1a, 64 bits: stable across builds, unlike std's hasher, so cache names
/// survive a rebuild of the binary.
pub(crate) fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in *p {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate the parts so ("ab", "c") and ("a", "bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn options(tc: &Toolchain) -> Vec<String> {
    let mut o = vec![
        format!("--gpu-architecture={}", tc.arch),
        "--std=c++17".to_string(),
        "-lineinfo".to_string(),
    ];
    if let Some(inc) = &tc.include {
        o.push(format!("--include-path={}", inc.display()));
    }
    if verbose() {
        o.push("--ptxas-options=-v".to_string());
    }
    // `QUERN_CUDA_DEFINES="A=1 B"`: macros for every module, for experiments
    // with the kernels' compile-time switches (part of the cache key).
    if let Ok(defs) = std::env::var("QUERN_CUDA_DEFINES") {
        o.extend(defs.split_whitespace().map(|d| format!("-D{d}")));
    }
    o
}

/// `QUERN_CUDA_PTXAS_VERBOSE=1`: print each compile's resource report (registers,
/// spills, shared memory) to stderr.
fn verbose() -> bool {
    std::env::var("QUERN_CUDA_PTXAS_VERBOSE").as_deref() == Ok("1")
}

/// Where was the module found: whether it was compiled now, and the cache file.
#[derive(Debug, Clone)]
pub struct ModuleSource {
    pub compiled: bool,
    pub cache_file: Option<PathBuf>,
}

/// The cubin for `src`, from the cache or compiled now (and then cached).
pub fn cubin(name: &str, src: &str, tc: &Toolchain) -> Result<(Vec<u8>, ModuleSource), CudaError> {
    let opts = options(tc);
    let joined = opts.join(" ");
    let key = fnv1a(&[src.as_bytes(), joined.as_bytes()]);
    let file = cache_dir().map(|d| {
        d.join(format!(
            "{name}-{key:016x}-{}-drv{}-nvrtc{}.{}.cubin",
            tc.arch, tc.driver_version, tc.nvrtc_version.0, tc.nvrtc_version.1
        ))
    });
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            if !bytes.is_empty() {
                return Ok((
                    bytes,
                    ModuleSource {
                        compiled: false,
                        cache_file: file,
                    },
                ));
            }
        }
    }
    let bytes = compile(name, src, &opts)?;
    // A cache that cannot be written only costs a recompile next time.
    if let Some(f) = &file {
        let _ = write_atomically(f, &bytes);
    }
    Ok((
        bytes,
        ModuleSource {
            compiled: true,
            cache_file: file,
        },
    ))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cubin"),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

fn compile(name: &str, src: &str, opts: &[String]) -> Result<Vec<u8>, CudaError> {
    let fail = |log: String| CudaError::Compile {
        module: name.to_string(),
        log,
    };
    let c_src = CString::new(src).map_err(|_| fail("source holds a NUL byte".into()))?;
    let c_name = CString::new(name).map_err(|_| fail("name holds a NUL byte".into()))?;
    let prog = nvrtc::create_program(&c_src, Some(&c_name)).map_err(|e| fail(format!("{e:?}")))?;
    // SAFETY: `prog` was just created and is destroyed once, below; the source and
    // name strings outlive it.
    let out = unsafe {
        let r = match nvrtc::compile_program(prog, opts) {
            Ok(()) => {
                if verbose() {
                    if let Ok(l) = nvrtc::get_program_log(prog) {
                        eprintln!("{name}:\n{}", CStr::from_ptr(l.as_ptr()).to_string_lossy());
                    }
                }
                let mut size = 0usize;
                let s = nvrtc_sys::nvrtcGetCUBINSize(prog, &mut size);
                if s != nvrtc_sys::nvrtcResult::NVRTC_SUCCESS || size == 0 {
                    Err(fail(format!("nvrtcGetCUBINSize: {s:?} (size {size})")))
                } else {
                    let mut buf = vec![0u8; size];
                    let s = nvrtc_sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast());
                    if s == nvrtc_sys::nvrtcResult::NVRTC_SUCCESS {
                        Ok(buf)
                    } else {
                        Err(fail(format!("nvrtcGetCUBIN: {s:?}")))
                    }
                }
            }
            Err(e) => {
                let log = nvrtc::get_program_log(prog)
                    .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                    .unwrap_or_default();
                Err(fail(format!("{e:?} with options {opts:?}\n{log}")))
            }
        };
        let _ = nvrtc::destroy_program(prog);
        r
    };
    out
}

/// The NVRTC library's version.
pub fn nvrtc_version() -> (i32, i32) {
    let (mut a, mut b) = (0, 0);
    // SAFETY: plain out-parameters; only called after the library was found.
    unsafe {
        let _ = nvrtc_sys::nvrtcVersion(&mut a, &mut b);
    }
    (a, b)
}

/// Compiles without looking at or writing the cache (tests).
#[cfg(test)]
pub(crate) fn compile_uncached(
    name: &str,
    src: &str,
    tc: &Toolchain,
) -> Result<Vec<u8>, CudaError> {
    compile(name, src, &options(tc))
}
