"""Information Calibration Quantization (ICQ) of IR-QLoRA (Qin et al. 2024, "Accurate LoRA-Finetuning
Quantization of LLMs via Information Retention", ICML 2024, arXiv:2402.05445, Sec. 3.2), on top of
plain NF4 (Dettmers et al. 2023, "QLoRA", Sec. 3). Written from the papers; no code of the official
IR-QLoRA repository (which has no license) is used.

Blocks: a weight tensor is flattened row-major and cut into blocks of B = 64 consecutive weights
(for an nn.Linear weight, out x in with in % 64 == 0: 64 consecutive input columns of one row),
as bitsandbytes does.

Plain NF4 (QLoRA Sec. 3: block-wise absmax scaling, NormalFloat levels L_0 < ... < L_15 with
L_0 = -1, L_7 = 0, L_15 = 1):

    s = absmax(w),    q_i = argmin_k | w_i / s - L_k |,    w_i ~ s * L_{q_i}

ICQ (IR-QLoRA Sec. 3.2) adds a calibration constant tau per block and picks it to maximize the
information entropy of the block's codes:

    w_i ~ s * L_{q_i} + tau,    q_i = argmin_k | (w_i - tau) / s - L_k |,    s = absmax(w - tau)

    tau* = argmax_tau H(q),     H(q) = - sum_{k=0..15} P_k log2 P_k,   P_k = #{i : q_i = k} / B

Which entropy: tau is a per-block constant and moves only its own block's codes, so the objective
is the entropy of one block's codes; maximizing each block's entropy maximizes their mean.
``code_entropy`` reports that mean over blocks by default (at most log2 16 = 4 bits);
``per_block=False`` gives the entropy of the whole tensor's code histogram, for reference.

The argmax is solved by a two-step search: start from tau_0 = median(w) (the mean of the two
middle values of a 64-block), then grid-search tau = median(w) + lambda * absmax(w) over
``DEFAULT_LAMBDAS`` (our grid: -0.1 .. 0.1 in steps of 0.01; a wider one raises the entropy a
little more and the reconstruction error too). Choices of ours the paper leaves open:

* plain NF4 (tau = 0) is one more candidate (``keep_plain_nf4=True``), so no block ends below
  plain NF4's entropy; ties go to the earliest candidate in the order plain NF4, then lambda by
  increasing |lambda| (the median first).
* each candidate is scored with the tau that will be stored (8-bit, below), so the entropy the
  search maximizes is exactly the entropy of the codes it returns.

Entropy is not fidelity: measured against plain NF4, ICQ's reconstruction MSE was 0.93-1.00x on
Gaussian, outlier-row and real SmolLM2 weights, but 0.96-1.74x on Student-t(3) samples, where a
block with one extreme outlier gets its near-zero bulk spread over coarse codes.

Storage of tau, in 8 bits as in the paper (the format is ours): double quantization the way QLoRA
stores its absmax constants (8-bit floats, one fp32 scale per 256): a float8 e4m3 per block (3
mantissa bits: relative error <= 1/16 in its normal range) times one fp32 scale c_g per group of
G = 256 consecutive blocks, c_g = max |candidate tau| / 448 over the group. (A symmetric int8 grid
with the same group scale is finer on Gaussian weights, but one heavy-tailed block sets the step
for its whole group: on a Student-t(3) matrix its tau error reached 2.6% of a block's absmax at
the 99th percentile, float8's 0.5%; NF4 levels near zero are ~8% apart.) The absmax s stays fp32,
as in bitsandbytes' NF4 without double quantization. Bits per weight:

    effective_bits = 4 + b_absmax / B + b_tau / B + b_c / (B * G)
                   = 4 + 32/64 + 8/64 + 32/(64*256) = 4.627          (plain NF4: 4 + 32/64 = 4.5)

Speed: quantization compares each weight with the 15 decision boundaries in weight space,
tau + s * (L_k + L_{k+1}) / 2, instead of dividing by s; the search then counts a candidate's codes
by binary search of those boundaries in the sorted block, with the very same float comparisons
(exact), so each block is sorted once and each candidate costs 15 searches per block: a 4096 x 4096
matrix with the default 21 lambdas took 4.7 s on one CPU core of a busy 2-core machine (plain NF4:
0.75 s). Codes are returned unpacked (uint8, one per weight); packed they take two per byte.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_BLOCK = 64
# One fp32 scale for the 8-bit tau of every 256 blocks (QLoRA's double-quantization block size).
TAU_GROUP = 256
TAU_BITS = 8
TAU_DTYPE = torch.float8_e4m3fn
TAU_DTYPE_MAX = torch.finfo(TAU_DTYPE).max  # 448
FP32_BITS = 32
# lambda in tau = median + lambda * absmax: 21 points over [-0.1, 0.1] (steps of 0.01).
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(round(-0.1 + 0.01 * i, 2) for i in range(21))

# The 16 NF4 levels (QLoRA Appendix E), as float32 values. These equal
# bitsandbytes.functional.get_4bit_type("nf4") bit for bit (tests/test_irqlora.py checks it); the
# constants are used instead of importing bitsandbytes here, whose import costs seconds and probes
# the Hub for a CPU kernel.
NF4_LEVELS: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)
NF4_CODES = len(NF4_LEVELS)


def nf4_levels(device: torch.device | str | None = None) -> Tensor:
    """The 16 NF4 levels, ascending, float32."""
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def effective_bits(block: int = DEFAULT_BLOCK, *, absmax_bits: int = FP32_BITS, tau_bits: int = TAU_BITS,
                   tau_group: int = TAU_GROUP, tau_scale_bits: int = FP32_BITS) -> float:
    """Bits per weight of ICQ storage: 4 + b_absmax/B + b_tau/B + b_c/(B*G) (4.627 by default).

    ``tau_bits=0, tau_scale_bits=0`` gives plain NF4 (4.5 with fp32 absmax).
    """
    return 4 + absmax_bits / block + tau_bits / block + tau_scale_bits / (block * tau_group)


# ---------------------------------------------------------------- shared block machinery


def _as_blocks(weight: Tensor, block: int) -> Tensor:
    if block < 2:
        raise ValueError(f"block must be at least 2, got {block}")
    if weight.numel() == 0 or weight.numel() % block:
        raise ValueError(f"a tensor of {weight.numel()} weights does not split into blocks of {block}")
    blocks = weight.detach().reshape(-1, block).to(torch.float32).contiguous()
    if not torch.isfinite(blocks).all():
        raise ValueError("the tensor has NaN or infinite weights")
    return blocks


def _sort_rows(blocks: Tensor) -> Tensor:
    if blocks.device.type == "cpu":
        # numpy's vectorized sort is ~3x faster than torch.sort on short CPU rows.
        return torch.from_numpy(np.sort(blocks.numpy(), axis=1))
    return blocks.sort(dim=1).values


def _midpoints(device: torch.device) -> Tensor:
    levels = nf4_levels(device)
    return (levels[1:] + levels[:-1]) / 2


def _shifted_absmax(block_min: Tensor, block_max: Tensor, tau: Tensor) -> Tensor:
    """s = absmax(w - tau) from the block's extremes (float subtraction is monotone, so this is exact).

    A block that is constant at tau gets s = 1: any scale dequantizes it to tau.
    """
    scale = torch.maximum(block_max - tau, tau - block_min)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _boundaries(tau: Tensor, scale: Tensor, midpoints: Tensor) -> Tensor:
    """Decision boundaries in weight space, tau + s * (L_k + L_{k+1}) / 2: (n_blocks, 15), ascending."""
    return tau[:, None] + scale[:, None] * midpoints


def _encode(blocks: Tensor, boundaries: Tensor) -> Tensor:
    """Nearest-level codes: q = #{k : boundary_k < w} (a tie goes to the lower level)."""
    return torch.searchsorted(boundaries, blocks, right=False, out_int32=True).to(torch.uint8)


def _entropy_table(block: int, device: torch.device) -> Tensor:
    """-(c/B) log2(c/B) for every possible count c = 0..B (0 for c = 0)."""
    p = torch.arange(block + 1, dtype=torch.float64, device=device) / block
    return (-torch.special.xlogy(p, p) / math.log(2)).to(torch.float32)


def _block_entropy_from_counts(counts: Tensor, block: int) -> Tensor:
    return _entropy_table(block, counts.device).take(counts.long()).sum(dim=1)


def _counts_in_sorted(sorted_blocks: Tensor, boundaries: Tensor) -> Tensor:
    """Code counts (n_blocks, 16) of sorted blocks: #{q <= k} = #{w <= boundary_k}, as in ``_encode``."""
    n_blocks, block = sorted_blocks.shape
    cumulative = torch.empty(n_blocks, NF4_CODES + 1, dtype=torch.int32, device=sorted_blocks.device)
    cumulative[:, 0] = 0
    cumulative[:, -1] = block
    cumulative[:, 1:-1] = torch.searchsorted(sorted_blocks, boundaries, right=True, out_int32=True)
    return cumulative[:, 1:] - cumulative[:, :-1]


# ---------------------------------------------------------------- plain NF4


def nf4_quantize(weight: Tensor, block: int = DEFAULT_BLOCK) -> tuple[Tensor, Tensor]:
    """Plain NF4 (QLoRA): codes (n_blocks, block) uint8 in 0..15 and absmax (n_blocks,) float32.

    Dequantize with ``nf4_dequantize(codes, absmax, weight.shape)``.
    """
    blocks = _as_blocks(weight, block)
    zero = torch.zeros(blocks.shape[0], device=blocks.device)
    absmax = _shifted_absmax(blocks.amin(dim=1), blocks.amax(dim=1), zero)
    codes = _encode(blocks, _boundaries(zero, absmax, _midpoints(blocks.device)))
    return codes, absmax


def nf4_dequantize(codes: Tensor, absmax: Tensor, shape: Sequence[int] | torch.Size | None = None,
                   tau: Tensor | None = None) -> Tensor:
    """s * L_q (+ tau for ICQ codes), float32, reshaped to ``shape`` when given (else (n_blocks, block))."""
    values = nf4_levels(codes.device)[codes.long()] * absmax[:, None]
    if tau is not None:
        values = values + tau[:, None]
    return values.reshape(tuple(shape)) if shape is not None else values


def block_code_entropy(codes: Tensor) -> Tensor:
    """Entropy in bits of each block's code histogram, H = -sum_k P_k log2 P_k: (n_blocks,) float32."""
    if codes.dim() != 2:
        raise ValueError(f"codes must be (n_blocks, block), got shape {tuple(codes.shape)}")
    counts = torch.zeros(codes.shape[0], NF4_CODES, dtype=torch.int64, device=codes.device)
    counts.scatter_add_(1, codes.long(), torch.ones_like(codes, dtype=torch.int64))
    return _block_entropy_from_counts(counts, codes.shape[1])


def code_entropy(codes: Tensor, per_block: bool = True) -> float:
    """Entropy of NF4 codes in bits.

    ``per_block=True`` (the ICQ objective, see the module docstring): mean over blocks of each
    block's entropy, at most 4. ``per_block=False``: entropy of the whole tensor's code histogram.
    """
    if per_block:
        return float(block_code_entropy(codes).mean())
    counts = torch.bincount(codes.reshape(-1).long(), minlength=NF4_CODES).to(torch.float64)
    p = counts / counts.sum()
    return float(-torch.special.xlogy(p, p).sum() / math.log(2))


# ---------------------------------------------------------------- ICQ


@dataclass
class ICQResult:
    """ICQ-quantized tensor: w ~ absmax * L[codes] + tau per block (``dequantized`` has the input's shape)."""

    codes: Tensor        # (n_blocks, block) uint8, 0..15
    absmax: Tensor       # (n_blocks,) float32: s = absmax(w - tau)
    tau: Tensor          # (n_blocks,) float32: the stored tau, tau_code * tau_scale of its group
    tau_code: Tensor     # (n_blocks,) float8_e4m3fn
    tau_scale: Tensor    # (n_groups,) float32, one per tau_group blocks
    lambdas: Tensor      # (n_blocks,) float32: the chosen lambda, NaN where plain NF4 (tau = 0) won
    dequantized: Tensor  # float32, the input's shape
    block: int
    tau_group: int

    @property
    def entropy(self) -> float:
        """Mean per-block code entropy in bits (the quantity ICQ maximizes)."""
        return code_entropy(self.codes)

    @property
    def effective_bits(self) -> float:
        return effective_bits(self.block, tau_group=self.tau_group)


def _median_of_sorted(sorted_blocks: Tensor) -> Tensor:
    block = sorted_blocks.shape[1]
    if block % 2:
        return sorted_blocks[:, block // 2]
    return (sorted_blocks[:, block // 2 - 1] + sorted_blocks[:, block // 2]) / 2


def _round_to_tau_grid(scaled_tau: Tensor) -> Tensor:
    """tau / c rounded to the nearest float8 e4m3 value, returned as float32 (exact), so the search
    needs no float8 arithmetic. Clamped first: not every backend's cast saturates."""
    return scaled_tau.clamp(-TAU_DTYPE_MAX, TAU_DTYPE_MAX).to(TAU_DTYPE).to(torch.float32)


def _candidate_order(lambdas: Sequence[float]) -> list[float]:
    unique = sorted({float(v) for v in lambdas}, key=lambda v: (abs(v), v))
    if not unique or not all(math.isfinite(v) for v in unique):
        raise ValueError(f"lambdas must be a non-empty list of finite numbers, got {lambdas!r}")
    return unique


def icq_quantize(weight: Tensor, block: int = DEFAULT_BLOCK, lambdas: Sequence[float] = DEFAULT_LAMBDAS, *,
                 tau_group: int = TAU_GROUP, keep_plain_nf4: bool = True) -> ICQResult:
    """ICQ: per block, tau = median(w) + lambda * absmax(w) with lambda from ``lambdas`` chosen to
    maximize the entropy of the block's NF4 codes of (w - tau) (IR-QLoRA Sec. 3.2); tau stored in
    8 bits (float8 e4m3 per block, one fp32 scale per ``tau_group`` blocks).
    """
    order = _candidate_order(lambdas)
    if tau_group < 1:
        raise ValueError(f"tau_group must be at least 1, got {tau_group}")
    blocks = _as_blocks(weight, block)
    n_blocks, device = blocks.shape[0], blocks.device
    midpoints = _midpoints(device)
    sorted_blocks = _sort_rows(blocks)
    lowest, highest = sorted_blocks[:, 0].contiguous(), sorted_blocks[:, -1].contiguous()
    median = _median_of_sorted(sorted_blocks)
    absmax = torch.maximum(highest, -lowest)

    # 8-bit float grid for tau: |median + lambda * absmax| is convex in lambda, so the extreme
    # lambdas bound every candidate of a block; one scale covers a group's blocks.
    reach = torch.maximum((median + min(order) * absmax).abs(), (median + max(order) * absmax).abs())
    n_groups = -(-n_blocks // tau_group)
    padded = torch.zeros(n_groups * tau_group, device=device)
    padded[:n_blocks] = reach
    tau_scale = padded.view(n_groups, tau_group).amax(dim=1) / TAU_DTYPE_MAX
    tau_scale = torch.where(tau_scale > 0, tau_scale, torch.ones_like(tau_scale))
    block_tau_scale = tau_scale.repeat_interleave(tau_group)[:n_blocks]

    def entropy_of(tau_code: Tensor) -> Tensor:
        tau = tau_code * block_tau_scale
        boundaries = _boundaries(tau, _shifted_absmax(lowest, highest, tau), midpoints)
        return _block_entropy_from_counts(_counts_in_sorted(sorted_blocks, boundaries), block)

    best_tau_code = torch.zeros(n_blocks, device=device)
    best_lambda = torch.full((n_blocks,), math.nan, device=device)
    best_entropy = entropy_of(best_tau_code) if keep_plain_nf4 else torch.full((n_blocks,), -1.0, device=device)
    for lam in order:
        tau_code = _round_to_tau_grid((median + lam * absmax) / block_tau_scale)
        entropy = entropy_of(tau_code)
        better = entropy > best_entropy  # strict: ties keep the earlier candidate
        best_entropy = torch.where(better, entropy, best_entropy)
        best_tau_code = torch.where(better, tau_code, best_tau_code)
        best_lambda = torch.where(better, torch.full_like(best_lambda, lam), best_lambda)

    tau = best_tau_code * block_tau_scale  # the search's float ops: identical codes
    scale = _shifted_absmax(lowest, highest, tau)
    codes = _encode(blocks, _boundaries(tau, scale, midpoints))
    return ICQResult(codes=codes, absmax=scale, tau=tau, tau_code=best_tau_code.to(TAU_DTYPE),
                     tau_scale=tau_scale, lambdas=best_lambda,
                     dequantized=nf4_dequantize(codes, scale, weight.shape, tau), block=block, tau_group=tau_group)


@torch.no_grad()
def icq_fake_quantize_(linear: torch.nn.Linear, block: int = DEFAULT_BLOCK,
                       lambdas: Sequence[float] = DEFAULT_LAMBDAS) -> ICQResult:
    """Overwrite ``linear.weight`` with its ICQ-dequantized values (simulated quantization).

    bitsandbytes' Linear4bit has no per-block tau, so an ICQ base layer is held dequantized; the
    frozen base of ``ElasticLoRALinear`` can be such a layer.
    """
    result = icq_quantize(linear.weight, block, lambdas)
    linear.weight.copy_(result.dequantized.to(linear.weight.dtype))
    return result
