"""python -m jobs.collect --endpoint ws://HOST:PORT --rollouts N --output DIR [--seed S]

DAgger rollouts of a served policy on the simulated handover task: the policy drives (executing
`replan_steps` actions of every chunk it returns over openpi's websocket protocol), the simulated
operator corrects it when its chunks drift from the expert's plan or the task stalls
(intervention = 1 on corrected frames). Writes a new LeRobot dataset like `jobs.make_dataset`'s:
three camera videos, the task string, the five RECAP columns, episode-level success and kind
"policy_rollout" in the episode metadata.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Literal

import tqdm

from jobs import cli, make_dataset
from recap_ray.data import writer
from recap_ray.serve import ws_client
from recap_ray.sim import env as env_lib
from recap_ray.sim import evaluation, session, world

logger = logging.getLogger(__name__)

COLLECT_STREAM = 3  # seed stream, apart from demos (0), scripted rollouts (1) and evaluation (2)


@dataclasses.dataclass(frozen=True)
class Config:
    endpoint: str
    """Policy server driving the rollouts, e.g. ws://127.0.0.1:8000."""
    output: Path
    """Dataset root to create (must not exist)."""
    rollouts: int = 50
    """Number of DAgger rollouts."""
    seed: int = 0
    """Base seed; rollout i starts from (seed, 3, i)."""
    replan_steps: int = 5
    """Actions executed from each chunk before asking the policy again."""
    api_key: str | None = None
    """Sent as `Authorization: Api-Key <key>`, as openpi-client does."""
    format: Literal["v3.0", "v2.1"] = "v3.0"
    """LeRobot layout version."""
    task: world.TaskConfig = world.TaskConfig()
    """The simulated task; must match what the policy was trained on."""
    dagger: session.DaggerConfig = session.DaggerConfig()
    """The correcting operator."""


def record(policy: evaluation.Policy, config: Config, output: Path) -> Path:
    """Record `config.rollouts` DAgger rollouts driven by `policy` into a new dataset at `output`."""
    if config.rollouts < 1:
        raise ValueError(f"need rollouts >= 1, got {config.rollouts}")
    environment = env_lib.HandoverEnv(config.task)
    driver = session.PolicyDriver(policy, config.task, config.replan_steps)
    out = writer.DatasetWriter(output, fps=config.task.fps, features=make_dataset.features(config.task),
                               version=config.format, robot_type="yam_sim")  # fmt: skip
    successes = rescued = interventions = frames = 0
    for i in tqdm.tqdm(range(config.rollouts), desc="rollouts", unit="ep"):
        seed = [config.seed, COLLECT_STREAM, i]
        episode = session.record_dagger(environment, tuple(seed), driver, config.dagger)
        out.add_episode(make_dataset.columns(episode), task=config.task.prompt,
                        meta={"success": episode.success, "kind": "policy_rollout", "seed": seed})  # fmt: skip
        successes += int(episode.success)
        rescued += int(episode.success and episode.intervention.any())
        interventions += int(episode.intervention.sum())
        frames += episode.length
    lineage = {"job": "collect", "config": make_dataset.plain(dataclasses.asdict(config))}
    root = out.finalize(lineage=lineage)
    logger.info("wrote %s: %d/%d rollouts successful (%d after a correction), intervention rate %.3f",
                root, successes, config.rollouts, rescued, interventions / frames)
    return root


def main(config: Config) -> Path:
    """Connect to the endpoint, record the rollouts; returns the dataset root."""
    with ws_client.WebsocketClientPolicy(config.endpoint, api_key=config.api_key) as client:
        return record(client, config, config.output)


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
