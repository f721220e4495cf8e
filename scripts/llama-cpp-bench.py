#!/usr/bin/env python3
"""llama.cpp's speed on a GGUF model, measured the way `sepchat bench` measures ours
(crates/sepchat-engine/src/bench.rs): for each context N, N tokens fill a fresh cache, then a
prompt is prefilled in one call (timed), and, in other fresh caches, tokens are decoded one at a
time (timed), the contexts taking turns in bursts of 16 tokens as ours do. A point whose tokens
do not fit the model's trained context is null, as ours is for a dense cache.

Uses the llama-cpp-python package (a manual install that compiles llama.cpp:
`pip install llama-cpp-python==0.3.36`). Prints one JSON object on stdout:

    {"tool": "llama-cpp-python 0.3.36, flash_attn=True", "llama_cpp_version": "0.3.36",
     "model": "SmolLM2-135M-Instruct.Q4_1.gguf", "n_ctx_train": 8192, "source_tokens": 1234,
     "prefill_tokens": 512, "decode_tokens": 128,
     "points": [{"threads": 1, "context": 0, "prefill_tok_s": 139.8, "decode_tok_s": 51.8}, ...],
     "peak_rss_mib": 310.2}

    python3 scripts/llama-cpp-bench.py [MODEL.gguf] [--threads 1,2] [--contexts 0,2048]
        [--prefill 512] [--decode 128] [--flash-attn on|off] [--tokens-json IDS.json | --text FILE]

`sepchat bench --compare llama-cpp` runs this script (embedded in the binary) with `--tokens-json`
holding the ids our own bench feeds, so both engines see identical tokens. Without it the script
tokenizes the bench text itself as our tokenizer does (special tokens parsed, BOS only when the
GGUF asks for it).
"""
import argparse
import json
import os
import resource
import sys
import time

# Tokens each context decodes before the next context takes its turn: DECODE_BURST in
# crates/sepchat-engine/src/bench.rs. Taking turns puts a drifting machine's slowdown into every
# context's time instead of into whichever context ran last.
DECODE_BURST = 16
# Tokens fed once to each fresh context before anything is timed, as our bench warms up: the
# first calls pay for buffer allocation.
WARM_UP_TOKENS = 16


def int_list(text):
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def default_text_path():
    # Run from the repository (not through `python -c`): the bench text beside our bench command.
    here = globals().get("__file__")
    if here is None:
        return None
    return os.path.join(os.path.dirname(os.path.abspath(here)), "..", "crates", "sepchat-cli", "src", "bench_text.txt")


def parse_args():
    parser = argparse.ArgumentParser(description="llama.cpp's prefill and decode speed, measured as `sepchat bench` does.")
    parser.add_argument("model_path", nargs="?", help="the GGUF model (same as --model)")
    parser.add_argument("--model", help="the GGUF model; default: the downloaded SmolLM2-135M-Instruct")
    parser.add_argument("--threads", type=int_list, default=[1, 2], help="thread counts, comma-separated (default 1,2)")
    parser.add_argument("--contexts", type=int_list, default=[0, 2048], help="tokens of context before each measurement (default 0,2048)")
    parser.add_argument("--prefill", type=int, default=512, help="prompt tokens for the prefill measurement (0 skips it)")
    parser.add_argument("--decode", type=int, default=128, help="tokens decoded one at a time (0 skips it)")
    parser.add_argument("--flash-attn", choices=["on", "off"], default="on",
                        help="llama.cpp's flash attention (default on, its CPU default; off decodes faster at long contexts)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tokens-json", help="a JSON array of token ids to cycle as input (what `sepchat bench` feeds)")
    source.add_argument("--text", help="a text file to tokenize and cycle as input (default: the repository's bench text)")
    args = parser.parse_args()
    if args.model and args.model_path:
        parser.error("give the model once, positionally or with --model")
    args.model = args.model or args.model_path or os.path.expanduser("~/.cache/sepchat/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    if args.prefill < 0 or args.decode < 0 or any(c < 0 for c in args.contexts) or any(t < 1 for t in args.threads):
        parser.error("token counts and contexts must be >= 0 and thread counts >= 1")
    if not args.tokens_json and not args.text:
        args.text = default_text_path()
        if args.text is None:
            parser.error("pass --tokens-json or --text (no bench text beside this script)")
    return args


def main():
    args = parse_args()
    # Imported here so that --help works, and a missing package fails with one clear line.
    try:
        import llama_cpp
        from llama_cpp import Llama
    except ImportError as error:
        sys.exit(f"error: cannot import llama_cpp ({error}); install it with `pip install llama-cpp-python==0.3.36`")
    if not os.path.isfile(args.model):
        sys.exit(f"error: model file not found: {args.model}")

    def load(threads, n_ctx):
        return Llama(model_path=args.model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                     n_batch=512, flash_attn=args.flash_attn == "on", verbose=False)

    # A small context only to read the trained context length and, without --tokens-json, tokenize.
    probe = load(args.threads[0], 64)
    n_ctx_train = llama_cpp.llama_model_n_ctx_train(probe.model)
    if args.tokens_json:
        with open(args.tokens_json) as file:
            source = json.load(file)
        if not isinstance(source, list) or not all(isinstance(t, int) and t >= 0 for t in source):
            sys.exit(f"error: {args.tokens_json} is not a JSON array of token ids")
    else:
        with open(args.text, encoding="utf-8") as file:
            text = file.read()
        # add_bos=True adds BOS only when the GGUF asks for it; special=True parses special tokens:
        # the same as our GgufTokenizer::encode.
        source = probe.tokenize(text.encode(), add_bos=True, special=True)
    del probe
    if not source:
        sys.exit("error: no input tokens")

    def tokens(start, count):
        return [source[i % len(source)] for i in range(start, start + count)]

    def fits(context, extra):
        # As our dense cache: nothing past the trained context, and 0 tokens means "not measured".
        return extra > 0 and context + extra <= n_ctx_train

    def fresh(llm, context):
        llm.reset()
        if context:
            llm.eval(tokens(0, context))

    results = []
    for threads in args.threads:
        # One llama.cpp context per measured context, sized for it, so the decode runs can take turns.
        contexts = {}
        for context in args.contexts:
            extras = [extra for extra in (args.prefill, args.decode) if fits(context, extra)]
            if extras and context not in contexts:
                llm = load(threads, max(context + max(extras), WARM_UP_TOKENS))
                llm.eval(tokens(0, WARM_UP_TOKENS))
                contexts[context] = llm

        points = []
        for context in args.contexts:
            prefill = None
            if fits(context, args.prefill):
                llm = contexts[context]
                fresh(llm, context)
                started = time.perf_counter()
                llm.eval(tokens(context, args.prefill))
                prefill = args.prefill / (time.perf_counter() - started)
            points.append({"threads": threads, "context": context, "prefill_tok_s": prefill, "decode_tok_s": None})

        runs = []
        for index, context in enumerate(args.contexts):
            # A context listed twice gets one llama.cpp context: measure it once, copy the result.
            if fits(context, args.decode) and all(run["context"] != context for run in runs):
                fresh(contexts[context], context)
                runs.append({"index": index, "context": context, "llm": contexts[context],
                             "steps": tokens(context, args.decode), "done": 0, "seconds": 0.0})
        while any(run["done"] < len(run["steps"]) for run in runs):
            for run in runs:
                if run["done"] >= len(run["steps"]):
                    continue
                burst = min(len(run["steps"]), run["done"] + DECODE_BURST)
                started = time.perf_counter()
                for token in run["steps"][run["done"]:burst]:
                    run["llm"].eval([token])
                run["seconds"] += time.perf_counter() - started
                run["done"] = burst
        for run in runs:
            speed = len(run["steps"]) / run["seconds"]
            for point in points:
                if point["context"] == run["context"]:
                    point["decode_tok_s"] = speed
        results.extend(points)
        contexts.clear()

    print(json.dumps({
        "tool": f"llama-cpp-python {llama_cpp.__version__}, flash_attn={args.flash_attn == 'on'}",
        "llama_cpp_version": llama_cpp.__version__,
        "model": os.path.basename(args.model),
        "n_ctx_train": n_ctx_train,
        "source_tokens": len(source),
        "prefill_tokens": args.prefill,
        "decode_tokens": args.decode,
        "points": results,
        # The process's high-water resident set (Linux reports KiB), the Python interpreter included: one
        # context per run makes it that context's figure.
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))


if __name__ == "__main__":
    main()
