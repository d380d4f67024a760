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
from recap_ray.data import recap_columns, versions, writer


class SchemaMismatch(ValueError):
    """Sources that cannot be merged; the message names the dataset and field."""


def _schema(ds: dataset_mod.Dataset) -> dict[str, tuple]:
    return {k: (v["dtype"], tuple(v["shape"])) for k, v in ds.features.items()}


# What to do about a source whose features differ from the first's (appended to SchemaMismatch).
SAME_STAGE = ("; merge data recorded alike (the same cameras and columns) at the same stage (raw, prepared or "
              "relabelled: merge the prepared versions, then relabel)")  # fmt: skip
SAME_RECORDING = "; only data recorded alike merges (the same fps, cameras, image sizes and vector widths)"


def _missing(key: str, lacking: object) -> str:
    """What to do when dataset `lacking` has no feature `key` that another source has."""
    if key in recap_columns.COLUMNS:
        return f"; add the RECAP columns with `python -m jobs.prepare --input {lacking} --output NEW_DIR` and merge that"
    return SAME_STAGE


def check_compatible(datasets: list[dataset_mod.Dataset]) -> None:
    """Raise SchemaMismatch naming the first field where a source differs from the first, and what to do."""
    ref = datasets[0]
    for ds in datasets[1:]:
        if ds.fps != ref.fps:
            raise SchemaMismatch(f"{ds.root}: field 'fps' is {ds.fps}, {ref.root} has {ref.fps}{SAME_RECORDING}")
        a, b = _schema(ref), _schema(ds)
        for key in sorted(set(a) | set(b)):
            if key not in b:
                raise SchemaMismatch(f"{ds.root}: feature {key!r} is missing (present in {ref.root})"
                                     f"{_missing(key, ds.root)}")  # fmt: skip
            if key not in a:
                raise SchemaMismatch(f"{ds.root}: feature {key!r} is not in {ref.root}{_missing(key, ref.root)}")
            if a[key] != b[key]:
                raise SchemaMismatch(f"{ds.root}: feature {key!r} is {b[key]}, {ref.root} has {a[key]} (dtype, "
                                     f"shape){SAME_RECORDING}")  # fmt: skip


def check_distinct(sources: list[Path]) -> list[str]:
    """The sources' content fingerprints; raises ValueError when one is given twice (the same directory or a copy
    of it): its episodes would be in the merge twice, weighted double in training."""
    prints = [versions.fingerprint(source) for source in sources]
    for i, key in enumerate(prints):
        first = prints.index(key)
        if first < i:
            same = "the same dataset" if Path(sources[i]).resolve() == Path(sources[first]).resolve() else "a copy of it"
            raise ValueError(f"{sources[i]}: source {i + 1} is {same} as source {first + 1} ({sources[first]}); "
                             "its episodes would be merged twice")  # fmt: skip
    return prints


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
