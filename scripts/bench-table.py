#!/usr/bin/env python3
"""The speed table of docs/BENCHMARKS.md: prefill and decode tok/s of sepchat (dense and the SepCache
profiles), candle's stock quantized_llama and llama.cpp at several conversation lengths, each point
in a process of its own so that the peak resident memory reported beside it is that point's alone.

    python3 scripts/bench-table.py [--sepchat BIN] [--llama-bench BIN] [--threads 1]
        [--contexts 0,2048,8192,32768] [--caches dense,low,default,high] [--out results.jsonl]

--sepchat: a release build of `sepchat` (default: $CARGO_TARGET_DIR/release/sepchat).
--llama-bench: llama.cpp's own `llama-bench` (built from the llama-cpp-python sdist's vendor/llama.cpp,
see docs/BENCHMARKS.md); without it the llama.cpp columns are left out. llama.cpp runs with flash
attention on (its CPU default, `-fa auto`) and off: at long contexts its flash-attention path is the
slower one, and the table shows both.

Every point is prefill of a 512-token prompt and decode of 128 tokens after N tokens of context, as
`sepchat bench` and `llama-bench -p 512 -n 128 -d N` measure them. A point that an engine cannot run
(a dense cache or llama.cpp past the model's trained context of 8,192; the stock model past its
4,096-row RoPE table) is n/a; the densest point that still fits, 8,192 - 512 = 7,680, is measured
instead for dense and llama.cpp. Prints the markdown table on stdout and every raw result to --out.
"""
import argparse
import json
import os
import subprocess
import sys

PREFILL = 512
DECODE = 128


def int_list(text):
    return [int(item) for item in text.split(",") if item.strip()]


def run_with_rss(command):
    """Runs `command` and returns (stdout, its peak RSS in MiB) from wait4's per-child rusage."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        os.dup2(write_end, 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end) as reader:
        for chunk in iter(lambda: reader.read(65536), ""):
            chunks.append(chunk)
    _, status, usage = os.wait4(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(command)} failed with status {os.waitstatus_to_exitcode(status)}")
    return "".join(chunks), usage.ru_maxrss / 1024  # Linux reports KiB


def sepchat_point(binary, threads, cache, context, stock):
    command = [binary, "--threads", str(threads), "bench", "--contexts", str(context), "--prefill", str(PREFILL),
               "--decode", str(DECODE), "--json"]
    command += ["--stock-only"] if stock else ["--cache", cache, "--no-stock"]
    stdout, rss = run_with_rss(command)
    report = json.loads(stdout.strip().splitlines()[-1])
    point = report["points"][0]
    numbers = point["candle_stock"] if stock else point["sepchat"]
    numbers = numbers or {}
    return {"engine": "candle stock" if stock else f"sepchat {point['cache']}", "context": context,
            "prefill_tok_s": numbers.get("prefill_tok_s"), "decode_tok_s": numbers.get("decode_tok_s"),
            "kv_mib": None if stock else numbers.get("kv_mib_held"), "peak_rss_mib": rss}


def llama_point(binary, model, threads, context, flash):
    command = [binary, "-m", model, "-t", str(threads), "-p", str(PREFILL), "-n", str(DECODE), "-d", str(context),
               "-fa", "on" if flash else "off", "-r", "1", "-o", "json"]
    stdout, rss = run_with_rss(command)
    results = json.loads(stdout)
    speed = {("prefill" if r["n_prompt"] else "decode"): r["avg_ts"] for r in results}
    return {"engine": f"llama.cpp (flash attention {'on' if flash else 'off'})", "context": context,
            "prefill_tok_s": speed.get("prefill"), "decode_tok_s": speed.get("decode"), "kv_mib": None,
            "peak_rss_mib": rss}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(os.path.dirname(__file__), "..", "target"))
    parser.add_argument("--sepchat", default=os.path.join(target, "release", "sepchat"))
    parser.add_argument("--llama-bench")
    parser.add_argument("--model", default=os.path.expanduser("~/.cache/sepchat/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--contexts", type=int_list, default=[0, 2048, 8192, 32768])
    parser.add_argument("--caches", default="dense,low,default,high")
    parser.add_argument("--out", default="bench-table.jsonl")
    args = parser.parse_args()
    trained = 8192

    points = []

    def record(point):
        points.append(point)
        with open(args.out, "a") as out:
            out.write(json.dumps(point) + "\n")
        print(f"  {point}", file=sys.stderr, flush=True)

    def dense_contexts(limit):
        # Past the limit, the densest context that still fits (once).
        fitted = sorted({c if c + PREFILL <= limit else limit - PREFILL for c in args.contexts})
        return fitted

    for cache in args.caches.split(","):
        contexts = dense_contexts(trained) if cache == "dense" else args.contexts
        for context in contexts:
            record(sepchat_point(args.sepchat, args.threads, cache, context, stock=False))
    for context in [c for c in args.contexts if c + PREFILL <= 4096]:
        record(sepchat_point(args.sepchat, args.threads, "dense", context, stock=True))
    if args.llama_bench:
        for flash in (True, False):
            for context in dense_contexts(trained):
                record(llama_point(args.llama_bench, args.model, args.threads, context, flash))

    def cell(value):
        return "n/a" if value is None else f"{value:.1f}"

    print(f"| engine (threads {args.threads}) | context | prefill tok/s | decode tok/s | KV MiB | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for point in points:
        print(f"| {point['engine']} | {point['context']:,} | {cell(point['prefill_tok_s'])} | "
              f"{cell(point['decode_tok_s'])} | {cell(point['kv_mib'])} | {cell(point['peak_rss_mib'])} |")


if __name__ == "__main__":
    main()
