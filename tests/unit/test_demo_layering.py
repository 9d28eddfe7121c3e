"""Layering inside the demo package, on the source.

tests/unit/test_architecture.py already forbids serving code (``router/`` included) importing the
demo and cross-package private imports. This adds the demo's own rule: no demo module imports another
demo module's private names (a helper two trainers share gets a public home, like
``loraplex.demo.training_loop``), and the demo-specific router training stays out of ``router/``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "demo"


def _from_imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` for every ``from module import name`` in the file, function-level ones included."""
    return [
        (node.module, alias.name)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    ]


@pytest.mark.parametrize("path", sorted(DEMO.glob("*.py")), ids=lambda p: p.name)
def test_demo_modules_import_no_private_names(path):
    bad = [
        f"{m}.{n}"
        for m, n in _from_imports(path)
        if m.startswith("loraplex.") and n.startswith("_") and not n.startswith("__")
    ]
    assert not bad, f"demo/{path.name} imports private names: {bad}"


def test_demo_router_training_lives_in_the_demo():
    import loraplex.demo.router_training as demo_side
    import loraplex.router.training as generic

    assert hasattr(generic, "train_router") and not hasattr(generic, "train_demo_router")
    assert demo_side.train_router is generic.train_router  # one training loop, reused
