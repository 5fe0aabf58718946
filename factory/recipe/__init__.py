"""The recipe layer: what users write in `recipes/*.yaml`, validated before any model loads.

schema.py holds the models (its blocks in fields.py, evaluation.py, finetune.py), load.py reads and
validates a file, checks.py the rules pydantic cannot see, naming.py and publish_repo.py the names
the Hub accepts. This face hands on the names the rest of the factory imports.
"""

from factory.recipe.checks import check_recipe
from factory.recipe.evaluation import Evaluation, Gate, Gates, RuntimeQuality, Speed
from factory.recipe.fields import MAX_SAMPLES, MAX_SEED, MAX_SEQ_LEN, PER_CHANNEL, PER_TENSOR, GroupSize, Strict
from factory.recipe.finetune import MAX_STEPS, FineTune
from factory.recipe.load import load_recipe, recipe_json_schema, recipe_model
from factory.recipe.naming import hub_repo_id_problem
from factory.recipe.publish_repo import repo_id
from factory.recipe.schema import Calibration, ModelEntry, Recipe, Settings, settings_json

__all__ = [
    "MAX_SAMPLES", "MAX_SEED", "MAX_SEQ_LEN", "MAX_STEPS", "PER_CHANNEL", "PER_TENSOR",
    "Calibration", "Evaluation", "FineTune", "Gate", "Gates", "GroupSize", "ModelEntry", "Recipe",
    "RuntimeQuality", "Settings", "Speed", "Strict",
    "check_recipe", "hub_repo_id_problem", "load_recipe", "recipe_json_schema", "recipe_model", "repo_id",
    "settings_json",
]
