"""Percentile thresholds: hand-computed values, ties positive, per task versus global."""

from __future__ import annotations

import numpy as np
import pytest

from recap_ray.recap import threshold


def test_hand_computed_percentile():
    # 70th percentile of 0..9 with linear interpolation: position 6.3 -> 6.3; 7, 8, 9 are positive.
    assert threshold.percentile(np.arange(10), 0.3) == pytest.approx(6.3, abs=1e-6)
    assert threshold.percent(0.3) == 70.0  # exactly pistar's 100 - 30.0
    assert threshold.percent(1.0) == 0.0


def test_ties_go_positive():
    pool = np.array([1.0, 1.0, 1.0, 1.0, 2.0], np.float32)
    thr = threshold.percentile(pool, 0.3)
    assert thr == 1.0
    assert int(np.sum(pool >= thr)) == 5  # share 100% > 30%: ties are positive


def test_per_task_and_global():
    rng = np.random.default_rng(0)
    adv = np.concatenate([rng.normal(0, 1, 50), rng.normal(5, 1, 30)]).astype(np.float32)
    task = np.array([0] * 50 + [1] * 30)
    pooled = np.ones(80, bool)
    pooled[::7] = False  # e.g. intervention frames
    per_task = threshold.thresholds(adv, task, pooled, 0.3, "task")
    assert set(per_task) == {0, 1}
    for k in (0, 1):
        assert per_task[k] == np.float32(np.percentile(adv[pooled & (task == k)], 70))
    glob = threshold.thresholds(adv, task, pooled, 0.3, "global")
    assert glob == {threshold.GLOBAL: float(np.float32(np.percentile(adv[pooled], 70)))}
    np.testing.assert_array_equal(threshold.per_frame(per_task, task), np.where(task == 0, per_task[0], per_task[1]).astype(np.float32))
    np.testing.assert_array_equal(threshold.per_frame(glob, task), np.full(80, glob[threshold.GLOBAL], np.float32))


def test_task_without_pooled_frames_has_no_threshold():
    table = threshold.thresholds(np.arange(6.0), np.array([0, 0, 0, 1, 1, 1]), np.array([1, 1, 1, 0, 0, 0], bool), 0.3)
    assert set(table) == {0}
    assert np.isnan(threshold.per_frame(table, np.array([1]))).all()
    assert threshold.thresholds(np.arange(3.0), np.zeros(3), np.zeros(3, bool), 0.3, "global") == {}


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_bad_ratio(ratio):
    with pytest.raises(ValueError, match="positive ratio"):
        threshold.percentile(np.arange(3.0), ratio)
