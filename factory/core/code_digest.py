"""The digest of the factory's own code that computes a build's weights: syntax trees, not file bytes.

Moving a module, reordering its imports or editing a comment or docstring keeps the digest, so a
refactor never retrains a 70B build; a change to the code that runs changes it.
"""

from __future__ import annotations

import ast
import hashlib
from typing import Iterable

from factory.core.paths import SOURCE_ROOT

DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def code_digest(modules: Iterable[str]) -> str:
    """A digest of the computation in `modules` (dotted names of the factory's own modules): each
    file's syntax tree with docstrings, imports and `__all__` stripped, hashed without its name or
    path. Moving a module, reordering its imports or editing a comment or docstring keeps the digest
    (no rebuild); a change to the code that runs changes it. The order of `modules` does not matter.

    `module:Name` or `module:Class.method` takes one definition of the module instead of all of it:
    a method module holds its card text and recipe checks beside the code that shapes the weights,
    and only the latter may retrain a build when it changes."""
    parts = []
    for entry in modules:
        module, _, member = entry.partition(":")
        path = SOURCE_ROOT.joinpath(*module.split("."))
        source = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(source.read_text(encoding="utf-8"))
        node = _member(tree, member, entry) if member else tree
        parts.append(hashlib.sha256(ast.dump(_computation(node)).encode()).hexdigest())
    return hashlib.sha256("".join(sorted(parts)).encode()).hexdigest()[:16]


def _member(tree: ast.Module, dotted: str, entry: str) -> ast.AST:
    """The definition `dotted` names in `tree` (a function or class, or a class's method)."""
    node: ast.AST = tree
    for name in dotted.split("."):
        found = [n for n in getattr(node, "body", []) if isinstance(n, DEFINITIONS) and n.name == name]
        if not found:
            raise LookupError(f"code digest: {entry} names no definition")
        node = found[0]
    return node


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
