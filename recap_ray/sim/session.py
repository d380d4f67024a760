"""Recording sessions: expert demonstrations and DAgger rollouts with a correcting operator.

A DAgger session runs a driver AUTONOMOUS (the degraded scripted controller, or a policy such as
a served checkpoint executing a few actions of every chunk) while a simulated operator watches
the expert's plan for the same state. When the autonomous plan drifts (fingertips or gripper
commands away from the expert's for a while) or the task stalls, the operator may notice, reacts
after a delay and takes over (CORRECTING): the expert drives until the task has advanced and a
minimum time has passed, then hands back. Frames of CORRECTING steps get intervention = 1, like
limb's phase.npy. Demonstrations are teleoperated: every frame is human-driven.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

from recap_ray import checks
from recap_ray.sim import env as env_lib
from recap_ray.sim import evaluation, kinematics, scripted, world

AUTONOMOUS, CORRECTING = "autonomous", "correcting"


@dataclasses.dataclass(frozen=True)
class DaggerConfig:
    """The simulated operator's attention and habits."""

    drift_m: float = 0.03  # a fingertip waypoint this far from the expert's counts as drifting
    drift_s: float = 0.5  # drifting (or a gripper command disagreeing) this long is a drift event
    stall_s: float = 2.0  # no task progress for this long is also a drift event
    notice_prob: float = 0.7  # chance the operator notices a drift event
    reaction_s: float = 0.2  # from noticing to taking over
    min_correction_s: float = 1.5  # a correction lasts at least this long ...
    max_correction_s: float = 3.0  # ... and ends once the task advanced, or after this long
    max_corrections: int = 1  # the operator steps in at most this often per episode

    def __post_init__(self) -> None:
        checks.at_least(self, drift_m=0.0, drift_s=0.0, stall_s=0.0, reaction_s=0.0, min_correction_s=0.0,
                        max_corrections=0)
        checks.probabilities(self, "notice_prob")
        if self.max_correction_s < self.min_correction_s:
            raise ValueError(f"DaggerConfig.max_correction_s must be >= min_correction_s ({self.min_correction_s!r}), "
                             f"got {self.max_correction_s!r}")


@dataclasses.dataclass
class Episode:
    """One recorded episode; frame t is the observation before action t."""

    state: np.ndarray  # (T, 14) float32
    action: np.ndarray  # (T, 14) float32
    intervention: np.ndarray  # (T,) int64, 1 where a human (or the expert standing in) drove
    success: bool
    frames: dict[str, np.ndarray] | None  # YAM camera name -> uint8 (T, H, W, 3); None if not rendered

    @property
    def length(self) -> int:
        """Number of frames."""
        return int(self.state.shape[0])


class _Recorder:
    def __init__(self, environment: env_lib.HandoverEnv, render: bool) -> None:
        self.env = environment
        self.render = render
        self.states: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []
        self.flags: list[int] = []
        self.frames: dict[str, list[np.ndarray]] = {}

    def record(self, action: np.ndarray, intervention: bool) -> None:
        """Store the current frame with `action`, then execute exactly the stored (float32) action."""
        self.states.append(self.env.state)
        if self.render:
            for name, image in self.env.frames().items():
                self.frames.setdefault(name, []).append(image)
        action = np.asarray(action, dtype=np.float32)
        self.actions.append(action)
        self.flags.append(int(intervention))
        self.env.step(action)

    def episode(self) -> Episode:
        frames = {k: np.stack(v) for k, v in self.frames.items()} if self.render else None
        return Episode(
            state=np.stack(self.states),
            action=np.stack(self.actions),
            intervention=np.asarray(self.flags, dtype=np.int64),
            success=self.env.success,
            frames=frames,
        )


def seeds(seed: int | tuple[int, ...]) -> tuple[np.random.SeedSequence, np.random.Generator, np.random.Generator]:
    """Independent streams for the world, the degraded controller and the operator."""
    world_seq, policy_seq, operator_seq = np.random.SeedSequence(seed).spawn(3)
    return world_seq, np.random.default_rng(policy_seq), np.random.default_rng(operator_seq)


def record_demo(environment: env_lib.HandoverEnv, seed: int | tuple[int, ...],
                expert: scripted.Expert | None = None, render: bool = True) -> Episode:
    """A teleoperated demonstration: the expert drives every step (intervention = 1 throughout)."""
    expert = expert or scripted.Expert(environment.config)
    world_seq, _, _ = seeds(seed)
    environment.reset(world_seq)
    recorder = _Recorder(environment, render)
    while not environment.done:
        action, _ = expert(environment.world)
        recorder.record(action, intervention=True)
    return recorder.episode()


def _drifting(auto: scripted.Plan, expert: scripted.Plan, config: DaggerConfig) -> bool:
    far = np.linalg.norm(auto.waypoints - expert.waypoints, axis=1).max() > config.drift_m
    return bool(far or np.any(auto.grippers != expert.grippers))


class Driver(Protocol):
    """What drives while the operator watches: one action a step, and whether it drifts."""

    expert: scripted.Expert  # the operator's reference, who also drives the corrections

    def reset(self, environment: env_lib.HandoverEnv, rng: np.random.Generator) -> None:
        """Start an episode (the environment was just reset); `rng` is the driver's own stream."""

    def act(self, environment: env_lib.HandoverEnv, expert_plan: scripted.Plan,
            config: DaggerConfig) -> tuple[np.ndarray, bool]:
        """The autonomous action for the current state, and whether its plan drifts from the expert's."""

    def interrupt(self) -> None:
        """The operator drove in between; forget pending actions."""


class DegradedDriver:
    """The degraded scripted controller; its plan's waypoints are compared with the expert's."""

    def __init__(self, degraded: scripted.Degraded) -> None:
        self.degraded = degraded
        self.expert = degraded.expert

    def reset(self, environment: env_lib.HandoverEnv, rng: np.random.Generator) -> None:
        """Draw the episode's faults from `rng`."""
        self.degraded.reset(rng)

    def act(self, environment: env_lib.HandoverEnv, expert_plan: scripted.Plan,
            config: DaggerConfig) -> tuple[np.ndarray, bool]:
        """One degraded step; drifting if a waypoint or gripper command differs from the expert's."""
        action, plan = self.degraded(environment.world)
        return action, _drifting(plan, expert_plan, config)

    def interrupt(self) -> None:
        """Forget a pending hesitation."""
        self.degraded.interrupt()


class PolicyDriver:
    """A policy (openpi observation dict -> {"actions": (H, 14)}) executing `replan_steps` actions a chunk.

    The policy states no waypoints, so the operator compares intentions over the chunk: the
    fingertips each of the policy's H joint targets commands against those of the expert's next H
    actions, planned on a copy of the world; a chunk drifts if any pair is more than `drift_m`
    apart or any gripper command (closed below 0.5) disagrees, and so does every step executed from it.
    """

    def __init__(self, policy: evaluation.Policy, task: world.TaskConfig, replan_steps: int = 5,
                 image_layout: env_lib.ImageLayout = "chw", expert: scripted.Expert | None = None) -> None:
        if replan_steps < 1:
            raise ValueError(f"replan_steps must be >= 1, got {replan_steps}")
        self.policy = policy
        self.task = task
        self.replan_steps = replan_steps
        self.image_layout = image_layout
        self.expert = expert or scripted.Expert(task)
        self.queue: list[np.ndarray] = []
        self.chunk_drifts = False

    def reset(self, environment: env_lib.HandoverEnv, rng: np.random.Generator) -> None:
        """Start an episode with no pending actions (the policy draws nothing from `rng`)."""
        self.queue = []

    def act(self, environment: env_lib.HandoverEnv, expert_plan: scripted.Plan,
            config: DaggerConfig) -> tuple[np.ndarray, bool]:
        """The next action of the current chunk, asking the policy for a new chunk when it is used up."""
        if not self.queue:
            observation = environment.observation(self.image_layout)
            chunk = evaluation.action_chunk(self.policy(observation), f"DAgger step {environment.steps}")
            self.chunk_drifts = self._drifts(environment.world, chunk, config)
            self.queue = list(chunk[: self.replan_steps])
        return self.queue.pop(0), self.chunk_drifts

    def _drifts(self, state: world.World, chunk: np.ndarray, config: DaggerConfig) -> bool:
        sim = state.copy()
        for action in chunk:
            expert_action, _ = self.expert(sim)
            apart = np.linalg.norm(world.tips(self.task, action) - world.tips(self.task, expert_action), axis=1)
            closed = np.stack([action, expert_action])[:, list(world.GRIPPERS)] < world.GRIPPER_CLOSED_BELOW
            if apart.max() > config.drift_m or np.any(closed[0] != closed[1]):
                return True
            world.advance(self.task, sim, expert_action)
        return False

    def interrupt(self) -> None:
        """Drop the rest of the chunk: the next step asks the policy again."""
        self.queue = []


def record_dagger(environment: env_lib.HandoverEnv, seed: int | tuple[int, ...],
                  driver: scripted.Degraded | Driver, config: DaggerConfig = DaggerConfig(),
                  render: bool = True) -> Episode:
    """A DAgger rollout: `driver` drives, the operator corrects when it drifts or stalls.

    A `scripted.Degraded` controller is driven through `DegradedDriver`. With `notice_prob = 0`
    the operator never steps in, which measures the autonomous driver alone.
    """
    if isinstance(driver, scripted.Degraded):
        driver = DegradedDriver(driver)
    fps = environment.config.fps
    drift_steps, stall_steps = round(config.drift_s * fps), round(config.stall_s * fps)
    reaction_steps = round(config.reaction_s * fps)
    min_steps, max_steps = round(config.min_correction_s * fps), round(config.max_correction_s * fps)
    world_seq, driver_rng, operator_rng = seeds(seed)
    environment.reset(world_seq)
    driver.reset(environment, driver_rng)
    expert = driver.expert
    recorder = _Recorder(environment, render)
    phase = AUTONOMOUS
    drift = idle = corrected = takeovers = 0
    countdown: int | None = None
    progress = world.stage(environment.config, environment.world)
    start_stage = progress
    while not environment.done:
        expert_action, expert_plan = expert(environment.world)
        if phase == AUTONOMOUS:
            action, drifting = driver.act(environment, expert_plan, config)
            drift = drift + 1 if drifting else 0
            event = drift >= drift_steps or idle >= stall_steps
            if countdown is None and takeovers < config.max_corrections and event:
                if operator_rng.random() < config.notice_prob:
                    countdown = reaction_steps
                drift = idle = 0
            if countdown is not None:
                countdown -= 1
                if countdown < 0:
                    phase, countdown, corrected, start_stage = CORRECTING, None, 0, progress
                    takeovers += 1
        if phase == CORRECTING:
            action = expert_action
            corrected += 1
        recorder.record(action, intervention=phase == CORRECTING)
        now = world.stage(environment.config, environment.world)
        idle = 0 if now > progress else idle + 1
        progress = now
        if phase == CORRECTING and corrected >= min_steps and (now > start_stage or corrected >= max_steps):
            phase = AUTONOMOUS
            driver.interrupt()
    return recorder.episode()


def state_names() -> list[str]:
    """Names of the 14 state/action dimensions, YAM order."""
    arm = [f"joint_{i}" for i in range(kinematics.JOINTS_PER_ARM)] + ["gripper"]
    return [f"{side}_{name}" for side in ("left", "right") for name in arm]
