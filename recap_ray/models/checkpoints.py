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
`assets/` from it directly. Orbax finalizes a step by renaming its temporary directory, so a
`<step>` directory with an integer name is a whole checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RUN_FILE = "run.json"
CHECKPOINTS_DIR = "checkpoints"
PARAMS_ITEM = "params"
TRAIN_STATE_ITEM = "train_state"
DATA_ITEM = "data"
ASSETS_DIR = "assets"
NORM_STATS_FILE = "norm_stats.json"
TOKENIZER_FILE = "tokenizer.model"


def checkpoints_dir(run_dir: str | Path) -> Path:
    """`RUN_DIR/checkpoints`."""
    return Path(run_dir) / CHECKPOINTS_DIR


def steps(run_dir: str | Path) -> list[int]:
    """The finished checkpoint steps of a run, ascending (empty when none)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def is_run_dir(path: str | Path) -> bool:
    """True for a training run directory (has run.json or checkpoints/)."""
    path = Path(path)
    return (path / RUN_FILE).is_file() or checkpoints_dir(path).is_dir()


def resolve(path: str | Path, step: int | None = None) -> Path:
    """A step directory from a run directory (its latest checkpoint, or `step`) or a step directory."""
    path = Path(path)
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


def params_dir(step_dir: str | Path) -> Path:
    """`<step>/params`."""
    return Path(step_dir) / PARAMS_ITEM


def norm_stats_file(step_dir: str | Path, asset_id: str) -> Path:
    """`<step>/assets/<asset_id>/norm_stats.json` (openpi's layout)."""
    return Path(step_dir) / ASSETS_DIR / asset_id / NORM_STATS_FILE


def tokenizer_file(step_dir: str | Path) -> Path:
    """`<step>/assets/tokenizer.model`."""
    return Path(step_dir) / ASSETS_DIR / TOKENIZER_FILE


def run_info(step_dir: str | Path) -> dict[str, Any] | None:
    """The run.json of the run a step directory belongs to, or None for a loose checkpoint."""
    run_file = Path(step_dir).parent.parent / RUN_FILE
    if Path(step_dir).parent.name != CHECKPOINTS_DIR or not run_file.is_file():
        return None
    return json.loads(run_file.read_text())
