"""PB-LLM: partially binarized weights (Shang et al. 2023, "PB-LLM: Partially Binarized Large
Language Models", arXiv:2310.00034), in its post-training GPTQ variant PB-GPTQ (Sec. 3.3).

Per block of 128 input columns:

1. Salient weights are the top ``salient_fraction`` of the block's entries by OBS salience
   s_ij = w_ij^2 / [H^-1]_jj^2 (PB-LLM eq. 5; see hessian.py for the Cholesky form). The
   selection is unstructured (any entry of the block) and made on the block's current weights.
2. Salient weights keep ``salient_bits`` (8) bits: asymmetric min-max uniform quantization per
   output channel (one scale and zero point per row of W, fitted on the original weights).
3. The other weights are binarized per row with the l1-optimal scale of XNOR-Net (PB-LLM eq. 1-2):
   w ~ alpha * sign(w), alpha = mean |w| over the row's non-salient entries of the block.
4. GPTQ compensation spreads each column's error over the columns not yet quantized.

Bit accounting, N = rows * columns weights, n_s salient, r = n_s / N:

    paper_bits = (n_s * b_s + (N - n_s) * 1) / N = 1 + r (b_s - 1)                  (PB-LLM Sec. 4.1)

so 10% salient at 8 bits is the paper's 1.7-bit row and r = 1/7 gives the 2-bit row of Huang et
al. 2024 (``salient_fraction_for_bits`` inverts the formula). The paper's figure leaves out the
mask and the scales; ``effective_bits`` counts them:

    effective_bits = [ sum over blocks b of ( n_b * b_s + (rows * c_b - n_b)
                                              + mask_b
                                              + rows * 16 )                       # alpha, fp16
                       + rows * (16 + b_s) ] / N                                  # 8-bit scale fp16 + zero point
    mask_b = min(rows * c_b,                                                      # a bitmap, or
                 n_b * ceil(log2 c_b) + rows * ceil(log2(c_b + 1)))               # in-row column indices + per-row counts

with c_b the block's columns and n_b its salient entries: whichever of the two mask encodings is
smaller. At 10% salient and 128 columns the mask costs ~0.76 bits per weight.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from factory.engines.lowbit.hessian import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING_FRAC, FP16_BITS, BlockContext,
                                            ColumnQuantizer, QuantResult, block_bounds, gptq_quantize, index_bits,
                                            inverse_hessian_cholesky, obs_salience, signs)

# Salient fractions that give the paper-accounting bit widths of Huang et al. 2024's PB-LLM rows.
PBLLM_1_7_BIT_SALIENT_FRACTION = 0.1
PBLLM_2_BIT_SALIENT_FRACTION = 1 / 7


def salient_fraction_for_bits(paper_bits: float, salient_bits: int = 8) -> float:
    """Salient fraction r with 1 + r (salient_bits - 1) == paper_bits (e.g. 1.7 -> 0.1, 2.0 -> 1/7)."""
    if salient_bits <= 1:
        raise ValueError(f"salient_bits must be above 1, got {salient_bits}")
    fraction = (paper_bits - 1) / (salient_bits - 1)
    if not 0 <= fraction <= 1:
        raise ValueError(f"{paper_bits} bits is not reachable with 1-bit and {salient_bits}-bit weights")
    return fraction


def _per_channel_minmax(weight: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """Scale and integer zero point of asymmetric min-max quantization per row (range includes 0)."""
    levels = 2 ** bits - 1
    low = weight.min(dim=1).values.clamp(max=0)
    high = weight.max(dim=1).values.clamp(min=0)
    scale = (high - low) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero row: any scale works
    zero = torch.round(-low / scale)
    return scale, zero


def quantize_weight(weight: Tensor, hessian: Tensor, *, salient_fraction: float = PBLLM_1_7_BIT_SALIENT_FRACTION,
                    salient_bits: int = 8, block_size: int = DEFAULT_BLOCK_SIZE,
                    dampening_frac: float = DEFAULT_DAMPENING_FRAC, compensate: bool = True,
                    keep_mask: bool = False) -> QuantResult:
    """PB-GPTQ on one weight matrix (out x in) with calibration Hessian H = 2 X^T X / n (in x in).

    ``keep_mask=True`` adds the boolean salient mask (out x in) to the stats; it is off by default
    because a model-wide run would hold one weight-sized mask per layer.
    """
    if not 0 <= salient_fraction <= 1:
        raise ValueError(f"salient_fraction must be in [0, 1], got {salient_fraction}")
    if not 2 <= salient_bits <= 16:
        raise ValueError(f"salient_bits must be in [2, 16], got {salient_bits}")
    rows, columns = weight.shape
    W = weight.detach().to(torch.float32)
    factor = inverse_hessian_cholesky(hessian.to(W.device), dampening_frac)
    levels = 2 ** salient_bits - 1
    # One 8-bit grid per output channel, fitted on the original row as PB-LLM's high-precision quantizer is.
    salient_scale, salient_zero = _per_channel_minmax(W.masked_fill(factor.dead_inputs.to(W.device), 0.0),
                                                      salient_bits)
    salient_counts: list[int] = []
    salient_mask = torch.zeros(rows, columns, dtype=torch.bool, device=W.device) if keep_mask else None

    def quantize_block(block: BlockContext) -> ColumnQuantizer:
        salience = obs_salience(block.weight, block.inverse_diagonal)
        count = round(salient_fraction * salience.numel())
        salient = torch.zeros_like(block.weight, dtype=torch.bool)
        if count:
            salient.view(-1)[salience.view(-1).topk(count).indices] = True
        salient_counts.append(count)
        if salient_mask is not None:
            salient_mask[:, block.start:block.stop] = salient
        # l1-optimal binarization scale over each row's non-salient entries (XNOR-Net / PB-LLM eq. 2).
        non_salient = ~salient
        alpha = (block.weight.abs() * non_salient).sum(dim=1) / non_salient.sum(dim=1).clamp(min=1)

        def quantize_column(j: int, column: Tensor) -> Tensor:
            integer = torch.clamp(torch.round(column / salient_scale) + salient_zero, 0, levels)
            high_precision = salient_scale * (integer - salient_zero)
            return torch.where(salient[:, j], high_precision, alpha * signs(column))

        return quantize_column

    quantized = gptq_quantize(W, hessian, quantize_block, block_size=block_size, compensate=compensate,
                              factor=factor)
    total = rows * columns
    salient_total = sum(salient_counts)
    bounds = block_bounds(columns, block_size)
    storage = rows * (FP16_BITS + salient_bits)  # per-channel 8-bit scale and zero point
    for (start, stop), count in zip(bounds, salient_counts):
        width = stop - start
        mask_bits = min(rows * width, count * index_bits(width) + rows * math.ceil(math.log2(width + 1)))
        storage += count * salient_bits + (rows * width - count) + mask_bits + rows * FP16_BITS
    fraction = salient_total / total
    stats = {"salient_fraction": fraction, "salient_per_block": salient_counts, "salient_bits": salient_bits,
             "block_size": block_size, "damping": factor.damping, "compensated": compensate}
    if salient_mask is not None:
        stats["salient_mask"] = salient_mask
    return QuantResult(
        weight=quantized.to(dtype=weight.dtype),
        effective_bits=storage / total,
        paper_bits=1 + fraction * (salient_bits - 1),
        stats=stats,
    )
