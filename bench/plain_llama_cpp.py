#!/usr/bin/env python3
"""The plain side of bench/llama_cpp_cpu.py: one xllamacpp server, one batch-1 generation, no factory import.

    python bench/plain_llama_cpp.py FILE.gguf PROMPT_TOKENS NEW_TOKENS

Prints `BENCH_JSON {"decode_s": ..., "decode_tokens_per_s": ...}` from llama.cpp's own timings, the
best of two runs after a warm-up, as the factory's speed stage does.
"""

import json
import os
import random
import sys

import xllamacpp


def main() -> int:
    path, prompt_tokens, new_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    params = xllamacpp.CommonParams()
    params.model.path = path
    params.n_ctx = prompt_tokens + new_tokens + 8
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = int(os.environ.get("OMP_NUM_THREADS") or
                                                                        len(os.sched_getaffinity(0)))
    params.warmup = False
    server = xllamacpp.Server(params)
    rng = random.Random(0)

    def run(n_prompt: int, n_new: int) -> dict:
        ids = [rng.randrange(16, 32000) for _ in range(n_prompt)]
        return server.handle_completions({"prompt": ids, "n_predict": n_new, "temperature": 0.0,
                                          "ignore_eos": True, "cache_prompt": False})["timings"]

    run(16, 2)
    best = min((run(prompt_tokens, new_tokens) for _ in range(2)), key=lambda t: t["predicted_ms"])
    print("BENCH_JSON " + json.dumps({"decode_s": best["predicted_ms"] / 1000,
                                      "decode_tokens_per_s": best["predicted_n"] / best["predicted_ms"] * 1000}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
