"""Where an evaluation puts the model: so that a 70B build fits the runner it is given.

transformers loads a compressed-tensors checkpoint as dense layers (factory.stages.speed measures it), so
the hf backend needs the model's dense size whatever its size on disk: about 141 GB for
LLaMA-3-70B in bf16, more than one 80 GB GPU. In order of preference:

  vllm           the recipe's `evaluation.backend: vllm` (where installed): the weights stay packed;
                 tensor-parallel over every visible GPU when one GPU cannot hold them
  one GPU        device_map "cuda" when the dense weights (plus headroom) fit the first GPU
  sharded        device_map "auto" across the visible GPUs when they fit all of them together
  CPU offload    device_map "auto" with the CPU as well, the last resort (slow, but it runs)
  CPU            no GPU at all

The choice is recorded in the evaluation's scores.json (`harness.placement`), in the manifest's
evaluate stage and in the card. It is not part of the evaluation fingerprint: it changes where the
numbers are computed, not which.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

HEADROOM = 1.2  # activations, KV cache and the allocator's slack over the weights themselves


@dataclass(frozen=True)
class Placement:
    backend: str  # hf | vllm
    device_map: str  # cpu | cuda | auto
    gpus: int  # GPUs used
    cpu_offload: bool
    description: str

    def record(self) -> dict:
        return asdict(self)

    def hf_model_args(self) -> dict:
        """lm-eval's `hf` model arguments for this placement (its `parallelize` is device_map="auto")."""
        if self.device_map == "auto":
            return {"parallelize": True, **({"max_cpu_memory": "1000GB"} if self.cpu_offload else {})}
        return {}


def dense_bytes(path: Path) -> int:
    """The weights' size once loaded dense: the safetensors on disk, scaled up for packed formats by the
    bit width the checkpoint's quantization config declares (a 4-bit file holds about a quarter)."""
    import json

    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    config = path / "config.json"
    if config.is_file():
        quantization = json.loads(config.read_text()).get("quantization_config") or {}
        bits = [group.get("weights", {}).get("num_bits") for group in (quantization.get("config_groups") or {}).values()]
        bits = [b for b in bits if isinstance(b, int) and b > 0]
        if bits and quantization.get("format") not in (None, "dense"):
            size = int(size * 16 / min(bits))  # an upper bound: embeddings and lm_head were 16-bit already
    return size


def gpu_free_bytes() -> list[int]:
    import torch

    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def choose(backend: str, weights_bytes: int, free: list[int] | None = None) -> Placement:
    """The placement for a model of `weights_bytes` (dense) given each GPU's free memory."""
    free = gpu_free_bytes() if free is None else free
    need = int(weights_bytes * HEADROOM)
    gb = f"{weights_bytes / 1e9:.1f} GB"
    if backend == "vllm":
        gpus = 1 if not free or need <= free[0] else len(free)
        return Placement("vllm", "cuda", gpus, False,
                         f"vLLM on {gpus} GPU{'s' if gpus > 1 else ''}" + (" (tensor parallel)" if gpus > 1 else ""))
    if not free:
        return Placement("hf", "cpu", 0, False, "transformers on the CPU")
    if need <= free[0]:
        return Placement("hf", "cuda", 1, False, f"transformers on one GPU ({gb} of weights)")
    if need <= sum(free):
        return Placement("hf", "auto", len(free), False,
                         f"transformers, sharded with device_map=\"auto\" across {len(free)} GPUs ({gb} of weights)")
    return Placement("hf", "auto", len(free), True,
                     f"transformers, device_map=\"auto\" across {len(free)} GPUs with CPU offload ({gb} of weights "
                     f"do not fit their {sum(free) / 1e9:.0f} GB free): slow")
