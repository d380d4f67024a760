"""House rules on imports: recap_ray never imports Ray, and data flows one way."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "recap_ray"

# package -> packages it must not import
FORBIDDEN = {
    "data": ("recap_ray.models", "recap_ray.train", "recap_ray.serve", "recap_ray.recap"),
    "models": ("recap_ray.train", "recap_ray.serve"),
    "serve": ("recap_ray.train",),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("path", sorted(ROOT.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_import_rules(path):
    imports = _imports(path)
    assert not any(n == "ray" or n.startswith("ray.") for n in imports), f"{path} imports Ray"
    package = path.relative_to(ROOT).parts[0]
    for banned in FORBIDDEN.get(package, ()):
        bad = [n for n in imports if n == banned or n.startswith(banned + ".")]
        assert not bad, f"{path} imports {bad}: data flows data -> models -> train/relabel -> serve"
