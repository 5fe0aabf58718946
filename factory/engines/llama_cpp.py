"""llama.cpp itself, through the `xllamacpp` binding: load a GGUF, time it, score it, chat with it.

xllamacpp (MIT) wraps llama.cpp's own C++ server (`Server`, the code behind `llama-server`) and ships
prebuilt CPU wheels, so nothing is compiled at install. Its Server API answers completion and chat
requests in-process (dicts in, dicts out); `CommonParams.compute_ppl`/`kl_divergence` belong to the
`llama-perplexity` tool, which the Server does not run. So this module gets what llama-perplexity
reports from completion requests:

- teacher forcing, one token at a time: the request's prompt is a window's first t tokens and its one
  sampled token is forced to token t+1 with a logit bias. llama.cpp reports the log-probability of
  the sampled token, and the top-k (`n_probs`), from the raw logits (before the sampler chain, so
  the bias does not enter them). The slot's prompt cache holds the first t tokens, so each request
  evaluates one new token. The forced token's log-probability is exact: the perplexity is exact.
- the top-k lists of two models give top-1 agreement exactly and the KL divergence approximately
  (see `kl_from_top_k`).

Nothing here imports the pipeline (only factory.core.errors): factory.stages.speed calls it in a worker process of its own.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import re
import tempfile
import threading
import time
from pathlib import Path

from factory.core.errors import FactoryError

BINDING = "xllamacpp"
FORCE_BIAS = 1.0e4  # a logit bias no other token's logit comes near: the forced token is the greedy pick
# llama.cpp's lines that say why a file did not load, most specific first (generic "failed to load" last)
_REASON = re.compile(r"\bE\s+(?:\w+\s+)?(gguf_\w+|llama_model_load|llama_model_loader|load_model|\w+):\s*(.+)$")


class LoadError(FactoryError):
    """llama.cpp refused the file; the message names it and gives llama.cpp's reason (one line, exit 1)."""


def binding_version() -> str:
    try:
        return importlib.metadata.version(BINDING)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def default_threads() -> int:
    """The threads torch would use here (OMP_NUM_THREADS, else the cores this process may run on), so
    both runtimes of one card run with the same count."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "")))
    except ValueError:
        return max(1, len(os.sched_getaffinity(0)))


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send this process's fd 2 (where llama.cpp logs) to a file for a while."""
    saved = os.dup(2)
    with open(path, "wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def load_reason(log: str) -> str:
    """llama.cpp's own reason from its log: the first error line that is not a generic one."""
    reasons = []
    for line in log.splitlines():
        match = _REASON.search(line)
        if match and " E " in f" {line} ":
            reasons.append(match.group(2).strip())
    specific = [r for r in reasons if "failed to load model" not in r and "fit params" not in r
                and "exiting due to" not in r]
    return (specific or reasons or ["no reason in llama.cpp's log"])[0]


def open_server(path: Path, *, n_ctx: int, n_parallel: int = 1, threads: int | None = None):
    """A llama.cpp server over one GGUF file (in this process; no port is served to anyone else)."""
    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = str(path)
    params.n_ctx = n_ctx
    params.n_parallel = n_parallel
    params.cont_batching = True
    params.kv_unified = False  # each sequence its own slot of n_ctx / n_parallel
    params.n_batch = params.n_ubatch = min(512, n_ctx)
    params.cpuparams.n_threads = params.cpuparams_batch.n_threads = threads or default_threads()
    params.warmup = False
    params.n_gpu_layers = 0
    with tempfile.TemporaryDirectory(prefix="factory-llama-cpp-") as tmp:
        log = Path(tmp) / "load.log"
        try:
            with _stderr_to(log):
                return xllamacpp.Server(params)
        except RuntimeError:
            raise LoadError(f"llama.cpp could not load {path}: {load_reason(log.read_text(errors='replace'))}") from None


# ---------------------------------------------------------------- quality


def score_windows(server, windows: list[list[int]], top_k: int) -> list[dict]:
    """Teacher-forced next-token figures of every position after the first of each window:
    {"logprob": of the true next token, "top": [[id, logprob], ...] (the top_k, raw logits)}."""
    positions = []
    for window in windows:
        for t in range(1, len(window)):
            reply = server.handle_completions({
                "prompt": window[:t], "n_predict": 1, "temperature": 0.0, "n_probs": top_k,
                "logit_bias": [[window[t], FORCE_BIAS]], "cache_prompt": True,
            })
            entry = reply["choices"][0]["logprobs"]["content"][0]
            if entry["id"] != window[t]:
                raise RuntimeError(f"llama.cpp sampled token {entry['id']}, not the forced {window[t]}")
            positions.append({"logprob": entry["logprob"],
                              "top": [[c["id"], c["logprob"]] for c in entry["top_logprobs"]]})
    return positions


def kl_from_top_k(p_top: list, q_top: list) -> float:
    """KL(P || Q) of two next-token distributions known by their top-k lists (id, logprob).

    Exact figures over the tokens of P's top-k, plus one bucket for all other tokens (its mass is what
    the top-k leaves). A P token missing from Q's list gets Q's smallest listed probability (an upper
    bound of its true value). Merging the tail into one bucket can only lower a KL divergence (the
    data-processing inequality), so with Q's lists complete this is a lower bound of the full KL;
    it is what a binding that hands out no full logits allows."""
    q = {i: math.exp(lp) for i, lp in q_top}
    q_floor = min(q.values()) if q else 1e-12
    kl, p_mass, q_mass = 0.0, 0.0, 0.0
    for token, logprob in p_top:
        p_i = math.exp(logprob)
        q_i = q.get(token, q_floor)
        kl += p_i * (logprob - math.log(q_i))
        p_mass += p_i
        q_mass += q_i
    p_rest, q_rest = max(1.0 - p_mass, 0.0), max(1.0 - q_mass, 1e-12)
    if p_rest > 0:
        kl += p_rest * (math.log(p_rest) - math.log(q_rest))
    return max(kl, 0.0)


def compare(build: list[dict], base: list[dict]) -> dict:
    """What llama-perplexity --kl-divergence reports, from two runs of score_windows on the same windows."""
    if len(build) != len(base) or not build:
        raise ValueError(f"positions differ: {len(build)} scored for the build, {len(base)} for the base")
    kls = sorted(kl_from_top_k(b["top"], q["top"]) for b, q in zip(base, build))
    agree = sum(1 for b, q in zip(base, build) if b["top"] and q["top"] and b["top"][0][0] == q["top"][0][0])
    n = len(kls)

    def ppl(rows: list[dict]) -> float:
        return math.exp(-sum(r["logprob"] for r in rows) / len(rows))

    ppl_build, ppl_base = ppl(build), ppl(base)
    return {"positions": n, "perplexity": round(ppl_build, 4), "base_perplexity": round(ppl_base, 4),
            "perplexity_ratio": round(ppl_build / ppl_base, 4), "kl_divergence_mean": round(sum(kls) / n, 6),
            "kl_divergence_median": round(kls[n // 2], 6), "kl_divergence_p99": round(kls[min(n - 1, int(0.99 * n))], 6),
            "top1_agreement": round(agree / n, 4)}


def generate(server, prompt: str, new_tokens: int) -> str:
    reply = server.handle_completions({"prompt": prompt, "n_predict": new_tokens, "temperature": 0.0,
                                       "cache_prompt": False})
    return reply["choices"][0]["text"]


def chat(server, message: str, max_tokens: int) -> dict:
    """One user turn through the file's own chat template; `stopped_at_eos` says it ended on its EOS."""
    reply = server.handle_chat_completions({"messages": [{"role": "user", "content": message}],
                                            "max_tokens": max_tokens, "temperature": 0.0})
    choice = reply["choices"][0]
    return {"message": message, "reply": choice["message"]["content"], "finish_reason": choice["finish_reason"],
            "stopped_at_eos": choice["finish_reason"] == "stop",
            "completion_tokens": reply.get("usage", {}).get("completion_tokens")}


# ---------------------------------------------------------------- speed


def _rss_mb(field: str = "VmRSS") -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def random_prompt(vocab: int, length: int, seed: int) -> list[int]:
    """Random token ids away from the ends of the vocabulary, where special tokens usually sit."""
    import random

    rng = random.Random(seed)
    low, high = min(16, vocab // 4), max(vocab - 16, vocab * 3 // 4)
    return [rng.randrange(low, high) for _ in range(length)]


def run_batch(server, prompts: list[list[int]], new_tokens: int) -> dict:
    """`len(prompts)` sequences decoded at once (one thread each, llama.cpp batches them in its slots)."""
    timings: list[dict | None] = [None] * len(prompts)
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            reply = server.handle_completions({"prompt": prompts[i], "n_predict": new_tokens, "temperature": 0.0,
                                               "ignore_eos": True, "cache_prompt": False})
            timings[i] = reply["timings"]
        except BaseException as exc:  # re-raised below, in the caller's thread
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    if errors:
        raise errors[0]
    batch = len(prompts)
    prefill_s = max(t["prompt_ms"] for t in timings) / 1000
    decode_s = max(t["predicted_ms"] for t in timings) / 1000
    decoded = sum(t["predicted_n"] for t in timings)
    return {"batch_size": batch, "prefill_s": round(prefill_s, 4), "decode_s": round(decode_s, 4),
            "wall_s": round(wall, 4),
            "prefill_tokens_per_s": round(batch * len(prompts[0]) / prefill_s, 1) if prefill_s > 0 else None,
            "decode_tokens_per_s": round(decoded / decode_s, 1) if decode_s > 0 else None}


def measure_speed(path: Path, batch_sizes: list[int], prompt_tokens: int, new_tokens: int, repeats: int,
                  threads: int | None = None) -> dict:
    """Load time, file size, resident memory, and prefill/decode tokens/s at each batch size (the best of
    `repeats` runs; batch B runs B sequences at once in B slots of one server)."""
    slots = max(batch_sizes)
    threads = threads or default_threads()
    rss_before = _rss_mb()
    started = time.perf_counter()
    server = open_server(path, n_ctx=slots * (prompt_tokens + new_tokens + 8), n_parallel=slots, threads=threads)
    load_s = time.perf_counter() - started
    rss_loaded = _rss_mb()
    vocab = _vocab_size(path)
    run_batch(server, [random_prompt(vocab, 16, 0)], 2)  # warm-up
    batches = []
    for batch in batch_sizes:
        runs = [run_batch(server, [random_prompt(vocab, prompt_tokens, 1000 * r + i) for i in range(batch)],
                          new_tokens) for r in range(repeats)]
        best = {"batch_size": batch}
        for key in ("prefill_tokens_per_s", "decode_tokens_per_s"):
            best[key] = max((r[key] for r in runs if r[key] is not None), default=None)
        best["prefill_s"] = min(r["prefill_s"] for r in runs)
        best["decode_s"] = min(r["decode_s"] for r in runs)
        batches.append(best)
    del server
    return {"runtime": "llama.cpp", "binding": f"{BINDING} {binding_version()}", "device": "cpu", "threads": threads,
            "load_s": round(load_s, 3), "file_mb": round(path.stat().st_size / 2**20, 1),
            "weights_mb": round(path.stat().st_size / 2**20, 1), "weights_in_memory": "packed",
            "rss_before_load_mb": rss_before, "rss_loaded_mb": rss_loaded, "dtype": gguf_type_of(path),
            "peak_gpu_mb": None, "batches": batches}


def _vocab_size(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    return len(tokens.data) if tokens is not None else 32000


def gguf_type_of(path: Path) -> str | None:
    from gguf import GGUFReader, LlamaFileType

    field = GGUFReader(path).fields.get("general.file_type")
    if field is None:
        return None
    return LlamaFileType(int(field.parts[field.data[0]][0])).name.removeprefix("MOSTLY_").removeprefix("ALL_")


def check_loads(path: Path, timeout_s: float = 3600) -> None:
    """Raise LoadError (the file's name and llama.cpp's reason) unless llama.cpp loads `path`. In a child
    process: a file that crashes llama.cpp takes only the child down."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "factory.engines.llama_cpp", "check", str(path)], capture_output=True,
                          text=True, timeout=timeout_s)
    if done.returncode != 0:
        lines = [line for line in done.stdout.splitlines() if line.startswith("LoadError: ")]
        if lines:
            raise LoadError(lines[-1].removeprefix("LoadError: "))
        raise LoadError(f"llama.cpp could not load {path}: it stopped with exit code {done.returncode} "
                        f"({load_reason(done.stderr)})")


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "check":
        try:
            server = open_server(Path(argv[1]), n_ctx=64)
        except LoadError as exc:
            print(f"LoadError: {exc}", flush=True)
            return 1
        del server
        return 0
    print("usage: python -m factory.engines.llama_cpp check FILE.gguf")
    return 2


if __name__ == "__main__":
    import sys

    sys.exit(_main(sys.argv[1:]))
