"""factory.engines.lowbit: PB-LLM, BiLLM and SliM-LLM on small random layers, and the sequential driver on a tiny Llama.

Everything runs on CPU in a few seconds: 64 x 256 weights (two 128-column blocks), inputs with
correlated channels (so that GPTQ's error compensation has something to work with) and a few
outlier channels, as LLM activations have.
"""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from factory.engines.lowbit import billm, pbllm, quantize_model_layers, slim_llm
from factory.engines.lowbit.hessian import (BlockContext, HessianCollector, gptq_quantize, inverse_hessian_cholesky,
                                            output_error)

ROWS, COLUMNS, TOKENS, BLOCK = 64, 256, 512, 128
OUTLIER_CHANNELS = [3, 50, 130, 200]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These matrices are tiny: on a shared 2-core machine, intra-op threads cost far more than they give."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_layer(seed: int = 0, rows: int = ROWS, columns: int = COLUMNS, tokens: int = TOKENS):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, columns, generator=generator) * 0.02
    mixing = torch.eye(columns) + torch.randn(columns, columns, generator=generator) / math.sqrt(columns)
    inputs = torch.randn(tokens, columns, generator=generator) @ mixing
    inputs[:, [c for c in OUTLIER_CHANNELS if c < columns]] *= 10
    return weight, inputs, 2 * inputs.T @ inputs / tokens


@pytest.fixture(scope="module")
def layer():
    return make_layer()


def output_norm(weight, quantized, inputs) -> float:
    """||(W - Wq) X^T||_F, the layer-output error."""
    return float(((weight - quantized) @ inputs.T).norm())


def minmax_rtn(weight, bits: int = 2, group: int = BLOCK):
    """Plain asymmetric min-max round-to-nearest per row and 128-column group (integer zero point)."""
    out = torch.empty_like(weight)
    levels = 2 ** bits - 1
    for start in range(0, weight.shape[1], group):
        w = weight[:, start:start + group]
        low = w.min(dim=1, keepdim=True).values.clamp(max=0)
        high = w.max(dim=1, keepdim=True).values.clamp(min=0)
        scale = (high - low) / levels
        zero = torch.round(-low / scale)
        out[:, start:start + group] = scale * (torch.clamp(torch.round(w / scale) + zero, 0, levels) - zero)
    return out


def distinct_per_row(values):
    return [len(torch.unique(row)) for row in values]


# --- shared machinery -------------------------------------------------------------------------------

def test_hessian_collector_running_mean_matches_formula():
    linear = torch.nn.Linear(16, 8)
    batches = [torch.randn(2, 5, 16), torch.randn(3, 7, 16), torch.randn(1, 1, 16)]
    with HessianCollector(16).attach(linear) as collector:
        for batch in batches:
            linear(batch)
    linear(torch.randn(4, 16))  # after detach: not collected
    tokens = torch.cat([batch.reshape(-1, 16) for batch in batches])
    assert collector.num_tokens == tokens.shape[0] == 32
    assert collector.hessian.dtype == torch.float32
    torch.testing.assert_close(collector.hessian, 2 * tokens.T @ tokens / tokens.shape[0], rtol=1e-5, atol=1e-6)


def test_inverse_hessian_cholesky_damps_and_handles_dead_inputs(layer):
    _, inputs, _ = layer
    inputs = inputs[:, :32].clone()
    inputs[:, 5] = 0  # an input channel that never fires
    hessian = 2 * inputs.T @ inputs / inputs.shape[0]
    factor = inverse_hessian_cholesky(hessian, dampening_frac=0.01)
    assert factor.dead_inputs.nonzero().flatten().tolist() == [5]
    repaired = hessian.clone()
    repaired[5, 5] = 1
    assert factor.damping == pytest.approx(0.01 * repaired.diagonal().mean().item(), rel=1e-5)
    expected = torch.linalg.inv(repaired + factor.damping * torch.eye(32))
    torch.testing.assert_close(factor.upper.T @ factor.upper, expected, rtol=1e-3, atol=1e-5)
    assert torch.equal(factor.upper, factor.upper.triu())


def test_lazy_block_updates_equal_column_by_column_gptq(layer):
    """Block size only changes when updates are applied, never the result (GPTQ's lazy batching)."""
    weight, _, hessian = layer
    step = 0.01

    def round_to_grid(_block: BlockContext):
        return lambda _j, column: torch.round(column / step) * step

    per_block = gptq_quantize(weight, hessian, round_to_grid, block_size=BLOCK)
    whole = gptq_quantize(weight, hessian, round_to_grid, block_size=COLUMNS)
    small = gptq_quantize(weight, hessian, round_to_grid, block_size=16)
    # A value sitting on a rounding boundary may flip under float reassociation: allow a handful.
    assert (per_block - whole).abs().gt(1e-6).sum() <= 3
    assert (per_block - small).abs().gt(1e-6).sum() <= 3
    rtn = gptq_quantize(weight, hessian, round_to_grid, compensate=False)
    assert torch.equal(rtn, torch.round(weight / step) * step)
    assert output_error(weight, per_block, hessian) < output_error(weight, rtn, hessian)


# --- PB-LLM -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction, paper_bits", [(pbllm.PBLLM_1_7_BIT_SALIENT_FRACTION, 1.7),
                                                  (pbllm.PBLLM_2_BIT_SALIENT_FRACTION, 2.0)])
def test_pbllm_binarizes_the_non_salient_weights_and_keeps_the_fraction(layer, fraction, paper_bits):
    weight, _, hessian = layer
    result = pbllm.quantize_weight(weight, hessian, salient_fraction=fraction, keep_mask=True)
    salient = result.stats["salient_mask"]
    for start in range(0, COLUMNS, BLOCK):
        block, mask = result.weight[:, start:start + BLOCK], salient[:, start:start + BLOCK]
        # Within one element of the requested fraction in every block.
        assert abs(int(mask.sum()) - fraction * mask.numel()) <= 0.5
        for row, row_mask in zip(block, mask):
            binarized = row[~row_mask]
            alpha = binarized.abs()[0]
            assert alpha > 0
            assert set(binarized.tolist()) == {alpha.item(), -alpha.item()}  # exactly +a and -a
    assert result.stats["salient_fraction"] == pytest.approx(fraction, abs=2 / (ROWS * COLUMNS))
    assert result.paper_bits == pytest.approx(paper_bits, abs=1e-3)
    assert pbllm.salient_fraction_for_bits(paper_bits) == pytest.approx(fraction)


def test_pbllm_effective_bits_follow_the_documented_formula(layer):
    weight, _, hessian = layer
    result = pbllm.quantize_weight(weight, hessian, salient_fraction=0.1)
    per_block = result.stats["salient_per_block"]
    assert per_block == [round(0.1 * ROWS * BLOCK)] * 2
    storage = ROWS * (16 + 8)  # per-channel 8-bit scale (fp16) and zero point (8 bits)
    for count in per_block:
        mask = min(ROWS * BLOCK, count * 7 + ROWS * 8)  # 7 bits per in-row index, 8-bit per-row counts
        storage += count * 8 + (ROWS * BLOCK - count) + mask + ROWS * 16
    assert result.effective_bits == pytest.approx(storage / (ROWS * COLUMNS))
    assert 2.6 < result.effective_bits < 2.8  # the "1.7-bit" row really stores ~2.7 bits per weight


# --- BiLLM ------------------------------------------------------------------------------------------

def test_billm_binarized_structure(layer):
    weight, _, hessian = layer
    result = billm.quantize_weight(weight, hessian)
    salient_columns = result.stats["salient_columns"]
    counts = result.stats["salient_columns_per_block"]
    assert [int(salient_columns[s:s + BLOCK].sum()) for s in range(0, COLUMNS, BLOCK)] == counts
    assert all(1 <= count <= billm.DEFAULT_MAX_SALIENT_COLUMNS for count in counts)
    for start in range(0, COLUMNS, BLOCK):
        block = result.weight[:, start:start + BLOCK]
        salient = salient_columns[start:start + BLOCK]
        # Residual binarization: mu1 + mu2 +- a1 +- a2.
        assert max(distinct_per_row(block[:, salient])) <= 4
        # Concentrated and sparse groups, each mu +- a.
        assert max(distinct_per_row(block[:, ~salient])) <= 4


def test_billm_bits_follow_the_documented_formulas(layer):
    weight, _, hessian = layer
    result = billm.quantize_weight(weight, hessian)
    counts = result.stats["salient_columns_per_block"]
    total = ROWS * COLUMNS
    paper = (total + ROWS * sum(counts) + COLUMNS) / total
    decoding = sum(ROWS * (BLOCK - k) + ROWS * 8 * 16 + 16 for k in counts) / total
    assert result.paper_bits == pytest.approx(paper)
    assert 1.0 <= result.paper_bits <= 1.2
    assert result.effective_bits == pytest.approx(paper + decoding)
    # With the split bitmap and the per-row fp16 means and scales it is ~3 bits, not ~1.1.
    assert 2.8 < result.effective_bits < 3.2


def _built_error(block, approximation, mask):
    return float(((block - approximation) * mask).pow(2).sum())


def brute_force_salient_columns(block, salience, max_columns):
    """The definition: residual-binarize the top-k columns and the rest for every k, keep the best."""
    order = salience.argsort(descending=True)
    errors = []
    for count in range(1, min(max_columns, block.shape[1] - 1) + 1):
        salient = torch.zeros(block.shape[1], dtype=torch.bool)
        salient[order[:count]] = True
        salient = salient.expand_as(block)
        approximation = billm.residual_binarize(block, salient)[0] + billm.residual_binarize(block, ~salient)[0]
        errors.append(_built_error(block, approximation, torch.ones_like(block)))
    return 1 + min(range(len(errors)), key=errors.__getitem__)


def brute_force_break_point(block, salient_column):
    """The definition: binarize |w| <= p and |w| > p separately for every candidate p, keep the best."""
    non_salient = (~salient_column).expand_as(block)
    candidates = torch.quantile(block.abs()[non_salient], billm.SPLIT_QUANTILES)
    errors = []
    for point in candidates:
        concentrated = non_salient & (block.abs() <= point)
        approximation = (billm.binarize(block, concentrated)[0]
                         + billm.binarize(block, non_salient & ~concentrated)[0])
        errors.append(_built_error(block, approximation, non_salient))
    return candidates[min(range(len(errors)), key=errors.__getitem__)].item()


@pytest.mark.parametrize("seed", range(6))
def test_billm_searches_choose_what_building_every_candidate_chooses(seed):
    """The searches score candidates from sorted prefix sums; the choice must be the one that building
    each candidate's approximation and measuring its error makes (Gaussian and heavy-tailed blocks)."""
    generator = torch.Generator().manual_seed(seed)
    block = torch.randn(96, BLOCK, generator=generator) * 0.02
    if not seed % 2:  # Student-t with 3 degrees of freedom: z / sqrt(chi2_3 / 3)
        block = block / (torch.randn(3, 96, BLOCK, generator=generator).pow(2).mean(dim=0)).sqrt() / 2
    block[:, seed:seed + 3] *= 2 + seed  # a few strong columns, so the salient count is not trivially 1
    salience = block.pow(2).sum(dim=0) * torch.rand(BLOCK, generator=generator)
    count = billm._search_salient_columns(block, salience, billm.DEFAULT_MAX_SALIENT_COLUMNS)
    assert count == brute_force_salient_columns(block, salience, billm.DEFAULT_MAX_SALIENT_COLUMNS)
    salient_column = torch.zeros(BLOCK, dtype=torch.bool)
    salient_column[salience.argsort(descending=True)[:count]] = True
    assert billm._search_break_point(block, salient_column) == brute_force_break_point(block, salient_column)


# --- SliM-LLM ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def uneven_layer():
    """Eight groups of different magnitude, so that salience-driven allocation has something to move."""
    weight, inputs, _ = make_layer(seed=1, columns=1024, tokens=1024)
    weight[:, :128] *= 4
    weight[:, 512:640] *= 3
    weight[:, 896:] *= 0.3
    inputs[:, [300, 700]] *= 10
    return weight, inputs, 2 * inputs.T @ inputs / inputs.shape[0]


def test_slim_llm_allocates_bits_that_average_the_target(uneven_layer):
    weight, _, hessian = uneven_layer
    result = slim_llm.quantize_weight(weight, hessian, target_bits=2)
    bits = result.stats["group_bits"]
    assert len(bits) == 8 and set(bits) <= {1, 2, 3}
    assert sum(bits) == 2 * len(bits) and result.paper_bits == 2.0
    assert result.stats["pairs_moved"] >= 1 and bits.count(1) == bits.count(3) == result.stats["pairs_moved"]
    assert bits[0] == 3 and bits[7] == 1  # the largest group gains a bit, the smallest loses one
    for group, group_bits in enumerate(bits):
        values = result.weight[:, group * BLOCK:(group + 1) * BLOCK]
        assert max(distinct_per_row(values)) <= 2 ** group_bits
    overhead = 8 * (ROWS * 2 * 16 + 2)
    assert result.effective_bits == pytest.approx((sum(b * ROWS * BLOCK for b in bits) + overhead) / (ROWS * 1024))


def test_slim_llm_incremental_allocation_error_equals_direct_output_error(uneven_layer):
    weight, _, hessian = uneven_layer
    bits, errors = slim_llm.allocate_group_bits(weight, hessian, 2)
    factor = inverse_hessian_cholesky(hessian)
    rtn = torch.cat([slim_llm.quantize_group(weight[:, g * BLOCK:(g + 1) * BLOCK], b,
                                             factor.diagonal[g * BLOCK:(g + 1) * BLOCK], 2.0)
                     for g, b in enumerate(bits)], dim=1)
    assert min(errors) == pytest.approx(output_error(weight, rtn, hessian), rel=1e-4)
    assert len(errors) == 8 // 2 + 1


@pytest.mark.parametrize("target", [1, 8, 0, 2.5, "2", True])
def test_slim_llm_rejects_unreachable_targets(layer, target):
    weight, _, hessian = layer
    with pytest.raises(ValueError, match="target"):
        slim_llm.quantize_weight(weight, hessian, target_bits=target)


def test_slim_llm_accepts_integral_targets():
    assert slim_llm.validate_target_bits(3.0) == 3
    assert slim_llm.validate_target_bits(7) == 7


# --- all three --------------------------------------------------------------------------------------

METHODS = {
    "pbllm-2bit": partial(pbllm.quantize_weight, salient_fraction=pbllm.PBLLM_2_BIT_SALIENT_FRACTION),
    "billm": billm.quantize_weight,
    "slim-llm-2bit": partial(slim_llm.quantize_weight, target_bits=2),
}


@pytest.mark.parametrize("method", METHODS)
def test_hessian_compensation_beats_round_to_nearest_of_the_same_kind(layer, method):
    weight, inputs, hessian = layer
    compensated = METHODS[method](weight, hessian)
    plain = METHODS[method](weight, hessian, compensate=False)
    assert compensated.stats["compensated"] and not plain.stats["compensated"]
    assert output_norm(weight, compensated.weight, inputs) < 0.9 * output_norm(weight, plain.weight, inputs)


@pytest.mark.parametrize("method", METHODS)
def test_low_bit_methods_beat_plain_2bit_minmax_rtn(layer, method):
    weight, inputs, hessian = layer
    result = METHODS[method](weight, hessian)
    assert output_norm(weight, result.weight, inputs) < output_norm(weight, minmax_rtn(weight, 2), inputs)


@pytest.mark.parametrize("method", METHODS)
def test_output_keeps_shape_and_dtype(layer, method):
    weight, _, hessian = layer
    result = METHODS[method](weight.to(torch.bfloat16), hessian)
    assert result.weight.dtype == torch.bfloat16 and result.weight.shape == weight.shape
    assert torch.isfinite(result.weight.float()).all()


# --- sequential driver ------------------------------------------------------------------------------

def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config).eval()


def calibration_batches():
    generator = torch.Generator().manual_seed(1)
    return [torch.randint(0, 256, (2, 32), generator=generator) for _ in range(2)]


def test_sequential_driver_quantizes_every_decoder_linear():
    model = tiny_llama()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    hessians = {}

    def recording_slim(weight, hessian):
        hessians[len(hessians)] = hessian.clone()
        return slim_llm.quantize_weight(weight, hessian, target_bits=2)

    reports = quantize_model_layers(model, calibration_batches(), recording_slim)

    linears = {f"{name}.weight" for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and ".layers." in name}
    assert len(linears) == 14
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) != (name in linears), name
    assert torch.equal(model.lm_head.weight, before["lm_head.weight"])

    assert [report.index for report in reports] == [0, 1]
    for report in reports:
        assert len(report.linears) == 7
        for linear in report.linears:
            weight = model.get_submodule(linear.name).weight
            for group, bits in enumerate(linear.stats["group_bits"]):
                assert max(distinct_per_row(weight[:, group * BLOCK:(group + 1) * BLOCK])) <= 2 ** bits
        expected = sum(l.effective_bits * l.parameters for l in report.linears) / report.parameters
        assert report.effective_bits == pytest.approx(expected)

    # Sequential recipe: layer 1's Hessians came from the outputs of the already quantized layer 0.
    q_proj = model.model.layers[1].self_attn.q_proj
    with HessianCollector(q_proj.in_features).attach(q_proj) as collector:
        for batch in calibration_batches():
            model(batch)
    torch.testing.assert_close(hessians[7], collector.hessian, rtol=1e-4, atol=1e-5)

    logits = model(torch.randint(0, 256, (1, 16))).logits
    assert logits.shape == (1, 16, 256) and torch.isfinite(logits).all()


@pytest.mark.parametrize("method", ["pbllm-2bit", "billm"])
def test_sequential_driver_runs_each_method_and_honours_skip_and_filter(method):
    model = tiny_llama(seed=2)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    reports = quantize_model_layers(model, calibration_batches(), METHODS[method],
                                    targets_filter=lambda name, _module: ".layers.0." in name or "mlp" in name,
                                    skip=("lm_head", r"mlp\.down_proj"))
    quantized = {linear.name for report in reports for linear in report.linears}
    assert quantized == {f"model.layers.0.{n}" for n in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                         "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj")} | {
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"}
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, before[name]) != (name.removesuffix(".weight") in quantized), name
    assert all(math.isfinite(report.effective_bits) for report in reports)
    logits = model(torch.randint(0, 256, (1, 16))).logits
    assert torch.isfinite(logits).all()
