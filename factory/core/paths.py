"""Where the package's own files lie: its data (bundled texts, tables, task files) and the card templates.

Every data file is found from DATA_DIR, so moving a module never moves what it reads.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # factory/
SOURCE_ROOT = PACKAGE_DIR.parent  # where `factory.x.y` lies as factory/x/y.py
DATA_DIR = PACKAGE_DIR / "data"
EVAL_TASKS_DIR = DATA_DIR / "eval_tasks"  # the bundled lm-eval / lmms-eval tasks
TEMPLATES_DIR = SOURCE_ROOT / "model_cards"


def cache_root() -> Path:
    """Where converted base models and shared caches live (FACTORY_CACHE, else ~/.cache/factory)."""
    return Path(os.environ.get("FACTORY_CACHE") or Path.home() / ".cache" / "factory")
