"""python -m jobs.train_policy --dataset D --config pi06_yam_vial_30fps --run-dir R --num-workers N [--gpus-per-worker G]

Fine-tune pi0.5 as pi0.6 (advantage in the prompt, dropped at random) on Ray Train. Checkpoints
are openpi step directories: params/ plus assets/<asset_id>/norm_stats.json, ready to serve.
"""

from __future__ import annotations

import dataclasses
import json

from jobs import cli, training


@dataclasses.dataclass(frozen=True)
class Config(training.Config):
    norm_stats: str | None = None
    """openpi norm_stats.json to train with, local or gs:// (default: computed from the dataset, delta actions, as
    `jobs.norm_stats --config` writes it)."""
    augment: bool = True
    """Random crop/rotate/colour jitter of training images (openpi's)."""


def main(config: Config) -> dict:
    return training.run(config, "policy", norm_stats=config.norm_stats, augment=config.augment)


if __name__ == "__main__":
    print(json.dumps(main(cli.parse(Config, __doc__)), indent=2))
