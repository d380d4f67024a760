"""Labels of whole datasets: interventions, skipped demo episodes, per-task thresholds, and
pistar's labels reproduced against a transcription of its script (spec recap.md §2)."""

from __future__ import annotations

import numpy as np
import pytest

from recap_ray.recap import labels, relabel, threshold


def _episode(rng: np.random.Generator, n: int, task: int, success: bool, intervention: np.ndarray | None = None) -> relabel.Episode:
    inter = np.zeros(n, np.int64) if intervention is None else intervention
    rewards = np.full(n, -1.0 / n, np.float32)
    rewards[-1] = 0.0
    values = (np.round(rng.uniform(-1, 0, n) * 8) / 8).astype(np.float32)  # coarse: many ties
    return relabel.Episode(values, rewards, inter, np.full(n, task), success)


def _dataset(seed: int = 0) -> dict[int, relabel.Episode]:
    rng = np.random.default_rng(seed)
    eps = {}
    for e in range(8):
        n = int(rng.integers(20, 60))
        inter = (rng.uniform(size=n) < 0.25).astype(np.int64)
        eps[e] = _episode(rng, n, e % 2, bool(e % 3), inter)
    eps[8] = _episode(rng, 30, 0, True, np.ones(30, np.int64))  # a demonstration
    return eps


def pistar_labels(episodes: dict[int, relabel.Episode], lookahead: int, top_percent: float) -> dict[int, list[str]]:
    """The labelling half of pistar's label_advantage_from_vlm.py main(), given the values."""
    advs, autonomous = {}, []
    for e, ep in sorted(episodes.items()):
        human = ep.intervention.astype(bool)
        if np.all(human):
            continue
        n = len(ep.rewards)
        a = np.zeros(n, np.float32)
        for row in range(n):
            end = min(row + lookahead, n)
            reward_sum = float(np.sum(ep.rewards[row:end]))
            future = float(ep.values[row + lookahead]) if row + lookahead < n else 0.0
            a[row] = reward_sum + future - float(ep.values[row])
        advs[e] = a
        autonomous.append(a[~human])
    thr = float(np.percentile(np.concatenate(autonomous), 100.0 - top_percent))
    out = {}
    for e, a in advs.items():
        human = episodes[e].intervention.astype(bool)
        pos = human | (~human & (a >= thr))
        out[e] = ["positive" if p else "negative" for p in pos]
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compat_pistar_reproduces_pistar_labels(seed):
    eps = _dataset(seed)
    got = relabel.label(eps, relabel.Settings(lookahead=7, positive_ratio=0.3, rule="pistar", scope="global"))
    want = pistar_labels(eps, 7, 30.0)
    for e, w in want.items():
        assert got.adv_ind[e].tolist() == w, e
    assert got.skipped == (8,)


def test_interventions_positive_and_demo_episodes_skipped():
    eps = _dataset()
    settings = relabel.Settings(lookahead=5)
    base = relabel.label(eps, settings)
    for e, ep in eps.items():
        human = ep.intervention.astype(bool)
        assert (base.adv_ind[e][human] == labels.POSITIVE).all()
    assert (base.adv_ind[8] == labels.POSITIVE).all()
    # The demo's advantages never reach a pool: making them extreme changes no threshold.
    shifted = dict(eps)
    demo = eps[8]
    shifted[8] = relabel.Episode(np.full(30, -1.0, np.float32), demo.rewards + 5, demo.intervention, demo.task_index, True)
    assert relabel.label(shifted, settings).thresholds == base.thresholds


def test_per_task_thresholds_label_each_task_by_its_own_pool():
    eps = _dataset(3)
    result = relabel.label(eps, relabel.Settings(lookahead=5, positive_ratio=0.3, scope="task"))
    assert set(result.thresholds) == {0, 1}
    for k in (0, 1):
        pool = np.concatenate([result.advantages[e][labels.pooled(ep.intervention)] for e, ep in eps.items() if ep.task_index[0] == k])
        assert result.thresholds[k] == pytest.approx(float(np.float32(np.percentile(pool, 70.0))))
        pos = np.concatenate([result.adv_ind[e][labels.pooled(ep.intervention)] for e, ep in eps.items() if ep.task_index[0] == k])
        assert np.array_equal(pos == labels.POSITIVE, pool >= result.thresholds[k])
        assert np.mean(pos == labels.POSITIVE) >= 0.3 - 1 / pool.size  # ties only ever add positives
    glob = relabel.label(eps, relabel.Settings(lookahead=5, scope="global"))
    assert set(glob.thresholds) == {threshold.GLOBAL}
    summary = result.summary(eps)
    assert summary["skipped_episodes"] == [8]
    assert summary["intervention_frames"] == sum(int(ep.intervention.sum()) for ep in eps.values())


def test_recap_rule_marks_failed_endings_negative():
    n, lookahead = 30, 5
    rewards = np.full(n, -1.0 / n, np.float32)
    rewards[-1] = 0
    t = np.arange(n)
    fail = relabel.Episode(np.full(n, -1.0, np.float32), rewards, np.zeros(n), np.zeros(n), False)
    ok = relabel.Episode((-(n - 1 - t) / n).astype(np.float32), rewards, np.zeros(n), np.zeros(n), True)
    eps = {0: fail, 1: ok}
    ours = relabel.label(eps, relabel.Settings(lookahead=lookahead, positive_ratio=0.5))
    theirs = relabel.label(eps, relabel.Settings(lookahead=lookahead, positive_ratio=0.5, rule="pistar"))
    tail = slice(n - lookahead, n)
    assert (theirs.adv_ind[0][tail] == labels.POSITIVE).all()
    assert (ours.adv_ind[0][n - lookahead : n - 1] == labels.NEGATIVE).all()  # the last frame ties successes at 0
    assert (ours.adv_ind[1] == labels.POSITIVE).all()


def test_length_mismatch_raises():
    bad = relabel.Episode(np.zeros(3), np.zeros(4), np.zeros(3), np.zeros(3), True)
    with pytest.raises(ValueError, match="episode 0: 4 rewards for 3 values"):
        relabel.label({0: bad}, relabel.Settings())
