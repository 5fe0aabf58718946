"""The build fingerprint's code digest follows the computation, not the files it lies in."""

from __future__ import annotations

import pytest

from factory.core import code_digest as fingerprint
from factory.core.code_digest import code_digest
from factory.registry import get_method, method_names

ENGINE = '''
"""An engine module."""
from __future__ import annotations
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import Tensor

__all__ = ["scale"]

STEP = 0.5


def scale(x: float) -> float:
    """Round x to the grid."""
    return math.floor(x / STEP) * STEP  # the grid's step
'''


@pytest.fixture
def package(tmp_path, monkeypatch):
    monkeypatch.setattr(fingerprint, "SOURCE_ROOT", tmp_path)
    (tmp_path / "pkg" / "engines").mkdir(parents=True)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    return tmp_path / "pkg"


def test_moves_imports_docstrings_and_comments_keep_the_digest(package):
    (package / "lowbit.py").write_text(ENGINE)
    before = code_digest(["pkg.lowbit"])
    moved = ENGINE.replace('"""An engine module."""', '"""Moved here in the layout refactor."""')
    moved = moved.replace("import math\n", "import math  # reordered\nimport os\n")
    moved = moved.replace('__all__ = ["scale"]', '__all__ = ["scale", "other"]').replace("  # the grid's step", "")
    (package / "engines" / "grid.py").write_text(moved)
    (package / "engines" / "unrelated.py").write_text("def other():\n    return 1\n")
    assert code_digest(["pkg.engines.grid"]) == before


def test_a_change_to_the_computation_changes_the_digest(package):
    (package / "lowbit.py").write_text(ENGINE)
    before = code_digest(["pkg.lowbit"])
    (package / "lowbit.py").write_text(ENGINE.replace("STEP = 0.5", "STEP = 0.25"))
    assert code_digest(["pkg.lowbit"]) != before
    (package / "lowbit.py").write_text(ENGINE.replace("math.floor", "math.ceil"))
    assert code_digest(["pkg.lowbit"]) != before


def test_a_package_is_its_init_and_the_order_of_modules_does_not_matter(package):
    (package / "lowbit.py").write_text(ENGINE)
    (package / "engines" / "__init__.py").write_text("def run():\n    return 2\n")
    assert code_digest(["pkg.lowbit", "pkg.engines"]) == code_digest(["pkg.engines", "pkg.lowbit"])
    assert code_digest(["pkg.engines"]) != code_digest(["pkg.lowbit"])


METHOD_MODULE = '''
"""A method module: card text beside the code that shapes the weights."""

def card_text(bits):
    return f"{bits}-bit"


class Method:
    def check(self, recipe):
        return []

    def quantize(self, weights):
        return [round(w * 4) / 4 for w in weights]
'''


def test_a_member_entry_follows_that_definition_only(package):
    (package / "method.py").write_text(METHOD_MODULE)
    before = code_digest(["pkg.method:Method.quantize"])
    whole = code_digest(["pkg.method"])
    (package / "method.py").write_text(METHOD_MODULE.replace('f"{bits}-bit"', 'f"{bits} bits"')
                                       .replace("return []", "return ['no']"))
    assert code_digest(["pkg.method:Method.quantize"]) == before  # card text and checks: same build
    assert code_digest(["pkg.method"]) != whole
    (package / "method.py").write_text(METHOD_MODULE.replace("w * 4) / 4", "w * 8) / 8"))
    assert code_digest(["pkg.method:Method.quantize"]) != before
    assert code_digest(["pkg.method:card_text"]) != before


def test_a_member_entry_naming_no_definition_is_refused(package):
    (package / "method.py").write_text(METHOD_MODULE)
    for entry in ("pkg.method:Method.train", "pkg.method:Other", "pkg.method:card_text.inner"):
        with pytest.raises(LookupError, match=entry):
            code_digest([entry])


@pytest.mark.parametrize("name", method_names())
def test_every_method_names_engine_modules_that_exist(name):
    method = get_method(name)
    for entry in method.engine_modules:
        module = entry.partition(":")[0]
        path = fingerprint.SOURCE_ROOT.joinpath(*module.split("."))
        assert path.is_dir() and (path / "__init__.py").is_file() or path.with_suffix(".py").is_file(), entry
    digest = method.code_digest()  # a `module:member` entry naming no definition raises here
    assert (digest is None) == (not method.engine_modules)


def test_simulated_methods_share_the_driver_and_differ_by_their_engine():
    pb, bi = get_method("pb-llm"), get_method("billm")
    shared = set(pb.engine_modules) & set(bi.engine_modules)
    assert {"factory.engines.lowbit", "factory.engines.lowbit.hessian"} <= shared
    assert pb.code_digest() != bi.code_digest()
    assert "factory.engines.lowbit.billm" not in pb.engine_modules  # BiLLM's code does not rebuild PB-LLM
