"""Quality of a GGUF build in llama.cpp itself, against the base model's F16 GGUF.

On the factory's bundled held-out text (factory/data/demo_heldout.txt, tokenized with the base
tokenizer, which the build checked the file's metadata reproduces), `windows` windows of
`window_tokens` tokens are scored position by position, teacher-forced (factory.engines.llama_cpp):

- perplexity in llama.cpp, exact (the log-probability of each true next token);
- top-1 agreement of the two models' next-token distributions, exact;
- KL divergence KL(base || build), from the top-k probabilities of each position (a binding with no
  full logits allows no more; see factory.engines.llama_cpp.kl_from_top_k for the approximation).

These are the figures `llama-perplexity --kl-divergence` reports; they are labelled apart from the
paper-protocol perplexity (transformers, dequantized weights, factory.stages.evaluate). Also recorded: a
greedy generation from a fixed prompt, and one chat turn through the file's own chat template (did
it end on the model's EOS?). The base model's figures are measured once per machine (factory.stages.speed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from factory.engines.base_models import fetch_base
from factory.engines.llama_cpp import chat, compare, generate, open_server, score_windows
from factory.engines.loading import load_preprocessor
from factory.stages.evaluate.perplexity import DEMO_HELDOUT

if TYPE_CHECKING:
    from factory.pipeline.artifact import Artifact
    from factory.pipeline.build import Build
    from factory.recipe import RuntimeQuality

GENERATION_PROMPT = "The capital of France is"
GENERATION_TOKENS = 32
CHAT_MESSAGE = "What is the capital of France? Answer in one sentence."
CHAT_TOKENS = 64
TEXT = "the factory's bundled held-out text (demo_heldout.txt)"
KL_NOTE = ("KL divergence from the top-{k} next-token probabilities of each position (the rest of each distribution "
           "in one bucket): an approximation, close to a lower bound of the full-vocabulary KL; the binding "
           "returns no full logits. Perplexity and top-1 agreement are exact.")


def windows(build: "Build") -> list[list[int]]:
    """The scored token windows, the base tokenizer's ids (with its BOS where it adds one)."""
    q = build.recipe.evaluation.speed.quality
    tokenizer = load_preprocessor("causal-lm", fetch_base(build.entry, build.recipe_dir).path)
    ids = tokenizer(DEMO_HELDOUT.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"]
    with_special = tokenizer("a")["input_ids"]
    prefix = with_special[:len(with_special) - len(tokenizer("a", add_special_tokens=False)["input_ids"])]
    body = q.window_tokens - len(prefix)
    if len(ids) < q.windows * body:
        raise ValueError(f"the held-out text has {len(ids)} tokens, fewer than {q.windows} windows of {body}")
    return [prefix + ids[i * body:(i + 1) * body] for i in range(q.windows)]


def score_request(build: "Build", artifact: "Artifact") -> dict:
    q = build.recipe.evaluation.speed.quality
    return {"windows": windows(build), "top_k": q.top_k}


def score_in_process(path: Path, task: dict) -> dict:
    """In the worker process: score, generate and chat with the GGUF file at `path`."""
    longest = max(len(w) for w in task["windows"])
    server = open_server(path, n_ctx=max(1024, longest + CHAT_TOKENS + 64))
    positions = score_windows(server, task["windows"], task["top_k"])
    result = {"file": path.name, "positions": positions,
              "generation": generate(server, GENERATION_PROMPT, GENERATION_TOKENS),
              "chat": chat(server, CHAT_MESSAGE, CHAT_TOKENS)}
    del server
    return result


def quality_figures(measured: dict, base: dict, quality: "RuntimeQuality") -> dict:
    """The build's scores (`score_in_process`) beside the base's: what the card's table shows."""
    q = quality
    return {"text": TEXT, "windows": q.windows, "window_tokens": q.window_tokens, "top_k": q.top_k,
            "method": "teacher-forced one-token requests (the true next token forced by a logit bias), "
                      f"log-probabilities from the raw logits, top-{q.top_k} per position",
            "kl_note": KL_NOTE.format(k=q.top_k), "base_file": base["file"], "build_file": measured["file"],
            **compare(measured["positions"], base["positions"]),
            "generation": {"prompt": GENERATION_PROMPT, "tokens": GENERATION_TOKENS,
                           "build": measured["generation"], "base": base["generation"]},
            "chat": {"build": measured["chat"], "base": base["chat"]}}
