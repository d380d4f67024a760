"""python -m jobs.demo_data --output DIR: the data stage of a RECAP round on generated data.

Generates a simulated YAM DAgger dataset (demos plus rollouts with corrections), recomputes its
RECAP columns as a new version with lineage, exports a v2.1 copy for openpi/pistar users,
validates every version and writes openpi norm stats. Steps already done are skipped, so a
crashed run resumes where it stopped; a rerun with other settings than those the raw data's lineage
records is refused.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from jobs import cli, make_dataset
from recap_ray.data import convert, dataset, norm_stats, prepare, validate, versions

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Config:
    output: Path
    """Directory for the dataset versions and norm stats."""
    demos: int = 6
    """Expert demonstrations to generate."""
    rollouts: int = 24
    """DAgger rollouts to generate."""
    seed: int = 0
    """Seed of the simulated data."""


def check_raw(raw: Path, config: make_dataset.Config) -> None:
    """Refuse existing raw data generated with other settings (except where and with how many workers)."""
    recorded = (versions.read_lineage(raw) or {}).get("config")
    if recorded is None:
        raise ValueError(f"{raw}: exists without make_dataset lineage; use a new output")
    ignored = ("output", "workers")
    now = {k: v for k, v in make_dataset.plain(dataclasses.asdict(config)).items() if k not in ignored}
    differing = make_dataset.differences({k: v for k, v in recorded.items() if k not in ignored}, now)
    if differing:
        raise ValueError(f"{raw}: generated with other settings ({'; '.join(differing)}); "
                         "use a new output or the settings it was made with")


def main(config: Config) -> dict[str, Path]:
    """Run (or resume) the data stage; returns the paths of the versions and the norm stats."""
    out = config.output
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--output {out} is a file; the data stage writes a directory of dataset versions")
    paths = {"raw": out / "raw", "prepared": out / "prepared", "prepared_v21": out / "prepared_v21"}
    raw_config = make_dataset.Config(paths["raw"], demos=config.demos, rollouts=config.rollouts, seed=config.seed)
    if paths["raw"].exists():
        check_raw(paths["raw"], raw_config)
    else:
        out.mkdir(parents=True, exist_ok=True)
        make_dataset.main(raw_config)
    if not paths["prepared"].exists():
        prepare.prepare(paths["raw"], paths["prepared"])
    if not paths["prepared_v21"].exists():
        convert.convert(paths["prepared"], paths["prepared_v21"], "v2.1", progress=True)
    for name, path in paths.items():
        issues = validate.validate(path)
        if issues:
            raise SystemExit(f"{path}: {len(issues)} validation error(s), first: {issues[0]}")
    paths["norm_stats"] = out / "norm_stats.json"
    with dataset.open(paths["prepared"]) as ds:
        norm_stats.save(paths["norm_stats"], norm_stats.compute(ds, progress=True))
        successes = sum(bool(e.extra.get("success")) for e in ds.meta.episodes)
        print(f"\n{'version':<14}{'layout':<8}{'episodes':>9}{'frames':>8}  parent")
        for name in ("raw", "prepared", "prepared_v21"):
            with dataset.open(paths[name]) as d:
                record = versions.read_lineage(paths[name]) or {}
                parent = ", ".join(Path(p["path"]).name for p in record.get("parents", [])) or "-"
                print(f"{name:<14}{d.version:<8}{d.num_episodes:>9}{d.num_frames:>8}  {parent}")
        print(f"\nsuccessful episodes: {successes}/{ds.num_episodes}; all versions valid; norm stats: {paths['norm_stats']}")
    return paths


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
