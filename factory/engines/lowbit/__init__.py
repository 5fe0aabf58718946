"""Simulated low-bit post-training quantization: PB-LLM, BiLLM and SliM-LLM as pure torch functions.

Each method module (``pbllm``, ``billm``, ``slim_llm``) has ``quantize_weight(weight, hessian,
**options) -> QuantResult`` working on one nn.Linear weight (out x in) and its calibration
Hessian H = 2 X^T X / n; ``hessian`` holds the shared GPTQ loop and the Hessian collector.
The methods write dequantized weights back ("fake" quantization, as their papers evaluate them);
nothing here packs integers.

``quantize_model_layers`` runs any of them over a LlamaForCausalLM with the GPTQ "sequential"
recipe: decoder layer by decoder layer, the inputs of a layer are the outputs of the already
quantized layers before it, so each layer's Hessian sees the error its predecessors left.

Example::

    from functools import partial
    from factory.engines.lowbit import billm, quantize_model_layers
    reports = quantize_model_layers(model, batches, partial(billm.quantize_weight, block_size=128))
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn

from factory.engines.lowbit import billm, pbllm, slim_llm
from factory.engines.lowbit.hessian import HessianCollector, QuantResult

__all__ = ["HessianCollector", "LayerReport", "LinearReport", "QuantResult", "billm", "pbllm", "slim_llm",
           "decoder_layers", "quantize_model_layers", "weighted_bits"]

QuantizeFn = Callable[[Tensor, Tensor], QuantResult]
TargetsFilter = Callable[[str, nn.Linear], bool]
DEFAULT_SKIP = ("lm_head",)


@dataclass
class LinearReport:
    name: str  # full module name, e.g. model.layers.0.self_attn.q_proj
    parameters: int
    effective_bits: float
    paper_bits: float
    stats: dict[str, Any]


@dataclass
class LayerReport:
    index: int
    linears: list[LinearReport] = field(default_factory=list)

    @property
    def parameters(self) -> int:
        return sum(linear.parameters for linear in self.linears)

    @property
    def effective_bits(self) -> float:
        """Bits per weight over the layer's quantized linears, weighted by their parameter counts."""
        return weighted_bits(self.linears, "effective_bits")

    @property
    def paper_bits(self) -> float:
        return weighted_bits(self.linears, "paper_bits")


def weighted_bits(linears: Iterable[LinearReport], attribute: str = "effective_bits") -> float:
    """Parameter-weighted average of a bits figure (nan when nothing was quantized)."""
    linears = list(linears)
    parameters = sum(linear.parameters for linear in linears)
    if not parameters:
        return float("nan")
    return sum(getattr(linear, attribute) * linear.parameters for linear in linears) / parameters


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The text decoder's layers: `model.model.layers` (LLaMA), or the language model's inside
    LLaVA-Next (`model.model.language_model.layers`; its vision tower is not a target)."""
    inner = model.model
    if hasattr(inner, "layers"):
        return inner.layers
    return inner.language_model.layers


class _FirstLayerReached(Exception):
    """Raised by the capture hook so the forward pass stops once the first layer's inputs are known."""


def _as_model_inputs(batch: Tensor | Mapping[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    if isinstance(batch, Tensor):
        return {"input_ids": batch.to(device)}
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}


def _capture_first_layer_inputs(model: nn.Module, layers: nn.ModuleList, batches: Iterable,
                                device: torch.device) -> list[tuple[Tensor, dict[str, Any]]]:
    """Hidden states and keyword arguments (masks, rotary embeddings) that the model hands its first layer.

    A forward pre-hook on the first decoder layer records them and stops the forward pass, so the
    embeddings run but no decoder layer does; the keyword arguments are reused for every layer.
    """
    captured: list[tuple[Tensor, dict[str, Any]]] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        rest = {key: value for key, value in kwargs.items() if key != "hidden_states"}
        captured.append((hidden.detach(), rest))
        raise _FirstLayerReached

    handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(**_as_model_inputs(batch, device), use_cache=False)
            except _FirstLayerReached:
                pass
    finally:
        handle.remove()
    if not captured:
        raise ValueError("no calibration batch reached the first decoder layer")
    return captured


def _run_layer(layer: nn.Module, inputs: list[tuple[Tensor, dict[str, Any]]]) -> list[Tensor]:
    outputs = []
    for hidden, kwargs in inputs:
        output = layer(hidden, **kwargs)
        outputs.append((output[0] if isinstance(output, tuple) else output).detach())
    return outputs


def _is_skipped(name: str, skip: Sequence[str]) -> bool:
    return any(re.search(pattern, name) for pattern in skip)


@torch.no_grad()
def quantize_model_layers(model: nn.Module, calibration_batches: Iterable[Tensor | Mapping[str, Tensor]],
                          quantize_fn: QuantizeFn, targets_filter: TargetsFilter | None = None, *,
                          skip: Sequence[str] = DEFAULT_SKIP,
                          progress: Callable[[LayerReport], None] | None = None) -> list[LayerReport]:
    """Quantize every nn.Linear of every decoder layer of a LlamaForCausalLM in place, layer by layer.

    calibration_batches: input_ids tensors (batch x seq) or dicts of model inputs (input_ids,
        attention_mask); they are iterated once.
    quantize_fn: (weight, hessian) -> QuantResult, e.g. functools.partial(billm.quantize_weight).
    targets_filter: (full module name, module) -> bool, which linears of a layer to quantize
        (default: all of them).
    skip: regular expressions searched in the full module name; a match is left untouched
        (lm_head lies outside the decoder layers and is never touched either).

    For each layer in order: one pass over the captured inputs collects each target linear's
    Hessian (all from the layer as it was, GPTQ's non-"true-sequential" variant), each weight is
    quantized and written back in the model's dtype, and a second pass with the quantized weights
    produces the next layer's inputs. Only one layer's activations are held at a time.
    """
    layers = decoder_layers(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        inputs = _capture_first_layer_inputs(model, layers, calibration_batches, device)
        layer_prefix = next(name for name, module in model.named_modules() if module is layers)
        reports = []
        for index, layer in enumerate(layers):
            targets = {}
            for name, module in layer.named_modules():
                full_name = f"{layer_prefix}.{index}.{name}"
                if (isinstance(module, nn.Linear) and not _is_skipped(full_name, skip)
                        and (targets_filter is None or targets_filter(full_name, module))):
                    targets[full_name] = module
            collectors = {name: HessianCollector(module.in_features, device=device).attach(module)
                          for name, module in targets.items()}
            try:
                _run_layer(layer, inputs)
            finally:
                for collector in collectors.values():
                    collector.detach()

            report = LayerReport(index)
            for name, module in targets.items():
                result = quantize_fn(module.weight.detach(), collectors[name].hessian)
                if result.weight.shape != module.weight.shape:
                    raise ValueError(f"{name}: quantize_fn returned shape {tuple(result.weight.shape)}, "
                                     f"expected {tuple(module.weight.shape)}")
                module.weight.copy_(result.weight.to(dtype=module.weight.dtype, device=module.weight.device))
                report.linears.append(LinearReport(name, module.weight.numel(), result.effective_bits,
                                                   result.paper_bits, result.stats))
                del collectors[name]  # free each Hessian as soon as its weight is done

            outputs = _run_layer(layer, inputs)
            inputs = [(output, kwargs) for output, (_, kwargs) in zip(outputs, inputs)]
            reports.append(report)
            if progress is not None:
                progress(report)
        return reports
    finally:
        model.train(was_training)
