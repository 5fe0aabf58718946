"""DB-LLM (Chen et al. 2024, arXiv 2402.11960): Flexible Dual Binarization (two binary planes with
learnable scales per row x group, initialised to the int2 grid) trained end to end with
Deviation-Aware Distillation from the full-precision model, on text the full-precision model
generates (the paper's data-free setting) or on the recipe's calibration text. Simulated output:
the trained 2-bit weights written back at full size (factory/lowbit/dbllm.py has the formulas and
which of them are ours).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from factory.methods.base import PER_CHANNEL, CardFacts
from factory.methods.simulated_base import SimulatedMethod, skip_patterns
from factory.recipe import MAX_SAMPLES, MAX_SEED, MAX_SEQ_LEN, MAX_STEPS, Strict

if TYPE_CHECKING:
    from factory.recipe import Settings

# Below this many steps a build is a demonstration of the method, not its training (the card says so).
DEMO_STEPS = 1000


class DBLLMOptions(Strict):
    steps: int = Field(2000, gt=0, le=MAX_STEPS, description="Optimizer steps of the distillation.")
    data: Literal["generated", "calibration"] = Field(
        "generated", description="generated: sequences sampled from the full-precision model (the paper's "
        "data-free setting); calibration: windows of the recipe's calibration text (a labelled alternative).")
    samples: int = Field(4096, gt=0, le=MAX_SAMPLES, description="With data: generated, sequences generated.")
    seq_len: int = Field(1024, ge=2, le=MAX_SEQ_LEN, description="With data: generated, tokens per sequence.")
    greedy_tokens: int = Field(4, ge=0, le=64, description="With data: generated, greedy tokens after the random "
                               "first one before sampling starts (LLM-QAT's 3 to 5).")
    batch_size: int = Field(4, gt=0, le=4096, description="Sequences per optimizer step.")
    learning_rate_weights: float = Field(1e-5, ge=0, le=1.0, description="AdamW learning rate of the latent "
                                         "weights (straight-through); 0 or train_weights: false trains the scales only.")
    learning_rate_scales: float = Field(1e-4, gt=0, le=1.0, description="AdamW learning rate of alpha1, alpha2.")
    train_weights: bool = Field(True, description="Train the latent full-precision weights too (more memory: "
                                "float32 weights, their gradients and AdamW state).")
    gamma: float = Field(1.0, ge=0, le=10.0, description="Deviation-Aware Distillation's entropy exponent "
                         "(0: plain KD).")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Seed of the generated data and of the batch order.")


class DBLLM(SimulatedMethod):
    name = "db-llm"
    paper_name = "DB-LLM"
    summary = "dual binarization (2 binary planes, learnable scales) + deviation-aware distillation (simulated, trained)"
    supported_bits = (2,)
    fixed_group_size = None  # the recipe's group size (the paper's 128; SmolLM2's widths need 64)
    default_group_size = 128
    supported_kinds = ("causal-lm",)
    unsupported_kind_reason = "the distillation loop trains a causal LM on text"
    Options = DBLLMOptions
    # the FDB/DAD engine, the decoder-layer finder it uses, and this module's training set-up
    engine_modules = ("factory.lowbit", "factory.lowbit.dbllm", "factory.methods.db_llm")

    def check(self, recipe):
        out = super().check(recipe)
        o = recipe.method_options
        if recipe.weights.group_size == PER_CHANNEL:
            out.append((("weights", "group_size"), "db-llm scales rows x groups of columns; give an integer (128)"))
        if o.data == "calibration":
            for name in ("samples", "seq_len", "greedy_tokens"):
                if name in o.model_fields_set:
                    out.append((("db-llm", name), "applies to data: generated (the calibration block sets the "
                                                  "windows of data: calibration)"))
        return out

    def uses_calibration(self, options) -> bool:
        return options is not None and options.data == "calibration"

    def paper_bits_label(self, settings) -> str:
        return "2"

    def scheme_label(self, settings) -> str:
        return f"W2A16-g{settings.group_size}-simulated"

    def quantize(self, base_dir: Path, settings: "Settings", out_dir: Path, recipe_dir: Path) -> dict:
        import torch

        from factory.loading import (checkpoint_dtype, compute_dtype, load_preprocessor, model_class, peak_gpu_mb,
                                     reset_gpu_peak, text_tokenizer)
        from factory.lowbit import dbllm

        o = self.options(settings)
        preprocessor = load_preprocessor(settings.kind, base_dir)
        tokenizer = text_tokenizer(preprocessor)
        reset_gpu_peak()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = compute_dtype()
        load_dtype = torch.float32 if dtype == "float32" else checkpoint_dtype(base_dir)
        cls = model_class(settings.kind)
        teacher = cls.from_pretrained(base_dir, dtype=load_dtype).to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        if o.data == "generated":
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            sequences = dbllm.generate_sequences(
                teacher, o.samples, o.seq_len, o.seed, vocab_size=teacher.get_output_embeddings().out_features,
                special_ids=tokenizer.all_special_ids, greedy_tokens=o.greedy_tokens, pad_token_id=pad)
            data = {"data": "generated", "sequences": o.samples, "seq_len": o.seq_len}
        else:
            from factory.calibration import calibration_windows

            sequences = calibration_windows(settings.calibration, tokenizer, recipe_dir)
            data = {"data": "calibration", "sequences": len(sequences), "seq_len": settings.calibration.seq_len,
                    "source": settings.calibration.source}
        student = cls.from_pretrained(base_dir, dtype=load_dtype).to(device)
        group = settings.group_size
        train_weights = o.train_weights and o.learning_rate_weights > 0
        fdbs = dbllm.attach(student, group, skip_patterns(settings), train_weights=train_weights)
        report = dbllm.train(student, teacher, fdbs, sequences, steps=o.steps, batch_size=o.batch_size,
                             lr_weights=o.learning_rate_weights, lr_scales=o.learning_rate_scales, gamma=o.gamma,
                             seed=o.seed, log=lambda line: print(line, flush=True))
        del teacher
        dbllm.detach(student, fdbs)
        student.to(checkpoint_dtype(base_dir))
        student.save_pretrained(out_dir)
        preprocessor.save_pretrained(out_dir)
        return {"engine": "factory.lowbit.dbllm", "format": self.output_format, "peak_gpu_mb": peak_gpu_mb(),
                "device": device, "compute_dtype": dtype, "quantized_linears": len(fdbs),
                "effective_bits": round(dbllm.effective_bits(group), 4), "paper_bits": 2.0,
                "training": {**data, "steps": o.steps, "batch_size": o.batch_size,
                             "tokens_per_step": report.tokens_per_step, "train_weights": train_weights,
                             "seconds": round(report.seconds, 1),
                             "loss_first": round(report.losses[0], 5), "loss_last": round(report.losses[-1], 5),
                             "kd_first": round(report.kd_losses[0], 5), "kd_last": round(report.kd_losses[-1], 5),
                             "losses": [round(x, 5) for x in report.losses]}}

    def card_facts(self, settings: "Settings") -> CardFacts:
        from dataclasses import replace

        o = self.options(settings)
        if o.data == "generated":
            data = (f"{o.samples} sequences of {o.seq_len} tokens generated by the base model itself (seed {o.seed}; "
                    "the paper's data-free setting)")
        else:
            data = "windows of the calibration text below (an alternative to the paper's generated data)"
        trained = "the scales alpha1, alpha2 and the latent weights" if o.train_weights and o.learning_rate_weights > 0 \
            else "the scales alpha1, alpha2 only"
        note = (f"Trained: {trained}, {o.steps} AdamW steps of {o.batch_size} sequences, against Deviation-Aware "
                f"Distillation from the base model (entropy exponent gamma = {o.gamma:g}) on {data}.")
        if o.steps < DEMO_STEPS:
            note += (f" **Few steps ({o.steps}): a demonstration that the method runs, not DB-LLM's training; "
                     "its quality is far from what the paper's schedule gives.**")
        facts = super().card_facts(settings)
        return replace(facts, engine="the factory's own implementation (factory/lowbit/dbllm.py), written from the "
                                     "paper (no code was released): Flexible Dual Binarization + Deviation-Aware "
                                     "Distillation", tags=(*facts.tags, "db-llm"), data_note=note)
