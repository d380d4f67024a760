"""Merge datasets with the same schema into one new dataset.

Tasks are re-indexed by first appearance, episodes renumbered in source order, global indices
rebuilt; per-episode metadata (success and the like) is kept.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from recap_ray.data import convert
from recap_ray.data import dataset as dataset_mod
from recap_ray.data import features as feats
from recap_ray.data import versions, writer


class SchemaMismatch(ValueError):
    """Sources that cannot be merged; the message names the dataset and field."""


def _schema(ds: dataset_mod.Dataset) -> dict[str, tuple]:
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in ds.features.items()}


def check_compatible(datasets: list[dataset_mod.Dataset]) -> None:
    """Raise SchemaMismatch naming the first field where a source differs from the first."""
    ref = datasets[0]
    for ds in datasets[1:]:
        if ds.fps != ref.fps:
            raise SchemaMismatch(f"{ds.root}: field 'fps' is {ds.fps}, {ref.root} has {ref.fps}")
        a, b = _schema(ref), _schema(ds)
        for key in sorted(set(a) | set(b)):
            if key not in b:
                raise SchemaMismatch(f"{ds.root}: feature {key!r} is missing (present in {ref.root})")
            if key not in a:
                raise SchemaMismatch(f"{ds.root}: feature {key!r} is not in {ref.root}")
            if a[key] != b[key]:
                raise SchemaMismatch(f"{ds.root}: feature {key!r} is {b[key]}, {ref.root} has {a[key]} (dtype, shape)")


def check_distinct(sources: list[Path]) -> list[str]:
    """The sources' content fingerprints; raises ValueError when one is given twice (the same directory or a copy
    of it): its episodes would be in the merge twice, weighted double in training."""
    seen: dict[str, int] = {}
    for i, source in enumerate(sources):
        key = versions.fingerprint(source)
        if key in seen:
            same = "the same dataset" if Path(source).resolve() == Path(sources[seen[key]]).resolve() else "a copy of it"
            raise ValueError(f"{source}: source {i + 1} is {same} as source {seen[key] + 1} ({sources[seen[key]]}); "
                             "its episodes would be merged twice")  # fmt: skip
        seen[key] = i
    return list(seen)


def merge(sources: list[str | Path], dst: str | Path, version: str | None = None, progress: bool = False) -> Path:
    """Write the episodes of all `sources`, in order, as one dataset at `dst`; a source given twice is refused."""
    if len(sources) < 1:
        raise ValueError("merge needs at least one source dataset")
    datasets = [dataset_mod.open(s) for s in sources]
    try:
        check_compatible(datasets)
        fingerprints = check_distinct([Path(s) for s in sources])
        ref = datasets[0]
        w = writer.DatasetWriter(
            dst,
            fps=ref.fps,
            features={k: v for k, v in convert.source_features(ref.meta).items() if k not in feats.DEFAULT_FEATURES},
            version=version or ref.version,
            robot_type=ref.meta.info.get("robot_type"),
        )
        total = sum(d.num_episodes for d in datasets)
        try:
            with tqdm(total=total, desc="merge", disable=not progress) as bar:
                for ds in datasets:
                    for ep in range(ds.num_episodes):
                        w.add_episode_from(ds, ep)
                        bar.update()
            record = versions.lineage([Path(s) for s in sources], "merge", {"sources": [str(s) for s in sources]},
                                      fingerprints)  # fmt: skip
            return w.finalize(record)
        except BaseException:
            w.abort()
            raise
    finally:
        for d in datasets:
            d.close()
