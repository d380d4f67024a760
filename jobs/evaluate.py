"""python -m jobs.evaluate (--endpoint ws://HOST:PORT | --policy expert|degraded|random) --episodes K [--output DIR]

Closed-loop evaluation on the simulated handover task of a policy served over openpi's websocket
protocol (`--endpoint`) or of a local scripted baseline (`--policy`): exactly one of the two.
Each finished episode is appended to episodes.jsonl in the output directory; its first line records
what defines the episodes (the policy, or the server's metadata, seed, replan steps, image layout,
video episodes, task). A rerun into the same output resumes: episodes already there are not run
again, and a differing record is refused. A connection-level failure (connection closed, no reply
within `reply_timeout_s`) reconnects and reruns that episode from its seed, up to `max_retries`
times. Once all episodes are done: summary.json (success rate, Wilson 95% interval, mean episode
length, the server's metadata) and episodes.mp4 (the first few episodes, three cameras side by
side, replayed from their recorded actions).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tqdm

from jobs import cli, make_dataset
from recap_ray import checks
from recap_ray.serve import ws_client
from recap_ray.sim import evaluation, policies, recording, scripted, world
from recap_ray.sim import env as env_lib

logger = logging.getLogger(__name__)

EPISODES_FILE, SUMMARY_FILE, VIDEO_FILE = "episodes.jsonl", "summary.json", "episodes.mp4"


@dataclasses.dataclass(frozen=True)
class Config:
    endpoint: str | None = None
    """Policy server, e.g. ws://127.0.0.1:8000; give this or `policy`."""
    policy: Literal["expert", "degraded", "random"] | None = None
    """Local baseline to evaluate instead of a server; give this or `endpoint`."""
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
    """Where episodes.jsonl, summary.json and episodes.mp4 go."""
    reply_timeout_s: float = 300.0
    """Seconds to wait for a reply (the first may include a server-side compile), then reconnect."""
    max_retries: int = 3
    """Times an episode is run again after a connection-level failure of the server."""
    task: world.TaskConfig = world.TaskConfig()
    """The simulated task; must match what the policy was trained on."""

    def __post_init__(self) -> None:
        if (self.endpoint is None) == (self.policy is None):
            raise ValueError("give exactly one of endpoint (--endpoint, a policy server) and policy (--policy, a local "
                             f"baseline); got endpoint={self.endpoint!r}, policy={self.policy!r}")
        checks.at_least(self, episodes=1, replan_steps=1, horizon=1, seed=0, video_episodes=0, max_retries=0)
        checks.positive(self, "reply_timeout_s")


def local_policy(config: Config, environment: env_lib.HandoverEnv, episode: int) -> evaluation.Policy:
    """The local baseline named by `config.policy` for one episode, bound to `environment`; seeded by
    (seed, episode), so an episode is the same whether or not the ones before it ran here."""
    seed = (config.seed, episode)
    if config.policy == "random":
        return policies.Random(seed, config.horizon)
    controller = scripted.Expert(config.task) if config.policy == "expert" else scripted.Degraded(config.task)
    return policies.Scripted(environment, controller, config.horizon, seed=seed)


def run_record(config: Config, metadata: dict | None) -> dict[str, Any]:
    """What defines the episodes of this evaluation (not their number, the output or the connection
    settings): a rerun resumes only with the same record. A served policy is named by the server's
    metadata, and by the endpoint too when the metadata names no checkpoint."""
    record: dict[str, Any] = {"seed": config.seed, "replan_steps": config.replan_steps,
                              "image_layout": config.image_layout, "video_episodes": config.video_episodes,
                              "task": dataclasses.asdict(config.task)}  # fmt: skip
    if metadata is None:
        record.update(policy=config.policy, horizon=config.horizon)
    else:
        record["server"] = metadata
        if "checkpoint" not in metadata:
            record["endpoint"] = config.endpoint
    return make_dataset.plain(record)


def load_episodes(path: Path, record: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The episodes already in `path` by index (none if it does not exist or is empty); refuses a
    differing record. A torn last line (the run died while writing it) is cut off."""
    if not path.exists():
        return {}
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]
    if len(complete) < len(text):
        with path.open("r+") as f:
            f.truncate(len(complete.encode()))
    lines = [json.loads(line) for line in complete.splitlines()]
    if not lines:
        return {}
    if "record" not in lines[0]:
        raise ValueError(f"{path}: not an evaluation log (its first line must hold the record); use a new output")
    differing = make_dataset.differences(lines[0]["record"], record)
    if differing:
        raise ValueError(f"{path}: holds episodes of another evaluation; differing fields: {'; '.join(differing)}. "
                         "Use a new output or the same settings")
    return {line["index"]: line for line in lines[1:]}


def _append(log: Any, line: dict[str, Any]) -> None:
    log.write(json.dumps(line) + "\n")
    log.flush()
    os.fsync(log.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def connect(endpoint: str, api_key: str | None, reply_timeout_s: float) -> ws_client.WebsocketClientPolicy:
    """A client of the policy server at `endpoint`; a server that cannot be reached or refuses the key is a
    JobFailed naming the endpoint."""
    try:
        return ws_client.WebsocketClientPolicy(endpoint, api_key=api_key, reply_timeout_s=reply_timeout_s)
    except ConnectionError as err:
        raise cli.JobFailed(f"--endpoint {endpoint}: {err}; is a policy server (python -m jobs.serve) running there, "
                            "and does it take this --api-key?") from err  # fmt: skip


def main(config: Config) -> dict:
    """Run (or resume) the evaluation, write its outputs; returns the summary."""
    if config.output.exists() and not config.output.is_dir():
        raise FileExistsError(f"--output {config.output} is a file; the evaluation writes a directory "
                              f"({EPISODES_FILE}, {SUMMARY_FILE}, {VIDEO_FILE})")  # fmt: skip
    client = None
    if config.endpoint is not None:
        client = connect(config.endpoint, config.api_key, config.reply_timeout_s)
    try:
        return _evaluate(config, client)
    finally:
        if client is not None:
            client.close()


def _evaluate(config: Config, client: ws_client.WebsocketClientPolicy | None) -> dict:
    environment = env_lib.HandoverEnv(config.task)
    eval_config = evaluation.EvalConfig(config.episodes, config.replan_steps, config.seed, config.video_episodes,
                                        config.image_layout)
    record = run_record(config, None if client is None else client.metadata)
    path = config.output / EPISODES_FILE
    done = {i: line for i, line in load_episodes(path, record).items() if i < config.episodes}
    config.output.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(config.episodes) if i not in done]
    if done:
        logger.info("%s: resuming, %d of %d episodes already done", path, len(done), config.episodes)

    def run(i: int) -> tuple[evaluation.EpisodeResult, np.ndarray]:
        policy = client if client is not None else local_policy(config, environment, i)
        return evaluation.run_episode(policy, environment, i, eval_config)

    with path.open("a") as log, tqdm.tqdm(total=config.episodes, initial=len(done), desc="episodes", unit="ep") as bar:
        if log.tell() == 0:
            _append(log, {"record": record})
        for i in todo:
            start = time.perf_counter()
            try:
                attempt = functools.partial(run, i)
                result, actions = evaluation.with_retries(attempt, client, config.max_retries, f"episode {i}")
            except Exception as err:
                raise evaluation.EpisodeFailed(
                    f"episode {i} failed: {err}; {len(done)} of {config.episodes} episodes are recorded in {path}, "
                    "a rerun resumes from there") from err
            line = {**dataclasses.asdict(result), "wall_s": time.perf_counter() - start}
            if i < config.video_episodes:
                line["actions"] = actions.tolist()
            _append(log, line)
            done[i] = line
            bar.update(1)
            bar.set_postfix(success=result.success)
    return _finish(config, environment, eval_config, record, [done[i] for i in range(config.episodes)])


def _finish(config: Config, environment: env_lib.HandoverEnv, eval_config: evaluation.EvalConfig,
            record: dict[str, Any], lines: list[dict[str, Any]]) -> dict:
    """Write summary.json (atomically) and the video of the first episodes; returns the summary."""
    fields = [f.name for f in dataclasses.fields(evaluation.EpisodeResult)]
    episodes = tuple(evaluation.EpisodeResult(**{k: line[k] for k in fields}) for line in lines)
    result = evaluation.EvalResult(episodes, config.task.fps, sum(line["wall_s"] for line in lines))
    summary: dict[str, Any] = {"policy": config.endpoint or config.policy, "replan_steps": config.replan_steps}
    if "server" in record:
        summary["server"] = record["server"]
    summary.update(result.summary())
    video = [frame for episode, line in zip(episodes[: config.video_episodes], lines)
             for frame in evaluation.episode_video(environment, episode, eval_config, np.asarray(line["actions"]))]
    if video:
        tmp = config.output / f".{VIDEO_FILE}.tmp.mp4"
        recording.write_mp4(tmp, np.stack(video), config.task.fps)
        os.replace(tmp, config.output / VIDEO_FILE)
        summary["video"] = str(config.output / VIDEO_FILE)
    _write_atomic(config.output / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    low, high = result.ci95
    logger.info("%s: success %.3f [%.3f, %.3f] over %d episodes, mean length %.2f s; wrote %s",
                summary["policy"], result.success_rate, low, high, len(episodes), summary["mean_episode_s"],
                config.output)
    return summary


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
