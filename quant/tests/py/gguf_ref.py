"""Reference quantise/dequantise through PyPI gguf (llama.cpp's own Python package).

usage: gguf_ref.py quantize TYPE ROW_LEN IN.f32 OUT.bin
       gguf_ref.py dequantize TYPE IN.bin OUT.f32
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize, quantize


def main() -> None:
    op, name = sys.argv[1], sys.argv[2]
    qtype = GGMLQuantizationType[name]
    if op == "quantize":
        row_len = int(sys.argv[3])
        data = np.fromfile(sys.argv[4], dtype=np.float32).reshape(-1, row_len)
        np.ascontiguousarray(quantize(data, qtype)).tofile(sys.argv[5])
    elif op == "dequantize":
        data = np.fromfile(sys.argv[3], dtype=np.uint8).reshape(1, -1)
        np.ascontiguousarray(dequantize(data, qtype), dtype=np.float32).tofile(sys.argv[4])
    else:
        raise SystemExit(f"unknown op {op}")


if __name__ == "__main__":
    main()
