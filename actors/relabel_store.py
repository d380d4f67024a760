"""The relabel work directory: per-episode value shards, keyed so a stale one is never reused.

    <output>.relabel/work/<key>/episode_000042.npy   float32 (T,) values of episode 42

The key hashes everything the values depend on (source fingerprint, checkpoint content, config,
precision, chunking, camera mapping). A shard is written to a temporary name and renamed, so a
killed run leaves only whole shards; a rerun with the same key loads them and infers the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from etils import epath

from recap_ray.data import versions
from recap_ray.models import checkpoints

logger = logging.getLogger(__name__)

_SAMPLE = 1 << 20


def side_dir(output: str | Path) -> Path:
    """`<output>.relabel`: work shards, plots and TensorBoard logs of a relabel bound for `output`."""
    output = Path(output)
    return output.parent / f"{output.name}.relabel"


def tree_key(root: epath.PathLike) -> str:
    """Content hash of a file or directory tree (local or gs://): relative names, sizes, files up to
    2 MiB in full, else first/last MiB."""
    root = epath.Path(root)
    h = hashlib.sha256()
    paths = [root] if root.is_file() else sorted(checkpoints.files(root))
    for path in paths:
        size = path.stat().length
        h.update(f"{path.relative_to(root) if path != root else path.name}\0{size}\0".encode())
        with path.open("rb") as f:
            if size > 2 * _SAMPLE:
                h.update(f.read(_SAMPLE))
                f.seek(-_SAMPLE, 2)
                h.update(f.read(_SAMPLE))
            else:
                h.update(f.read())
    return h.hexdigest()


def work_key(parts: dict[str, Any]) -> str:
    """16 hex digits identifying a set of values: sha256 of `parts` as sorted JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ValueStore:
    """Finished per-episode values of one work key."""

    def __init__(self, output: str | Path, key: str, parts: dict[str, Any] | None = None):
        self.root = side_dir(output) / "work"
        self.dir = self.root / key
        self.key = key
        if self.root.is_dir():
            for stale in sorted(p for p in self.root.iterdir() if p.is_dir() and p.name != key):
                logger.warning("removing stale relabel work %s (made for other inputs)", stale)
                shutil.rmtree(stale)
        self.dir.mkdir(parents=True, exist_ok=True)
        if parts is not None:
            (self.dir / "key.json").write_text(json.dumps(parts, sort_keys=True, indent=1, default=str))

    def path(self, episode: int) -> Path:
        return self.dir / f"episode_{episode:06d}.npy"

    def has(self, episode: int, length: int) -> bool:
        """True when a whole shard of `length` values is stored for `episode`."""
        path = self.path(episode)
        if not path.is_file():
            return False
        try:
            return np.load(path, mmap_mode="r").shape == (length,)
        except (ValueError, OSError):
            logger.warning("ignoring unreadable shard %s", path)
            return False

    def save(self, episode: int, values: np.ndarray) -> Path:
        """Store an episode's values atomically (temporary file, fsync, rename)."""
        values = np.asarray(values, np.float32).reshape(-1)
        if not np.isfinite(values).all():
            raise ValueError(f"episode {episode}: value inference produced NaN or inf")
        path = self.path(episode)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, values)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    def load(self, episode: int) -> np.ndarray:
        return np.load(self.path(episode))

    def remove(self) -> None:
        """Drop the work directory (after the version is published)."""
        shutil.rmtree(self.root, ignore_errors=True)


def drop_published_work(output: str | Path) -> Path | None:
    """Remove the work directory a relabel left beside `output` when `output` is the version it published
    (the job was stopped between publishing and cleaning up); returns what was removed, or None."""
    work = side_dir(output) / "work"
    lineage = versions.read_lineage(output)
    if not work.is_dir() or lineage is None or not lineage.get("change", "").startswith("relabel"):
        return None
    published = {lineage["params"].get("value_checkpoint_key")} | {p["fingerprint"] for p in lineage["parents"]}
    for key_file in work.glob("*/key.json"):
        parts = json.loads(key_file.read_text())
        if {parts.get("checkpoint"), parts.get("source")} <= published:
            shutil.rmtree(work)
            return work
    return None
