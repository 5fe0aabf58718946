"""DB-LLM (Chen et al. 2024, "DB-LLM: Accurate Dual-Binarization for Efficient LLMs", arXiv 2402.11960,
ACL Findings 2024): Flexible Dual Binarization trained with Deviation-Aware Distillation from the
full-precision model. Written from descriptions of the paper, not from code: the repository the ACL
version names (github.com/Hon-Chen/DB-LLM) holds a one-line README and no code (its stored snapshot,
commit d3aeb16, read 2026-12-04).

What was read, 2026-12-04, through this project's stored-page search (only the opening of each page
comes back, so the paper's own Sec. 3-4 text, its equation numbers and its training schedule could not
be read; the section each piece belongs to is named by the paper's own split, FDB the "micro level",
DAD the "macro level", not by a number):

  [R]  themoonlight.io/review/db-llm-accurate-dual-binarization-for-efficient-llms (a review that
       quotes FDB's formulas), and its Chinese version (themoonlight.io/zh/review/...);
  [S]  study.space/p/DB-LLM:_Accurate_Dual-Binarization_for_Efficient_LLMs (a summary);
  [T]  sciencestack.ai/paper/2402.11960 (its TL;DR and the abstract);
  [A]  the abstract (arXiv, aclanthology.org/2024.findings-acl.516).

Flexible Dual Binarization (FDB, the micro level; [R]). A 2-bit weight is the sum of two binary planes
with their own learnable scales, one pair per row x group of `group_size` columns:

    w_hat = alpha1 * wb1 + alpha2 * wb2,      wb1, wb2 in {0, 1}                          [R]

so a row x group holds at most the four values {0, alpha2, alpha1, alpha1 + alpha2}. The planes are the
paper's thresholds, H the Heaviside step with H(x) = 1 for x >= 0 [R]:

    wb1 = H(w - (alpha1 + alpha2) / 2),      wb2 = H(-(w - alpha1 * wb1 - alpha2 / 2))   [R]

and the layer computes alpha1 (wb1 x) + alpha2 (wb2 x), which is w_hat x [R]. FDB starts from the INT2
weights, w_hat = s w_q = alpha1 wb1 + alpha2 wb2 [R, zh], with alpha1 = 2s and alpha2 = -s [R], in every
row x group: the values {-s, 0, s, 2s}, the thresholds -s/2, s/2, 3s/2, i.e. plain round-to-nearest on
that grid (`rtn_int2`; ties go the way H(0) = 1 sends them). Until 2026-12-04 this file mirrored the
grid (alpha1 = -2s, alpha2 = s) in groups whose largest magnitude is negative and wrote the planes with
the signs of the alphas; neither is in [R], both are gone: the thresholds above are applied as written.

Ours, not found in what was read: how s is found. Here s is searched per row x group for the least
squared rounding error (`int2_grid`: SCALE_CANDIDATES steps from the one whose grid reaches both tails,
max(max w / 2, -min w), down to 0.2 of it). Also ours: the straight-through estimator's form
(dw_hat/dw = 1, unclipped; [R] says only that an STE carries the gradient past the rounding), and that
the latent full-precision weights train at all (`train_weights`, the default; false trains alpha1,
alpha2 only). alpha1 and alpha2 get their gradient through w_hat with the planes held constant.

Deviation-Aware Distillation (DAD, the macro level; [A], [S], [T]). After quantization the model's
predictions deviate on ambiguous samples [A]; DAD "uses the teacher-student entropy as an indicator of
ambiguity and reweights the distillation loss to prioritize these samples" [S] ("entropy-based
reweighting", [T]). The equation itself could not be read, so the weight implemented is ours, stated:

    loss = sum_t w_t KL(p_T,t || p_S,t) / sum_t w_t,     w_t = (H_T,t H_S,t / log(V)^2) ^ (gamma / 2)

with H the entropy of each model's next-token distribution over the vocabulary V (normalised to [0, 1]
by log V), the weights held constant in the backward pass, and tokens as the "samples" (also ours).
gamma = 0 (or any constant weight) is plain KD, the mean token KL; gamma > 0 leans on the tokens both
models find ambiguous. The forward KL(teacher || student) is ours too.

Data (`generated`). The method is data-free [S], [T]: it trains on no dataset. How its text is made was
not in what was read; here (ours) sequences are sampled from the full-precision model itself the way
LLM-QAT (Liu et al. 2023) makes them: a first token drawn uniformly from the vocabulary (special tokens
excluded), a few greedy tokens, then sampling from the model's distribution.

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

from factory.engines.lowbit import decoder_layers

SCALE_CANDIDATES = 20  # int2 steps searched, from the one that reaches both tails down to 0.2 of it (ours)


# ---------------------------------------------------------------- the int2 grid and FDB


def _groups(weight: Tensor, group_size: int) -> Tensor:
    rows, cols = weight.shape
    if cols % group_size:
        raise ValueError(f"group size {group_size} does not divide the {cols} input columns")
    return weight.reshape(rows, cols // group_size, group_size)


def fdb_planes(groups: Tensor, alpha1: Tensor, alpha2: Tensor) -> tuple[Tensor, Tensor]:
    """The paper's planes as written ([R] in the module doc), H(x) = 1 for x >= 0, as 0/1 floats:
    wb1 = H(w - (alpha1 + alpha2)/2), wb2 = H(-(w - alpha1 wb1 - alpha2/2)); alphas broadcast over the last dim."""
    b1 = (groups - (alpha1 + alpha2) / 2 >= 0).to(groups.dtype)
    b2 = (-(groups - alpha1 * b1 - alpha2 / 2) >= 0).to(groups.dtype)
    return b1, b2


def rtn_int2(weight: Tensor, step: Tensor, group_size: int) -> Tensor:
    """Round-to-nearest on the int2 grid {-1, 0, 1, 2} x step per row x group.

    Ties go the way the paper's Heaviside step (H(0) = 1) sends them: +-s/2 away from 0, 3s/2 to s."""
    s = step[..., None]
    x = _groups(weight, group_size)
    level = torch.where(x >= s / 2, torch.where(x - 2 * s <= -s / 2, 1.0, 2.0), torch.where(x <= -s / 2, -1.0, 0.0))
    return (level * s).reshape(weight.shape)


def int2_grid(weight: Tensor, group_size: int) -> Tensor:
    """Per row x group: the int2 step s, searched for the least squared rounding error (ours; see the module doc)."""
    g = _groups(weight.float(), group_size)
    top, bottom = g.amax(dim=-1).clamp_min(0), (-g.amin(dim=-1)).clamp_min(0)
    reach = torch.maximum(top / 2, bottom).clamp_min(1e-8)  # 2s covers the largest weight, -s the smallest
    best_step, best_err = reach.clone(), torch.full_like(reach, float("inf"))
    for ratio in torch.linspace(1.0, 0.2, SCALE_CANDIDATES).tolist():
        step = reach * ratio
        err = (rtn_int2(weight.float(), step, group_size).reshape(g.shape) - g).pow(2).sum(dim=-1)
        better = err < best_err
        best_step, best_err = torch.where(better, step, best_step), torch.where(better, err, best_err)
    return best_step


class FlexibleDualBinarization(nn.Module):
    """A weight parametrization: latent weight -> alpha1 * wb1 + alpha2 * wb2 per row x group (see the module doc)."""

    def __init__(self, weight: Tensor, group_size: int, train_weights: bool = True, dtype: torch.dtype | None = None):
        super().__init__()
        step = int2_grid(weight.detach(), group_size)
        self.alpha1 = nn.Parameter(2 * step)  # [R]: alpha1 = 2s, alpha2 = -s
        self.alpha2 = nn.Parameter(-step)
        self.group_size = group_size
        self.train_weights = train_weights
        self.dtype = dtype or weight.dtype  # what the layer computes in (the latent weight may be float32)

    @torch.no_grad()
    def planes(self, weight: Tensor) -> tuple[Tensor, Tensor]:
        """The two binary planes wb1, wb2 (as 0/1 floats, row x group x column)."""
        g = _groups(weight.float(), self.group_size)
        return fdb_planes(g, self.alpha1.detach()[..., None], self.alpha2.detach()[..., None])

    def forward(self, weight: Tensor) -> Tensor:
        b1, b2 = self.planes(weight)
        q = self.alpha1[..., None] * b1 + self.alpha2[..., None] * b2
        q = q.reshape(weight.shape)
        if self.train_weights:  # straight-through: the value is q, the gradient reaches the latent weight
            q = q + (weight.float() - weight.float().detach())
        return q.to(self.dtype)


def target_linears(model: nn.Module, skip: Sequence[str]) -> dict[str, nn.Linear]:
    """Every nn.Linear of the text decoder's layers whose full name matches no `skip` pattern."""
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
