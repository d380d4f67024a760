"""Copy-on-write dataset versions with lineage.

A change never touches its parent: `derive` writes a complete new dataset (parquet rewritten,
videos hard-linked, or copied where links fail) into a staging directory, records lineage in
`meta/recap_ray.json`, and publishes it with one rename.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import meta as meta_mod
from recap_ray.data import stats as stats_mod
from recap_ray.data import video, writer

_SAMPLE = 1 << 20


def fingerprint(root: str | Path) -> str:
    """Content hash of a dataset: meta and parquet in full; videos by size and first/last MiB.

    Lineage (`meta/recap_ray.json`) is left out, so two writes of the same content agree.
    """
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == writer.LINEAGE_FILE:
            continue
        h.update(rel.encode() + b"\0")
        size = path.stat().st_size
        h.update(str(size).encode() + b"\0")
        with path.open("rb") as f:
            if path.suffix == ".mp4" and size > 2 * _SAMPLE:
                h.update(f.read(_SAMPLE))
                f.seek(-_SAMPLE, 2)
                h.update(f.read(_SAMPLE))
            else:
                for block in iter(lambda: f.read(_SAMPLE), b""):
                    h.update(block)
    return h.hexdigest()


def lineage(parents: list[Path], change: str, params: dict[str, Any] | None = None,
            fingerprints: list[str] | None = None) -> dict[str, Any]:
    """The lineage record of a new version: parents with fingerprints (computed unless given), the change,
    command and time."""
    fingerprints = fingerprints or [fingerprint(p) for p in parents]
    return {
        "parents": [{"path": str(Path(p).resolve()), "fingerprint": f} for p, f in zip(parents, fingerprints, strict=True)],
        "change": change,
        "params": params or {},
        "command": shlex.join(sys.argv),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def read_lineage(root: str | Path) -> dict[str, Any] | None:
    """The lineage record of a dataset, or None for one we did not write."""
    path = Path(root) / writer.LINEAGE_FILE
    return meta_mod.read_json(path) if path.exists() else None


EpisodeTransform = Callable[[int, pa.Table, meta_mod.Episode], pa.Table]


def derive(
    parent: str | Path,
    output: str | Path,
    transform: EpisodeTransform,
    *,
    change: str,
    params: dict[str, Any] | None = None,
    new_features: dict[str, dict] | None = None,
    episode_meta: Callable[[meta_mod.Episode], None] | None = None,
) -> Path:
    """Write `output` as `parent` with each episode's rows replaced by `transform(episode, table, meta)`.

    The layout (version, files, video offsets) is kept; `new_features` adds or redefines columns.
    The transform must keep the row count; `episode_meta` may update each episode's metadata.
    Returns the published path.
    """
    parent, output = Path(parent), Path(output)
    if output.exists():
        raise FileExistsError(f"{output}: already exists; versions are never overwritten")
    staging = writer.staging_dir(output)
    fd = writer.claim_staging(output)
    try:
        with dataset_mod.open(parent) as ds:
            m = copy.deepcopy(ds.meta)
            for key, spec in (new_features or {}).items():
                feats.check_spec(key, spec)
                if key in feats.DEFAULT_FEATURES:
                    raise feats.FeatureError(f"feature {key!r} is a default feature and cannot be redefined")
            user = {k: v for k, v in m.features.items() if k not in feats.DEFAULT_FEATURES}
            user.update(new_features or {})
            m.info["features"] = {**user, **feats.DEFAULT_FEATURES}
            _write(ds, m, parent, staging, transform, episode_meta)
        meta_mod.write_json(staging / writer.LINEAGE_FILE, lineage([parent], change, params), indent=2)
        meta_mod.fsync_tree(staging)
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # a rerun would clear it anyway; leave nothing behind
        raise
    finally:
        writer.release(fd)
    return output


def _write(ds: dataset_mod.Dataset, m: meta_mod.Meta, parent: Path, staging: Path, transform: EpisodeTransform,
           episode_meta: Callable[[meta_mod.Episode], None] | None) -> None:
    """The files of `derive`'s new version, into `staging` (empty)."""
    for src in sorted((parent / "videos").rglob("*.mp4")) if (parent / "videos").exists() else []:
        video.link_or_copy(src, staging / src.relative_to(parent))
    schema = feats.arrow_schema(m.features)
    written: set[str] = set()  # data files closed so far: each is written in one go, episode by episode
    out: pq.ParquetWriter | None = None
    current: str | None = None  # the data file `out` writes
    try:
        for ep in m.episodes:
            rel = ds.layout.data_file(m, ep.index)
            where = f"{parent / rel}, episode {ep.index}"
            table = transform(ep.index, ds.episode_table(ep.index), ep)
            if table.num_rows != ep.length:
                raise ValueError(f"{where}: transform returned {table.num_rows} rows for {ep.length} frames")
            table = feats.conform_table(table, m.features, where)
            for key, spec in m.features.items():
                if spec["dtype"] not in ("image", "video", "string"):
                    ep.stats[key] = stats_mod.numeric_stats(feats.column_to_numpy(table.column(key)), m.version == meta_mod.V30)
                elif spec["dtype"] == "string":
                    ep.stats.pop(key, None)
            if episode_meta is not None:
                episode_meta(ep)
            if rel != current:
                if out is not None:
                    out.close()
                if rel in written:
                    raise ValueError(f"{where}: the episodes of {rel} are not contiguous; cannot stream it")
                written.add(rel)
                (staging / rel).parent.mkdir(parents=True, exist_ok=True)
                out, current = pq.ParquetWriter(staging / rel, schema, compression="snappy"), rel
            out.write_table(table, row_group_size=max(table.num_rows, 1))  # one episode in memory at a time
    finally:
        if out is not None:
            out.close()
    m.stats = stats_mod.aggregate_features([e.stats for e in m.episodes])
    ds.layout.write_meta(staging, m)
