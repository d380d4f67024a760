"""python -m jobs.convert --input IN --output OUT --to v3.0|v2.1: convert a dataset's layout."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jobs import cli
from recap_ray.data import convert


@dataclass(frozen=True)
class Config:
    input: Path
    """Source dataset (only read)."""
    output: Path
    """New dataset directory; must not exist."""
    to: Literal["v3.0", "v2.1"]
    """Target layout version."""


def main(config: Config) -> Path:
    return convert.convert(config.input, config.output, config.to, progress=True)


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
