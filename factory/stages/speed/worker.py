"""The speed stage's worker: one measurement in a fresh process (`python -m factory.stages.speed.worker
REQUEST.json RESULT.json`), so that its load time and peak memory are its own."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

from factory.engines.llama_cpp import measure_speed
from factory.engines.loading import compute_dtype, model_class, peak_gpu_mb, reset_gpu_peak
from factory.pipeline.artifact import KINDS, Artifact
from factory.pipeline.build import peak_rss_mb
from factory.stages.speed import REPEATS, gguf_files
from factory.stages.speed.runtime_quality import score_in_process


def _rss_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def measure_in_process(request: dict) -> dict:
    if request.get("task"):
        return score_in_process(gguf_files(Path(request["artifact"]["path"]))[0], request["task"])
    measure = {"transformers": _measure_transformers, "vllm": _measure_vllm, "llama.cpp": _measure_llama_cpp}
    result = measure[request["runtime"]](request)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def _token_ids(vocab_size: int, batch: int, length: int, seed: int = 0, avoid: int | None = None):
    """Random prompt ids, away from the ends of the vocabulary (where special tokens usually sit) and
    never `avoid` (LLaVA-Next's image token, which would ask for image features)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    low, high = min(16, vocab_size // 4), max(vocab_size - 16, vocab_size * 3 // 4)
    ids = torch.randint(low, high, (batch, length), generator=generator)
    if avoid is not None:
        ids[ids == avoid] = low if avoid != low else low + 1
    return ids


def _measure_transformers(request: dict) -> dict:
    import torch

    s = request["settings"]
    spec = request["artifact"]
    artifact = Artifact(spec["kind"], Path(spec["path"]), Path(spec["base_path"]) if spec["base_path"] else None,
                        spec.get("base_quantization"))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    _import_model_code(artifact, request["kind"])  # so that the load time is the load's, not Python's imports
    rss_before = _rss_mb()
    reset_gpu_peak()
    started = time.perf_counter()
    model = artifact.load(request["kind"], dtype=compute_dtype(), device_map=device).eval()
    if device == "cuda":
        torch.cuda.synchronize()
    load_s = time.perf_counter() - started
    at_load = _weights(model)
    config = model.config
    text_config = getattr(config, "text_config", None) or config
    quantized_checkpoint = getattr(config, "quantization_config", None) is not None
    vocab = text_config.vocab_size
    image_token = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    generate = model.generate

    from transformers import StoppingCriteria, StoppingCriteriaList

    class Clock(StoppingCriteria):
        """Called by generate after each new token: the first call ends the prefill (the prompt's
        forward pass and its token), the last one the decoding of the others."""

        def __init__(self) -> None:
            self.times: list[float] = []

        def __call__(self, input_ids, scores, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    def run(batch: int, new: int) -> tuple[float, float]:
        ids = _token_ids(vocab, batch, s["prompt_tokens"], avoid=image_token).to(device)
        clock = Clock()
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.inference_mode():
            generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                     do_sample=False, pad_token_id=0, stopping_criteria=StoppingCriteriaList([clock]))
        return clock.times[0] - t, clock.times[-1] - clock.times[0]

    run(1, 2)  # warm-up: kernels, allocator, and whatever a runtime does on the first forward pass
    # compressed-tensors leaves a checkpoint packed at load and decompresses it on the first forward
    # pass (transformers' dequantize=False): what the weights take is read after one has run
    running = _weights(model)
    batches = []
    for batch in s["batch_sizes"]:
        runs = [run(batch, s["new_tokens"]) for _ in range(REPEATS)]
        prefill_s, decode_s = min(r[0] for r in runs), min(r[1] for r in runs)  # the best of REPEATS
        batches.append({
            "batch_size": batch, "prefill_s": round(prefill_s, 4), "decode_s": round(decode_s, 4),
            "prefill_tokens_per_s": round(batch * s["prompt_tokens"] / prefill_s, 1),
            "decode_tokens_per_s": round(batch * (s["new_tokens"] - 1) / decode_s, 1),
        })
    return {"runtime": "transformers", "device": device, "load_s": round(load_s, 3),
            "weights_at_load_mb": at_load["mb"], "weights_mb": running["mb"],
            "weights_in_memory": "packed" if running["packed"] else "dense",
            "quantized_checkpoint": quantized_checkpoint, "dtype": running["dtype"],
            "peak_gpu_mb": peak_gpu_mb(), "rss_before_load_mb": rss_before, "batches": batches}


def _rate(tokens: int, seconds: float) -> float | None:
    """tokens/s, or None where the difference of two timings is lost in their noise."""
    return round(tokens / seconds, 1) if seconds > 0 else None


def _import_model_code(artifact, kind: str) -> None:
    """Import the model's class (and compressed-tensors for a checkpoint that needs it) ahead of timing."""
    import transformers

    model_class(kind)
    config = transformers.AutoConfig.from_pretrained(**artifact.config_source())
    for name in getattr(config, "architectures", None) or []:
        getattr(transformers, name, None)
    if getattr(config, "quantization_config", None) is not None:
        importlib.util.find_spec("compressed_tensors") and __import__("compressed_tensors")


def _weights(model) -> dict:
    """What the model's parameters and buffers take in memory, whether any is held packed (an integer
    dtype: int4 in int32, NF4/int8 in uint8/int8), and the widest floating dtype among them."""
    import torch

    tensors = list(model.parameters()) + list(model.buffers())
    floats = {t.dtype for t in model.parameters() if t.dtype.is_floating_point}
    packed = any(not (t.dtype.is_floating_point or t.dtype == torch.bool) and t.dim() >= 2 for t in model.parameters())
    widest = max(floats, key=lambda d: torch.finfo(d).bits) if floats else None
    return {"mb": round(sum(t.numel() * t.element_size() for t in tensors) / 2**20, 3), "packed": packed,
            "dtype": str(widest).removeprefix("torch.") if widest else None}


def _measure_vllm(request: dict) -> dict:  # pragma: no cover - needs vLLM and a GPU
    import torch
    from vllm import LLM, SamplingParams

    s = request["settings"]
    if not KINDS[request["artifact"]["kind"]].whole_checkpoint:
        raise RuntimeError("vLLM measures whole checkpoints, not adapters")
    rss_before = _rss_mb()
    free_before, total = torch.cuda.mem_get_info()
    started = time.perf_counter()
    llm = LLM(model=request["artifact"]["path"], dtype="auto", seed=0)
    load_s = time.perf_counter() - started
    free_after, _ = torch.cuda.mem_get_info()
    vocab = llm.get_tokenizer().vocab_size

    def run(batch: int, new: int) -> float:
        prompts = [{"prompt_token_ids": row.tolist()} for row in _token_ids(vocab, batch, s["prompt_tokens"])]
        params = SamplingParams(max_tokens=new, min_tokens=new, temperature=0.0, ignore_eos=True)
        t = time.perf_counter()
        llm.generate(prompts, params, use_tqdm=False)
        return time.perf_counter() - t

    run(1, 2)
    batches = []
    for batch in s["batch_sizes"]:
        prefill_s, total_s = run(batch, 1), run(batch, s["new_tokens"])
        batches.append({"batch_size": batch, "prefill_s": round(prefill_s, 4), "total_s": round(total_s, 4),
                        "prefill_tokens_per_s": round(batch * s["prompt_tokens"] / prefill_s, 1),
                        "decode_tokens_per_s": _rate(batch * (s["new_tokens"] - 1), total_s - prefill_s)})
    return {"runtime": "vllm", "device": "cuda", "load_s": round(load_s, 3), "weights_mb": None,
            "weights_in_memory": "packed", "quantized_checkpoint": None, "dtype": "auto",
            "peak_gpu_mb": round((free_before - free_after) / 2**20, 1), "gpu_total_mb": round(total / 2**20, 1),
            "rss_before_load_mb": rss_before, "batches": batches}


def _measure_llama_cpp(request: dict) -> dict:
    s = request["settings"]
    files = gguf_files(Path(request["artifact"]["path"]))
    return measure_speed(files[0], s["batch_sizes"], s["prompt_tokens"], s["new_tokens"], REPEATS)


def main(argv: list[str]) -> int:
    request_file, result_file = Path(argv[0]), Path(argv[1])
    result = measure_in_process(json.loads(request_file.read_text()))
    result_file.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
