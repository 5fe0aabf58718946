"""BiLLM: 1-bit post-training quantization (Huang et al. 2024, "BiLLM: Pushing the Limit of
Post-Training Quantization for LLMs", arXiv:2402.04291, Algorithm 1).

Per block of 128 input columns, on the block's current (compensated) weights B:

1. Structural salience (Sec. 3.1): column salience S_j = sum_i B_ij^2 / [H^-1]_jj^2 (eq. 3, the
   OBS salience of hessian.py summed over the column). The k most salient columns are the salient
   set; k is searched in 1..max_salient_columns to minimise the block's reconstruction error
   ||B - B_hat||^2. During that search both the salient and the non-salient columns are
   approximated with the two-term residual binarization below: it has the same four levels per
   row as the split binarization the non-salient weights finally get, and is far cheaper to
   evaluate for every k (BiLLM's released code makes the same choice).
2. Residual approximation of the salient columns (eq. 5-6): per row,
   b1 = mu1 + a1 sign(w - mu1), then the residual r = w - b1 gets b2 = mu2 + a2 sign(r - mu2);
   w ~ b1 + b2, four values per row (mu1 + mu2 +- a1 +- a2).
3. Bell-shaped split of the non-salient weights (Sec. 3.2, eq. 7-8): with a break point p, the
   concentrated group |w| <= p and the sparse group |w| > p are binarized separately, each with
   its own per-row mean mu and scale a = mean |w - mu| (the paper's binarization with the row mean
   removed). p* minimises the error over p at the 10%..90% quantiles of the non-salient |w|.
4. GPTQ compensation (Algorithm 1 line 9-10). Masks, group membership, means and scales are fixed
   when the block starts; the sign of each weight is taken on its compensated value, column by
   column as in GPTQ (the paper's algorithm binarizes the block at once and only compensates the
   later blocks; per-column signs can only lower the OBS error).

Bit accounting, N = rows * columns weights, k_b salient columns of block b (c_b columns), and
r = sum_b rows * k_b / N the fraction of weights in salient columns:

    paper_bits = (N + rows * sum_b k_b + sum_b c_b) / N = 1 + r + 1 / rows
        one sign per weight, a second (residual) sign per salient-column weight, and the 1-bit
        salient-column mask per column of each block: the accounting behind BiLLM's ~1.1 bits.

What decoding really needs adds, per block, the concentrated/sparse membership of each non-salient
weight (1 bit; the paper does not count it), eight fp16 numbers per row (mu1, a1, mu2, a2 of the
salient columns, mu and a of each non-salient group) and the fp16 break point:

    effective_bits = paper_bits + [ sum_b ( rows * (c_b - k_b) + rows * 8 * 16 + 16 ) ] / N

At 128 columns per block the per-row numbers alone are 1 bit per weight, so BiLLM's real storage
is about 3 bits per weight: it is a 1-bit method only in the paper's accounting.
"""

from __future__ import annotations

import torch
from torch import Tensor

from factory.lowbit.hessian import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING_FRAC, FP16_BITS, BlockContext,
                                    ColumnQuantizer, QuantResult, block_bounds, gptq_quantize, signs)

DEFAULT_MAX_SALIENT_COLUMNS = 30
SPLIT_QUANTILES = torch.linspace(0.10, 0.90, 81)
PARAMETERS_PER_ROW = 8  # mu1, a1, mu2, a2, and (mu, a) of the concentrated and of the sparse group


def binarize(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Binarize each row's masked entries around the row mean (BiLLM eq. 1-2 with the mean removed).

    Returns (approximation with zeros outside the mask, per-row mean, per-row scale); the scale
    a = mean |w - mu| is the l1-optimal one for fixed signs. Works on any leading batch dimensions.
    Rows with no masked entry get mean 0 and scale 0.
    """
    counts = mask.sum(dim=-1, keepdim=True).clamp(min=1)
    mean = (values * mask).sum(dim=-1, keepdim=True) / counts
    centred = values - mean
    scale = (centred.abs() * mask).sum(dim=-1, keepdim=True) / counts
    approximation = (mean + scale * signs(centred)) * mask
    return approximation, mean.squeeze(-1), scale.squeeze(-1)


def residual_binarize(values: Tensor, mask: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Two-term residual binarization (BiLLM eq. 5-6): b1 of w, b2 of w - b1. Returns b1 + b2 and (mu1, a1, mu2, a2)."""
    first, mean1, scale1 = binarize(values, mask)
    second, mean2, scale2 = binarize(values - first, mask)
    return first + second, (mean1, scale1, mean2, scale2)


def _residual_error(values: Tensor, mask: Tensor) -> Tensor:
    """sum over the mask of (w - b1 - b2)^2 for residual_binarize, without building b1 + b2: the second
    stage binarizes r = w - b1 around its mean, so its error is sum (r - mu2)^2 - n a2^2 (see
    _search_break_point); the same figure up to rounding, in about half the tensor passes."""
    counts = mask.sum(dim=-1, keepdim=True)
    n = counts.clamp(min=1)
    centred = values - (values * mask).sum(dim=-1, keepdim=True) / n
    scale = (centred.abs() * mask).sum(dim=-1, keepdim=True) / n
    residual = centred - scale * signs(centred)
    residual = residual - (residual * mask).sum(dim=-1, keepdim=True) / n
    residual_scale = (residual.abs() * mask).sum(dim=-1, keepdim=True) / n
    return (residual.pow(2) * mask).sum() - (counts * residual_scale.pow(2)).sum()


def _search_salient_columns(block: Tensor, column_salience: Tensor, max_columns: int) -> int:
    """Number of top-salience columns whose separate residual binarization minimises the block error."""
    order = column_salience.argsort(descending=True)
    best_count, best_error = 1, float("inf")
    for count in range(1, max(1, min(max_columns, block.shape[1] - 1)) + 1):
        salient = torch.zeros(block.shape[1], dtype=torch.bool, device=block.device)
        salient[order[:count]] = True
        salient = salient.expand_as(block)
        error = (_residual_error(block, salient) + _residual_error(block, ~salient)).item()
        if error < best_error:
            best_count, best_error = count, error
    return best_count


def _search_break_point(block: Tensor, non_salient: Tensor, chunk: int = 16) -> float:
    """Break point p* of the bell-shaped split minimising the non-salient binarization error (BiLLM eq. 8).

    Without building the approximations: for a group G of n values binarized
    as mu + a sign(w - mu) (mu the mean, a = mean |w - mu|), the squared error is
    sum (w - mu)^2 - n a^2 = sum w^2 - n mu^2 - n a^2, so only masked sums are needed."""
    magnitudes = block.abs()
    candidates = torch.quantile(magnitudes[non_salient], SPLIT_QUANTILES.to(block.device))
    values = block * non_salient  # zeros outside the non-salient weights
    squares = values.pow(2)
    all_counts, all_sums, all_squares = non_salient.sum(dim=-1), values.sum(dim=-1), squares.sum(dim=-1)

    def binarization_error(counts: Tensor, sums: Tensor, total: Tensor, mask: Tensor) -> Tensor:
        mean = sums / counts.clamp(min=1)
        deviation = ((block - mean.unsqueeze(-1)).abs() * mask).sum(dim=-1)
        return (total - counts * mean.pow(2) - deviation.pow(2) / counts.clamp(min=1)).sum(dim=-1)

    errors = []
    for start in range(0, len(candidates), chunk):  # a few candidates at a time: tensors of ~chunk blocks
        concentrated = non_salient & (magnitudes <= candidates[start:start + chunk].view(-1, 1, 1))
        counts = concentrated.sum(dim=-1)
        sums = (values * concentrated).sum(dim=-1)
        total = (squares * concentrated).sum(dim=-1)
        errors.append(binarization_error(counts, sums, total, concentrated)
                      + binarization_error(all_counts - counts, all_sums - sums, all_squares - total,
                                           non_salient & ~concentrated))
    return candidates[int(torch.cat(errors).argmin())].item()


def quantize_weight(weight: Tensor, hessian: Tensor, *, block_size: int = DEFAULT_BLOCK_SIZE,
                    max_salient_columns: int = DEFAULT_MAX_SALIENT_COLUMNS,
                    dampening_frac: float = DEFAULT_DAMPENING_FRAC, compensate: bool = True) -> QuantResult:
    """BiLLM on one weight matrix (out x in) with calibration Hessian H = 2 X^T X / n (in x in)."""
    if max_salient_columns < 1:
        raise ValueError(f"max_salient_columns must be at least 1, got {max_salient_columns}")
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2 (salient and non-salient columns), got {block_size}")
    rows, columns = weight.shape
    salient_columns_per_block: list[int] = []
    break_points: list[float] = []
    salient_columns = torch.zeros(columns, dtype=torch.bool)

    def quantize_block(block: BlockContext) -> ColumnQuantizer:
        B = block.weight
        column_salience = (B.pow(2) / block.inverse_diagonal.pow(2)).sum(dim=0)
        count = _search_salient_columns(B, column_salience, max_salient_columns)
        salient_column = torch.zeros(block.columns, dtype=torch.bool, device=B.device)
        salient_column[column_salience.argsort(descending=True)[:count]] = True
        salient = salient_column.expand_as(B)
        _, (mean1, scale1, mean2, scale2) = residual_binarize(B, salient)

        non_salient = ~salient
        point = _search_break_point(B, non_salient) if non_salient.any() else 0.0
        concentrated = non_salient & (B.abs() <= point)
        sparse = non_salient & ~concentrated
        _, concentrated_mean, concentrated_scale = binarize(B, concentrated)
        _, sparse_mean, sparse_scale = binarize(B, sparse)
        salient_columns_per_block.append(count)
        salient_columns[block.start:block.stop] = salient_column.cpu()
        break_points.append(point)

        def quantize_column(j: int, column: Tensor) -> Tensor:
            if salient_column[j]:
                first = mean1 + scale1 * signs(column - mean1)
                return first + mean2 + scale2 * signs(column - first - mean2)
            mean = torch.where(concentrated[:, j], concentrated_mean, sparse_mean)
            scale = torch.where(concentrated[:, j], concentrated_scale, sparse_scale)
            return mean + scale * signs(column - mean)

        return quantize_column

    quantized = gptq_quantize(weight.detach().to(torch.float32), hessian, quantize_block, block_size=block_size,
                              dampening_frac=dampening_frac, compensate=compensate)
    total = rows * columns
    salient_weights = rows * sum(salient_columns_per_block)
    paper_storage = total + salient_weights + columns
    decoding_storage = sum(rows * (stop - start - count) + rows * PARAMETERS_PER_ROW * FP16_BITS + FP16_BITS
                           for (start, stop), count in zip(block_bounds(columns, block_size), salient_columns_per_block))
    return QuantResult(
        weight=quantized.to(dtype=weight.dtype),
        effective_bits=(paper_storage + decoding_storage) / total,
        paper_bits=paper_storage / total,
        stats={"salient_fraction": salient_weights / total, "salient_columns_per_block": salient_columns_per_block,
               "salient_columns": salient_columns, "break_points": break_points, "block_size": block_size,
               "compensated": compensate},
    )
