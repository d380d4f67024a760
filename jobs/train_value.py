"""python -m jobs.train_value --dataset D --config value --run-dir R --num-workers N [--gpus-per-worker G]

Train the RECAP value model (C51 on value_label) on Ray Train; resumable, elastic, preemption-safe.
"""

from __future__ import annotations

import json

from jobs import cli, training


def main(config: training.Config) -> dict:
    return training.run(config, "value")


if __name__ == "__main__":
    print(json.dumps(main(cli.parse(training.Config, __doc__)), indent=2))
