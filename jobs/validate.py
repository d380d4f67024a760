"""python -m jobs.validate DATASET: print every problem in a dataset; exit 1 if there is any."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import tyro

from jobs import cli
from recap_ray.data import validate


@dataclass(frozen=True)
class Config:
    dataset: Annotated[Path, tyro.conf.Positional]
    """LeRobot dataset root (v2.1 or v3.0)."""
    require_recap: bool = True
    """Require the five RECAP columns."""
    check_videos: bool = True
    """Open every mp4 and check its size and duration."""


def main(config: Config) -> int:
    issues = validate.validate(config.dataset, config.require_recap, config.check_videos)
    for issue in issues:
        print(f"ERROR {issue}")
    if any("RECAP column is missing" in issue.message for issue in issues):
        print(f"hint: add the RECAP columns with `python -m jobs.prepare --input {config.dataset} --output NEW_DIR`, "
              "or check a raw dataset with --no-require-recap")  # fmt: skip
    print(f"{config.dataset}: {'valid' if not issues else f'{len(issues)} error(s)'}")
    return 1 if issues else 0


if __name__ == "__main__":
    sys.exit(main(cli.parse(Config, __doc__)))
