"""The pipeline's stages over a build: what each needs and the folder it produces.

quantize | finetune -> the build's artifact (model/): a checkpoint, or a base + adapter
evaluate            -> eval/   (needs the artifact)
speed               -> speed/  (needs the artifact; the card shows it when it ran)
card                -> card/   (needs the artifact and the evaluation)
push                -> a repo on the Hub or a local folder (needs all three)

A method says which stage makes its artifact (`QuantMethod.stage`); "artifact" below stands
for that stage. `publish` runs them in this order.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    name: str
    needs: tuple[str, ...]
    output: str | None  # folder under the build (None: it writes elsewhere)
    missing: str  # what the build lacks when this stage has not run


STAGES: dict[str, Stage] = {
    "quantize": Stage("quantize", (), "model", "not quantized yet"),
    "finetune": Stage("finetune", (), "model", "not fine-tuned yet"),
    "evaluate": Stage("evaluate", ("artifact",), "eval", "not evaluated yet"),
    "speed": Stage("speed", ("artifact",), "speed", "not measured for speed yet"),
    "card": Stage("card", ("artifact", "evaluate"), "card", "no model card yet"),
    "push": Stage("push", ("artifact", "evaluate", "card"), None, "not pushed yet"),
}
