"""llama.cpp (through llama-cpp-python) as an independent reference for the runtime tests.

  llama_ref.py logits MODEL TOKENS_U32 OUT_F32   every position's logits, row-major
  llama_ref.py tokenize MODEL TEXT OUT_U32       token ids of a UTF-8 text (specials parsed)
"""
import sys

import numpy as np
from llama_cpp import Llama


def main():
    mode, model, src, out = sys.argv[1:5]
    if mode == "logits":
        toks = np.fromfile(src, dtype=np.uint32).tolist()
        llm = Llama(model_path=model, logits_all=True, n_ctx=max(256, len(toks)),
                    n_batch=max(32, len(toks)), n_threads=2, verbose=False)
        llm.eval(toks)
        np.asarray(llm.scores[: len(toks)], dtype=np.float32).tofile(out)
    elif mode == "tokenize":
        llm = Llama(model_path=model, vocab_only=True, verbose=False)
        with open(src, "rb") as f:
            ids = llm.tokenize(f.read(), add_bos=False, special=True)
        np.asarray(ids, dtype=np.uint32).tofile(out)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
