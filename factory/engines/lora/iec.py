"""Information Elastic Connection (IEC) of IR-QLoRA (Qin et al. 2024, "Accurate LoRA-Finetuning
Quantization of LLMs via Information Retention", ICML 2024, arXiv:2402.05445, Sec. 3.3): a LoRA
adapter with two parameter-free connections, each scaled by one learnable scalar. Written from the
paper; no code of the official repository (which has no license) is used.

LoRA (Hu et al. 2021) on a frozen layer y = W x + b, rank r, scaling s = alpha / r:

    y = W x + b + s * B A x          A: r x in (Kaiming-uniform init), B: out x r (zeros)

IEC feeds the input around A and A's output around B:

    u = A x + beta1 * G x            G x = (r / in) * sum_{c < in/r} x[c*r : (c+1)*r]   (in -> r)
    y = W x + b + s * (B u + beta2 * R u)     R u = [u, u, ..., u]  (out/r copies)    (r -> out)

G averages the in/r consecutive chunks of length r of x; R tiles u to the output width, so that
LoRA's low-rank path always carries a view of the original input. When r does not divide the
width, the last chunk is partial: G divides each position by the number of chunks that reach it,
and R truncates its last copy.

Merging: G and R are linear maps (matrices G[j, i] = 1/n_j for i = j mod r, R[o, j] = 1 for
o = j mod r), so with dropout off the adapted layer is exactly the linear layer

    W_eff = W + s * (B + beta2 R)(A + beta1 G)

which ``ElasticLoRALinear.merge()`` returns (and ``merge_elastic_lora`` swaps in for a whole model).
The scaling s multiplies the whole adapter path, elastic terms included (our reading; with
learnable betas it only rescales their step size), so the merge is one scaled product. In fp32 the
merge matches forward() up to float rounding; a bf16 base rounds W_eff to bf16.

Initial values of beta1, beta2 (our choice; ``beta_init`` changes it): 0, so that with B = 0 the
adapted layer equals the base layer at step 0, LoRA's own invariant (a nonzero beta2 would add
s * beta2 * R A x before any training). Gradients still reach both scalars:
dy/dbeta2 = s * R (A x + beta1 G x) is nonzero from the first step because A is random, and
dy/dbeta1 = s * (B + beta2 R) G x is zero at the first step (B = 0, beta2 = 0), exactly like
LoRA's A, and nonzero once the first update has moved B and beta2.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from factory.engines.lora.icq import DEFAULT_BLOCK, DEFAULT_LAMBDAS, icq_fake_quantize_

# The linear layers of a LLaMA decoder layer (attention and MLP), as peft names its targets.
LLAMA_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _chunk_counts(width: int, r: int, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    """n_j: how many length-r chunks of a width-wide vector reach position j (one more for j < width % r)."""
    if not 1 <= r <= width:
        raise ValueError(f"the elastic connections need 1 <= r <= width, got r={r} for width {width}")
    counts = torch.full((r,), width // r, dtype=dtype, device=device)
    counts[: width % r] += 1
    return counts


def group_mean(x: Tensor, r: int) -> Tensor:
    """G x: mean over the chunks x[c*r : (c+1)*r] of the last dimension, (..., in) -> (..., r)."""
    width = x.shape[-1]
    counts = _chunk_counts(width, r, x.dtype, x.device)
    chunks = -(-width // r)
    padded = nn.functional.pad(x, (0, chunks * r - width))
    return padded.reshape(*x.shape[:-1], chunks, r).sum(dim=-2) / counts


def repeat_to(u: Tensor, width: int) -> Tensor:
    """R u: the last dimension tiled to ``width`` (the last copy truncated), (..., r) -> (..., width)."""
    r = u.shape[-1]
    _chunk_counts(width, r, u.dtype, u.device)  # validates r <= width
    return u.repeat(*([1] * (u.dim() - 1)), -(-width // r))[..., :width]


def group_mean_matrix(in_features: int, r: int, dtype: torch.dtype = torch.float32,
                      device: torch.device | str | None = None) -> Tensor:
    """The matrix G (r x in) with G x == group_mean(x, r): G[j, i] = 1 / n_j where i = j mod r."""
    counts = _chunk_counts(in_features, r, dtype, device)
    columns = torch.arange(in_features, device=device)
    matrix = torch.zeros(r, in_features, dtype=dtype, device=device)
    matrix[columns % r, columns] = 1 / counts[columns % r]
    return matrix


def repeat_matrix(r: int, out_features: int, dtype: torch.dtype = torch.float32,
                  device: torch.device | str | None = None) -> Tensor:
    """The matrix R (out x r) with R u == repeat_to(u, out): R[o, j] = 1 where o = j mod r."""
    _chunk_counts(out_features, r, dtype, device)
    rows = torch.arange(out_features, device=device)
    matrix = torch.zeros(out_features, r, dtype=dtype, device=device)
    matrix[rows, rows % r] = 1
    return matrix


class ElasticLoRALinear(nn.Module):
    """A frozen nn.Linear plus a LoRA adapter with IR-QLoRA's elastic connections (module docstring).

    Trainable: ``lora_A`` (r x in), ``lora_B`` (out x r), ``beta1`` and ``beta2`` (0-dim). The base
    layer can be any dense nn.Linear, e.g. one whose weight ``icq_fake_quantize_`` replaced.
    """

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0, *,
                 beta_init: tuple[float, float] = (0.0, 0.0), adapter_dtype: torch.dtype = torch.float32):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"ElasticLoRALinear wraps a dense nn.Linear, got {type(base).__name__}")
        if not base.weight.is_floating_point() or tuple(base.weight.shape) != (base.out_features, base.in_features):
            # e.g. bitsandbytes' Linear4bit, an nn.Linear whose weight is packed: merge() would be wrong
            raise TypeError(f"{type(base).__name__} holds a packed weight ({base.weight.dtype}, "
                            f"{tuple(base.weight.shape)}); dequantize it into a dense nn.Linear first")
        if not 1 <= r <= min(base.in_features, base.out_features):
            raise ValueError(f"rank r={r} must be within 1..min(in, out) = "
                             f"{min(base.in_features, base.out_features)} for the elastic connections")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.base = base
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        self.r = r
        self.alpha = alpha
        self.scaling = alpha / r
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, dtype=adapter_dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, dtype=adapter_dtype, device=device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # LoRA's (and peft's) default
        self.beta1 = nn.Parameter(torch.tensor(float(beta_init[0]), dtype=adapter_dtype, device=device))
        self.beta2 = nn.Parameter(torch.tensor(float(beta_init[1]), dtype=adapter_dtype, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def adapter_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B, self.beta1, self.beta2]

    def adapter_output(self, x: Tensor) -> Tensor:
        """s * (B u + beta2 R u) with u = A x + beta1 G x, in the adapter's dtype."""
        x = self.dropout(x.to(self.lora_A.dtype))
        u = nn.functional.linear(x, self.lora_A) + self.beta1 * group_mean(x, self.r)
        return self.scaling * (nn.functional.linear(u, self.lora_B) + self.beta2 * repeat_to(u, self.out_features))

    def forward(self, x: Tensor) -> Tensor:
        out = self.base(x)
        return out + self.adapter_output(x).to(out.dtype)

    @torch.no_grad()
    def delta_weight(self) -> Tensor:
        """s * (B + beta2 R)(A + beta1 G): the adapter as an (out x in) matrix, in the adapter's dtype."""
        dtype, device = self.lora_A.dtype, self.lora_A.device
        a_elastic = self.lora_A + self.beta1 * group_mean_matrix(self.in_features, self.r, dtype, device)
        b_elastic = self.lora_B + self.beta2 * repeat_matrix(self.r, self.out_features, dtype, device)
        return self.scaling * (b_elastic @ a_elastic)

    @torch.no_grad()
    def merge(self) -> Tensor:
        """W_eff = W + s * (B + beta2 R)(A + beta1 G), in the base weight's dtype.

        Exact: with dropout off (eval mode) forward(x) == x @ merge().T + bias, because both
        elastic connections are linear maps.
        """
        weight = self.base.weight
        return (weight.to(self.lora_A.dtype) + self.delta_weight()).to(weight.dtype)

    @torch.no_grad()
    def merged_linear(self) -> nn.Linear:
        """A plain nn.Linear carrying ``merge()`` and the base bias."""
        base = self.base
        merged = nn.Linear(self.in_features, self.out_features, bias=base.bias is not None,
                           device=base.weight.device, dtype=base.weight.dtype)
        merged.weight.copy_(self.merge())
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        merged.requires_grad_(False)
        return merged

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, elastic connections: group-mean (A) and repeat (B)"


def _replace_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def apply_elastic_lora(model: nn.Module, target_modules: Iterable[str] = LLAMA_TARGET_MODULES, r: int = 8,
                       alpha: float = 16.0, dropout: float = 0.0, *, quantize_base: bool = False,
                       block: int = DEFAULT_BLOCK, lambdas: Iterable[float] = DEFAULT_LAMBDAS,
                       beta_init: tuple[float, float] = (0.0, 0.0)) -> list[nn.Parameter]:
    """Wrap every nn.Linear whose last name component is in ``target_modules`` in ElasticLoRALinear.

    Freezes every parameter of the model first, so the returned adapter parameters (4 per wrapped
    layer) are all that trains. ``quantize_base=True`` first replaces each targeted weight with its
    ICQ-dequantized values (IR-QLoRA's frozen base, held dequantized: see ``icq_fake_quantize_``).
    """
    targets = set(target_modules)
    lambdas = tuple(lambdas)
    # A wrapped layer's own linear is named "<target>.base": a second call finds nothing to wrap.
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, nn.Linear) and name.rpartition(".")[2] in targets]
    if not found:
        raise ValueError(f"no unwrapped nn.Linear named one of {sorted(targets)} in {type(model).__name__}")
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    trainable: list[nn.Parameter] = []
    for name, linear in found:
        if quantize_base:
            icq_fake_quantize_(linear, block, lambdas)
        wrapper = ElasticLoRALinear(linear, r, alpha, dropout, beta_init=beta_init)
        _replace_submodule(model, name, wrapper)
        trainable.extend(wrapper.adapter_parameters())
    return trainable


def merge_elastic_lora(model: nn.Module) -> int:
    """Replace every ElasticLoRALinear in ``model`` by its merged nn.Linear; returns how many."""
    wrapped = [name for name, module in model.named_modules() if isinstance(module, ElasticLoRALinear)]
    for name in wrapped:
        _replace_submodule(model, name, model.get_submodule(name).merged_linear())
    return len(wrapped)
