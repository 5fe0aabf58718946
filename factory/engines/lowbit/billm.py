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

from typing import NamedTuple

import torch
from torch import Tensor

from factory.engines.lowbit.hessian import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING_FRAC, FP16_BITS, BlockContext,
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


# The two searches below score every candidate (salient-column count, break point) without building
# its approximation. A group binarized as mu + a sign(w - mu) (mu its mean, a = mean |w - mu|) has
# squared error sum (w - mu)^2 - n a^2 = sum w^2 - n mu^2 - n a^2, and every group they score is a
# run of each row's sorted values (|w| <= p is -p <= w <= p; w >= mu), or the members of a small
# column subset inside such a run. So counts, sums, squares and |w - c| sums are differences of
# prefix sums at torch.searchsorted positions: per candidate, a few gathers per row instead of
# passes over the block (a 1536 x 576 BiLLM matrix: 2.6 s -> 0.9 s on one CPU thread). Sums are
# float64, so that the scores are as close to exact as the float32 sums of building each candidate;
# tests/test_lowbit.py checks that both choose the same.


class _Sums(NamedTuple):
    """Count, sum and sum of squares of the values before a position (or of a run), each rows x K."""

    count: Tensor
    total: Tensor
    squares: Tensor

    def __sub__(self, other: "_Sums") -> "_Sums":
        return _Sums(self.count - other.count, self.total - other.total, self.squares - other.squares)


class _SortedRows:
    """Each row sorted once, with prefix sums; queried with K values or positions per row (rows x K)."""

    def __init__(self, sorted_rows: Tensor, queries: int):
        self.sorted = sorted_rows  # rows x n, float64
        rows, n = sorted_rows.shape
        zero = torch.zeros(rows, 1, dtype=sorted_rows.dtype, device=sorted_rows.device)
        self._prefix = [torch.cat([zero, values.cumsum(-1)], dim=-1)
                        for values in (torch.ones_like(sorted_rows), sorted_rows, sorted_rows.pow(2))]
        self.start = torch.zeros(rows, queries, dtype=torch.long, device=sorted_rows.device)
        self.end = torch.full_like(self.start, n)
        nothing = torch.zeros(rows, queries, dtype=sorted_rows.dtype, device=sorted_rows.device)
        self.none = _Sums(nothing, nothing, nothing)
        self.all = _Sums(*(prefix[:, -1:].expand(rows, queries) for prefix in self._prefix))

    def at(self, position: Tensor) -> _Sums:
        return _Sums(*(prefix.gather(-1, position) for prefix in self._prefix))

    def position(self, values: Tensor, side: str = "left", low: Tensor | None = None,
                 high: Tensor | None = None) -> Tensor:
        """Where values (rows x K) fall in each sorted row, clamped to [low, high]."""
        position = torch.searchsorted(self.sorted, values.contiguous(), side=side)
        if low is not None:
            position = torch.maximum(position, low)
        return position if high is None else torch.minimum(position, high)


class _ColumnSubset(_SortedRows):
    """The members of a column subset per query (or all but them) as seen in each sorted row.

    member_position: rows x J, where each of the subset's J columns landed in the sorted row, in
    subset-rank order; query k holds the members of rank < counts[k]."""

    def __init__(self, sorted_rows: Tensor, member_position: Tensor, counts: Tensor, complement: bool):
        super().__init__(sorted_rows, len(counts))
        values = sorted_rows.gather(-1, member_position)
        self._member_position = member_position.unsqueeze(1)  # rows x 1 x J
        self._in_query = torch.arange(member_position.shape[1], device=counts.device) < counts.view(-1, 1)  # K x J
        self._member_sums = torch.stack([torch.ones_like(values), values, values.pow(2)], dim=-1)  # rows x J x 3
        self._complement = complement
        members = self._in_query.to(values.dtype) @ self._member_sums  # rows x K x 3
        self.all = self._combine(self.all, members)

    def _combine(self, whole: _Sums, members: Tensor) -> _Sums:
        members = _Sums(*members.unbind(-1))
        return whole - members if self._complement else members

    def at(self, position: Tensor) -> _Sums:
        before = (self._member_position < position.unsqueeze(-1)) & self._in_query  # rows x K x J
        members = torch.bmm(before.to(self._member_sums.dtype), self._member_sums)
        return self._combine(super().at(position) if self._complement else None, members)


def _abs_deviation(below: _Sums, split: _Sums, above: _Sums, centre: Tensor) -> Tensor:
    """sum |w - centre| over the run between the positions whose prefix sums are below and above,
    where split is the prefix at the first value >= centre inside the run."""
    lower, upper = split - below, above - split
    return centre * lower.count - lower.total + upper.total - centre * upper.count


def _binarization_error(group: _Sums, deviation: Tensor) -> Tensor:
    """sum w^2 - n mu^2 - n a^2 of one group per row and query from its sums and sum |w - mu|, summed over rows (K,)."""
    n = group.count.clamp(min=1)
    return (group.squares - group.total.pow(2) / n - deviation.pow(2) / n).sum(dim=0)


def _residual_errors(rows: _SortedRows) -> Tensor:
    """Squared error of residual_binarize on each query's values, summed over the rows (K,).

    Stage one binarizes w around mu1 with scale a1; the residual r = w - mu1 - a1 sign(w - mu1) is
    w - (mu1 + a1) on the run w >= mu1 and w - (mu1 - a1) below it, so stage two's centred residual
    r - mu2 is w minus a constant on each run: its squares and |.| sums are prefix-sum queries too."""
    everything = rows.all
    n = everything.count.clamp(min=1)
    mean1 = everything.total / n
    split_position = rows.position(mean1)  # first w >= mu1: sign +1 from there on, as signs() gives
    split = rows.at(split_position)
    scale1 = _abs_deviation(rows.none, split, everything, mean1) / n
    upper = everything.count - split.count
    mean2 = -scale1 * (upper - split.count) / n
    squares = deviation = 0
    for below, above, low, high, shift in ((rows.none, split, rows.start, split_position, mean1 - scale1 + mean2),
                                           (split, everything, split_position, rows.end, mean1 + scale1 + mean2)):
        run = above - below
        squares = squares + run.squares - 2 * shift * run.total + run.count * shift.pow(2)  # sum (w - shift)^2
        deviation = deviation + _abs_deviation(below, rows.at(rows.position(shift, low=low, high=high)), above, shift)
    return (squares - deviation.pow(2) / n).sum(dim=0)


def _search_salient_columns(block: Tensor, column_salience: Tensor, max_columns: int) -> int:
    """Number of top-salience columns whose separate residual binarization minimises the block error
    (salient and non-salient columns both residual-binarized, see quantize_weight); ties go to fewer columns."""
    columns = block.shape[1]
    counts = torch.arange(1, max(1, min(max_columns, columns - 1)) + 1, device=block.device)
    candidates = column_salience.argsort(descending=True)[:len(counts)]
    sorted_rows, column_of = block.to(torch.float64).sort(dim=-1)
    position_of = column_of.argsort(dim=-1)  # rows x columns: where each column landed in its sorted row
    errors = sum(_residual_errors(_ColumnSubset(sorted_rows, position_of[:, candidates], counts, complement))
                 for complement in (False, True))
    return int(counts[int(errors.argmin())])


def _search_break_point(block: Tensor, salient_column: Tensor) -> float:
    """Break point p* of the bell-shaped split minimising the non-salient binarization error (BiLLM eq. 8),
    over the quantiles SPLIT_QUANTILES of the non-salient |w|; ties go to the lower quantile.

    The concentrated group |w| <= p is the run -p <= w <= p of each sorted row, the sparse group the
    two runs outside it."""
    non_salient = block[:, ~salient_column]
    candidates = torch.quantile(non_salient.abs().flatten(), SPLIT_QUANTILES.to(block.device))
    rows = _SortedRows(non_salient.to(torch.float64).sort(dim=-1).values, len(candidates))
    points = candidates.to(torch.float64).expand(non_salient.shape[0], -1)
    low, high = rows.position(-points, side="left"), rows.position(points, side="right")
    below, above = rows.at(low), rows.at(high)
    concentrated = above - below
    mean = concentrated.total / concentrated.count.clamp(min=1)
    split = rows.at(rows.position(mean, low=low, high=high))
    errors = _binarization_error(concentrated, _abs_deviation(below, split, above, mean))
    sparse = rows.all - concentrated
    mean = sparse.total / sparse.count.clamp(min=1)
    deviation = (_abs_deviation(rows.none, rows.at(rows.position(mean, high=low)), below, mean)
                 + _abs_deviation(above, rows.at(rows.position(mean, low=high)), rows.all, mean))
    return candidates[int((errors + _binarization_error(sparse, deviation)).argmin())].item()


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
        point = _search_break_point(B, salient_column) if non_salient.any() else 0.0
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
