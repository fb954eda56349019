#!/usr/bin/env python3
"""Per-tensor quantisation error, quern vs llama.cpp's quantiser, same input, same imatrix.

    .venv/bin/python bench/quant_error.py [--no-synthetic] [--synthetic-imatrix-chunks N]

For each block type (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS) both tools quantise the
same F32 GGUF with the mix that uses the type (Q2_K, Q3_K_M, Q4_K_M, Q5_K_M, Q6_K, IQ4_NL,
IQ4_XS): `quern quantize IN -o OUT --type MIX [--imatrix X]` and `llama-quantize [--imatrix X]
IN OUT MIX`, 2 threads. Every tensor that both files store in that type is dequantised with
PyPI gguf and compared to the F32 weights: relative RMS error sqrt(sum e^2 / sum w^2); with an
imatrix also the importance-weighted one sqrt(sum_j a_j e_ij^2 / sum_j a_j w_ij^2) (a_j =
in_sum2/counts of the imatrix, the objective both quantisers minimise).

Models:
* reference: .cache/reference/smollm2-f32.gguf (SmolLM2-135M). Its weights lie on a Q4_1
  grid (make-reference-model), which flatters 4-bit errors; its 576-column tensors do not
  fit 256-blocks, so K-quant/IQ4_XS rows come only from ffn_down (1536 columns).
* synthetic: the first 2 layers of .cache/synthetic/llama-1.1b (random N(0, 0.02) weights,
  2048 columns), cut into a HF folder and converted to F32 GGUF by `quern convert`; llama.cpp
  gets --token-embedding-type q8_0 --output-tensor-type q8_0 there (those tensors are not
  compared; this only saves time).
Imatrix: llama-imatrix -f tinyshakespeare --chunks 20 (reference; --synthetic-imatrix-chunks
for the synthetic model) -c 512 -t 2, cached in .cache/bench-tmp/quant-error.
Writes bench/results/quant-error.md.
"""
import argparse
import datetime
import json
import math
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader
from gguf.quants import dequantize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "python"))
import quernlib as q  # noqa: E402

QUERN = REPO / "target" / "release" / "quern"
BIN = REPO / ".cache" / "llama.cpp" / "build" / "bin"
WORK = REPO / ".cache" / "bench-tmp" / "quant-error"
CALIB = q.SHARED / "data" / "tinyshakespeare" / "input.txt"
SYNTH_SRC = REPO / ".cache" / "synthetic" / "llama-1.1b"
CASES = [("Q2_K", "Q2_K"), ("Q3_K", "Q3_K_M"), ("Q4_K", "Q4_K_M"), ("Q5_K", "Q5_K_M"), ("Q6_K", "Q6_K"),
         ("IQ4_NL", "IQ4_NL"), ("IQ4_XS", "IQ4_XS")]


def run(cmd, log):
    t0 = time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"failed ({rc}): {' '.join(map(str, cmd))}\n" + Path(log).read_text()[-3000:])
    return time.perf_counter() - t0


def cut_synthetic(dst, layers=2):
    """HF folder with the first `layers` layers of the synthetic 1.1B model (bf16 bytes copied)."""
    if (dst / "model.safetensors").exists():
        return dst
    dst.mkdir(parents=True, exist_ok=True)
    src = q.read_safetensors(SYNTH_SRC)
    keep = {k: v for k, v in src.items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    header, off = {}, 0
    for k, (dtype, shape, arr) in sorted(keep.items()):
        header[k] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + arr.nbytes]}
        off += arr.nbytes
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    tmp = dst / "model.safetensors.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hb)) + hb)
        for k in sorted(keep):
            f.write(np.ascontiguousarray(keep[k][2]).tobytes())
    tmp.rename(dst / "model.safetensors")
    cfg = json.loads((SYNTH_SRC / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    (dst / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (SYNTH_SRC / name).exists():
            shutil.copy(SYNTH_SRC / name, dst / name)
    return dst


def imatrix(model, out, chunks):
    if not out.exists():
        secs = run([BIN / "llama-imatrix", "-m", model, "-f", CALIB, "--chunks", chunks, "-c", 512, "-t", 2,
                    "-o", out], out.with_suffix(".log"))
        print(f"  llama-imatrix {model.name}: {secs:.1f} s", file=sys.stderr)
    r = GGUFReader(out)
    data = {t.name: np.asarray(t.data, dtype=np.float64) for t in r.tensors}
    return {k[: -len(".in_sum2")]: data[k] / max(float(data[k[: -len(".in_sum2")] + ".counts"][0]), 1.0)
            for k in data if k.endswith(".in_sum2")}


def compare(ref, ours_path, theirs_path, target, imat):
    ours = {t.name: t for t in GGUFReader(ours_path).tensors}
    theirs = {t.name: t for t in GGUFReader(theirs_path).tensors}
    rows = []
    for name, w_t in ref.items():
        a, b = ours.get(name), theirs.get(name)
        if a is None or b is None or a.tensor_type != T[target] or b.tensor_type != T[target]:
            continue
        shape = [int(x) for x in reversed(w_t.shape)]
        w = np.asarray(w_t.data, dtype=np.float64).reshape(shape)
        ea = dequantize(np.asarray(a.data), a.tensor_type).reshape(shape) - w
        eb = dequantize(np.asarray(b.data), b.tensor_type).reshape(shape) - w
        row = {"name": name, "sw": float((w * w).sum()), "sa": float((ea * ea).sum()), "sb": float((eb * eb).sum())}
        if imat is not None and name in imat:
            c = imat[name]
            row.update(wsw=float(((w * w) @ c).sum()), wsa=float(((ea * ea) @ c).sum()), wsb=float(((eb * eb) @ c).sum()))
        rows.append(row)
    return rows


def summarise(rows, weighted):
    p = "w" if weighted else ""
    if not rows or (weighted and "wsw" not in rows[0]):
        return None
    sw, sa, sb = (sum(r[p + k] for r in rows) for k in ("sw", "sa", "sb"))
    per = [math.sqrt(r[p + "sa"] / r[p + "sb"]) if r[p + "sb"] > 0 else float("inf") for r in rows]
    return {"n": len(rows), "ours": math.sqrt(sa / sw), "theirs": math.sqrt(sb / sw), "ratio": math.sqrt(sa / sb),
            "better": sum(x < 1 for x in per), "worst": max(per), "worst_name": rows[int(np.argmax(per))]["name"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--synthetic-imatrix-chunks", type=int, default=20)
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "quant-error.md"))
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)

    models = [("smollm2-135m (reference, Q4_1-grid weights)", q.REFERENCE_F32,
               WORK / "imatrix-smollm2.gguf", 20, [])]
    if not args.no_synthetic:
        folder = cut_synthetic(WORK / "llama-1.1b-2layers")
        f32 = WORK / "llama-1.1b-2layers-f32.gguf"
        if not f32.exists():
            run([QUERN, "convert", folder, "-o", f32, "--outtype", "f32", "--quiet"], WORK / "convert.log")
        models.append(("llama-1.1b synthetic, first 2 layers (random weights)", f32,
                       WORK / f"imatrix-synth-{args.synthetic_imatrix_chunks}.gguf", args.synthetic_imatrix_chunks,
                       ["--token-embedding-type", "q8_0", "--output-tensor-type", "q8_0"]))

    results = []
    for label, model, imat_path, chunks, extra in models:
        print(f"== {label}", file=sys.stderr)
        ref = {t.name: t for t in GGUFReader(model).tensors if len(t.shape) == 2}
        imat = imatrix(model, imat_path, chunks)
        for target, mix in CASES:
            for use_imat in (False, True):
                tag = f"{model.stem}-{mix}{'-imat' if use_imat else ''}"
                ours, theirs = WORK / f"{tag}-quern.gguf", WORK / f"{tag}-llama.gguf"
                im = ["--imatrix", imat_path] if use_imat else []
                tq = run([QUERN, "quantize", model, "-o", ours, "--type", mix, "--threads", 2, "--quiet", *im],
                         WORK / "quern.log")
                tl = run([BIN / "llama-quantize", *im, *extra, model, theirs, mix, 2], WORK / "llama.log")
                rows = compare(ref, ours, theirs, target, imat if use_imat else None)
                ours.unlink(); theirs.unlink()
                r = {"model": label, "type": target, "mix": mix, "imatrix": use_imat,
                     "plain": summarise(rows, False), "weighted": summarise(rows, True) if use_imat else None}
                results.append(r)
                s = r["plain"]
                print(f"  {target:7s} {'imatrix' if use_imat else '       '} n={s['n'] if s else 0} "
                      + (f"ours {s['ours']:.5f} llama.cpp {s['theirs']:.5f} ratio {s['ratio']:.4f} worst {s['worst']:.3f}"
                         if s else "no tensors of this type in both") + f" (quern {tq:.1f} s, llama-quantize {tl:.1f} s)",
                      file=sys.stderr)

    cpu = next((l.split(": ", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    qv = subprocess.run([str(QUERN), "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "## quantisation error: quern vs llama.cpp's quantiser (same input, same imatrix)\n",
        f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {cpu}; {qv}; llama.cpp vendored in "
        f"llama-cpp-python {(REPO / '.cache/llama.cpp/src/.quern-source-version').read_text().strip() if (REPO / '.cache/llama.cpp/src/.quern-source-version').exists() else '?'}. "
        "Command: `.venv/bin/python bench/quant_error.py`.\n",
        "Relative RMS error = sqrt(Σe² / Σw²) over all tensors of the type that both files store in it "
        "(aggregate over tensors); *weighted*: each column weighted by the imatrix (Σx² / count, the objective "
        "both quantisers minimise with an imatrix). *better*: tensors where ours is lower; *worst*: the largest "
        "per-tensor ratio ours/llama.cpp. Imatrix: `llama-imatrix -f tinyshakespeare/input.txt -c 512 -t 2` "
        "(chunks as listed), the same file given to both tools.\n",
    ]
    for label, model, imat_path, chunks, extra in models:
        lines.append(f"\n### {label}\n\ninput `{model.name}`; imatrix {chunks} chunks"
                     + (f"; llama-quantize also given `{' '.join(extra)}` (not compared)" if extra else "") + "\n")
        lines.append("| type (mix) | imatrix | tensors | ours rel. RMS | llama.cpp rel. RMS | ratio | better | worst ratio |"
                     " ours weighted | llama.cpp weighted | weighted ratio |")
        lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            if r["model"] != label:
                continue
            s, w = r["plain"], r["weighted"]
            if not s:
                lines.append(f"| {r['type']} ({r['mix']}) | {'yes' if r['imatrix'] else 'no'} | 0 | – | – | – | – | – | – | – | – |")
                continue
            wcols = f"{w['ours']:.5f} | {w['theirs']:.5f} | {w['ratio']:.4f}" if w else "– | – | –"
            lines.append(f"| {r['type']} ({r['mix']}) | {'yes' if r['imatrix'] else 'no'} | {s['n']} | {s['ours']:.5f} | "
                         f"{s['theirs']:.5f} | {s['ratio']:.4f} | {s['better']}/{s['n']} | {s['worst']:.3f} | {wcols} |")
    md = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    (WORK / "quant-error.json").write_text(json.dumps(results, indent=2))
    print(md)


if __name__ == "__main__":
    main()
