"""Normalization statistics for state and actions, streamed, in openpi's norm_stats.json form.

Mean and std merge batch moments exactly (Chan et al.); q01 and q99 come from per-dimension
histograms of fixed size whose range widens as data arrives (as openpi's RunningStats does),
so memory stays flat however large the dataset.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath
from tqdm import tqdm

from recap_ray.data import features as feats

NUM_BINS = 5000
STATE_KEY = "observation.state"
ACTION_KEY = "action"
OPENPI_KEYS = {"state": STATE_KEY, "actions": ACTION_KEY}
PROVENANCE_KEY = "recap_ray"  # beside "norm_stats": {"actions": "stored" | "chunks" | "delta_chunks", ...}


@dataclass(frozen=True)
class NormStats:
    """Per-dimension statistics of one array key."""

    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    min: np.ndarray | None = None
    max: np.ndarray | None = None


class RunningStats:
    """Streaming per-dimension mean, std, min, max and histogram quantiles of (N, D) batches."""

    def __init__(self, num_bins: int = NUM_BINS):
        self.num_bins = num_bins
        self.count = 0
        self._mean: np.ndarray | None = None
        self._m2: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._hist: np.ndarray | None = None
        self._edges: np.ndarray | None = None  # (D, num_bins + 1)

    def update(self, batch: np.ndarray) -> None:
        x = np.asarray(batch, np.float64)
        x = x.reshape(len(x), -1)
        if len(x) == 0:
            return
        bad = ~np.isfinite(x).all(axis=1)
        if bad.any():
            raise ValueError(f"norm stats: row {int(np.flatnonzero(bad)[0])} of the batch holds NaN or inf")
        n, mean, m2 = len(x), x.mean(0), ((x - x.mean(0)) ** 2).sum(0)
        if self._mean is None:
            self.count, self._mean, self._m2 = n, mean, m2
            self._min, self._max = x.min(0), x.max(0)
            self._edges = _edges(self._min, self._max, self.num_bins)
            self._hist = np.zeros((x.shape[1], self.num_bins))
        else:
            if x.shape[1] != self._mean.shape[0]:
                raise ValueError(f"norm stats: batch has {x.shape[1]} dims, earlier batches had {self._mean.shape[0]}")
            total = self.count + n
            delta = mean - self._mean
            self._mean = self._mean + delta * n / total
            self._m2 = self._m2 + m2 + delta**2 * self.count * n / total
            self.count = total
            lo, hi = np.minimum(self._min, x.min(0)), np.maximum(self._max, x.max(0))
            if (lo < self._min).any() or (hi > self._max).any():
                self._rebin(lo, hi)
            self._min, self._max = lo, hi
        for d in range(x.shape[1]):
            self._hist[d] += np.histogram(x[:, d], bins=self._edges[d])[0]

    def _rebin(self, lo: np.ndarray, hi: np.ndarray) -> None:
        new_edges = _edges(lo, hi, self.num_bins)
        for d in range(len(lo)):
            centers = 0.5 * (self._edges[d, :-1] + self._edges[d, 1:])
            self._hist[d] = np.histogram(centers, bins=new_edges[d], weights=self._hist[d])[0]
        self._edges = new_edges

    def quantile(self, q: float) -> np.ndarray:
        """Per-dimension q-quantile, read off the histogram (error at most one bin width)."""
        out = np.empty(self._hist.shape[0])
        for d, hist in enumerate(self._hist):
            cdf = np.cumsum(hist)
            k = int(np.searchsorted(cdf, q * cdf[-1], side="left"))
            k = min(k, self.num_bins - 1)
            below = cdf[k - 1] if k else 0.0
            frac = (q * cdf[-1] - below) / hist[k] if hist[k] else 0.0
            out[d] = self._edges[d, k] + frac * (self._edges[d, k + 1] - self._edges[d, k])
        return out

    def result(self) -> NormStats:
        if self._mean is None or self.count < 2:
            raise ValueError("norm stats need at least two samples")
        return NormStats(
            mean=self._mean,
            std=np.sqrt(self._m2 / self.count),
            q01=self.quantile(0.01),
            q99=self.quantile(0.99),
            min=self._min,
            max=self._max,
        )


def _edges(lo: np.ndarray, hi: np.ndarray, num_bins: int) -> np.ndarray:
    hi = np.where(hi > lo, hi, lo + 1e-10)
    return np.linspace(lo, hi, num_bins + 1, axis=1)


def dumps(stats: dict[str, NormStats], computed_as: Mapping[str, Any] | None = None) -> str:
    """openpi's norm_stats.json text: {"norm_stats": {key: {mean, std, q01, q99}}}, plus how the actions were
    computed under PROVENANCE_KEY when known (openpi's reader ignores keys it does not know)."""
    body = {
        key: {"mean": s.mean.tolist(), "std": s.std.tolist(), "q01": s.q01.tolist(), "q99": s.q99.tolist()}
        for key, s in stats.items()
    }
    data: dict[str, Any] = {"norm_stats": body}
    if computed_as is not None:
        data[PROVENANCE_KEY] = dict(computed_as)
    return json.dumps(data, indent=2)


def save(path: str | Path, stats: dict[str, NormStats], computed_as: Mapping[str, Any] | None = None) -> None:
    """Write openpi's norm_stats.json atomically (a temporary file renamed over it: a crash leaves no half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(dumps(stats, computed_as))
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: epath.PathLike) -> dict[str, NormStats]:
    """Read openpi's norm_stats.json (a local file or one in a bucket); a missing or null field (openpi's z-score
    stats have q01/q99 null) is an error naming the key."""
    path = epath.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: norm stats file is missing")
    data = json.loads(path.read_text())
    if "norm_stats" not in data:
        raise ValueError(f"{path}: no top-level 'norm_stats' key")
    out = {}
    for key, s in data["norm_stats"].items():
        # openpi writes q01/q99 null for z-score stats (pi0); pi0.5 normalises with quantiles, and openpi's
        # Normalize(use_quantiles=True) refuses such stats (transforms._assert_quantile_stats)
        missing = [f for f in ("mean", "std", "q01", "q99") if s.get(f) is None]
        if missing:
            raise ValueError(f"{path}: norm_stats[{key!r}] lacks {missing} (pi0.5 needs the q01/q99 quantiles)")
        out[key] = NormStats(**{f: np.asarray(s[f], np.float64) for f in ("mean", "std", "q01", "q99")})
    return out


def computed_as(path: epath.PathLike) -> dict[str, Any] | None:
    """How a norm_stats.json we wrote computed its actions (PROVENANCE_KEY); None for a file without it (openpi's)."""
    marker = json.loads(epath.Path(path).read_text()).get(PROVENANCE_KEY)
    return dict(marker) if isinstance(marker, Mapping) else None


def compute(dataset: object, keys: dict[str, str] | None = None, progress: bool = False) -> dict[str, NormStats]:
    """Stream the dataset an episode at a time; `keys` maps openpi names to columns."""
    keys = keys or OPENPI_KEYS
    missing = [col for col in keys.values() if col not in dataset.features]
    if missing:
        raise ValueError(f"{dataset.root}: norm stats columns {missing} are not features of the dataset; its "
                         f"features: {sorted(dataset.features)}")  # fmt: skip
    running = {name: RunningStats() for name in keys}
    tables = dataset.iter_episode_tables()
    for ep, table in tqdm(tables, total=dataset.num_episodes, desc="norm stats", disable=not progress):
        for name, col in keys.items():
            try:
                running[name].update(feats.column_to_numpy(table.column(col)))
            except ValueError as err:
                raise ValueError(f"{dataset.root}, episode {ep}, column {col!r}: {err}") from err
    return {name: r.result() for name, r in running.items()}
