"""The end of a relabel (no Ray): label from per-frame values, publish the new version, report.

The new version is the source with `adv_ind` relabelled and two float32 columns added, `value`
(V per frame) and `advantage` (raw N-step advantage), written through `versions.derive` (staging
directory + one rename); its lineage records the checkpoint, N, the ratio, the rule, the scope and
the threshold of every task. Plots go to `<log_dir>/plots/*.png` and `<log_dir>/tensorboard/`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import meta as meta_mod
from recap_ray.data import recap_columns, versions
from recap_ray import tracker
from recap_ray.recap import labels, plots, relabel, threshold

logger = logging.getLogger(__name__)

FEATURES: dict[str, dict] = {
    "value": {"dtype": "float32", "shape": [1], "names": ["value"]},
    "advantage": {"dtype": "float32", "shape": [1], "names": ["advantage"]},
    "adv_ind": recap_columns.FEATURES["adv_ind"],
}
_NEEDED = ("reward", "reward_label", "intervention", "task_index")


def check_source(ds: dataset_mod.Dataset) -> None:
    """Raise unless the dataset has the RECAP columns labelling reads, 0/1 intervention flags and
    task indices of its tasks, naming the episode (the relabel job calls this before inference)."""
    missing = [c for c in recap_columns.COLUMNS if c not in ds.features]
    if missing:
        raise meta_mod.DatasetError(f"{ds.root}: no RECAP columns {missing}; run `python -m jobs.prepare` first")
    for ep in ds.meta.episodes:
        table = ds.episode_table(ep.index)
        flags = feats.column_to_numpy(table.column("intervention")).reshape(-1)
        if not np.isin(flags, (0, 1)).all():
            raise meta_mod.DatasetError(f"{ds.root}, episode {ep.index}: intervention flags must be 0 or 1, "
                                        f"got values {sorted(set(flags.tolist()))}")  # fmt: skip
        tasks = feats.column_to_numpy(table.column("task_index")).reshape(-1)
        unknown = sorted(set(tasks[(tasks < 0) | (tasks >= len(ds.meta.tasks))].tolist()))
        if unknown:
            raise meta_mod.DatasetError(f"{ds.root}, episode {ep.index}: task_index values {unknown} not in the "
                                        f"dataset's tasks (0..{len(ds.meta.tasks) - 1})")  # fmt: skip


def episode_input(ds: dataset_mod.Dataset, episode: int, values: np.ndarray) -> relabel.Episode:
    """Labelling inputs of one episode; success = reward 1 at its last frame (spec recap.md §1)."""
    table = ds.episode_table(episode)
    cols = {k: feats.column_to_numpy(table.column(k)).reshape(-1) for k in _NEEDED}
    v = np.asarray(values, np.float32).reshape(-1)
    if v.size != table.num_rows:
        raise ValueError(f"{ds.root}, episode {episode}: {v.size} values for {table.num_rows} frames")
    return relabel.Episode(
        values=v,
        rewards=cols["reward_label"],
        intervention=cols["intervention"],
        task_index=cols["task_index"],
        success=bool(cols["reward"][-1] > 0),
    )


def stored_values(ds: dataset_mod.Dataset) -> dict[int, np.ndarray]:
    """The `value` column of every episode of a relabelled dataset."""
    if "value" not in ds.features:
        raise meta_mod.DatasetError(f"{ds.root}: no 'value' column; relabel it first (`python -m jobs.relabel`)")
    return {ep.index: ds.column(ep.index, "value").astype(np.float32).reshape(-1) for ep in ds.meta.episodes}


def threshold_table(result: relabel.Result, tasks: list[str]) -> list[dict[str, Any]]:
    """Thresholds for the lineage: one entry per task (or one for all tasks)."""
    return [
        {"task_index": None if k == threshold.GLOBAL else k, "task": "all tasks" if k == threshold.GLOBAL else tasks[k], "threshold": thr}
        for k, thr in sorted(result.thresholds.items())
    ]


def publish(
    source: str | Path,
    output: str | Path,
    values: Mapping[int, np.ndarray],
    settings: relabel.Settings,
    params: dict[str, Any],
    log_dir: str | Path | None = None,
    plot_episodes: int = 6,
) -> tuple[Path, relabel.Result]:
    """Label every episode from `values`, report (plots, TensorBoard), then write `output` as a new version of `source`."""
    with dataset_mod.open(source) as ds:
        check_source(ds)
        missing = [ep.index for ep in ds.meta.episodes if ep.index not in values]
        if missing:
            raise ValueError(f"{source}: no values for episodes {missing[:10]}")
        episodes = {ep.index: episode_input(ds, ep.index, values[ep.index]) for ep in ds.meta.episodes}
        tasks = list(ds.meta.tasks)
    result = relabel.label(episodes, settings)
    summary = result.summary(episodes)
    logger.info("thresholds %s; %s", result.thresholds, summary)

    def transform(index: int, table: pa.Table, ep: meta_mod.Episode) -> pa.Table:
        new = {"value": episodes[index].values, "advantage": result.advantages[index], "adv_ind": result.adv_ind[index]}
        for name, column in new.items():
            arr = feats.to_arrow(name, FEATURES[name], column, table.num_rows)
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, arr)
            else:
                table = table.append_column(name, arr)
        return table

    lineage = {
        **params,
        "lookahead": settings.lookahead,
        "positive_ratio": settings.positive_ratio,
        "rule": settings.rule,
        "stop_at_intervention": settings.stop_at_intervention,
        "threshold_scope": settings.scope,
        "thresholds": threshold_table(result, tasks),
        "summary": summary,
    }
    if log_dir is not None:  # before the version is published: a job killed after the rename would lose them for good
        report(Path(log_dir), episodes, result, tasks, plot_episodes)
    out = versions.derive(source, output, transform, change="relabel: value, advantage, adv_ind", params=lineage, new_features=FEATURES)
    return out, result


def report(log_dir: Path, episodes: Mapping[int, relabel.Episode], result: relabel.Result, tasks: list[str], sample: int) -> dict[str, Path]:
    """PNGs (value curves, advantage histogram, positive fraction) and the same in TensorBoard."""
    order = sorted(episodes)
    picks = sorted({order[int(i)] for i in np.linspace(0, len(order) - 1, min(sample, len(order)))})
    curves = [
        (f"episode {e} ({'success' if episodes[e].success else 'failure'})", episodes[e].values, episodes[e].intervention)
        for e in picks
    ]
    pooled = np.concatenate([result.advantages[e][labels.pooled(episodes[e].intervention)] for e in order])
    named = {("all tasks" if k == threshold.GLOBAL else f"{k} {tasks[k][:24]}"): thr for k, thr in sorted(result.thresholds.items())}
    fractions = {e: result.positive_fraction(e) for e in order}
    images = {"value_curves": plots.value_curves(curves), "positive_fraction": plots.positive_fraction(fractions)}
    if pooled.size:
        images["advantage_histogram"] = plots.advantage_histogram(pooled, named)
    written = {}
    (log_dir / "plots").mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        written[name] = log_dir / "plots" / f"{name}.png"
        written[name].write_bytes(plots.png(image))
    scalars = {f"relabel/threshold/{name}": thr for name, thr in named.items()}
    auto = result.summary(episodes)["autonomous_positive_fraction"]
    if auto is not None:
        scalars["relabel/autonomous_positive_fraction"] = float(auto)
    tb = tracker.TensorBoardTracker(log_dir / "tensorboard")
    try:
        tb.scalars(0, scalars)
        for name, image in images.items():
            tb.image(0, f"relabel/{name}", image)
        if pooled.size:
            tb.histogram(0, "relabel/advantage", pooled)
    finally:
        tb.close()
    logger.info("relabel plots in %s", log_dir)
    return written

