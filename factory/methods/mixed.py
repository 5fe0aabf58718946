"""Mixed precision: different integer schemes for groups of layers, chosen by name or regex, as
llm-compressor's `config_groups` allow (e.g. attention W8A16, MLP W4A16, the first and last layer's
down_proj at 8 bits). Layers no group claims get the recipe's `weights:` scheme. RTN or GPTQ.

`validate` checks every target against the model's layer names (from its config on disk): a target that
matches no layer, and a layer two groups claim, are each one `file:line` message (compressed-tensors
would otherwise pick one of two regexes by their alphabetical order). The manifest and the card list
the scheme each group was given, its layer count, and the effective bits per weight of the whole model.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Annotated, Literal

from pydantic import Field

from factory.engines.base_models import local_linear_layers
from factory.methods.base import PER_CHANNEL
from factory.methods.llmcompressor_base import LLMCompressorMethod
from factory.recipe import GroupSize, ModelEntry, Strict

INT_BITS = (2, 3, 4, 8)
SCALE_BITS = 16  # one bf16 scale per group (symmetric); an asymmetric group adds a zero point of the same width


class LayerGroup(Strict):
    targets: list[Annotated[str, Field(min_length=1)]] = Field(
        min_length=1, description="Layer names, or 're:' regexes matched from the start of the name, as "
        "llm-compressor matches them (e.g. 're:.*self_attn\\..*', 'model.layers.0.mlp.down_proj').")
    bits: int = Field(description="Weight bits of these layers (2, 3, 4 or 8).")
    group_size: GroupSize = Field(128, description="Weights per scale, or 'per-channel'.")
    symmetric: bool = True


class MixedOptions(Strict):
    groups: list[LayerGroup] = Field(default_factory=list, description="Layer groups and their schemes; every other "
                                     "linear layer gets the recipe's `weights:` scheme.")
    algorithm: Literal["rtn", "gptq"] = Field("rtn", description="rtn (data-free) or gptq (reads `calibration:`).")


def matches(target: str, name: str) -> bool:
    """compressed-tensors' match_name: 're:' is re.match from the start, else the exact name."""
    return re.match(target[3:], name) is not None if target.startswith("re:") else target == name


def assign(groups: list[dict], layers: dict[str, tuple[int, int]]) -> tuple[dict[str, int | None], list]:
    """Each layer's group index (None: the recipe's default scheme), and the layers claimed by two groups."""
    out: dict[str, int | None] = {}
    clashes = []
    for name in layers:
        claimed = [g for g, group in enumerate(groups) if any(matches(t, name) for t in group["targets"])]
        if len(claimed) > 1:
            clashes.append((name, claimed))
        out[name] = claimed[0] if claimed else None
    return out, clashes


def bits_per_weight(bits: int, group_size, symmetric: bool, in_features: int) -> float:
    per_group = in_features if group_size == PER_CHANNEL else group_size
    return bits + SCALE_BITS * (1 if symmetric else 2) / per_group


class Mixed(LLMCompressorMethod):
    name = "mixed"
    summary = "per-layer-group integer schemes by name or regex (llm-compressor config_groups), RTN or GPTQ"
    supported_bits = INT_BITS
    Options = MixedOptions

    def uses_calibration(self, options) -> bool:
        return options is not None and options.algorithm == "gptq"

    def check(self, recipe):
        out = super().check(recipe)
        options = recipe.method_options
        if not options.groups:
            out.append((("mixed", "groups") if recipe.mixed is not None else ("method",),
                        "mixed needs layer groups: `mixed: {groups: [{targets: ['re:.*mlp\\..*'], bits: 4}]}`"))
        for g, group in enumerate(options.groups):
            if group.bits not in INT_BITS:
                out.append((("mixed", "groups", g, "bits"), f"must be one of {', '.join(map(str, INT_BITS))}"))
            for t, target in enumerate(group.targets):
                if target.startswith("re:"):
                    try:
                        re.compile(target[3:])
                    except re.error as exc:
                        out.append((("mixed", "groups", g, "targets", t), f"not a valid regex: {exc}"))
        if out:
            return out

        base_dir = recipe.source_path.parent if recipe.source_path else None
        groups = [g.model_dump() for g in options.groups]
        for entry in recipe.models:
            layers = local_linear_layers(entry, base_dir) if base_dir is not None else None
            if layers is None:
                continue  # config not on disk: checked when the build loads it
            for g, group in enumerate(groups):
                for t, target in enumerate(group["targets"]):
                    if not any(matches(target, name) for name in layers):
                        out.append((("mixed", "groups", g, "targets", t),
                                    f"{target!r} matches no linear layer of {entry.id} (e.g. {next(iter(layers))})"))
            _, clashes = assign(groups, layers)
            for name, claimed in clashes[:1]:
                out.append((("mixed", "groups", claimed[1], "targets"),
                            f"{name} of {entry.id} is claimed by groups {claimed[0]} and {claimed[1]} "
                            f"({len(clashes)} layer(s) in all): give each layer to one group"))
        return out

    def quantization_scheme(self, settings):
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        def args(bits, group_size, symmetric):
            grouped = group_size != PER_CHANNEL
            return QuantizationArgs(num_bits=bits, type="int", symmetric=symmetric,
                                    strategy="group" if grouped else "channel", group_size=group_size if grouped else None)

        groups = {f"group_{g}": QuantizationScheme(targets=group["targets"],
                                                     weights=args(group["bits"], group["group_size"], group["symmetric"]))
                  for g, group in enumerate(settings.options["groups"])}
        # "Linear" (a class target) is the least specific match: a named or regex group wins over it.
        groups["default"] = QuantizationScheme(targets=["Linear"],
                                               weights=args(settings.bits, settings.group_size, settings.symmetric))
        return dict(config_groups=groups, ignore=settings.ignore)

    def modifiers(self, settings, quant):
        from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

        modifier = GPTQModifier if settings.options["algorithm"] == "gptq" else QuantizationModifier
        return [modifier(**quant)]

    def scheme_label(self, settings):
        return "MIXED-" + "-".join(f"W{g['bits']}" for g in settings.options["groups"]) + f"-W{settings.bits}"

    def card_facts(self, settings):
        return replace(super().card_facts(settings), weights_part="parts/weights-layer-groups.md.j2")

    def quantize(self, base_dir, settings, out_dir, recipe_dir):
        figures = super().quantize(base_dir, settings, out_dir, recipe_dir)

        layers = local_linear_layers(ModelEntry(id="local/base", source="local", path=str(out_dir), kind=settings.kind),
                                     out_dir.parent) or {}
        return {**figures, **layer_group_figures(settings, layers)}


def layer_group_figures(settings, layers: dict[str, tuple[int, int]]) -> dict:
    """What each group was given (scheme, layers, weights) and the model's effective bits per weight."""
    groups = settings.options["groups"]
    assigned, _ = assign(groups, layers)
    rows = []
    total_bits = total_weights = 0.0
    for g, group in [*enumerate(groups), (None, {"targets": ["Linear (the rest)"], "bits": settings.bits,
                                                 "group_size": settings.group_size, "symmetric": settings.symmetric})]:
        names = [n for n, a in assigned.items() if a == g]
        weights = sum(layers[n][0] * layers[n][1] for n in names)
        bits = sum(layers[n][0] * layers[n][1] * bits_per_weight(group["bits"], group["group_size"], group["symmetric"],
                                                                  layers[n][1]) for n in names)
        total_bits, total_weights = total_bits + bits, total_weights + weights
        label = f"W{group['bits']}A16" + ("" if group["group_size"] == PER_CHANNEL else f"-g{group['group_size']}")
        rows.append({"targets": group["targets"], "scheme": label + ("" if group["symmetric"] else "-asym"),
                     "layers": len(names), "weights": weights})
    return {"layer_groups": rows,
            "bits_per_weight": round(total_bits / total_weights, 3) if total_weights else None}
