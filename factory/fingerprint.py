"""Every fingerprint of a build, and the one digest they use.

build        the effective settings, calibration data, base revision and the versions of the
             libraries that shape the weights: a different value means different weights.
evaluation   the build's, plus the evaluation plan: a different value means different scores.
publish      what a published copy is compared by (`plan`, `push`): build + evaluation.

All are computable from the recipe alone (no build on disk), so `plan` loads no model.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from factory.build import Build

# Every build's weights depend on these; a method adds the libraries it quantizes with.
BASE_LIBRARIES = ("torch", "transformers")


def digest(value: Any) -> str:
    """sha256 of the canonical JSON of `value`, shortened to 16 hex digits."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # where `factory.x.y` lies as factory/x/y.py


def code_digest(modules: Iterable[str]) -> str:
    """A digest of the computation in `modules` (dotted names of the factory's own modules): each
    file's syntax tree with docstrings, imports and `__all__` stripped, hashed without its name or
    path. Moving a module, reordering its imports or editing a comment or docstring keeps the digest
    (no rebuild); a change to the code that runs changes it. The order of `modules` does not matter."""
    parts = []
    for module in modules:
        path = PACKAGE_ROOT.joinpath(*module.split("."))
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(source.read_text(encoding="utf-8"))
        parts.append(hashlib.sha256(ast.dump(_computation(tree)).encode()).hexdigest())
    return hashlib.sha256("".join(sorted(parts)).encode()).hexdigest()[:16]


def _computation(tree: ast.Module) -> ast.Module:
    class Strip(ast.NodeTransformer):
        def _body(self, node):
            self.generic_visit(node)
            body = [n for n in node.body if not _is_docstring(n)]
            node.body = body or [ast.Pass()]
            return node

        visit_Module = visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _body

        def visit_Import(self, node):
            return None

        visit_ImportFrom = visit_Import

        def visit_Assign(self, node):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            return None if names == ["__all__"] else node

        def visit_If(self, node):  # `if TYPE_CHECKING:` blocks hold imports only
            self.generic_visit(node)
            return node if node.body else (node.orelse or None)

    return Strip().visit(tree)


def _is_docstring(node: ast.stmt) -> bool:
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)


def library_versions(names: tuple[str, ...] = BASE_LIBRARIES) -> dict[str, str]:
    """Versions without local labels: torch 2.13.0+cpu on the machine that plans and 2.13.0+cu128
    on the GPU runner that builds are the same release."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def build_inputs(build: "Build") -> dict:
    """What the build fingerprint hashes."""
    from factory.calibration import calibration_digest
    from factory.models import source_revision
    from factory.recipe import settings_json

    settings = build.settings
    code = build.method.code_digest()
    return {
        **({"method_code": code} if code else {}),
        "settings": json.loads(settings_json(settings)),
        "calibration_data": calibration_digest(settings.calibration, build.recipe_dir) if settings.calibration else None,
        "base_model": {"id": build.entry.id, "source": build.entry.source,
                       "revision": source_revision(build.entry, build.recipe_dir)},
        "libraries": library_versions(BASE_LIBRARIES + build.method.libraries),
        **({"finetune_data": finetune_data_digest(settings.finetune, build.recipe_dir)} if settings.finetune else {}),
    }


def finetune_data_digest(ft, recipe_dir: Path) -> str:
    """The training data: a local file's (or the bundled demo set's) content; the Hub dataset's id."""
    import hashlib

    from factory.finetune.data import ALPACA_HUB_ID, DEMO_FILE

    if ft.data.source == "alpaca":
        return f"hub:{ALPACA_HUB_ID}"
    path = DEMO_FILE if ft.data.source == "demo" else recipe_dir / ft.data.path
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def evaluation_fingerprint(build: "Build") -> str:
    from factory.evaluate.plan import EvalPlan

    plan = EvalPlan.for_model(build.recipe.evaluation, build.entry.kind)
    return digest([build.fingerprint(), plan.key()])


def publish_fingerprint(build: "Build", evaluation: str | None = None) -> str:
    return digest([build.fingerprint(), evaluation or evaluation_fingerprint(build)])


def factory_metadata(build: "Build") -> dict:
    """The `factory` block of the card's front matter: enough for `plan` to say why a copy is stale."""
    inputs = build.fingerprint_inputs
    evaluation = evaluation_fingerprint(build)
    return {
        "fingerprint": publish_fingerprint(build, evaluation),
        "build_fingerprint": build.fingerprint(),
        "evaluation_fingerprint": evaluation,
        "recipe": build.recipe.name,
        "settings_digest": digest(inputs["settings"]),
        "calibration_digest": inputs["calibration_data"],
        "base_revision": inputs["base_model"]["revision"],
        "libraries": inputs["libraries"],
    }
