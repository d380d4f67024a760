"""In-memory dataset metadata shared by the v2.1 and v3.0 layouts."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recap_ray.data import features as feats
from recap_ray.data import stats as stats_mod

V21 = "v2.1"
V30 = "v3.0"
VERSIONS = (V21, V30)


class DatasetError(ValueError):
    """A dataset that does not follow its layout; the message names the file and field."""


@dataclass
class Episode:
    """One episode's metadata: length, tasks, per-feature stats, extra keys, and (v3.0) file locations."""

    index: int
    length: int
    tasks: list[str]
    stats: dict[str, stats_mod.Stats] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    location: dict[str, Any] = field(default_factory=dict)


@dataclass
class Meta:
    """info.json, the task list, the episodes and aggregated stats of one dataset."""

    info: dict[str, Any]
    tasks: list[str]
    episodes: list[Episode]
    stats: dict[str, stats_mod.Stats] | None = None

    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def fps(self) -> int:
        return int(self.info["fps"])

    @property
    def features(self) -> dict[str, dict]:
        return self.info["features"]

    @property
    def video_keys(self) -> list[str]:
        return feats.video_keys(self.features)

    @property
    def visual_keys(self) -> list[str]:
        return feats.visual_keys(self.features)

    @property
    def total_frames(self) -> int:
        return sum(e.length for e in self.episodes)

    def episode(self, index: int) -> Episode:
        if not 0 <= index < len(self.episodes):
            raise DatasetError(f"episode {index} out of range: dataset has {len(self.episodes)} episodes")
        return self.episodes[index]


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: invalid JSON ({err})") from err


def write_json(path: Path, obj: Any, indent: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=indent, ensure_ascii=False))


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DatasetError(f"{path}: line {n} is not JSON ({err})") from err
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def detect_version(root: Path) -> str:
    """The codebase_version of the dataset at `root`, checked to be one we read."""
    info = read_json(Path(root) / "meta" / "info.json")
    version = info.get("codebase_version")
    if version not in VERSIONS:
        raise DatasetError(f"{root}/meta/info.json: codebase_version {version!r} is not one of {VERSIONS}")
    return version


def fsync_tree(root: Path) -> None:
    """Flush every file under `root` to disk before it is published by a rename."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
