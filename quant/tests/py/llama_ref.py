"""Quantise rows with llama.cpp's own quantisers (ggml_quantize_chunk in the libggml
that PyPI llama-cpp-python ships), for error comparisons with quern's.

usage: llama_ref.py quantize TYPE_ID ROW_LEN IN.f32 IMATRIX.f32|- OUT.bin
       llama_ref.py q8k IN.f32 OUT.bin     (quantize_row_q8_K_ref)
       llama_ref.py dequantize NAME N_VALUES IN.bin OUT.f32   (dequantize_row_<name>)
"""
import ctypes
import os
import sys

import numpy as np
import llama_cpp


def libggml() -> ctypes.CDLL:
    libdir = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    for name in ("libggml-base.so", "libggml.so"):
        path = os.path.join(libdir, name)
        if os.path.exists(path):
            lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
            if hasattr(lib, "ggml_quantize_chunk"):
                return lib
    raise SystemExit(f"no libggml with ggml_quantize_chunk under {libdir}")


def fptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def main() -> None:
    lib = libggml()
    if sys.argv[1] == "quantize":
        type_id, row_len = int(sys.argv[2]), int(sys.argv[3])
        src = np.ascontiguousarray(np.fromfile(sys.argv[4], dtype=np.float32))
        imatrix = None if sys.argv[5] == "-" else np.ascontiguousarray(np.fromfile(sys.argv[5], dtype=np.float32))
        nrows = src.size // row_len
        lib.ggml_row_size.restype = ctypes.c_size_t
        lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
        dst = np.zeros(lib.ggml_row_size(type_id, row_len) * nrows, dtype=np.uint8)
        lib.ggml_quantize_chunk.restype = ctypes.c_size_t
        lib.ggml_quantize_chunk.argtypes = [
            ctypes.c_int, ctypes.POINTER(ctypes.c_float), ctypes.c_void_p,
            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.POINTER(ctypes.c_float),
        ]
        n = lib.ggml_quantize_chunk(type_id, fptr(src), dst.ctypes.data, 0, nrows, row_len,
                                    None if imatrix is None else fptr(imatrix))
        assert n == dst.size, (n, dst.size)
        dst.tofile(sys.argv[6])
    elif sys.argv[1] == "q8k":
        src = np.ascontiguousarray(np.fromfile(sys.argv[2], dtype=np.float32))
        dst = np.zeros(src.size // 256 * 292, dtype=np.uint8)
        lib.quantize_row_q8_K_ref.restype = None
        lib.quantize_row_q8_K_ref.argtypes = [ctypes.POINTER(ctypes.c_float), ctypes.c_void_p, ctypes.c_int64]
        lib.quantize_row_q8_K_ref(fptr(src), dst.ctypes.data, src.size)
        dst.tofile(sys.argv[3])
    elif sys.argv[1] == "dequantize":
        name, n = sys.argv[2], int(sys.argv[3])
        # ggml spells the K-quants with a capital K: dequantize_row_q4_K.
        fn = getattr(lib, "dequantize_row_" + name.lower().replace("_k", "_K"))
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64]
        src = np.ascontiguousarray(np.fromfile(sys.argv[4], dtype=np.uint8))
        dst = np.zeros(n, dtype=np.float32)
        fn(src.ctypes.data, fptr(dst), n)
        dst.tofile(sys.argv[5])
    else:
        raise SystemExit(f"unknown op {sys.argv[1]}")


if __name__ == "__main__":
    main()
