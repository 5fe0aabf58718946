"""QuIP: quantization with incoherence processing (Chee et al. 2023, "QuIP: 2-Bit Quantization of
Large Language Models With Guarantees", arXiv:2307.13304), Sec. 3-4, Algorithms 1-2.

Per linear layer, weight W (m x n) with calibration Hessian H = 2 X^T X / n (n x n):

1. Diagonal rescale (Alg. 1): H <- H / max|H|, D = (diag H / diag W^T W)^(1/4), W <- W D,
   H <- D^-1 H D^-1. It balances the weight's column norms against the Hessian's diagonal,
   which the output error tr(dW H dW^T) leaves unchanged.
2. H normalization and damping: H <- n H / tr H + 0.01 I (mean diagonal one).
3. Two-sided incoherence: W <- U W V^T, H <- V H V^T with random orthogonal U (m x m) and
   V (n x n) drawn from one seed per linear (`incoherence_transform`): a random Hadamard matrix
   H_n S / sqrt(n) (S random signs) where n is a power of two, otherwise, as the paper's
   Sec. 4 does for efficiency, a Kronecker product A (x) B of two Haar-random orthogonals of
   sizes a x b = n, a and b as close to sqrt(n) as n's divisors allow, between random
   permutations (576 = 24 x 24, 1536 = 32 x 48, 192 = 12 x 16).
4. QuIP's grid: one scale per matrix, s = 2.4 RMS(W), and 2^b levels spanning [-s, s] evenly
   with no zero level: s (2k / (2^b - 1) - 1), k = 0 .. 2^b - 1 (+-1/3 s and +-s at 2 bits).
5. LDLQ rounding (Alg. 2): with no greedy passes it equals GPTQ (the paper's Theorem 6), so the
   shared GPTQ solver (hessian.py) does it, with its usual dampening_frac on the normalized H.
6. Un-rotation: W_hat <- U^T W_hat V, then W_hat <- W_hat D^-1 (dequantized, simulated).

Bit accounting: paper_bits = b. effective_bits also counts what a decoder must store besides the
b-bit codes: the fp16 scale s, the fp16 rescale vector D (n values) and one 64-bit seed from which
U and V are regenerated: (b m n + 16 + 16 n + 64) / (m n).

The reference code (github.com/Cornell-RelaxML/QuIP) was read, not copied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from factory.engines.lowbit.hessian import (DEFAULT_BLOCK_SIZE, DEFAULT_DAMPENING_FRAC, FP16_BITS, BlockContext,
                                            ColumnQuantizer, QuantResult, gptq_quantize, inverse_hessian_cholesky)

RANGE_FACTOR = 2.4  # rho: the grid spans +-rho * RMS(W) (QuIP Sec. 4, the reference code's 2.4)
NORMALIZED_DAMPING = 0.01  # added to the normalized H (mean diagonal one) before the rotation
SEED_BITS = 64
_MAX_SEED = 2 ** 63 - 1


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _sylvester_hadamard(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def _haar_orthogonal(n: int, generator: torch.Generator) -> Tensor:
    """A Haar-random n x n orthogonal matrix: QR of a Gaussian with the signs of R's diagonal fixed."""
    q, r = torch.linalg.qr(torch.randn(n, n, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.sign(r.diagonal()) + 0.5)


def balanced_factors(n: int) -> tuple[int, int]:
    """a <= b with a b = n and a the largest divisor of n not above sqrt(n)."""
    a = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return a, n // a


@dataclass(frozen=True)
class OrthogonalTransform:
    """Q = P_out (A (x) B) diag(signs) P_in, applied to the rows of a matrix without forming Q.

    Random Hadamard: A and B normalized Sylvester Hadamards (their Kronecker product is H_n / sqrt n),
    random signs, identity permutations. Kronecker: A, B Haar-random, random permutations, signs one.
    """

    kind: str  # "random-hadamard" or "kronecker"
    left: Tensor  # a x a
    right: Tensor  # b x b
    signs: Tensor  # (n,)
    permute_in: Tensor  # (n,) long
    permute_out: Tensor  # (n,) long

    @property
    def size(self) -> int:
        return self.signs.numel()

    def apply(self, x: Tensor) -> Tensor:
        """Q x for x of shape (n, k)."""
        a, b = self.left.shape[0], self.right.shape[0]
        like = dict(device=x.device, dtype=x.dtype)  # the factors live on the CPU, x may be on CUDA
        x = (x[self.permute_in.to(x.device)] * self.signs.to(**like).unsqueeze(1)).reshape(a, b, -1)
        # (A (x) B) vec: row index i = i_a b + i_b, so the product is A X B^T on each column's a x b view
        y = torch.einsum("ij,jlk,ml->imk", self.left.to(**like), x, self.right.to(**like)).reshape(a * b, -1)
        return y[self.permute_out.to(x.device)]

    def apply_transpose(self, y: Tensor) -> Tensor:
        """Q^T y for y of shape (n, k)."""
        a, b = self.left.shape[0], self.right.shape[0]
        like = dict(device=y.device, dtype=y.dtype)
        x = torch.empty_like(y)
        x[self.permute_out.to(y.device)] = y
        x = torch.einsum("ji,jlk,lm->imk", self.left.to(**like), x.reshape(a, b, -1),
                         self.right.to(**like)).reshape(a * b, -1)
        out = torch.empty_like(x)
        out[self.permute_in.to(y.device)] = x * self.signs.to(**like).unsqueeze(1)
        return out

    def dense(self) -> Tensor:
        return self.apply(torch.eye(self.size, dtype=torch.float64))


def incoherence_transform(n: int, generator: torch.Generator) -> OrthogonalTransform:
    """A random orthogonal n x n transform (see the module docstring, step 3)."""
    if n < 1:
        raise ValueError(f"cannot rotate a dimension of {n}")
    a, b = balanced_factors(n)
    identity = torch.arange(n)
    if _is_power_of_two(n):
        signs = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
        return OrthogonalTransform("random-hadamard", _sylvester_hadamard(a), _sylvester_hadamard(b), signs,
                                   identity, identity)
    left, right = _haar_orthogonal(a, generator), _haar_orthogonal(b, generator)
    return OrthogonalTransform("kronecker", left, right, torch.ones(n, dtype=torch.float64),
                               torch.randperm(n, generator=generator), torch.randperm(n, generator=generator))


def transforms_for(rows: int, columns: int, seed: int) -> tuple[OrthogonalTransform, OrthogonalTransform]:
    """U (rows x rows) then V (columns x columns), both drawn from one generator seeded with `seed`."""
    generator = torch.Generator().manual_seed(seed)
    return incoherence_transform(rows, generator), incoherence_transform(columns, generator)


def rotate(weight: Tensor, u: OrthogonalTransform, v: OrthogonalTransform) -> Tensor:
    """U W V^T."""
    return v.apply(u.apply(weight).T).T


def unrotate(weight: Tensor, u: OrthogonalTransform, v: OrthogonalTransform) -> Tensor:
    """U^T W V, the inverse of `rotate`."""
    return v.apply_transpose(u.apply_transpose(weight).T).T


def rescale_factors(weight: Tensor, hessian: Tensor) -> Tensor:
    """D = (diag H / diag W^T W)^(1/4), on H scaled to max |H| = 1 (Alg. 1; both diagonals floored at 1e-8)."""
    H = hessian / hessian.abs().max().clamp(min=torch.finfo(hessian.dtype).tiny)
    diag_h = H.diagonal().clamp(min=1e-8)
    diag_w = weight.pow(2).sum(dim=0).clamp(min=1e-8)
    return (diag_h / diag_w).pow(0.25).clamp(min=1e-8)


def grid_scale(weight: Tensor, range_factor: float = RANGE_FACTOR) -> float:
    """s = rho RMS(W): one scale for the whole (rotated) matrix."""
    return float(range_factor * weight.pow(2).mean().sqrt()) + 1e-16


def round_to_grid(values: Tensor, scale: float, bits: int) -> Tensor:
    """Nearest of the 2^b levels s (2k / (2^b - 1) - 1); values beyond +-s clip to the end levels."""
    top = 2 ** bits - 1
    k = torch.clamp(torch.round((values / scale + 1) / 2 * top), 0, top)
    return scale * (2 * k / top - 1)


@dataclass
class Preprocessed:
    weight: Tensor  # U (W D) V^T
    hessian: Tensor  # V (D^-1 H D^-1, normalized and damped) V^T
    rescale: Tensor  # D
    u: OrthogonalTransform
    v: OrthogonalTransform


def preprocess(weight: Tensor, hessian: Tensor, seed: int, *, rescale: bool = True) -> Preprocessed:
    """Steps 1-3 of the module docstring, in float64."""
    W = weight.detach().to(torch.float64)
    H = hessian.detach().to(torch.float64)
    columns = W.shape[1]
    D = rescale_factors(W, H) if rescale else torch.ones(columns, dtype=torch.float64, device=W.device)
    W = W * D.unsqueeze(0)
    H = H / D.unsqueeze(0) / D.unsqueeze(1)
    H = H * (columns / H.trace().clamp(min=1e-8)) + NORMALIZED_DAMPING * torch.eye(columns, dtype=torch.float64,
                                                                                   device=H.device)
    u, v = transforms_for(W.shape[0], columns, seed)
    H = v.apply(v.apply(H).T)  # V H V^T (H symmetric)
    return Preprocessed(rotate(W, u, v), (H + H.T) / 2, D, u, v)


def quantize_weight(weight: Tensor, hessian: Tensor, *, bits: int = 2, seed: int = 0,
                    dampening_frac: float = DEFAULT_DAMPENING_FRAC, block_size: int = DEFAULT_BLOCK_SIZE,
                    range_factor: float = RANGE_FACTOR, rescale: bool = True, compensate: bool = True,
                    round_fn: Callable[[Tensor, float, int], Tensor] | None = None) -> QuantResult:
    """QuIP on one weight matrix (out x in). `round_fn(values, scale, bits)` replaces the grid
    rounding (tests use the identity to check that the transforms invert exactly)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be from 1 to 8, got {bits}")
    if not 0 <= seed <= _MAX_SEED:
        raise ValueError(f"seed must be in [0, 2^63), got {seed}")
    rows, columns = weight.shape
    pre = preprocess(weight, hessian, seed, rescale=rescale)
    W = pre.weight.to(torch.float32)
    H = pre.hessian.to(torch.float32)
    scale = grid_scale(W, range_factor)
    rounding = round_fn or round_to_grid
    factor = inverse_hessian_cholesky(H, dampening_frac)

    def quantize_block(_block: BlockContext) -> ColumnQuantizer:
        return lambda _j, column: rounding(column, scale, bits)

    rotated = gptq_quantize(W, H, quantize_block, block_size=block_size, compensate=compensate, factor=factor)
    restored = unrotate(rotated.to(torch.float64), pre.u, pre.v) / pre.rescale.unsqueeze(0)
    storage = bits * rows * columns + FP16_BITS + FP16_BITS * columns + SEED_BITS
    stats = {"seed": seed, "scale": scale, "range_factor": range_factor, "u_transform": pre.u.kind,
             "v_transform": pre.v.kind, "u_factors": [pre.u.left.shape[0], pre.u.right.shape[0]],
             "v_factors": [pre.v.left.shape[0], pre.v.right.shape[0]], "damping": factor.damping,
             "rescaled": rescale, "compensated": compensate}
    return QuantResult(weight=restored.to(dtype=weight.dtype), effective_bits=storage / (rows * columns),
                       paper_bits=float(bits), stats=stats)


class SeededQuantizer:
    """quantize_weight with the options bound and a fresh seed per linear, in the order the layers
    come: seed i is drawn from a generator seeded with the recipe's seed, so a build is reproducible
    and each linear's U and V are its own. `seeds` records them (the manifest publishes them by name)."""

    def __init__(self, seed: int = 0, **options):
        self._generator = torch.Generator().manual_seed(seed)
        self.options = options
        self.seeds: list[int] = []

    def __call__(self, weight: Tensor, hessian: Tensor) -> QuantResult:
        seed = int(torch.randint(0, _MAX_SEED, (1,), generator=self._generator))
        self.seeds.append(seed)
        return quantize_weight(weight, hessian, seed=seed, **self.options)
