"""Per-episode feature statistics and their aggregation, as lerobot stores them.

Numeric features reduce over frames; image and video features reduce sampled frames per channel
to shape (3, 1, 1) in [0, 1]. Aggregation weights by frame count (lerobot's `aggregate_stats`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

BASE_STATS = ("min", "max", "mean", "std", "count")
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(q * 100):02d}" for q in QUANTILES)

Stats = dict[str, np.ndarray]


def sample_indices(length: int) -> np.ndarray:
    """Frame indices lerobot samples for image statistics of one episode."""
    if length < 100:
        return np.arange(length)
    n = max(100, min(int(length**0.75), 10000))
    return np.round(np.linspace(0, length - 1, n)).astype(int)


def numeric_stats(values: np.ndarray, quantiles: bool) -> Stats:
    """Stats over axis 0 of (N,) or (N, D) values; (N,) gives shape-(1,) stats."""
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[:, None]
    x = arr.astype(np.float64)
    out: Stats = {
        "min": arr.min(axis=0),
        "max": arr.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([len(arr)], dtype=np.int64),
    }
    if quantiles:
        qs = np.quantile(x, QUANTILES, axis=0) if len(x) > 1 else np.repeat(x.mean(axis=0)[None], len(QUANTILES), 0)
        out.update({k: q for k, q in zip(QUANTILE_KEYS, qs)})
    return out


def image_stats(frames: np.ndarray, quantiles: bool) -> Stats:
    """Per-channel stats of uint8 frames (N, H, W, C), scaled to [0, 1], shaped (C, 1, 1).

    Works on 256-bin pixel histograms: exact for uint8 (quantiles interpolate linearly between
    order statistics, as np.quantile does) and far cheaper than sorting float pixels.
    """
    frames = np.asarray(frames)
    longest = max(frames.shape[1], frames.shape[2])
    if longest >= 300:
        step = int(longest / 150)
        frames = frames[:, ::step, ::step]
    channels = frames.shape[-1]
    flat = frames.reshape(-1, channels)
    hist = np.stack([np.bincount(flat[:, c], minlength=256) for c in range(channels)]).astype(np.float64)
    levels = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(1)
    mean = hist @ levels / n
    var = np.maximum(hist @ levels**2 / n - mean**2, 0.0)
    nonzero = hist > 0
    out: Stats = {
        "min": np.array([levels[np.flatnonzero(r)[0]] for r in nonzero]),
        "max": np.array([levels[np.flatnonzero(r)[-1]] for r in nonzero]),
        "mean": mean,
        "std": np.sqrt(var),
    }
    if quantiles:
        cdf = np.cumsum(hist, axis=1)

        def at_rank(rank: np.ndarray) -> np.ndarray:
            return np.array([levels[np.searchsorted(cdf[c], rank[c], side="right")] for c in range(channels)])

        for key, q in zip(QUANTILE_KEYS, QUANTILES):
            pos = (n - 1) * q
            lo, hi = np.floor(pos), np.ceil(pos)
            out[key] = at_rank(lo) + (pos - lo) * (at_rank(hi) - at_rank(lo))
    stats = {k: v.reshape(-1, 1, 1) for k, v in out.items()}
    stats["count"] = np.array([len(frames)], dtype=np.int64)
    return stats


def aggregate(per_episode: list[Stats]) -> Stats:
    """Combine episode stats: min/max elementwise, count-weighted mean, pooled variance and quantiles."""
    if not per_episode:
        raise ValueError("no episode statistics to aggregate")
    counts = np.array([float(s["count"][0]) for s in per_episode])
    weights = counts / counts.sum()
    shape = np.asarray(per_episode[0]["mean"]).shape

    def w(key: str) -> np.ndarray:
        return np.stack([np.asarray(s[key], np.float64) for s in per_episode])

    weights_b = weights.reshape(-1, *([1] * len(shape)))
    means = w("mean")
    mean = (weights_b * means).sum(0)
    var = (weights_b * (w("std") ** 2 + (means - mean) ** 2)).sum(0)
    out: Stats = {
        "min": np.min(np.stack([s["min"] for s in per_episode]), axis=0),
        "max": np.max(np.stack([s["max"] for s in per_episode]), axis=0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(counts.sum())], dtype=np.int64),
    }
    for key in QUANTILE_KEYS:
        if all(key in s for s in per_episode):
            out[key] = (weights_b * w(key)).sum(0)
    return out


def aggregate_features(per_episode: list[dict[str, Stats]]) -> dict[str, Stats]:
    """Aggregate every feature present in all episodes."""
    keys = [k for k in per_episode[0] if all(k in e for e in per_episode)] if per_episode else []
    return {k: aggregate([e[k] for e in per_episode]) for k in keys}


def to_json(stats: dict[str, Stats]) -> dict[str, dict[str, Any]]:
    return {f: {k: np.asarray(v).tolist() for k, v in s.items()} for f, s in stats.items()}


def from_json(obj: dict[str, dict[str, Any]]) -> dict[str, Stats]:
    return {f: {k: np.asarray(v) for k, v in s.items()} for f, s in obj.items()}
