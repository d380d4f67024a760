"""python -m jobs.collect --endpoint ws://HOST:PORT --rollouts N --output DIR [--seed S]

DAgger rollouts of a served policy on the simulated handover task: the policy drives (executing
`replan_steps` actions of every chunk it returns over openpi's websocket protocol), the simulated
operator corrects it when its chunks drift from the expert's plan or the task stalls
(intervention = 1 on corrected frames). Writes a new LeRobot dataset like `jobs.make_dataset`'s:
three camera videos, the task string, the five RECAP columns, episode-level success and kind
"policy_rollout" in the episode metadata; its lineage records the config (not the API key) and
the server's metadata (which names the checkpoint). A connection-level failure (connection closed,
no reply within `reply_timeout_s`) reconnects and records that rollout again from its seed, up to
`max_retries` times; a rollout that still fails stops the job with nothing written.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from pathlib import Path
from typing import Literal

import tqdm

from jobs import cli, evaluate, make_dataset
from recap_ray import checks
from recap_ray.data import writer
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
    image_layout: env_lib.ImageLayout = "chw"
    """Image layout in the request: chw as openpi's Aloha policies expect, or hwc."""
    reply_timeout_s: float = 300.0
    """Seconds to wait for a reply (the first may include a server-side compile), then reconnect."""
    max_retries: int = 3
    """Times a rollout is recorded again after a connection-level failure of the server."""
    task: world.TaskConfig = world.TaskConfig()
    """The simulated task; must match what the policy was trained on."""
    dagger: session.DaggerConfig = session.DaggerConfig()
    """The correcting operator."""

    def __post_init__(self) -> None:
        checks.at_least(self, rollouts=1, seed=0, replan_steps=1, max_retries=0)
        checks.positive(self, "reply_timeout_s")


def record(policy: evaluation.Policy, config: Config, output: Path) -> Path:
    """Record `config.rollouts` DAgger rollouts driven by `policy` into a new dataset at `output`; on a
    failure nothing is left there (nor in the writer's staging directory)."""
    environment = env_lib.HandoverEnv(config.task)
    driver = session.PolicyDriver(policy, config.task, config.replan_steps, config.image_layout)
    out = writer.DatasetWriter(output, fps=config.task.fps, features=make_dataset.features(config.task),
                               version=config.format, robot_type="yam_sim")  # fmt: skip
    successes = rescued = interventions = frames = 0
    try:
        for i in tqdm.tqdm(range(config.rollouts), desc="rollouts", unit="ep"):
            seed = (config.seed, COLLECT_STREAM, i)
            try:
                attempt = functools.partial(session.record_dagger, environment, seed, driver, config.dagger)
                episode = evaluation.with_retries(attempt, policy, config.max_retries, f"rollout {i}")
            except Exception as err:
                raise evaluation.EpisodeFailed(f"rollout {i} (seed {list(seed)}) failed: {err}; {i} of "
                                               f"{config.rollouts} rollouts were completed, nothing was written to "
                                               f"{output}") from err
            out.add_episode(make_dataset.columns(episode), task=config.task.prompt,
                            meta={"success": episode.success, "kind": "policy_rollout", "seed": list(seed)})
            successes += int(episode.success)
            rescued += int(episode.success and episode.intervention.any())
            interventions += int(episode.intervention.sum())
            frames += episode.length
        root = out.finalize(lineage=lineage(policy, config))
    except BaseException:
        shutil.rmtree(out.staging, ignore_errors=True)  # the next run would clear it anyway; leave nothing behind
        raise
    logger.info("wrote %s: %d/%d rollouts successful (%d after a correction), intervention rate %.3f",
                root, successes, config.rollouts, rescued, interventions / frames)
    return root


def lineage(policy: evaluation.Policy, config: Config) -> dict:
    """The dataset's lineage record: the config without the API key, and the metadata of a served policy."""
    record = {"job": "collect", "config": {k: v for k, v in make_dataset.plain(dataclasses.asdict(config)).items()
                                           if k != "api_key"}}  # fmt: skip
    metadata = getattr(policy, "metadata", None)
    if metadata is not None:
        record["server"] = make_dataset.plain(metadata)
    return record


def main(config: Config) -> Path:
    """Connect to the endpoint, record the rollouts; returns the dataset root."""
    if config.output.exists():
        raise FileExistsError(f"{config.output}: already exists; datasets are never overwritten, choose a new output path")
    with evaluate.connect(config.endpoint, config.api_key, config.reply_timeout_s) as client:
        return record(client, config, config.output)


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
