"""Shared second-order machinery for the low-bit methods: the calibration Hessian, its damped
inverse Cholesky factor, and one GPTQ-style block-wise error-compensation loop.

All three methods in this package (PB-LLM, BiLLM, SliM-LLM) are "GPTQ with a different quantizer":
they share the Optimal Brain Surgeon view of a linear layer. For a weight matrix W (out x in) and
calibration inputs X (n x in) the layer-output error of a perturbation dW is

    ||dW X^T||_F^2 = (n / 2) * tr(dW H dW^T),    H = 2 X^T X / n              (GPTQ, Frantar et al. 2022, eq. 1)

GPTQ quantizes the columns of W one at a time in a fixed order and, after each column, moves the
column's rounding error onto the columns not yet quantized so that this error is minimised
(OBS update, GPTQ eq. 2-3):

    err_j = (w_j - q_j) / U_jj,          W[:, j+1:] -= err_j U[j, j+1:]

where U is the upper Cholesky factor of the damped inverse Hessian, U^T U = (H + lambda I)^-1.
U_jj^2 is the inverse-Hessian diagonal [H_F^-1]_jj of the columns F still free when column j is
quantized, so w_ij^2 / U_jj^2 is the OBS salience of weight ij (the cost of zeroing it); the papers
write this salience as w^2 / [H^-1]_jj^2 with their code taking [H^-1] to be the Cholesky factor U.

The loop here does the updates block-wise (GPTQ's "lazy batch" trick: updates inside a block of
128 columns right away, to the rest of the matrix once per block). Before each block it calls a
method-specific *block quantizer* with the block's current (already compensated) weights; the
method decides there what is fixed for the whole block (salient masks, scales, split points,
bit width) and returns a function that quantizes one column of the block given that column's
current values. Setting ``compensate=False`` runs the very same quantizer without any error
feedback: plain round-to-nearest of the same kind, the baseline the compensation is judged by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

DEFAULT_BLOCK_SIZE = 128
DEFAULT_DAMPENING_FRAC = 0.01
FP16_BITS = 16  # every scale, mean, offset and split point is counted as stored in fp16


@dataclass
class QuantResult:
    """What one method returns for one weight matrix.

    weight: the dequantized ("fake-quantized") weight, same shape and dtype as the input.
    effective_bits: storage bits per weight including every scale, mean, offset and mask needed to
        decode the weight (each method's docstring gives its formula).
    paper_bits: the bit width under the method's paper's own accounting (the figure the paper and
        Huang et al. 2024 label their rows with), also documented per method.
    stats: method-specific figures (fractions actually used, per-group bits, searched parameters).
    """

    weight: Tensor
    effective_bits: float
    paper_bits: float
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InverseHessianFactor:
    """Upper Cholesky factor U of the damped inverse Hessian, U^T U = (H + damping I)^-1."""

    upper: Tensor
    dead_inputs: Tensor  # bool (in,): input channels that were zero on every calibration token
    damping: float  # the lambda actually added to the diagonal

    @property
    def diagonal(self) -> Tensor:
        """U_jj, whose square is the inverse-Hessian diagonal in GPTQ's elimination order."""
        return self.upper.diagonal()


def inverse_hessian_cholesky(hessian: Tensor, dampening_frac: float = DEFAULT_DAMPENING_FRAC,
                             max_retries: int = 6) -> InverseHessianFactor:
    """GPTQ's damped inverse-Hessian Cholesky factor (GPTQ Section 4, "Cholesky reformulation").

    Dead inputs (diag H == 0, a channel that never fired) get H_jj = 1 so that H stays invertible;
    their weights do not affect the output, and the caller zeroes them as GPTQ does. Damping adds
    dampening_frac * mean(diag H) to the diagonal; if the factorisation still fails (a nearly
    singular H from few calibration tokens) the damping is raised tenfold, up to max_retries times.
    """
    if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"the Hessian must be square, got shape {tuple(hessian.shape)}")
    if dampening_frac < 0:
        raise ValueError(f"dampening_frac must be >= 0, got {dampening_frac}")
    H = hessian.detach().to(torch.float32).clone()
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    mean_diagonal = H.diagonal().mean().item()
    frac = dampening_frac
    for _ in range(max_retries + 1):
        damping = frac * mean_diagonal
        damped = H.clone()
        damped.diagonal().add_(damping)
        lower, info = torch.linalg.cholesky_ex(damped)
        if info.item() == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if info.item() == 0:
                return InverseHessianFactor(upper=upper, dead_inputs=dead, damping=damping)
        frac = max(frac * 10, 1e-6)
    raise ValueError(f"the Hessian is not positive definite even with damping {damping:.3g}")


def obs_salience(weight: Tensor, inverse_diagonal: Tensor) -> Tensor:
    """Element-wise OBS salience s_ij = w_ij^2 / U_jj^2 (PB-LLM Sec. 3.3, BiLLM eq. 3, SliM-LLM eq. 4)."""
    return weight.pow(2) / inverse_diagonal.pow(2).unsqueeze(0)


@dataclass(frozen=True)
class BlockContext:
    """What a block quantizer sees before the block is quantized."""

    index: int  # block number
    start: int  # first column of the block in the full matrix
    stop: int  # one past its last column
    weight: Tensor  # rows x (stop - start): the block's current weights, compensated for earlier blocks
    inverse_diagonal: Tensor  # (stop - start,): U_jj for the block's columns

    @property
    def columns(self) -> int:
        return self.stop - self.start


ColumnQuantizer = Callable[[int, Tensor], Tensor]  # (column within block, current column) -> quantized column
BlockQuantizer = Callable[[BlockContext], ColumnQuantizer]


def gptq_quantize(weight: Tensor, hessian: Tensor, block_quantizer: BlockQuantizer, *,
                  block_size: int = DEFAULT_BLOCK_SIZE, dampening_frac: float = DEFAULT_DAMPENING_FRAC,
                  compensate: bool = True, factor: InverseHessianFactor | None = None) -> Tensor:
    """Quantize ``weight`` column by column with GPTQ error compensation (GPTQ Algorithm 1).

    Returns the dequantized weight in float32. ``block_quantizer`` is called once per block of
    ``block_size`` columns with the block's current weights; the column quantizer it returns is
    then called for each column of the block, left to right, with that column's current values.
    ``compensate=False`` skips every OBS update (round-to-nearest with the same quantizer).
    ``factor`` lets a caller that already needed the inverse Hessian pass it in.
    """
    if weight.ndim != 2:
        raise ValueError(f"expected a 2-D weight (out x in), got shape {tuple(weight.shape)}")
    rows, columns = weight.shape
    if hessian.shape != (columns, columns):
        raise ValueError(f"Hessian shape {tuple(hessian.shape)} does not match {columns} input features")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if factor is None:
        factor = inverse_hessian_cholesky(hessian.to(weight.device), dampening_frac)
    U = factor.upper.to(weight.device)
    W = weight.detach().to(torch.float32).clone()
    W[:, factor.dead_inputs.to(weight.device)] = 0.0  # never-active inputs: their weights cannot matter
    quantized = torch.empty_like(W)

    for index, start in enumerate(range(0, columns, block_size)):
        stop = min(start + block_size, columns)
        block = W[:, start:stop].clone()
        U_block = U[start:stop, start:stop]
        quantize_column = block_quantizer(BlockContext(index, start, stop, block.clone(), U_block.diagonal().clone()))
        errors = torch.empty_like(block)
        for j in range(stop - start):
            column = block[:, j]
            q = quantize_column(j, column)
            quantized[:, start + j] = q
            if compensate:
                err = (column - q) / U_block[j, j]
                errors[:, j] = err
                # OBS update of the block's remaining columns (GPTQ eq. 3, rows of U instead of H^-1).
                block[:, j + 1:] -= torch.outer(err, U_block[j, j + 1:])
        if compensate and stop < columns:
            # Lazy batch update: the whole block's errors reach the later columns in one product.
            W[:, stop:] -= errors @ U[start:stop, stop:]
    return quantized


def output_error(weight: Tensor, quantized: Tensor, hessian: Tensor) -> float:
    """tr(dW H dW^T) = (2/n) ||dW X^T||^2: the layer-output error a quantization causes."""
    delta = (weight.to(torch.float32) - quantized.to(torch.float32))
    return float(((delta @ hessian.to(torch.float32)) * delta).sum())


def signs(values: Tensor) -> Tensor:
    """+1 / -1 with zero mapped to +1, so that a binarized weight never collapses to a third value."""
    return torch.where(values >= 0, 1.0, -1.0).to(values.dtype)


def block_bounds(columns: int, block_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each column block, the last one possibly narrower."""
    return [(start, min(start + block_size, columns)) for start in range(0, columns, block_size)]


def index_bits(count: int) -> int:
    """Bits to store an index in [0, count)."""
    return max(1, math.ceil(math.log2(count))) if count > 1 else 1


class HessianCollector:
    """Accumulates H = 2 X^T X / n for one nn.Linear from the inputs of its forward passes.

    n counts tokens (rows of X). The running mean is kept in float32 and rescaled at every batch,
    H <- H * n / (n + m) + (2 / (n + m)) X_m^T X_m, so that its magnitude does not grow with the
    number of tokens (GPTQ's add_batch, with tokens instead of sequences as the unit).
    """

    def __init__(self, in_features: int, device: torch.device | str | None = None):
        self.in_features = in_features
        self.hessian = torch.zeros(in_features, in_features, dtype=torch.float32, device=device)
        self.num_tokens = 0
        self._handle: torch.utils.hooks.RemovableHandle | None = None

    def add_batch(self, inputs: Tensor) -> None:
        x = inputs.detach().reshape(-1, self.in_features).to(device=self.hessian.device, dtype=torch.float32)
        added = x.shape[0]
        if added == 0:
            return
        total = self.num_tokens + added
        self.hessian.mul_(self.num_tokens / total)
        self.hessian.addmm_(x.T, x, alpha=2.0 / total)
        self.num_tokens = total

    def attach(self, module: nn.Linear) -> "HessianCollector":
        """Collect from every forward pass of ``module`` until detach()."""
        if self._handle is not None:
            raise RuntimeError("this collector is already attached")
        if module.in_features != self.in_features:
            raise ValueError(f"module has {module.in_features} inputs, collector expects {self.in_features}")
        self._handle = module.register_forward_hook(lambda _module, inputs, _output: self.add_batch(inputs[0]))
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "HessianCollector":
        return self

    def __exit__(self, *exc_info) -> None:
        self.detach()
