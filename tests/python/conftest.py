"""Fixtures for quern's Python integration tests.

Run:  .venv/bin/python -m pytest tests/python            (add -s to see the measured figures)
      .venv/bin/python -m pytest tests/python -m "not llama"   (skip the llama.cpp runs)
Needs: the release binary (env QUERN_BIN, default <repo>/target/release/quern), the
reference fixtures (testdata/reference-model.sh) and the test venv (testdata/setup-python.sh).
Missing prerequisites skip the tests, unless QUERN_REQUIRE_PYTHON=1 or CI is set
(as in .ci/run): then they fail.
Measured figures are written as JSON to QUERN_RESULTS_DIR (default: pytest's tmp dir).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import quernlib as q  # noqa: E402

require = q.require


def pytest_configure(config):
    config.addinivalue_line("markers", "llama: runs llama.cpp (llama-cpp-python) on the converted files")


@pytest.fixture(scope="session")
def quern_bin():
    path = Path(os.environ.get("QUERN_BIN", q.REPO / "target" / "release" / "quern"))
    require(path.is_file() and os.access(path, os.X_OK),
            f"quern binary not found at {path} (cargo build --release -p quern, or set QUERN_BIN)")
    return path


@pytest.fixture(scope="session")
def reference():
    for p in (q.REFERENCE_MODEL / "model.safetensors", q.REFERENCE_Q41, q.REFERENCE_F32):
        require(p.exists(), f"{p} missing (run testdata/reference-model.sh)")
    return q.REFERENCE_MODEL


@pytest.fixture(scope="session")
def reference_config(reference):
    return json.loads((reference / "config.json").read_text())


@pytest.fixture(scope="session")
def reference_tensors(reference):
    return q.read_safetensors(reference)


@pytest.fixture(scope="session")
def wikitext():
    require(q.WIKITEXT.exists(), f"{q.WIKITEXT} missing")
    return q.WIKITEXT.read_text(encoding="utf-8")


def run_quern(quern_bin, *args, timeout=600):
    proc = subprocess.run([str(quern_bin), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"quern {' '.join(map(str, args))} exited {proc.returncode}:\n{proc.stderr}"
    return proc


@pytest.fixture(scope="session")
def converted(quern_bin, reference, tmp_path_factory):
    """converted(outtype) -> path of the reference model converted by `quern convert` (cached per session)."""
    out_dir = tmp_path_factory.mktemp("converted")
    cache = {}

    def get(outtype):
        if outtype not in cache:
            out = out_dir / f"smollm2-{outtype}.gguf"
            run_quern(quern_bin, "convert", reference, "-o", out, "--outtype", outtype, "--quiet")
            assert out.is_file(), f"quern convert reported success but wrote no {out}"
            # Temporary outputs are named .NAME.tmp-*; the provenance sidecar NAME.provenance.json is expected.
            leftovers = [p.name for p in out_dir.iterdir()
                         if out.name in p.name and p != out and p.name != out.name + ".provenance.json"]
            assert not leftovers, f"temporary files left beside the output: {leftovers}"
            cache[outtype] = out
        return cache[outtype]

    return get


@pytest.fixture(scope="session")
def results_dir(tmp_path_factory):
    d = Path(os.environ["QUERN_RESULTS_DIR"]) if os.environ.get("QUERN_RESULTS_DIR") else tmp_path_factory.mktemp("results")
    d.mkdir(parents=True, exist_ok=True)
    return d
