"""How far each parameter leaf moved, compactly: written by make_openpi_training_fixture.py and
make_pistar_training_fixture.py (in the upstream venvs), recomputed and compared by the two training parity tests,
so both sides measure the same way."""

from __future__ import annotations

from typing import Any, Mapping

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


def assert_moves_match(recorded: Mapping[str, np.ndarray], prefix: str, before: dict[str, Any], after: dict[str, Any],
                       projections: int, zero_gradient: tuple[str, ...]) -> None:  # fmt: skip
    """Our leaves moved as the recorded upstream ones (`{prefix}names/norm/proj`): a leaf upstream left alone stays
    exactly; any other moves by the same norm (1e-3 of the move) and projections (1e-2). Leaves ending in
    `zero_gradient` (attention key biases: their exact gradient is zero, their moves AdamW-scaled rounding noise)
    only have to stay small beside the typical move."""
    names, norms, dots = leaf_moves(before, after, projections)
    assert names == list(recorded[f"{prefix}names"])
    ref_norm, ref_proj = recorded[f"{prefix}norm"], recorded[f"{prefix}proj"]
    typical = np.median(ref_norm[ref_norm > 0])
    for i, name in enumerate(names):
        if name.endswith(zero_gradient):
            assert norms[i] < 0.05 * typical, (prefix, name, norms[i])
        elif ref_norm[i] == 0:
            assert norms[i] == 0, (prefix, name, norms[i])
        else:
            assert abs(norms[i] - ref_norm[i]) <= 1e-3 * ref_norm[i], (prefix, name, norms[i], ref_norm[i])
            np.testing.assert_allclose(dots[i], ref_proj[i], atol=0.01 * ref_norm[i], err_msg=f"{prefix}{name}")
