"""Importance-matrix GGUFs (`gguf: {type: ..., importance: calibration}`): what auto-round computes
from the calibration text, and the two files published beside the `.gguf`.

auto-round makes its own calibrated GGUFs this way: `iters=0` with `disable_opt_rtn=False` and a
dataset turns on, for the K-quant types, its optimized RTN (`OptimizedRTNQuantizer`): forward hooks
sum each linear layer's squared input activations per input column over the calibration tokens
(llama.cpp's importance matrix, what `llama-imatrix` collects), and each block's scales (and mins)
are searched to minimise the rounding error weighted by those sums (auto-round's port of llama.cpp's
`quantize_row_*_impl` with `quant_weights`). That holds for every linear weight, the fallbacks of
tensors whose rows do not split into 256-weight super-blocks (SmolLM2's Q5_0/Q4_0) included: on
SmolLM2 every one of them differs from the data-free file. The token embedding (not a linear layer,
so no importance data) gets the same optimized search unweighted, and differs too.

Published beside the file:
- `model-<TYPE>.imatrix`: those sums, in llama.cpp's imatrix format (a GGUF container: `<tensor>.in_sum2`
  and `<tensor>.counts` per weight, `imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`),
  so `llama-quantize --imatrix` can reuse them. Its extension is not `.gguf`, so that llama.cpp's
  `-hf repo:TYPE`, Ollama and the Hub see one model file.
- `calibration.json`: the calibration set's identity (source, content hash, windows, seed, a hash of
  the token ids drawn), not its text: a recipe's own file may not be the publisher's to share.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

from factory.engines.calibration import DATA_DIR, DEMO_TEXT
from factory.engines.gguf_vocab import field_value

CALIBRATION_FILE = "calibration.json"
WIKITEXT2 = "Salesforce/wikitext (wikitext-2-raw-v1, train split)"


# What importance data was measured to do (bench/gguf_imatrix_cpu.py, figures in the README's GGUF section).
MEASURED = ("Measured on the factory's demo model (SmolLM2-135M, `bench/gguf_imatrix_cpu.py`, 2026-12-03, in "
            "llama.cpp against the F16 base, held-out text): importance data lowered the mean KL divergence from "
            "0.880 to 0.161 for Q2_K_S and from 0.212 to 0.151 for Q3_K_S (perplexity ratio to the base 5.61 -> 1.29 "
            "and 1.32 -> 1.16); this build's own figures are under \"Quality in llama.cpp\".")


def imatrix_file_name(gguf_type: str) -> str:
    return f"model-{gguf_type}.imatrix"


def rounder_kwargs(windows: list[list[int]]) -> dict:
    """AutoRound arguments of auto-round's data-driven RTN for GGUF, on these token windows."""
    import torch

    return dict(iters=0, disable_opt_rtn=False, dataset=[torch.tensor([w]) for w in windows],
                nsamples=len(windows), seqlen=len(windows[0]), batch_size=min(8, len(windows)))


@contextlib.contextmanager
def captured_importance():
    """Yields {layer name: (sum of squared inputs per column, samples)} as auto-round's optimized RTN
    takes them, read just before it normalises and quantizes each block (its GGUF export clears them)."""
    import torch
    from auto_round.algorithms.quantization.rtn.quantizer import OptimizedRTNQuantizer

    sums: dict[str, tuple[torch.Tensor, int]] = {}
    original = OptimizedRTNQuantizer.__dict__["quantize_block"]

    def quantize_block(self, block, *args, **kwargs):
        for _, module in block.named_modules():
            imatrix = getattr(module, "imatrix", None)
            if imatrix is not None and getattr(module, "global_name", None):
                sums[module.global_name] = (imatrix.detach().to("cpu", torch.float32).clone(),
                                            int(module.imatrix_cnt))
        return original(self, block, *args, **kwargs)

    OptimizedRTNQuantizer.quantize_block = quantize_block
    try:
        yield sums
    finally:
        OptimizedRTNQuantizer.quantize_block = original


def write_imatrix(path: Path, sums: dict, model_gguf: Path, dataset: str, seq_len: int, samples: int) -> list[str]:
    """Write `sums` in llama.cpp's imatrix format, under the tensor names of `model_gguf`; returns
    the names of the weights it covers."""
    import gguf
    import numpy as np

    if not sums:
        raise RuntimeError("auto-round computed no importance data (no layer went through its optimized RTN)")
    reader = gguf.GGUFReader(model_gguf)
    arch = field_value(reader, "general.architecture")
    blocks = field_value(reader, f"{arch}.block_count")
    in_file = {t.name for t in reader.tensors}
    arch_id = next(key for key, name in gguf.MODEL_ARCH_NAMES.items() if name == arch)
    names = gguf.get_tensor_name_map(arch_id, blocks)
    rows = []
    for layer, (total, seen) in sums.items():
        name = names.get_name(f"{layer}.weight", try_suffixes=(".weight",))
        if name is None or name not in in_file:
            raise RuntimeError(f"importance data for {layer}: no such weight in {model_gguf.name} ({name})")
        # auto-round counts samples (rows of the block's batch); llama.cpp counts tokens
        rows.append((name, total.numpy(), seen * seq_len))
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_string("general.type", "imatrix")
    writer.add_array("imatrix.datasets", [dataset])
    writer.add_uint32("imatrix.chunk_count", samples)
    writer.add_uint32("imatrix.chunk_size", seq_len)
    for name, total, tokens in sorted(rows):
        writer.add_tensor(f"{name}.in_sum2", total.astype(np.float32).reshape(1, -1))
        writer.add_tensor(f"{name}.counts", np.array([[tokens]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [name for name, _, _ in sorted(rows)]


def read_imatrix(path: Path) -> dict:
    """{tensor name: mean squared input per column} and the file's metadata, as llama-quantize reads it."""
    import gguf

    reader = gguf.GGUFReader(path)
    tensors = {t.name: t.data for t in reader.tensors}
    means = {name.removesuffix(".in_sum2"): data.reshape(-1) / float(tensors[name.replace(".in_sum2", ".counts")].reshape(-1)[0])
             for name, data in tensors.items() if name.endswith(".in_sum2")}
    meta = {key: field_value(reader, key) for key in ("general.type", "imatrix.datasets", "imatrix.chunk_count",
                                                      "imatrix.chunk_size")}
    return {"means": means, "meta": meta}


def calibration_identity(cal: "Calibration", recipe_dir: Path, windows: list[list[int]]) -> dict:
    """What names the calibration set exactly, without its text."""
    text = {"wikitext2": WIKITEXT2, "demo": f"the factory's demo text ({DEMO_TEXT})",
            "file": Path(cal.path or "").name}[cal.source]
    path = DATA_DIR / DEMO_TEXT if cal.source == "demo" else recipe_dir / (cal.path or "")
    return {
        "source": cal.source, "text": text,
        "text_sha256": hashlib.sha256(path.read_bytes()).hexdigest() if cal.source != "wikitext2" else None,
        **({"text_field": cal.text_field} if cal.source == "file" and str(cal.path).endswith(".jsonl") else {}),
        "samples": len(windows), "seq_len": cal.seq_len, "seed": cal.seed, "tokens": sum(len(w) for w in windows),
        "drawn": "random windows of seq_len tokens at random starts (Python random.Random(seed)), the base "
                 "tokenizer's ids, as factory.calibration draws them for every calibrated method",
        "token_ids_sha256": hashlib.sha256(json.dumps(windows, separators=(",", ":")).encode()).hexdigest(),
    }


def dataset_label(identity: dict) -> str:
    """The set in one line (the imatrix's `imatrix.datasets`, the card)."""
    digest = f", sha256 {identity['text_sha256'][:16]}" if identity.get("text_sha256") else ""
    return (f"{identity['samples']} windows of {identity['seq_len']} tokens (seed {identity['seed']}) from "
            f"{identity['text']}{digest}")
