"""Percentile thresholds over autonomous-frame advantages: one per task, or one global.

The top `positive_ratio` of autonomous frames (intervention 0, in episodes that are not all
intervention) are positive: thr = numpy percentile(pool, 100 - 100 * ratio), linear
interpolation, and A >= thr is positive, so ties go positive and the share can exceed the ratio
(spec recap.md §2.5-2.6). pistar pools every task together (`scope="global"`); the pi0.6 paper
sets the threshold per task (`scope="task"`, our default).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Scope = Literal["task", "global"]
SCOPES: tuple[str, ...] = ("task", "global")
# Key of the single threshold under scope "global".
GLOBAL = -1


def percent(positive_ratio: float) -> float:
    """The percentile (in [0, 100)) whose threshold keeps the top `positive_ratio` positive.

    100 - top_percent with top_percent rounded, so a ratio of 0.3 gives exactly pistar's 70.0.
    """
    if not 0.0 < positive_ratio <= 1.0:
        raise ValueError(f"positive ratio must be in (0, 1], got {positive_ratio}")
    return 100.0 - round(100.0 * positive_ratio, 9)


def percentile(advantages: np.ndarray, positive_ratio: float) -> float:
    """The threshold over one pool of advantages (float32-exact, as pistar compares in float32)."""
    pool = np.asarray(advantages, np.float32).reshape(-1)
    if pool.size == 0:
        raise ValueError("threshold over an empty pool of advantages")
    return float(np.float32(np.percentile(pool, percent(positive_ratio))))


def thresholds(
    advantages: np.ndarray, task_index: np.ndarray, pooled: np.ndarray, positive_ratio: float, scope: Scope = "task"
) -> dict[int, float]:
    """Thresholds over the frames where `pooled` is true: task_index -> thr, or {GLOBAL: thr}.

    Tasks without pooled frames get no threshold (they have no frame to label by advantage).
    """
    adv = np.asarray(advantages, np.float32).reshape(-1)
    task = np.asarray(task_index, np.int64).reshape(-1)
    mask = np.asarray(pooled, bool).reshape(-1)
    if not adv.size == task.size == mask.size:
        raise ValueError(f"thresholds: {adv.size} advantages, {task.size} task indices, {mask.size} pool flags")
    if scope not in SCOPES:
        raise ValueError(f"unknown threshold scope {scope!r}; expected one of {SCOPES}")
    if scope == "global":
        return {GLOBAL: percentile(adv[mask], positive_ratio)} if mask.any() else {}
    return {int(k): percentile(adv[mask & (task == k)], positive_ratio) for k in np.unique(task[mask])}


def per_frame(table: dict[int, float], task_index: np.ndarray) -> np.ndarray:
    """(T,) float32 threshold of each frame (NaN where its task has none)."""
    task = np.asarray(task_index, np.int64).reshape(-1)
    if GLOBAL in table:
        return np.full(task.size, table[GLOBAL], np.float32)
    return np.array([table.get(int(k), np.nan) for k in task], np.float32).reshape(-1)
