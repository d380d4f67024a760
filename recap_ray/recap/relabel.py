"""The whole labelling of a dataset from per-frame values: advantages, thresholds, adv_ind.

Arrays in, arrays out (no I/O): the relabel job feeds it values from the model, the rethreshold
job feeds it the `value` column a relabel stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from recap_ray.recap import advantage, labels, threshold


@dataclasses.dataclass(frozen=True)
class Episode:
    """What labelling needs of one episode (all arrays (T,))."""

    values: np.ndarray  # V(o_t) from the value model
    rewards: np.ndarray  # reward_label
    intervention: np.ndarray  # 0/1
    task_index: np.ndarray  # per frame
    success: bool  # the episode ended in success (reward 1 at its last frame)


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to label."""

    lookahead: int = 50  # N of the N-step advantage
    positive_ratio: float = 0.3  # share of autonomous frames labelled positive
    rule: advantage.Rule = "recap"  # "recap": failures charged at the end; "pistar": bootstrap 0
    scope: threshold.Scope = "task"  # one threshold per task, or one global
    stop_at_intervention: bool = False  # autonomous windows end where the operator next takes over


@dataclasses.dataclass(frozen=True)
class Result:
    """Per-episode advantages and labels, the thresholds, and a summary."""

    advantages: dict[int, np.ndarray]
    adv_ind: dict[int, np.ndarray]
    thresholds: dict[int, float]  # task_index (or threshold.GLOBAL) -> thr
    skipped: tuple[int, ...]  # all-intervention episodes

    def positive_fraction(self, episode: int) -> float:
        """Share of an episode's frames labelled positive."""
        return float(np.mean(self.adv_ind[episode] == labels.POSITIVE))

    def summary(self, episodes: Mapping[int, Episode]) -> dict[str, object]:
        """Counts of positive/negative over autonomous and intervention frames, per the spec's report."""
        auto_pos = auto_all = human = 0
        for e, ep in episodes.items():
            mask = labels.intervention_mask(ep.intervention)
            auto_pos += int(np.sum((self.adv_ind[e] == labels.POSITIVE) & ~mask))
            auto_all += int(np.sum(~mask))
            human += int(np.sum(mask))
        return {
            "autonomous_frames": auto_all,
            "autonomous_positive": auto_pos,
            "autonomous_positive_fraction": auto_pos / auto_all if auto_all else None,
            "intervention_frames": human,
            "skipped_episodes": list(self.skipped),
        }


def label(episodes: Mapping[int, Episode], settings: Settings) -> Result:
    """Advantages of every episode, thresholds over the pooled autonomous frames, then labels."""
    advs: dict[int, np.ndarray] = {}
    for e, ep in episodes.items():
        n = np.asarray(ep.values).size
        for name in ("rewards", "intervention", "task_index"):
            if np.asarray(getattr(ep, name)).size != n:
                raise ValueError(f"episode {e}: {np.asarray(getattr(ep, name)).size} {name} for {n} values")
        advs[e] = advantage.episode(ep.rewards, ep.values, settings.lookahead, ep.success, settings.rule,
                                    ep.intervention if settings.stop_at_intervention else None)  # fmt: skip
    order = sorted(episodes)
    if order:
        pool_adv = np.concatenate([advs[e] for e in order])
        pool_task = np.concatenate([np.asarray(episodes[e].task_index, np.int64).reshape(-1) for e in order])
        pool_mask = np.concatenate([labels.pooled(episodes[e].intervention) for e in order])
        table = threshold.thresholds(pool_adv, pool_task, pool_mask, settings.positive_ratio, settings.scope)
    else:
        table = {}
    adv_ind = {
        e: labels.episode(advs[e], episodes[e].intervention, threshold.per_frame(table, episodes[e].task_index))
        for e in order
    }
    skipped = tuple(e for e in order if labels.skipped(episodes[e].intervention))
    return Result(advantages=advs, adv_ind=adv_ind, thresholds=table, skipped=skipped)
