"""Single-thread throughput of llama.cpp's quantisers (ggml_quantize_chunk in the
libggml that PyPI llama-cpp-python ships), on the same kind of matrix as
benches/quantize.rs: 256 rows x 4096 columns, Gaussian with a heavy tail, with and
without an importance vector. Prints rows/s per type in on-CPU time of the thread
(as benches/oncpu.rs does), so other work on the machine inflates the figures less.

usage: .venv/bin/python quant/benches/llama_cpp_speed.py [REPEATS]
"""
import ctypes
import os
import sys
import time

import numpy as np
import llama_cpp

ROWS, COLS = 256, 4096
TYPES = {"q4_K": 12, "q6_K": 14, "q5_K": 13, "q3_K": 11, "q2_K": 10, "iq4_xs": 23, "iq4_nl": 20}


def libggml() -> ctypes.CDLL:
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    for name in ("libggml-base.so", "libggml.so"):
        path = os.path.join(libdir, name)
        if os.path.exists(path):
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            if hasattr(lib, "ggml_quantize_chunk"):
                return lib
    raise SystemExit(f"no libggml with ggml_quantize_chunk under {libdir}")


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    lib = libggml()
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    fp = ctypes.POINTER(ctypes.c_float)
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int, fp, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, fp,
    ]
    rng = np.random.default_rng(1)
    src = (rng.standard_normal((ROWS, COLS)) * 0.02).astype(np.float32)
    outliers = rng.random((ROWS, COLS)) < 0.002
    src[outliers] *= 8.0
    src = np.ascontiguousarray(src)
    imp = np.ascontiguousarray((rng.standard_normal(COLS) ** 2 + 0.01).astype(np.float32))
    for name, tid in TYPES.items():
        dst = np.zeros(lib.ggml_row_size(tid, COLS) * ROWS, dtype=np.uint8)
        for label, w in (("plain", None), ("imatrix", imp)):
            wp = None if w is None else w.ctypes.data_as(fp)
            best = float("inf")
            for _ in range(repeats):
                t = time.thread_time()
                lib.ggml_quantize_chunk(tid, src.ctypes.data_as(fp), dst.ctypes.data, 0, ROWS, COLS, wp)
                best = min(best, time.thread_time() - t)
            print(f"{name:7} {label:8} {ROWS / best:9.0f} rows/s  {ROWS * COLS / best / 1e6:6.1f} Mvalues/s")


if __name__ == "__main__":
    main()
