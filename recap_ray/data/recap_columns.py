"""The five RECAP columns: their features, how to compute them, and how to check them.

Formulas follow limb's `convert-lerobot --pistar` (spec recap.md §1): T frames, t = 0..T-1,
reward 1 at the last frame of a success, reward_label -1/T with 0 at the end, value_label
-(T-1-t)/T on success and -1 on failure, adv_ind "positive" on intervention frames else "none".

That scale divides by each episode's own length, so every success starts near -1 whether it took
two seconds or twenty: the value model cannot tell a slow trajectory from a fast one, and an
advantage only compares a stretch with the rest of its own episode. The pi0.6 paper's target is the
number of steps left to success, normalized per task (spec recap.md §4-5, RLinf's affine map):
`horizon=H` divides by H instead (H >= T, the longest episode of the task), so reward_label is
-1/H, value_label -(T-1-t)/H, and a state's value says how far from success it is on a common scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLUMNS = ("intervention", "reward", "reward_label", "value_label", "adv_ind")
ADV_VALUES = ("positive", "negative", "none")

FEATURES: dict[str, dict] = {
    "intervention": {"dtype": "int64", "shape": [1], "names": ["intervention_flag"]},
    "reward": {"dtype": "float32", "shape": [1], "names": ["reward"]},
    "reward_label": {"dtype": "float32", "shape": [1], "names": ["reward_label"]},
    "value_label": {"dtype": "float32", "shape": [1], "names": ["value_label"]},
    "adv_ind": {"dtype": "string", "shape": [1], "names": ["adv_ind"]},
}


def compute(success: bool, intervention: np.ndarray, horizon: int | None = None) -> dict[str, np.ndarray]:
    """The five columns of one episode from its success flag and per-frame intervention flags.

    `horizon`: the step count that maps to a value of -1 (None: the episode's length, limb's rule).
    """
    flags = np.asarray(intervention).reshape(-1).astype(np.int64)
    if flags.size == 0:
        raise ValueError("cannot compute RECAP columns for an empty episode")
    if not np.isin(flags, (0, 1)).all():
        raise ValueError(f"intervention flags must be 0 or 1, got values {sorted(set(flags.tolist()))}")
    n = flags.size
    scale = n if horizon is None else horizon
    if scale < n:
        raise ValueError(f"value horizon {horizon} is shorter than the episode ({n} frames)")
    t = np.arange(n)
    reward = np.zeros(n, np.float32)
    if success:
        reward[-1] = 1.0
    reward_label = np.full(n, -1.0 / scale, np.float32)
    reward_label[-1] = 0.0
    value_label = (-(n - 1 - t) / scale).astype(np.float32) if success else np.full(n, -1.0, np.float32)
    adv_ind = np.where(flags == 1, "positive", "none").astype(object)
    return {"intervention": flags, "reward": reward, "reward_label": reward_label, "value_label": value_label, "adv_ind": adv_ind}


@dataclass(frozen=True)
class ColumnIssue:
    """One problem with a RECAP column, located by column and frame."""

    column: str
    frame: int | None
    message: str


def check(columns: dict[str, np.ndarray], success: bool | None = None) -> list[ColumnIssue]:
    """Problems with one episode's RECAP columns; with `success`, also compare against the formulas."""
    issues: list[ColumnIssue] = []
    for name in COLUMNS:
        if name not in columns:
            issues.append(ColumnIssue(name, None, "column is missing"))
    if issues:
        return issues

    def first(mask: np.ndarray) -> int:
        return int(np.flatnonzero(mask)[0])

    for name in ("reward", "reward_label", "value_label"):
        x = np.asarray(columns[name], np.float64).reshape(-1)
        if not np.isfinite(x).all():
            issues.append(ColumnIssue(name, first(~np.isfinite(x)), "value is NaN or inf"))
    value = np.asarray(columns["value_label"], np.float64).reshape(-1)
    bad = np.isfinite(value) & ((value < -1.0 - 1e-6) | (value > 1e-6))
    if bad.any():
        issues.append(ColumnIssue("value_label", first(bad), f"value {value[first(bad)]:.6g} is outside [-1, 0]"))
    flags = np.asarray(columns["intervention"]).reshape(-1)
    if not np.isin(flags, (0, 1)).all():
        bad_i = ~np.isin(flags, (0, 1))
        issues.append(ColumnIssue("intervention", first(bad_i), f"value {flags[first(bad_i)]!r} is not 0 or 1"))
    adv = np.asarray(columns["adv_ind"], dtype=object).reshape(-1)
    bad_a = ~np.isin(adv, ADV_VALUES)
    if bad_a.any():
        issues.append(ColumnIssue("adv_ind", first(bad_a), f"value {adv[first(bad_a)]!r} is not one of {ADV_VALUES}"))
    if success is not None and not issues:
        expected = compute(success, flags)
        for name in ("reward", "reward_label", "value_label"):
            got = np.asarray(columns[name], np.float32).reshape(-1)
            off = ~np.isclose(got, expected[name], atol=1e-6)
            if off.any():
                f = first(off)
                issues.append(ColumnIssue(name, f, f"value {got[f]:.6g} disagrees with the formula ({expected[name][f]:.6g}) for success={success}"))
    return issues
