"""Which self-hosted runner a build needs, from the size of its model: the `runner` of each entry of
`factory plan --format github-matrix`, which the rebuild workflow's jobs take as `runs-on`.

The tiers are a JSON mapping, tier name -> {"up_to_b": largest model in billions of parameters, or
null for no limit, "labels": [runner labels]}; a model goes to the smallest tier that holds it. The
repository variable FACTORY_RUNNER_LABELS (the env variable of the same name) replaces the default:

    {"gpu-80gb": {"up_to_b": 20, "labels": ["self-hosted", "linux", "gpu-80gb"]},
     "multi-gpu": {"up_to_b": null, "labels": ["self-hosted", "linux", "multi-gpu", "high-ram"]}}

LLaMA-3-8B and LLaVA-Next-8B need one 80 GB GPU; LLaMA-3-70B needs the multi-GPU, high-RAM runner
(README: "Runners"). A model's size comes from its config when it is on disk (no download), else
from its id ("...-70B", "...-135M"); a model of unknown size gets the largest tier.
Text that is not valid JSON, or not such a mapping, is bad input: one line, exit 2.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from factory.core.errors import UserError
from factory.engines.base_models import _read_local_config

if TYPE_CHECKING:
    from factory.recipe import ModelEntry

ENV = "FACTORY_RUNNER_LABELS"
DEFAULT_TIERS = {
    "gpu-80gb": {"up_to_b": 20, "labels": ["self-hosted", "linux", "gpu-80gb"]},
    "multi-gpu": {"up_to_b": None, "labels": ["self-hosted", "linux", "multi-gpu", "high-ram"]},
}


class Tier(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    up_to_b: float | None = Field(gt=0)
    labels: list[str] = Field(min_length=1)


class Tiers(RootModel[dict[str, Tier]]):
    pass


def tiers(text: str | None = None) -> dict[str, Tier]:
    """The tiers from `text` (else $FACTORY_RUNNER_LABELS, else the default), smallest first."""
    text = os.environ.get(ENV, "") if text is None else text
    if not text.strip():
        data = DEFAULT_TIERS
    else:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"{ENV} is not valid JSON ({exc})") from None
    try:
        parsed = Tiers.model_validate(data).root
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UserError(f"{ENV}: {where}: {err['msg']} (expected {{tier: {{\"up_to_b\": number or null, "
                        "\"labels\": [label, ...]}})") from None
    if not parsed:
        raise UserError(f"{ENV} names no tier")
    for name, tier in parsed.items():
        if any(not isinstance(label, str) or not label.strip() for label in tier.labels):
            raise UserError(f"{ENV}: {name}.labels: a label is empty")
    return dict(sorted(parsed.items(), key=lambda item: (item[1].up_to_b is None, item[1].up_to_b or 0)))


def params_from_config(config: dict) -> float | None:
    """Parameters (billions) of a Llama-style language model from its config: embeddings, attention, MLP."""
    text = config.get("text_config") or config
    try:
        hidden, layers = int(text["hidden_size"]), int(text["num_hidden_layers"])
        inter, vocab = int(text["intermediate_size"]), int(text["vocab_size"])
        heads = int(text["num_attention_heads"])
        kv = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or hidden // heads)
    except (KeyError, TypeError, ValueError):
        return None
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv * head_dim
    per_layer = attention + 3 * hidden * inter
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings") else 2)
    return (layers * per_layer + embeddings) / 1e9


def params_from_id(model_id: str) -> float | None:
    """'meta-llama/Meta-Llama-3-70B' -> 70, 'HuggingFaceTB/SmolLM2-135M-Instruct' -> 0.135."""
    found = re.findall(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)([bBmM])(?![A-Za-z0-9])", model_id.split("/")[-1])
    if not found:
        return None
    number, unit = found[-1]
    return float(number) / (1000 if unit in "mM" else 1)


def model_params_b(entry: "ModelEntry", recipe_dir: Path) -> float | None:
    try:
        config = _read_local_config(entry, recipe_dir)
    except (OSError, ValueError):
        config = None
    from_config = params_from_config(config) if isinstance(config, dict) else None
    return from_config if from_config is not None else params_from_id(entry.id)


def runner_for(params_b: float | None, available: dict[str, Tier]) -> tuple[str, Tier]:
    """The smallest tier that holds a model of `params_b` billion parameters (unknown: the largest)."""
    ordered = list(available.items())
    if params_b is not None:
        for name, tier in ordered:
            if tier.up_to_b is None or params_b <= tier.up_to_b:
                return name, tier
        largest = ordered[-1][1].up_to_b
        raise UserError(f"{ENV}: no tier holds a {params_b:.1f}B model (the largest goes up to {largest}B; "
                        "give one \"up_to_b\": null)")
    return ordered[-1]
