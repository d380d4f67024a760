"""How far each parameter leaf moved, compactly: written by make_openpi_training_fixture.py (in openpi's venv)
and recomputed by tests/models/test_openpi_training_parity.py, so both sides measure the same way."""

from __future__ import annotations

from typing import Any

import numpy as np


def leaf_moves(before: dict[str, Any], after: dict[str, Any], projections: int) -> tuple[list[str], np.ndarray, np.ndarray]:  # fmt: skip
    """Flat '/'-keyed parameter dicts -> (sorted leaf names, |after - before| per leaf, (leaves, projections) dot
    products of that change with standard normal vectors drawn by default_rng([leaf index, j]))."""
    names = sorted(before)
    norms, dots = [], []
    for i, name in enumerate(names):
        delta = (np.asarray(after[name], np.float64) - np.asarray(before[name], np.float64)).ravel()
        norms.append(np.linalg.norm(delta))
        dots.append([delta @ np.random.default_rng([i, j]).standard_normal(delta.size) for j in range(projections)])
    return names, np.array(norms), np.array(dots)
