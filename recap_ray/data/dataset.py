"""One reader for LeRobot v2.1 and v3.0 datasets: metadata, per-episode Arrow tables, and frames.

Columns are read an episode at a time (never the whole dataset); video frames are decoded by
timestamp with PyAV, seeking to the nearest keyframe, with decoders kept open between calls.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa

from recap_ray.data import features as feats
from recap_ray.data import lerobot_v3, lerobot_v21, video
from recap_ray.data import meta as meta_mod

_LAYOUTS: dict[str, ModuleType] = {meta_mod.V21: lerobot_v21, meta_mod.V30: lerobot_v3}


def layout(version: str) -> ModuleType:
    """The module implementing a layout version."""
    if version not in _LAYOUTS:
        raise meta_mod.DatasetError(f"unsupported codebase_version {version!r}; expected one of {meta_mod.VERSIONS}")
    return _LAYOUTS[version]


class Dataset:
    """A LeRobot dataset on disk, opened read-only."""

    def __init__(self, root: str | Path, tolerance_s: float = video.DEFAULT_TOLERANCE_S, max_open_videos: int = 32):
        self.root = Path(root)
        if not self.root.is_dir():
            what = "is a file" if self.root.exists() else "does not exist"
            raise meta_mod.DatasetError(f"{self.root}: {what}; expected a LeRobot dataset directory")
        if not (self.root / "meta" / "info.json").is_file():
            raise meta_mod.DatasetError(f"{self.root}: not a LeRobot dataset (meta/info.json is missing)")
        self.layout = layout(meta_mod.detect_version(self.root))
        self.meta: meta_mod.Meta = self.layout.read_meta(self.root)
        self.tolerance_s = tolerance_s
        self._readers: OrderedDict[Path, video.VideoReader] = OrderedDict()
        self._max_open = max_open_videos
        self._timestamps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._segments: dict[tuple[int, str], video.Segment] = {}  # (episode, key) -> span; metadata only
        self._pool: ThreadPoolExecutor | None = None  # decodes the videos of `frames_of`, made on first use

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def fps(self) -> int:
        return self.meta.fps

    @property
    def features(self) -> dict[str, dict]:
        return self.meta.features

    @property
    def num_episodes(self) -> int:
        return len(self.meta.episodes)

    @property
    def num_frames(self) -> int:
        return self.meta.total_frames

    def episode_table(self, episode: int) -> pa.Table:
        """All non-video columns of one episode, in info.json order."""
        self.meta.episode(episode)
        return self.layout.episode_table(self.root, self.meta, episode)

    def iter_episode_tables(self, episodes: Sequence[int] | None = None) -> Iterator[tuple[int, pa.Table]]:
        for ep in range(self.num_episodes) if episodes is None else episodes:
            yield ep, self.episode_table(ep)

    def column(self, episode: int, key: str) -> np.ndarray:
        """One column of one episode as numpy ((T,) or (T, D))."""
        table = self.episode_table(episode)
        if key not in table.column_names:
            raise meta_mod.DatasetError(f"{self.root}: episode {episode} has no column {key!r}")
        return feats.column_to_numpy(table.column(key))

    def video_segment(self, episode: int, key: str) -> video.Segment:
        if key not in self.meta.video_keys:
            raise meta_mod.DatasetError(f"{self.root}: {key!r} is not a video feature (videos: {self.meta.video_keys})")
        return self.layout.video_segment(self.root, self.meta, episode, key)

    def _reader(self, path: Path) -> video.VideoReader:
        reader = self._readers.pop(path, None) or video.VideoReader(path, self.tolerance_s)
        self._readers[path] = reader
        while len(self._readers) > self._max_open:
            self._readers.popitem(last=False)[1].close()
        return reader

    def _episode_timestamps(self, episode: int) -> np.ndarray:
        ts = self._timestamps.pop(episode, None)
        if ts is None:
            ts = self.column(episode, "timestamp").astype(np.float64)
        self._timestamps[episode] = ts
        if len(self._timestamps) > 256:
            self._timestamps.popitem(last=False)
        return ts

    def frames(self, episode: int, key: str, frame_indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """uint8 frames (N, H, W, 3) of an image or video feature; all frames when no indices."""
        return self._fetch(episode, key, frame_indices)[1]()

    def frames_of(
        self, episode: int, keys: Sequence[str], frame_indices: Sequence[int] | np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """`frames` of several features at the same indices (the cameras of one sample, as
        `LeRobotDataset.__getitem__` returns them), their video files decoded concurrently: one
        thread a file, as PyAV decodes without holding the GIL. With cores to spare this pays at
        camera size: 640x480 AV1 ran 1.5x faster than a `frames` call a key at the same CPU
        time; at 320x240, where a decode is short, the threads' hand-offs cost ~1.5x the CPU for
        no gain (BENCHMARKS.md, Data)."""
        if len(keys) > self._max_open:  # readers would be evicted (closed) before they decode
            return {key: self.frames(episode, key, frame_indices) for key in keys}
        fetches = {key: self._fetch(episode, key, frame_indices) for key in keys}
        readers = [reader for reader, _ in fetches.values() if reader is not None]
        if len(readers) < 2 or len(set(map(id, readers))) < len(readers):  # nothing to overlap, or a shared file
            return {key: decode() for key, (_, decode) in fetches.items()}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max(len(self.meta.video_keys), 2), thread_name_prefix="video")
        futures = {key: self._pool.submit(decode) for key, (_, decode) in fetches.items()}
        return {key: future.result() for key, future in futures.items()}

    def _fetch(
        self, episode: int, key: str, frame_indices: Sequence[int] | np.ndarray | None
    ) -> tuple[video.VideoReader | None, Callable[[], np.ndarray]]:
        """Check a request and resolve its video reader (None for images) in this thread; the
        returned call decodes, touching only that reader."""
        ep = self.meta.episode(episode)
        idx = np.arange(ep.length) if frame_indices is None else np.asarray(frame_indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= ep.length):
            raise meta_mod.DatasetError(f"{self.root}: episode {episode} has {ep.length} frames, asked for {idx.tolist()}")
        spec = self.features.get(key)
        if spec is None or spec["dtype"] not in ("image", "video"):
            raise meta_mod.DatasetError(f"{self.root}: {key!r} is not an image or video feature")
        if spec["dtype"] == "image":
            column = self.episode_table(episode).column(key)
            return None, lambda: np.stack([_decode_png(column[int(i)].as_py(), key, episode, int(i)) for i in idx])
        seg = self._segments.get((episode, key))
        if seg is None:
            seg = self._segments[(episode, key)] = self.video_segment(episode, key)
        timestamps = seg.from_s + self._episode_timestamps(episode)[idx]
        reader = self._reader(seg.path)

        def decode() -> np.ndarray:
            try:
                return reader.frames_at(timestamps)
            except video.VideoError as err:
                raise video.VideoError(f"episode {episode}, {key}: {err}") from err

        return reader, decode

    def frame(self, episode: int, key: str, frame_index: int) -> np.ndarray:
        return self.frames(episode, key, [frame_index])[0]


def _decode_png(cell: dict | None, key: str, episode: int, frame: int) -> np.ndarray:
    from PIL import Image

    if not cell or not cell.get("bytes"):
        raise meta_mod.DatasetError(f"episode {episode}, column {key!r}, frame {frame}: image has no bytes")
    with Image.open(io.BytesIO(cell["bytes"])) as image:
        return np.asarray(image.convert("RGB"))


def open(root: str | Path, tolerance_s: float = video.DEFAULT_TOLERANCE_S) -> Dataset:  # noqa: A001 - mirrors builtins for `dataset.open(path)`
    """Open the dataset at `root`, whichever layout version it uses."""
    return Dataset(root, tolerance_s)
