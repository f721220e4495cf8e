#!/usr/bin/env python3
"""Writes tests/golden/llama-cpp-greedy.json: llama.cpp's own greedy decoding of the prompts in
../shared/reference/greedy.json, with the top logits of every step, as computed by the
llama-cpp-python package (which compiles llama.cpp from source on this machine).

Why a second golden: the team's greedy.json was made by a llama.cpp build we cannot rebuild, and
its continuations sit on near-ties (logit margins of 0.001-0.2) that depend on how llama.cpp was
compiled; a llama.cpp built here (llama-cpp-python 0.3.36, flash attention on) reproduces none of
them exactly. This file pins one real llama.cpp build, so the engine is held to it bit for bit.

Manual step, not part of `make test` (compiling llama.cpp takes ~15 minutes on 2 cores):
    pip install llama-cpp-python==0.3.36
    python3 scripts/llama-cpp-goldens.py [MODEL.gguf] [SHARED_DIR]

FLASH_ATTN=off writes tests/golden/llama-cpp-greedy-fa-off.json instead: the same build without
flash attention, whose greedy continuations part from the flash-attention ones at near-ties (no
test compares with it; docs/BENCHMARKS.md reads it beside our fast attention arithmetic).
"""
import json
import os
import platform
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

TOP = 5
STEPS = 32

model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/sepchat/models/SmolLM2-135M-Instruct.Q4_1.gguf")
shared = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(__file__), "..", "..", "shared")
cases = json.load(open(os.path.join(shared, "reference", "greedy.json")))["cases"]

flash_attn = os.environ.get("FLASH_ATTN", "on") != "off"
llm = Llama(model_path=model, n_ctx=512, n_threads=2, logits_all=True, flash_attn=flash_attn, verbose=False)
out_cases = []
for case in cases:
    prompt_ids = llm.tokenize(case["prompt"].encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(prompt_ids)
    generated, steps = [], []
    for _ in range(STEPS):
        logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
        top = np.argsort(-logits, kind="stable")[:TOP]
        steps.append([[int(i), float(logits[i])] for i in top])
        token = int(top[0])
        generated.append(token)
        llm.eval([token])
    out_cases.append({
        "prompt": case["prompt"],
        "prompt_ids": prompt_ids,
        "generated_ids": generated,
        "text": llm.detokenize(generated).decode("utf-8", "replace"),
        "top_logits": steps,
    })

flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
golden = {
    "tool": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp compiled on the machine, GGML_NATIVE), flash_attn={flash_attn}, greedy, no BOS",
    "model": os.path.basename(model),
    "machine": f"{platform.machine()}, avx512f={'avx512f' in flags}, avx512_fp16={'avx512_fp16' in flags}",
    "steps": STEPS,
    "cases": out_cases,
}
name = "llama-cpp-greedy.json" if flash_attn else "llama-cpp-greedy-fa-off.json"
path = os.path.join(os.path.dirname(__file__), "..", "tests", "golden", name)
with open(path, "w") as f:
    json.dump(golden, f, indent=1)
print("wrote", os.path.normpath(path))
