"""Convert datasets between the v2.1 and v3.0 layouts.

Parquet columns are carried over unchanged (timestamps and frame indices included). Videos are
remuxed: v2.1 episode files are concatenated into v3.0 files, v3.0 files are cut into per-episode
files starting at pts 0; only a segment that does not start on a keyframe is re-encoded.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from recap_ray.data import dataset as dataset_mod
from recap_ray.data import meta as meta_mod
from recap_ray.data import versions, writer


def source_features(m: meta_mod.Meta) -> dict[str, dict]:
    """User features of a dataset without the keys a writer recomputes (video info, per-feature fps)."""
    out = {}
    for key, spec in m.features.items():
        out[key] = {k: v for k, v in spec.items() if k not in ("info", "video_info", "fps")}
    return out


def convert(src: str | Path, dst: str | Path, to_version: str, progress: bool = False) -> Path:
    """Write `src` in the `to_version` layout at `dst`; `src` is only read."""
    if to_version not in meta_mod.VERSIONS:
        raise ValueError(f"--to must be one of {meta_mod.VERSIONS}, got {to_version!r}")
    with dataset_mod.open(src) as ds:
        w = writer.DatasetWriter(
            dst, fps=ds.fps, features=source_features(ds.meta), version=to_version, robot_type=ds.meta.info.get("robot_type")
        )
        try:
            for ep in tqdm(range(ds.num_episodes), desc=f"convert to {to_version}", disable=not progress):
                w.add_episode_from(ds, ep)
            record = versions.lineage([Path(src)], f"convert {ds.version} -> {to_version}", {"to": to_version})
            return w.finalize(record)
        except BaseException:
            w.abort()
            raise
