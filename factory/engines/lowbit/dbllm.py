"""DB-LLM (Chen et al. 2024, arXiv 2402.11960): Flexible Dual Binarization trained with Deviation-Aware
Distillation from the full-precision model. No code was released; this is written from the paper's
description (Sec. 3), and where its exact text could not be read here, the choice made is said below.

Flexible Dual Binarization (FDB, Sec. 3.2). A 2-bit weight is the sum of two binary planes with their
own learnable scales, one pair per row x group of `group_size` columns:

    w_hat = alpha1 * b1 + alpha2 * b2,      b1, b2 in {0, 1}

so a row x group holds at most the four values {0, alpha2, alpha1, alpha1 + alpha2}. The planes follow
the paper's thresholds (H the Heaviside step, H(x) = 1 for x >= 0):

    b1 = H(w - (alpha1 + alpha2) / 2),      b2 = H(-(w - alpha1 * b1 - alpha2 / 2))

written here sign-robustly, b1 = H(sign(alpha1) (w - (alpha1 + alpha2)/2)) and b2 = H(sign(alpha2)
(w - alpha1 b1 - alpha2/2)), which is the paper's rule for its alpha1 > 0 > alpha2 and stays the same
rule when a group's grid is mirrored. Initialisation is the int2 grid: with an int2 step s,
alpha1 = 2s and alpha2 = -s give {-s, 0, s, 2s} and the thresholds -s/2, s/2, 3s/2, i.e. plain
round-to-nearest on that grid (`rtn_int2`). Two choices of ours, not from the paper: s is searched per
row x group to minimise the squared rounding error (int2 RTN with an MSE clip), and the grid is mirrored
(alpha1 = -2s, alpha2 = s) in groups whose largest magnitude is negative, so that the lone far level 2s
lies on the longer tail. Training updates alpha1 and alpha2 through w_hat, and the latent full-precision
weights through the straight-through estimator (dw_hat/dw = 1), as quantization-aware training does.

Deviation-Aware Distillation (DAD, Sec. 3.3). The student (the FDB model) is distilled from the
full-precision teacher token by token, tokens re-weighted by how uncertain the two models are: the paper
up-weights ambiguous tokens, where the teacher's and the quantized student's predictions are uncertain
and deviate. Its exact equation could not be read from this project's machines, so the weight
implemented is stated here, and it is ours:

    loss = sum_t w_t KL(p_T,t || p_S,t) / sum_t w_t,     w_t = (H_T,t H_S,t / log(V)^2) ^ (gamma / 2)

with H the entropy of each model's next-token distribution over the vocabulary V (normalised to [0, 1]
by log V) and the weights held constant in the backward pass. gamma = 0 (or any constant weight) is plain
KD, the mean token KL; gamma > 0 leans on the tokens both models find ambiguous.

Data (`generated`, the paper's data-free setting): sequences sampled from the full-precision model
itself, the way LLM-QAT (Liu et al. 2023) makes them: a first token drawn uniformly from the vocabulary
(special tokens excluded), a few greedy tokens, then sampling from the model's distribution.

Everything is simulated quantization: the trained w_hat are written back as full-size weights.
"""

from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

SCALE_CANDIDATES = 20  # clip ratios searched for the int2 step, from 1.0 down to 0.3 of the full range


# ---------------------------------------------------------------- the int2 grid and FDB


def _groups(weight: Tensor, group_size: int) -> Tensor:
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"group size {group_size} does not divide the {cols} input columns")
    return weight.reshape(rows, cols // group_size, group_size)


def rtn_int2(weight: Tensor, step: Tensor, mirror: Tensor, group_size: int) -> Tensor:
    """Round-to-nearest on the int2 grid {-1, 0, 1, 2} x step (mirrored: x -step) per row x group.

    Ties go the way the paper's Heaviside step (H(0) = 1) sends them: +-s/2 away from 0, 3s/2 to s."""
    sign = torch.where(mirror, -1.0, 1.0).to(weight.dtype)[..., None]
    s = step[..., None]
    x = _groups(weight, group_size) * sign  # the weight in the grid's orientation
    level = torch.where(x >= s / 2, torch.where(x - 2 * s <= -s / 2, 1.0, 2.0), torch.where(x <= -s / 2, -1.0, 0.0))
    return (level * s * sign).reshape(weight.shape)


def int2_grid(weight: Tensor, group_size: int) -> tuple[Tensor, Tensor]:
    """Per row x group: the int2 step s (MSE-searched clip of the range) and whether the grid is mirrored."""
    g = _groups(weight.float(), group_size)
    top, bottom = g.amax(dim=-1), -g.amin(dim=-1)
    mirror = bottom > top  # the far level 2s goes to the longer tail
    full = torch.maximum(top, bottom).clamp_min(1e-8) / 2
    best_step, best_err = full.clone(), torch.full_like(full, float("inf"))
    for ratio in torch.linspace(1.0, 0.3, SCALE_CANDIDATES).tolist():
        step = full * ratio
        err = (rtn_int2(weight.float(), step, mirror, group_size).reshape(g.shape) - g).pow(2).sum(dim=-1)
        better = err < best_err
        best_step, best_err = torch.where(better, step, best_step), torch.where(better, err, best_err)
    return best_step, mirror


class FlexibleDualBinarization(nn.Module):
    """A weight parametrization: latent weight -> alpha1 * b1 + alpha2 * b2 per row x group (see the module doc)."""

    def __init__(self, weight: Tensor, group_size: int, train_weights: bool = True, dtype: torch.dtype | None = None):
        super().__init__()
        step, mirror = int2_grid(weight.detach(), group_size)
        sign = torch.where(mirror, -1.0, 1.0)
        self.alpha1 = nn.Parameter(2 * step * sign)
        self.alpha2 = nn.Parameter(-step * sign)
        self.group_size = group_size
        self.train_weights = train_weights
        self.dtype = dtype or weight.dtype  # what the layer computes in (the latent weight may be float32)

    @torch.no_grad()
    def planes(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The two binary planes b1, b2 (as 0/1 floats, row x group x column)."""
        g = _groups(weight.float(), self.group_size)
        a1, a2 = self.alpha1.detach()[..., None], self.alpha2.detach()[..., None]
        b1 = (torch.sign(a1) * (g - (a1 + a2) / 2) >= 0).float()
        b2 = (torch.sign(a2) * (g - a1 * b1 - a2 / 2) >= 0).float()
        return b1, b2

    def forward(self, weight: Tensor) -> Tensor:
        b1, b2 = self.planes(weight)
        q = self.alpha1[..., None] * b1 + self.alpha2[..., None] * b2
        q = q.reshape(weight.shape)
        if self.train_weights:  # straight-through: the value is q, the gradient reaches the latent weight
            q = q + (weight.float() - weight.float().detach())
        return q.to(self.dtype)


def target_linears(model: nn.Module, skip: Sequence[str]) -> dict[str, nn.Linear]:
    """Every nn.Linear of the text decoder's layers whose full name matches no `skip` pattern."""
    from factory.engines.lowbit import decoder_layers

    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    out = {}
    for name, module in layers.named_modules():
        full = f"{prefix}.{name}"
        if isinstance(module, nn.Linear) and not any(re.search(p, full) for p in skip):
            out[full] = module
    return out


def attach(model: nn.Module, group_size: int, skip: Sequence[str] = ("lm_head",),
           train_weights: bool = True) -> dict[str, FlexibleDualBinarization]:
    """Freeze the model and put FDB on every decoder linear; returns name -> parametrization.

    A trained latent weight is held in float32 (Adam's small steps vanish in bf16); the layer still
    computes in the model's dtype."""
    for p in model.parameters():
        p.requires_grad_(False)
    fdbs = {}
    for name, linear in target_linears(model, skip).items():
        dtype = linear.weight.dtype
        if train_weights:
            linear.weight = nn.Parameter(linear.weight.detach().float(), requires_grad=True)
        fdb = FlexibleDualBinarization(linear.weight, group_size, train_weights, dtype).to(linear.weight.device)
        parametrize.register_parametrization(linear, "weight", fdb, unsafe=True)  # float32 latent, model-dtype value
        fdbs[name] = fdb
    return fdbs


@torch.no_grad()
def detach(model: nn.Module, fdbs: dict[str, FlexibleDualBinarization]) -> None:
    """Write w_hat back as the plain weight of every FDB linear (simulated quantization) in its dtype."""
    modules = dict(model.named_modules())
    for name, fdb in fdbs.items():
        linear = modules[name]
        value = linear.weight.detach().to(fdb.dtype)
        parametrize.remove_parametrizations(linear, "weight", leave_parametrized=False)
        linear.weight = nn.Parameter(value, requires_grad=False)


def effective_bits(group_size: int) -> float:
    """Two bit planes per weight plus two 16-bit scales per row x group."""
    return 2 + 2 * 16 / group_size


# ---------------------------------------------------------------- Deviation-Aware Distillation


def _entropy(log_probs: Tensor) -> Tensor:
    return -(log_probs.exp() * log_probs).sum(dim=-1)


def token_kl(student_logits: Tensor, teacher_logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per token: KL(teacher || student), and both entropies (all in nats, the last dim reduced)."""
    log_s = F.log_softmax(student_logits.float(), dim=-1)
    log_t = F.log_softmax(teacher_logits.float(), dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=-1)
    return kl, _entropy(log_t), _entropy(log_s.detach())


WeightFn = Callable[[Tensor, Tensor], Tensor]  # (teacher entropy, student entropy) per token -> weight


def dad_weights(teacher_entropy: Tensor, student_entropy: Tensor, vocab_size: int, gamma: float) -> Tensor:
    """w_t = (H_T H_S / log(V)^2) ^ (gamma / 2): the geometric mean of the normalised entropies, to gamma."""
    norm = math.log(vocab_size)
    product = (teacher_entropy / norm).clamp_min(0) * (student_entropy / norm).clamp_min(0)
    return product.clamp_min(1e-12).pow(gamma / 2)


def dad_loss(student_logits: Tensor, teacher_logits: Tensor, gamma: float = 1.0,
             mask: Tensor | None = None, weight_fn: WeightFn | None = None) -> Tensor:
    """Deviation-Aware Distillation: the token KLs averaged with (constant) entropy weights.

    weight_fn replaces the entropy weight; a constant one (or gamma = 0) gives plain KD, the mean KL."""
    kl, h_t, h_s = token_kl(student_logits, teacher_logits)
    with torch.no_grad():
        w = weight_fn(h_t, h_s) if weight_fn is not None else dad_weights(h_t, h_s, student_logits.shape[-1], gamma)
        w = w.expand_as(kl).float()
        if mask is not None:
            w = w * mask.float()
    return (w * kl).sum() / w.sum().clamp_min(1e-12)


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor | None = None) -> Tensor:
    """Plain KD: the mean token KL(teacher || student)."""
    kl, _, _ = token_kl(student_logits, teacher_logits)
    if mask is None:
        return kl.mean()
    return (kl * mask).sum() / mask.sum()


# ---------------------------------------------------------------- data generated by the teacher


@torch.no_grad()
def generate_sequences(teacher: nn.Module, count: int, seq_len: int, seed: int, *, vocab_size: int,
                       special_ids: Sequence[int] = (), greedy_tokens: int = 4, batch_size: int = 8,
                       pad_token_id: int | None = None) -> list[list[int]]:
    """`count` sequences of `seq_len` tokens sampled from the teacher (LLM-QAT's recipe, see the module doc).

    Every sequence has exactly `seq_len` tokens (end-of-sequence tokens are not allowed to stop it)."""
    device = next(teacher.parameters()).device
    rng = random.Random(seed)
    allowed = [i for i in range(vocab_size) if i not in set(special_ids)]
    greedy = max(0, min(greedy_tokens, seq_len - 1))
    torch.manual_seed(seed)
    sequences: list[list[int]] = []
    teacher.eval()
    while len(sequences) < count:
        n = min(batch_size, count - len(sequences))
        ids = torch.tensor([[rng.choice(allowed)] for _ in range(n)], device=device)
        common = dict(pad_token_id=pad_token_id if pad_token_id is not None else 0, eos_token_id=None)
        if greedy:
            ids = teacher.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                   max_new_tokens=greedy, min_new_tokens=greedy, **common)
        rest = seq_len - ids.shape[1]
        if rest > 0:
            ids = teacher.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0, top_p=1.0,
                                   temperature=1.0, max_new_tokens=rest, min_new_tokens=rest, **common)
        sequences.extend(ids[:, :seq_len].tolist())
    return sequences


# ---------------------------------------------------------------- training


@dataclass
class TrainReport:
    losses: list[float] = field(default_factory=list)  # DAD loss per step
    kd_losses: list[float] = field(default_factory=list)  # plain KD (mean token KL) per step, for comparison
    seconds: float = 0.0
    tokens_per_step: int = 0


def train(student: nn.Module, teacher: nn.Module, fdbs: dict[str, FlexibleDualBinarization],
          sequences: Sequence[Sequence[int]], *, steps: int, batch_size: int, lr_weights: float, lr_scales: float,
          gamma: float, seed: int, log: Callable[[str], None] | None = None, log_every: int = 10) -> TrainReport:
    """AdamW on the FDB scales (and the latent weights) against the DAD loss, `steps` steps of
    `batch_size` sequences drawn in a seeded shuffled order (a new order each pass over the data)."""
    device = next(student.parameters()).device
    scales = [p for fdb in fdbs.values() for p in (fdb.alpha1, fdb.alpha2)]
    latent = [p for n, p in student.named_parameters() if p.requires_grad and "original" in n]
    groups = [{"params": scales, "lr": lr_scales}]
    if latent:
        groups.append({"params": latent, "lr": lr_weights})
    optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
    rng = random.Random(seed)
    order: list[int] = []
    report = TrainReport(tokens_per_step=batch_size * len(sequences[0]))
    teacher.eval()
    student.train()
    started = time.perf_counter()
    for step in range(steps):
        batch = []
        while len(batch) < batch_size:
            if not order:
                order = list(range(len(sequences)))
                rng.shuffle(order)
            batch.append(sequences[order.pop()])
        ids = torch.tensor(batch, device=device)
        with torch.no_grad():
            teacher_logits = teacher(input_ids=ids, use_cache=False).logits
        student_logits = student(input_ids=ids, use_cache=False).logits
        loss = dad_loss(student_logits, teacher_logits, gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            report.kd_losses.append(kd_loss(student_logits.detach(), teacher_logits).item())
        report.losses.append(loss.item())
        if log is not None and (step % log_every == 0 or step == steps - 1):
            log(f"db-llm step {step + 1}/{steps}: DAD loss {loss.item():.4f}, KD {report.kd_losses[-1]:.4f}")
        del teacher_logits, student_logits, loss
    report.seconds = time.perf_counter() - started
    student.eval()
    return report
