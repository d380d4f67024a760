"""Check a dataset against its own metadata and the RECAP column rules.

Every finding names the file, episode, column and frame it concerns. Validation only reads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import meta as meta_mod
from recap_ray.data import recap_columns, video

_FINITE_COLUMNS = ("observation.state", "action", "reward", "reward_label", "value_label")


@dataclass(frozen=True)
class Issue:
    """One validation error."""

    file: str
    message: str
    episode: int | None = None
    column: str | None = None
    frame: int | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.episode is not None:
            where.append(f"episode {self.episode}")
        if self.column is not None:
            where.append(f"column {self.column!r}")
        if self.frame is not None:
            where.append(f"frame {self.frame}")
        return f"{', '.join(where)}: {self.message}"


def validate(root: str | Path, require_recap: bool = True, check_videos: bool = True) -> list[Issue]:
    """All problems found in the dataset at `root` (empty when it is valid)."""
    root = Path(root)
    try:
        ds = dataset_mod.open(root)
    except (meta_mod.DatasetError, OSError, KeyError, ValueError) as err:
        return [Issue(str(root / "meta"), f"metadata unreadable: {err}")]
    with ds:
        return list(_validate(ds, require_recap, check_videos))


def _validate(ds: dataset_mod.Dataset, require_recap: bool, check_videos: bool) -> Iterator[Issue]:
    m = ds.meta
    info_path = str(ds.root / "meta" / "info.json")
    for key, expected in (("total_episodes", len(m.episodes)), ("total_frames", m.total_frames), ("total_tasks", len(m.tasks))):
        if m.info.get(key) != expected:
            yield Issue(info_path, f"{key} is {m.info.get(key)}, metadata lists {expected}")
    for key, spec in m.features.items():
        try:
            feats.check_spec(key, spec)
        except feats.FeatureError as err:
            yield Issue(info_path, str(err), column=key)
    if require_recap:
        for name in recap_columns.COLUMNS:
            if name not in m.features:
                yield Issue(info_path, "RECAP column is missing from features", column=name)
    next_index = 0
    frame_times: dict[Path, np.ndarray] = {}  # per video file, demuxed once
    for ep in m.episodes:
        yield from _validate_episode(ds, ep, next_index, require_recap)
        next_index += ep.length
        if check_videos:
            yield from _validate_videos(ds, ep, frame_times)


def _validate_episode(ds: dataset_mod.Dataset, ep: meta_mod.Episode, start: int, require_recap: bool) -> Iterator[Issue]:
    m = ds.meta
    try:
        table = ds.episode_table(ep.index)
    except (meta_mod.DatasetError, feats.FeatureError, pa.ArrowInvalid) as err:
        yield Issue(str(ds.root / ds.layout.data_file(m, ep.index)), str(err), episode=ep.index)
        return
    data_file = str(ds.root / ds.layout.data_file(m, ep.index))  # after reading: it finds a mislabelled file
    try:
        table = feats.conform_table(table, m.features, f"{data_file}, episode {ep.index}")
    except (meta_mod.DatasetError, feats.FeatureError, pa.ArrowInvalid) as err:
        yield Issue(data_file, str(err), episode=ep.index)
        return
    if table.num_rows != ep.length:
        yield Issue(data_file, f"{table.num_rows} rows, metadata says length {ep.length}", episode=ep.index)
        return
    col = {name: feats.column_to_numpy(table.column(name)) for name in table.column_names if m.features[name]["dtype"] != "image"}
    n = ep.length

    def first_bad(mask: np.ndarray) -> int:
        return int(np.flatnonzero(mask)[0])

    checks = (
        ("frame_index", col["frame_index"] != np.arange(n), "frame index gap: expected {exp}, got {got}", np.arange(n)),
        ("episode_index", col["episode_index"] != ep.index, "episode_index {got} in the rows of episode {exp}", np.full(n, ep.index)),
        ("index", col["index"] != np.arange(start, start + n), "global index gap: expected {exp}, got {got}", np.arange(start, start + n)),
    )
    for name, bad, message, expected in checks:
        if bad.any():
            f = first_bad(bad)
            yield Issue(data_file, message.format(exp=expected[f], got=col[name][f]), ep.index, name, f)
    ts = col["timestamp"].astype(np.float64)
    gap = np.abs(ts - np.arange(n) / m.fps) > 1e-4
    if gap.any():
        f = first_bad(gap)
        yield Issue(data_file, f"timestamp {ts[f]:.6f} is not frame_index/fps = {f / m.fps:.6f}", ep.index, "timestamp", f)
    bad_task = (col["task_index"] < 0) | (col["task_index"] >= len(m.tasks))
    if bad_task.any():
        f = first_bad(bad_task)
        yield Issue(data_file, f"task_index {col['task_index'][f]} not in 0..{len(m.tasks) - 1}", ep.index, "task_index", f)
    for name in _FINITE_COLUMNS:
        if name in col:
            x = col[name].astype(np.float64)
            bad = ~np.isfinite(x).reshape(n, -1).all(axis=1)
            if bad.any():
                yield Issue(data_file, "value is NaN or inf", ep.index, name, first_bad(bad))
    if require_recap and all(c in col for c in recap_columns.COLUMNS):
        for issue in recap_columns.check(col):
            if issue.column in _FINITE_COLUMNS and "NaN" in issue.message:
                continue  # already reported above
            yield Issue(data_file, issue.message, ep.index, issue.column, issue.frame)


def _validate_videos(
    ds: dataset_mod.Dataset, ep: meta_mod.Episode, frame_times: dict[Path, np.ndarray]
) -> Iterator[Issue]:
    m = ds.meta
    for key in m.video_keys:
        try:
            seg = ds.video_segment(ep.index, key)
        except (meta_mod.DatasetError, KeyError) as err:
            yield Issue(str(ds.root), f"no video location: {err}", ep.index, key)
            continue
        try:
            info = video.probe(seg.path)
            duration = video.duration_s(seg.path)
            if seg.path not in frame_times:
                frame_times[seg.path] = video.frame_times(seg.path)
        except video.VideoError as err:
            yield Issue(str(seg.path), str(err), ep.index, key)
            continue
        h, w, _ = feats.image_hwc(m.features[key])
        if (info["video.height"], info["video.width"]) != (h, w):
            yield Issue(str(seg.path), f"frames are {info['video.height']}x{info['video.width']}, info.json shape says {h}x{w}", ep.index, key)
        need = seg.from_s + ep.length / m.fps
        if duration + 1e-4 < need:
            yield Issue(str(seg.path), f"video is {duration:.4f}s long, episode needs {need:.4f}s (truncated?)", ep.index, key, int((duration - seg.from_s) * m.fps))
        if abs((seg.to_s - seg.from_s) - ep.length / m.fps) > 1e-3:
            yield Issue(str(seg.path), f"segment spans {seg.to_s - seg.from_s:.4f}s for {ep.length} frames at {m.fps} fps", ep.index, key)
        times = frame_times[seg.path]
        if ds.version == meta_mod.V30:  # a shared file: only the frames inside the episode's span
            tol = video.DEFAULT_TOLERANCE_S
            times = times[(times >= seg.from_s - tol) & (times < seg.to_s - tol)]
        if len(times) != ep.length:
            yield Issue(str(seg.path), f"video has {len(times)} frames, the parquet has {ep.length} rows", ep.index, key)
