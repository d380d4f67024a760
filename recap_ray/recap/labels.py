"""`adv_ind` of one episode from its advantages, intervention flags and per-frame thresholds.

Intervention frames are always positive. An episode whose frames are all interventions is skipped:
nothing of it enters a threshold pool and every label stays positive (pistar leaves such demo
episodes untouched; ours are positive already). Autonomous frames are positive iff A >= thr.
"""

from __future__ import annotations

import numpy as np

POSITIVE, NEGATIVE = "positive", "negative"


def intervention_mask(intervention: np.ndarray) -> np.ndarray:
    """(T,) bool from the `intervention` column (0/1)."""
    flags = np.asarray(intervention).reshape(-1)
    if not np.isin(flags, (0, 1)).all():
        raise ValueError(f"intervention flags must be 0 or 1, got values {sorted(set(flags.tolist()))}")
    return flags.astype(bool)


def skipped(intervention: np.ndarray) -> bool:
    """True for an all-intervention episode (a demonstration): not labelled by advantage."""
    return bool(intervention_mask(intervention).all())


def pooled(intervention: np.ndarray) -> np.ndarray:
    """(T,) bool: frames that enter the threshold pool (autonomous frames of a non-skipped episode)."""
    human = intervention_mask(intervention)
    return ~human if not human.all() else np.zeros(human.size, bool)


def episode(advantages: np.ndarray, intervention: np.ndarray, frame_thresholds: np.ndarray) -> np.ndarray:
    """(T,) object array of "positive"/"negative"."""
    human = intervention_mask(intervention)
    adv = np.asarray(advantages, np.float32).reshape(-1)
    thr = np.asarray(frame_thresholds, np.float32).reshape(-1)
    if not adv.size == human.size == thr.size:
        raise ValueError(f"labels: {adv.size} advantages, {human.size} intervention flags, {thr.size} thresholds")
    auto = ~human
    if np.isnan(thr[auto]).any():
        raise ValueError("labels: an autonomous frame has no threshold (its task had no pooled frame)")
    positive = human | (adv >= thr)
    return np.where(positive, POSITIVE, NEGATIVE).astype(object)
