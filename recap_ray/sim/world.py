"""The handover world: two arms, one object, one goal; its configuration and its physics.

Coordinates are metres: x to the robot's right, y away from it, z up; the table top is z = 0.
An action is 14 absolute joint targets laid out like the state ([left j0..j5, left gripper,
right j0..j5, right gripper], gripper 1 open, 0 closed, as on YAM). Each step moves every joint
toward its target at a bounded speed. A gripper that closes with its fingertip near the object
picks it up; the object follows its holders and drops to the table when the last one opens.
Success: the object rests on the table inside the goal disc.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recap_ray import checks
from recap_ray.sim import kinematics

GRIPPER_CLOSED_BELOW = 0.5  # a gripper reading below this counts as closed
_J, _A = kinematics.JOINTS_PER_ARM, kinematics.ARM_DIM
LEFT_GRIPPER, RIGHT_GRIPPER = _J, _A + _J  # gripper indices in the 14-d state / action
ARM_SLICES = (slice(0, _J), slice(_A, _A + _J))  # joint slices of the left and right arm
GRIPPERS = (LEFT_GRIPPER, RIGHT_GRIPPER)

# Stages of the task, in order; `stage` reports the current one.
STAGE_ON_TABLE, STAGE_LEFT, STAGE_BOTH, STAGE_RIGHT, STAGE_DONE = range(5)


@dataclasses.dataclass(frozen=True)
class TaskConfig:
    """Everything that defines the simulated task: timing, cameras, geometry and limits."""

    fps: int = 30  # control and recording rate, as the YAM datasets
    time_limit_s: float = 8.0  # an episode that has not succeeded by then fails
    image_height: int = 96  # camera resolution, all three cameras
    image_width: int = 96
    prompt: str = "hand the orange block from the left gripper to the right gripper and place it on the green target"
    left_base: tuple[float, float, float] = (-0.2, 0.0, 0.0)  # left shoulder position
    right_base: tuple[float, float, float] = (0.2, 0.0, 0.0)  # right shoulder position
    object_x: tuple[float, float] = (-0.32, -0.12)  # start range of the object, left half
    object_y: tuple[float, float] = (0.15, 0.35)
    goal_x: tuple[float, float] = (0.12, 0.32)  # goal range, right half
    goal_y: tuple[float, float] = (0.15, 0.35)
    object_radius: float = 0.025  # the object rests with its centre this high
    goal_radius: float = 0.04  # success if the resting object's centre is this close to the goal
    grasp_radius: float = 0.03  # a closing gripper picks the object up within this distance
    joint_speed: float = 3.0  # rad/s, the fastest a joint follows its target
    gripper_speed: float = 4.0  # gripper range per second (1 = fully open)
    fall_speed: float = 1.0  # m/s, how fast a released object drops to the table
    home_left: tuple[float, float, float] = (-0.22, 0.14, 0.16)  # fingertip rest positions
    home_right: tuple[float, float, float] = (0.22, 0.14, 0.16)
    home_jitter: float = 0.05  # rad, random offset of every joint at the start

    def __post_init__(self) -> None:
        checks.at_least(self, fps=1, image_height=1, image_width=1, home_jitter=0.0)
        checks.positive(self, "time_limit_s", "object_radius", "goal_radius", "grasp_radius", "joint_speed",
                        "gripper_speed", "fall_speed")
        checks.ranges(self, "object_x", "object_y", "goal_x", "goal_y")
        if self.max_steps < 1:  # an episode needs a step
            raise ValueError(f"TaskConfig.time_limit_s must give at least one step at fps {self.fps}, "
                             f"got {self.time_limit_s!r}")

    @property
    def dt(self) -> float:
        """Seconds per step."""
        return 1.0 / self.fps

    @property
    def max_steps(self) -> int:
        """Steps before the time limit ends an episode."""
        return int(round(self.time_limit_s * self.fps))

    @property
    def arms(self) -> tuple[kinematics.ArmGeometry, kinematics.ArmGeometry]:
        """Left and right arm geometry."""
        return kinematics.ArmGeometry(self.left_base), kinematics.ArmGeometry(self.right_base)

    @property
    def home_state(self) -> np.ndarray:
        """The 14-d rest state: both fingertips at their home positions, grippers open."""
        left, right = self.arms
        return np.concatenate([
            kinematics.inverse(left, np.array(self.home_left)), [1.0],
            kinematics.inverse(right, np.array(self.home_right)), [1.0],
        ])


@dataclasses.dataclass
class World:
    """The full simulator state; only `q` is visible to a policy as `state`."""

    q: np.ndarray  # (14,) joints and grippers
    obj: np.ndarray  # (3,) object centre
    goal: np.ndarray  # (2,) goal centre on the table
    held: np.ndarray  # (2,) bool, whether the left / right gripper holds the object
    steps: int = 0  # steps taken since reset

    def copy(self) -> World:
        """An independent copy (for planning ahead without touching the episode)."""
        return World(self.q.copy(), self.obj.copy(), self.goal.copy(), self.held.copy(), self.steps)


def reset(config: TaskConfig, rng: np.random.Generator) -> World:
    """A fresh episode: arms near home, object on the left half, goal on the right half."""
    q = config.home_state.copy()
    for arm in ARM_SLICES:
        q[arm] += rng.uniform(-config.home_jitter, config.home_jitter, kinematics.JOINTS_PER_ARM)
    obj = np.array([rng.uniform(*config.object_x), rng.uniform(*config.object_y), config.object_radius])
    goal = np.array([rng.uniform(*config.goal_x), rng.uniform(*config.goal_y)])
    return World(q=q, obj=obj, goal=goal, held=np.zeros(2, dtype=bool))


def tips(config: TaskConfig, q: np.ndarray) -> np.ndarray:
    """Fingertip positions (2, 3), left then right, for a 14-d state."""
    return np.stack([kinematics.fingertip(arm, q[sl]) for arm, sl in zip(config.arms, ARM_SLICES)])


def advance(config: TaskConfig, world: World, action: np.ndarray) -> None:
    """Apply one 14-d action (absolute joint and gripper targets) for one step, in place."""
    action = np.asarray(action, dtype=np.float64)
    if action.shape != (kinematics.STATE_DIM,) or not np.all(np.isfinite(action)):
        raise ValueError(f"action must be a finite ({kinematics.STATE_DIM},) vector, got shape {action.shape}")
    before = world.q[list(GRIPPERS)].copy()
    limit = np.full(kinematics.STATE_DIM, config.joint_speed * config.dt)
    limit[list(GRIPPERS)] = config.gripper_speed * config.dt
    target = np.clip(action, -np.pi, np.pi)
    target[list(GRIPPERS)] = np.clip(action[list(GRIPPERS)], 0.0, 1.0)
    world.q = world.q + np.clip(target - world.q, -limit, limit)
    after = world.q[list(GRIPPERS)]
    tip = tips(config, world.q)
    closed = after < GRIPPER_CLOSED_BELOW
    world.held &= closed
    closing = closed & (before >= GRIPPER_CLOSED_BELOW)
    near = np.linalg.norm(tip - world.obj, axis=1) <= config.grasp_radius
    world.held |= closing & near
    if world.held.any():
        world.obj = tip[world.held].mean(axis=0)
    else:
        world.obj[2] = max(config.object_radius, world.obj[2] - config.fall_speed * config.dt)
    world.steps += 1


def on_table(config: TaskConfig, world: World) -> bool:
    """True if nothing holds the object and it rests on the table."""
    return not world.held.any() and world.obj[2] <= config.object_radius + 1e-9


def success(config: TaskConfig, world: World) -> bool:
    """True if the object rests on the table inside the goal disc."""
    return on_table(config, world) and float(np.linalg.norm(world.obj[:2] - world.goal)) <= config.goal_radius


def stage(config: TaskConfig, world: World) -> int:
    """How far the task has come: on table, held left, held by both, held right, done."""
    if success(config, world):
        return STAGE_DONE
    left, right = world.held
    if left and right:
        return STAGE_BOTH
    if left:
        return STAGE_LEFT
    if right:
        return STAGE_RIGHT
    return STAGE_ON_TABLE
