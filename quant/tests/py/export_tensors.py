"""Writes 2-D tensors of a safetensors file as raw little-endian f32 (BF16/F16/F32 in).

usage: export_tensors.py MODEL.safetensors OUTDIR NAME...
prints one line per tensor: NAME ROWS COLS
"""
import json
import os
import struct
import sys

import numpy as np


def main() -> None:
    path, outdir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        base = 8 + n
        for i, name in enumerate(names):
            info = header[name]
            start, end = info["data_offsets"]
            f.seek(base + start)
            raw = f.read(end - start)
            if info["dtype"] == "BF16":
                arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
            elif info["dtype"] == "F16":
                arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
            elif info["dtype"] == "F32":
                arr = np.frombuffer(raw, dtype="<f4")
            else:
                raise SystemExit(f"{name}: unsupported dtype {info['dtype']}")
            rows, cols = info["shape"]
            arr.astype("<f4").tofile(os.path.join(outdir, f"{i}.f32"))
            print(name, rows, cols)


if __name__ == "__main__":
    main()
