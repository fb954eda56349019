"""`quern inspect --json` agrees with PyPI `gguf`'s GGUFReader (llama.cpp's own reader)
on our converted files and on a GGUF that llama.cpp made (the wheel's Q4_1 file),
and with the safetensors headers on the HF folder."""
import json
import subprocess

import pytest
from gguf import GGUFReader, GGUFValueType

import quernlib as q


def inspect_json(quern_bin, path):
    proc = subprocess.run([str(quern_bin), "inspect", "--json", str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"quern inspect --json {path} exited {proc.returncode}:\n{proc.stderr}"
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError as e:
        pytest.fail(f"quern inspect --json printed no JSON on stdout ({e}):\n{proc.stdout[:500]}")


def reader_tensors(path):
    return [(t.name, t.tensor_type.name, [int(x) for x in t.shape]) for t in GGUFReader(path).tensors]


def json_tensors(doc):
    return [(t["name"], str(t["type"]).upper(), [int(x) for x in t["shape"]]) for t in doc["tensors"]]


@pytest.mark.parametrize("source", ["ours-bf16", "ours-q8_0", "llama.cpp-q4_1"])
def test_inspect_gguf_matches_gguf_reader(source, quern_bin, converted, reference):
    path = q.REFERENCE_Q41 if source == "llama.cpp-q4_1" else converted(source.split("-", 1)[1])
    doc = inspect_json(quern_bin, path)
    want = reader_tensors(path)
    got = json_tensors(doc)
    assert len(got) == len(want) == 272
    # Same tensors in the same (file) order, with GGUF's dimension order (ne[0] first).
    assert got == want, next(f"{g} != {w}" for g, w in zip(got, want) if g != w)

    # Metadata: every key GGUFReader sees (less its GGUF.* header pseudo-keys), scalars equal.
    reader = GGUFReader(path)
    keys = {k for k in reader.fields if not k.startswith("GGUF.")}
    assert set(doc["metadata"]) == keys
    for k in keys:
        f = reader.fields[k]
        if f.types[0] != GGUFValueType.ARRAY:
            v, want_v = doc["metadata"][k], f.contents()
            if isinstance(want_v, float):
                assert v == pytest.approx(want_v, rel=1e-6), k
            else:
                assert v == want_v, k


def test_inspect_folder_matches_safetensors(quern_bin, reference, reference_tensors):
    doc = inspect_json(quern_bin, reference)
    got = {t["name"]: (str(t["type"]).upper(), [int(x) for x in t["shape"]]) for t in doc["tensors"]}
    want = {name: (dtype, list(shape)) for name, (dtype, shape, _) in reference_tensors.items()}
    assert got == want
