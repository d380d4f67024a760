"""Where trained weights live: run directories, step directories, params and assets.

A training run directory (written by `recap_ray.train`, read by relabel and serve):

    RUN_DIR/run.json                      kind ("value"|"policy"), config, dataset, step, restarts, checkpoints
    RUN_DIR/checkpoints/<step>/params/    orbax item; policy: openpi's params/ tree,
                                          value: pistar's {params, ema_params, step}
    RUN_DIR/checkpoints/<step>/train_state/  optimizer state, EMA, step (resume only)
    RUN_DIR/checkpoints/<step>/data/      loader position (resume only)
    RUN_DIR/checkpoints/<step>/assets/<asset_id>/norm_stats.json   openpi's norm-stats layout (policy)
    RUN_DIR/checkpoints/<step>/assets/tokenizer.model              the sentencepiece model it was trained with

A step directory is openpi's `<checkpoint_dir>/<step>`, so openpi tools load `params/` and
`assets/` from it directly. RUN_DIR may be a local path or a cloud URI (`gs://bucket/run`): paths
here are `etils.epath` paths, which reach buckets through fsspec. Orbax finalizes a local step by
renaming its temporary directory, and a gs:// step (written in place) by adding
`commit_success.txt`; `steps` asks orbax which steps are finalized, so a save in progress is never
resolved.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
import orbax.checkpoint as ocp
from etils import epath

# epath reaches gs:// and s3:// through fsspec, whose per-process listing cache never sees what other
# writers add (train workers, orbax's arrays through TensorStore): a driver that looked at RUN_DIR before
# a run would read its run.json as missing and find no checkpoint after it. Bucket listings are read fresh.
for _protocol in ("gs", "s3"):
    fsspec.config.conf.setdefault(_protocol, {}).setdefault("use_listings_cache", False)

RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
PARAMS_ITEM = "params"
TRAIN_STATE_ITEM = "train_state"
DATA_ITEM = "data"
ASSETS_DIR = "assets"
NORM_STATS_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.model"


def absolute(path: epath.PathLike) -> epath.Path:
    """`path` as every process of a job can open it: a local path made absolute, a URI (gs://...) unchanged."""
    path = epath.Path(path)
    return path if "://" in os.fspath(path) else path.resolve()


def absolute_if_here(path: str | None) -> str | None:
    """A path that exists on this machine made absolute; a URI, a name (`bundle`, `none`) or None kept.

    For paths handed to Ray workers, which run in other directories (Ray Train changes into its own).
    """
    return str(Path(path).resolve()) if path is not None and "://" not in path and Path(path).exists() else path


def files(directory: epath.PathLike) -> Iterator[epath.Path]:
    """Every file under `directory` (iterdir, not rglob: epath has no recursive glob in buckets)."""
    for p in epath.Path(directory).iterdir():
        if p.is_dir():
            yield from files(p)
        else:
            yield p


def checkpoints_dir(run_dir: epath.PathLike) -> epath.Path:
    """`RUN_DIR/checkpoints`."""
    return epath.Path(run_dir) / CHECKPOINTS_DIR


def steps(run_dir: epath.PathLike) -> list[int]:
    """The finished checkpoint steps of a run, ascending (empty when none)."""
    return sorted(ocp.step.checkpoint_steps(checkpoints_dir(run_dir)))


def is_run_dir(path: epath.PathLike) -> bool:
    """True for a training run directory (has run.json or checkpoints/)."""
    path = epath.Path(path)
    return (path / RUN_FILE).is_file() or checkpoints_dir(path).is_dir()


def resolve(path: epath.PathLike, step: int | None = None) -> epath.Path:
    """A step directory from a run directory (its latest checkpoint, or `step`) or a step directory."""
    path = epath.Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"no checkpoint or run directory at {path}")
    if (path / PARAMS_ITEM).is_dir():
        if step is not None and path.name != str(step):
            raise ValueError(f"{path} is the checkpoint of step {path.name}, not {step}")
        return path
    if not is_run_dir(path):
        raise FileNotFoundError(f"{path}: neither a run directory ({RUN_FILE}, {CHECKPOINTS_DIR}/) nor a checkpoint ({PARAMS_ITEM}/)")
    found = steps(path)
    if not found:
        raise FileNotFoundError(f"{path}: run directory has no finished checkpoint under {CHECKPOINTS_DIR}/")
    if step is not None and step not in found:
        raise FileNotFoundError(f"{path}: no checkpoint for step {step}; saved steps {found}")
    return checkpoints_dir(path) / str(found[-1] if step is None else step)


def params_dir(step_dir: epath.PathLike) -> epath.Path:
    """`<step>/params`."""
    return epath.Path(step_dir) / PARAMS_ITEM


def norm_stats_file(step_dir: epath.PathLike, asset_id: str) -> epath.Path:
    """`<step>/assets/<asset_id>/norm_stats.json` (openpi's layout)."""
    return epath.Path(step_dir) / ASSETS_DIR / asset_id / NORM_STATS_FILE


def tokenizer_file(step_dir: epath.PathLike) -> epath.Path:
    """`<step>/assets/tokenizer.model`."""
    return epath.Path(step_dir) / ASSETS_DIR / TOKENIZER_FILE


def saved_ns(step_dir: epath.PathLike) -> int | None:
    """When orbax committed this step (ns since the epoch, from its step metadata), which tells a step apart from
    one of the same number written by a later run at the same path; None for a checkpoint without (openpi's own)."""
    try:
        return ocp.metadata.get_step_metadata(step_dir).commit_timestamp_nsecs
    except ValueError:
        return None


def run_info(step_dir: epath.PathLike) -> dict[str, Any] | None:
    """The run.json of the run a step directory belongs to, or None for a loose checkpoint."""
    step_dir = epath.Path(step_dir)
    run_file = step_dir.parent.parent / RUN_FILE
    if step_dir.parent.name != CHECKPOINTS_DIR or not run_file.is_file():
        return None
    return json.loads(run_file.read_text())
