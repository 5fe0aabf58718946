"""SliM-LLM: salience-driven mixed-precision group quantization (Huang et al. 2024, "SliM-LLM:
Salience-Driven Mixed-Precision Quantization for Large Language Models", arXiv:2405.14917).

Two parts, both driven by the OBS salience s_ij = w_ij^2 / [H^-1]_jj^2 (hessian.py):

Salience-Determined Bit Allocation (SBA, Sec. 3.2). Groups are the 128-column slices of W (each
row of a group has its own quantizer). A group's salience is the sum of its weights' salience.
For a target of t bits every group starts at t; the k least salient groups then drop to t-1 and
the k most salient rise to t+1, so the average stays exactly t for every k. k is searched over
0..G/2 to minimise the layer-output error of the round-to-nearest quantized layer,

    e(k) = tr(dW_k H dW_k^T) = (2 / n) ||dW_k X^T||^2,

which is evaluated incrementally: moving group g to another bit width changes dW only in g's
columns, so e and dW H are updated with that group's slice of H (cost: one dW H product overall).
(SliM-LLM's released code scores the allocation by a KL divergence of the layer outputs; with
only H available the output error itself is used.) A last group narrower than the others stays
at t, so the bits averaged over weights are exactly t as well.

Salience-Weighted Quantizer Calibration (SQC, Sec. 3.3). Each (row, group) uses asymmetric
min-max uniform quantization with 2^b levels, the range [min, max] shrunk about its midpoint by a
factor gamma searched on a grid to minimise the salience-weighted error

    sum_ij omega_ij (w_ij - q_ij)^2,   omega_ij = (lambda if s_ij is a salience outlier else 1) / [H^-1]_jj

where salience outliers are the group's weights whose salience z-score exceeds 2 (the paper's
locally salient weights) and lambda = ``salient_error_weight``; 1 / [H^-1]_jj is the OBS cost of an
error in column j. The offset (the range minimum) is a real number, not a rounded zero point, so
that a 1-bit group has two free levels rather than one pinned at zero.

Then GPTQ quantizes the groups in order with error compensation, each group's quantizer
calibrated when the group starts.

Bit accounting, N = rows * columns weights, G groups of c_g columns at b_g bits:

    paper_bits = sum_g c_g b_g / columns = target_bits
    effective_bits = [ sum_g rows * c_g * b_g  +  G * rows * 2 * 16  +  G * 2 ] / N
        codes, an fp16 scale and an fp16 offset per row and group, and a 2-bit code per group
        saying which of the three widths it has.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from factory.engines.lowbit.hessian import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING_FRAC, FP16_BITS, BlockContext,
                                            ColumnQuantizer, InverseHessianFactor, QuantResult, block_bounds,
                                            gptq_quantize, inverse_hessian_cholesky, obs_salience)

SHRINK_GRID = torch.linspace(1.0, 0.2, 33)
SALIENT_Z_SCORE = 2.0
BIT_WIDTH_CODE_BITS = 2  # one of {t-1, t, t+1} per group


def validate_target_bits(target_bits: float) -> int:
    """The target as an int, or ValueError when {t-1, t, t+1} cannot average to it within 1..8 bits."""
    if isinstance(target_bits, bool) or not isinstance(target_bits, numbers.Real):
        raise ValueError(f"target_bits must be a number, got {target_bits!r}")
    if not 1 < target_bits < 8:
        raise ValueError(f"target_bits must satisfy 1 < target < 8 so that target-1 >= 1 and target+1 <= 8 bits; "
                         f"got {target_bits}")
    if float(target_bits) != int(target_bits):
        raise ValueError(f"SliM-LLM moves equal numbers of groups to target-1 and target+1 bits, so only an "
                         f"integer target is reached exactly; got {target_bits}")
    return int(target_bits)


def _quantize_in_range(values: Tensor, low: Tensor, step: Tensor, levels: int) -> Tensor:
    """Uniform quantization onto low + step * {0..levels}; low and step broadcast against values."""
    return low + step * torch.clamp(torch.round((values - low) / step), 0, levels)


def calibrate_group(values: Tensor, bits: int, error_weights: Tensor, chunk: int = 11) -> tuple[Tensor, Tensor]:
    """SQC: per row, the (low, step) of the shrunk min-max grid with the least weighted error."""
    levels = 2 ** bits - 1
    high = values.max(dim=1).values
    low = values.min(dim=1).values
    middle = (high + low) / 2
    half = ((high - low) / 2).clamp(min=1e-10)  # a constant row: a tiny range maps every value to it
    best_error = torch.full_like(middle, float("inf"))
    best_low, best_step = middle - half, 2 * half / levels
    grid = SHRINK_GRID.to(values.device)
    for start in range(0, len(grid), chunk):  # a few shrink factors at a time bounds the memory
        shrink = grid[start:start + chunk].view(-1, 1)
        candidate_low = middle - shrink * half  # (shrinks, rows)
        candidate_step = 2 * shrink * half / levels
        quantized = _quantize_in_range(values, candidate_low.unsqueeze(-1), candidate_step.unsqueeze(-1), levels)
        errors = ((values - quantized).pow(2) * error_weights).sum(dim=-1)  # (shrinks, rows)
        error, index = errors.min(dim=0)
        better = error < best_error
        rows = torch.arange(values.shape[0], device=values.device)
        best_error = torch.where(better, error, best_error)
        best_low = torch.where(better, candidate_low[index, rows], best_low)
        best_step = torch.where(better, candidate_step[index, rows], best_step)
    return best_low, best_step


def salience_error_weights(values: Tensor, inverse_diagonal: Tensor, salient_error_weight: float) -> Tensor:
    """omega_ij of SQC: OBS column cost 1 / U_jj^2, times lambda on the group's salience outliers."""
    salience = obs_salience(values, inverse_diagonal)
    z_score = (salience - salience.mean()) / salience.std().clamp(min=1e-30)
    emphasis = torch.where(z_score > SALIENT_Z_SCORE, salient_error_weight, 1.0)
    return emphasis / inverse_diagonal.pow(2).unsqueeze(0)


def quantize_group(values: Tensor, bits: int, inverse_diagonal: Tensor, salient_error_weight: float) -> Tensor:
    """Round-to-nearest of one group with its SQC-calibrated quantizer."""
    low, step = calibrate_group(values, bits, salience_error_weights(values, inverse_diagonal, salient_error_weight))
    return _quantize_in_range(values, low.unsqueeze(1), step.unsqueeze(1), 2 ** bits - 1)


def allocate_group_bits(weight: Tensor, hessian: Tensor, target_bits: int, *, group_size: int = DEFAULT_BLOCK_SIZE,
                        factor: InverseHessianFactor | None = None, salient_error_weight: float = 2.0,
                        dampening_frac: float = DEFAULT_DAMPENING_FRAC) -> tuple[list[int], list[float]]:
    """SBA: bits per group (averaging exactly target_bits) and the output error e(k) for each k searched."""
    target = validate_target_bits(target_bits)
    if factor is None:
        factor = inverse_hessian_cholesky(hessian, dampening_frac)
    W = weight.detach().to(torch.float32).clone()
    W[:, factor.dead_inputs] = 0.0
    H = hessian.detach().to(device=W.device, dtype=torch.float32)
    d = factor.diagonal.to(W.device)
    bounds = block_bounds(W.shape[1], group_size)
    bits = [target] * len(bounds)
    # Only full-width groups move, so that the average over weights is exactly the target too.
    movable = [g for g, (start, stop) in enumerate(bounds) if stop - start == group_size]
    salience = obs_salience(W, d)
    group_salience = torch.stack([salience[:, start:stop].sum() for start, stop in bounds])
    order = sorted(movable, key=lambda g: group_salience[g].item())

    def delta(group: int, group_bits: int) -> Tensor:
        start, stop = bounds[group]
        return W[:, start:stop] - quantize_group(W[:, start:stop], group_bits, d[start:stop], salient_error_weight)

    deltas = [delta(g, target) for g in range(len(bounds))]
    dW = torch.cat(deltas, dim=1)
    dW_H = dW @ H
    error = float((dW * dW_H).sum())
    errors = [error]
    for k in range(1, len(order) // 2 + 1):
        for group, group_bits in ((order[k - 1], target - 1), (order[-k], target + 1)):
            start, stop = bounds[group]
            change = delta(group, group_bits) - deltas[group]
            # e(dW + D) = e(dW) + 2 <D, (dW H)_g> + <D H_gg, D>, with D non-zero only in group g's columns.
            error += float(2 * (change * dW_H[:, start:stop]).sum() + ((change @ H[start:stop, start:stop]) * change).sum())
            dW_H += change @ H[start:stop, :]
            deltas[group] += change
        errors.append(error)
    best = min(range(len(errors)), key=errors.__getitem__)
    for k in range(1, best + 1):
        bits[order[k - 1]] = target - 1
        bits[order[-k]] = target + 1
    return bits, errors


def quantize_weight(weight: Tensor, hessian: Tensor, *, target_bits: int = 2, group_size: int = DEFAULT_BLOCK_SIZE,
                    salient_error_weight: float = 2.0, dampening_frac: float = DEFAULT_DAMPENING_FRAC,
                    compensate: bool = True) -> QuantResult:
    """SliM-LLM (SBA + SQC + GPTQ) on one weight matrix (out x in) with H = 2 X^T X / n (in x in)."""
    target = validate_target_bits(target_bits)
    if salient_error_weight <= 0:
        raise ValueError(f"salient_error_weight must be positive, got {salient_error_weight}")
    rows, columns = weight.shape
    W = weight.detach().to(torch.float32)
    factor = inverse_hessian_cholesky(hessian.to(W.device), dampening_frac)
    group_bits, search_errors = allocate_group_bits(W, hessian.to(W.device), target, group_size=group_size,
                                                    factor=factor, salient_error_weight=salient_error_weight)

    def quantize_block(block: BlockContext) -> ColumnQuantizer:
        bits = group_bits[block.index]
        errors_weights = salience_error_weights(block.weight, block.inverse_diagonal, salient_error_weight)
        low, step = calibrate_group(block.weight, bits, errors_weights)
        levels = 2 ** bits - 1
        return lambda j, column: _quantize_in_range(column, low, step, levels)

    quantized = gptq_quantize(W, hessian, quantize_block, block_size=group_size, compensate=compensate, factor=factor)
    widths = [stop - start for start, stop in block_bounds(columns, group_size)]
    code_bits = sum(rows * width * bits for width, bits in zip(widths, group_bits))
    overhead = len(widths) * (rows * 2 * FP16_BITS + BIT_WIDTH_CODE_BITS)
    total = rows * columns
    return QuantResult(
        weight=quantized.to(dtype=weight.dtype),
        effective_bits=(code_bits + overhead) / total,
        paper_bits=code_bits / total,
        stats={"group_bits": group_bits, "pairs_moved": sum(b == target + 1 for b in group_bits),
               "allocation_errors": search_errors, "target_bits": target, "group_size": group_size,
               "damping": factor.damping, "compensated": compensate},
    )
