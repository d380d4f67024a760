"""Ground-truth parameter listings (path, shape, dtype), computed by running the upstream code.

Copied from the project spec (`shared/spec/trees/`, each file's header names its source) into
`tests/spec_trees/` so the real-size tree tests run in CI, where the spec is not checked out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recap_ray.models import weights

DIR = Path(__file__).parent / "spec_trees"


def rows(name: str, prefix: str = "") -> dict[str, tuple[tuple[int, ...], str]]:
    """{path without `prefix`: (shape, dtype)} for the listing `name` (e.g. "pi05.tsv")."""
    out = {}
    for line in (DIR / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, shape, dtype = line.split("\t")
        if path.startswith(prefix):
            out[path[len(prefix):]] = (tuple(int(s) for s in shape.strip("[]").split(",")), dtype)
    return out


def shapes(name: str, prefix: str = "") -> dict[str, tuple[int, ...]]:
    """{path without `prefix`: shape}."""
    return {p: shape for p, (shape, _) in rows(name, prefix).items()}


def tree_rows(tree: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """A nested params tree (arrays or ShapeDtypeStructs) in the listing's form."""
    return {p: (tuple(v.shape), str(v.dtype)) for p, v in weights.flatten(tree).items()}


def tree_shapes(tree: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    return {p: shape for p, (shape, _) in tree_rows(tree).items()}
