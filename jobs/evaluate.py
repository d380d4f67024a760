"""python -m jobs.evaluate --endpoint ws://HOST:PORT --episodes K [--output DIR]

Closed-loop evaluation on the simulated handover task of a policy served over openpi's websocket
protocol, or of a local scripted baseline (`--policy expert|degraded|random`, no endpoint).
Writes summary.json (success rate, Wilson 95% interval, mean episode length) and episodes.mp4
(the first few episodes, three cameras side by side) to the output directory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Literal

import tqdm

from jobs import cli
from recap_ray.serve import ws_client
from recap_ray.sim import env as env_lib
from recap_ray.sim import evaluation, policies, recording, scripted, world

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Config:
    endpoint: str | None = None
    """Policy server, e.g. ws://127.0.0.1:8000; without one, `policy` runs locally."""
    policy: Literal["expert", "degraded", "random"] = "expert"
    """Local baseline used when no endpoint is given."""
    api_key: str | None = None
    """Sent as `Authorization: Api-Key <key>`, as openpi-client does."""
    episodes: int = 50
    """Number of evaluation episodes."""
    replan_steps: int = 5
    """Actions executed from each chunk before asking the policy again."""
    horizon: int = 10
    """Chunk length of the local baselines."""
    seed: int = 0
    """Evaluation seed; episode i starts from (seed, 2, i)."""
    video_episodes: int = 3
    """Episodes recorded into episodes.mp4 (0: no video)."""
    image_layout: env_lib.ImageLayout = "chw"
    """Image layout in the request: chw as openpi's Aloha policies expect, or hwc."""
    output: Path = Path("runs/eval")
    """Where summary.json and episodes.mp4 go."""
    task: world.TaskConfig = world.TaskConfig()
    """The simulated task; must match what the policy was trained on."""


def local_policy(config: Config, environment: env_lib.HandoverEnv) -> evaluation.Policy:
    """The local baseline named by `config.policy`, bound to `environment`."""
    if config.policy == "random":
        return policies.Random(config.seed, config.horizon)
    controller = scripted.Expert(config.task) if config.policy == "expert" else scripted.Degraded(config.task)
    return policies.Scripted(environment, controller, config.horizon, seed=config.seed)


def main(config: Config) -> dict:
    """Run the evaluation, write its outputs; returns the summary."""
    environment = env_lib.HandoverEnv(config.task)
    client = ws_client.WebsocketClientPolicy(config.endpoint, api_key=config.api_key) if config.endpoint else None
    policy = client if client is not None else local_policy(config, environment)
    eval_config = evaluation.EvalConfig(config.episodes, config.replan_steps, config.seed, config.video_episodes,
                                        config.image_layout)
    try:
        with tqdm.tqdm(total=config.episodes, desc="episodes", unit="ep") as bar:
            def done(result: evaluation.EpisodeResult) -> None:
                bar.update(1)
                bar.set_postfix(success=result.success)

            result, video = evaluation.evaluate(policy, environment, eval_config, on_episode=done)
    finally:
        if client is not None:
            client.close()
    config.output.mkdir(parents=True, exist_ok=True)
    summary = {"policy": config.endpoint or config.policy, "replan_steps": config.replan_steps, **result.summary()}
    if video is not None:
        summary["video"] = str(recording.write_mp4(config.output / "episodes.mp4", video, config.task.fps))
    (config.output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    low, high = result.ci95
    logger.info("%s: success %.3f [%.3f, %.3f] over %d episodes, mean length %.2f s; wrote %s",
                summary["policy"], result.success_rate, low, high, len(result.episodes),
                summary["mean_episode_s"], config.output)
    return summary


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
