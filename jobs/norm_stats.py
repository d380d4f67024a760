"""python -m jobs.norm_stats --dataset D [--output FILE]: openpi norm_stats.json for state and actions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from jobs import cli
from recap_ray.data import dataset, norm_stats


@dataclass(frozen=True)
class Config:
    dataset: Path
    """Dataset to read."""
    output: Path | None = None
    """Where to write norm_stats.json (default: next to the dataset, DATASET.norm_stats.json)."""
    state_key: str = norm_stats.STATE_KEY
    """Column holding the state vector."""
    action_key: str = norm_stats.ACTION_KEY
    """Column holding the action vector."""


def main(config: Config) -> Path:
    out = config.output or config.dataset.with_name(config.dataset.name + ".norm_stats.json")
    with dataset.open(config.dataset) as ds:
        stats = norm_stats.compute(ds, {"state": config.state_key, "actions": config.action_key}, progress=True)
    norm_stats.save(out, stats)
    return out


if __name__ == "__main__":
    print(main(cli.parse(Config, __doc__)))
