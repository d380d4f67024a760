"""python -m jobs.merge --sources A B ... --output OUT: merge datasets with the same schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from jobs import cli
from recap_ray.data import merge


@dataclass(frozen=True)
class Config:
    sources: tuple[Path, ...]
    """Datasets to merge, in order (only read)."""
    output: Path
    """New dataset directory; must not exist."""
    to: Literal["v3.0", "v2.1"] | None = None
    """Layout of the output (default: the first source's)."""


def main(config: Config) -> Path:
    return merge.merge(list(config.sources), config.output, config.to, progress=True)


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
