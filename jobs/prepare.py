"""python -m jobs.prepare --input IN --output OUT: add or recompute the RECAP columns as a new version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from jobs import cli
from recap_ray.data import prepare
from recap_ray.data.prepare import ValueScale


@dataclass(frozen=True)
class Config:
    input: Path
    """Source dataset (only read)."""
    output: Path
    """New dataset version; must not exist."""
    demos: bool = False
    """Treat every episode as a successful human demonstration (intervention 1, adv_ind positive)."""
    success_file: Path | None = None
    """JSON object {episode_index: true|false} overriding episode success."""
    value_scale: ValueScale = "episode"
    """Steps that map to value -1: each episode's own length (limb, pistar) or its task's longest episode (the paper)."""


def main(config: Config) -> Path:
    success = None
    if config.success_file is not None:
        success = {int(k): bool(v) for k, v in json.loads(config.success_file.read_text()).items()}
    return prepare.prepare(config.input, config.output, demos=config.demos, success=success,
                           value_scale=config.value_scale)


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
