#!/usr/bin/env python3
"""llama.cpp's speed on the default model, measured the way `sepchat bench` measures ours:
prefill of a 512-token prompt and decode of 128 tokens one at a time, after N tokens of context,
for 1 and 2 threads. Uses the llama-cpp-python package (a manual install that compiles llama.cpp:
`pip install llama-cpp-python==0.3.36`); prints one JSON object.

    python3 scripts/llama-cpp-bench.py [MODEL.gguf] [--contexts 0,2048]
"""
import json
import os
import sys
import time

from llama_cpp import Llama
import llama_cpp

model = next((a for a in sys.argv[1:] if a.endswith(".gguf")), os.path.expanduser("~/.cache/sepchat/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
contexts = [0, 2048]
if "--contexts" in sys.argv:
    contexts = [int(c) for c in sys.argv[sys.argv.index("--contexts") + 1].split(",")]
TEXT = open(os.path.join(os.path.dirname(__file__), "..", "crates", "sepchat-cli", "src", "bench_text.txt")).read()

results = []
for threads in (1, 2):
    llm = Llama(model_path=model, n_ctx=max(contexts) + 1024, n_threads=threads, n_threads_batch=threads,
                n_batch=512, flash_attn=True, verbose=False)
    source = llm.tokenize(TEXT.encode(), add_bos=False, special=False)
    tokens = lambda start, count: [source[i % len(source)] for i in range(start, start + count)]
    for context in contexts:
        llm.reset()
        if context:
            llm.eval(tokens(0, context))
        started = time.perf_counter()
        llm.eval(tokens(context, 512))
        prefill = 512 / (time.perf_counter() - started)
        llm.reset()
        if context:
            llm.eval(tokens(0, context))
        started = time.perf_counter()
        for token in tokens(context, 128):
            llm.eval([token])
        decode = 128 / (time.perf_counter() - started)
        results.append({"threads": threads, "context": context, "prefill_tok_s": prefill, "decode_tok_s": decode})
print(json.dumps({"tool": f"llama-cpp-python {llama_cpp.__version__}, flash_attn=True", "model": os.path.basename(model), "points": results}))
