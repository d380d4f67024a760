"""Scripted controllers with privileged access to the world: a clean expert and a degraded one.

Both are feedback controllers: every step they read the world (where the object is, who holds
it), pick fingertip waypoints and gripper commands for the stage the task is in, and turn them
into joint targets through inverse kinematics at a bounded fingertip speed. Because the expert
decides from the current state alone, it can take over from any state a policy leaves behind.

The degraded controller is the expert with the faults of a weak policy: a per-episode error in
where it believes the object and the goal are, correlated joint noise, hesitations (it freezes
for a moment), missed grasps (it closes short of the object) and slips (it opens a holding
gripper for a moment).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from recap_ray.sim import kinematics, world

OPEN, CLOSE = 1.0, 0.0


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """How the expert moves."""

    speed: float = 0.3  # m/s, fingertip speed toward the current waypoint
    hover_z: float = 0.10  # fingertip height when travelling above the table
    place_z: float = 0.04  # fingertip height when letting go over the goal
    handover: tuple[float, float, float] = (0.0, 0.27, 0.15)  # where the left hand presents the object
    wait_offset: float = 0.08  # the right hand waits this far to the right of the handover point
    descend_within: float = 0.02  # m in the table plane: close enough above a target to go down
    close_within: float = 0.012  # m: close enough to a grasp point to close the gripper
    release_within: float = 0.012  # m: close enough to the place point to open the gripper


@dataclasses.dataclass(frozen=True)
class DegradedConfig:
    """The faults of the degraded autonomous controller."""

    object_error: float = 0.012  # m, std per axis of the per-episode error in the object's position
    goal_error: float = 0.03  # m, std per axis of the per-episode error in the goal's position
    joint_noise: float = 0.012  # rad, std of the correlated noise on every joint target
    noise_time_s: float = 0.3  # correlation time of that noise
    hesitate_rate: float = 0.25  # hesitations per second
    hesitate_s: tuple[float, float] = (0.3, 1.2)  # how long one lasts
    slip_rate: float = 0.08  # slips per second of carrying
    slip_s: float = 0.3  # how long a slip keeps the gripper open
    miss_prob: float = 0.3  # chance that a grasp attempt closes too early and misses
    miss_distance: float = 0.045  # m: such an attempt stops and closes this far from the grasp point
    miss_s: float = 0.3  # how long it stays there, closed on nothing, before retrying


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a controller intends this step: fingertip waypoints (2, 3) and gripper commands (2,)."""

    waypoints: np.ndarray
    grippers: np.ndarray


class Expert:
    """The clean scripted expert: knows the true object and goal positions."""

    def __init__(self, task: world.TaskConfig, config: ExpertConfig = ExpertConfig()) -> None:
        self.task = task
        self.config = config
        self._arms = task.arms
        self._home = (np.array(task.home_left), np.array(task.home_right))

    def plan(self, state: world.World, obj: np.ndarray | None = None, goal: np.ndarray | None = None) -> Plan:
        """Waypoints and gripper commands for `state`, given believed object and goal positions."""
        c, task = self.config, self.task
        obj = state.obj if obj is None else obj
        goal = state.goal if goal is None else goal
        tip = world.tips(task, state.q)
        grip = state.q[list(world.GRIPPERS)]
        handover = np.array(c.handover)
        wait = handover + np.array([c.wait_offset, 0.0, 0.0])
        left, right = bool(state.held[0]), bool(state.held[1])
        wp = [self._home[0], self._home[1]]
        g = [OPEN, OPEN]
        if left and right:  # handing over: the left lets go
            wp, g = [tip[0], tip[1]], [OPEN, CLOSE]
        elif left:  # the left presents the object; the right comes to take it
            wp[0], g[0] = handover, CLOSE
            if np.linalg.norm(tip[0] - handover) > 2 * c.descend_within:
                wp[1], g[1] = wait, OPEN
            else:
                wp[1], g[1] = self._grasp(obj, tip[1], grip[1], approach=wait)
        elif right:  # the right carries it to the goal and lets go
            wp[1], g[1] = self._place(goal, tip[1])
        elif not world.success(task, state):  # on the table: the nearer hand picks it up
            side = 0 if obj[0] < 0.0 else 1
            wp[side], g[side] = self._pick(obj, tip[side], grip[side])
            if side == 0:
                wp[1] = wait
        return Plan(np.stack(wp), np.array(g))

    def _pick(self, obj: np.ndarray, tip: np.ndarray, grip: float) -> tuple[np.ndarray, float]:
        c = self.config
        above = np.array([obj[0], obj[1], c.hover_z])
        at = np.array([obj[0], obj[1], self.task.object_radius])
        if grip < world.GRIPPER_CLOSED_BELOW:  # closed on nothing: open and back off
            return above, OPEN
        if np.linalg.norm(tip[:2] - obj[:2]) > c.descend_within:
            return above, OPEN
        return at, CLOSE if np.linalg.norm(tip - at) <= c.close_within else OPEN

    def _grasp(self, obj: np.ndarray, tip: np.ndarray, grip: float, approach: np.ndarray) -> tuple[np.ndarray, float]:
        if grip < world.GRIPPER_CLOSED_BELOW:
            return approach, OPEN
        return obj, CLOSE if np.linalg.norm(tip - obj) <= self.config.close_within else OPEN

    def _place(self, goal: np.ndarray, tip: np.ndarray) -> tuple[np.ndarray, float]:
        c = self.config
        if np.linalg.norm(tip[:2] - goal[:2]) > c.descend_within:
            return np.array([goal[0], goal[1], c.hover_z]), CLOSE
        at = np.array([goal[0], goal[1], c.place_z])
        return at, OPEN if np.linalg.norm(tip - at) <= c.release_within else CLOSE

    def act(self, state: world.World, plan: Plan) -> np.ndarray:
        """The 14-d action moving both fingertips toward the plan's waypoints at bounded speed."""
        tip = world.tips(self.task, state.q)
        step = self.config.speed * self.task.dt
        action = np.empty(kinematics.STATE_DIM)
        for side, (arm, sl) in enumerate(zip(self._arms, world.ARM_SLICES)):
            delta = plan.waypoints[side] - tip[side]
            dist = float(np.linalg.norm(delta))
            target = plan.waypoints[side] if dist <= step else tip[side] + delta * (step / dist)
            action[sl] = kinematics.inverse(arm, target)
            action[world.GRIPPERS[side]] = plan.grippers[side]
        return action

    def __call__(self, state: world.World) -> tuple[np.ndarray, Plan]:
        """One step: the action and the plan behind it."""
        plan = self.plan(state)
        return self.act(state, plan), plan


class Degraded:
    """The expert with a weak policy's faults; seeded, with per-episode state (call `reset`)."""

    def __init__(self, task: world.TaskConfig, config: DegradedConfig = DegradedConfig(),
                 expert: ExpertConfig = ExpertConfig()) -> None:
        self.task = task
        self.config = config
        self.expert = Expert(task, expert)
        self.reset(np.random.default_rng(0))

    def reset(self, rng: np.random.Generator) -> None:
        """Start a new episode: draw the perception errors, clear noise, pauses and slips."""
        c = self.config
        self.rng = rng
        self.object_error = np.append(rng.normal(0.0, c.object_error, 2), 0.0)
        self.goal_error = rng.normal(0.0, c.goal_error, 2)
        self.noise = np.zeros(kinematics.STATE_DIM)
        self.frozen_steps = 0
        self.slip_steps = 0
        self.miss_armed = rng.random(2) < c.miss_prob  # per arm: will the next grasp attempt miss?
        self.miss_steps = [0, 0]
        self.miss_at = [np.zeros(3), np.zeros(3)]
        self.last: tuple[np.ndarray, Plan] | None = None

    def interrupt(self) -> None:
        """Forget a pending hesitation (someone else drove in between)."""
        self.frozen_steps = 0
        self.last = None

    def __call__(self, state: world.World) -> tuple[np.ndarray, Plan]:
        """One step: the degraded action and the (mistaken) plan behind it."""
        c, dt = self.config, self.task.dt
        if self.frozen_steps > 0 and self.last is not None:
            self.frozen_steps -= 1
            return self.last
        if self.rng.random() < c.hesitate_rate * dt:
            self.frozen_steps = int(self.rng.uniform(*c.hesitate_s) * self.task.fps)
        believed = state.obj + self.object_error
        plan = self._miss(state, self.expert.plan(state, obj=believed, goal=state.goal + self.goal_error), believed)
        if state.held.any() and self.slip_steps == 0 and self.rng.random() < c.slip_rate * dt:
            self.slip_steps = int(round(c.slip_s * self.task.fps))
        if self.slip_steps > 0:
            self.slip_steps -= 1
            grippers = np.where(state.held, OPEN, plan.grippers)
            plan = Plan(plan.waypoints, grippers)
        action = self.expert.act(state, plan)
        decay = np.exp(-dt / c.noise_time_s)
        fresh = self.rng.normal(0.0, c.joint_noise, kinematics.STATE_DIM)
        self.noise = decay * self.noise + np.sqrt(1 - decay**2) * fresh
        noise = self.noise.copy()
        noise[list(world.GRIPPERS)] = 0.0
        self.last = (action + noise, plan)
        return self.last

    def _miss(self, state: world.World, plan: Plan, believed: np.ndarray) -> Plan:
        """Stop and close short of the grasp point on attempts armed to miss."""
        c = self.config
        tip = world.tips(self.task, state.q)
        waypoints, grippers = plan.waypoints.copy(), plan.grippers.copy()
        for side in (0, 1):
            if self.miss_steps[side] > 0:
                self.miss_steps[side] -= 1
                if self.miss_steps[side] == 0:  # the next attempt may miss as well
                    self.miss_armed[side] = self.rng.random() < c.miss_prob
            elif (self.miss_armed[side] and not state.held[side] and np.allclose(waypoints[side], believed)
                  and np.linalg.norm(tip[side] - waypoints[side]) <= c.miss_distance):
                self.miss_armed[side] = False
                self.miss_steps[side] = round(c.miss_s * self.task.fps)
                self.miss_at[side] = tip[side].copy()
            else:
                continue
            waypoints[side], grippers[side] = self.miss_at[side], CLOSE
        return Plan(waypoints, grippers)
