"""python -m jobs.make_dataset --output DIR --demos N --rollouts M --format v3.0|v2.1 --seed S

Generate a YAM-like LeRobot dataset from the simulated handover task: N teleoperated expert
demonstrations, then M DAgger rollouts (degraded policy, operator corrections marked
intervention = 1), with the three camera videos, the task string, the five RECAP columns and
episode-level success in the episode metadata.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tqdm

from jobs import cli
from recap_ray import checks
from recap_ray.data import recap_columns, writer
from recap_ray.sim import env as env_lib
from recap_ray.sim import render, scripted, session, world

logger = logging.getLogger(__name__)

DEMO_STREAM, ROLLOUT_STREAM = 0, 1  # seed streams: episode i of a kind uses seed (seed, stream, i)


@dataclasses.dataclass(frozen=True)
class Config:
    output: Path
    """Dataset root to create (must not exist)."""
    demos: int = 10
    """Expert demonstrations (every frame intervention = 1)."""
    rollouts: int = 40
    """DAgger rollouts of the degraded policy with operator corrections."""
    format: Literal["v3.0", "v2.1"] = "v3.0"
    """LeRobot layout version."""
    seed: int = 0
    """Base seed; the same seed gives the same dataset."""
    task: world.TaskConfig = world.TaskConfig()
    """The simulated task (fps, image size, time limit, geometry)."""
    degraded: scripted.DegradedConfig = scripted.DegradedConfig()
    """Faults of the autonomous policy in rollouts."""
    dagger: session.DaggerConfig = session.DaggerConfig()
    """The correcting operator in rollouts."""
    workers: int = 1
    """Processes simulating and rendering episodes while this one writes; 0 simulates inline."""

    def __post_init__(self) -> None:
        checks.at_least(self, demos=0, rollouts=0, seed=0, workers=0)
        if self.demos + self.rollouts == 0:
            raise ValueError("Config.demos + Config.rollouts must give at least one episode, got 0 + 0")


def features(task: world.TaskConfig) -> dict[str, dict]:
    """LeRobot feature dicts of the generated dataset (user features only)."""
    names = session.state_names()
    out: dict[str, dict] = {
        "observation.state": {"dtype": "float32", "shape": [len(names)], "names": names},
        "action": {"dtype": "float32", "shape": [len(names)], "names": names},
    }
    for camera in render.CAMERAS:
        out[env_lib.IMAGE_KEY_PREFIX + camera] = {
            "dtype": "video",
            "shape": [task.image_height, task.image_width, 3],
            "names": ["height", "width", "channels"],
        }
    return {**out, **recap_columns.FEATURES}


def columns(episode: session.Episode) -> dict[str, np.ndarray]:
    """The episode's columns for the writer: state, action, camera frames, RECAP columns."""
    assert episode.frames is not None, "episodes for a dataset must be rendered"
    out = {"observation.state": episode.state, "action": episode.action}
    out.update({env_lib.IMAGE_KEY_PREFIX + name: frames for name, frames in episode.frames.items()})
    out.update(recap_columns.compute(episode.success, episode.intervention))
    return out


def record(config: Config, kind: str, index: int) -> session.Episode:
    """Simulate and render one episode; the same (config, kind, index) gives the same episode."""
    environment = env_lib.HandoverEnv(config.task)
    if kind == "demo":
        return session.record_demo(environment, (config.seed, DEMO_STREAM, index))
    degraded = scripted.Degraded(config.task, config.degraded)
    return session.record_dagger(environment, (config.seed, ROLLOUT_STREAM, index), degraded, config.dagger)


def _episodes(config: Config, plan: list[tuple[str, int]]) -> Iterator[session.Episode]:
    """Episodes in plan order, simulated by `config.workers` processes a few episodes ahead."""
    if config.workers <= 0:
        yield from (record(config, kind, i) for kind, i in plan)
        return
    context = multiprocessing.get_context("spawn")
    with futures.ProcessPoolExecutor(config.workers, mp_context=context) as pool:
        pending: deque[futures.Future] = deque()
        todo = iter(plan)
        for kind, i in todo:  # keep a bounded number in flight: episodes hold their frames
            pending.append(pool.submit(record, config, kind, i))
            if len(pending) >= 4 * config.workers:
                break
        while pending:
            episode = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(record, config, *nxt))
            yield episode


def main(config: Config) -> Path:
    """Write the dataset; returns its root."""
    out = writer.DatasetWriter(config.output, fps=config.task.fps, features=features(config.task),
                               version=config.format, robot_type="yam_sim")
    plan = [("demo", i) for i in range(config.demos)] + [("rollout", i) for i in range(config.rollouts)]
    tally = {"demo": [0, 0], "rollout": [0, 0]}
    interventions = frames = 0
    episodes = _episodes(config, plan)
    for (kind, i), episode in tqdm.tqdm(zip(plan, episodes), total=len(plan), desc="episodes", unit="ep"):
        stream = DEMO_STREAM if kind == "demo" else ROLLOUT_STREAM
        out.add_episode(columns(episode), task=config.task.prompt,
                        meta={"success": episode.success, "kind": kind, "seed": [config.seed, stream, i]})
        tally[kind][0] += int(episode.success)
        tally[kind][1] += 1
        if kind == "rollout":
            interventions += int(episode.intervention.sum())
            frames += episode.length
    root = out.finalize(lineage={"job": "make_dataset", "config": plain(dataclasses.asdict(config))})
    logger.info("wrote %s: demos %d/%d successful, rollouts %d/%d successful, rollout intervention rate %.3f",
                root, *tally["demo"], *tally["rollout"], interventions / frames if frames else 0.0)
    return root


def plain(value: Any) -> Any:
    """`value` with paths as strings, tuples as lists and numpy values as lists or numbers, for JSON."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    return str(value) if isinstance(value, Path) else value


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix.rstrip("."): value}
    return {k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}{key}.").items()}


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The fields (dotted names) whose values differ between two JSON records, with both values."""
    old, new = _flat(recorded), _flat(now)
    return [f"{k}: recorded {old.get(k)!r}, now {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k)]  # fmt: skip


if __name__ == "__main__":
    main(cli.parse(Config, __doc__))
