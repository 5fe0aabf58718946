"""DB-LLM on tiny random Llamas: Flexible Dual Binarization starts as int2 round-to-nearest on its own grid,
training lowers the distillation loss and keeps at most the four values {0, alpha2, alpha1, alpha1 + alpha2}
per row x group, Deviation-Aware Distillation with constant weights is plain KD, and the build goes
through the factory (simulated, reloads in plain transformers, bad options one line)."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from conftest import local_model_recipe, reload_in_fresh_process
from factory.engines.lowbit import dbllm
from factory.pipeline.build import Build
from factory.recipe import load_recipe
from factory.stages.artifact import quantize

GROUP = 32


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def test_step_zero_is_int2_rtn_of_the_same_grid():
    torch.manual_seed(0)
    w = torch.randn(16, 4 * GROUP) * 0.02
    w[3] -= 0.05  # a row with a longer negative tail: the same grid, alpha1 = 2s, alpha2 = -s (no mirroring)
    fdb = dbllm.FlexibleDualBinarization(w, GROUP)
    step = dbllm.int2_grid(w, GROUP)
    assert (step > 0).all()
    assert torch.equal(fdb(w), dbllm.rtn_int2(w, step, GROUP))
    # the grid is {-s, 0, s, 2s} in every row x group: alpha1 = 2s, alpha2 = -s (the paper's initialisation)
    assert torch.allclose(fdb.alpha1, 2 * step) and torch.allclose(fdb.alpha2, -step)
    assert set(torch.unique(fdb(w)[3].reshape(4, GROUP)[0] / step[3, 0]).round().tolist()) <= {-1.0, 0.0, 1.0, 2.0}
    # round to nearest: no weight is farther from its value than half a step (clipped tails aside)
    err = (fdb(w) - w).reshape(16, 4, GROUP).abs()
    g = w.reshape(16, 4, GROUP)
    inside = (g >= -1.5 * step[..., None]) & (g <= 2.5 * step[..., None])
    assert (err[inside] <= step[..., None].expand_as(err)[inside] / 2 + 1e-7).all()
    # the step is the least-error one searched: no worse than the step whose grid reaches both tails
    reach = torch.maximum(g.amax(-1) / 2, -g.amin(-1))
    def sq_err(s):
        return (dbllm.rtn_int2(w, s, GROUP) - w).reshape(16, 4, GROUP).pow(2).sum(-1)
    assert (sq_err(step) <= sq_err(reach) + 1e-12).all()


def test_planes_are_the_papers_heaviside_thresholds():
    """wb1 = H(w - (alpha1 + alpha2)/2), wb2 = H(-(w - alpha1 wb1 - alpha2/2)), H(0) = 1, written out here
    weight by weight, against the module's planes, also for trained (moved) alphas and at the ties."""
    def heaviside(x):
        return 1.0 if x >= 0 else 0.0

    torch.manual_seed(3)
    w = torch.randn(4, 2 * GROUP) * 0.02
    fdb = dbllm.FlexibleDualBinarization(w, GROUP)
    s = 2.0 ** -6  # a step whose ties are exact in float32
    w[0, :6] = torch.tensor([-s / 2, s / 2, 1.5 * s, -3 * s, 0.0, 5 * s])  # the three ties and both far tails
    with torch.no_grad():
        fdb.alpha1[0, 0], fdb.alpha2[0, 0] = 2 * s, -s  # the int2 start alpha1 = 2s, alpha2 = -s
        fdb.alpha1[1] *= 1.3  # as after training: the scales have moved off the int2 grid
        fdb.alpha2[1] *= 0.6
    b1, b2 = fdb.planes(w)
    q = fdb(w)
    for r in range(w.shape[0]):
        for c in range(w.shape[1]):
            a1, a2 = fdb.alpha1[r, c // GROUP].item(), fdb.alpha2[r, c // GROUP].item()
            x = float(w[r, c])
            wb1 = heaviside(x - (a1 + a2) / 2)
            wb2 = heaviside(-(x - a1 * wb1 - a2 / 2))
            assert (b1[r, c // GROUP, c % GROUP].item(), b2[r, c // GROUP, c % GROUP].item()) == (wb1, wb2), (r, c)
            assert math.isclose(q[r, c].item(), a1 * wb1 + a2 * wb2, rel_tol=1e-6, abs_tol=1e-9)
    # at the int2 start the ties land as round-half-away-from-zero below 0, and 3s/2 goes to s
    assert torch.allclose(q[0, :6], torch.tensor([-s, s, s, -s, 0.0, 2 * s]), atol=1e-9)


def test_model_at_step_zero_equals_int2_rtn(tiny_llama):
    model = _load(tiny_llama)
    base = {n: m.weight.detach().clone() for n, m in dbllm.target_linears(model, ["lm_head"]).items()}
    fdbs = dbllm.attach(model, GROUP)
    assert len(fdbs) == 2 * 7
    dbllm.detach(model, fdbs)
    modules = dict(model.named_modules())
    for name, w in base.items():
        step = dbllm.int2_grid(w, GROUP)
        assert torch.equal(modules[name].weight, dbllm.rtn_int2(w, step, GROUP)), name


def test_dad_with_constant_weights_is_plain_kd():
    torch.manual_seed(1)
    student, teacher = torch.randn(2, 7, 50), torch.randn(2, 7, 50) * 3
    kd = dbllm.kd_loss(student, teacher)
    # KD by hand: the mean over tokens of sum_v p_T (log p_T - log p_S)
    p_t = teacher.softmax(-1)
    by_hand = (p_t * (p_t.log() - student.log_softmax(-1))).sum(-1).mean()
    assert torch.allclose(kd, by_hand, atol=1e-6)
    assert torch.allclose(dbllm.dad_loss(student, teacher, gamma=0.0), kd, atol=1e-6)
    constant = dbllm.dad_loss(student, teacher, weight_fn=lambda h_t, h_s: torch.full_like(h_t, 0.37))
    assert torch.allclose(constant, kd, atol=1e-6)
    # gradients agree too (the weights are constants in the backward pass)
    s1, s2 = student.clone().requires_grad_(), student.clone().requires_grad_()
    dbllm.kd_loss(s1, teacher).backward()
    dbllm.dad_loss(s2, teacher, gamma=0.0).backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-7)
    # gamma > 0 leans on the tokens where both models are uncertain: a different average
    assert not torch.allclose(dbllm.dad_loss(student, teacher, gamma=2.0), kd, atol=1e-4)
    weights = dbllm.dad_weights(torch.tensor([0.1, 2.0]), torch.tensor([0.1, 2.0]), 50, 1.0)
    assert weights[1] > weights[0] and math.isclose(weights[1].item(), 2.0 / math.log(50), rel_tol=1e-6)


def test_training_lowers_the_loss_and_keeps_four_values(tiny_llama):
    teacher, student = _load(tiny_llama).eval(), _load(tiny_llama)
    for p in teacher.parameters():
        p.requires_grad_(False)
    sequences = dbllm.generate_sequences(teacher, 8, 32, seed=0, vocab_size=teacher.config.vocab_size,
                                         special_ids=[0, 1, 2, 3], greedy_tokens=2, batch_size=4)
    assert len(sequences) == 8 and all(len(s) == 32 for s in sequences)
    assert not any(s[0] in (0, 1, 2, 3) for s in sequences)
    again = dbllm.generate_sequences(teacher, 8, 32, seed=0, vocab_size=teacher.config.vocab_size,
                                     special_ids=[0, 1, 2, 3], greedy_tokens=2, batch_size=4)
    assert again == sequences  # seeded
    fdbs = dbllm.attach(student, GROUP)
    start = {n: (f.alpha1.detach().clone(), f.alpha2.detach().clone()) for n, f in fdbs.items()}
    report = dbllm.train(student, teacher, fdbs, sequences, steps=12, batch_size=4, lr_weights=1e-3,
                         lr_scales=1e-3, gamma=1.0, seed=0)
    assert len(report.losses) == 12
    assert sum(report.losses[-3:]) / 3 < 0.8 * sum(report.losses[:3]) / 3, report.losses
    assert any(not torch.equal(f.alpha1, start[n][0]) for n, f in fdbs.items())  # the scales learned
    alphas = {n: (f.alpha1.detach().clone(), f.alpha2.detach().clone()) for n, f in fdbs.items()}
    dbllm.detach(student, fdbs)
    modules = dict(student.named_modules())
    for name, (a1, a2) in alphas.items():
        w = modules[name].weight.detach()
        groups = w.reshape(w.shape[0], -1, GROUP)
        allowed = torch.stack([torch.zeros_like(a1), a2, a1, a1 + a2], dim=-1)  # rows x groups x 4
        for r in range(groups.shape[0]):
            for g in range(groups.shape[1]):
                values = torch.unique(groups[r, g])
                assert values.numel() <= 4
                assert torch.isin(values, allowed[r, g]).all(), (name, r, g)


def test_build_through_the_factory(tmp_path, tiny_llama):
    body = ("method: db-llm\nweights: {bits: 2, group_size: 32}\n"
            "db-llm: {steps: 3, samples: 4, seq_len: 16, batch_size: 2, learning_rate_weights: 0.001}")
    recipe = load_recipe(local_model_recipe(tmp_path, "db-llm-tiny", body, tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path)
    assert build.settings.calibration is None  # generated data: the calibration block is not read
    note = build.method.card_facts(build.settings).data_note  # the card's Training row
    assert "generated by the base model" in note and "Few steps (3)" in note
    result = quantize(build)
    record = result.record
    assert record.format == "simulated" and record.engine == "factory.engines.lowbit.dbllm"
    assert record.quantized_linears == 14 and record.paper_bits == 2.0 and record.effective_bits == 3.0
    assert "method_code" in build.fingerprint_inputs
    weights = load_file(str(result.output / "model.safetensors"))
    base = load_file(str(tiny_llama / "model.safetensors"))
    assert torch.equal(weights["lm_head.weight"], base["lm_head.weight"])
    down = weights["model.layers.1.mlp.down_proj.weight"]
    assert down.dtype == base["model.layers.1.mlp.down_proj.weight"].dtype
    assert max(torch.unique(g).numel() for g in down.float().reshape(-1, GROUP)) <= 4
    reloaded = reload_in_fresh_process("causal-lm", result.output)
    assert reloaded["finite"] and not reloaded["factory_imported"] and reloaded["quant_method"] is None


def test_calibration_data_is_the_labelled_alternative(tmp_path, tiny_llama):
    body = ("method: db-llm\nweights: {bits: 2, group_size: 32}\n"
            "calibration: {source: demo, samples: 2, seq_len: 16}\n"
            "db-llm: {steps: 2, data: calibration, batch_size: 2}")
    recipe = load_recipe(local_model_recipe(tmp_path, "db-llm-cal", body, tiny_llama))
    build = Build(recipe, recipe.models[0], tmp_path)
    assert build.settings.calibration is not None
    assert build.method.card_facts(build.settings).data_note.count("calibration text") == 1
    stage = quantize(build).record
    assert stage.training["data"] == "calibration" and stage.training["sequences"] == 2
