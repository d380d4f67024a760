"""Add or recompute the five RECAP columns, writing a new dataset version.

Episode success comes, first found, from an explicit mapping, a named per-frame success column
(true on the episode's last frame: RLinf's `is_success` rule; lerobot's `next.success` marks the
frame the task is done), the episode metadata key `success`, a per-frame `success` column (true on
any frame), else `default_success`: "failure" by default, as a raw episode without limb's SUCCESS
marker is a failure (spec recap.md §1), or "error". Intervention flags come from the `intervention`
column (or another named bool/0-1 column) when present, else all zero. `demos=True` marks every episode as a
successful, fully human-driven demonstration (limb's `--pistar-demo`). `value_scale="task"`
divides rewards and value targets by the longest episode of each task instead of each episode's
own length (`recap_columns`: the paper's steps-to-success target).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa

from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import meta as meta_mod
from recap_ray.data import recap_columns, versions

logger = logging.getLogger(__name__)

ValueScale = Literal["episode", "task"]
VALUE_SCALES: tuple[str, ...] = ("episode", "task")
DefaultSuccess = Literal["error", "failure", "success"]
DEFAULT_SUCCESSES: tuple[str, ...] = ("error", "failure", "success")


class MissingSuccess(ValueError):
    """An episode whose success flag cannot be found."""


def flag_column(table: pa.Table, name: str, where: str) -> np.ndarray:
    """Column `name` of one episode as a bool array; its values must be booleans or 0/1."""
    if name not in table.column_names:
        raise ValueError(f"{where}: no column {name!r}; columns: {sorted(table.column_names)}")
    raw = feats.column_to_numpy(table.column(name)).reshape(table.num_rows, -1)
    if raw.shape[1] != 1 or raw.dtype == object or not np.isin(raw, (0, 1)).all():
        raise ValueError(f"{where}, column {name!r}: values must be booleans or 0/1 (one per frame)")
    return raw[:, 0].astype(bool)


def episode_success(
    ep: meta_mod.Episode, table: pa.Table, overrides: dict[int, bool] | None, where: str, success_column: str | None = None,
) -> bool | None:
    """Success of one episode: overrides, `success_column`'s last frame, metadata, a `success` column; None if none."""
    if overrides is not None and ep.index in overrides:
        return bool(overrides[ep.index])
    if success_column is not None:
        return bool(flag_column(table, success_column, f"{where}, episode {ep.index}")[-1])
    if "success" in ep.extra and ep.extra["success"] is not None:
        return bool(ep.extra["success"])
    if "success" in table.column_names:
        return bool(np.asarray(feats.column_to_numpy(table.column("success")), bool).any())
    return None


def horizons(episodes: list[meta_mod.Episode], scale: ValueScale) -> dict[int, int | None]:
    """episode index -> the step count that maps to value -1: None (its own length) or its task's longest episode."""
    if scale not in VALUE_SCALES:
        raise ValueError(f"unknown value scale {scale!r}; expected one of {VALUE_SCALES}")
    if scale == "episode":
        return {ep.index: None for ep in episodes}
    longest: dict[tuple[str, ...], int] = {}
    for ep in episodes:
        longest[tuple(ep.tasks)] = max(longest.get(tuple(ep.tasks), 0), ep.length)
    return {ep.index: longest[tuple(ep.tasks)] for ep in episodes}


def prepare(
    src: str | Path, dst: str | Path, demos: bool = False, success: dict[int, bool] | None = None,
    value_scale: ValueScale = "episode", default_success: DefaultSuccess = "failure",
    success_column: str | None = None, intervention_column: str = "intervention",
) -> Path:
    """Write `dst` = `src` with the RECAP columns computed from success and intervention flags."""
    src = Path(src)
    if default_success not in DEFAULT_SUCCESSES:
        raise ValueError(f"unknown default success {default_success!r}; expected one of {DEFAULT_SUCCESSES}")
    with dataset_mod.open(src) as ds:
        unknown = sorted(set(success or {}) - set(range(ds.num_episodes)))
        if unknown:
            raise ValueError(
                f"{src}: success overrides name episodes {unknown}, the dataset has episodes 0..{ds.num_episodes - 1}"
            )
        # Resolve every episode's flags before writing anything, so bad input fails fast.
        flags: dict[int, tuple[bool, np.ndarray]] = {}
        defaulted: list[int] = []
        horizon = horizons(ds.meta.episodes, value_scale)
        for ep in ds.meta.episodes:
            table = ds.episode_table(ep.index)
            if demos:
                flags[ep.index] = (True, np.ones(ep.length, np.int64))
                continue
            ok = episode_success(ep, table, success, str(src), success_column)
            if ok is None:
                if default_success == "error":
                    raise MissingSuccess(
                        f"{src}, episode {ep.index}: no success flag (episode metadata 'success', a 'success' column, "
                        "--success-file, --success-column, or --default-success failure|success)"
                    )
                ok = default_success == "success"
                defaulted.append(ep.index)
            if intervention_column in table.column_names or intervention_column != "intervention":
                inter = flag_column(table, intervention_column, f"{src}, episode {ep.index}").astype(np.int64)
            else:
                inter = np.zeros(ep.length, np.int64)
            flags[ep.index] = (ok, inter)
        if defaulted:
            logger.warning("%s: %d of %d episodes carry no success flag and count as %s (--default-success), e.g. %s",
                           src, len(defaulted), ds.num_episodes, default_success, defaulted[:5])  # fmt: skip

    def transform(index: int, table: pa.Table, ep: meta_mod.Episode) -> pa.Table:
        ok, inter = flags[index]
        cols = recap_columns.compute(ok, inter, horizon[index])
        if demos:
            cols["adv_ind"] = np.full(ep.length, "positive", dtype=object)
        for name in recap_columns.COLUMNS:
            arr = feats.to_arrow(name, recap_columns.FEATURES[name], cols[name], table.num_rows)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
        return table

    def set_success(ep: meta_mod.Episode) -> None:
        ep.extra["success"] = flags[ep.index][0]

    out = versions.derive(
        src,
        dst,
        transform,
        change="prepare: RECAP columns",
        params={"demos": demos, "value_scale": value_scale, "success_overrides": {str(k): v for k, v in (success or {}).items()},
                "default_success": default_success, "success_column": success_column,
                "intervention_column": intervention_column},  # fmt: skip
        new_features=recap_columns.FEATURES,
        episode_meta=set_success,
    )
    return out
