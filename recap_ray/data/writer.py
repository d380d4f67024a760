"""Write LeRobot v2.1 or v3.0 datasets an episode at a time, published atomically.

Everything is written into a staging directory beside the target and renamed into place by
`finalize`, so a crash leaves either no dataset or a whole one; a rerun clears the stale
staging directory and writes the same files again. While a process writes, it holds a lock on the
staging directory, so a second job bound for the same target stops with an error instead of clearing
the first one's files; a failed write removes its staging directory.
"""

from __future__ import annotations

import fcntl
import io
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import lerobot_v3, lerobot_v21, video
from recap_ray.data import meta as meta_mod
from recap_ray.data import stats as stats_mod

LINEAGE_FILE = "meta/recap_ray.json"
_MB = 1024 * 1024


def staging_dir(root: Path) -> Path:
    """Where a dataset bound for `root` is written before it is published."""
    return root.parent / f".{root.name}.partial"


def _busy(root: Path) -> FileExistsError:
    return FileExistsError(f"{root}: another job is writing it (its staging directory {staging_dir(root)} is locked); "
                           "wait for it to finish, or stop it and run this again")  # fmt: skip


def _lock(root: Path) -> int | None:
    """A descriptor of `root`'s staging directory holding an exclusive flock (dropped by the kernel when the
    process dies); None on a filesystem without locks."""
    try:
        fd = os.open(staging_dir(root), os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:  # removed by another job clearing it
        raise _busy(root) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _busy(root) from None
    except OSError:
        os.close(fd)
        return None
    return fd


def claim_staging(root: Path) -> int | None:
    """Make `root`'s staging directory, empty and locked by this process until `release` (or its end): a stale
    one left by a job that died is cleared; one that a running job writes raises FileExistsError, and so does a
    file where a directory above `root` should be."""
    above = next(p for p in root.parents if p.exists())  # the nearest existing ancestor ('.' or '/' at last)
    if not above.is_dir():
        raise FileExistsError(f"{root}: cannot be created, {above} is a file; choose another output path")
    staging = staging_dir(root)
    if staging.exists():
        stale = _lock(root)
        shutil.rmtree(staging)
        release(stale)
    try:
        staging.mkdir(parents=True)
    except FileExistsError:
        raise _busy(root) from None
    fd = _lock(root)
    if fd is not None and os.fstat(fd).st_ino != staging.stat().st_ino:  # cleared and remade by another job meanwhile
        release(fd)
        raise _busy(root)
    if root.exists():  # published by another job meanwhile
        shutil.rmtree(staging)
        release(fd)
        raise FileExistsError(f"{root}: already exists; versions are never overwritten")
    return fd


def release(fd: int | None) -> None:
    """Drop the lock `claim_staging` took."""
    if fd is not None:
        os.close(fd)


class DatasetWriter:
    """Build a dataset at `root` (which must not exist) from raw episodes or from another dataset's episodes."""

    def __init__(
        self,
        root: str | Path,
        *,
        fps: int,
        features: dict[str, dict],
        version: str = meta_mod.V30,
        robot_type: str | None = None,
        video_codec: str = video.DEFAULT_CODEC,
        data_files_size_mb: int = lerobot_v3.DATA_FILES_SIZE_MB,
        video_files_size_mb: int = lerobot_v3.VIDEO_FILES_SIZE_MB,
    ):
        self.root = Path(root)
        if self.root.exists():
            raise FileExistsError(f"{self.root}: already exists; datasets are never overwritten, choose a new output path")
        self.layout = dataset_mod.layout(version)
        self.version, self.fps, self.robot_type, self.codec = version, int(fps), robot_type, video_codec
        user = {k: dict(v) for k, v in features.items() if k not in feats.DEFAULT_FEATURES}
        self.features = feats.with_defaults(user)
        self.schema = feats.arrow_schema(self.features)
        self.staging = staging_dir(self.root)
        self._lock = claim_staging(self.root)
        (self.staging / "meta").mkdir()
        self.tasks: list[str] = []
        self.episodes: list[meta_mod.Episode] = []
        self._frames = 0
        self._data_mb, self._video_mb = data_files_size_mb, video_files_size_mb
        self._data_file: tuple[int, int] = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._videos: dict[str, tuple[tuple[int, int], video.Concatenator]] = {}
        self._durations: dict[Path, float] = {}  # of source video files (v3.0 sources share one across episodes)
        self._done = False

    @property
    def video_keys(self) -> list[str]:
        return feats.video_keys(self.features)

    # -- episodes -------------------------------------------------------------------------

    def _task_indices(self, task: str | Sequence[str], length: int) -> np.ndarray:
        per_frame = [task] * length if isinstance(task, str) else list(task)
        if len(per_frame) != length:
            raise feats.FeatureError(f"episode {len(self.episodes)}: {len(per_frame)} task strings for {length} frames")
        out = np.empty(length, np.int64)
        for i, t in enumerate(per_frame):
            if t not in self.tasks:
                self.tasks.append(t)
            out[i] = self.tasks.index(t)
        return out

    def _table(self, columns: dict[str, Any], task_index: np.ndarray, frame_index: np.ndarray, timestamp: np.ndarray) -> pa.Table:
        n = len(task_index)
        ep = len(self.episodes)
        defaults = {
            "timestamp": timestamp.astype(np.float32),
            "frame_index": frame_index.astype(np.int64),
            "episode_index": np.full(n, ep, np.int64),
            "index": np.arange(self._frames, self._frames + n, dtype=np.int64),
            "task_index": task_index,
        }
        arrays = []
        for field in self.schema:
            spec = self.features[field.name]
            values = defaults[field.name] if field.name in defaults else columns[field.name]
            try:
                arrays.append(feats.to_arrow(field.name, spec, values, n))
            except feats.FeatureError as err:
                raise feats.FeatureError(f"episode {ep}: {err}") from err
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def add_episode(self, columns: dict[str, Any], task: str | Sequence[str], meta: dict | None = None) -> int:
        """Append one episode from raw arrays; video and image keys take uint8 (T, H, W, 3)."""
        user = [k for k in self.features if k not in feats.DEFAULT_FEATURES]
        missing = [k for k in user if k not in columns]
        extra = [k for k in columns if k not in self.features]
        if missing or extra:
            raise feats.FeatureError(f"episode {len(self.episodes)}: columns missing {missing}, not in features {extra}")
        lengths = {k: len(columns[k]) for k in user}
        n = next(iter(lengths.values()))
        if any(v != n for v in lengths.values()) or n == 0:
            raise feats.FeatureError(f"episode {len(self.episodes)}: columns have different or zero lengths {lengths}")
        visual: dict[str, np.ndarray] = {}
        cols = dict(columns)
        for key in feats.visual_keys(self.features):
            frames = np.asarray(columns[key])
            h, w, c = feats.image_hwc(self.features[key])
            if frames.dtype != np.uint8 or frames.shape != (n, h, w, c):
                raise feats.FeatureError(
                    f"episode {len(self.episodes)}: {key!r} frames are {frames.dtype} {frames.shape}, info.json wants uint8 {(n, h, w, c)}"
                )
            visual[key] = frames
            if self.features[key]["dtype"] == "image":
                cols[key] = [_png_cell(f, i, self.version) for i, f in enumerate(frames)]
        frame_index = np.arange(n)
        table = self._table(cols, self._task_indices(task, n), frame_index, frame_index / self.fps)
        vstats = {k: stats_mod.image_stats(f[stats_mod.sample_indices(n)], self._quantiles) for k, f in visual.items()}
        sources = {k: visual[k] for k in self.video_keys}
        return self._write(table, sources, vstats, meta or {})

    def add_episode_from(
        self, source: dataset_mod.Dataset, episode: int, table: pa.Table | None = None, meta: dict | None = None
    ) -> int:
        """Append `episode` of `source` (its rows replaced by `table` when given), remuxing its videos."""
        src_ep = source.meta.episode(episode)
        table = source.episode_table(episode) if table is None else table
        n = table.num_rows
        where = f"{source.root / source.layout.data_file(source.meta, episode)}, episode {episode}"
        if n != src_ep.length:
            raise feats.FeatureError(f"{where}: {n} rows, its metadata says {src_ep.length}")
        missing = [name for name in self.schema.names if name not in table.column_names]
        if missing:
            raise feats.FeatureError(f"{where}: columns {missing} are missing (info.json lists them)")
        task_index = table.column("task_index").to_pylist()
        bad = {i for i in task_index if i is None or not 0 <= i < len(source.meta.tasks)}
        bad = sorted(bad, key=lambda i: (i is not None, i))
        if bad:
            raise feats.FeatureError(
                f"{where}: column 'task_index' holds {bad}, the dataset has tasks 0..{len(source.meta.tasks) - 1}"
            )
        tasks = [source.meta.tasks[i] for i in task_index]
        columns = {name: table.column(name) for name in table.column_names}
        new = self._table(
            columns,
            self._task_indices(tasks, n),
            feats.column_to_numpy(table.column("frame_index")),
            feats.column_to_numpy(table.column("timestamp")),
        )
        vstats = {}
        for key in feats.visual_keys(self.features):
            if key in src_ep.stats:
                vstats[key] = src_ep.stats[key]
            else:
                frames = source.frames(episode, key, stats_mod.sample_indices(n))
                vstats[key] = stats_mod.image_stats(frames, self._quantiles)
        sources = {k: source.video_segment(episode, k) for k in self.video_keys}
        extra = dict(src_ep.extra)
        extra.update(meta or {})
        try:
            return self._write(new, sources, vstats, extra)
        except video.VideoError as err:
            raise video.VideoError(f"{source.root}, episode {episode}: {err}") from err

    @property
    def _quantiles(self) -> bool:
        return self.version == meta_mod.V30

    def _write(self, table: pa.Table, videos: dict[str, Any], vstats: dict, extra: dict) -> int:
        ep = len(self.episodes)
        n = table.num_rows
        ep_stats: dict[str, stats_mod.Stats] = {}
        for key, spec in self.features.items():
            if spec["dtype"] in ("image", "video"):
                ep_stats[key] = vstats[key]
            elif spec["dtype"] != "string":
                ep_stats[key] = stats_mod.numeric_stats(feats.column_to_numpy(table.column(key)), self._quantiles)
        tasks = list(dict.fromkeys(self.tasks[i] for i in table.column("task_index").to_pylist()))
        episode = meta_mod.Episode(ep, n, tasks, ep_stats, dict(extra))
        if self.version == meta_mod.V21:
            self._write_v21(episode, table, videos)
        else:
            self._write_v3(episode, table, videos)
        self.episodes.append(episode)
        self._frames += n
        return ep

    def _write_v21(self, episode: meta_mod.Episode, table: pa.Table, videos: dict[str, Any]) -> None:
        m = self._meta()
        path = self.staging / lerobot_v21.data_file(m, episode.index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for key, src in videos.items():
            dst = self.staging / lerobot_v21.video_file(m, episode.index, key)
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(src, video.Segment):
                if src.from_s == 0.0 and abs(video.duration_s(src.path) - src.to_s) < 1e-6:
                    video.link_or_copy(src.path, dst)
                else:
                    video.cut(src.path, src.from_s, src.to_s, dst, self.fps, self.codec)
            else:
                video.encode(dst, src, self.fps, self.codec)

    def _write_v3(self, episode: meta_mod.Episode, table: pa.Table, videos: dict[str, Any]) -> None:
        loc = episode.location
        size = self.staging / lerobot_v3.DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
        if self._data_writer is not None and size.stat().st_size + table.nbytes >= self._data_mb * _MB:
            self._data_writer.close()
            self._data_writer = None
            self._data_file = lerobot_v3.next_file(*self._data_file)
        if self._data_writer is None:
            path = self.staging / lerobot_v3.DATA_PATH.format(chunk_index=self._data_file[0], file_index=self._data_file[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self.schema, compression="snappy")
        self._data_writer.write_table(table, row_group_size=max(table.num_rows, 1))
        loc["data/chunk_index"], loc["data/file_index"] = self._data_file
        loc["dataset_from_index"], loc["dataset_to_index"] = self._frames, self._frames + table.num_rows
        tmp = self.staging / "tmp"
        for key, src in videos.items():
            if isinstance(src, video.Segment):
                path, from_s, to_s = src.path, src.from_s, src.to_s
            else:
                path, from_s, to_s = tmp / f"{key}.mp4", 0.0, None
                video.encode(path, src, self.fps, self.codec)
            signature, keyframe = video.remux_info(path, from_s)
            if to_s is not None and not keyframe:  # re-encoded with our codec, which may need a file of its own
                recut = tmp / f"{key}.recut.mp4"
                video.reencode(path, from_s, to_s, recut, self.fps, self.codec)
                path, from_s, to_s = recut, 0.0, None
                signature = video.remux_info(path)[0]
            (chunk_file, concat) = self._video_file(key, path, signature, from_s, to_s)
            span = concat.append(path, from_s, to_s)
            loc[f"videos/{key}/chunk_index"], loc[f"videos/{key}/file_index"] = chunk_file
            loc[f"videos/{key}/from_timestamp"], loc[f"videos/{key}/to_timestamp"] = span
        shutil.rmtree(tmp, ignore_errors=True)

    def _video_file(self, key: str, incoming: Path, signature: tuple[Any, ...], from_s: float,
                    to_s: float | None) -> tuple[tuple[int, int], video.Concatenator]:  # fmt: skip
        """The open mp4 for `key`, rotated when the segment [from_s, to_s) of `incoming` would fill it
        (its bytes estimated pro rata from the file's) or when `incoming` (of `signature`) cannot be remuxed into it."""
        current = self._videos.get(key)
        if current is not None:
            index, concat = current
            nbytes = incoming.stat().st_size
            if to_s is not None:
                if incoming not in self._durations:
                    self._durations[incoming] = video.duration_s(incoming)
                nbytes = int(nbytes * min(1.0, (to_s - from_s) / max(self._durations[incoming], 1e-9)))
            full = concat.size_bytes() + nbytes >= self._video_mb * _MB
            if not full and concat.accepts(signature):
                return current
            concat.close()
            index = lerobot_v3.next_file(*index)
        else:
            index = (0, 0)
        path = self.staging / lerobot_v3.VIDEO_PATH.format(video_key=key, chunk_index=index[0], file_index=index[1])
        self._videos[key] = (index, video.Concatenator(path))
        return self._videos[key]

    # -- metadata -------------------------------------------------------------------------

    def _meta(self) -> meta_mod.Meta:
        info = self.layout.build_info(self.features, self.fps, self.robot_type, len(self.episodes), self._frames, len(self.tasks))
        return meta_mod.Meta(info, self.tasks, self.episodes)

    def finalize(self, lineage: dict | None = None) -> Path:
        """Write metadata, then publish the dataset at `root` with one rename."""
        if self._done:
            raise RuntimeError(f"{self.root}: finalize called twice")
        if not self.episodes:
            raise ValueError(f"{self.root}: no episodes were added")
        if self._data_writer is not None:
            self._data_writer.close()
        for _, concat in self._videos.values():
            concat.close()
        m = self._meta()
        for key in self.video_keys:
            first = self.layout.video_segment(self.staging, m, 0, key).path
            m.features[key]["info"] = video.probe(first)
        m.stats = stats_mod.aggregate_features([e.stats for e in self.episodes])
        self.layout.write_meta(self.staging, m)
        if lineage is not None:
            meta_mod.write_json(self.staging / LINEAGE_FILE, lineage, indent=2)
        meta_mod.fsync_tree(self.staging)
        self.staging.rename(self.root)
        self._done = True
        release(self._lock)
        return self.root

    def abort(self) -> None:
        """Give up a write that failed: close the open files, remove the staging directory, release the lock."""
        if self._done:
            return
        if self._data_writer is not None:
            self._data_writer.close()
        for _, concat in self._videos.values():
            concat.close()
        shutil.rmtree(self.staging, ignore_errors=True)
        self._done = True
        release(self._lock)


def _png_cell(frame: np.ndarray, index: int, version: str) -> dict:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="PNG")
    sep = "-" if version == meta_mod.V30 else "_"
    return {"bytes": buf.getvalue(), "path": f"frame{sep}{index:06d}.png"}
