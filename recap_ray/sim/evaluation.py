"""Closed-loop evaluation of any policy that maps an openpi observation dict to an action chunk.

Each episode: reset with its own seed, ask the policy for a chunk, execute its first
`replan_steps` actions, ask again, until success or the time limit. Reports the success rate
with a Wilson 95% interval and the mean episode length; the video of the first few episodes is
replayed from their seeds and executed actions. `with_retries` reruns an episode (from its seed)
after a connection-level failure of a served policy.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Callable, TypeVar

import numpy as np

from recap_ray.sim import env as env_lib
from recap_ray.sim import kinematics, render

logger = logging.getLogger(__name__)

Policy = Callable[[dict], dict]
EVAL_STREAM = 2  # seed stream id, apart from the dataset's demos (0) and rollouts (1)
Z95 = 1.959963984540054
RETRYABLE = (ConnectionError, TimeoutError)
"""Connection-level failures of a served policy (closed connection, no reply in time): worth a new
connection; an error the server reports for a request (RuntimeError, ValueError) would only repeat."""
T = TypeVar("T")


class EpisodeFailed(RuntimeError):
    """An episode could not be completed; the message names it and what was completed before it."""


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How to run an evaluation."""

    episodes: int = 50  # number of episodes
    replan_steps: int = 5  # actions executed from each chunk before asking the policy again
    seed: int = 0  # episode i starts from seed (seed, 2, i)
    video_episodes: int = 3  # episodes whose frames are kept for the video
    image_layout: env_lib.ImageLayout = "chw"  # openpi's Aloha policies take channels-first images


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """The outcome of one evaluation episode."""

    index: int
    success: bool
    steps: int
    policy_calls: int


@dataclasses.dataclass(frozen=True)
class EvalResult:
    """Aggregate outcome of an evaluation."""

    episodes: tuple[EpisodeResult, ...]
    fps: int
    wall_s: float

    @property
    def successes(self) -> int:
        """Number of successful episodes."""
        return sum(e.success for e in self.episodes)

    @property
    def success_rate(self) -> float:
        """Fraction of successful episodes."""
        return self.successes / len(self.episodes)

    @property
    def ci95(self) -> tuple[float, float]:
        """Wilson 95% interval of the success rate."""
        return wilson_interval(self.successes, len(self.episodes))

    @property
    def mean_steps(self) -> float:
        """Mean episode length in steps (failures run to the time limit)."""
        return float(np.mean([e.steps for e in self.episodes]))

    def summary(self) -> dict:
        """A JSON-ready summary."""
        low, high = self.ci95
        return {
            "episodes": len(self.episodes),
            "successes": self.successes,
            "success_rate": self.success_rate,
            "success_rate_ci95": [low, high],
            "mean_episode_steps": self.mean_steps,
            "mean_episode_s": self.mean_steps / self.fps,
            "wall_s": self.wall_s,
            "per_episode": [dataclasses.asdict(e) for e in self.episodes],
        }


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion."""
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def tile(frames: dict[str, np.ndarray]) -> np.ndarray:
    """The three cameras side by side (H, 3W, 3), head camera first."""
    return np.concatenate([frames[name] for name in render.CAMERAS], axis=1)


def action_chunk(reply: object, where: str) -> np.ndarray:
    """The (H, 14) actions of a policy reply, checked; errors start with `where` (episode and step)."""
    if not isinstance(reply, dict) or "actions" not in reply:
        raise ValueError(f"{where}: policy must return a dict with 'actions', "
                         f"got {type(reply).__name__}")
    actions = np.asarray(reply["actions"], dtype=np.float64)
    if actions.ndim != 2 or actions.shape[0] < 1 or actions.shape[1] != kinematics.STATE_DIM:
        raise ValueError(f"{where}: actions must be (H>=1, {kinematics.STATE_DIM}), "
                         f"got {actions.shape}")
    if not np.all(np.isfinite(actions)):
        raise ValueError(f"{where}: actions contain NaN or inf")
    return actions


def run_episode(policy: Policy, environment: env_lib.HandoverEnv, index: int,
                config: EvalConfig) -> tuple[EpisodeResult, np.ndarray]:
    """One closed-loop episode; returns its result and the executed actions (steps, 14)."""
    environment.reset((config.seed, EVAL_STREAM, index))
    calls, executed = 0, []
    while not environment.done:
        observation = environment.observation(config.image_layout)
        chunk = action_chunk(policy(observation), f"episode {index} step {environment.steps}")
        calls += 1
        for action in chunk[: config.replan_steps]:
            executed.append(action)
            if environment.step(action):
                break
    result = EpisodeResult(index, bool(environment.success), environment.steps, calls)
    return result, np.asarray(executed, dtype=np.float64).reshape(-1, kinematics.STATE_DIM)


def episode_video(environment: env_lib.HandoverEnv, result: EpisodeResult, config: EvalConfig,
                  actions: np.ndarray) -> list[np.ndarray]:
    """Tiled frames of an episode, replayed from its seed and executed actions (the world is deterministic);
    the last frame is held half a second, framed green on success, red on failure."""
    environment.reset((config.seed, EVAL_STREAM, result.index))
    video = []
    for action in actions:
        video.append(tile(environment.frames()))
        environment.step(action)
    if (environment.steps, environment.success) != (result.steps, result.success):
        raise RuntimeError(f"episode {result.index}: the replay of its {len(actions)} actions ended after "
                           f"{environment.steps} steps, success {environment.success}; the run: {result}")
    last = tile(environment.frames())
    last[:2], last[-2:], last[:, :2], last[:, -2:] = ((0, 200, 0) if environment.success else (220, 0, 0),) * 4
    return video + [last] * (environment.config.fps // 2)


def with_retries(run: Callable[[], T], policy: object, max_retries: int, what: str) -> T:
    """`run()`; after a connection-level failure (`RETRYABLE`), reconnect `policy` when it can (a
    websocket client) and run again, at most `max_retries` times; then raise ConnectionError."""
    attempt = 0
    while True:
        try:
            if attempt:
                reconnect = getattr(policy, "reconnect", None)
                if reconnect is not None:
                    reconnect()
            return run()
        except RETRYABLE as err:
            if attempt >= max_retries:
                raise ConnectionError(f"gave up after {attempt + 1} attempt(s): {err}") from err
            attempt += 1
            logger.warning("%s: %s; running it again (retry %d of %d)", what, err, attempt, max_retries)


def evaluate(policy: Policy, environment: env_lib.HandoverEnv, config: EvalConfig,
             on_episode: Callable[[EpisodeResult], None] | None = None) -> tuple[EvalResult, np.ndarray | None]:
    """Run `config.episodes` episodes; returns the result and the video frames (N, H, 3W, 3) or None."""
    if config.episodes < 1 or config.replan_steps < 1:
        raise ValueError(f"need episodes >= 1 and replan_steps >= 1, got {config.episodes}, {config.replan_steps}")
    start = time.perf_counter()
    results, video = [], []
    for i in range(config.episodes):
        result, actions = run_episode(policy, environment, i, config)
        if i < config.video_episodes:
            video += episode_video(environment, result, config, actions)
        results.append(result)
        if on_episode is not None:
            on_episode(result)
    out = EvalResult(tuple(results), environment.config.fps, time.perf_counter() - start)
    low, high = out.ci95
    logger.info("success %d/%d = %.3f (95%% CI %.3f-%.3f), mean length %.1f steps",
                out.successes, len(results), out.success_rate, low, high, out.mean_steps)
    return out, (np.stack(video) if video else None)
