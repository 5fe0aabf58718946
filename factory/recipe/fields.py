"""The ground of the recipe schema: the strict base model, the field types its blocks share, the upper bounds.

Upper bounds of counts are what makes sense, so that a typo (an extra zero, 1e26) is an error, not a
run that never ends or allocates without end. The methods (factory/methods/) read the group-size
markers and the bounds from here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict

PER_CHANNEL = "per-channel"
PER_TENSOR = "per-tensor"  # one scale per weight tensor (FP8 static): a format's fixed choice, not a recipe's

MAX_GROUP_SIZE = 65536


def _group_size(value: Any) -> Any:
    # One clear message instead of pydantic's two (one per member of the union).
    if value is None or value in (PER_CHANNEL, PER_TENSOR) or (
            isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_GROUP_SIZE):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value > MAX_GROUP_SIZE:
        raise ValueError(f"must be at most {MAX_GROUP_SIZE} (or 'per-channel')")
    raise ValueError("must be a positive integer or 'per-channel'")


# "per-tensor" is FP8 static's scale (method fp8), refused for the other methods by their checks.
GroupSize = Annotated[int | Literal["per-channel", "per-tensor"], BeforeValidator(_group_size)]


def _batch_size(value: Any) -> Any:
    # One clear message instead of one per member of the union; the range is checked in check_recipe.
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    shown = f"the string {value!r}" if isinstance(value, str) else repr(value)
    raise ValueError(f"must be an integer or 'auto', not {shown}")


BatchSize = Annotated[int | Literal["auto"], BeforeValidator(_batch_size)]


# Upper bounds of counts: what makes sense, so that a typo (an extra zero, 1e26) is an error, not a
# run that never ends or allocates without end.
MAX_SAMPLES = 100_000
MAX_SEQ_LEN = 131_072  # LLaMA-3.1's context
MAX_BATCH_SIZE = 4096
MAX_LIMIT = 10_000_000
MAX_FEWSHOT = 100
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_RECOVERY = 100.0
MAX_PPL_RATIO = 1e6


class Strict(BaseModel):
    # strict: a string is not a number (`bits: "4"` is an error, not 4), a number is not a bool;
    # no NaN or infinity in a float.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)
