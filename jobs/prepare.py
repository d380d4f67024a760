"""python -m jobs.prepare --input IN --output OUT: add or recompute the RECAP columns as a new version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jobs import cli
from recap_ray.data import dataset, prepare
from recap_ray.data.prepare import DefaultSuccess, ValueScale


@dataclass(frozen=True)
class Config:
    input: Path
    """Source dataset (only read)."""
    output: Path
    """New dataset version; must not exist."""
    demos: bool = False
    """Treat every episode as a successful human demonstration (intervention 1, adv_ind positive)."""
    success_file: Path | None = None
    """JSON object {"episode_index": true|false|1|0} overriding episode success (unlisted episodes: the rules
    below), or a JSON list of the successful episode indices (every other episode failed)."""
    success_column: str | None = None
    """Per-frame bool/0-1 column (e.g. lerobot's next.success): an episode succeeded iff it is true on its last frame."""
    default_success: DefaultSuccess = "failure"
    """Episodes with no success flag (not in --success-file, no --success-column, no 'success' metadata or
    column): failures, as a raw episode without a SUCCESS marker is (spec recap.md §1), successes, or an error."""
    intervention_column: str = "intervention"
    """Per-frame bool/0-1 column copied into `intervention` (a missing `intervention` column means all autonomous)."""
    value_scale: ValueScale = "episode"
    """Steps that map to value -1: each episode's own length (limb, pistar) or its task's longest episode (the paper)."""


def read_success_file(path: Path, dataset_root: Path) -> dict[int, bool]:
    """episode index -> success from a JSON object of booleans/0-1 or a list of successful episodes of `dataset_root`."""
    if path.is_dir():
        raise ValueError(f"--success-file {path}: a directory, not a JSON file")
    if not path.exists():
        raise FileNotFoundError(f"--success-file {path}: no such file")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"success file {path}: not JSON ({err})") from err
    if isinstance(raw, list):
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in raw):
            raise ValueError(f"success file {path}: a list must hold episode indices (integers), got {raw!r}")
        with dataset.open(dataset_root) as ds:
            return {i: i in raw for i in range(ds.num_episodes)} | {i: True for i in raw}
    if not isinstance(raw, dict):
        raise ValueError(f"success file {path}: expected an object {{episode: true|false}} or a list of episodes, "
                         f"got {type(raw).__name__}")  # fmt: skip
    out: dict[int, bool] = {}
    for key, value in raw.items():
        if not key.strip().lstrip("-").isdigit():
            raise ValueError(f"success file {path}: key {key!r} is not an episode index")
        if isinstance(value, float) or value not in (True, False):  # JSON true/false, or 0/1
            raise ValueError(f"success file {path}, episode {key}: success must be true, false, 0 or 1, got {value!r}")
        out[int(key)] = bool(value)
    return out


def main(config: Config) -> Path:
    success = None if config.success_file is None else read_success_file(config.success_file, config.input)
    return prepare.prepare(config.input, config.output, demos=config.demos, success=success,
                           value_scale=config.value_scale, default_success=config.default_success,
                           success_column=config.success_column, intervention_column=config.intervention_column)  # fmt: skip


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
